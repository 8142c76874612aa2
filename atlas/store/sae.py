"""Sparse autoencoders beside a store: their weights as safetensors files in the store's folder, with their frozen
config and provenance in the file's metadata (docs/store.md, "Sparse autoencoders").

    <store>.sae/<model>/<layer>/<saeN>.safetensors     e.g. atlas.h5.sae/conceptclip/visual.layer4.0/sae16k.safetensors

Tensors (float32): ``w_enc`` [F, d], ``b_enc`` [F], ``w_dec`` [F, d] (unit-norm rows), ``b_pre`` [d].  Metadata
(strings): ``format`` ("atlas-sae/1"), ``model_name``, ``model_spec``, ``weights_sha256``, ``layer`` (the trained
layer), ``virtual_layer`` (``<layer>/saeN``), ``k``, ``width``, ``d``, ``config`` (JSON of the SaeConfig),
``metrics`` (JSON of the held-out figures), ``atlas_version``.  Read and written with safetensors' numpy API: no
torch here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError
from ..names import split_sae_layer

FORMAT = "atlas-sae/1"
TENSORS = ("w_enc", "b_enc", "w_dec", "b_pre")


class SaeFileError(StoreError):
    """An SAE weights file that is missing, unreadable, or made for another model or layer."""


def _safetensors():
    try:
        import safetensors.numpy as stn
    except ImportError as e:  # pragma: no cover - a dependency
        raise SaeFileError("sparse autoencoders need the safetensors package: pip install safetensors") from e
    return stn


def sae_path(store_path: str | os.PathLike, model: str, virtual_layer: str) -> Path:
    """Where the SAE of ``virtual_layer`` (``visual.layer4.0/sae16k``) of ``model`` lives beside the store."""
    parts = split_sae_layer(virtual_layer)
    if parts is None:
        raise SaeFileError(f"{virtual_layer!r} is not an SAE's layer; they look like 'visual.layer4.0/sae16k'")
    p = Path(store_path)
    return p.with_name(p.name + ".sae") / model / parts[0] / f"{parts[1]}.safetensors"


def sae_layers(store_path: str | os.PathLike, model: str) -> list[str]:
    """The virtual layers (``layer/saeN``) of ``model`` that have weights beside the store, sorted."""
    root = Path(store_path)
    root = root.with_name(root.name + ".sae") / model
    found = [f"{f.parent.name}/{f.stem}" for f in root.glob("*/*.safetensors")] if root.is_dir() else []
    return sorted(x for x in found if split_sae_layer(x))


def write_sae(store_path: str | os.PathLike, model: str, virtual_layer: str, arrays: dict[str, np.ndarray],
              meta: dict[str, Any]) -> Path:
    """Write the SAE's tensors and metadata (non-strings stored as JSON) atomically: a temporary file renamed over
    the final path."""
    missing = [t for t in TENSORS if t not in arrays]
    if missing:
        raise SaeFileError(f"an SAE needs tensors {', '.join(TENSORS)}; missing {', '.join(missing)}")
    path = sae_path(store_path, model, virtual_layer)
    path.parent.mkdir(parents=True, exist_ok=True)
    strings = {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}
    strings.update(format=FORMAT, model_name=model, virtual_layer=virtual_layer)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    _safetensors().save_file({k: np.ascontiguousarray(arrays[k], np.float32) for k in TENSORS}, str(tmp),
                             metadata=strings)
    os.replace(tmp, path)
    return path


def read_sae(store_path: str | os.PathLike, model: str, virtual_layer: str,
             weights_sha256: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(tensors, metadata) of the SAE of ``virtual_layer``, checked to be made for ``model`` (and the weights
    ``weights_sha256`` if given) and that layer.  Metadata values are decoded from JSON where they are JSON."""
    path = sae_path(store_path, model, virtual_layer)
    if not path.is_file():
        have = sae_layers(store_path, model)
        raise SaeFileError(f"no sparse autoencoder {virtual_layer!r} of model {model} beside store {store_path} "
                           f"({path} does not exist); train one with `atlas sae train --store {store_path} --layer "
                           f"{split_sae_layer(virtual_layer)[0]}`" + (f" (there are: {', '.join(have)})" if have else ""))
    return read_sae_file(path, model, virtual_layer, weights_sha256)


def read_sae_file(path: str | os.PathLike, model: str, virtual_layer: str,
                  weights_sha256: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """`read_sae` of a given file, with the same checks."""
    stn = _safetensors()
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            raw = dict(f.metadata() or {})
        arrays = stn.load_file(str(path))
    except (OSError, ValueError, RuntimeError) as e:
        raise SaeFileError(f"{path} is not a readable safetensors file ({e}); train the SAE again") from e
    if raw.get("format") != FORMAT or any(t not in arrays for t in TENSORS):
        raise SaeFileError(f"{path} is not an atlas SAE (format {raw.get('format')!r}, tensors {sorted(arrays)}); "
                           "train one with `atlas sae train`")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    for key, want in (("model_name", model), ("virtual_layer", virtual_layer), ("weights_sha256", weights_sha256)):
        if want is not None and str(raw.get(key)) != str(want):
            raise SaeFileError(f"{path} is an SAE of {raw.get('model_name')}/{raw.get('virtual_layer')} (weights "
                               f"{str(raw.get('weights_sha256'))[:12]}), not of {model}/{virtual_layer}"
                               f"{f' (weights {want[:12]})' if key == 'weights_sha256' else ''}: {key} differs; "
                               "train an SAE for this model and layer with `atlas sae train`")
    return arrays, meta
