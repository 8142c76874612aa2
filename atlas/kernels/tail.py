"""The tail of a ResNet Bottleneck, ``relu(bn3(y) + identity)``, in one pass, optionally fused with mining's
per-(image, unit) reduction of its output (`atlas.mining.fused_tails`).

Why: mining a ResNet block reads its output once more after the block wrote it (`spatial_reduce`: 2.8 GB per
batch of 256 for every block of RN50, 1.5 ms on an H100), and the block's tail is itself three passes over that
tensor (batch norm, ``out += identity``, ReLU).  Doing all of it where the output is produced removes the extra
read and two of the three passes.

Contract of `bottleneck_tail(y, identity, bn, reduce=None, backend=None)`, for y [B, C, h, w] (the last
convolution's output: float16, bfloat16 or float32, any strides), identity [B, C, h, w] (the block's shortcut,
the same dtypes, any strides) and ``bn`` an nn.BatchNorm2d over C in eval mode:

- out [B, C, h, w], y's dtype, y's memory format: ``relu(bn(y) + identity)`` as the block computes it: the batch
  norm ``weight * (y - running_mean) * invstd + bias`` in float32, invstd = 1 / sqrt(running_var + eps),
  rounded to y's dtype; the sum in float32, rounded to y's dtype; then ReLU (NaN stays NaN, -0.0 stays -0.0,
  as torch.relu).  The kernel's float32 arithmetic may differ from torch's batch norm in the last bit of
  float32, so where that lands on a rounding boundary of y's dtype, ``out`` differs from the reference by a
  rounding of the batch norm's output (relative to it, not to the sum, which may cancel; tests/test_fused_graphs.py
  bounds it and the share of elements: under 1% in bfloat16 at real sizes).
- with ``reduce = (image_index [B] int64, thr_value [U] float32, thr_index [U] int64, rank_by)``: also
  `atlas.kernels.mining.spatial_reduce` of ``out``, exactly as that function computes it from ``out``'s stored
  values (peak, arg and flag bit for bit, mean to float32 rounding); else None.
"""

from __future__ import annotations

import torch
from torch import nn

from . import choose, jit
from .mining import Reduced, reduce_blocks, check_reduce_args, finish_reduce, flat_strides, fold_start, fold_value, spatial_reduce_torch

tl = None  # triton.language, set by atlas.kernels.jit when the kernel is first launched

DTYPES = (torch.float16, torch.bfloat16, torch.float32)  # the kernel computes in float32

ReduceArgs = tuple  # (image_index [B] int64, thr_value [U] float32, thr_index [U] int64, rank_by)


def bottleneck_tail(y: torch.Tensor, identity: torch.Tensor, bn: nn.BatchNorm2d, reduce: ReduceArgs | None = None,
                    backend: str | None = None) -> tuple[torch.Tensor, Reduced | None]:
    """See the module docstring.  y, identity: [B, C, h, w] -> (out [B, C, h, w], Reduced or None)."""
    _check_tail(y, identity, bn)
    if reduce is not None:
        check_reduce_args(y, *reduce)
    if choose(backend, y) == "triton":
        return bottleneck_tail_triton(y, identity, bn, reduce)
    return bottleneck_tail_torch(y, identity, bn, reduce)


def _check_tail(y: torch.Tensor, identity: torch.Tensor, bn: nn.BatchNorm2d) -> None:
    if y.dim() != 4 or identity.shape != y.shape:
        raise ValueError(f"bottleneck_tail: y {tuple(y.shape)} and identity {tuple(identity.shape)} must be the "
                         "same [batch, channels, h, w] shape")
    if y.dtype not in DTYPES or identity.dtype not in DTYPES:
        raise ValueError(f"bottleneck_tail: y and identity must be float16, bfloat16 or float32 (the kernel "
                         f"computes in float32), got {y.dtype}, {identity.dtype}; run the block's own forward instead")
    if bn.num_features != y.shape[1]:
        raise ValueError(f"bottleneck_tail: the batch norm is over {bn.num_features} channels, y has {y.shape[1]}; "
                         "pass the block's own bn3")
    if bn.training or bn.running_mean is None:
        raise ValueError(f"bottleneck_tail needs bn3 in eval mode with running statistics (training={bn.training}, "
                         f"running statistics: {bn.running_mean is not None}); call model.eval()")


