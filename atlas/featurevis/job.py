"""`atlas featurevis`: render every neuron of some layers in batches and store the results.

Batches are rendered on the fast path (atlas.featurevis.fast: cut tower, bf16 and torch.compile on CUDA)
unless ``fast=None`` asks for the reference loop (atlas.featurevis.render).

Each finished batch is saved atomically in the store's work folder, so a killed run loses at most the
batch in flight; the store itself is written once, in one transaction, when all batches are done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .. import store
from ..config import FeatureVisConfig, digest, to_json
from ..models import LoadedModel
from .fast import FastOptions, FastRenderer
from .render import render_channels


@dataclass
class FeatureVisResult:
    layer: str
    rendered: int  # neurons rendered in this call
    reused: int  # neurons whose images were already stored or checkpointed


def featurevis(model: LoadedModel, store_path: str | os.PathLike, layer: str,
               units: Sequence[int] | None = None, config: FeatureVisConfig = FeatureVisConfig(),
               progress: Callable[[int, int], None] | None = None,
               fast: FastOptions | None = FastOptions()) -> FeatureVisResult:
    """Render channel visualizations of ``units`` (default: all) of ``layer`` into the store.

    ``fast``: how the fast path runs (`FastOptions`); None renders with the reference loop."""
    path = Path(store_path)
    info = model.layer(layer)
    layer = info.name  # canonical, also when an alias was given
    units = list(range(info.units)) if units is None else sorted({int(u) for u in units})
    bad = [u for u in units if not 0 <= u < info.units]
    if bad:
        raise ValueError(f"layer {layer} has {info.units} units (0..{info.units - 1}); no unit {bad[0]}")
    cfg_json = to_json(config)
    with store.lock(path):
        with store.Store(path) as st:
            if st.meta.get("weights_sha256") != model.weights_sha256:
                raise store.StoreError(f"store {path} was mined with other weights than {model.spec}; "
                                       "render with the model the store was built with")
            stored = st.layer(model.name, layer).featurevis()  # (config, images, objective, done) or None
            done = np.zeros(info.units, bool)
            if stored is not None and stored[0] == cfg_json:
                _, images, objective, done = stored
            else:
                images = np.zeros((info.units, config.size, config.size, 3), np.uint8)
                objective = np.full(info.units, np.nan, np.float32)
        todo = [u for u in units if not done[u]]
        reused = len(units) - len(todo)
        if not todo:
            return FeatureVisResult(layer, 0, reused)
        work = store.work_dir(path) / f"featurevis-{digest(model.weights_sha256, layer, config)}"
        work.mkdir(parents=True, exist_ok=True)
        batches = [todo[i:i + config.batch] for i in range(0, len(todo), config.batch)]
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
                if fast is not None and renderer is None:
                    renderer = FastRenderer(model, layer, fast)  # one cut tower (and compile) for all batches
                r = renderer.render(batch, config) if renderer else render_channels(model, layer, batch, config)
                images[batch], objective[batch] = r.images, r.objective
                store.save_checkpoint(ckpt, units=np.array(batch), images=r.images, objective=r.objective)
                rendered += len(batch)
            done[batch] = True
            if progress:
                progress(sum(len(x) for x in batches[:b + 1]), len(todo))  # units
        store.write_featurevis(path, model.name, layer, cfg_json, images, objective, done)
        store.remove_work(work)
    return FeatureVisResult(layer, rendered, reused)
