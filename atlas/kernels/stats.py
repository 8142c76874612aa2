"""Per-unit running statistics of a batch of scores for `atlas.mining`: counts, min, max, the adaptive histogram, and
the mean and M2 of the finite scores (Welford's merge, float64).

Contract of `score_stats(score, count, mean, m2, nonfinite, positive, vmin, vmax, hist, range_exp, min_range_exp)`,
for scores [B, U] float32 and the running state of U units, returns a `Stats` of new tensors:

- count [U] int64, mean and m2 [U] float64: the running count, mean and sum of squared deviations of the finite
  scores, the batch's (mean_b, m2_b, two passes in float64) merged by Chan et al.'s formula
  mean + (mean_b - mean) * n_b / n, m2 + m2_b + (mean_b - mean)**2 * n_a * n_b / n;
- nonfinite, positive [U] int64: the running counts plus the batch's non-finite and positive finite scores;
- min, max [U] float32: running min and max over finite scores;
- range_exp [U] int64, hist [U, bins] int64: R = 2**range_exp is the smallest power of two above every |score|
  seen (at least 2**min_range_exp); when R grows by 2**g, bin i of the old histogram moves to
  floor((i - bins/2) / 2**g) + bins/2, then each finite score s of the batch adds one to bin
  clamp(floor(s / (R / (bins/2))) + bins/2, 0, bins - 1), computed in float64, so that the result equals a
  histogram made in one go.

The kernel (one program per block of units, looping over the batch) makes all of it in one launch, where the
reference takes some sixty small torch operations; counts, min, max and histogram are exact (integers, min, max,
and the same float64 divisions), so they agree bit for bit; mean and m2 add their float64 sums in another order
than torch, so they agree to float64 rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import choose, copy_into, jit, next_pow2, outputs

tl = None  # triton.language, set by atlas.kernels.jit when the kernel is first launched


class Stats(NamedTuple):
    count: torch.Tensor  # [U] int64
    mean: torch.Tensor  # [U] float64
    m2: torch.Tensor  # [U] float64
    nonfinite: torch.Tensor  # [U] int64
    positive: torch.Tensor  # [U] int64
    min: torch.Tensor  # [U] float32
    max: torch.Tensor  # [U] float32
    hist: torch.Tensor  # [U, bins] int64
    range_exp: torch.Tensor  # [U] int64


def score_stats(score: torch.Tensor, count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor,
                nonfinite: torch.Tensor, positive: torch.Tensor, vmin: torch.Tensor, vmax: torch.Tensor,
                hist: torch.Tensor, range_exp: torch.Tensor, min_range_exp: int, backend: str | None = None,
                out: Stats | None = None) -> Stats:
    """See the module docstring.  score: [B, U] float32; the state tensors are [U] (hist [U, bins]).  ``out``: a
    Stats of row-major tensors to write the result into (they may be the state's own: an in-place update)."""
    if score.dim() != 2 or hist.shape[0] != score.shape[1] or hist.shape[1] % 2:
        raise ValueError(f"expected scores [B, U] and a histogram [U, even bins], got {tuple(score.shape)} and "
                         f"{tuple(hist.shape)}")
    if choose(backend, score) == "triton":
        return score_stats_triton(score, count, mean, m2, nonfinite, positive, vmin, vmax, hist, range_exp,
                                  min_range_exp, out=out)
    st = score_stats_torch(score, count, mean, m2, nonfinite, positive, vmin, vmax, hist, range_exp, min_range_exp)
    return st if out is None else copy_into(out, st, "score_stats")


def batch_moments(s: torch.Tensor, finite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n_b [U] int64, mean_b, m2_b [U] float64) of one batch's scores s [U, B] float64 where ``finite``."""
    n_b = finite.sum(1)
    mean_b = torch.where(finite, s, 0.0).sum(1) / n_b.clamp(min=1).double()
    m2_b = (torch.where(finite, s - mean_b[:, None], 0.0) ** 2).sum(1)
    return n_b, mean_b, m2_b


def fold_moments(count: torch.Tensor, mean: torch.Tensor, m2: torch.Tensor, n_b: torch.Tensor, mean_b: torch.Tensor,
                 m2_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan et al.'s merge of running (count, mean, M2) [U] with a batch's (`batch_moments`)."""
    n = count + n_b
    delta = mean_b - mean
    frac = n_b.double() / n.clamp(min=1).double()  # float64: int / int would give float32
    return n, mean + delta * frac, m2 + m2_b + delta**2 * count * frac


def score_stats_torch(score, count, mean, m2, nonfinite, positive, vmin, vmax, hist, range_exp,
                      min_range_exp) -> Stats:
    """The reference (what atlas.mining has always computed)."""
    s = score.t().double()  # [U, B]
    finite = torch.isfinite(s)
    n_b, mean_b, m2_b = batch_moments(s, finite)
    n, mean, m2 = fold_moments(count, mean, m2, n_b, mean_b, m2_b)
    sf = score.t().float()
    vmin = torch.minimum(vmin, torch.where(finite, sf, float("inf")).amin(1))
    vmax = torch.maximum(vmax, torch.where(finite, sf, float("-inf")).amax(1))
    bins = hist.shape[1]
    half = bins // 2
    peak = torch.where(finite, s.abs(), 0.0).amax(1)  # [U]
    need = torch.where(peak > 0, torch.floor(torch.log2(peak.clamp(min=1e-300))).long() + 1,
                       torch.full_like(range_exp, min_range_exp))
    # log2 can round: make sure 2**need > peak exactly
    need = need + (torch.ldexp(torch.ones_like(peak), need) <= peak).long()
    grow = (need - range_exp).clamp(min=0)
    # merge even where nothing grows (a no-op there): asking the GPU whether anything grew would wait for it
    old = torch.arange(bins, device=s.device) - half  # bin offsets
    div = torch.ldexp(torch.ones_like(peak), grow)[:, None]  # [U, 1]
    target = torch.floor(old[None, :] / div).long() + half
    merged = torch.zeros_like(hist)
    merged.scatter_add_(1, target, hist)
    range_exp = range_exp + grow
    width = torch.ldexp(torch.ones_like(peak), range_exp)[:, None] / half  # [U, 1]
    b = (torch.floor(torch.where(finite, s, 0.0) / width).long() + half).clamp(0, bins - 1)
    merged.scatter_add_(1, b, finite.long())
    return Stats(n, mean, m2, nonfinite + (~finite).sum(1), positive + (finite & (s > 0)).sum(1), vmin, vmax,
                 merged, range_exp)


def _stats_kernel(score_ptr, cnt_ptr, mean_ptr, m2_ptr, nonf_ptr, pos_ptr, min_ptr, max_ptr, hist_ptr, range_ptr,
                  cnt_out, mean_out, m2_out, nonf_out, pos_out, min_out, max_out, hist_out, range_out,
                  B, U, MIN_EXP, BINS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
                  BLOCK_BINS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_C: tl.constexpr):
    """Program j: units j*BLOCK_U.., all of the batch.  Pass 1 counts, sums and finds min, max and max |s|; then the
    old histogram is copied into hist_out, or widened there by integer atomic adds (exact in any order) where the
    range grows; pass 2 sums the squared deviations from the batch mean and pass 3 adds the batch's bin counts."""
    offs_u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)
    mask_u = offs_u < U
    out_u = offs_u.to(tl.int64)
    # the old state, all read before the barrier below: the outputs may be the state's own tensors
    old_exp = tl.load(range_ptr + out_u, mask=mask_u, other=0)
    n_a = tl.load(cnt_ptr + out_u, mask=mask_u, other=0)
    mean_a = tl.load(mean_ptr + out_u, mask=mask_u, other=0.0)
    m2_a = tl.load(m2_ptr + out_u, mask=mask_u, other=0.0)
    nonf_a = tl.load(nonf_ptr + out_u, mask=mask_u, other=0)
    pos_a = tl.load(pos_ptr + out_u, mask=mask_u, other=0)
    min_a = tl.load(min_ptr + out_u, mask=mask_u, other=0.0)
    max_a = tl.load(max_ptr + out_u, mask=mask_u, other=0.0)
    rows = tl.arange(0, BLOCK_B)
    n_fin = tl.zeros([BLOCK_U], tl.int64)
    n_pos = tl.zeros([BLOCK_U], tl.int64)
    n_non = tl.zeros([BLOCK_U], tl.int64)
    lo = tl.full([BLOCK_U], float("inf"), tl.float32)
    hi = tl.full([BLOCK_U], float("-inf"), tl.float32)
    peak = tl.zeros([BLOCK_U], tl.float32)
    total = tl.zeros([BLOCK_U], tl.float64)
    for start in range(0, B, BLOCK_B):
        m = ((start + rows)[:, None] < B) & mask_u[None, :]
        s = tl.load(score_ptr + (start + rows)[:, None].to(tl.int64) * U + offs_u[None, :], mask=m, other=0.0)
        fin = m & (s == s) & (tl.abs(s) != float("inf"))
        n_fin += tl.sum(fin.to(tl.int64), axis=0)
        total += tl.sum(tl.where(fin, s.to(tl.float64), 0.0), axis=0)
        n_non += tl.sum((m & ~fin).to(tl.int64), axis=0)
        n_pos += tl.sum((fin & (s > 0)).to(tl.int64), axis=0)
        lo = tl.minimum(lo, tl.min(tl.where(fin, s, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(fin, s, float("-inf")), axis=0))
        peak = tl.maximum(peak, tl.max(tl.where(fin, tl.abs(s), 0.0), axis=0))
    # 2**need: the smallest power of two above peak; for float32 peak = 1.f * 2**E, need = E + 1
    expo = ((peak.to(tl.int32, bitcast=True) >> 23) & 255) - 126
    need = tl.where(peak > 0, expo, MIN_EXP).to(tl.int64)
    grow = tl.maximum(need - old_exp, 0)
    new_exp = old_exp + grow
    half = BINS // 2
    cols = tl.arange(0, BLOCK_BINS)
    m_bins = mask_u[:, None] & (cols[None, :] < BINS)
    h = tl.load(hist_ptr + out_u[:, None] * BINS + cols[None, :], mask=m_bins, other=0)
    tl.debug_barrier()  # every read of the old state is done before the outputs are written
    row_hist = hist_out + out_u[:, None] * BINS  # [BLOCK_U, 1] row starts
    # a unit whose range stays keeps its histogram as is; one whose range grows starts from zeros ...
    tl.store(row_hist + cols[None, :], tl.where((grow == 0)[:, None], h, 0), mask=m_bins)
    tl.debug_barrier()  # the stores land before the adds below
    # ... and its old bin i moves to floor((i - half) / 2**grow) + half (an arithmetic shift floors)
    target = ((cols[None, :] - half).to(tl.int64) >> tl.minimum(grow, 62)[:, None]) + half
    tl.atomic_add(row_hist + target, h, mask=m_bins & (h != 0) & (grow > 0)[:, None])
    width = ((new_exp + 1023) << 52).to(tl.float64, bitcast=True) / half  # [BLOCK_U], as torch.ldexp(1, e) / half
    mean_b = total / tl.maximum(n_fin, 1).to(tl.float64)
    m2_b = tl.zeros([BLOCK_U], tl.float64)
    for start in range(0, B, BLOCK_B):  # pass 2: the squared deviations from the batch mean
        m = ((start + rows)[:, None] < B) & mask_u[None, :]
        s = tl.load(score_ptr + (start + rows)[:, None].to(tl.int64) * U + offs_u[None, :], mask=m, other=0.0)
        fin = m & (s == s) & (tl.abs(s) != float("inf"))
        dev = tl.where(fin, s.to(tl.float64) - mean_b[None, :], 0.0)
        m2_b += tl.sum(dev * dev, axis=0)
    # pass 3: bin the batch.  Up to 2 * BLOCK_C bins: BLOCK_C bins at a time, counts summed over rows in registers
    # (a one-hot [rows, units, bins] per step), then one atomic add per (unit, bin) instead of one per score on a
    # few hot bins; with more bins (each would cost a pass over the batch), one atomic add per score
    few = tl.arange(0, BLOCK_H)
    bins = tl.arange(0, BLOCK_C)
    if BINS <= 2 * BLOCK_C:
        for c0 in range(0, BINS, BLOCK_C):
            counts = tl.zeros([BLOCK_U, BLOCK_C], tl.int32)
            for start in range(0, B, BLOCK_H):
                m = ((start + few)[:, None] < B) & mask_u[None, :]
                s = tl.load(score_ptr + (start + few)[:, None].to(tl.int64) * U + offs_u[None, :], mask=m, other=0.0)
                fin = m & (s == s) & (tl.abs(s) != float("inf"))
                q = tl.floor(tl.where(fin, s.to(tl.float64), 0.0) / width[None, :])
                b = tl.minimum(tl.maximum(q.to(tl.int64) + half, 0), BINS - 1) - c0  # [BLOCK_H, BLOCK_U]
                b = tl.where(fin, b, -1)
                hit = b[:, :, None] == bins[None, None, :]  # [BLOCK_H, BLOCK_U, BLOCK_C]
                counts += tl.sum(hit.to(tl.int32), axis=0)
            m_c = mask_u[:, None] & ((c0 + bins)[None, :] < BINS) & (counts != 0)
            tl.atomic_add(row_hist + c0 + bins[None, :], counts.to(tl.int64), mask=m_c)
    else:
        for start in range(0, B, BLOCK_B):
            m = ((start + rows)[:, None] < B) & mask_u[None, :]
            s = tl.load(score_ptr + (start + rows)[:, None].to(tl.int64) * U + offs_u[None, :], mask=m, other=0.0)
            fin = m & (s == s) & (tl.abs(s) != float("inf"))
            q = tl.floor(tl.where(fin, s.to(tl.float64), 0.0) / width[None, :])
            b = tl.minimum(tl.maximum(q.to(tl.int64) + half, 0), BINS - 1)  # [BLOCK_B, BLOCK_U]
            tl.atomic_add(hist_out + out_u[None, :] * BINS + b, tl.full([BLOCK_B, BLOCK_U], 1, tl.int64), mask=fin)
    n = n_a + n_fin
    delta = mean_b - mean_a
    frac = n_fin.to(tl.float64) / tl.maximum(n, 1).to(tl.float64)
    tl.store(cnt_out + out_u, n, mask=mask_u)
    tl.store(mean_out + out_u, mean_a + delta * frac, mask=mask_u)
    tl.store(m2_out + out_u, m2_a + m2_b + delta * delta * n_a.to(tl.float64) * frac, mask=mask_u)
    tl.store(nonf_out + out_u, nonf_a + n_non, mask=mask_u)
    tl.store(pos_out + out_u, pos_a + n_pos, mask=mask_u)
    tl.store(min_out + out_u, tl.minimum(min_a, lo), mask=mask_u)
    tl.store(max_out + out_u, tl.maximum(max_a, hi), mask=mask_u)
    tl.store(range_out + out_u, new_exp, mask=mask_u)


def score_stats_triton(score, count, mean, m2, nonfinite, positive, vmin, vmax, hist, range_exp,
                       min_range_exp, block_u: int = 2, block_b: int = 256, warps: int = 2, block_h: int = 32,
                       out: Stats | None = None) -> Stats:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).  ``out``: tensors to write the result
    into, which may be the state's own (updated in place; atlas.mining.cuda_graphs)."""
    b, u = score.shape
    bins = hist.shape[1]
    score = score.float().contiguous()
    state = [t.contiguous() for t in (count.long(), mean.double(), m2.double(), nonfinite, positive, vmin.float(),
                                      vmax.float(), hist, range_exp)]
    out = Stats(*(torch.empty_like(t) for t in state)) if out is None else outputs(out, state, score.device,
                                                                                     "score_stats")
    if u == 0:
        return out
    block_u = min(block_u, next_pow2(u))  # few units per program and the whole batch per step: short programs
    jit(_stats_kernel)[((u + block_u - 1) // block_u,)](
        score, *state, *out,
        b, u, min_range_exp, BINS=bins, BLOCK_B=min(block_b, next_pow2(max(b, 1))), BLOCK_U=block_u,
        BLOCK_BINS=next_pow2(bins), BLOCK_H=min(block_h, next_pow2(max(b, 1))), BLOCK_C=min(64, next_pow2(bins)),
        num_warps=warps)
    return out
