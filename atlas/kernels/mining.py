"""One pass over a layer's activations for `atlas.mining`: per (image, unit) spatial max, argmax, mean, and
whether the image may enter the unit's running top-k.

Contract of `spatial_reduce(a, image_index, thr_value, thr_index, rank_by)`, for a [B, U, h, w] activation
tensor ``a`` (float16, bfloat16, float32 or float64; any strides):

- peak [B, U] float32: max over h*w of float32(a); NaN if the map holds a NaN (as torch.max).
- arg [B, U] int32: flat index (row-major over h, w) of the first NaN if any, else of the first maximum;
  peak is the value found there (so -0.0 and 0.0 are told apart as torch tells them).
- mean [B, U] float32: mean over h*w of float32(a).  The reference is torch's mean; the kernel sums in float32
  in its own order, so the two agree to float32 rounding, not always bit for bit.
- flag [B, U] bool: the image's score (peak, or mean when rank_by == "mean") beats the unit's current k-th
  entry (thr_value [U] float32, thr_index [U] int64; index -1 marks an empty slot) in the top-k order: value
  descending, then image index ascending, empty slots last; values compared as the top-k merge stores them
  (NaN and +inf as -inf, -inf as float32's lowest finite value).  An image whose flag is False cannot enter
  that unit's top-k, so a merge may skip it and still be exact.

The kernel reads ``a`` once in its own dtype, through its strides: contiguous NCHW ([B, U, h*w] in memory),
channels_last ([B, h*w, U]) and the token layers' canonical views ([B, tokens, U] with prefix tokens) all run
without a copy; other layouts whose h and w cannot be merged into one stride are copied first.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import choose, jit, next_pow2

tl = None  # triton.language, set by atlas.kernels.jit when the kernel is first launched

INT64_MAX = torch.iinfo(torch.int64).max
DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Reduced(NamedTuple):
    peak: torch.Tensor  # [B, U] float32
    arg: torch.Tensor  # [B, U] int32
    mean: torch.Tensor  # [B, U] float32
    flag: torch.Tensor  # [B, U] bool


def spatial_reduce(a: torch.Tensor, image_index: torch.Tensor, thr_value: torch.Tensor, thr_index: torch.Tensor,
                   rank_by: str = "max", backend: str | None = None) -> Reduced:
    """See the module docstring.  a: [B, U, h, w]; image_index: [B] int64; thr_value: [U]; thr_index: [U]."""
    check_reduce_args(a, image_index, thr_value, thr_index, rank_by)
    if choose(backend, a) == "triton":
        return spatial_reduce_triton(a, image_index, thr_value, thr_index, rank_by)
    return spatial_reduce_torch(a, image_index, thr_value, thr_index, rank_by)


def check_reduce_args(a, image_index, thr_value, thr_index, rank_by) -> None:
    if a.dim() != 4:
        raise ValueError(f"activations must be [batch, units, h, w], got shape {tuple(a.shape)}")
    b, u, h, w = a.shape
    if h * w == 0:
        raise ValueError(f"activations have an empty spatial map (shape {tuple(a.shape)})")
    if a.dtype not in DTYPES:
        raise ValueError(f"activations must be floating point ({', '.join(map(str, DTYPES))}), got {a.dtype}")
    if tuple(image_index.shape) != (b,) or tuple(thr_value.shape) != (u,) or tuple(thr_index.shape) != (u,):
        raise ValueError(f"for activations {tuple(a.shape)} expected image_index [{b}], thr_value [{u}], "
                         f"thr_index [{u}]; got {tuple(image_index.shape)}, {tuple(thr_value.shape)}, "
                         f"{tuple(thr_index.shape)}")
    if rank_by not in ("max", "mean"):
        raise ValueError(f"rank_by must be 'max' or 'mean', got {rank_by!r}")


def topk_value(score: torch.Tensor) -> torch.Tensor:
    """A score as the top-k merge stores and compares it: NaN and +inf -> -inf, -inf -> float32's lowest."""
    return torch.nan_to_num(score, nan=-math.inf, posinf=-math.inf)


def beats(score: torch.Tensor, image_index: torch.Tensor, thr_value: torch.Tensor,
          thr_index: torch.Tensor) -> torch.Tensor:
    """[B, U] bool: (score, image) comes before the unit's k-th entry in the top-k order (see the contract)."""
    v = topk_value(score)  # [B, U]
    ti = torch.where(thr_index < 0, INT64_MAX, thr_index)  # [U]; empty slots sort last
    return (v > thr_value) | ((v == thr_value) & (image_index[:, None] < ti))