def bottleneck_tail_torch(y: torch.Tensor, identity: torch.Tensor, bn: nn.BatchNorm2d,
                          reduce: ReduceArgs | None = None) -> tuple[torch.Tensor, Reduced | None]:
    """The reference: the block's own ops (open_clip's Bottleneck.forward), then spatial_reduce_torch."""
    out = bn(y)
    out += identity
    out = torch.relu_(out)
    return out, spatial_reduce_torch(out, *reduce) if reduce is not None else None


def _round(x, dtype: tl.constexpr):
    """float32 x rounded to ``dtype`` (to nearest, ties to even), as float32.  bfloat16 by hand: Triton's
    interpreter truncates float32 -> bfloat16, the GPU rounds; the bit trick gives the GPU's result on both."""
    if dtype == tl.bfloat16:
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        r = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    else:
        r = x.to(dtype).to(tl.float32)
    return r


def _tail_kernel(y_ptr, id_ptr, w_ptr, b_ptr, m_ptr, inv_ptr, out_ptr, img_ptr, tv_ptr, ti_ptr,
                 peak_ptr, arg_ptr, mean_ptr, flag_ptr, U, HW, ys_b, ys_u, ys_hw, is_b, is_u, is_hw,
                 os_b, os_u, os_hw, s_tv, s_ti,
                 REDUCE: tl.constexpr, RANK_MEAN: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_HW: tl.constexpr):
    """Program (b, j): units j*BLOCK_U.. of image b, the map in chunks of BLOCK_HW: load y and identity, write the
    block's output and, with REDUCE, fold the stored values into per-lane max / first NaN / sum and finish them
    (the helpers of mining._reduce_kernel)."""
    b = tl.program_id(0)
    offs_u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    mask_u = offs_u < U
    lane = tl.arange(0, BLOCK_HW)
    u64 = offs_u[:, None].to(tl.int64)
    y_base = y_ptr + b.to(tl.int64) * ys_b + u64 * ys_u
    i_base = id_ptr + b.to(tl.int64) * is_b + u64 * is_u
    o_base = out_ptr + b.to(tl.int64) * os_b + u64 * os_u
    w = tl.load(w_ptr + offs_u, mask=mask_u, other=0.0)[:, None]
    bias = tl.load(b_ptr + offs_u, mask=mask_u, other=0.0)[:, None]
    mu = tl.load(m_ptr + offs_u, mask=mask_u, other=0.0)[:, None]
    inv = tl.load(inv_ptr + offs_u, mask=mask_u, other=0.0)[:, None]
    best, best_i, first_nan, total = fold_start(BLOCK_U, BLOCK_HW)
    dtype = out_ptr.dtype.element_ty
    for start in range(0, HW, BLOCK_HW):
        hw = start + lane[None, :]  # [1, BLOCK_HW]
        m = mask_u[:, None] & (hw < HW)
        hw64 = hw.to(tl.int64)
        y = tl.load(y_base + hw64 * ys_hw, mask=m, other=0.0).to(tl.float32)
        idn = tl.load(i_base + hw64 * is_hw, mask=m, other=0.0).to(tl.float32)
        bn = _round(w * (y - mu) * inv + bias, dtype)  # bn3's output, in y's dtype
        v = _round(bn + idn, dtype)  # out += identity
        v = tl.where(v < 0, 0.0, v)  # ReLU: NaN and -0.0 pass, as torch.relu
        tl.store(o_base + hw64 * os_hw, v.to(dtype), mask=m)  # exact: v is a value of dtype
        if REDUCE:
            best, best_i, first_nan, total = fold_value(v, hw, m, best, best_i, first_nan, total)
    if REDUCE:
        finish_reduce(best, best_i, first_nan, total, b, offs_u, mask_u, U, HW, img_ptr, tv_ptr, ti_ptr, s_tv, s_ti,
                peak_ptr, arg_ptr, mean_ptr, flag_ptr, RANK_MEAN)


