"""Fast image loading for mining: a list of files in, uint8 pixel batches on the device out.

``JpegLoader(paths, size, device=...)`` yields one `LoadedBatch` per fixed slice ``[i, i + batch_size)`` of
``paths``, in order: the slice's good images as ``pixels`` [n, 3, S, S] uint8 on ``device`` (a
channels-last view: what a channels-last model wants), their indices, and the files that could not be
used (index, reason, message: the reasons of `atlas.data.decode`).  Batches are prepared ahead while
the caller runs the model; `normalize` turns pixels into the model's input.

The pixels are the model's own (`atlas.data.pixels`): the fully decoded image, resized and centre-cropped with
PIL's bicubic arithmetic, the bytes of open_clip's validation transform.  Where the work runs:

``decode="cpu"`` (the default): worker processes read each file and run `decode_image`, the call `atlas.mining`
    makes, into shared memory; the DataLoader's thread pins the batch and it is copied to the device with a
    non-blocking copy on a side stream.  ``resize`` says where the resize runs: "cpu" (`pil_crop`, PIL in the
    workers), "device" (the decoded images go to the device and `resize_exact` computes PIL's bytes there, per
    shape group: about a third of the CPU work per image) or "auto" ("device" on CUDA, "cpu" elsewhere).  Both
    give the same bytes.
``decode="gpu"``: reader threads read the files and check their headers; whole RGB or grey JPEGs are
    decoded by nvJPEG (`torchvision.io.decode_jpeg` with ``device="cuda"``, in chunks on several
    threads), their EXIF orientation applied, and resized on the GPU; any other file (PNG, CMYK, truncated,
    ...) and any JPEG that nvJPEG refuses takes the CPU decode above, so the reasons for bad files are the
    same.  It competes with the model for the GPU.  nvJPEG's IDCT and chroma upsampling differ slightly from
    libjpeg-turbo's: not the exact pixels.  On a CPU device the same code runs with libjpeg-turbo
    (torchvision's CPU decoder): that is how the tests check it.

Two speed options change the pixels (their agreement with the exact pixels is measured in tests/test_pixels.py
and docs/store.md): ``draft=True`` lets libjpeg shrink a large JPEG by 1/2, 1/4 or 1/8 in its IDCT before the
resize (on the nvJPEG path: an s x s box average); ``approx=True`` resizes on the device with torch's antialiased
bicubic in float32 (`resize_approx`) instead of PIL's integer arithmetic.

Mining (`atlas.mining.batches.batches`) can use it as is: one `LoadedBatch` per fixed slice gives the good
indices, the bad files with their reasons and, with ``hashes=True``, every file's sha256.  Normalize with
`normalize` here, not `LoadedModel.normalize`, whose per-call ``torch.tensor(mean, device=...)`` is a
blocking copy: it waits for the GPU's queued work every batch and so serializes loading and forward.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
import torch.utils.data
from PIL import Image

from .decode import DEFAULT_MAX_PIXELS, BadImage, decode_image
from .pixels import crop_box, draft_scale, pil_crop, resize_approx, resize_exact, thumbnail  # noqa: F401 (re-exported)

_EXIF_ORIENTATION = 0x0112


@dataclass
class LoadedBatch:
    start: int  # the slice [start, stop) of the file list
    stop: int
    index: torch.Tensor  # [n] int64 on the CPU: file indices of the rows of pixels, ascending
    pixels: torch.Tensor  # [n, 3, S, S] uint8 on the device (channels-last strides)
    bad: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason code, message)
    sha256: list[str] = field(default_factory=list)  # per file of the slice ("" if unreadable); if hashes
    thumbs: torch.Tensor | None = None  # [n, T, T, 3] uint8 on the CPU, rows as pixels' (JpegLoader's ``thumbs``)


def normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[n, 3, S, S] uint8 -> the model's input, (x / 255 - mean) / std, in ``dtype`` (layout kept).

    The constants are made on the device once: a fresh ``torch.tensor(mean, device="cuda")`` per batch
    is a blocking copy that waits for the GPU's queued work (the last forward) and so serializes the
    loader with the model."""
    m, s = _channel_stats(pixels.device, tuple(mean), tuple(std))
    return ((pixels.float() / 255.0 - m) / s).to(dtype)


