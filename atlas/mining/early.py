"""Decoding that starts before the model exists: the start of `atlas mine` overlapped with the decoding of its files.

A whole `atlas mine` process spends its first seconds importing, building the model, reading its weights and
starting CUDA, with nothing to feed the GPU when that is done but the first slice one worker decodes after it.
`start_decoding` starts the decoding processes first: for a folder of files and a fresh pass (no checkpoint of an
earlier run in the store's work folder), it guesses the model's input geometry from its spec (`input_geometry`:
atlas's own configs, or open_clip's config file read as JSON, without importing open_clip or building anything),
resolves the batch size and workers as `mine` will (`atlas.mining.machine`), and starts a `JpegLoader` with that
`FilePlan`.  Its processes decode up to two slices each ahead while the model is built.

`mine(..., early=...)` takes those batches only if its own plan is equal (geometry, slices, workers, pixels,
thumbnails); otherwise it stops them and decodes afresh, so the store never depends on the guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .. import store
from ..config import MineConfig
from ..data.loader import JpegLoader
from ..data.sources import FileSource, ImageSource
from ..models import ATLAS_CONFIGS, ModelSpec, resolve_device
from ..openclip import open_clip_config
from .batches import FilePlan, resize_on
from .machine import machine_fit
from .thumbs import PassThumbs

__all__ = ["Early", "input_geometry", "start_decoding"]


@dataclass
class Early:
    """Decoding processes started before the model: their plan and loader (`mine` iterates it or closes it)."""

    plan: FilePlan
    loader: JpegLoader

    def close(self) -> None:
        self.loader.close()


def input_geometry(spec: str | ModelSpec) -> tuple[int, str, str] | None:
    """(input side S, resize mode, crop rule) that ``spec``'s model will have, from its config alone; None where
    that needs the model or its weights (OpenAI and Hugging Face files), or the config is not found."""
    try:
        spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(str(spec))
    except Exception:  # noqa: BLE001 -- load_model reports a bad spec properly
        return None
    if spec.family == "atlas":
        cfg = ATLAS_CONFIGS.get(spec.arch)
    elif spec.family == "open_clip":
        cfg = open_clip_config(spec.arch)
    else:
        return None
    size = (cfg or {}).get("vision_cfg", {}).get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0] if len(set(size)) == 1 else None
    return (int(size), "shortest", "round") if isinstance(size, int) else None


def start_decoding(spec: str | ModelSpec, source: ImageSource, store_path: str | os.PathLike,
                   config: MineConfig, num_workers: int | None, device: str, resize: str = "auto") -> Early | None:
    """Start decoding ``source``'s files for `mine` before its model is built (module docstring); None where it
    cannot start early: not files, a resumed pass, decoding in this process (0 workers), an unknown geometry."""
    if not isinstance(source, FileSource):
        return None
    work = store.work_dir(store_path)
    if work.is_dir() and any(work.glob("mine-*")):
        return None  # a checkpointed pass: mine knows where it resumes
    geometry = input_geometry(spec)
    if geometry is None:
        return None
    dev = resolve_device(str(device))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # as the model's parameters will name it
    fit = machine_fit(dev)
    workers = fit.workers if num_workers is None else num_workers
    if workers <= 0:
        return None
    n_images = min(len(source), config.max_images or len(source))
    thumbs = PassThumbs.size_for(source, n_images, config.thumb_size)
    plan = FilePlan(*geometry, dev, 0, n_images, config.batch_size or fit.batch_size, workers, config.pixels,
                    resize_on(resize, dev), thumbs)
    return Early(plan, plan.loader(source).start())
