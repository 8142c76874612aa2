"""Top examples' maps recomputed on demand (`atlas maps`), for layers mined with small maps.

A wide layer (an SAE's 65,536 features x top 128) cannot keep 8 x 8 maps per example while mining: the state would
be F x k x 64 floats (2.1 GB) on the GPU.  Mined with ``--map-size 1`` it keeps (value, image, peak position) and
a 1 x 1 map; `replay_maps` then runs the stored top images of the units asked for through the model again (and
through the SAE, for a virtual layer) and pools each example's map to ``map_size`` per side as mining does
(adaptive average pooling of the layer's canonical map), a block of units at a time, so memory is bounded by the
block, not the layer.  Pixels: the images' own, as mining reads them (`LoadedModel.preprocess` of each image,
whose file must still have the sha256 the store recorded); arithmetic: float32, or bfloat16 autocast on a GPU where
the layer was mined so.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import store
from .capture import hooked
from .errors import ConfigError
from .kernels.sae import feature_maps
from .mining.virtual import resolve_layers
from .models import LoadedModel


def replay_maps(model: LoadedModel, source, store_path: str | os.PathLike, layer: str, units: Sequence[int],
                map_size: int = 8, batch: int = 32,
                progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """[len(units), k, mh, mw] float32: unit u's stored top examples' maps, pooled to mh = min(h, map_size) (and
    mw); empty slots (index -1) are NaN."""
    units = np.asarray(units, np.int64)
    with store.Store(store_path) as st:
        ld = st.layer(model.name, layer)
        _check_units(units, ld.units, layer)
        index = ld["topk/index"][units] if len(units) else np.zeros((0, ld.top_k), np.int64)  # [m, k]
        precision = str(ld.config.get("precision", "float32"))
        recorded_sha = st.image_column("sha256")
    infos, virtual = resolve_layers(model, store_path, [layer])
    info = infos[0]
    base = virtual[info.name].base if virtual else info
    gh, gw = base.grid
    mh, mw = min(gh, map_size), min(gw, map_size)
    out = np.full((len(units), index.shape[1], mh, mw), np.nan, np.float32)
    images = np.unique(index[index >= 0])
    picks = torch.as_tensor(units, device=model.device)
    caught: dict[str, torch.Tensor] = {}

    def keep(_name: str, a: torch.Tensor) -> None:
        caught["a"] = base.canonical(a).detach()

    bf16 = precision == "bfloat16" and model.device.type == "cuda"
    with hooked(model.clip, [base.name], keep), torch.no_grad(), \
            torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(images), batch):
            chunk = images[start:start + batch]
            pixels = torch.stack([_pixels(model, source, int(i), recorded_sha) for i in chunk]).to(model.device)
            model.clip.encode_image(pixels)
            a = caught.pop("a").float()  # [b, d, h, w]
            if virtual:
                a = feature_maps(a, virtual[info.name].sae)  # [b, F, h, w]
            pooled = F.adaptive_avg_pool2d(a.index_select(1, picks), (mh, mw)).cpu().numpy()  # [b, m, mh, mw]
            j, slot = np.nonzero(np.isin(index, chunk))  # the examples shown by this chunk's images
            out[j, slot] = pooled[np.searchsorted(chunk, index[j, slot]), j]  # (chunk is sorted: np.unique)
            if progress:
                progress(min(start + batch, len(images)), len(images))
    return out


def _check_units(units: np.ndarray, n_units: int, layer: str) -> None:
    if len(units) and (units.min() < 0 or units.max() >= n_units):
        raise ConfigError(f"--units: layer {layer} has units 0..{n_units - 1}")


def _pixels(model: LoadedModel, source, index: int, recorded_sha: np.ndarray) -> torch.Tensor:
    """[3, S, S]: image ``index`` as mining gave it to the model; a file must be unchanged since it was mined."""
    sample = source.sample(index)
    if sample.image is None:
        raise store.StoreError(f"image {index} of {source.description} cannot be read now ({sample.message}); "
                               "restore it, or mine the data into a new store")
    want = recorded_sha[index]
    want = want.decode() if isinstance(want, bytes) else str(want)
    if want and sample.sha256 and sample.sha256 != want:
        raise store.StoreError(f"image {index} of {source.description} changed since it was mined (its sha256 is in "
                               "/images/sha256): restore it, or mine the changed data into a new store")
    return model.preprocess(sample.image)


def fill_maps(model: LoadedModel, source, store_path: str | os.PathLike, layer: str, units: Sequence[int],
              map_size: int = 8, block: int = 256, batch: int = 32,
              progress: Callable[[int, int], None] | None = None) -> int:
    """Recompute the maps of ``units`` (``block`` units at a time) and write them into the store's
    ``topk/replayed/``, where the site, export and notebook read them; returns the units written."""
    units = np.asarray(units, np.int64)
    for i in range(0, len(units), block):
        part = units[i:i + block]
        maps = replay_maps(model, source, store_path, layer, part, map_size, batch)
        store.write_replayed_maps(store_path, model.name, layer, part, maps,
                                  {"map_size": int(map_size), "atlas": "atlas maps"})
        if progress:
            progress(min(i + block, len(units)), len(units))
    return len(units)


def fill_store_maps(store_path: str | os.PathLike, layer: str, units: Sequence[int] | None = None, map_size: int = 8,
                    *, data: str | None = None, device: str = "auto", trust_checkpoint: bool = False,
                    progress: Callable[[int, int], None] | None = None) -> int:
    """`fill_maps` with the model the store was mined from and its images (`atlas maps`); ``units`` None: all."""
    from .models import load_model
    from .verify import source_of

    with store.Store(store_path) as st:
        spec = st.meta.get("model_spec")
        name = st.meta.get("model_name")
        if not spec:
            raise store.StoreError(f"store {store_path} does not say which model it was mined from; mine it again")
        n_units = st.layer(str(name), layer).units  # (raises, naming the layers it has, if it has no such layer)
    source = source_of(store_path, data)
    model = load_model(str(spec), device=device, trust_checkpoint=trust_checkpoint)
    todo = np.arange(n_units) if units is None else np.asarray(units, np.int64)
    _check_units(todo, n_units, layer)  # (all of them before the first block is written)
    return fill_maps(model, source, store_path, layer, todo, map_size, progress=progress)
