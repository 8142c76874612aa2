"""Thumbnails of the images a store shows: the model's centre crop at the thumbnail's size, as uint8 arrays.

A thumbnail is the model's view of the image (`pil_crop` of the fully decoded file at the model's input side, the
model's own crop geometry: the uint8 pixels before normalization) shrunk to the thumbnail's side with PIL's box
filter (`atlas.data.pixels.thumbnail`), for display.

Mining files, the decoding processes make every image's thumbnail from the view they already made for the model
(`JpegLoader`'s ``thumbs``: no second decode, a 0.2 ms resize) into a memmap of the work folder (`PassThumbs`), and the commit copies
the shown ones
from there.  Otherwise (other sources, a store that needs thumbnails of images mined earlier, a pass too large
for the memmap's budget) files are decoded again in ``workers`` processes through `JpegLoader` (the GIL-bound PIL
glue of thousands of small images does not scale on threads), other sources on threads.  All give the same
bytes (tests/test_mine_loader.py).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import store
from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.loader import JpegLoader, pil_crop, thumbnail
from ..data.sources import FileSource, ImageSource
from ..models import LoadedModel


PASS_BUDGET = 4 << 30  # bytes of thumbnails a mining pass keeps in its work folder (96 px: about 150,000 images)


class PassThumbs:
    """Every image's thumbnail as the decoding processes made it during a mining pass: a memmap [N, T, T, 3] in
    the work folder, with a flag per image, kept across a resume (flushed at each checkpoint)."""

    def __init__(self, work: Path, n_images: int, size: int):
        def memmap(name: str, dtype: type, shape: tuple) -> np.ndarray:
            p = work / name
            return np.lib.format.open_memmap(p, mode="r+" if p.exists() else "w+", dtype=dtype, shape=shape)

        self.size = size
        self.thumbs = memmap("thumbs.npy", np.uint8, (n_images, size, size, 3))
        self.done = memmap("thumbs-done.npy", np.uint8, (n_images,))

    @staticmethod
    def size_for(source: ImageSource, n_images: int, size: int) -> int:
        """The thumbnails' side T a pass over ``source`` makes while decoding, or 0: not files (their thumbnails are
        decoded at the commit), or more than PASS_BUDGET bytes of them."""
        return size if isinstance(source, FileSource) and n_images * size * size * 3 <= PASS_BUDGET else 0

    def put(self, index: Sequence[int], thumbs: np.ndarray) -> None:
        """Thumbnails [n, T, T, 3] of the images ``index``."""
        self.thumbs[index] = thumbs
        self.done[index] = 1

    def flush(self) -> None:
        self.thumbs.flush()
        self.done.flush()

    def take(self, index: Sequence[int], out: np.ndarray) -> None:
        """The thumbnails of the images ``index`` (all done) into ``out`` [len(index), T, T, 3]."""
        np.take(self.thumbs, index, axis=0, out=out)


class UnionThumbs:
    """The `PassThumbs` of torchrun's ranks (atlas.mining.distributed) as one: each image's from the rank whose
    images [start, stop) hold it."""

    def __init__(self, parts: list[tuple[int, int, PassThumbs]], n_images: int, size: int):
        self.parts, self.size = parts, size
        self.done = np.zeros(n_images, np.uint8)
        for start, stop, made in parts:
            self.done[start:stop] = made.done[start:stop]

    def take(self, index: Sequence[int], out: np.ndarray) -> None:
        index = np.asarray(index, dtype=np.int64)
        for start, stop, made in self.parts:
            rows = np.nonzero((index >= start) & (index < stop))[0]
            if len(rows):
                out[rows] = made.thumbs[index[rows]]


def make_thumbnails(f: store.File, model: LoadedModel, source: ImageSource, needed: Sequence[int],
                    size: int, n_images: int, workers: int = 0, made: PassThumbs | UnionThumbs | None = None) -> int:
    """Add thumbnails for the images in ``needed`` that the store lacks; return how many were added.

    /images/thumbs [M, size, size, 3] holds them and /images/thumb_row [N] maps image -> row (-1: none).  Those
    ``made`` holds are copied from it; the others are decoded, and a file whose sha256 differs from the one mining
    recorded (/images/sha256) is refused: the data changed.
    """
    rows, thumbs = store.thumbnail_table(f, n_images, size)
    if thumbs.shape[1] != size:
        raise store.StoreError(f"store thumbnails are {thumbs.shape[1]} px, this run asks for {size}; "
                               "use the same thumb_size for every run on one store")
    missing = [i for i in needed if rows[i] < 0]
    ready: list[int] = []
    if made is not None and made.size == size and missing:
        done = made.done[missing].astype(bool)
        ready = [i for i, d in zip(missing, done) if d]
        missing = [i for i, d in zip(missing, done) if not d]
    view = (model.image_size, model.resize_mode, model.crop_rule)
    if isinstance(source, FileSource) and workers > 0 and missing:
        new, hashes = _from_files(source, missing, size, *view, workers)
    else:
        new, hashes = _on_threads(source, missing, size, *view)
    recorded = store.image_column_of(f, "sha256") if missing else None  # [N]; "" for generated images
    for i, h in zip(missing, hashes):
        if recorded is not None and recorded[i] and h != bytes(recorded[i]).decode():
            raise _changed(source.entries[i].source_id, "changed")
    if len(thumbs) or ready:  # [M, T, T, 3]: one table in memory, not two (the commit's peak: docs/scale.md)
        table = np.empty((len(thumbs) + len(ready) + len(missing), size, size, 3), np.uint8)
        table[:len(thumbs)] = thumbs
        if ready:
            made.take(ready, table[len(thumbs):len(thumbs) + len(ready)])
        table[len(thumbs) + len(ready):] = new
    else:
        table = new  # a fresh store's thumbnails, all decoded now
    for j, i in enumerate(ready + missing):
        rows[i] = len(thumbs) + j
    store.write_thumbnails(f, table, rows)
    return len(ready) + len(missing)


def _changed(source_id: str, why: str) -> store.StoreError:
    return store.StoreError(f"image {source_id} {why} since it was mined (its sha256 is in /images/sha256): restore "
                            "the original file and run again (the mined results are checkpointed, so only the "
                            "commit reruns), or mine into a fresh store")


def _on_threads(source: ImageSource, missing: list[int], size: int, model_size: int, mode: str,
                crop: str = "round") -> tuple[np.ndarray, list[str]]:
    """The thumbnails [M, size, size, 3] of the images ``missing`` (`thumbnail` of the model's view at
    ``model_size``) and their files' sha256 ("" if generated)."""
    new = np.zeros((len(missing), size, size, 3), np.uint8)
    hashes = [""] * len(missing)

    def one(j: int) -> None:
        sample = source.sample(missing[j])
        if sample.image is None:
            raise _changed(sample.source_id, f"became unreadable ({sample.message})")
        new[j], hashes[j] = thumbnail(pil_crop(sample.image, model_size, mode, crop), size), sample.sha256

    # PIL decodes and resizes without the GIL: threads share the work (each writes its own row)
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:
        try:
            list(pool.map(one, range(len(missing))))
        except BaseException:
            pool.shutdown(cancel_futures=True)  # the first error stops the rest
            raise
    return new, hashes


def _from_files(source: FileSource, missing: list[int], size: int, model_size: int, mode: str, crop: str,
                workers: int) -> tuple[np.ndarray, list[str]]:
    """`_on_threads` for files, decoded in ``workers`` processes (as mining's decoding processes make them)."""
    names = [source.entries[i].source_id for i in missing]
    loader = JpegLoader([source.path(i) for i in missing], model_size, batch_size=64, device="cpu", decode="cpu",
                        resize="cpu", workers=workers, resize_mode=mode, crop=crop, hashes=True, names=names,
                        max_pixels=source.max_pixels or DEFAULT_MAX_PIXELS, thumbs=size)
    new = np.zeros((len(missing), size, size, 3), np.uint8)
    hashes: list[str] = []
    for b in loader:
        for j, _reason, message in b.bad:
            raise _changed(names[j], f"became unreadable ({message})")
        hashes += b.sha256
        new[b.index.numpy()] = b.thumbs.numpy()  # [n, T, T, 3]
    return new, hashes
