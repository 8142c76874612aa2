"""Our render loop around torch-lucent's parameterizations and objectives.

What we take from lucent: the Fourier image parameterization (`fft_image`), its colour-decorrelation
matrix, and the objective algebra (`objectives.channel(...)`, sums and scalars).  What we do ourselves,
because lucent's `render_vis` gets it wrong for our use: hooks that always come off and copy the layer
output before later in-place ops; CLIP's normalization; an explicit device (lucent hard-codes cuda:0);
one random transform *per image* (lucent draws one per batch); no image display; many neurons per
batch, one neuron per batch element.

`render_channels` is the simple call; `render` takes any lucent objective over a batch.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from lucent.optvis import objectives
from lucent.optvis.param import color as lucent_color
from lucent.optvis.param import spatial as lucent_spatial

from ..capture import hooked
from ..config import FeatureVisConfig
from ..models import LoadedModel
from .objectives import Goal


class StopRender(Exception):
    """Raised from a hook once every needed layer is captured: the rest of the forward is skipped."""


@dataclass
class Rendered:
    images: np.ndarray  # [B, S, S, 3] uint8
    objective: np.ndarray  # [B] mean activation of each image's own neuron, untransformed image
    history: np.ndarray  # [steps, B] the same, per step, on the transformed images


@contextmanager
def _lucent_device(device: torch.device) -> Iterator[None]:
    """lucent creates parameters on a module-level device; point it at ours for the block."""
    old = lucent_spatial.device
    lucent_spatial.device = device
    try:
        yield
    finally:
        lucent_spatial.device = old


def image_param(batch: int, size: int, cfg: FeatureVisConfig, device: torch.device,
                ) -> tuple[list[torch.Tensor], Callable[[], torch.Tensor]]:
    """lucent's (params, image_fn) with image_fn() -> [batch, 3, size, size] in [0, 1] on ``device``."""
    with _lucent_device(device), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.fft:
            params, raw = lucent_spatial.fft_image((batch, 3, size, size), sd=0.01)
        else:
            params, raw = lucent_spatial.pixel_image((batch, 3, size, size), sd=0.01)
    matrix = torch.tensor(lucent_color.color_correlation_normalized.T, device=device)

    def image_fn() -> torch.Tensor:
        x = raw()  # [B, 3, S, S] unbounded
        if cfg.decorrelate:
            x = torch.einsum("bchw,cd->bdhw", x, matrix)
        return torch.sigmoid(x)

    return params, image_fn


def affine_params(cfg: FeatureVisConfig, batch: int, gen: torch.Generator, size: int | None = None,
                  ) -> torch.Tensor:
    """One random jitter / scale / rotation per image, as [batch, 2, 3] affine matrices (CPU, float32)
    in `F.affine_grid`'s normalized coordinates: output pixel p samples the input at theta @ (p, 1).
    Jitter is in pixels of an image of side ``size`` (default ``cfg.size``)."""
    scales = torch.tensor(cfg.scales)
    scale = scales[torch.randint(len(cfg.scales), (batch,), generator=gen)]
    angle = (torch.rand(batch, generator=gen) * 2 - 1) * math.radians(cfg.rotate_degrees)
    shift = torch.randint(-cfg.jitter, cfg.jitter + 1, (batch, 2), generator=gen).float() * 2 / (size or cfg.size)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                        torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # [B, 2, 3]