@functools.lru_cache(maxsize=16)
def _channel_stats(device: torch.device, mean: tuple, std: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


def _rows(rows: list[int], device: torch.device) -> torch.Tensor:
    return to_device(torch.tensor(rows, dtype=torch.int64), device)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor to the device without a blocking copy (pinned, non-blocking: no wait for queued work)."""
    return t.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else t


def _orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to [3, H, W], as PIL's `ImageOps.exif_transpose`."""
    if orientation in (2, 4, 5, 7):
        x = x.flip(-1)
    rot = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)
    # PIL: 5 = flip then rotate 90; 6 = rotate 270; 7 = flip then rotate 270; 8 = rotate 90 (counter-clockwise)
    return torch.rot90(x, rot, dims=(-2, -1)) if rot else x


def _read_file(path: Path, name: str) -> tuple[bytes | None, tuple[str, str] | None]:
    try:
        return path.read_bytes(), None
    except OSError as e:
        return None, ("unreadable", f"{name}: cannot read file ({e.strerror or e})")


class _Files(torch.utils.data.Dataset):
    """The per-file work, picklable for worker processes: read (and hash) a file; decode it on the CPU
    into a row of a host buffer, or check that nvJPEG can take it.  Items are whole slices: one shared-memory
    tensor per batch crosses from a worker to the main process (measured: splitting batches into chunks of
    32 or 64 files, for an earlier first batch, cost a third to a half of the throughput)."""

    def __init__(self, paths: list[Path], names: list[str], size: int, resize_mode: str, max_pixels: int,
                 hashes: bool, slices: list[range], crop: bool = True, draft: bool = False, crop_rule: str = "round",
                 thumbs: int = 0):
        self.paths, self.names, self.size, self.resize_mode = paths, names, size, resize_mode
        self.max_pixels, self.hashes, self.slices, self.crop = max_pixels, hashes, slices, crop
        self.draft_size = size if draft else None  # libjpeg's draft mode (a speed option: other pixels)
        self.crop_rule = crop_rule
        self.thumbs = thumbs  # T > 0: also each good file's thumbnail (`thumb_into`)

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, k: int) -> tuple:
        """Slice ``k`` decoded on the CPU (in a worker process): (start, stop, good indices, pixels [n, S, S, 3]
        uint8 in shared memory, bad, sha256, thumbnails [n, T, T, 3] or None); without ``crop``, pixels is the
        decoded images packed in one flat uint8 tensor, followed by their shapes [(h, w)]."""
        if not self.crop:
            return self._decoded(self.slices[k])
        ids = self.slices[k]
        host = torch.empty((len(ids), self.size, self.size, 3), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            host.share_memory_()  # handed to the main process without a copy
        thumbs = self._thumb_buffer(len(ids))
        errors, sha = {}, []
        for row, i in enumerate(ids):
            data, err = _read_file(self.paths[i], self.names[i])
            sha.append(hashlib.sha256(data).hexdigest() if self.hashes and data is not None else "")
            errors[i] = err or self.decode_into(i, data, host[row], None if thumbs is None else thumbs[row])
        good = [row for row, i in enumerate(ids) if errors[i] is None]
        pixels = host if len(good) == len(ids) else host[good]
        if thumbs is not None and len(good) < len(ids):
            thumbs = thumbs[good]
        bad = [(i, *e) for i, e in errors.items() if e is not None]
        return ids.start, ids.stop, [ids[r] for r in good], pixels, bad, sha, thumbs

    def _thumb_buffer(self, n: int) -> torch.Tensor | None:
        if not self.thumbs:
            return None
        out = torch.empty((n, self.thumbs, self.thumbs, 3), dtype=torch.uint8)
        return out.share_memory_() if torch.utils.data.get_worker_info() is not None else out

    def thumb_into(self, i: int, data: bytes, row: torch.Tensor, crop: np.ndarray | None = None) -> None:
        """File ``i``'s thumbnail into ``row`` [T, T, 3]: `thumbnail` of the model's view of the fully decoded file
        (the definition of `atlas.mining.thumbs`, whose commit-time path makes the same bytes); ``crop``: that
        view [S, S, 3], if made already."""
        if crop is None:
            image = decode_image(data, max_pixels=self.max_pixels, name=self.names[i])
            crop = pil_crop(image, self.size, self.resize_mode, self.crop_rule)
        row.copy_(torch.from_numpy(thumbnail(crop, self.thumbs)))

    def _decoded(self, ids: range) -> tuple:
        images, errors, sha, thumbs = {}, {}, [], {}
        for i in ids:
            data, err = _read_file(self.paths[i], self.names[i])
            sha.append(hashlib.sha256(data).hexdigest() if self.hashes and data is not None else "")
            if err is None:
                try:
                    image = decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size,
                                         name=self.names[i])
                    images[i] = np.array(image)  # [h, w, 3] uint8 (writable), decoded as mining decodes it
                    if self.thumbs:
                        thumbs[i] = torch.empty((self.thumbs, self.thumbs, 3), dtype=torch.uint8)
                        view = None if self.draft_size else pil_crop(image, self.size, self.resize_mode, self.crop_rule)
                        self.thumb_into(i, data, thumbs[i], view)
                except BadImage as e:
                    err = (e.reason, str(e))
            if err is not None:
                errors[i] = err
        flat = torch.empty(sum(a.size for a in images.values()), dtype=torch.uint8)
        if torch.utils.data.get_worker_info() is not None:
            flat.share_memory_()
        offset = 0
        for a in images.values():
            flat[offset:offset + a.size].copy_(torch.from_numpy(a.reshape(-1)))
            offset += a.size
        bad = [(i, *e) for i, e in errors.items()]
        packed = torch.stack(list(thumbs.values())) if thumbs else self._thumb_buffer(0)
        if packed is not None and torch.utils.data.get_worker_info() is not None:
            packed.share_memory_()
        return ids.start, ids.stop, list(images), flat, bad, sha, packed, [a.shape[:2] for a in images.values()]

    def decode_into(self, i: int, data: bytes, row: torch.Tensor, thumb: torch.Tensor | None = None
                    ) -> tuple[str, str] | None:
        """Mining's decode and crop of file ``i`` into ``row`` [S, S, 3], and its thumbnail into ``thumb``
        [T, T, 3] from the same crop (unless drafted); the error, if any."""
        try:
            image = decode_image(data, max_pixels=self.max_pixels, draft_size=self.draft_size, name=self.names[i])
        except BadImage as e:
            return e.reason, str(e)
        crop = pil_crop(image, self.size, self.resize_mode, self.crop_rule)  # [S, S, 3]
        row.copy_(torch.from_numpy(crop))
        if thumb is not None:
            self.thumb_into(i, data, thumb, crop if self.draft_size is None else None)
        return None

    def nvjpeg_ready(self, data: bytes) -> int:
        """The EXIF orientation (1..8) of a whole RGB or grey JPEG within max_pixels, else 0 (the CPU path
        decides, with its reasons for bad files)."""
        if not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
            return 0
        try:
            with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:
                w, h = im.size
                if im.mode not in ("RGB", "L") or w * h > self.max_pixels:
                    return 0
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        except Exception:  # noqa: BLE001 -- anything odd goes to the CPU path
            return 0
        return orientation if 1 <= orientation <= 8 else 0


