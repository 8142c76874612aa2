"""Facets for faceted feature visualization (the multimodal-neurons paper): a facet is a linear probe on a lower
layer's pooled activations that tells images of one kind (Concept World: written words, pictograms, scenes) from the
others.  `--kind faceted` adds ``weight x`` its logit at that layer to the unit's objective (objectives.py), so the
image shows the unit's concept *in that facet*.

`train_facet` needs no model: it reads the layer's ``pooled`` matrix and the images' labels or captions from the
store, fits an L2-regularized logistic regression on standardized features (full-batch L-BFGS, float64, class-
balanced), folds the standardization back into weights on raw activations and writes the facet into the store.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import store
from ..config import FacetConfig, to_json
from ..errors import StoreError

# facets Concept World's generator can actually produce (its image kinds: atlas.data.conceptworld.KINDS), trained by
# `atlas build` when the data is Concept World (label regexes over ``kind:concept`` labels)
CONCEPTWORLD_FACETS = (("text", r"^word:"), ("pictogram", r"^picto:"), ("scene", r"^scene:"))


@dataclass
class FacetResult:
    name: str
    layer: str
    positives: int
    negatives: int
    train_accuracy: float  # balanced accuracy (mean of the two classes' accuracies)
    val_accuracy: float


def facet_labels(texts: np.ndarray, used: np.ndarray, config: FacetConfig) -> np.ndarray:
    """[N] int8: 1 for images whose text matches ``positive``, 0 for negatives, -1 for images left out (skipped
    images; with a ``negative`` regex, images that match neither)."""
    pos = np.array([re.search(config.positive, t) is not None for t in texts], bool)
    neg = ~pos if not config.negative else np.array([re.search(config.negative, t) is not None for t in texts], bool)
    out = np.full(len(texts), -1, np.int8)
    out[neg & ~pos] = 0
    out[pos] = 1
    out[~used] = -1
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, steps: int) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression: x [n, C] standardized, y [n] in {0, 1} -> (weights [C], bias)."""
    X, Y = torch.from_numpy(x).double(), torch.from_numpy(y).double()
    pos = float(Y.mean())
    sample = torch.where(Y > 0, 0.5 / pos, 0.5 / (1 - pos))  # each class weighs half
    w = torch.zeros(X.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe", tolerance_grad=1e-9)

    def closure():
        opt.zero_grad()
        logits = X @ w + b
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, Y, weight=sample, reduction="sum")
                / len(Y) + 0.5 * l2 * (w * w).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy(), float(b.detach())


def _balanced_accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    hit = (logits > 0) == (y > 0)
    return float(np.mean([hit[y == c].mean() for c in (0, 1) if (y == c).any()]))


def train_facet(store_path: str | os.PathLike, config: FacetConfig) -> FacetResult:
    """Fit the facet ``config.name`` on ``config.layer``'s pooled activations and save it in the store
    (``/facets/<model>/<name>``, replacing one of the same name)."""
    path = Path(store_path)
    with store.Store(path) as st:
        model = str(st.meta["model_name"])
        ld = st.layer(model, config.layer)
        if not ld.has("pooled"):
            raise StoreError(f"layer {config.layer} was mined without pooled activations (--no-pooled); mine it "
                             "again with them to train a facet on it")
        pooled = ld["pooled"].astype(np.float64)  # [N, C]
        texts = st.image_column(config.field)
        used = (st.image_column("status") == 0) & np.isfinite(pooled).all(1)
    y = facet_labels(texts, used, config)
    keep = np.nonzero(y >= 0)[0]
    n_pos, n_neg = int((y[keep] == 1).sum()), int((y[keep] == 0).sum())
    if min(n_pos, n_neg) < 2:
        raise StoreError(f"facet {config.name}: --positive {config.positive!r} on the images' {config.field}s gives "
                         f"{n_pos} positives and {n_neg} negatives; a facet needs at least 2 of each (look at the "
                         "store's labels with `atlas info` and pick a regex that matches some images)")
    rng = np.random.default_rng(config.seed)
    val = np.zeros(len(keep), bool)
    val[rng.permutation(len(keep))[:max(1, int(round(config.val_fraction * len(keep))))]] = True
    train, held = keep[~val], keep[val]
    if len(np.unique(y[train])) < 2:
        train, held = keep, keep  # too few images to hold some out
    mean, std = pooled[train].mean(0), pooled[train].std(0)
    std = np.where(std > 0, std, 1.0)
    w_std, b_std = fit_logistic((pooled[train] - mean) / std, y[train].astype(np.float64), config.l2, config.steps)
    w = w_std / std  # raw pooled . w + b == standardized . w_std + b_std
    b = b_std - float((mean / std) @ w_std)
    logits = pooled @ w + b
    result = FacetResult(config.name, config.layer, n_pos, n_neg, _balanced_accuracy(logits[train], y[train]),
                         _balanced_accuracy(logits[held], y[held]))
    figures = {"positives": n_pos, "negatives": n_neg, "train_accuracy": result.train_accuracy,
               "val_accuracy": result.val_accuracy, "train_images": int(len(train)), "val_images": int(len(held))}
    with store.lock(path):
        store.write_facet(path, model, store.Facet(config.name, config.layer, w.astype(np.float32), b,
                                                   to_json(config), figures))
    return result


def conceptworld_facets(store_path: str | os.PathLike, layers: list[str], mined: list[str]) -> list[tuple[str, str]]:
    """`atlas build --facets`: train Concept World's facets (`CONCEPTWORLD_FACETS`) on the mined layer before each
    of ``layers`` (skipping a facet already stored with the same config); returns (layer, facet) pairs to render.
    A facet is named ``<name>`` on the layer before the last visualized layer, ``<name>@<layer>`` for others."""
    out = []
    with store.Store(store_path) as st:
        have = st.facets(str(st.meta["model_name"]))
    for k, layer in enumerate(layers):
        i = mined.index(layer) if layer in mined else -1
        if i < 1:
            raise StoreError(f"--facets: layer {layer} has no mined layer before it to train a facet on; mine one "
                             "(--layers) or leave --facets out")
        for name, pattern in CONCEPTWORLD_FACETS:
            full = name if k == len(layers) - 1 else f"{name}@{mined[i - 1]}"
            cfg = FacetConfig(name=full, layer=mined[i - 1], positive=pattern)
            if full not in have or have[full].config != to_json(cfg):
                train_facet(store_path, cfg)
            out.append((layer, full))
    return out


__all__ = ["CONCEPTWORLD_FACETS", "conceptworld_facets", "FacetResult", "facet_labels", "fit_logistic", "train_facet"]