def warp(x: torch.Tensor, theta: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
    """Warp each image by its own affine matrix, bilinear and reflect-padded, in one `grid_sample`.

    x: [B, 3, s, s], theta: [B, 2, 3] -> [B, 3, out_size, out_size] (default out_size: s).  With the
    identity matrix and out_size == s the output equals the input; with another out_size the same call
    is a bilinear resize (align_corners=False), so warping and resizing to the model's input cost one pass."""
    b, c, s, _ = x.shape
    out = out_size or s
    grid = F.affine_grid(theta.to(x.device, x.dtype), [b, c, out, out], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def random_transform(x: torch.Tensor, cfg: FeatureVisConfig, gen: torch.Generator) -> torch.Tensor:
    """Per-image random jitter, scale and rotation (one affine warp each), reflect-padded.

    x: [B, 3, S, S] -> [B, 3, S, S]."""
    return warp(x, affine_params(cfg, x.shape[0], gen, size=x.shape[-1]))


class _Activations:
    """Forward an image batch and expose the hooked layers in canonical layout: lucent's ``T``.

    Where a layer ends in a ReLU, ``T(layer)`` is its pre-activation (the residual sum, Microscope's "Add"
    node): a unit that is off on the starting noise still has a gradient to follow, and the image that
    maximizes the pre-activation also maximizes the output once it is positive."""

    def __init__(self, model: LoadedModel, layers: Sequence[str], outputs: Sequence[str] = ()):
        """``outputs``: layers of ``layers`` read at their module output even where they end in a ReLU (a facet's
        layer: its probe was trained on the output)."""
        self.model = model
        self.infos = {n: model.layer(n) for n in layers}
        self.hook_names = {(n if n in outputs else i.pre_activation or n): n for n, i in self.infos.items()}
        self.pre = {h for h, n in self.hook_names.items() if h != n}
        self.acts: dict[str, torch.Tensor] = {}

    def __call__(self, name: str) -> torch.Tensor:
        return self.acts[name]

    def forward(self, x01: torch.Tensor) -> None:
        """x01: [B, 3, s, s] in [0, 1]; resized to the model's input and CLIP-normalized."""
        size = self.model.image_size
        if x01.shape[-1] != size:
            x01 = F.interpolate(x01, size=(size, size), mode="bilinear", align_corners=False)
        self.acts = {}

        def keep(hook_name: str, out: torch.Tensor) -> None:
            name = self.hook_names[hook_name]
            self.acts[name] = self.infos[name].canonical(out).clone()  # copy: later in-place ops
            if len(self.acts) == len(self.infos):
                raise StopRender

        pre = [h for h in self.hook_names if h in self.pre]
        post = [h for h in self.hook_names if h not in self.pre]
        with hooked(self.model.clip, pre, keep, inputs=True), hooked(self.model.clip, post, keep):
            try:
                self.model.clip.encode_image(self.model.normalize(x01))
            except StopRender:
                pass


def render(model: LoadedModel, objective: objectives.Objective, layers: Sequence[str], batch: int,
           cfg: FeatureVisConfig = FeatureVisConfig(),
           score: Callable[[Callable[[str], torch.Tensor]], torch.Tensor] | None = None,
           outputs: Sequence[str] = ()) -> Rendered:
    """Optimize ``batch`` images to minimize a lucent ``objective`` over ``layers``.

    ``score(T) -> [batch]`` reports what each image achieves (default: zeros); it is recorded per step
    and on the final untransformed images.  ``outputs``: layers read at their output, not their pre-activation.
    The model's parameters are not changed (nor their grads).
    """
    device = model.device
    params, image_fn = image_param(batch, cfg.size, cfg, device)
    opt = torch.optim.Adam(params, lr=cfg.lr)
    acts = _Activations(model, layers, outputs)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    history = np.zeros((cfg.steps, batch), np.float32)
    requires = [p.requires_grad for p in model.clip.parameters()]
    for p in model.clip.parameters():
        p.requires_grad_(False)
    try:
        for step in range(cfg.steps):
            opt.zero_grad(set_to_none=True)
            acts.forward(random_transform(image_fn(), cfg, gen))
            loss = objective(acts)
            loss.backward()
            opt.step()
            if score is not None:
                history[step] = score(acts).detach().float().cpu().numpy()
        with torch.no_grad():
            final = image_fn()
            acts.forward(final)
            final_score = score(acts).float().cpu().numpy() if score else np.zeros(batch, np.float32)
    finally:
        for p, r in zip(model.clip.parameters(), requires):
            p.requires_grad_(r)
    images = (final.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Rendered(images, final_score, history)


def channel_objective(layer: str, units: Sequence[int]) -> objectives.Objective:
    """lucent's channel objective for unit ``units[i]`` on batch element ``i``, summed."""
    return objectives.Objective.sum([objectives.channel(layer, int(u), batch=i) for i, u in enumerate(units)])


def channel_score(layer: str, units: Sequence[int]) -> Callable[[Callable[[str], torch.Tensor]], torch.Tensor]:
    idx = torch.as_tensor(list(units))

    def score(T: Callable[[str], torch.Tensor]) -> torch.Tensor:
        a = T(layer)  # [B, U, h, w]
        rows = torch.arange(len(idx), device=a.device)
        return a[rows, idx.to(a.device)].mean(dim=(1, 2))

    return score


def render_channels(model: LoadedModel, layer: str, units: Sequence[int],
                    cfg: FeatureVisConfig = FeatureVisConfig()) -> Rendered:
    """Channel visualizations of ``units`` of ``layer``, one neuron per batch element."""
    model.layer(layer)  # clear error for unknown layers
    bad = [u for u in units if not 0 <= int(u) < model.layer(layer).units]
    if bad:
        raise ValueError(f"layer {layer} has {model.layer(layer).units} units; no unit {bad[0]}")
    return render(model, channel_objective(layer, units), [layer], len(units), cfg,
                  channel_score(layer, units))


def render_goal(model: LoadedModel, goal: Goal, cfg: FeatureVisConfig = FeatureVisConfig()) -> Rendered:
    """The reference render of any kind (objectives.py): lucent's objectives (`Goal.lucent`) over hooked layers."""
    check_goal(model, goal)
    return render(model, goal.lucent(), goal.layers, len(goal.units), cfg, lambda T: goal.scores(T)[1],
                  outputs=goal.layers[1:])


def check_goal(model: LoadedModel, goal: Goal) -> None:
    """Units in range, directions and facet weights of the layers' widths, the facet's layer before the target."""
    info = model.layer(goal.layer)
    bad = [u for u in goal.units if not 0 <= int(u) < info.units]
    if bad:
        raise ValueError(f"layer {goal.layer} has {info.units} units; no unit {bad[0]}")
    if goal.directions is not None and goal.directions.shape[-1] != info.units:
        raise ValueError(f"a direction of layer {goal.layer} has {info.units} values, not {goal.directions.shape[-1]}")
    if goal.kind == "faceted":
        low = model.layer(goal.facet_layer)
        if goal.facet.shape[-1] != low.units:
            raise ValueError(f"the facet has {goal.facet.shape[-1]} weights; its layer {low.name} has {low.units} units")
        names = [n for n, _ in model.clip.named_modules()]
        if low.name == info.name or names.index(low.name) > names.index(info.name):
            raise ValueError(f"a facet's layer must come before the visualized layer; {low.name} does not come "
                             f"before {info.name}: train the facet on a lower layer")
