"""The schema's constants and checks: version, reason codes, report kinds, group paths (docs/store.md)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from ..errors import StoreError
from ..names import split_sae_layer


SCHEMA_VERSION = 2  # 2: exact pixels, float32 pooled and maps, nonfinite_maps, verify/


REASON_CODES = ("", "empty", "not_an_image", "truncated", "corrupt", "too_large", "unreadable")


REPORTS = ("probes", "attacks", "audits")


CHECKS = ("verify", "labels")  # groups under a layer that `write_check` replaces whole


def layer_path(model: str, layer: str) -> str:
    """``neurons/<model>/<layer>``; an SAE's virtual layer ``<layer>/saeN`` is a group inside its layer's group."""
    if "/" in model or ("/" in layer and split_sae_layer(layer) is None) or not model or not layer:
        raise StoreError(f"model name {model!r} and layer name {layer!r} must be non-empty and hold no '/' (but "
                         "for an SAE's virtual layer, 'layer/sae16k')")
    return f"neurons/{model}/{layer}"


def layer_groups(models_group: h5py.Group) -> list[tuple[str, h5py.Group]]:
    """(layer name, group) of every mined layer of one model's group, SAE virtual layers (groups with a ``kind``
    inside a layer's group) after their layer, in mining order."""
    found = []
    for name, g in models_group.items():
        if not isinstance(g, h5py.Group):
            continue
        if "kind" in g.attrs:
            found.append((name, g))
        for part, sub in g.items():
            if isinstance(sub, h5py.Group) and "kind" in sub.attrs and split_sae_layer(f"{name}/{part}"):
                found.append((f"{name}/{part}", sub))
    return sorted(found, key=lambda t: int(t[1].attrs.get("order", 0)))


def check_compatible(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Raise if an existing store was made from another model or other data than ``meta`` says."""
    p = Path(path)
    if not p.exists():
        return
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise StoreError(f"{p} is not a readable HDF5 store ({e}); move it away or choose another path") from e
    with f:
        check_schema(f, p)
        for key in ("weights_sha256", "data_fingerprint", "model_name"):
            if key in f.attrs and key in meta and str(f.attrs[key]) != str(meta[key]):
                raise StoreError(f"store {p} was built with {key}={f.attrs[key]!r}, not {meta[key]!r}: "
                                 "each store holds one model on one image set; write to another store path")


def check_schema(f: h5py.File, p: Path) -> None:
    v = int(f.attrs.get("schema_version", -1))
    if v != SCHEMA_VERSION:
        raise StoreError(f"store {p} has schema version {v}, this atlas reads version {SCHEMA_VERSION}; "
                         "rebuild it with this atlas version (version 1 stores were mined from drafted JPEGs with "
                         "another crop and kept float16 activations: mine them again)")


def is_text(ds: h5py.Dataset) -> bool:
    return h5py.check_string_dtype(ds.dtype) is not None
