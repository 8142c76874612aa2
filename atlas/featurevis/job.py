"""`atlas featurevis`: render every neuron of some layers in batches and store the results (any kind:
objectives.py; the store's layout: atlas/store/featurevis.py).

Batches are rendered on the fast path (atlas.featurevis.fast: cut tower, bf16 and torch.compile on CUDA)
unless ``fast=None`` asks for the reference loop (atlas.featurevis.render).

Each finished batch is saved atomically in the store's work folder, so a killed run loses at most the
batch in flight; the store itself is written once, in one transaction, when all batches are done.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .. import store
from ..config import FeatureVisConfig, KindConfig, digest, to_json
from ..errors import ConfigError
from ..models import LoadedModel
from ..names import split_sae_layer
from .fast import FastOptions, FastRenderer
from .objectives import Goal, direction_rows
from .render import render_channels, render_goal


@dataclass
class FeatureVisResult:
    layer: str
    rendered: int  # neurons rendered in this call
    reused: int  # neurons whose images were already stored or checkpointed


def featurevis(model: LoadedModel, store_path: str | os.PathLike, layer: str,
               units: Sequence[int] | None = None, config: FeatureVisConfig = FeatureVisConfig(),
               progress: Callable[[int, int], None] | None = None,
               fast: FastOptions | None = FastOptions(), kind: KindConfig = KindConfig(),
               directions: np.ndarray | None = None) -> FeatureVisResult:
    """Render visualizations of ``units`` (default: all; for a direction set, one unit per direction) of ``layer``
    into the store, of the kind ``kind`` (default: channel; docs/featurevis.md).

    ``directions`` ([C] or [K, C]; kind direction): row i is rendered for ``units[i]`` (default: units 0..K-1).
    ``fast``: how the fast path runs (`FastOptions`); None renders with the reference loop.

    An SAE's virtual layer (``layer/saeN``, docs/sae.md): each feature is rendered with the direction objective
    of its decoder row at the SAE's layer (kind ``direction``, name ``decoder``), stored under the virtual layer."""
    path = Path(store_path)
    sae = split_sae_layer(layer)
    decoder = _sae_decoder(model, path, layer, kind, directions) if sae else None  # [F, d]
    if decoder is not None:  # an SAE's features: direction objectives at the base layer, stored under the SAE's layer
        kind, rows = KindConfig(kind="direction", name="decoder"), len(decoder)
        units = list(range(rows)) if units is None else sorted({int(u) for u in units})
        bad = [u for u in units if not 0 <= u < rows]
        if bad:
            raise ConfigError(f"--units: {layer} has {rows} features (0..{rows - 1}); no feature {bad[0]}")
        directions = decoder[units]
    info = model.layer(sae[0] if sae else layer)
    target = layer if sae else info.name  # the layer whose group keeps the images (canonical, also for an alias)
    layer = info.name  # the layer rendered at
    rows = len(decoder) if decoder is not None else info.units
    units, vectors = _units_and_vectors(rows, info.units, units, kind, directions)
    cfg_json, kind_json = to_json(config), to_json(kind) if kind.kind != "channel" else ""
    with store.lock(path):
        with store.Store(path) as st:
            if st.meta.get("weights_sha256") != model.weights_sha256:
                raise store.StoreError(f"store {path} was mined with other weights than {model.spec}; "
                                       "render with the model the store was built with")
            facet = _facet(st, model, layer, kind)
            stored = st.layer(model.name, target).visualizations(kind.kind, kind.name)
        n = kind.images if kind.kind == "diversity" else 1
        shape = (rows, n, config.size, config.size, 3) if n > 1 else (rows, config.size, config.size, 3)
        source = facet.fingerprint if facet is not None else ""
        if stored is not None and (stored.config, stored.kind_config, stored.source) == (cfg_json, kind_json, source):
            images, objective, done, old = stored.images, stored.objective, stored.done, stored.vectors
        else:
            images, objective = np.zeros(shape, np.uint8), np.full(rows, np.nan, np.float32)
            done, old = np.zeros(rows, bool), None
        if vectors is not None:  # a direction already rendered for a unit is reused only if it is the same vector
            old = np.full((rows, vectors.shape[1]), np.nan, np.float32) if old is None else old
            done[units] &= (old[units] == vectors).all(1)
            old[units] = vectors
        todo = [u for u in units if not done[u]]
        reused = len(units) - len(todo)
        if not todo:
            return FeatureVisResult(target, 0, reused)
        key = digest(model.weights_sha256, target, config, kind, source,
                     "" if vectors is None else hashlib.sha256(vectors.tobytes()).hexdigest())
        work = store.work_dir(path) / f"featurevis-{key}"
        work.mkdir(parents=True, exist_ok=True)
        per = max(1, config.batch // n)
        batches = [todo[i:i + per] for i in range(0, len(todo), per)]
        rendered = 0
        renderer = None
        if progress:
            progress(0, len(todo))
        for b, batch in enumerate(batches):
            ckpt = work / ("units-" + "-".join(map(str, (batch[0], batch[-1], len(batch)))) + ".npz")
            if ckpt.exists():
                with np.load(ckpt, allow_pickle=False) as z:
                    assert z["units"].tolist() == batch, f"checkpoint {ckpt} holds other units"
                    images[batch], objective[batch] = z["images"], z["objective"]
                reused += len(batch)
            else:
                goal = _goal(kind, layer, batch, n, old, facet)
                if fast is not None and renderer is None:  # one cut tower (and compile) for all batches
                    renderer = FastRenderer(model, layer, fast, extra_layers=goal.layers[1:])
                if kind.kind == "channel":
                    r = renderer.render(batch, config) if renderer else render_channels(model, layer, batch, config)
                else:
                    r = renderer.render_goal(goal, config) if renderer else render_goal(model, goal, config)
                imgs = r.images.reshape(len(batch), *shape[1:])
                own = r.objective.reshape(len(batch), n).mean(1)
                images[batch], objective[batch] = imgs, own
                store.save_checkpoint(ckpt, units=np.array(batch), images=imgs, objective=own)
                rendered += len(batch)
            done[batch] = True
            if progress:
                progress(sum(len(x) for x in batches[:b + 1]), len(todo))  # units
        store.write_visualizations(path, model.name, target, store.Visualizations(
            kind.kind, kind.name, cfg_json, kind_json, images, objective, done, old if vectors is not None else None,
            source))
        store.remove_work(work)
    return FeatureVisResult(target, rendered, reused)


def _sae_decoder(model: LoadedModel, path: Path, layer: str, kind: KindConfig,
                 directions: np.ndarray | None) -> np.ndarray:
    """The decoder rows [F, d] float32 of the SAE of the virtual layer ``layer``."""
    if kind.kind != "channel" or directions is not None:
        raise ConfigError(f"{layer} is a sparse autoencoder's layer: its features are rendered with their decoder "
                          "rows (the direction objective); leave out --kind and --direction-file")
    tensors, _ = store.read_sae(path, model.name, layer, model.weights_sha256)
    return np.ascontiguousarray(tensors["w_dec"], dtype=np.float32)


def _units_and_vectors(width: int, channels: int, units: Sequence[int] | None, kind: KindConfig,
                       directions: np.ndarray | None) -> tuple[list[int], np.ndarray | None]:
    """The units to render (sorted, checked; ``width`` of them) and, for a direction set, each one's direction
    [len(units), channels]."""
    if kind.kind != "direction":
        if directions is not None:
            raise ConfigError(f"--direction-file goes with --kind direction, not --kind {kind.kind}")
        units = list(range(width)) if units is None else sorted({int(u) for u in units})
        vectors = None
    else:
        if directions is None:
            raise ConfigError("--kind direction needs --direction-file: a .npy of shape [C] or [K, C]")
        vectors = direction_rows(directions, channels)
        units = list(range(len(vectors))) if units is None else [int(u) for u in units]
        if len(units) != len(vectors) or len(set(units)) != len(units):
            raise ConfigError(f"--units: give one distinct unit per direction ({len(vectors)} in the file), got "
                              f"{len(units)}")
        order = np.argsort(units)
        units, vectors = [units[i] for i in order], vectors[order]
    bad = [u for u in units if not 0 <= u < width]
    if bad:
        raise ConfigError(f"--units: the layer has {width} units (0..{width - 1}); no unit {bad[0]}")
    return units, vectors


def _facet(st: store.Store, model: LoadedModel, layer: str, kind: KindConfig) -> store.Facet | None:
    if kind.kind != "faceted":
        return None
    facets = st.facets(model.name)
    if kind.name not in facets:
        raise store.StoreError(f"--facet {kind.name}: the store has no such facet (it has: "
                               f"{', '.join(sorted(facets)) or 'none'}); train one with `atlas facet train`")
    return facets[kind.name]


def _goal(kind: KindConfig, layer: str, batch: list[int], n: int, vectors: np.ndarray | None,
          facet: store.Facet | None) -> Goal:
    units = tuple(u for u in batch for _ in range(n))
    if kind.kind == "direction":  # the units only name the directions (an SAE's features may outnumber channels)
        return Goal("direction", layer, tuple(range(len(batch))), directions=torch.from_numpy(vectors[batch]))
    if kind.kind == "faceted":
        return Goal("faceted", layer, units, weight=kind.facet_weight, facet_layer=facet.layer,
                    facet=torch.from_numpy(facet.weights))
    return Goal(kind.kind, layer, units, group=n, weight=kind.diversity_weight)
