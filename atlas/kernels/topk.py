"""The running top-k merge of `atlas.mining`, without a host synchronization: a batch's scores against each unit's
kept top-k, and the small maps of the entries that enter.

Contract of `merge_topk(score, image_index, arg, values, index, argmax)`: for a batch's scores [B, U] float32 (with
their images' indices [B] int64, unique and below 2**32, and argmax locations [B, U] int32) and each unit's kept
top-k (values [U, K] float32 as `topk_value` stores them, image indices [U, K] int64 with -1 for an empty slot,
argmax [U, K] int32), returns a `Merged` of new [U, K] tensors: the K first of the kept entries and the batch's in
the top-k order (value descending, then image index ascending, empty slots last; scores stored as `topk_value`
makes them), with ``source`` [U, K] int32 saying where each entry came from: ``j < K`` the kept slot j,
``K + r`` row r of the batch.

Contract of `gather_maps(a, source, maps, map_hw)`: the new [U, K, mh*mw] maps: kept slot ``source`` for kept
entries, and for entries from the batch the map a[r, u] (a: [B, U, h, w]) average-pooled to ``map_hw`` as
`torch.nn.functional.adaptive_avg_pool2d` pools it (float32, windows [floor(i*h/mh), ceil((i+1)*h/mh))).

The references are torch: a stable two-key sort over the K + B candidates of every unit, and a gather of the U*K
selected maps pooled by torch.  The kernels do the same work sparsely but with fixed shapes, so nothing waits for
the GPU: the merge kernel (a block of units per program) skips every chunk of the batch in which no score beats a
unit's k-th entry and otherwise counts every entry's new rank at once, comparing one int64 key per entry (the
value's order-preserving bits, then the complement of the image index); the pooling kernel (a program per unit)
copies the kept maps and pools only the new entries' maps.  Both agree with the references bit for bit, except that
the pooled sums may differ from torch's in the last bit where torch adds in another order (tests/test_kernels.py).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import choose, copy_into, jit, next_pow2, outputs
from .mining import topk_value

tl = None  # triton.language, set by atlas.kernels.jit when the kernel is first launched


class Merged(NamedTuple):
    values: torch.Tensor  # [U, K] float32
    index: torch.Tensor  # [U, K] int64
    argmax: torch.Tensor  # [U, K] int32
    source: torch.Tensor  # [U, K] int32: j < K kept slot j, K + r batch row r


def merge_topk(score: torch.Tensor, image_index: torch.Tensor, arg: torch.Tensor, values: torch.Tensor,
               index: torch.Tensor, argmax: torch.Tensor, backend: str | None = None,
               out: Merged | None = None) -> Merged:
    """See the module docstring.  score, arg: [B, U]; image_index: [B]; values, index, argmax: [U, K].  ``out``: a
    Merged of row-major tensors to write the result into (values, index, argmax may be the inputs themselves)."""
    b, u = score.shape
    if tuple(image_index.shape) != (b,) or tuple(arg.shape) != (b, u) or values.shape[0] != u \
            or index.shape != values.shape or argmax.shape != values.shape:
        raise ValueError(f"merge_topk: scores {tuple(score.shape)} need image_index [{b}], arg [{b}, {u}] and a "
                         f"[{u}, K] top-k; got {tuple(image_index.shape)}, {tuple(arg.shape)}, "
                         f"{tuple(values.shape)}, {tuple(index.shape)}, {tuple(argmax.shape)}")
    if choose(backend, score) == "triton":
        return merge_topk_triton(score, image_index, arg, values, index, argmax, out=out)
    merged = merge_topk_torch(score, image_index, arg, values, index, argmax)
    return merged if out is None else copy_into(out, merged, "merge_topk")


def merge_topk_torch(score, image_index, arg, values, index, argmax) -> Merged:
    """The reference: every unit's K + B candidates sorted by image index, then stably by value."""
    u, k = values.shape
    b = score.shape[0]
    cand_v = torch.cat([values, topk_value(score.t())], 1)  # [U, K+B]
    cand_i = torch.cat([index, image_index.view(1, b).expand(u, b)], 1)  # [U, K+B]
    key_i = torch.where(cand_i < 0, torch.iinfo(torch.int64).max, cand_i)  # empty slots last
    by_index = torch.sort(key_i, dim=1, stable=True).indices
    by_value = torch.sort(cand_v.gather(1, by_index), dim=1, descending=True, stable=True).indices
    sel = by_index.gather(1, by_value)[:, :k]  # [U, K] positions among the candidates
    cand_a = torch.cat([argmax, arg.t()], 1)  # [U, K+B]
    return Merged(cand_v.gather(1, sel), cand_i.gather(1, sel), cand_a.gather(1, sel), sel.to(torch.int32))