def spatial_reduce_torch(a: torch.Tensor, image_index: torch.Tensor, thr_value: torch.Tensor,
                         thr_index: torch.Tensor, rank_by: str = "max") -> Reduced:
    """The reference: torch's max and mean over the flattened map, exactly as atlas.mining has computed them."""
    b, u = a.shape[:2]
    flat = a.float().reshape(b, u, -1)  # [B, U, h*w]
    peak, arg = flat.max(dim=2)  # [B, U]
    mean = flat.mean(dim=2)  # [B, U]
    flag = beats(peak if rank_by == "max" else mean, image_index, thr_value, thr_index)
    return Reduced(peak, arg.to(torch.int32), mean, flag)


def _fold(base, hw, m, s_hw, best, best_i, first_nan, total):
    """Load one [BLOCK_U, BLOCK_HW] chunk at flat indices ``hw`` and fold it (`fold_value`)."""
    x = tl.load(base + hw.to(tl.int64) * s_hw, mask=m, other=0.0).to(tl.float32)
    return fold_value(x, hw, m, best, best_i, first_nan, total)


def fold_value(x, hw, m, best, best_i, first_nan, total):
    """Fold float32 values x (lanes where m holds) at flat indices ``hw`` into the per-lane running max (a later
    chunk replaces only on >, so the first index wins ties), first NaN and float32 sum."""
    big = 2147483647
    nan = x != x
    xv = tl.where(m & ~nan, x, float("-inf"))
    up = xv > best
    best = tl.where(up, xv, best)
    best_i = tl.where(up, hw, best_i)
    first_nan = tl.minimum(first_nan, tl.where(nan & m, hw, big))
    total += tl.where(m, x, 0.0)  # NaN and inf propagate as in torch's sum
    return best, best_i, first_nan, total


def _reduce_kernel(x_ptr, img_ptr, tv_ptr, ti_ptr, peak_ptr, arg_ptr, mean_ptr, flag_ptr,
                   U, HW, s_b, s_u, s_hw, s_tv, s_ti,
                   RANK_MEAN: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_HW: tl.constexpr, UNROLL: tl.constexpr):
    """Program (b, j): units j*BLOCK_U.. of image b.  Each lane of the [BLOCK_U, BLOCK_HW] tile keeps its own
    running max, first NaN and float32 sum over UNROLL chunks per step (their loads issued together); the lanes
    are combined once, after the loop."""
    b = tl.program_id(0)
    offs_u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    mask_u = offs_u < U
    lane = tl.arange(0, BLOCK_HW)
    base = x_ptr + b.to(tl.int64) * s_b + offs_u[:, None].to(tl.int64) * s_u
    best, best_i, first_nan, total = fold_start(BLOCK_U, BLOCK_HW)
    for start in range(0, HW, BLOCK_HW * UNROLL):
        for part in tl.static_range(UNROLL):
            hw = start + part * BLOCK_HW + lane[None, :]  # [1, BLOCK_HW]
            best, best_i, first_nan, total = _fold(base, hw, mask_u[:, None] & (hw < HW), s_hw, best, best_i,
                                                   first_nan, total)
    finish_reduce(best, best_i, first_nan, total, b, offs_u, mask_u, U, HW, img_ptr, tv_ptr, ti_ptr, s_tv, s_ti,
            peak_ptr, arg_ptr, mean_ptr, flag_ptr, RANK_MEAN)


def finish_reduce(best, best_i, first_nan, total, b, offs_u, mask_u, U, HW, img_ptr, tv_ptr, ti_ptr, s_tv, s_ti,
            peak_ptr, arg_ptr, mean_ptr, flag_ptr, RANK_MEAN: tl.constexpr):
    """Combine the per-lane state of `fold_value` into image b's peak, arg, mean and flag for units offs_u, and
    store them (rows of the [B, U] outputs)."""
    big = 2147483647
    peak = tl.max(best, axis=1)  # [BLOCK_U]
    first = tl.min(tl.where(best == peak[:, None], best_i, big), axis=1)  # first index of the max
    peak = tl.max(tl.where(best_i == first[:, None], best, float("-inf")), axis=1)  # its own value (-0.0 stays)
    nan_at = tl.min(first_nan, axis=1)
    has_nan = nan_at < big
    peak = tl.where(has_nan, float("nan"), peak)
    arg = tl.where(has_nan, nan_at, first)
    mean = tl.sum(total, axis=1) / HW
    score = mean if RANK_MEAN else peak
    v = tl.where(score == float("-inf"), -3.4028234663852886e38, score)  # as topk_value
    v = tl.where((score != score) | (score == float("inf")), float("-inf"), v)
    tv = tl.load(tv_ptr + offs_u * s_tv, mask=mask_u, other=0.0)
    ti = tl.load(ti_ptr + offs_u * s_ti, mask=mask_u, other=0)
    ti = tl.where(ti < 0, 9223372036854775807, ti)  # empty slots sort last
    img = tl.load(img_ptr + b)
    flag = (v > tv) | ((v == tv) & (img < ti))
    out = b.to(tl.int64) * U + offs_u
    tl.store(peak_ptr + out, peak, mask=mask_u)
    tl.store(arg_ptr + out, arg, mask=mask_u)
    tl.store(mean_ptr + out, mean, mask=mask_u)
    tl.store(flag_ptr + out, flag, mask=mask_u)


