"""Sparse linear probes on a layer's pooled activations: which neurons compose a class.

`fit_probe` cleans the labels (rows without a label or without activations are left out; classes with too
few examples are left out, each with the reason), standardizes the features (so weights compare across
neurons), splits train/validation per class, and fits an L1 path (solver.py); the probe kept is the one with
the best validation accuracy.  `composition` reads a class off it: "piggy bank = 2.5 finance + 1.1 dolls".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..config import ProbeConfig
from .solver import ProbePath, l1_path
from ..errors import AtlasError


class ProbeError(AtlasError, ValueError):
    pass


@dataclass
class Probe:
    classes: list[str]
    W: np.ndarray  # [C, F] on standardized features; exact zeros where the L1 penalty removed a neuron
    b: np.ndarray  # [C]
    mean: np.ndarray  # [F] feature mean (train split)
    std: np.ndarray  # [F] feature std (train split; 1 where constant)
    path: ProbePath
    n_train: int
    n_val: int
    left_out: list[tuple[str, int, str]] = field(default_factory=list)  # (what, count, why)

    @property
    def val_accuracy(self) -> float:
        return self.path.val_acc[self.path.best]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """[N, F] raw pooled activations -> [N] class indices."""
        z = (features - self.mean) / self.std
        return np.argmax(z @ self.W.T + self.b, axis=1)

    def neurons_per_class(self) -> float:
        return float((self.W != 0).sum(1).mean())


def labels_from_pattern(labels: list[str] | np.ndarray, pattern: str | None) -> list[str]:
    """Map raw labels through a regex: group 1 (or the whole match) is the class; no match -> "" (unlabeled)."""
    if not pattern:
        return [str(x) for x in labels]
    rx = re.compile(pattern)
    out = []
    for x in labels:
        m = rx.fullmatch(str(x))
        out.append((m.group(1) if m.groups() else m.group(0)) if m else "")
    return out


def fit_probe(features: np.ndarray, labels: list[str], config: ProbeConfig = ProbeConfig(),
              device: str | torch.device = "cpu", skipped: np.ndarray | None = None,
              progress: Callable[[int, int], None] | None = None) -> Probe:
    """features: [N, F] pooled activations (NaN rows for skipped images); labels: [N] ("" = no label); skipped:
    [N] bool, the images mining skipped (/images/status != 0; None: the all-NaN rows).  Images left out are
    counted by cause in ``Probe.left_out``: no label, skipped while mining, or non-finite activations that the
    model produced (counted per unit in the store's stats/nonfinite_maps).  A unit that is non-finite on more than 1%
    of the usable images is left out as a feature instead (its weights are 0), so that one overflowing unit does not
    take every image with it."""
    features = np.asarray(features)
    if features.dtype not in (np.float32, np.float64):
        features = features.astype(np.float64)
    labels = np.asarray([str(x) for x in labels], dtype=object)
    if len(labels) != len(features):
        raise ProbeError(f"{len(labels)} labels for {len(features)} images; give one label per image")
    finite = np.isfinite(features)
    skipped = np.isnan(features).all(1) if skipped is None else np.asarray(skipped, bool)
    if len(skipped) != len(features):
        raise ProbeError(f"skipped has {len(skipped)} entries for {len(features)} images; give one per image")
    left_out = []
    no_label = labels == ""
    usable = ~no_label & ~skipped
    bad_units = (~finite[usable]).mean(0) > 0.01 if usable.any() else np.zeros(features.shape[1], bool)
    if bad_units.any():  # a unit the model overflows on often is dropped as a feature, rather than every image
        features = features.copy()
        features[:, bad_units] = 0.0
        finite[:, bad_units] = True
        left_out.append(("units with non-finite activations", int(bad_units.sum()),
                         "inf or NaN on more than 1% of the images: left out as features (weight 0)"))
    nonfinite = ~finite.all(1) & ~skipped
    if no_label.any():
        left_out.append(("images without a label", int(no_label.sum()), "no class to learn"))
    if (skipped & ~no_label).any():
        left_out.append(("images without activations", int((skipped & ~no_label).sum()),
                         "the file could not be decoded while mining"))
    if (nonfinite & ~no_label).any():
        units = int((~finite[nonfinite & ~no_label]).any(0).sum())
        left_out.append(("images with non-finite activations", int((nonfinite & ~no_label).sum()),
                         f"the model produced inf or NaN in {units} unit(s) on them (stats/nonfinite_maps)"))
    keep = ~no_label & ~skipped & ~nonfinite
    classes, counts = np.unique(labels[keep], return_counts=True)
    small = classes[counts < config.min_per_class]
    for c in small:
        left_out.append((f"class {c!r}", int(counts[classes == c][0]),
                         f"fewer than {config.min_per_class} examples: cannot be both trained and validated"))
    keep &= ~np.isin(labels, small)
    classes = [str(c) for c in classes if c not in set(small)]
    if len(classes) < 2:
        raise ProbeError(f"need at least 2 classes with >= {config.min_per_class} labelled images each; found "
                         f"{len(classes)} ({'; '.join(f'{w}: {n} ({why})' for w, n, why in left_out) or 'no labels'})")
    rows = np.nonzero(keep)[0]
    y = np.array([classes.index(c) for c in labels[keep]])
    train, val = _split(y, config.val_fraction, config.seed)
    dev = torch.device(device)
    dtype = torch.float64 if config.float64 else torch.float32
    Ztr, mean, std = standardize(features, rows[train], dtype, dev)
    Zval, _, _ = standardize(features, rows[val], dtype, dev, mean, std)
    path = l1_path(Ztr, torch.as_tensor(y[train], device=dev), len(classes), Zval,
                   torch.as_tensor(y[val], device=dev), n_lambdas=config.n_lambdas, min_ratio=config.min_ratio,
                   tol=config.tol, max_iter=config.max_iter, patience=config.patience, progress=progress)
    W, b = path.W[path.best].numpy().astype(np.float64), path.b[path.best].numpy().astype(np.float64)
    return Probe(classes, W, b, mean, std, path, int(len(train)), int(len(val)), left_out)


def standardize(X: np.ndarray, rows: np.ndarray, dtype: torch.dtype, device: str | torch.device,
                mean: np.ndarray | None = None, std: np.ndarray | None = None, chunk: int = 1 << 15
                ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """(Z [len(rows), F] in ``dtype`` on ``device``, mean [F], std [F]): the rows ``rows`` of X [N, F] (float32 or
    float64, e.g. a store's pooled matrix) standardized with ``mean`` and ``std`` (default: these rows' own, from
    float64 sums; 1 where a feature is constant).  Chunks of rows travel to the device as they are (float32 stays
    float32) and are standardized there before the cast, so a half-precision Z keeps 8 significant bits of the
    centred value, not of the raw one."""
    dev = torch.device(device)
    work = torch.float64 if X.dtype == np.float64 or dtype == torch.float64 else torch.float32

    def parts():  # (offset, [m, F] rows on the device)
        for i in range(0, len(rows), chunk):
            yield i, torch.as_tensor(X[rows[i:i + chunk]]).to(dev, work)

    if mean is None or std is None:
        s1 = torch.zeros(X.shape[1], dtype=torch.float64, device=dev)
        s2 = torch.zeros_like(s1)
        for _, x in parts():  # [m, F]
            s1 += x.sum(0, dtype=torch.float64)
        mu = s1 / max(1, len(rows))
        for _, x in parts():  # a second pass: the centred sum of squares does not cancel
            s2 += ((x.double() - mu) ** 2).sum(0)
        mean = mu.cpu().numpy()
        std = np.sqrt(s2.cpu().numpy() / max(1, len(rows)))
        std[std == 0] = 1.0
    Z = torch.empty(len(rows), X.shape[1], dtype=dtype, device=dev)
    m, s = torch.as_tensor(mean, device=dev, dtype=work), torch.as_tensor(std, device=dev, dtype=work)
    for i, x in parts():
        Z[i:i + len(x)] = ((x - m) / s).to(dtype)
    return Z, np.asarray(mean, np.float64), np.asarray(std, np.float64)


def _split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified split: per class, round(fraction * n) rows (at least 1) go to validation."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        rows = rng.permutation(np.nonzero(y == c)[0])
        k = max(1, int(round(fraction * len(rows))))
        val.extend(rows[:k])
        train.extend(rows[k:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def composition(probe: Probe, class_name: str, top: int = 5, names: list[str] | None = None
                ) -> list[tuple[float, int, str]]:
    """The class's largest positive weights: [(weight, unit, name)], e.g. money = 2.5 n469 + 1.1 n12."""
    terms = top_terms(probe.W[probe.classes.index(class_name)], top)
    return [(w, i, names[i] if names else f"n{i}") for w, i in terms]


def top_terms(w: np.ndarray, top: int = 5) -> list[tuple[float, int]]:
    """The ``top`` largest positive entries of a weight row: [(weight, unit)], largest first."""
    order = [int(i) for i in np.argsort(-w, kind="stable") if w[i] > 0][:top]
    return [(float(w[i]), i) for i in order]


def format_composition(class_name: str, terms: list[tuple[float, int, str]]) -> str:
    return f"{class_name} = " + (" + ".join(f"{w:.2f} {n}" for w, _, n in terms) if terms else "(no positive weight)")
