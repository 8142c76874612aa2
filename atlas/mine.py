"""`atlas mine`: stream images through the model and keep, per neuron, the exact top-k and statistics.

For each layer a `LayerState` holds on the model's device:
- the running top-k of the per-image score (spatial max or mean), ties broken by image index, with
  each example's argmax location and small spatial map;
- count, mean and M2 (Welford, float64), min, max, positives and non-finite counts of the score;
- a histogram of the score over [-R, R], R the smallest power of two above every |score| seen (at least
  2**-20); when R grows, bins merge exactly, so the result equals a histogram made in one go;
- optionally the [images, units] matrix of spatial means (`pooled`, for probes).

Batches are fixed slices of the image index, so a run resumed from a checkpoint computes exactly what
an uninterrupted run computes.  Checkpoints are written atomically to the store's work folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import __version__, store
from .capture import hooked
from .config import MineConfig, digest, to_json
from .data.decode import DEFAULT_MAX_PIXELS
from .data.loader import JpegLoader, _to, normalize
from .data.sources import FolderSource, ImageSource
from .graphs import GraphStep
from .kernels import choose
from .kernels.mining import spatial_reduce
from .kernels.stats import score_stats
from .kernels.topk import gather_maps, merge_topk, merge_topk_torch
from .models import LayerInfo, LoadedModel

MIN_RANGE_EXP = -20
Progress = Callable[[int, int], None]


class LayerState:
    """Running top-k and statistics of one layer (tensors on the model's device).

    `update` is the fast path.  One pass over the activations (`atlas.kernels.mining.spatial_reduce`) gives each
    (image, unit) score and flags the pairs that beat the unit's current k-th entry; one more kernel folds the
    scores into the statistics (`atlas.kernels.stats`).  With the Triton kernels (CUDA) the merge
    (`atlas.kernels.topk`) then runs with fixed shapes, so the host never waits for the GPU: a kernel merges each
    unit's top-k with the batch, skipping chunks without candidates, and another pools only the maps of entries
    that entered.  With torch (the CPU) only the flagged images are pooled and only units with a candidate
    merged.  Either way exact, since no unflagged pair can enter a top-k.  `update_reference` is the plain
    algorithm (maps of every image, every pair merged by a full sort).  The two agree bit for bit except in
    float sums made in another order: the kernel's spatial means (rank_by="mean"), the statistics' float64 mean
    and M2, and the kernel-pooled maps, which agree to rounding (tests/test_kernels.py).  The pooled matrices are
    copied to the host without waiting (`drain` writes them).  ``backend``: "auto", "torch" or "triton".
    """

    def __init__(self, info: LayerInfo, cfg: MineConfig, device: torch.device,
                 pooled: np.ndarray | None = None, pooled_cls: np.ndarray | None = None, backend: str | None = None):
        u, k = info.units, cfg.top_k
        self.info, self.cfg, self.backend = info, cfg, backend
        self.map_hw = (min(info.grid[0], cfg.map_size), min(info.grid[1], cfg.map_size))
        mh, mw = self.map_hw
        z = dict(device=device)
        self.values = torch.full((u, k), -math.inf, dtype=torch.float32, **z)
        self.index = torch.full((u, k), -1, dtype=torch.int64, **z)
        self.argmax = torch.zeros((u, k), dtype=torch.int32, **z)
        self.maps = torch.zeros((u, k, mh * mw), dtype=torch.float32, **z)
        self.count = torch.zeros(u, dtype=torch.int64, **z)
        self.mean = torch.zeros(u, dtype=torch.float64, **z)
        self.m2 = torch.zeros(u, dtype=torch.float64, **z)
        self.min = torch.full((u,), math.inf, dtype=torch.float32, **z)
        self.max = torch.full((u,), -math.inf, dtype=torch.float32, **z)
        self.positive = torch.zeros(u, dtype=torch.int64, **z)
        self.nonfinite = torch.zeros(u, dtype=torch.int64, **z)
        self.hist = torch.zeros((u, cfg.hist_bins), dtype=torch.int64, **z)
        self.range_exp = torch.full((u,), MIN_RANGE_EXP, dtype=torch.int64, **z)
        self.pooled = pooled  # [N, U] float16 memmap or None
        self.pooled_cls = pooled_cls  # [N, U] float16 memmap of the CLS token (token layers) or None
        self._pending: tuple | None = None  # rows of the pooled matrices on their way to the host
        # set by atlas.graphs.GraphStep: results copied into these same tensors (a CUDA graph replays fixed
        # addresses), and the pooled rows kept on the device until `queue_rows` (no host work inside a graph)
        self.inplace = False
        self.defer_rows = False
        self._rows: tuple | None = None

    TENSORS = ("values", "index", "argmax", "maps", "count", "mean", "m2", "min", "max", "positive",
               "nonfinite", "hist", "range_exp")

    def update(self, index: torch.Tensor, out: torch.Tensor) -> None:
        """index: [B] image indices (unique, ascending not needed); out: the module's output (consumed at once)."""
        a = self.info.canonical(out).detach()  # [B, U, h, w], the output's own dtype and strides
        red = spatial_reduce(a, index, self.values[:, -1], self.index[:, -1], self.cfg.rank_by, self.backend)
        score = red.peak if self.cfg.rank_by == "max" else red.mean  # [B, U] float32
        self._update_stats(score, self.backend)
        if choose(self.backend, a) == "triton":  # fixed shapes throughout: nothing waits for the GPU
            merged = merge_topk(score, index, red.arg, self.values, self.index, self.argmax, "triton")
            self._set("maps", gather_maps(a, merged.source, self.maps, self.map_hw, "triton"))
            self._set("values", merged.values)
            self._set("index", merged.index)
            self._set("argmax", merged.argmax)
        else:  # sparse: only candidate images pooled, only candidate units merged (nonzero syncs, free on a CPU)
            imgs = red.flag.any(1).nonzero().squeeze(1)  # [B'] images that may enter some top-k
            if len(imgs):
                units = red.flag.index_select(0, imgs).any(0).nonzero().squeeze(1)  # [U'] units with a candidate
                pick = lambda t: t.index_select(0, imgs).index_select(1, units)  # [B, U, ...] -> [B', U', ...]
                small = self._maps(a, imgs).index_select(1, units)  # [B', U', mh*mw]
                self._merge_topk(index.index_select(0, imgs), pick(score), pick(red.arg), small, units)
        self._write_pooled(index, red.mean, out)

    def update_reference(self, index: torch.Tensor, out: torch.Tensor) -> None:
        """`update` the plain way: torch reductions, maps of every image, every image merged into every unit."""
        a = self.info.canonical(out).detach().float()  # [B, U, h, w]
        b, u = a.shape[:2]
        flat = a.reshape(b, u, -1)  # [B, U, h*w]
        peak, arg = flat.max(dim=2)  # [B, U]
        spatial_mean = flat.mean(dim=2)  # [B, U]
        score = peak if self.cfg.rank_by == "max" else spatial_mean
        small = F.adaptive_avg_pool2d(a, self.map_hw).reshape(b, u, -1)  # [B, U, mh*mw]
        self._merge_topk(index, score, arg.to(torch.int32), small)
        self._update_stats(score)
        self._write_pooled(index, spatial_mean, out)

    def _maps(self, a: torch.Tensor, imgs: torch.Tensor) -> torch.Tensor:
        """[B', U, mh*mw] maps of the images ``imgs`` of a [B, U, h, w], bit for bit what pooling the whole
        float32 batch gives: same memory format, so the same pooling kernel and order of additions."""
        b, u, h, w = a.shape
        if self.map_hw == (1, 1) and h * w > 1:  # torch pools to 1x1 by a mean whose order depends on B: pool all
            return F.adaptive_avg_pool2d(a.float(), (1, 1)).reshape(b, u, 1).index_select(0, imgs)
        x = a if len(imgs) == b else a.index_select(0, imgs)
        x = x.to(torch.float32, memory_format=self._pool_format(a))
        return F.adaptive_avg_pool2d(x, self.map_hw).reshape(len(imgs), u, -1)

    @staticmethod
    def _pool_format(a: torch.Tensor) -> torch.memory_format:
        """The memory format in which torch pools ``a.float()`` (ATen's suggest_memory_format, not exposed to
        Python): empty_like of a non-dense tensor uses it, and doubling every stride keeps their order."""
        f = torch.empty_strided(a.shape, a.stride(), dtype=a.dtype, device="meta").float()
        probe = torch.empty_like(torch.empty_strided(f.shape, [2 * s for s in f.stride()], device="meta"))
        return torch.contiguous_format if probe.is_contiguous() else torch.channels_last

    def _set(self, name: str, value: torch.Tensor) -> None:
        if self.inplace:
            getattr(self, name).copy_(value)
        else:
            setattr(self, name, value)

    def _write_pooled(self, index: torch.Tensor, spatial_mean: torch.Tensor, out: torch.Tensor) -> None:
        """The batch's rows of the pooled matrices ([B, U] float16 on the device), queued to the host at once or,
        with ``defer_rows``, kept until `queue_rows`."""
        rows = [(m, t) for m, t in ((self.pooled_cls, lambda: self.info.cls(out)),
                                    (self.pooled, lambda: spatial_mean)) if m is not None]
        if not rows:
            return
        self._rows = (index, [t().detach().to(torch.float16) for _, t in rows], [m for m, _ in rows])
        if not self.defer_rows:
            self.queue_rows()

    def queue_rows(self, index: torch.Tensor | None = None) -> None:
        """Send the kept rows to the host: on a GPU a non-blocking copy to pinned memory, written to the memmaps at
        the next batch (or `drain`), so the host never waits for the batch itself.  ``index``: the rows' image
        indices, if not those given to `update` (a graph's static index buffer)."""
        if self._rows is None:
            return
        given, rows, targets = self._rows
        self._rows = None
        index = given if index is None else index
        self.drain()
        host = [index.to("cpu", non_blocking=True)] + [r.to("cpu", non_blocking=True) for r in rows]
        event = None
        if index.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self._pending = (event, host, targets)
        if event is None:  # on the CPU there is nothing to wait for
            self.drain()

    def drain(self) -> None:
        """Write the queued rows of the pooled matrices (waits for their copies)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        event, host, targets = pending
        if event is not None:
            event.synchronize()
        index = host[0].numpy()
        for m, rows in zip(targets, host[1:]):
            m[index] = rows.numpy()

    def _merge_topk(self, index: torch.Tensor, score: torch.Tensor, arg: torch.Tensor, small: torch.Tensor,
                    units: torch.Tensor | None = None) -> None:
        """Merge candidates into the top-k of ``units`` (all units if None).  index: [B]; score, arg: [B, U'];
        small: [B, U', mh*mw]."""
        rows = (lambda t: t) if units is None else (lambda t: t.index_select(0, units))
        m = merge_topk_torch(score, index, arg, rows(self.values), rows(self.index), rows(self.argmax))
        u, k = m.values.shape
        src = m.source.long()  # [U', K]: < K kept slot, else K + candidate row
        hw = self.maps.shape[2]
        kept = rows(self.maps).gather(1, src.clamp(max=k - 1)[..., None].expand(u, k, hw))
        fresh = small.transpose(0, 1).gather(1, (src - k).clamp(min=0)[..., None].expand(u, k, hw))
        new = {"values": m.values, "index": m.index, "argmax": m.argmax,
               "maps": torch.where((src >= k)[..., None], fresh, kept)}
        for name, t in new.items():
            if units is None:
                setattr(self, name, t)
            else:
                getattr(self, name).index_copy_(0, units, t)

    def _update_stats(self, score: torch.Tensor, backend: str | None = "torch") -> None:
        """Fold a batch's scores [B, U] into the running statistics (`atlas.kernels.stats.score_stats`: one kernel
        on CUDA)."""
        st = score_stats(score, self.count, self.mean, self.m2, self.nonfinite, self.positive, self.min, self.max,
                         self.hist, self.range_exp, MIN_RANGE_EXP, backend)
        for name, value in zip(("count", "mean", "m2", "nonfinite", "positive", "min", "max", "hist", "range_exp"),
                               st):
            self._set(name, value)

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        self.drain()
        return {k: getattr(self, k).cpu().numpy() for k in self.TENSORS}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for k in self.TENSORS:
            setattr(self, k, torch.from_numpy(state[k]).to(getattr(self, k).device))


@dataclass
class MineResult:
    store: Path
    layers: tuple[str, ...]
    images: int
    bad: int
    skipped_layers: tuple[str, ...]  # already in the store with the same config
    resumed_from: int  # image index the run resumed at (0: fresh start)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of mining's phases (see `mine`)
    graph_batches: int = 0  # batches replayed from a CUDA graph (atlas.graphs)


@dataclass
class _Batch:
    """One fixed slice [start, stop) of the image index, ready for the model."""

    start: int
    stop: int
    good: list[int]  # indices of the images in pixels, ascending
    index: torch.Tensor  # [len(good)] int64 on the model's device
    pixels: torch.Tensor  # [len(good), 3, S, S] float32, normalized, on the model's device
    bad: dict[int, tuple[str, str]]  # image index -> (reason code, message)
    sha256: list[str]  # per image of the slice ("" for bad files and generated images)


def _batches(model: LoadedModel, source: ImageSource, start: int, stop: int, batch_size: int,
             num_workers: int, pil: bool = False, resize: str = "pil") -> Iterator[_Batch]:
    """Fixed slices [i, i + batch_size) of [start, stop), in order, pixels already on the model's device.

    Files (a `FolderSource`) go through `JpegLoader`: read, hashed, decoded and cropped by `LoadedModel.crop`'s
    PIL code in ``num_workers`` processes (0: in this process), pinned, copied to the device without blocking
    and normalized there: bit for bit `LoadedModel.preprocess` (tests/test_mine_loader.py).  Other sources
    (generated images), or ``pil=True``: `ImageSource.sample` and `LoadedModel.preprocess` per image, in a
    DataLoader of ``num_workers`` processes if > 0.  ``resize="device"``: files are resized on the device instead
    (MineConfig.resize)."""
    if isinstance(source, FolderSource) and not pil:
        yield from _file_batches(model, source, start, stop, batch_size, num_workers, resize)
        return
    dev, size = model.device, model.image_size

    def load(i: int) -> tuple:
        samples = [source.sample(j, draft_size=size) for j in range(i, min(i + batch_size, stop))]
        good = [s for s in samples if s.image is not None]
        pixels = torch.stack([model.preprocess(s.image) for s in good]) if good else torch.zeros(0, 3, size, size)
        bad = {s.index: (s.error, s.message) for s in samples if s.image is None}
        return i, i + len(samples), [s.index for s in good], pixels, bad, [s.sha256 for s in samples]

    starts = range(start, stop, batch_size)
    parts = map(load, starts) if num_workers <= 0 else torch.utils.data.DataLoader(
        list(starts), batch_size=None, num_workers=num_workers, collate_fn=load, prefetch_factor=4,
        pin_memory=dev.type == "cuda", persistent_workers=False)
    for first, last, good, pixels, bad, sha in parts:
        yield _Batch(first, last, good, _to(torch.tensor(good, dtype=torch.int64), dev), _to(pixels, dev), bad, sha)


def _file_batches(model: LoadedModel, source: FolderSource, start: int, stop: int, batch_size: int,
                  num_workers: int, resize: str = "pil") -> Iterator[_Batch]:
    loader = JpegLoader([source.path(i) for i in range(len(source))], model.image_size, batch_size=batch_size,
                        device=model.device, decode="cpu", resize="cpu" if resize == "pil" else "device", workers=num_workers,
                        resize_mode=model.resize_mode, max_pixels=source.max_pixels or DEFAULT_MAX_PIXELS,
                        hashes=True, names=[e.source_id for e in source.entries], start=start, stop=stop)
    for b in loader:
        bad = {i: (reason, message) for i, reason, message in b.bad}
        sha = ["" if i in bad else h for i, h in zip(range(b.start, b.stop), b.sha256)]  # as ImageSource.sample
        yield _Batch(b.start, b.stop, b.index.tolist(), _to(b.index, model.device),
                     normalize(b.pixels, model.mean, model.std), bad, sha)


def _precision(precision: str, device: torch.device) -> str:
    """MineConfig.precision with "auto" resolved: bfloat16 on a CUDA GPU that has it, else float32."""
    if precision != "auto":
        return precision
    return "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"


@contextmanager
def _model_path(model: LoadedModel, precision: str, graphs: bool = False) -> Iterator[torch.memory_format]:
    """The image tower as mining runs it: channels_last on CUDA (its 4-D weights put back as they were
    afterwards), under bfloat16 autocast for ``precision="bfloat16"`` (without autocast's cast cache when the step
    is recorded in a CUDA graph, as graphs require).  Yields the input's memory format."""
    dev = model.device
    fmt = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    weights = [p for p in model.visual.parameters() if p.dim() == 4 and p.is_contiguous()]
    if fmt == torch.channels_last:
        model.visual.to(memory_format=fmt)
    try:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16", cache_enabled=not graphs):
            yield fmt
    finally:
        for p in weights:
            p.data = p.data.contiguous()


def _use_graphs(cuda_graphs: bool | None, device: torch.device) -> bool:
    """mine()'s ``cuda_graphs`` resolved: None records the step in a CUDA graph where the Triton kernels run."""
    possible = device.type == "cuda" and choose(None, torch.empty(0, device=device)) == "triton"
    if cuda_graphs and not possible:
        raise ValueError(f"cuda_graphs=True needs a CUDA device and the Triton kernels (device {device}, kernels "
                         f"{choose(None, torch.empty(0, device=device))!r}); leave cuda_graphs unset to choose")
    return possible if cuda_graphs is None else cuda_graphs


def _record(image_state: dict[str, object], b: _Batch) -> None:
    """Each image's status, sha256 and, for bad files, message."""
    for k, i in enumerate(range(b.start, b.stop)):
        reason, message = b.bad.get(i, ("", ""))
        image_state["status"][i] = store.REASON_CODES.index(reason)
        image_state["sha256"][i] = b.sha256[k].encode()
        if reason:
            image_state["messages"][i] = message


def _run_meta(model: LoadedModel, source: ImageSource) -> dict[str, object]:
    return {
        "atlas_version": __version__, "model_spec": str(model.spec), "model_name": model.name,
        "weights_sha256": model.weights_sha256, "image_size": model.image_size,
        "data_source": source.description, "data_fingerprint": source.fingerprint(),
    }


def mine(model: LoadedModel, source: ImageSource, store_path: str | os.PathLike,
         config: MineConfig = MineConfig(), *, num_workers: int = 0, checkpoint_seconds: float = 30.0,
         progress: Progress | None = None, cuda_graphs: bool | None = None, _pil: bool = False) -> MineResult:
    """Mine ``config.layers`` (default: the model's default layers) of ``source`` into the store.

    Resumes from the store's work folder after a crash; layers already mined with the same config
    are skipped.  Raises StoreBusy if another process writes the store.  ``num_workers``: image-decoding
    processes (0: decode here).  The result's ``seconds``: "setup", "first_batch" (waiting for the first
    decoded batch: worker start-up), "wait" (for later batches), "forward"
    (host time of the forwards and updates, GPU waits included), "checkpoint", "commit".  ``cuda_graphs``: replay
    the step of full batches from a CUDA graph (`atlas.graphs`; None: wherever the Triton kernels run; results are
    the same).  ``_pil``: files
    too through the per-image PIL path (`_batches`; for the equivalence tests).
    """
    path = Path(store_path)
    t0 = time.perf_counter()
    infos = [model.layer(n) for n in (config.layers or model.default_layers)]
    layers = tuple(i.name for i in infos)  # canonical names, also for aliases
    config = replace(config, layers=tuple(layers), precision=_precision(config.precision, model.device),
                     resize=config.resize if config.resize != "auto" else
                     "device" if model.device.type == "cuda" else "pil")
    n_images = min(len(source), config.max_images or len(source))
    meta = _run_meta(model, source)
    with store.lock(path):
        store.check_compatible(path, meta)
        todo, skipped = _layers_to_mine(path, model.name, infos, config)
        work = store.work_dir(path) / f"mine-{digest(meta['weights_sha256'], meta['data_fingerprint'], config)}"
        if not todo:
            store.remove_work(work)  # left by a run killed after its commit, before its clean-up
            return MineResult(path, tuple(layers), n_images, 0, tuple(i.name for i in skipped), 0)
        work.mkdir(parents=True, exist_ok=True)
        states, image_state, position = _open_states(work, todo, config, n_images, model.device)
        resumed_from = position
        last_ckpt = time.monotonic()
        current: dict[str, torch.Tensor] = {}
        seconds = dict.fromkeys(("setup", "first_batch", "wait", "forward", "checkpoint", "commit"), 0.0)

        def consume(name: str, out: torch.Tensor) -> None:
            states[name].update(current["index"], out)

        graphs = _use_graphs(cuda_graphs, model.device)
        with torch.no_grad(), hooked(model.clip, [i.name for i in todo], consume), \
                _model_path(model, config.precision, graphs) as memory_format:
            step = GraphStep(model.clip.encode_image, current, list(states.values())) if graphs else None
            batches = _batches(model, source, position, n_images, config.batch_size, num_workers, _pil,
                               config.resize)
            seconds["setup"], t = time.perf_counter() - t0, time.perf_counter()
            for b in batches:
                t = _lap(seconds, "wait" if seconds["first_batch"] else "first_batch", t)
                _record(image_state, b)
                if b.good:
                    x = b.pixels.contiguous(memory_format=memory_format)
                    if step is not None:
                        step(x, b.index)
                    else:
                        current["index"] = b.index
                        model.clip.encode_image(x)
                position = b.stop
                if progress:
                    progress(position, n_images)
                t = _lap(seconds, "forward", t)
                if time.monotonic() - last_ckpt >= checkpoint_seconds or position >= n_images:
                    _checkpoint(work, states, image_state, position)
                    last_ckpt = time.monotonic()
                t = _lap(seconds, "checkpoint", t)
        _commit(path, model, source, config, todo, states, image_state, meta, n_images)
        store.remove_work(work)
        _lap(seconds, "commit", t)
        bad = int(np.count_nonzero(image_state["status"]))
        return MineResult(path, tuple(layers), n_images, bad, tuple(i.name for i in skipped), resumed_from, seconds,
                          step.replays if step is not None else 0)


def _lap(seconds: dict[str, float], phase: str, since: float) -> float:
    now = time.perf_counter()
    seconds[phase] += now - since
    return now


def _layers_to_mine(path: Path, model_name: str, infos: list[LayerInfo],
                    config: MineConfig) -> tuple[list[LayerInfo], list[LayerInfo]]:
    if not path.exists():
        return infos, []
    todo, skipped = [], []
    with store.Store(path) as st:
        for info in infos:
            key = f"neurons/{model_name}/{info.name}"
            if key not in st.file:
                todo.append(info)
                continue
            old = st.file[key].attrs["config"]
            if {"precision": "float32", "resize": "pil", **json.loads(old)} != json.loads(_layer_config_json(config)):
                # (a layer mined before MineConfig had these fields was mined in float32 from PIL's pixels)
                raise store.StoreError(
                    f"store {path} already holds layer {info.name} mined with other settings ({old}); "
                    "write to another store path to mine it differently")
            skipped.append(info)
    return todo, skipped


def _layer_config_json(config: MineConfig) -> str:
    return to_json(replace(config, layers=()))


def _open_states(work: Path, todo: list[LayerInfo], config: MineConfig, n_images: int,
                 device: torch.device) -> tuple[dict[str, LayerState], dict[str, object], int]:
    states = {}
    def matrix(name: str) -> np.ndarray:  # [N, U] float16, kept on disk between checkpoints
        p = work / name
        return np.lib.format.open_memmap(p, mode="r+" if p.exists() else "w+", dtype=np.float16,
                                         shape=(n_images, info.units))

    for info in todo:
        pooled = matrix(f"pooled-{info.name}.npy") if config.keep_pooled else None
        cls = matrix(f"pooled_cls-{info.name}.npy") if config.keep_pooled and info.prefix_tokens else None
        states[info.name] = LayerState(info, config, device, pooled, cls)
    image_state: dict[str, object] = {"status": np.zeros(n_images, np.uint8),
                                      "sha256": np.zeros(n_images, "S64"), "messages": {}}
    position = 0
    ckpt = work / "checkpoint.npz"
    if ckpt.exists():
        with np.load(ckpt, allow_pickle=False) as z:
            position = int(z["position"])
            image_state["status"] = z["status"].copy()
            image_state["sha256"] = z["sha256"].copy()
            image_state["messages"] = dict(zip(z["msg_index"].tolist(), z["msg_text"].tolist()))
            for name, st in states.items():
                st.load_state_dict({k: z[f"{name}|{k}"] for k in LayerState.TENSORS})
    return states, image_state, position


def _checkpoint(work: Path, states: dict[str, LayerState], image_state: dict, position: int) -> None:
    for st in states.values():
        st.drain()
        for m in (st.pooled, st.pooled_cls):
            if m is not None:
                m.flush()
    msgs = image_state["messages"]
    arrays = {"position": np.array(position), "status": image_state["status"],
              "sha256": image_state["sha256"], "msg_index": np.array(sorted(msgs), dtype=np.int64),
              "msg_text": np.array([msgs[i] for i in sorted(msgs)], dtype=str)}
    for name, st in states.items():
        arrays.update({f"{name}|{k}": v for k, v in st.state_dict().items()})
    store.save_checkpoint(work / "checkpoint.npz", **arrays)


def _commit(path: Path, model: LoadedModel, source: ImageSource, config: MineConfig,
            todo: list[LayerInfo], states: dict[str, LayerState], image_state: dict,
            meta: dict[str, object], n_images: int) -> None:
    from .thumbs import make_thumbnails

    for st in states.values():
        st.drain()
    status = image_state["status"]
    reasons = [store.REASON_CODES[c] for c in status]
    messages = image_state["messages"]
    with store.transaction(path) as f:
        for k, v in meta.items():
            f.attrs[k] = v
        f.attrs["n_images"] = n_images
        img = f.require_group("images")
        if "source_id" not in img:
            entries = source.entries[:n_images]
            store.put(img, "source_id", [e.source_id for e in entries])
            store.put(img, "caption", [e.caption for e in entries])
            store.put(img, "label", [e.label for e in entries])
            store.put(img, "sha256", image_state["sha256"])
            store.put(img, "status", status)
            store.put(img, "reason", [messages.get(i, reasons[i]) if status[i] else "" for i in range(n_images)])
        group = f.require_group(f"neurons/{model.name}")
        order = len(group)
        for info in todo:
            st = states[info.name]
            g = group.create_group(info.name)
            g.attrs.update({"kind": info.kind, "units": info.units, "grid": list(info.grid),
                            "order": order, "config": _layer_config_json(config)})
            order += 1
            store.put(g, "topk/values", st.values.cpu().numpy())
            store.put(g, "topk/index", st.index.cpu().numpy())
            store.put(g, "topk/argmax", st.argmax.cpu().numpy())
            store.put(g, "topk/maps", st.maps.cpu().numpy().astype(np.float16)
                      .reshape(info.units, config.top_k, *st.map_hw))
            cnt = st.count.cpu().numpy()
            store.put(g, "stats/count", cnt)
            store.put(g, "stats/mean", st.mean.cpu().numpy())
            store.put(g, "stats/std", np.sqrt(st.m2.cpu().numpy() / np.maximum(cnt, 1)))
            store.put(g, "stats/min", st.min.cpu().numpy())
            store.put(g, "stats/max", st.max.cpu().numpy())
            store.put(g, "stats/positive", st.positive.cpu().numpy())
            store.put(g, "stats/nonfinite", st.nonfinite.cpu().numpy())
            store.put(g, "stats/hist", st.hist.cpu().numpy())
            store.put(g, "stats/range", np.ldexp(1.0, st.range_exp.cpu().numpy()))
            for key, m in (("pooled", st.pooled), ("pooled_cls", st.pooled_cls)):
                if m is not None:  # skipped images have no activations: NaN rows
                    store.put_rows(g, key, m, status != 0)
        needed = sorted({int(i) for st in states.values() for i in st.index.cpu().numpy().ravel() if i >= 0})
        make_thumbnails(f, model, source, needed, config.thumb_size, n_images)