def fold_start(BLOCK_U: tl.constexpr, BLOCK_HW: tl.constexpr):
    """The per-lane state `fold_value` starts from: max -inf at index 0, no NaN, sum 0."""
    best = tl.full([BLOCK_U, BLOCK_HW], float("-inf"), tl.float32)
    best_i = tl.zeros([BLOCK_U, BLOCK_HW], tl.int32)
    first_nan = tl.full([BLOCK_U, BLOCK_HW], 2147483647, tl.int32)
    total = tl.zeros([BLOCK_U, BLOCK_HW], tl.float32)
    return best, best_i, first_nan, total


def flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """t [B, U, h, w] -> (stride of b, of u, of the flat h*w index) if h and w merge into one stride, else None."""
    h, w = t.shape[2:]
    if w == 1:
        return t.stride(0), t.stride(1), t.stride(2)
    if h == 1 or t.stride(2) == w * t.stride(3):
        return t.stride(0), t.stride(1), t.stride(3)
    return None


def _strides(a: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """a [B, U, h, w] -> (a or a copy, stride of b, of u, of the flat h*w index)."""
    if flat_strides(a) is None:
        a = a.contiguous()  # h and w do not merge into one stride
    return (a, *flat_strides(a))


def reduce_blocks(u: int, hw: int, s_u: int, s_hw: int, tile: int, long: int) -> tuple[int, int]:
    """(BLOCK_U, BLOCK_HW): tiles of ``tile`` elements, ``long`` along the contiguous axis."""
    if s_u == 1 and s_hw != 1:  # units adjacent in memory: channels_last, tokens
        bu = min(long, next_pow2(u))
        bhw = min(next_pow2(hw), max(1, tile // bu))
    else:  # the map is adjacent in memory: NCHW
        bhw = min(max(long, 512), next_pow2(hw))
        bu = min(next_pow2(u), max(1, tile // bhw))
    return bu, bhw


def spatial_reduce_triton(a: torch.Tensor, image_index: torch.Tensor, thr_value: torch.Tensor,
                          thr_index: torch.Tensor, rank_by: str = "max", tile: int = 1024, long: int = 64,
                          warps: int = 2, unroll: int = 1) -> Reduced:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1); tile, long, warps: its tiling
    (bench/mining_kernels.py compares some)."""
    b, u, h, w = a.shape
    a, s_b, s_u, s_hw = _strides(a)
    f32 = dict(dtype=torch.float32, device=a.device)
    peak, mean = torch.empty(b, u, **f32), torch.empty(b, u, **f32)
    arg = torch.empty(b, u, dtype=torch.int32, device=a.device)
    flag = torch.empty(b, u, dtype=torch.bool, device=a.device)
    if b * u == 0:
        return Reduced(peak, arg, mean, flag)
    bu, bhw = reduce_blocks(u, h * w, s_u, s_hw, tile, long)
    grid = (b, (u + bu - 1) // bu)
    tv, ti = thr_value.to(torch.float32), thr_index.to(torch.int64)  # [U] views (a column of the top-k) are fine
    jit(_reduce_kernel, helpers=("_fold", "fold_value", "fold_start", "finish_reduce"))[grid](
        a, image_index.to(torch.int64).contiguous(), tv, ti, peak, arg, mean, flag, u, h * w, s_b, s_u, s_hw,
        tv.stride(0), ti.stride(0), RANK_MEAN=rank_by == "mean", BLOCK_U=bu, BLOCK_HW=bhw, UNROLL=unroll,
        num_warps=warps)
    return Reduced(peak, arg, mean, flag)
