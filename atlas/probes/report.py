"""Probes in the store: `/probes/<name>` (docs/store.md), and the job that fits one from a mined layer."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import numpy as np

from .. import store
from ..config import ProbeConfig, to_json
from .probe import Probe, fit_probe, labels_from_pattern, top_terms


def read_labels_csv(path: str | os.PathLike, source_ids: np.ndarray) -> list[str]:
    """Labels from a CSV with columns source_id (or path) and label, aligned to the store's images."""
    from ..data.sources import read_table

    table = dict(read_table(path, ("source_id", "path"), "label", "labels"))
    if not set(table) & set(source_ids):
        raise ValueError(f"no image of the store appears in {path} (e.g. {next(iter(table), '?')!r}); its first "
                         f"column must hold the store's source ids (e.g. {source_ids[0]!r})")
    return [table.get(s, "") for s in source_ids]


def probe_layer(store_path: str | os.PathLike, layer: str, name: str = "probe", labels_csv: str | None = None,
                label_pattern: str | None = None, config: ProbeConfig = ProbeConfig(),
                device: str = "cpu", progress: Callable[[int, int], None] | None = None) -> Probe:
    """Fit a sparse probe on a mined layer's pooled activations and save it as /probes/<name>.  ``progress``:
    (lambdas done, lambdas) along the regularization path."""
    with store.Store(store_path) as st:
        model = st.models()[0] if st.models() else None
        if model is None:
            raise store.StoreError(f"store {store_path} holds no mined layer; run `atlas mine` first")
        ld = st.layer(model, layer)
        if not ld.has("pooled"):
            raise store.StoreError(f"layer {layer} was mined without pooled activations (--no-pooled); mine it "
                                   "again into a new store to probe it")
        X = ld["pooled"].astype(np.float32)
        skipped = np.asarray(st.image_column("status")) != 0
        source_ids = st.image_column("source_id")
        raw = read_labels_csv(labels_csv, source_ids) if labels_csv else list(st.image_column("label"))
    labels = labels_from_pattern(raw, label_pattern)
    probe = fit_probe(X, labels, config, device=device, skipped=skipped, progress=progress)
    save_probe(store_path, name, model, layer, probe, config,
               source=f"csv:{Path(labels_csv).name}" if labels_csv else "store labels", pattern=label_pattern or "")
    return probe


def save_probe(store_path, name: str, model: str, layer: str, probe: Probe, config: ProbeConfig, source: str,
               pattern: str) -> None:
    rows, cols = np.nonzero(probe.W)
    path = probe.path
    store.write_report(store_path, "probes", name, {
        "classes": list(probe.classes),
        "coef/row": rows.astype(np.int32), "coef/col": cols.astype(np.int32),
        "coef/value": probe.W[rows, cols].astype(np.float32),
        "intercept": probe.b.astype(np.float32), "mean": probe.mean.astype(np.float32),
        "std": probe.std.astype(np.float32),
        "path/lambda": np.array(path.lambdas), "path/nnz": np.array(path.nnz),
        "path/train_acc": np.array(path.train_acc), "path/val_acc": np.array(path.val_acc),
        "path/objective": np.array(path.objective), "path/iterations": np.array(path.iterations),
        "path/kkt": np.array(path.kkt), "path/converged": np.array(path.converged, bool),
        "path/seconds": np.array(path.seconds), **_class_paths(probe),
    }, {"model": model, "layer": layer, "units": int(probe.W.shape[1]), "best": int(path.best),
        "n_train": probe.n_train, "n_val": probe.n_val, "val_accuracy": float(probe.val_accuracy),
        "neurons_per_class": probe.neurons_per_class(), "label_source": source, "label_pattern": pattern,
        "left_out": [list(x) for x in probe.left_out], "config": to_json(config)})


PATH_UNITS = 5  # per class, the units whose coefficients along the path are stored (the report plots them)


def _class_paths(probe: Probe) -> dict[str, np.ndarray]:
    """Per class, its PATH_UNITS largest |weights| at the chosen lambda (positive first, as the composition reads) and
    their coefficients at every lambda: "path/units" [C, T] int32 (-1: fewer non-zeros) and "path/coef" [C, T, L]."""
    C = probe.W.shape[0]
    units = np.full((C, PATH_UNITS), -1, np.int32)
    coef = np.zeros((C, PATH_UNITS, len(probe.path.W)), np.float32)
    for k in range(C):
        w = probe.W[k]
        order = [int(i) for i in np.lexsort((-np.abs(w), w <= 0)) if w[i] != 0][:PATH_UNITS]
        units[k, :len(order)] = order
        for j, Wj in enumerate(probe.path.W):  # [C, F] at lambda j
            coef[k, :len(order), j] = Wj[k, order].numpy()
    return {"path/units": units, "path/coef": coef}


@dataclass
class StoredProbe:
    classes: list[str]
    W: np.ndarray  # [C, U] dense, on standardized features
    b: np.ndarray  # [C]
    mean: np.ndarray  # [U]
    std: np.ndarray  # [U]
    attrs: dict


def load_probe_weights(st: store.Store, name: str) -> StoredProbe:
    """A stored probe, its sparse coefficients made dense."""
    arrays, attrs = store.read_report(st, "probes", name)
    classes = [str(c) for c in arrays["classes"]]
    W = np.zeros((len(classes), int(attrs["units"])), np.float32)
    W[arrays["coef/row"], arrays["coef/col"]] = arrays["coef/value"]
    return StoredProbe(classes, W, arrays["intercept"], arrays["mean"], arrays["std"], attrs)


def compositions(W: np.ndarray, classes: list[str], top: int = 5) -> dict[str, list[tuple[float, int]]]:
    """Per class, its largest positive weights: {class: [(weight, unit)]}."""
    return {c: top_terms(W[k], top) for k, c in enumerate(classes)}
