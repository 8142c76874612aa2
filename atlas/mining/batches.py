"""The batches mining consumes: fixed slices of the image index, decoded, resized and normalized on the device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..config import RESIZES
from ..data.decode import DEFAULT_MAX_PIXELS
from ..data.loader import JpegLoader, normalize, to_device
from ..data.sources import FileSource, ImageSource
from ..models import LoadedModel

__all__ = ["Batch", "FilePlan", "batches", "file_batches", "resize_on"]


@dataclass
class Batch:
    """One fixed slice [start, stop) of the image index, ready for the model."""

    start: int
    stop: int
    good: list[int]  # indices of the images in pixels, ascending
    index: torch.Tensor  # [len(good)] int64 on the model's device
    pixels: torch.Tensor  # [len(good), 3, S, S] float32, normalized, on the model's device
    bad: dict[int, tuple[str, str]]  # image index -> (reason code, message)
    sha256: list[str]  # per image of the slice ("" for bad files and generated images)
    thumbs: torch.Tensor | None = None  # [len(good), T, T, 3] uint8 on the CPU: thumbnails made while decoding


def batches(model: LoadedModel, source: ImageSource, start: int, stop: int, batch_size: int,
             num_workers: int, pixels: str = "exact", resize: str = "cpu", thumbs: int = 0) -> Iterator[Batch]:
    """Fixed slices [i, i + batch_size) of [start, stop), in order, pixels already on the model's device.

    Files (a `FileSource`: a folder, tar shards) go through `JpegLoader`: read, hashed, decoded and resized as ``pixels`` says
    (MineConfig.pixels; the resize in ``num_workers`` processes, 0: in this process, or with ``resize="device"`` on
    the model's device), pinned, copied to the device without blocking and normalized there: for "exact", bit for
    bit `LoadedModel.preprocess` of the decoded image (tests/test_mine_loader.py); with ``thumbs`` = T > 0 each
    batch also carries its files' thumbnails (`atlas.mining.thumbs`), made by the decoding processes from the bytes
    they read.  Other sources (generated
    images): `ImageSource.sample` and `LoadedModel.preprocess` per image, in a DataLoader of
    ``num_workers`` processes if > 0."""
    if isinstance(source, FileSource):
        plan = FilePlan.of(model, start, stop, batch_size, num_workers, pixels, resize, thumbs)
        yield from file_batches(model, plan.loader(source))
        return
    dev, size = model.device, model.image_size
    draft = size if pixels == "draft" else None

    def load(i: int) -> tuple:
        samples = [source.sample(j, draft_size=draft) for j in range(i, min(i + batch_size, stop))]
        good = [s for s in samples if s.image is not None]
        pixels = torch.stack([model.preprocess(s.image) for s in good]) if good else torch.zeros(0, 3, size, size)
        bad = {s.index: (s.error, s.message) for s in samples if s.image is None}
        return i, i + len(samples), [s.index for s in good], pixels, bad, [s.sha256 for s in samples]

    starts = range(start, stop, batch_size)
    parts = map(load, starts) if num_workers <= 0 else torch.utils.data.DataLoader(
        list(starts), batch_size=None, num_workers=num_workers, collate_fn=load, prefetch_factor=4,
        pin_memory=dev.type == "cuda", persistent_workers=False)
    for first, last, good, pixels, bad, sha in parts:
        index = to_device(torch.tensor(good, dtype=torch.int64), dev)
        yield Batch(first, last, good, index, to_device(pixels, dev), bad, sha)


@dataclass(frozen=True)
class FilePlan:
    """What a pass over files decodes, and how: `JpegLoader`'s settings.  The model decides the first three;
    `atlas.mining.early` guesses them from the spec to start decoding before the model is built, and `mine` uses
    those batches only if its own plan is equal."""

    size: int  # the model's input side S
    resize_mode: str
    crop_rule: str
    device: torch.device
    start: int
    stop: int
    batch_size: int
    workers: int
    pixels: str = "exact"
    resize: str = "cpu"
    thumbs: int = 0  # T > 0: the decoding processes also make the thumbnails (`atlas.mining.thumbs`)

    @classmethod
    def of(cls, model: LoadedModel, start: int, stop: int, batch_size: int, workers: int, pixels: str = "exact",
           resize: str = "cpu", thumbs: int = 0) -> "FilePlan":
        return cls(model.image_size, model.resize_mode, model.crop_rule, model.device, start, stop, batch_size,
                   workers, pixels, resize, thumbs)

    def loader(self, source: FileSource) -> JpegLoader:
        return JpegLoader([source.path(i) for i in range(len(source))], self.size, batch_size=self.batch_size,
                          device=self.device, decode="cpu",
                          resize="device" if self.pixels == "approx" else self.resize, workers=self.workers,
                          resize_mode=self.resize_mode, crop=self.crop_rule, draft=self.pixels == "draft",
                          approx=self.pixels == "approx", max_pixels=source.max_pixels or DEFAULT_MAX_PIXELS,
                          hashes=True, names=[e.source_id for e in source.entries], start=self.start,
                          stop=self.stop, thumbs=self.thumbs)


def file_batches(model: LoadedModel, loader: JpegLoader) -> Iterator[Batch]:
    """A `FilePlan`'s loader's batches as mining's: normalized for ``model`` on its device."""
    for b in loader:
        bad = {i: (reason, message) for i, reason, message in b.bad}
        sha = ["" if i in bad else h for i, h in zip(range(b.start, b.stop), b.sha256)]  # as ImageSource.sample
        yield Batch(b.start, b.stop, b.index.tolist(), to_device(b.index, model.device),
                    normalize(b.pixels, model.mean, model.std), bad, sha, b.thumbs)


def resize_on(resize: str, device: torch.device) -> str:
    """mine()'s ``resize`` resolved: where the exact resize of files runs ("cpu": the decoding processes).  "auto"
    is "cpu" on every device: on mixed-size JPEGs the whole call was faster so (H200, 14 workers, RN50x4, 8,192
    files: 9.96 s vs 15.63 s with the resize on the GPU, whose main process ships whole decoded images and builds
    each new shape's coefficients; docs/benchmarks.md)."""
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {RESIZES}, got {resize!r}")
    return "cpu" if resize == "auto" else resize
