"""What a feature visualization optimizes: the kinds (channel, neuron, direction, diversity, faceted), batched.

A `Goal` says what each batch element of one render maximizes.  It has two forms that must agree:

- `Goal.scores(T)` -> (objective to maximize [scalar], per-image score [B]): plain tensor arithmetic over the whole
  batch, used by the fast path (fast.py);
- `Goal.lucent()` -> the same objective composed from torch-lucent's own objectives (`objectives.channel`, `neuron`,
  `direction`, `diversity`, `channel_weight`), the reference (render.py's loop minimizes it; lucent's objectives are
  losses, so ``lucent()(T) == -scores(T)[0]``).  tests/test_featurevis_kinds.py checks value and gradient against
  lucent's API directly.

Kinds (docs/featurevis.md), each summed over the batch, element ``i`` showing ``units[i]``:

- ``channel``: mean of the unit's map (lucent ``channel``);
- ``neuron``: the unit at the map's centre position (lucent ``neuron``; for an even side the cell below and right of
  the centre; lucent's rule ``row = w // 2, col = h // 2``);
- ``direction``: the mean over positions of the cosine between the activation vector and a given direction
  (lucent ``direction``: its objective is a cosine, not a raw dot product, so the scale of the vector does not matter);
- ``diversity``: ``n`` images per unit; the channel objective plus ``weight`` x lucent's ``diversity`` term of each
  unit's group (minus the summed cosine similarity of the images' Gram matrices at the layer, over n);
- ``faceted``: the channel objective plus ``weight`` x the facet's logit at a lower layer (mean over positions of
  ``w . a``, a the lower layer's output; the probe's logit without its bias; lucent ``channel_weight`` x channels).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from lucent.optvis import objectives

from ..errors import ConfigError

KINDS = ("channel", "neuron", "direction", "diversity", "faceted")

TFn = Callable[[str], torch.Tensor]  # lucent's ``T``: layer name -> [B, C, h, w]


def centre(a: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, C]: lucent's default position (`objectives_util._extract_act_pos`: row w // 2, col h // 2)."""
    h, w = a.shape[2], a.shape[3]
    return a[:, :, w // 2, h // 2]


def diversity_term(a: torch.Tensor, group: int) -> torch.Tensor:
    """lucent's ``diversity`` value of each consecutive group of ``group`` images: a [B, C, h, w] -> [B // group].

    Per image the Gram matrix G = F F^T of its channels over positions (F: [C, P], P = h * w), normalized to unit
    Frobenius norm; per group ``-sum_{i != j} <G_i, G_j> / group`` (lucent's sign: larger is more diverse).  Where
    P < C the inner products are taken as ``<G_i, G_j> = |F_i^T F_j|^2`` (P x P matrices instead of C x C: the
    same numbers, for deep layers a fraction of the memory: a batch of 64 RN50x4 Grams is 1.7 GB)."""
    b, c = a.shape[:2]
    flat = a.reshape(b // group, group, c, -1)  # [G, n, C, P]
    if flat.shape[-1] < c:
        cross = torch.einsum("gicp,gjcq->gijpq", flat, flat)  # F_i^T F_j: [G, n, n, P, P]
        dots = cross.pow(2).sum((-2, -1))  # <G_i, G_j>: [G, n, n]
    else:
        grams = (flat @ flat.transpose(-1, -2)).flatten(-2)  # [G, n, C * C]
        dots = grams @ grams.transpose(-1, -2)
    norms = dots.diagonal(dim1=-2, dim2=-1).sqrt().clamp_min(1e-12)  # F.normalize's eps
    sim = dots / (norms[..., :, None] * norms[..., None, :])  # [G, n, n] cosines
    off = sim.sum((1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(1)
    return -off / group


@dataclass(frozen=True, eq=False)
class Goal:
    """What one render batch maximizes (module docstring).  ``units[i]``: the unit of batch element i (for
    ``diversity``, each unit repeats ``group`` times in a row); ``directions`` [B, C] (``direction``); ``facet``
    [C_low] weights at ``facet_layer``; ``weight``: of the diversity or facet term."""

    kind: str
    layer: str
    units: tuple[int, ...]
    directions: torch.Tensor | None = None
    group: int = 1
    weight: float = 0.0
    facet_layer: str = ""
    facet: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; one of {', '.join(KINDS)}")
        if self.kind == "direction" and (self.directions is None or len(self.directions) != len(self.units)):
            raise ValueError("a direction goal needs one direction per batch element")
        if self.kind == "diversity" and (self.group < 2 or len(self.units) % self.group):
            raise ValueError(f"a diversity goal needs groups of >= 2 images; {len(self.units)} images "
                             f"in groups of {self.group}")
        if self.kind == "faceted" and (self.facet is None or not self.facet_layer):
            raise ValueError("a faceted goal needs the facet's layer and weights")

    def pad(self, size: int) -> "Goal":
        """The goal with its last group (unit, direction) repeated until it has ``size`` batch elements."""
        extra = size - len(self.units)
        if extra <= 0:
            return self
        reps = -(-extra // self.group)
        units = self.units + self.units[-self.group:] * reps
        dirs = None if self.directions is None else torch.cat([self.directions] + [self.directions[-self.group:]] * reps)
        return replace(self, units=units[:size], directions=None if dirs is None else dirs[:size])

    def to(self, device: torch.device) -> "Goal":
        """The goal with its tensors on ``device``."""
        return replace(self, directions=None if self.directions is None else self.directions.to(device),
                       facet=None if self.facet is None else self.facet.to(device))

    @property
    def layers(self) -> list[str]:
        """The layers its ``T`` must hold (the facet's layer is read at its output, not its pre-activation)."""
        return [self.layer] + ([self.facet_layer] if self.kind == "faceted" else [])

    def scores(self, T: TFn) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective to maximize, a scalar; each image's own score [B]: what the site shows as the objective).

        The score is the unit's term alone (channel mean, centre value or cosine), without diversity or facet."""
        a = T(self.layer)  # [B, C, h, w]
        dev = a.device
        rows = torch.arange(a.shape[0], device=dev)
        if self.kind == "neuron":
            own = centre(a)[rows, torch.tensor(self.units, device=dev)]
        elif self.kind == "direction":
            d = self.directions.to(dev, a.dtype)[:, :, None, None]  # [B, C, 1, 1]
            own = F.cosine_similarity(d, a, dim=1).mean((1, 2))
        else:
            own = a[rows, torch.tensor(self.units, device=dev)].mean((1, 2))
        total = own.sum()
        if self.kind == "diversity":
            total = total + self.weight * diversity_term(a, self.group).sum()
        elif self.kind == "faceted":
            low = T(self.facet_layer)  # [B, C_low, h', w']
            total = total + self.weight * facet_logits(low, self.facet).sum()
        return total, own

    def lucent(self) -> objectives.Objective:
        """The same objective as a lucent loss (to minimize), built from lucent's objectives alone."""
        L = self.layer
        if self.kind == "neuron":
            terms = [objectives.neuron(L, u, batch=i) for i, u in enumerate(self.units)]
        elif self.kind == "direction":
            terms = [objectives.direction(L, self.directions[i], batch=i) for i in range(len(self.units))]
        else:
            terms = [objectives.channel(L, u, batch=i) for i, u in enumerate(self.units)]
        obj = objectives.Objective.sum(terms)
        if self.kind == "diversity":
            for g in range(len(self.units) // self.group):
                obj = obj - self.weight * _on_rows(objectives.diversity(L), g * self.group, self.group)
        elif self.kind == "faceted":
            c = int(self.facet.shape[0])
            for i in range(len(self.units)):
                obj = obj + (self.weight * c) * objectives.channel_weight(self.facet_layer, self.facet, batch=i)
        return obj


def facet_logits(low: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] activations, [C] facet weights -> [B]: the mean over positions of ``w . a`` (the facet probe's
    logit on the image, without its bias: the probe is linear in the pooled mean)."""
    return torch.einsum("bchw,c->b", low, w.to(low.device, low.dtype)) / (low.shape[2] * low.shape[3])


def _on_rows(obj: objectives.Objective, start: int, n: int) -> objectives.Objective:
    """``obj`` evaluated on batch rows [start, start + n) only (lucent's ``diversity`` takes the whole batch)."""
    return objectives.Objective(lambda T: obj(lambda name: T(name)[start:start + n]), obj.name, obj.description)


def direction_rows(vectors: np.ndarray, channels: int, what: str = "--direction-file") -> np.ndarray:
    """A [C] or [K, C] array of directions -> [K, C] float32, checked: finite, non-zero, ``channels`` long."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None]
    if v.ndim != 2 or v.shape[1] != channels:
        raise ConfigError(f"{what}: a direction of this layer has {channels} values (shape [{channels}] or "
                         f"[K, {channels}]); got shape {list(np.shape(vectors))}")
    if not np.isfinite(v).all() or (np.abs(v).sum(1) == 0).any():
        raise ConfigError(f"{what}: every direction must be finite and not all zero")
    return v


__all__ = ["Goal", "KINDS", "centre", "direction_rows", "diversity_term", "facet_logits"]
