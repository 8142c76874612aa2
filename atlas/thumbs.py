"""Thumbnails of the images a store shows: the model's centre crop, resized, as uint8 arrays."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import h5py
import numpy as np
from PIL import Image

from . import store
from .data.sources import ImageSource
from .models import LoadedModel


def make_thumbnails(f: h5py.File, model: LoadedModel, source: ImageSource, needed: Sequence[int],
                    size: int, n_images: int) -> int:
    """Add thumbnails for the images in ``needed`` that the store lacks; return how many were added.

    /images/thumbs [M, size, size, 3] holds them and /images/thumb_row [N] maps image -> row (-1: none).
    """
    img = f["images"]
    rows = img["thumb_row"][()] if "thumb_row" in img else np.full(n_images, -1, np.int64)
    thumbs = img["thumbs"][()] if "thumbs" in img else np.zeros((0, size, size, 3), np.uint8)
    if thumbs.shape[1] != size:
        raise store.StoreError(f"store thumbnails are {thumbs.shape[1]} px, this run asks for {size}; "
                               "use the same thumb_size for every run on one store")
    missing = [i for i in needed if rows[i] < 0]
    new = np.zeros((len(missing), size, size, 3), np.uint8)

    def one(j: int) -> None:
        sample = source.sample(missing[j])
        if sample.image is None:  # changed since mining
            raise store.StoreError(f"image {sample.source_id} could be read while mining but not now "
                                   f"({sample.message}); the data changed during the run: mine again")
        new[j] = np.asarray(model.crop(sample.image).resize((size, size), Image.BICUBIC), dtype=np.uint8)

    # PIL decodes and resizes without the GIL: threads share the work (each writes its own row)
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        try:
            list(pool.map(one, range(len(missing))))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first error stops the rest
            raise
    for j, i in enumerate(missing):
        rows[i] = len(thumbs) + j
    store.put(img, "thumbs", np.concatenate([thumbs, new]))
    store.put(img, "thumb_row", rows)
    return len(missing)
