"""The fast render path: many neurons per batch, the model cut at the target layer, bf16, compiled.

`render` in render.py is the reference: lucent objectives over a full forward with hooks, fp32.  This
module renders the same channel visualizations (same parameterization, same per-image transforms drawn
from the same generator, same Adam) with what makes it fast on a GPU:

- the image tower is traced with torch.fx, its graph cut right after the target layer's pre-activation
  (what `_Activations` hooks), so later blocks and the attention pool are never computed, and its eval
  BatchNorms folded into the preceding convolutions; the model's own modules are not touched (a copy);
- all steps' random transforms are drawn up front and applied as one `grid_sample` per step for the
  whole batch, which also resizes the parameterized image to the model's input;
- bf16 autocast and channels_last for the tower; optionally `torch.compile` (guarded: a failed compile
  falls back to the uncompiled tower with a warning);
- the objective is indexed directly: loss = -sum_i mean(act[i, unit_i]) (lucent's channel objective
  summed over the batch), and the per-step history stays on the device until the end.

Where the tower cannot be traced (some ViTs, transformers' towers), the cut is made with a hook that
raises once the layer has run (the reference's trick), with a warning.  `FastRenderer` keeps the
prepared (and compiled) tower for many batches; `render_channels_fast` is the one-call form.
"""

from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..capture import hooked
from ..config import FeatureVisConfig
from ..models import LayerInfo, LoadedModel
from .objectives import Goal
from .render import Rendered, StopRender, affine_params, check_goal, image_param, warp

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class FastOptions:
    """How the fast path runs (not what it renders).

    dtype: "auto" (bfloat16 on CUDA, float32 elsewhere), "bfloat16", "float16" or "float32": the autocast
        dtype of the tower's forward and backward;
    compile: "auto" (on for CUDA), "on" or "off": `torch.compile` the cut tower (one compile per batch
        size; batches are padded to ``cfg.batch`` so that one compile serves a whole job);
    channels_last: channels-last memory layout for the tower and its input;
    fold_bn: fold eval BatchNorms into the convolutions before them (traced towers only).
    """

    dtype: str = "auto"
    compile: str = "auto"
    channels_last: bool = True
    fold_bn: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be 'auto' or one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.compile not in ("auto", "on", "off"):
            raise ValueError(f"compile must be 'auto', 'on' or 'off', got {self.compile!r}")


class _Cut(Exception):
    """The tower cannot be cut by tracing; the message says why."""