def _on(stream: torch.cuda.Stream | None):
    """Run on ``stream`` (CUDA), or as is (CPU device: stream is None)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def _as_is(x: tuple) -> tuple:
    return x


class JpegLoader:
    """Iterate over fixed slices of ``paths`` as `LoadedBatch`es (see the module docstring).

    paths: files; ``names[i]`` labels file i in messages (default: its path).  size: S.  resize_mode:
    "shortest" or "squash" (`LoadedModel.resize_mode`); crop: the centre crop's rounding (`LoadedModel.crop_rule`).
    workers: CPU path: decoder processes (0: decode in this process); GPU path: reader threads.  prefetch:
    batches prepared ahead (CPU path: per worker; each batch in flight is a uint8 tensor in shared memory,
    /dev/shm).  hashes: each file's sha256, as mining records it.  start, stop: the files to load.  resize: where
    the CPU path resizes; draft, approx: the speed options that change the pixels (module docstring).  thumbs:
    T > 0: the CPU path also gives each good file's thumbnail (`LoadedBatch.thumbs`, `atlas.mining.thumbs`'s
    bytes); the GPU path gives none."""

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, *, batch_size: int = 256,
                 device: str | torch.device = "cpu", decode: str = "auto", workers: int | None = None,
                 prefetch: int = 2, resize_mode: str = "shortest", max_pixels: int = DEFAULT_MAX_PIXELS,
                 hashes: bool = False, names: Sequence[str] | None = None, start: int = 0,
                 stop: int | None = None, resize: str = "auto", draft: bool = False, approx: bool = False,
                 crop: str = "round", thumbs: int = 0):
        self.device = torch.device(device)
        if decode == "auto":
            decode = "cpu"
        if decode not in ("cpu", "gpu"):
            raise ValueError(f"decode must be 'auto', 'cpu' or 'gpu', got {decode!r}")
        if resize == "auto":
            resize = "device" if self.device.type == "cuda" or approx else "cpu"
        if resize not in ("cpu", "device"):
            raise ValueError(f"resize must be 'auto', 'cpu' or 'device', got {resize!r}")
        if approx and resize == "cpu":
            raise ValueError("approx=True resizes on the device (torch's bicubic); pass resize='device' or 'auto'")
        if resize_mode not in ("shortest", "squash"):
            raise ValueError(f"resize_mode must be 'shortest' or 'squash', got {resize_mode!r}")
        paths = [p if hasattr(p, "read_bytes") else Path(p) for p in paths]  # files, or tar members (data.shards)
        stop = len(paths) if stop is None else min(stop, len(paths))
        self.slices = [range(i, min(i + batch_size, stop)) for i in range(start, stop, batch_size)]
        names = list(names) if names is not None else [str(p) for p in paths]
        crop_in_workers = decode == "gpu" or resize == "cpu"  # (the GPU path resizes nvJPEG's images on the device)
        self.files = _Files(paths, names, size, resize_mode, max_pixels, hashes, self.slices, crop_in_workers,
                            draft, crop, thumbs if decode == "cpu" else 0)
        self.decode, self.size, self.resize, self.draft, self.approx = decode, size, resize, draft, approx
        self.workers = max(1, (os.cpu_count() or 2) - 2) if workers is None else workers
        self.prefetch = max(1, prefetch)
        self._started: Iterator | None = None  # the DataLoader's iterator, once `start` started its processes

    def __len__(self) -> int:
        return len(self.slices)

    def __iter__(self) -> Iterator[LoadedBatch]:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        source = self._cpu_slices() if self.decode == "cpu" else self._gpu_slices(stream)
        for start, stop, index, pixels, bad, sha, thumbs, *shapes in source:
            if self.decode == "cpu":
                with _on(stream):  # from pinned memory, beside the caller's stream
                    pixels = pixels.to(self.device, non_blocking=True)
                    if shapes:
                        pixels = self._resize_packed(pixels, shapes[0])
            if cuda:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                pixels.record_stream(current)
            yield LoadedBatch(start, stop, index, pixels.permute(0, 3, 1, 2), bad, sha, thumbs)

    # --- CPU path: worker processes -----------------------------------------------------------------
    def start(self) -> "JpegLoader":
        """Start the decoding processes now (CPU path with workers): each decodes up to ``prefetch`` slices ahead
        while the caller does other work (e.g. builds the model); the next iteration takes their slices first.
        `close` stops them if the loader is not iterated after all."""
        if self.decode == "cpu" and self.workers and self._started is None:
            self._started = iter(self._dataloader())
        return self

    def close(self) -> None:
        """Stop processes that `start` started and no iteration took over."""
        started, self._started = self._started, None
        if started is not None:
            started._shutdown_workers()  # what the iterator's __del__ would do, now

    def _dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(
            self.files, batch_size=None, shuffle=False, num_workers=self.workers, collate_fn=_as_is,
            pin_memory=self.device.type == "cuda", worker_init_fn=_one_thread if self.workers else None,
            prefetch_factor=self.prefetch if self.workers else None)

    def _cpu_slices(self) -> Iterator[tuple]:
        """Slices decoded by the worker processes, in order; pinned by the DataLoader's pinning thread."""
        loader, self._started = self._started or self._dataloader(), None
        for start, stop, index, pixels, bad, sha, thumbs, *shapes in loader:
            yield (start, stop, torch.tensor(index, dtype=torch.int64), pixels, [tuple(b) for b in bad], sha,
                   thumbs, *shapes)

    def _resize_packed(self, flat: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
        """Decoded images packed in ``flat`` (on the device) -> [n, S, S, 3], resized per shape group."""
        s, sizes = self.size, [h * w * 3 for h, w in shapes]
        out = torch.empty((len(shapes), s, s, 3), dtype=torch.uint8, device=flat.device)
        if not shapes:
            return out
        images = [x.view(h, w, 3) for x, (h, w) in zip(flat.split(sizes), shapes)]
        groups: dict[tuple[int, int], list[int]] = {}
        for k, shape in enumerate(shapes):
            groups.setdefault(tuple(shape), []).append(k)
        for ks in groups.values():
            batch = torch.stack([images[k] for k in ks]).permute(0, 3, 1, 2)  # [m, 3, h, w]
            idx = _rows(ks, flat.device) if len(ks) < len(images) else slice(None)
            out[idx] = self._resize(batch, draft=False).permute(0, 2, 3, 1)
        return out

    def _resize(self, images: torch.Tensor, draft: bool) -> torch.Tensor:
        """[m, 3, h, w] uint8 images of one shape -> [m, 3, S, S] uint8 on their device: PIL's bytes, or with
        ``approx`` torch's bicubic (``draft``: after a box average as JPEG draft mode would shrink them)."""
        f = self.files
        if self.approx:
            return resize_approx(images, self.size, f.resize_mode, f.crop_rule, draft=draft)
        if draft and draft_scale(images.shape[-1], images.shape[-2], self.size) > 1:
            step = draft_scale(images.shape[-1], images.shape[-2], self.size)
            images = F.avg_pool2d(images.float(), step, ceil_mode=True).round_().to(torch.uint8)
        return resize_exact(images, self.size, f.resize_mode, f.crop_rule)

    # --- GPU path: reader threads, nvJPEG, GPU resize --------------------------------------------------
    def _gpu_slices(self, stream: torch.cuda.Stream) -> Iterator[tuple]:
        """A producer thread prepares up to ``prefetch`` slices ahead; its GPU work runs on ``stream``."""
        out: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop_flag = threading.Event()

        def produce() -> None:
            try:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="atlas-load") as pool:
                    for ids in self.slices:
                        if stop_flag.is_set():
                            return
                        out.put(self._gpu_slice(ids, pool, stream))
            except BaseException as e:  # noqa: BLE001 -- re-raised in the consumer
                out.put(e)
            finally:
                out.put(None)

        producer = threading.Thread(target=produce, daemon=True, name="atlas-loader")
        producer.start()
        try:
            while (got := out.get()) is not None:
                if isinstance(got, BaseException):
                    raise got
                yield got
        finally:
            stop_flag.set()
            while producer.is_alive():  # unblock a producer waiting on a full queue
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass

    def _gpu_slice(self, ids: range, pool: ThreadPoolExecutor, stream: torch.cuda.Stream) -> tuple:
        f, s, dev = self.files, self.size, self.device

        def read(i: int) -> tuple:
            data, err = _read_file(f.paths[i], f.names[i])
            sha = hashlib.sha256(data).hexdigest() if f.hashes and data is not None else ""
            return data, err, sha, (f.nvjpeg_ready(data) if data is not None else 0)

        reads = list(pool.map(read, ids))
        jpeg = [k for k, r in enumerate(reads) if r[3]]
        decoded: dict[int, torch.Tensor] = {}
        chunks = [jpeg[j:j + 32] for j in range(0, len(jpeg), 32)]  # nvJPEG's host stage runs per thread
        for part in pool.map(lambda ks: self._nvjpeg(ks, reads, stream), chunks):
            decoded.update(part)
        host_rows = [k for k in range(len(ids)) if k not in decoded and reads[k][1] is None]
        host = torch.empty((len(ids), s, s, 3), dtype=torch.uint8)
        errors = {k: reads[k][1] for k in range(len(ids)) if reads[k][1] is not None}
        for k, err in zip(host_rows, pool.map(lambda k: f.decode_into(ids[k], reads[k][0], host[k]), host_rows)):
            if err is not None:
                errors[k] = err
        good = [k for k in range(len(ids)) if k not in errors]
        pos = {k: j for j, k in enumerate(good)}
        with _on(stream):
            pixels = torch.empty((len(good), s, s, 3), dtype=torch.uint8, device=dev)  # NHWC
            on_host = [k for k in good if k not in decoded]
            if on_host:
                pixels[_rows([pos[k] for k in on_host], dev)] = to_device(host[on_host], dev)
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for k, image in decoded.items():
                by_shape.setdefault(tuple(image.shape), []).append(k)
            for ks in by_shape.values():
                resized = self._resize(torch.stack([decoded[k] for k in ks]), draft=self.draft)
                pixels[_rows([pos[k] for k in ks], dev)] = resized.permute(0, 2, 3, 1)
        index = torch.tensor([ids[k] for k in good], dtype=torch.int64)
        bad = [(ids[k], *errors[k]) for k in sorted(errors)]
        return ids.start, ids.stop, index, pixels, bad, [r[2] for r in reads] if f.hashes else [], None

    def _nvjpeg(self, ks: list[int], reads: list[tuple], stream: torch.cuda.Stream) -> dict[int, torch.Tensor]:
        """Decode files ``ks`` with nvJPEG on ``stream``, EXIF orientation applied; a file nvJPEG refuses is
        left out (the CPU path takes it)."""
        from torchvision.io import ImageReadMode, decode_jpeg

        data = [torch.frombuffer(bytearray(reads[k][0]), dtype=torch.uint8) for k in ks]
        with _on(stream):
            try:
                images = decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device)
            except RuntimeError:  # find the culprit(s) one by one
                images = []
                for d in data:
                    try:
                        images.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError:
                        images.append(None)
            return {k: _orient(im, reads[k][3]) for k, im in zip(ks, images) if im is not None}
