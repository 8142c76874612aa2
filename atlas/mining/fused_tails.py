"""Mining fused into ResNet blocks: while `atlas.mining` runs on CUDA, each mined open_clip Bottleneck ends in one
Triton kernel (`atlas.kernels.tail.bottleneck_tail`) that applies bn3, adds the shortcut, applies the ReLU, writes
the block's output and reduces it for the layer's `LayerState` in the same pass, instead of three elementwise
passes, a forward hook and a second read of the output (docs/benchmarks.md).

`fused_tails(blocks, states, current)` swaps the blocks' ``forward`` for the fused one inside a ``with`` block and
puts the original back afterwards, whatever happens.  A block with a state calls ``state.update(index, out,
reduced)`` itself, so it must not also be hooked; with no state (``states=None``) the tail is fused without the
reduction (the forward-only baseline of bench/mining_overhead.py).

The fused block computes what the block computes, to one unit in the last place of the activations' dtype where
the batch norm's float32 arithmetic rounds differently (tests/test_kernels.py); `fusable` says which modules it
applies to: open_clip's Bottleneck in eval mode, ReLU as its last activation.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import torch
from torch import nn

from ..kernels.tail import bn_params, bottleneck_tail_triton


def fusable(module: nn.Module) -> bool:
    """True for an open_clip ModifiedResNet Bottleneck whose tail the kernel computes: eval mode, bn3 with running
    statistics, a plain ReLU at the end."""
    from open_clip.modified_resnet import Bottleneck

    return (type(module) is Bottleneck and not module.training and not module.bn3.training
            and module.bn3.running_mean is not None and type(module.act3) is nn.ReLU)


def _forward(block: nn.Module, params: tuple[torch.Tensor, ...], state, current: dict,
             x: torch.Tensor) -> torch.Tensor:
    """open_clip's Bottleneck.forward with ``bn3(out) + identity; act3`` as one kernel.  x: [B, C_in, H, W]."""
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in block.parameters())):
        raise RuntimeError("atlas.mining.fused_tails: the fused block tail computes no gradients; run the model under "
                           "torch.no_grad() (as atlas.mining does) or outside fused_tails")
    identity = x
    out = block.act1(block.bn1(block.conv1(x)))
    out = block.act2(block.bn2(block.conv2(out)))
    out = block.avgpool(out)
    y = block.conv3(out)  # [B, C, h, w]
    if block.downsample is not None:
        identity = block.downsample(x)
    if state is None:
        return bottleneck_tail_triton(y, identity, block.bn3, params=params)[0]
    index = current["index"]  # [B] int64
    reduce = (index, state.values[:, -1], state.index[:, -1], state.cfg.rank_by)
    out, reduced = bottleneck_tail_triton(y, identity, block.bn3, reduce, params=params)
    state.update(index, out, reduced)
    return out


@contextmanager
def fused_tails(blocks: Mapping[str, nn.Module], states: Mapping[str, object] | None = None,
                current: dict | None = None) -> Iterator[None]:
    """Run each of ``blocks`` (name -> a `fusable` module) with its tail fused, feeding ``states[name]`` (a
    LayerState) with ``current["index"]`` as the batch's image indices; see the module docstring."""
    for name, block in blocks.items():
        if not fusable(block):
            raise ValueError(f"fused_tails: {name} ({type(block).__name__}) is not an open_clip Bottleneck in eval "
                             "mode ending in ReLU; mine it through a forward hook instead")
    if states is not None and (current is None or not set(blocks) <= set(states)):
        raise ValueError("fused_tails: with states, pass a state for every block and ``current`` (the dict whose "
                         "'index' holds the batch's image indices)")
    saved = {name: block.__dict__.get("forward") for name, block in blocks.items()}  # an instance's own forward
    try:
        for name, block in blocks.items():
            state = states[name] if states is not None else None
            params = bn_params(block.bn3)  # computed once: the weights do not change while mining
            block.forward = lambda x, b=block, p=params, s=state: _forward(b, p, s, current, x)
        yield
    finally:
        for name, block in blocks.items():
            if saved[name] is None:
                block.__dict__.pop("forward", None)  # the class's forward again
            else:
                block.forward = saved[name]