def _key(v, i):
    """int64 keys in the top-k order: value (NaN-free; 0.0 and -0.0 equal, as torch compares them), then the
    smaller image index; an empty slot (index < 0) is the smallest key."""
    v = tl.where(v == 0.0, 0.0, v)
    bits = v.to(tl.int32, bitcast=True)
    order = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float's value
    key = (order.to(tl.int64) << 32) + (4294967296 - 1 - i)
    return tl.where(i < 0, -9223372036854775807 - 1, key)


def _merge_kernel(score_ptr, img_ptr, arg_ptr, kv_ptr, ki_ptr, ka_ptr, ov_ptr, oi_ptr, oa_ptr, os_ptr,
                  B, U, K, s_sb, s_su, s_ab, s_au,
                  K_P2: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_B: tl.constexpr):
    """Program j: units j*BLOCK_U..  Their top-k is copied to the outputs, then the batch streams by in chunks of
    BLOCK_B rows.  A chunk in which no score beats some unit's k-th key is skipped; otherwise every entry's new
    rank is counted at once (kept entry j: j + the chunk's candidates above it; candidate c: the kept entries
    and the candidates above it; keys are unique), entries ranked below K are stored there, and the new top-k is
    read back for the next chunk."""
    lowest = -9223372036854775807 - 1
    offs_u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    mask_u = offs_u < U
    cols = tl.arange(0, K_P2)
    valid = mask_u[:, None] & (cols[None, :] < K)  # [BLOCK_U, K_P2]
    row0 = offs_u[:, None].to(tl.int64) * K  # [BLOCK_U, 1]
    top_v = tl.load(kv_ptr + row0 + cols[None, :], mask=valid, other=float("-inf"))
    top_i = tl.load(ki_ptr + row0 + cols[None, :], mask=valid, other=-1)
    tl.store(ov_ptr + row0 + cols[None, :], top_v, mask=valid)
    tl.store(oi_ptr + row0 + cols[None, :], top_i, mask=valid)
    tl.store(oa_ptr + row0 + cols[None, :], tl.load(ka_ptr + row0 + cols[None, :], mask=valid, other=0), mask=valid)
    tl.store(os_ptr + row0 + cols[None, :], tl.zeros([BLOCK_U, K_P2], tl.int32) + cols[None, :], mask=valid)
    tl.debug_barrier()  # the copies land before any thread reads them back below
    top_k = tl.where(valid, _key(top_v, top_i), 9223372036854775807)  # padding never counts as "above"
    rows = tl.arange(0, BLOCK_B)
    for start in range(0, B, BLOCK_B):
        r = start + rows
        m = mask_u[:, None] & (r[None, :] < B)  # [BLOCK_U, BLOCK_B]
        s = tl.load(score_ptr + r[None, :].to(tl.int64) * s_sb + offs_u[:, None] * s_su, mask=m, other=0.0)
        bv = tl.where(s == float("-inf"), -3.4028234663852886e38, s)  # as topk_value
        bv = tl.where((s != s) | (s == float("inf")), float("-inf"), bv)
        bi = tl.load(img_ptr + r, mask=r < B, other=0)
        bk = _key(bv, bi[None, :] + tl.zeros([BLOCK_U, BLOCK_B], tl.int64))
        kth = tl.min(top_k, axis=1)  # [BLOCK_U] the k-th key (the smallest kept)
        cand = m & (bk > kth[:, None])
        if tl.max(cand.to(tl.int32)) > 0:
            ck = tl.where(cand, bk, lowest)  # [BLOCK_U, BLOCK_B]
            # kept entry j moves down by the candidates above it
            pos_k = cols[None, :] + tl.sum((ck[:, None, :] > top_k[:, :, None]).to(tl.int32), axis=2)
            # candidate c: the kept entries above it plus the candidates above it
            pos_b = tl.sum((top_k[:, None, :] > bk[:, :, None]).to(tl.int32) * (cols[None, None, :] < K), axis=2) \
                + tl.sum((ck[:, None, :] > bk[:, :, None]).to(tl.int32), axis=2)
            top_a = tl.load(oa_ptr + row0 + cols[None, :], mask=valid, other=0)
            top_s = tl.load(os_ptr + row0 + cols[None, :], mask=valid, other=0)
            tl.debug_barrier()  # every read of the old top-k is done before it is overwritten
            keep = valid & (pos_k < K)
            tl.store(ov_ptr + row0 + pos_k, top_v, mask=keep)
            tl.store(oi_ptr + row0 + pos_k, top_i, mask=keep)
            tl.store(oa_ptr + row0 + pos_k, top_a, mask=keep)
            tl.store(os_ptr + row0 + pos_k, top_s, mask=keep)
            enter = cand & (pos_b < K)
            ba = tl.load(arg_ptr + r[None, :].to(tl.int64) * s_ab + offs_u[:, None] * s_au, mask=enter, other=0)
            tl.store(ov_ptr + row0 + pos_b, bv, mask=enter)
            tl.store(oi_ptr + row0 + pos_b, bi[None, :] + tl.zeros([BLOCK_U, BLOCK_B], tl.int64), mask=enter)
            tl.store(oa_ptr + row0 + pos_b, ba, mask=enter)
            tl.store(os_ptr + row0 + pos_b, K + r[None, :] + tl.zeros([BLOCK_U, BLOCK_B], tl.int32), mask=enter)
            tl.debug_barrier()  # the new top-k is in place before it is read back
            top_v = tl.load(ov_ptr + row0 + cols[None, :], mask=valid, other=float("-inf"))
            top_i = tl.load(oi_ptr + row0 + cols[None, :], mask=valid, other=-1)
            top_k = tl.where(valid, _key(top_v, top_i), 9223372036854775807)


