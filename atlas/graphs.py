"""CUDA graphs for the mining step: the image tower's forward with its hooked `LayerState` updates, recorded once
and replayed for every full batch, so the host launches one graph instead of hundreds of kernels.

Why: with the Triton kernels the GPU-side cost of mining every block is small (ViT-B/32: +4% GPU time), but each
hooked layer adds some forty Python-level launches and allocations; at ~20,000 images/s the host cannot issue them
as fast as the GPU runs them (docs/benchmarks.md).  A replay issues them all at once.

How: the first ``warmup`` batches run eagerly (Triton compiles, the allocator and cuDNN settle), then the step is
captured on static input buffers (pixels, image indices).  Every later batch of the same size is copied into those
buffers and replayed; a batch of another size (the last one, or one with unreadable files) runs eagerly.  Graphs
replay fixed addresses, so the states update their tensors in place (`LayerState.inplace`), and host work (the
pooled rows' copies to the memmaps) happens after the replay (`LayerState.defer_rows`, `queue_rows`).  The Triton
kernels write the new state straight into the state's tensors (their ``out`` arguments), so no copies are recorded.  Results are
the same as eager mining: the same kernels run in the same order (tests/test_kernels.py compares the stores).
If capture fails (an op that waits for the GPU, say), the step warns once and stays eager.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch


class GraphStep:
    """``step(x, index)``: ``forward(x)`` with ``current["index"] = index`` for the hooks, replayed from a CUDA graph
    once ``warmup`` batches of the same shape have run eagerly.  x: [B, 3, S, S] on the GPU; index: [B] int64."""

    def __init__(self, forward: Callable[[torch.Tensor], object], current: dict, states: Sequence,
                 batch_size: int | None = None, warmup: int = 2):
        self.forward, self.current, self.states, self.warmup = forward, current, list(states), warmup
        self.batch_size = batch_size  # record only a batch of this size (None: any)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.error: str | None = None
        self.eager = 0
        self.replays = 0
        for st in self.states:
            st.inplace, st.defer_rows = True, True

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> None:
        if self.graph is not None and x.shape == self.x.shape and index.shape == self.index.shape:
            self.x.copy_(x)
            self.index.copy_(index)
            self.graph.replay()
            self.replays += 1
            for st, rows in zip(self.states, self.rows):
                st._rows = rows  # the recording's output buffers, just refilled by the replay
            self._queue(self.index)
            return
        self.current["index"] = index
        self.forward(x)
        self._queue(index)
        self.eager += 1
        if self.graph is None and self.error is None and self.eager >= self.warmup \
                and self.batch_size in (None, x.shape[0]):
            self._capture(x, index)

    def _queue(self, index: torch.Tensor) -> None:
        for st in self.states:
            st.queue_rows(index)

    def _capture(self, x: torch.Tensor, index: torch.Tensor) -> None:
        """Record the step on static copies of this batch's buffers (recording runs nothing)."""
        self.x, self.index = x.clone(memory_format=torch.preserve_format), index.clone()
        torch.cuda.synchronize(x.device)
        graph = torch.cuda.CUDAGraph()
        self.current["index"] = self.index
        try:  # thread_local: the data loader's pinning thread may call CUDA meanwhile, which is harmless
            with torch.cuda.device(x.device), torch.cuda.graph(graph, stream=torch.cuda.Stream(x.device),
                                                                capture_error_mode="thread_local"):
                self.forward(self.x)
        except Exception as e:  # noqa: BLE001 -- any failure to record leaves eager mining, which is correct
            self.error = f"{type(e).__name__}: {e}"
            warnings.warn(f"mining runs without CUDA graphs: recording the step failed ({self.error})", stacklevel=3)
            graph = None
        self.rows = [st._rows for st in self.states]  # the graph's pooled-row buffers (None: no pooled rows)
        for st in self.states:
            st._rows = None  # recording ran nothing: no rows to send yet
        self.graph = graph
