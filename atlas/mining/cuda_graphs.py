"""CUDA graphs for the mining step: the image tower's forward with its hooked `LayerState` updates, recorded once
and replayed for every full batch, so the host launches one graph instead of hundreds of kernels.

Why: with the Triton kernels the GPU-side cost of mining every block is small (ViT-B/32: +4% GPU time), but each
hooked layer adds some forty Python-level launches and allocations; at ~20,000 images/s the host cannot issue them
as fast as the GPU runs them (docs/benchmarks.md).  A replay issues them all at once.

How: the first ``warmup`` batches run eagerly (Triton compiles, the allocator and cuDNN settle), then the step is
captured twice, on static input buffers (pixels, and image indices of its own each).  Later batches of the same size
are copied into those buffers and replay the two graphs in turn; a batch of another size (the last one, or one
with unreadable files) runs eagerly.  Graphs replay fixed addresses, so the states update their tensors in place
(`LayerState.inplace`: the Triton kernels take the state's tensors as their ``out``, so no copies are recorded),
each graph writes the pooled rows into buffers of its own (`LayerState.row_buffers`), and host work happens after
the replay: the rows go to the host on a side stream while the other graph runs (`LayerState.defer_rows`,
`queue_rows`).  Each layer's statistics, top-k merge, maps and pooled rows run on a side stream
(`LayerState.side`), beside the later layers' forward: they are short, latency-bound kernels (10-25 us each) that
the convolutions hide; the step joins the side stream back at its end.  The cost is memory: a mined layer's
output stays allocated until the step ends (RN50, every block at batch 256: about 2.8 GB more), where serial updates
let the allocator reuse it; ``overlap=False`` gives it back.  Results are the same as eager mining: the
same kernels run on the same data in the same order per layer (tests/test_kernels.py compares the stores).
If capture fails (an op that waits for the GPU, say), the step warns once and stays eager.
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import torch


class GraphStep:
    """``step(x, index)``: ``forward(x)`` with ``current["index"] = index`` for the hooks, replayed from a CUDA graph
    once ``warmup`` batches of the same shape have run eagerly.  x: [B, 3, S, S] on the GPU; index: [B] int64.

    Two graphs are recorded and replayed in turn, sharing the pixel buffer, each with its own image-index buffer
    and its own buffers for the pooled rows, so that the rows of one step travel to the host on a side stream (the copy engine) while the
    next step computes; a graph waits only for the copies of its own previous turn, two steps back."""

    def __init__(self, forward: Callable[[torch.Tensor], object], current: dict, states: Sequence,
                 batch_size: int | None = None, warmup: int = 2, overlap: bool = True, side_priority: int = 0):
        self.forward, self.current, self.states, self.warmup = forward, current, list(states), warmup
        self.batch_size = batch_size  # record only a batch of this size (None: any)
        self.overlap = overlap and bool(self.states)
        self.side: torch.cuda.Stream | None = None
        self.side_priority = side_priority  # of the side stream (CUDA: lower is higher, -1 the highest on an H100)
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.error: str | None = None
        self.eager = 0
        self.replays = 0
        for st in self.states:
            st.inplace, st.defer_rows = True, True

    def _step(self, x: torch.Tensor) -> None:
        """The forward pass with the states' updates; with ``overlap``, the updates run on a side stream
        (`LayerState.side`) beside the rest of the forward, joined back here at the end."""
        if self.overlap and self.side is None and x.is_cuda:
            self.side = torch.cuda.Stream(x.device, priority=self.side_priority)
            for st in self.states:
                st.side = self.side
        self.forward(x)
        if self.side is not None:
            torch.cuda.current_stream(x.device).wait_stream(self.side)

    def __call__(self, x: torch.Tensor, index: torch.Tensor) -> None:
        if self.graphs and x.shape == self.x.shape and index.shape == self.indexes[0].shape:
            self._replay(x, index)
            return
        self.current["index"] = index
        self._step(x)
        for st in self.states:
            st.queue_rows(index)
        self.eager += 1
        if not self.graphs and self.error is None and self.eager >= self.warmup \
                and self.batch_size in (None, x.shape[0]):
            self._capture(x, index)

    def _replay(self, x: torch.Tensor, index: torch.Tensor) -> None:
        t = self.replays % 2
        stream = torch.cuda.current_stream(x.device)
        if self.copied[t] is not None:
            stream.wait_event(self.copied[t])  # this turn's buffers are free: their last copies to the host are done
        self.x.copy_(x)  # both graphs read it, one after the other on this stream
        self.indexes[t].copy_(index)
        self.graphs[t].replay()
        self.replays += 1
        self.copy_stream.wait_stream(stream)
        with torch.cuda.stream(self.copy_stream):
            for st, rows in zip(self.states, self.rows[t]):
                st._rows = rows  # the recording's row buffers, just refilled by the replay
                st.queue_rows(self.indexes[t])
            self.copied[t] = torch.cuda.Event()
            self.copied[t].record(self.copy_stream)

    def _capture(self, x: torch.Tensor, index: torch.Tensor) -> None:
        """Record the step twice, on static buffers allocated outside the graphs (recording runs nothing); the two
        graphs share one memory pool for their intermediates, which is safe as they run one after the other."""
        torch.cuda.synchronize(x.device)
        self.x = x.clone(memory_format=torch.preserve_format)
        self.indexes = [index.clone() for _ in range(2)]  # per graph: read again by its rows' copies to the host
        self.rows, self.copied = [], [None, None]
        self.copy_stream = torch.cuda.Stream(x.device)
        graphs = []
        try:  # thread_local: the data loader's pinning thread may call CUDA meanwhile, which is harmless
            for t in range(2):
                for st in self.states:
                    st.row_buffers = st.new_row_buffers(x.shape[0])
                graph = torch.cuda.CUDAGraph()
                self.current["index"] = self.indexes[t]
                with torch.cuda.device(x.device), torch.cuda.graph(
                        graph, pool=graphs[0].pool() if graphs else None, stream=torch.cuda.Stream(x.device),
                        capture_error_mode="thread_local"):
                    self._step(self.x)
                graphs.append(graph)
                self.rows.append([st._rows for st in self.states])  # this graph's row buffers (None: none)
                for st in self.states:
                    st._rows = None  # recording ran nothing: no rows to send yet
        except Exception as e:  # noqa: BLE001 -- any failure to record leaves eager mining, which is correct
            self.error = f"{type(e).__name__}: {e}"
            warnings.warn(f"mining runs without CUDA graphs: recording the step failed ({self.error})", stacklevel=3)
            graphs = []
            self.x = self.indexes = self.rows = self.copy_stream = None  # free the static buffers
        finally:
            for st in self.states:
                st.row_buffers, st._rows = None, None
        self.graphs = graphs
