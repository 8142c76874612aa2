"""`atlas sae train`: a store's layer -> activations (every position or patch token, streamed from the images the
store was mined from, or a saved buffer, through a bounded shuffle buffer: `atlas.sae.stream`) -> a TopK SAE
(`atlas.sae.train.fit_stream`) -> weights beside the store
(`atlas.store.write_sae`) with the held-out figures and the model's zero-shot accuracy through the reconstruction."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .. import store
from ..config import SaeConfig, to_dict
from ..kernels.sae import SaeTensors
from ..models import LoadedModel
from ..mining.machine import machine_fit
from ..names import sae_layer, split_sae_layer
from ..version import __version__
from .stream import array_blocks, image_blocks, split
from .train import SaeError, fit_stream, from_arrays, metrics, to_arrays


@dataclass
class SaeTrainResult:
    path: Path  # the safetensors file
    layer: str  # the virtual layer, e.g. visual.layer4.0/sae16k
    width: int
    d: int
    metrics: dict[str, float] = field(default_factory=dict)  # held-out: fve, l0, dead_fraction, inputs; dead_training
    zero_shot: dict[str, float] = field(default_factory=dict)  # Concept World only: {"<images>, <prompts>": (plain, sae)}
    seconds: dict[str, float] = field(default_factory=dict)
    inputs_per_s: float = 0.0
    streamed: int = 0  # training rows read from the images or the buffer


def _check_store(model: LoadedModel, store_path: str | os.PathLike, layer: str) -> str:
    """The canonical name of ``layer``, checked to be mined in the store from ``model``."""
    if split_sae_layer(layer):
        raise SaeError(f"--layer {layer} is an SAE's layer; train on a real layer, e.g. {split_sae_layer(layer)[0]}")
    with store.Store(store_path) as st:
        meta = st.meta
        names = [ld.name for ld in st.layers(model.name)] if model.name in st.models() else []
    if meta.get("weights_sha256") != model.weights_sha256 or meta.get("model_name") != model.name:
        raise store.StoreError(f"store {store_path} was mined from {meta.get('model_spec')}, not {model.spec}; "
                               f"pass --model {meta.get('model_spec')}")
    name = model.layer(layer).name  # ModelError naming the model's layers if it has none such
    if name not in names:
        raise SaeError(f"--layer {layer} is not mined in store {store_path} (it has: {', '.join(names) or 'none'}); "
                       f"mine it first (`atlas mine --store {store_path} --layers {name}`) or pass one of those")
    return name


def train_sae(model: LoadedModel, store_path: str | os.PathLike, config: SaeConfig, *, device: str = "cpu",
              buffer: str | os.PathLike | None = None, data: str | None = None, workers: int | None = None,
              evaluate: bool = True, log: Callable[[str], None] | None = None) -> SaeTrainResult:
    """Train the SAE of ``config.layer`` of a store mined from ``model``; write it beside the store.

    Activations: ``buffer`` (a .npy [n, d]) if given, else the images the store was mined from (``data``: another
    image source), every position of the layer's map.  The held-out images (``eval_fraction``) give the figures.
    ``evaluate``: on Concept World stores, also the zero-shot accuracy with the layer replaced by its reconstruction
    (`atlas.sae.fidelity.zero_shot_through`)."""
    import time

    from ..data import open_source
    from ..verify import source_of

    t0 = time.perf_counter()
    layer = _check_store(model, store_path, config.layer)
    d = model.layer(layer).units
    width = config.features(d)
    gen = torch.Generator().manual_seed(config.seed)
    bf16 = False
    if buffer is not None:
        n, blocks = array_blocks(buffer, d)
    else:
        source = open_source(data) if data else source_of(store_path)
        n = min(len(source), config.max_images or len(source))
        fit_ = machine_fit(model.device)
        workers = fit_.workers if workers is None else workers
        bf16 = model.device.type == "cuda" and torch.cuda.is_bf16_supported()
        blocks = image_blocks(model, source, layer, n, batch=fit_.batch_size, workers=workers, bf16=bf16)
        if log:
            log(f"sae activations: {n} images through {model.name} ({'bfloat16' if bf16 else 'float32'}), batch "
                f"{fit_.batch_size}, {workers} decoding workers; shuffle buffer {config.buffer_rows:,} rows of {d} "
                "units")
    held = torch.sort(torch.randperm(n, generator=gen)[:max(1, int(n * config.eval_fraction))]).values
    if len(held) >= n:
        raise SaeError(f"too few images ({n}) to hold some out; use more images")
    rows, kept = split(blocks, held, config.eval_rows)
    result = fit_stream(rows, width, config, device, log)
    while not kept and next(rows, None) is not None:  # (no held-out image among the rows training read)
        pass
    rows.close()
    blocks.close()  # the image stream's hook comes off the model now, not when the generator is collected
    if not kept:
        raise SaeError(f"no activation rows of the held-out images of layer {layer}; use more images")
    figures = {**metrics(torch.cat(kept).to(device), result.sae), "dead_training": result.dead_training,
               "final_loss": result.losses[-1]}
    virtual = sae_layer(layer, width)
    zs = {}
    with store.Store(store_path) as st:
        conceptworld = str(st.meta.get("data_source", "")).startswith("conceptworld:")
    if evaluate and conceptworld:
        from .fidelity import zero_shot_through
        zs = zero_shot_through(model, layer, result.sae)
    path = store.write_sae(store_path, model.name, virtual, to_arrays(result.sae), {
        "model_spec": str(model.spec), "weights_sha256": model.weights_sha256, "layer": layer, "k": config.k,
        "width": width, "d": d, "config": to_dict(config), "metrics": figures, "zero_shot": zs,
        "atlas_version": __version__, "device": torch.device(device).type,
        "tower_precision": "bfloat16" if bf16 else "float32", "training_rows": result.streamed})
    return SaeTrainResult(path, virtual, width, d, figures, zs,
                          {"activations": result.fill_seconds, "training": result.seconds,
                           "total": time.perf_counter() - t0}, result.inputs_per_s, result.streamed)


def load_sae(store_path: str | os.PathLike, model: str, virtual_layer: str,
             weights_sha256: str | None = None) -> tuple[SaeTensors, dict]:
    """The SAE of ``virtual_layer`` beside the store, as tensors on the CPU, and its metadata."""
    arrays, meta = store.read_sae(store_path, model, virtual_layer, weights_sha256)
    return from_arrays(arrays, int(meta["k"])), meta


def feature_direction(store_path: str | os.PathLike, unit_id: str) -> torch.Tensor:
    """[d] float32: the decoder row of an SAE feature (``model/layer/saeN/f``), its direction in the layer's unit
    basis (unit norm): what feature visualization's ``direction`` objective takes for a feature."""
    from ..names import parse_unit_id

    model, layer, unit = parse_unit_id(unit_id)
    sae, _ = load_sae(store_path, model, layer)
    if not 0 <= unit < sae.width:
        raise SaeError(f"{unit_id}: the SAE has features 0..{sae.width - 1}")
    return sae.w_dec[unit].clone()


def store_model(store_path: str | os.PathLike, device: str = "cpu", trust_checkpoint: bool = False) -> LoadedModel:
    """The model a store was mined from (its ``model_spec``)."""
    from ..models import load_model

    with store.Store(store_path) as st:
        spec = st.meta.get("model_spec")
    if not spec:
        raise store.StoreError(f"store {store_path} does not say which model it was mined from; mine it again")
    return load_model(str(spec), device=device, trust_checkpoint=trust_checkpoint)


def train_from_store(store_path: str | os.PathLike, config: SaeConfig, *, device: str = "cpu",
                     trust_checkpoint: bool = False, **kwargs) -> SaeTrainResult:
    """`train_sae` with the model the store was mined from (what `atlas sae train` calls)."""
    from ..models import resolve_device

    device = str(resolve_device(device))
    model = store_model(store_path, device, trust_checkpoint)
    return train_sae(model, store_path, config, device=device, **kwargs)
