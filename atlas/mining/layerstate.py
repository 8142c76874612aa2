"""The running state of one mined layer: exact top-k examples with their maps, and statistics of the per-image
score, on the model's device (`LayerState`).  `atlas.mining` streams batches through it.

Per layer:
- the running top-k of the per-image score (spatial max or mean), ties broken by image index, with
  each example's argmax location and small spatial map;
- count, mean and M2 (Welford, float64), min, max, positives and non-finite counts of the score (non-finite
  scores enter neither the statistics nor the top-k), and the count of images whose map holds a non-finite value;
- a histogram of the score over [-R, R], R the smallest power of two above every |score| seen (at least
  2**-20); when R grows, bins merge exactly, so the result equals a histogram made in one go;
- optionally the [images, units] matrix of spatial means (`pooled`, for probes), in float32: any value the model
  produces fits, and a non-finite one is the model's, counted above.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..config import MineConfig
from ..kernels import choose
from ..kernels.mining import Reduced, spatial_reduce
from ..kernels.stats import Stats, score_stats
from ..kernels.topk import Merged, gather_maps, merge_topk, merge_topk_torch
from ..models import LayerInfo

MIN_RANGE_EXP = -20


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
        self.nonfinite_maps = torch.zeros(u, dtype=torch.int64, **z)  # images with a non-finite value in the map
        self.hist = torch.zeros((u, cfg.hist_bins), dtype=torch.int64, **z)
        self.range_exp = torch.full((u,), MIN_RANGE_EXP, dtype=torch.int64, **z)
        self.pooled = pooled  # [N, U] float32 memmap or None
        self.pooled_cls = pooled_cls  # [N, U] float32 memmap of the CLS token (token layers) or None
        self._pending: tuple | None = None  # rows of the pooled matrices on their way to the host
        # set by atlas.mining.cuda_graphs.GraphStep: results written into these same tensors (a CUDA graph replays fixed
        # addresses; the Triton kernels take them as ``out``), and the pooled rows kept on the device until
        # `queue_rows` (no host work inside a graph)
        self.inplace = False
        self.defer_rows = False
        self.row_buffers: list[torch.Tensor] | None = None  # [B, U] float32 per pooled matrix, to write rows into
        self._rows: tuple | None = None
        # set by atlas.mining.cuda_graphs.GraphStep on CUDA: the Triton path's statistics, merge, maps and pooled rows run on
        # this stream, beside the forward pass, which waits for it only at the end of the step (`_beside`)
        self.side: torch.cuda.Stream | None = None

    TENSORS = ("values", "index", "argmax", "maps", "count", "mean", "m2", "min", "max", "positive",
               "nonfinite", "nonfinite_maps", "hist", "range_exp")

    def update(self, index: torch.Tensor, out: torch.Tensor, reduced: Reduced | None = None) -> None:
        """index: [B] image indices (unique, ascending not needed); out: the module's output (consumed at once).
        ``reduced``: `spatial_reduce` of ``out`` against the current k-th entries, if the caller made it already
        (atlas.mining.fused_tails, where the block's last kernel reduces its output as it writes it)."""
        a = self.info.canonical(out).detach()  # [B, U, h, w], the output's own dtype and strides
        red = reduced if reduced is not None else spatial_reduce(a, index, self.values[:, -1], self.index[:, -1],
                                                                  self.cfg.rank_by, self.backend)
        score = red.peak if self.cfg.rank_by == "max" else red.mean  # [B, U] float32
        with self._beside(out, index, *red):
            self._update_stats(score, self.backend)
            self._count_nonfinite(red.mean)
            if choose(self.backend, a) == "triton":  # fixed shapes throughout: nothing waits for the GPU
                source = torch.empty(self.values.shape, dtype=torch.int32, device=self.values.device)  # [U, K]
                into = Merged(self.values, self.index, self.argmax, source) if self.inplace else None
                merged = merge_topk(score, index, red.arg, self.values, self.index, self.argmax, "triton", into)
                self._set("maps", gather_maps(a, merged.source, self.maps, self.map_hw, "triton",
                                              self.maps if self.inplace else None))
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

    @contextmanager
    def _beside(self, *used: torch.Tensor) -> Iterator[None]:
        """Run the body on `side` (if set): it starts when the work queued so far (the layer's output, its
        reduction) is done, and the tensors it reads that the forward pass allocated are marked as used there, so
        that the allocator does not hand their memory to later layers before the body has read them (during a
        CUDA graph's capture, it keeps them until the capture ends).  The caller of the forward pass joins the
        stream back (`atlas.mining.cuda_graphs.GraphStep` does, after each forward)."""
        side = self.side
        if side is None:
            yield
            return
        side.wait_stream(torch.cuda.current_stream(side.device))
        for t in used:
            t.record_stream(side)
        with torch.cuda.stream(side):
            yield

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
        self._count_nonfinite(spatial_mean)
        self._write_pooled(index, spatial_mean, out)

    def _count_nonfinite(self, spatial_mean: torch.Tensor) -> None:
        """Count the images [B] whose map holds a non-finite value (inf or NaN: the spatial mean is then non-finite
        too, as it is when the sum of finite values overflows float32)."""
        counts = (~torch.isfinite(spatial_mean)).sum(0)  # [U]
        if self.inplace:
            self.nonfinite_maps.add_(counts)
        else:
            self.nonfinite_maps = self.nonfinite_maps + counts

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
        """The state's tensor ``name`` becomes ``value``: with ``inplace`` by a copy, unless the kernel wrote it there
        (the Triton kernels take the state's tensors as outputs)."""
        if not self.inplace:
            setattr(self, name, value)
        elif value is not getattr(self, name):
            getattr(self, name).copy_(value)

    def _write_pooled(self, index: torch.Tensor, spatial_mean: torch.Tensor, out: torch.Tensor) -> None:
        """The batch's rows of the pooled matrices ([B, U] float32 on the device), queued to the host at once or,
        with ``defer_rows``, kept until `queue_rows`."""
        rows = [(m, t) for m, t in ((self.pooled_cls, lambda: self.info.cls(out)),
                                    (self.pooled, lambda: spatial_mean)) if m is not None]
        if not rows:
            return
        values = [t().detach() for _, t in rows]  # [B, U] each
        values = [b.copy_(v) for b, v in zip(self.row_buffers, values)] if self.row_buffers is not None else \
            [v.to(torch.float32, copy=True) for v in values]
        self._rows = (index, values, [m for m, _ in rows])
        if not self.defer_rows:
            self.queue_rows()

    def new_row_buffers(self, batch: int) -> list[torch.Tensor]:
        """[batch, U] float32 buffers, one per pooled matrix kept, for `row_buffers` (atlas.mining.cuda_graphs)."""
        n = sum(m is not None for m in (self.pooled_cls, self.pooled))
        return [torch.empty(batch, self.info.units, dtype=torch.float32, device=self.values.device)
                for _ in range(n)]

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
            event.record(torch.cuda.current_stream(index.device))
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
        state = (self.count, self.mean, self.m2, self.nonfinite, self.positive, self.min, self.max, self.hist,
                 self.range_exp)
        into = Stats(*state) if self.inplace and choose(backend, score) == "triton" else None
        st = score_stats(score, *state, MIN_RANGE_EXP, backend, into)
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