def merge_topk_triton(score, image_index, arg, values, index, argmax, block_u: int = 1, block_b: int = 32,
                      warps: int = 1, out: Merged | None = None) -> Merged:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).  ``out`` may hold values, index and
    argmax themselves: the kernel copies a unit's top-k to the outputs before it reads anything back."""
    u, k = values.shape
    b = score.shape[0]
    dev = values.device  # row-major [U, K], as the kernel writes them, whatever the inputs' strides
    empty = lambda d: lambda dt: torch.empty(u, k, dtype=dt, device=d)
    dtypes = (torch.float32, torch.int64, torch.int32, torch.int32)
    out = Merged(*map(empty(dev), dtypes)) if out is None else \
        outputs(out, list(map(empty("meta"), dtypes)), dev, "merge_topk")
    if u * k == 0:
        return out
    kv, ki, ka = (t.contiguous() for t in (values.float(), index.long(), argmax.int()))
    score, arg = score.float(), arg.int()
    jit(_merge_kernel, helpers=("_key",))[((u + block_u - 1) // block_u,)](
        score, image_index.long().contiguous(), arg, kv, ki, ka, *out, b, u, k, score.stride(0), score.stride(1),
        arg.stride(0), arg.stride(1), K_P2=next_pow2(k), BLOCK_U=block_u, BLOCK_B=min(block_b, next_pow2(max(b, 1))),
        num_warps=warps)
    return out


def gather_maps(a: torch.Tensor, source: torch.Tensor, maps: torch.Tensor, map_hw: tuple[int, int],
                backend: str | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """See the module docstring.  a: [B, U, h, w]; source: [U, K] int32; maps: [U, K, mh*mw] float32.  ``out``: a
    row-major tensor to write the maps into (it may be ``maps`` itself)."""
    u, k = source.shape
    if a.dim() != 4 or a.shape[1] != u or tuple(maps.shape) != (u, k, map_hw[0] * map_hw[1]):
        raise ValueError(f"gather_maps: activations {tuple(a.shape)}, source {tuple(source.shape)} and maps "
                         f"{tuple(maps.shape)} do not fit maps of {map_hw}")
    if choose(backend, a) == "triton":
        return gather_maps_triton(a, source, maps, map_hw, out)
    new = gather_maps_torch(a, source, maps, map_hw)
    return new if out is None else copy_into([out], [new], "gather_maps")[0]


def gather_maps_torch(a, source, maps, map_hw) -> torch.Tensor:
    """The reference: the kept maps gathered, and the U*K maps a[r, u] pooled by torch where the entry is new."""
    u, k = source.shape
    src = source.long()
    kept = maps.gather(1, src.clamp(max=k - 1)[..., None].expand(u, k, maps.shape[2]))  # [U, K, mh*mw]
    rows = (src - k).clamp(min=0)  # [U, K] batch rows
    picked = a[rows, torch.arange(u, device=a.device)[:, None]].float()  # [U, K, h, w]
    pooled = F.adaptive_avg_pool2d(picked, map_hw).reshape(u, k, -1)
    return torch.where((src >= k)[..., None], pooled, kept)


def _pool_kernel(x_ptr, src_ptr, maps_ptr, out_ptr, K, H, W, MH, MW, s_b, s_u, s_h, s_w,
                 K_P2: tl.constexpr, CELLS: tl.constexpr, WIN_H: tl.constexpr, WIN_W: tl.constexpr,
                 INPLACE: tl.constexpr):
    """Program u: the K slots of unit u.  Kept entries copy their old maps (one gather; in place, only those that
    moved); new ones pool a[r, u] for all their cells at once, adding each window row by row (as torch's adaptive
    pooling kernels do): the window loop's loads are masked to the new slots, so a step without entrants reads
    nothing, and no load waits on another."""
    u = tl.program_id(0)
    slots = tl.arange(0, K_P2)
    cell = tl.arange(0, CELLS)
    mcell = cell < MH * MW
    src = tl.load(src_ptr + u * K + slots, mask=slots < K, other=0)  # [K_P2]
    kept = (slots < K) & (src < K)
    moved = kept & (src != slots) if INPLACE else kept  # in place, a map that stays in its slot is already there
    m = moved[:, None] & mcell[None, :]
    row = u.to(tl.int64) * K
    old = tl.load(maps_ptr + (row + src[:, None]) * MH * MW + cell[None, :], mask=m, other=0.0)
    tl.debug_barrier()  # out may be maps itself: every kept map is read before any is moved
    tl.store(out_ptr + (row + slots[:, None]) * MH * MW + cell[None, :], old, mask=m)
    new = (slots < K) & (src >= K)  # [K_P2] slots taken by batch row src - K
    oh = cell // MW
    ow = cell % MW
    h0 = (oh * H) // MH
    h1 = ((oh + 1) * H + MH - 1) // MH
    w0 = (ow * W) // MW
    w1 = ((ow + 1) * W + MW - 1) // MW
    count = ((h1 - h0) * (w1 - w0)).to(tl.float32)
    base = x_ptr + (tl.where(new, src - K, 0).to(tl.int64) * s_b + u.to(tl.int64) * s_u)[:, None]  # [K_P2, 1]
    total = tl.zeros([K_P2, CELLS], tl.float32)
    for dh in range(0, WIN_H):
        for dw in range(0, WIN_W):
            hh = h0 + dh
            ww = w0 + dw
            mm = new[:, None] & (mcell & (hh < h1) & (ww < w1))[None, :]
            total += tl.load(base + (hh * s_h + ww * s_w)[None, :], mask=mm, other=0.0).to(tl.float32)
    tl.store(out_ptr + (row + slots[:, None]) * MH * MW + cell[None, :], total / count[None, :],
             mask=new[:, None] & mcell[None, :])


def gather_maps_triton(a, source, maps, map_hw, out: torch.Tensor | None = None) -> torch.Tensor:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1); ``out`` may be ``maps`` itself."""
    u, k = source.shape
    h, w = a.shape[2:]
    mh, mw = map_hw
    if out is None:
        out = torch.empty(u, k, mh * mw, dtype=torch.float32, device=maps.device)
    else:
        outputs([out], [torch.empty(u, k, mh * mw, device="meta")], maps.device, "gather_maps")
    if u * k == 0:
        return out
    win = lambda n, m: max(-(-((i + 1) * n) // m) - (i * n) // m for i in range(m))  # largest window
    jit(_pool_kernel)[(u,)](
        a, source.int().contiguous(), maps.float().contiguous(), out, k, h, w, mh, mw, *a.stride(),
        K_P2=next_pow2(k), CELLS=next_pow2(mh * mw), WIN_H=win(h, mh), WIN_W=win(w, mw), INPLACE=out is maps,
        num_warps=min(8, max(2, next_pow2(k) * next_pow2(mh * mw) // 512)))  # ~16 sums per thread at most
    return out