def bn_params(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, ...]:
    """(weight, bias, running_mean, invstd) as float32 [C] tensors: what the kernel reads."""
    c, dev = bn.num_features, bn.running_mean.device
    f32 = lambda t, fill: (t.detach().float() if t is not None else torch.full((c,), fill, device=dev)).contiguous()
    invstd = torch.rsqrt(bn.running_var.detach().float() + bn.eps)
    return f32(bn.weight, 1.0), f32(bn.bias, 0.0), f32(bn.running_mean, 0.0), invstd.contiguous()


def bottleneck_tail_triton(y: torch.Tensor, identity: torch.Tensor, bn: nn.BatchNorm2d,
                           reduce: ReduceArgs | None = None, params: tuple[torch.Tensor, ...] | None = None,
                           tile: int | None = None, long: int | None = None,
                           warps: int | None = None) -> tuple[torch.Tensor, Reduced | None]:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1).  ``params``: `bn_params(bn)`, if the
    caller keeps them (atlas.mining.fused_tails computes them once per run).  Tiling: by default the fastest of eleven on RN50's 16
    blocks on an H100 (`bench/mining_kernels.py --only tail`): 1024/128/2 warps with the reduction, 2048/128/4 warps
    without it."""
    default = (1024, 128, 2) if reduce is not None else (2048, 128, 4)
    tile, long, warps = (d if v is None else v for v, d in zip((tile, long, warps), default))
    b, u, h, w = y.shape
    if flat_strides(y) is None:
        y = y.contiguous()
    if flat_strides(identity) is None:
        identity = identity.contiguous()
    out = torch.empty_like(y)  # y's memory format
    if flat_strides(out) is None:
        out = torch.empty_like(y, memory_format=torch.contiguous_format)
    params = bn_params(bn) if params is None else params
    f32 = dict(dtype=torch.float32, device=y.device)
    if reduce is None:
        image_index = ti = torch.empty(1, dtype=torch.int64, device=y.device)  # unread
        tv = torch.empty(1, **f32)  # unread
        peak = mean = torch.empty(0, **f32)
        arg = torch.empty(0, dtype=torch.int32, device=y.device)
        flag = torch.empty(0, dtype=torch.bool, device=y.device)
        rank_by = "max"
    else:
        image_index, tv, ti, rank_by = reduce
        image_index = image_index.to(torch.int64).contiguous()
        tv, ti = tv.to(torch.float32), ti.to(torch.int64)
        peak, mean = torch.empty(b, u, **f32), torch.empty(b, u, **f32)
        arg = torch.empty(b, u, dtype=torch.int32, device=y.device)
        flag = torch.empty(b, u, dtype=torch.bool, device=y.device)
    if b * u * h * w:
        ys, is_, os_ = flat_strides(y), flat_strides(identity), flat_strides(out)
        bu, bhw = reduce_blocks(u, h * w, ys[1], ys[2], tile, long)
        jit(_tail_kernel, helpers=("fold_value", "fold_start", "finish_reduce", "_round"))[(b, (u + bu - 1) // bu)](
            y, identity, *params, out, image_index, tv, ti, peak, arg, mean, flag, u, h * w, *ys, *is_, *os_,
            tv.stride(0), ti.stride(0), REDUCE=reduce is not None, RANK_MEAN=rank_by == "mean", BLOCK_U=bu,
            BLOCK_HW=bhw, num_warps=warps)
    return out, Reduced(peak, arg, mean, flag) if reduce is not None else None
