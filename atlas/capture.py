"""Forward hooks that see a layer's true output, and always come off.

A hook runs the moment its module returns, before any later in-place op (CLIP's Bottleneck ends in
``out += identity; ReLU(inplace=True)``, and a conv output may be overwritten by the next in-place
ReLU).  So the callback must consume the tensor at once: reduce it, or copy it.  `capture` copies;
`atlas.mining` reduces.  Hooks are removed in a ``finally`` block, whatever happens in between.
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


def find_modules(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    found = {}
    for name in names:
        if name not in modules:
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"no module named {name!r} in {type(model).__name__}{hint}")
        found[name] = modules[name]
    return found


@contextmanager
def hooked(model: nn.Module, names: Sequence[str], fn: Callable[[str, torch.Tensor], None],
           inputs: bool = False) -> Iterator[None]:
    """Call ``fn(name, output)`` for each named module's output during forwards inside the block
    (with ``inputs=True``: ``fn(name, first input)``, before the module runs, e.g. before an in-place ReLU).

    ``fn`` must not keep the tensor without copying it: later in-place ops may overwrite it.
    """
    handles = []
    try:
        for name, module in find_modules(model, names).items():
            if inputs:
                def pre_hook(_module, args, _name=name):
                    fn(_name, args[0])
                handles.append(module.register_forward_pre_hook(pre_hook))
            else:
                def hook(_module, _inputs, output, _name=name):
                    fn(_name, output)
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def capture(model: nn.Module, names: Sequence[str], run: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Run ``run()`` and return a detached copy of each named module's output (the reference path)."""
    out: dict[str, torch.Tensor] = {}

    def keep(name: str, output: torch.Tensor) -> None:
        out[name] = output.detach().clone()

    with hooked(model, names, keep):
        run()
    return out


def pooled_activations(model, pixels: torch.Tensor, layers: Sequence[str], reduce: str = "max",
                       batch: int = 256) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Run a LoadedModel over [N, 3, S, S] pixels in batches; return ({layer: [N, U]} per-unit spatial ``max``
    or ``mean`` of each layer's canonical map, [N, D] image embeddings), on the CPU."""
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    infos = {n: model.layer(n) for n in layers}
    out: dict[str, list[torch.Tensor]] = {i.name: [] for i in infos.values()}
    by_name = {i.name: i for i in infos.values()}

    def keep(name: str, act: torch.Tensor) -> None:
        flat = by_name[name].canonical(act).detach().float().flatten(2)  # [B, U, h*w]
        out[name].append((flat.amax(2) if reduce == "max" else flat.mean(2)).cpu())

    embs = []
    with torch.no_grad(), hooked(model.clip, list(out), keep):
        for i in range(0, len(pixels), batch):
            embs.append(model.encode_image(pixels[i:i + batch].to(model.device)).float().cpu())
    scores = {n: torch.cat(out[infos[n].name]) for n in layers}
    return scores, torch.cat(embs) if embs else torch.zeros(0)


@contextmanager
def replaced_output(model: nn.Module, module_name: str,
                    fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Forwards inside the block see ``module_name``'s output (its first element, for a tuple) replaced by
    ``fn(output)``, a new tensor (nothing is changed in place)."""
    (module,) = find_modules(model, [module_name]).values()

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def ablated(model: nn.Module, module_name: str, unit: int, layout: str):
    """Forwards inside the block see unit ``unit`` of ``module_name``'s output set to zero (a copy is returned,
    nothing is changed in place).  ``layout``: "nchw" (units are channels, dim 1) or "nlc" (units last)."""

    def zeroed(first: torch.Tensor) -> torch.Tensor:
        out = first.clone()
        if layout == "nchw":
            out[:, unit] = 0
        else:
            out[..., unit] = 0
        return out

    return replaced_output(model, module_name, zeroed)
