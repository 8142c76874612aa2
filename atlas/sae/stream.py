"""Activations for SAE training as a stream of row blocks, and the shuffle buffer that training draws batches from,
so that memory stays bounded however many activations a run uses (10M x 2,560 float32 is 102 GB).

Sources: `image_blocks` (a layer's map at every position, the model run over a source's images as mining runs it)
and `array_blocks` (a saved .npy buffer, read through a memory map).  Each yields (rows [m, d] float32, image of each
row [m] int64) in order; `split` sends the rows of held-out images to a bounded evaluation set and the rest on.

`ShuffleBuffer` keeps up to ``capacity`` rows on the training device.  Batches are drawn without replacement in a
random order; when the order is used up, the rows already drawn are replaced by the stream's next rows and a new
order is drawn over the whole buffer (the way SAELens and saev mix a stream).  Once the stream is exhausted the
buffer is reshuffled and drawn again (epochs over what it holds).  When every row fits (the stream ends during the
first fill), this is plain epoch shuffling over the whole set: `fit` on a tensor is this with one block.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import torch

from .train import SaeError

Blocks = Iterator[tuple[torch.Tensor, torch.Tensor]]  # (rows [m, d] float32, image of each row [m] int64)


def image_blocks(model, source, layer: str, n_images: int, batch: int = 64, workers: int = 0,
                 bf16: bool = False) -> Blocks:
    """The layer's canonical map at every position of each of the first ``n_images`` of ``source``: one block per
    image batch, rows [B * h * w, d] float32 on the model's device (position-major within an image).  ``bf16``: the
    tower under bfloat16 autocast (as mining runs it on a GPU), the rows still float32."""
    from ..capture import hooked
    from ..mining.batches import batches

    info = model.layer(layer)
    caught: dict[str, torch.Tensor] = {}

    def keep(_name: str, out: torch.Tensor) -> None:
        caught["a"] = info.canonical(out).detach()

    dev = model.device.type
    with hooked(model.clip, [info.name], keep):
        for b in batches(model, source, 0, n_images, batch, workers):
            if not b.good:
                continue
            # (no grad mode or autocast held across the yield: they are per thread and would leak into training)
            with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
                model.clip.encode_image(b.pixels)
            a = caught.pop("a").float()  # [B, d, h, w]
            yield (a.permute(0, 2, 3, 1).reshape(-1, a.shape[1]),
                   b.index.to(a.device).repeat_interleave(a.shape[2] * a.shape[3]))


def array_blocks(path: str | os.PathLike, d: int, block: int = 65_536) -> tuple[int, Blocks]:
    """(rows, blocks): a saved activation buffer (.npy [n, d], float32 or float16) read in blocks of ``block`` rows
    through a memory map (the file is never loaded whole); row i counts as image i."""
    try:
        a = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise SaeError(f"--buffer {path} is not a readable .npy file ({e}); save one with numpy.save") from e
    if a.ndim != 2 or a.shape[1] != d:
        raise SaeError(f"--buffer {path} holds an array of shape {a.shape}; the layer has {d} units: "
                       f"expected [n, {d}]")
    if not np.issubdtype(a.dtype, np.floating):
        raise SaeError(f"--buffer {path} holds {a.dtype} values; save the activations as float32 or float16")

    def blocks() -> Blocks:
        for i in range(0, a.shape[0], block):
            rows = torch.from_numpy(np.ascontiguousarray(a[i:i + block], dtype=np.float32))
            yield rows, torch.arange(i, i + rows.shape[0])

    return int(a.shape[0]), blocks()


def split(blocks: Blocks, held: torch.Tensor, max_held_rows: int) -> tuple[Iterator[torch.Tensor], list]:
    """(training rows [m, d] per block, a list that fills with the held-out images' rows as the stream is read).
    ``held``: image indices held out, sorted; their rows (at most ``max_held_rows``, the first ones read) are kept
    on the CPU for the figures, the rest of theirs dropped."""
    kept: list[torch.Tensor] = []

    def train() -> Iterator[torch.Tensor]:
        n_kept = 0
        for rows, owner in blocks:
            out = torch.isin(owner, held.to(owner.device))
            if out.any():
                if n_kept < max_held_rows:
                    h = rows[out][:max_held_rows - n_kept].cpu()
                    kept.append(h)
                    n_kept += h.shape[0]
                rows = rows[~out]
            if rows.shape[0]:
                yield rows

    return train(), kept


def check_finite(rows: torch.Tensor, layer: str, seen: int) -> None:
    if not torch.isfinite(rows).all():
        bad = int((~torch.isfinite(rows)).any(1).sum())
        raise SaeError(f"{bad} activation rows of layer {layer} (in rows {seen}..{seen + rows.shape[0] - 1} of the "
                          "stream) hold NaN or inf; the model produces them on some images: train on other images "
                          "(--data), or check the weights")


class ShuffleBuffer:
    """Up to ``capacity`` rows [capacity, d] float32 on ``device``, drawn in random batches (see the module)."""

    def __init__(self, blocks: Iterator[torch.Tensor], capacity: int, device: torch.device, generator: torch.Generator,
                 layer: str = "?"):
        self.blocks, self.capacity, self.device, self.g, self.layer = blocks, int(capacity), device, generator, layer
        self.rows: torch.Tensor | None = None  # [n, d], n <= capacity
        self.n = 0
        self.streamed = 0  # rows taken from the stream so far
        self.exhausted = False
        self.pending: torch.Tensor | None = None  # the part of a block that did not fit yet
        self.order: torch.Tensor | None = None
        self.pos = 0
        self.refills = 0
        self._fill_first()

    def _next_block(self) -> torch.Tensor | None:
        if self.pending is not None:
            b, self.pending = self.pending, None
            return b
        for b in self.blocks:
            check_finite(b, self.layer, self.streamed)
            self.streamed += b.shape[0]
            return b.to(self.device, torch.float32)
        self.exhausted = True
        return None

    def _fill_first(self) -> None:
        parts, n = [], 0
        while n < self.capacity:
            b = self._next_block()
            if b is None:
                break
            take = min(b.shape[0], self.capacity - n)
            parts.append(b[:take])
            if take < b.shape[0]:
                self.pending = b[take:]
            n += take
        if self.pending is None and not self.exhausted:
            self.pending = self._next_block()  # (None: the stream ended with the fill)
        if not parts:
            return
        self.rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        if len(parts) == 1 and not self.exhausted:
            self.rows = self.rows.clone()  # refills write into it: never into the caller's tensor
        self.n = self.rows.shape[0]

    def _refill(self, slots: torch.Tensor) -> None:
        """Write the stream's next rows into ``slots`` (rows already drawn), as many as it has."""
        i = 0
        while i < len(slots):
            b = self._next_block()
            if b is None:
                return
            take = min(b.shape[0], len(slots) - i)
            self.rows[slots[i:i + take].to(self.device)] = b[:take]
            if take < b.shape[0]:
                self.pending = b[take:]
            i += take
        self.refills += 1

    def take(self, batch: int) -> torch.Tensor:
        """[batch, d]: the next rows of the current order (a new order drawn, after a refill, when it runs out)."""
        if self.order is None or self.pos + batch > self.n:
            if self.order is not None and not self.exhausted:
                self._refill(self.order[:self.pos])
            self.order, self.pos = torch.randperm(self.n, generator=self.g).to(self.device), 0
        idx = self.order[self.pos:self.pos + batch]
        self.pos += batch
        return self.rows[idx]