def _fold_bn(gm: fx.GraphModule) -> None:
    """Fold every eval BatchNorm2d whose input is a Conv2d used only by it (torch.fx's conv-bn fusion)."""
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        conv_node = node.args[0]
        if (not isinstance(conv_node, fx.Node) or conv_node.op != "call_module"
                or not isinstance(modules[conv_node.target], nn.Conv2d) or len(conv_node.users) != 1):
            continue
        conv, bn = modules[conv_node.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
        parent, _, name = conv_node.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        node.replace_all_uses_with(conv_node)
        gm.graph.erase_node(node)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return name in self.leaves or super().is_leaf_module(m, name)


def cut_tower(model: LoadedModel, info: LayerInfo, fold_bn: bool = True,
              extra: Sequence[LayerInfo] = ()) -> fx.GraphModule:
    """A traced copy of the image tower that returns ``info``'s hooked tensor (its pre-activation where it
    has one, else its output) and computes nothing after it.  Input: normalized pixels [B, 3, S, S].
    With ``extra`` layers (earlier ones: a facet's layer) it returns a tuple, the target's tensor first, then each
    extra layer's *output*.  Raises `_Cut` where the tower cannot be traced or a layer is not found in the trace."""
    hooks = [(info.pre_activation or info.name, bool(info.pre_activation))] + [(e.name, False) for e in extra]
    if not all(h.startswith("visual.") for h, _ in hooks):
        raise _Cut(f"layer {info.name} or a facet layer is not inside model.clip.visual")
    targets = [h[len("visual."):] for h, _ in hooks]
    visual = copy.deepcopy(model.clip.visual).eval()
    for p in visual.parameters():
        p.requires_grad_(False)
    try:
        tracer = _LeafTracer(targets)
        gm = fx.GraphModule(visual, tracer.trace(visual))
    except Exception as e:  # any tracing failure: the caller falls back to the hook cut
        raise _Cut(f"torch.fx cannot trace {type(visual).__name__} ({type(e).__name__}: {e})") from e
    graph = gm.graph
    outs = []
    for target, (_, pre) in zip(targets, hooks):
        found = [n for n in graph.nodes if n.op == "call_module" and n.target == target]
        if len(found) != 1:
            raise _Cut(f"module {target} is called {len(found)} times in the traced tower (need exactly once)")
        out = found[0].args[0] if pre else found[0]
        if not isinstance(out, fx.Node):
            raise _Cut(f"the input of {target} is not a traced tensor")
        outs.append(out)
    for old in [n for n in graph.nodes if n.op == "output"]:
        graph.erase_node(old)
    graph.output(outs[0] if len(outs) == 1 else tuple(outs))
    for n in reversed(list(graph.nodes)):  # drop everything the new output does not need
        if n.op not in ("placeholder", "output") and not n.users:
            graph.erase_node(n)
    if fold_bn:
        _fold_bn(gm)
    gm.delete_all_unused_submodules()
    graph.lint()
    gm.recompile()
    return gm


class _HookTower(nn.Module):
    """The untraceable fallback: the full tower's forward, stopped by a hook once the layer has run."""

    def __init__(self, model: LoadedModel, info: LayerInfo, extra: Sequence[LayerInfo] = ()):
        super().__init__()
        self.model, self.info, self.extra = model, info, list(extra)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        got: list[torch.Tensor] = []
        low: dict[str, torch.Tensor] = {}

        def stop(_name: str, out: torch.Tensor) -> None:
            got.append(out)  # nothing runs after the raise, so no in-place op can overwrite it
            raise StopRender

        def keep(name: str, out: torch.Tensor) -> None:
            low[name] = out.clone()  # later in-place ops must not change it

        hook = self.info.pre_activation or self.info.name
        with hooked(self.model.clip, [e.name for e in self.extra], keep), \
                hooked(self.model.clip, [hook], stop, inputs=bool(self.info.pre_activation)):
            try:
                self.model.clip.encode_image(x)
            except StopRender:
                pass
        return (got[0], *(low[e.name] for e in self.extra)) if self.extra else got[0]


@contextmanager
def _frozen(module: nn.Module | None):
    """No parameter of ``module`` requires grad inside the block (the hook-cut tower runs the model's own
    modules; the traced tower is a frozen copy)."""
    params = list(module.parameters()) if module is not None else []
    requires = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in zip(params, requires):
            p.requires_grad_(r)


class FastRenderer:
    """Channel visualizations of one layer's units, many per batch (see the module docstring).

    Build once per (model, layer) and call `render` for each batch; the cut tower is a copy, so the
    model's weights must not change between calls (build a new renderer if they do)."""

    def __init__(self, model: LoadedModel, layer: str, options: FastOptions = FastOptions(),
                 extra_layers: Sequence[str] = ()):
        """``extra_layers``: earlier layers also returned, at their output (a facet's layer: `render_goal`)."""
        self.model, self.info, self.options = model, model.layer(layer), options
        self.extra = [model.layer(n) for n in extra_layers]
        self.device = model.device
        cuda = self.device.type == "cuda"
        self.dtype = DTYPES.get(options.dtype, torch.bfloat16 if cuda else torch.float32)
        self.traced = True
        try:
            tower: nn.Module = cut_tower(model, self.info, options.fold_bn, self.extra)
        except _Cut as e:
            warnings.warn(f"featurevis fast path: {e}; cutting the forward with a hook instead "
                          "(correct, somewhat slower)", stacklevel=2)
            tower, self.traced = _HookTower(model, self.info, self.extra), False
        if options.channels_last:
            tower = tower.to(memory_format=torch.channels_last)
        self.tower = tower
        want = options.compile == "on" or (options.compile == "auto" and cuda)
        if want and not self.traced:
            warnings.warn("featurevis fast path: the hook-cut tower is not compiled", stacklevel=2)
        self.compiled = torch.compile(tower, dynamic=False) if want and self.traced else None
        self._checked: set[int] = set()  # batch sizes the compiled tower has run forward and backward

    def activations(self, x01: torch.Tensor, compiled: bool = True) -> torch.Tensor:
        """x01: [B, 3, S, S] in [0, 1] at the model's input size -> the layer's map [B, U, h, w] (float32); with
        extra layers a list: the layer's map, then each extra layer's.
        ``compiled=False`` runs the uncompiled tower (a single no-grad forward is not worth a compile)."""
        x = self.model.normalize(x01)
        if self.options.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        use = compiled and self.compiled is not None and x.shape[0] in self._checked
        fn = self.compiled if use else self.tower
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = fn(x)
            if self.extra:  # (target, extra layers' outputs): see `maps`
                return [i.canonical(o).float() for i, o in zip([self.info, *self.extra], out)]
            return self.info.canonical(out).float()

    def _check_compiled(self, batch: int) -> None:
        """Compile for this batch size by running one forward and backward; on failure warn and go eager."""
        if self.compiled is None or batch in self._checked:
            return
        s = self.model.image_size
        x = torch.full((batch, 3, s, s), 0.5, device=self.device, requires_grad=True)
        try:
            self._checked.add(batch)
            out = self.activations(x)
            (sum(o.sum() for o in out) if isinstance(out, list) else out.sum()).backward()
        except Exception as e:  # noqa: BLE001 -- compile failures come in many types
            self._checked.discard(batch)
            self.compiled = None
            warnings.warn(f"featurevis fast path: torch.compile failed ({type(e).__name__}: {e}); "
                          "running the tower uncompiled (pass FastOptions(compile='off') to skip trying)",
                          stacklevel=3)

    def render(self, units: Sequence[int], cfg: FeatureVisConfig = FeatureVisConfig()) -> Rendered:
        """Render ``units[i]`` on batch element ``i``.  When compiled, the batch is padded to
        ``cfg.batch`` (extra images are rendered and dropped) so that every batch reuses one compile."""
        units = [int(u) for u in units]
        bad = [u for u in units if not 0 <= u < self.info.units]
        if bad:
            raise ValueError(f"layer {self.info.name} has {self.info.units} units; no unit {bad[0]}")
        n = len(units)
        padded = units + [units[-1]] * (cfg.batch - n) if self.compiled is not None and n < cfg.batch else units
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=True, deterministic=cudnn.deterministic,
                         allow_tf32=cudnn.allow_tf32):  # the same shapes for every step: let cuDNN choose
            self._check_compiled(len(padded))
            with _frozen(self.model.clip if not self.traced else None):
                r = self._optimize(padded, cfg)
        return Rendered(r.images[:n], r.objective[:n], r.history[:, :n])

    def _optimize(self, units: list[int], cfg: FeatureVisConfig) -> Rendered:
        b, dev, s = len(units), self.device, self.model.image_size
        params, image_fn = image_param(b, cfg.size, cfg, dev)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed + 1)  # the reference's draws, in the same order
        theta = torch.stack([affine_params(cfg, b, gen) for _ in range(cfg.steps)]).to(dev)  # [steps, B, 2, 3]
        rows, idx = torch.arange(b, device=dev), torch.tensor(units, device=dev)
        history = torch.zeros(cfg.steps, b, device=dev)
        for step in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            own = self.activations(warp(image_fn(), theta[step], s))[rows, idx].mean((1, 2))  # [B]
            (-own.sum()).backward()
            opt.step()
            history[step] = own.detach()
        with torch.no_grad():
            final = image_fn()  # [B, 3, size, size] in [0, 1]
            x = final if cfg.size == s else F.interpolate(final, size=(s, s), mode="bilinear", align_corners=False)
            score = self.activations(x, compiled=False)[rows, idx].mean((1, 2))
        images = (final.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Rendered(images, score.cpu().numpy(), history.cpu().numpy().astype(np.float32))


    def render_goal(self, goal: Goal, cfg: FeatureVisConfig = FeatureVisConfig()) -> Rendered:
        """Render any kind (objectives.py) on the fast path; `render.render_goal` is its reference.  The renderer
        must have been built for ``goal.layer`` with the goal's facet layer as its extra layer.  When compiled,
        the batch is padded (with copies of the last unit's group) to the largest multiple of the group in
        ``cfg.batch``."""
        if goal.layer != self.info.name or goal.layers[1:] != [e.name for e in self.extra]:
            raise ValueError(f"this renderer cuts {self.info.name} (extra {[e.name for e in self.extra]}); the goal "
                             f"needs {goal.layers}")
        check_goal(self.model, goal)
        n = len(goal.units)
        size = max(goal.group, cfg.batch // goal.group * goal.group)
        padded = goal.pad(size) if self.compiled is not None and n < size else goal
        cudnn = torch.backends.cudnn
        with cudnn.flags(enabled=cudnn.enabled, benchmark=True, deterministic=cudnn.deterministic,
                         allow_tf32=cudnn.allow_tf32):
            self._check_compiled(len(padded.units))
            with _frozen(self.model.clip if not self.traced else None):
                r = self._optimize_goal(padded, cfg)
        return Rendered(r.images[:n], r.objective[:n], r.history[:, :n])

    def _maps(self, x01: torch.Tensor, compiled: bool = True) -> Callable[[str], torch.Tensor]:
        out = self.activations(x01, compiled)
        named = dict(zip([self.info.name, *(e.name for e in self.extra)], out if isinstance(out, list) else [out]))
        return named.__getitem__

    def _optimize_goal(self, goal: Goal, cfg: FeatureVisConfig) -> Rendered:
        b, dev, s = len(goal.units), self.device, self.model.image_size
        params, image_fn = image_param(b, cfg.size, cfg, dev)
        opt = torch.optim.Adam(params, lr=cfg.lr)
        gen = torch.Generator().manual_seed(cfg.seed + 1)  # the reference's draws, in the same order
        theta = torch.stack([affine_params(cfg, b, gen) for _ in range(cfg.steps)]).to(dev)  # [steps, B, 2, 3]
        goal = goal.to(dev)
        history = torch.zeros(cfg.steps, b, device=dev)
        for step in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            total, own = goal.scores(self._maps(warp(image_fn(), theta[step], s)))
            (-total).backward()
            opt.step()
            history[step] = own.detach()
        with torch.no_grad():
            final = image_fn()  # [B, 3, size, size] in [0, 1]
            x = final if cfg.size == s else F.interpolate(final, size=(s, s), mode="bilinear", align_corners=False)
            score = goal.scores(self._maps(x, compiled=False))[1]
        images = (final.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        return Rendered(images, score.cpu().numpy(), history.cpu().numpy().astype(np.float32))


def render_channels_fast(model: LoadedModel, layer: str, units: Sequence[int],
                         cfg: FeatureVisConfig = FeatureVisConfig(),
                         options: FastOptions = FastOptions()) -> Rendered:
    """`render_channels` on the fast path (one call; keep a `FastRenderer` to render many batches)."""
    return FastRenderer(model, layer, options).render(units, cfg)


__all__ = ["FastOptions", "FastRenderer", "cut_tower", "render_channels_fast"]
