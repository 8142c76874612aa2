"""Softmax cross-entropy and its gradient with respect to the logits, one pass per row, for the probe solver.

Contract of `softmax_xent(logits, y, scale, grad_dtype, grad=True)`, for logits [n, C] and labels y [n] in 0..C-1:

- loss [n]: logsumexp(logits_i) - logits_i[y_i]  (float32; float64 for float64 logits);
- R [n, C] in ``grad_dtype``: (softmax(logits_i) - onehot(y_i)) * scale, or None when ``grad`` is False;
- with ``split`` (a half-precision ``grad_dtype``), R as two [n, C] arrays of that dtype instead, (hi, lo): hi = R
  rounded, lo = (R - hi) rounded, R's float32 value to 16 significant bits for bfloat16, made in the same pass.

The kernel (float32, bfloat16 or float16 logits; float32 math) keeps a row on chip: one read of the logits,
one write of R.  Rows of up to 8192 classes are held whole; longer rows take two passes over column blocks
(an online softmax: running max and rescaled sum, then the write).  The labels stay integers: no [n, C]
one-hot matrix is ever made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import choose, jit, next_pow2

tl = None  # triton.language, set by atlas.kernels.jit when the kernel is first launched

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_SINGLE = 8192  # longest row held whole in one block


def softmax_xent(logits: torch.Tensor, y: torch.Tensor, scale: float = 1.0, grad_dtype: torch.dtype | None = None,
                 grad: bool = True, backend: str | None = None, split: bool = False) -> tuple[torch.Tensor, object]:
    """(loss [n], R [n, C], (hi, lo) with ``split``, or None); see the module docstring.  grad_dtype defaults to
    the logits' dtype."""
    if logits.dim() != 2 or y.shape != logits.shape[:1]:
        raise ValueError(f"expected logits [n, C] and labels [n], got {tuple(logits.shape)} and {tuple(y.shape)}")
    if y.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    grad_dtype = grad_dtype or logits.dtype
    if split and grad_dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"split gives R as a half-precision head and remainder; grad_dtype is {grad_dtype}")
    if logits.dtype in KERNEL_DTYPES and choose(backend, logits) == "triton":
        return softmax_xent_triton(logits, y, scale, grad_dtype, grad, split)
    return softmax_xent_torch(logits, y, scale, grad_dtype, grad, split)


def split_half(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x (float32 or float64) as a half-precision ``dtype`` head and remainder: hi + lo = x to 16 significant bits
    for bfloat16."""
    hi = x.to(dtype)
    return hi, (x - hi.to(x.dtype)).to(dtype)


def softmax_xent_torch(logits: torch.Tensor, y: torch.Tensor, scale: float = 1.0,
                       grad_dtype: torch.dtype | None = None, grad: bool = True, split: bool = False
                       ) -> tuple[torch.Tensor, object]:
    """The reference: log_softmax in float32 (float64 for float64 logits)."""
    z = logits if logits.dtype == torch.float64 else logits.float()  # [n, C]
    y = y.long()
    if not grad:
        return F.cross_entropy(z, y, reduction="none"), None
    logp = torch.log_softmax(z, dim=1)  # [n, C]
    loss = -logp.gather(1, y[:, None])[:, 0]  # [n]
    R = logp.exp_()
    R.scatter_add_(1, y[:, None], torch.full_like(loss[:, None], -1.0))
    R.mul_(scale)
    if split:
        return loss, split_half(R, grad_dtype)
    return loss, R.to(grad_dtype or logits.dtype)


def _xent_kernel(z_ptr, y_ptr, loss_ptr, r_ptr, lo_ptr, C, s_z, s_r, scale,
                 BLOCK_C: tl.constexpr, SINGLE: tl.constexpr, GRAD: tl.constexpr, SPLIT: tl.constexpr):
    """Program i: row i.  SINGLE: the row fits one block and stays in registers; else two passes.  SPLIT: R's
    rounding to r_ptr's dtype there, and the remainder's rounding to lo_ptr (same strides)."""
    row = tl.program_id(0).to(tl.int64)
    z_row = z_ptr + row * s_z
    r_row = r_ptr + row * s_r
    lo_row = lo_ptr + row * s_r
    label = tl.load(y_ptr + row)
    cols = tl.arange(0, BLOCK_C)
    z_y = tl.load(z_row + label).to(tl.float32)
    if SINGLE:
        m = cols < C
        z = tl.load(z_row + cols, mask=m, other=float("-inf")).to(tl.float32)
        mx = tl.max(z, axis=0)
        e = tl.exp(z - mx)  # masked lanes: exp(-inf) = 0
        total = tl.sum(e, axis=0)
        tl.store(loss_ptr + row, mx + tl.log(total) - z_y)
        if GRAD:
            r = (e / total - tl.where(cols == label, 1.0, 0.0)) * scale
            hi = r.to(r_ptr.dtype.element_ty)
            tl.store(r_row + cols, hi, mask=m)
            if SPLIT:
                tl.store(lo_row + cols, (r - hi.to(tl.float32)).to(lo_ptr.dtype.element_ty), mask=m)
    else:
        lane_max = tl.full([BLOCK_C], float("-inf"), tl.float32)
        lane_sum = tl.zeros([BLOCK_C], tl.float32)
        for start in range(0, C, BLOCK_C):  # pass 1: per-lane online max and rescaled sum
            m = start + cols < C
            z = tl.load(z_row + start + cols, mask=m, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(lane_max, z)
            safe = tl.where(new_max == float("-inf"), 0.0, new_max)  # no (-inf) - (-inf)
            lane_sum = lane_sum * tl.exp(lane_max - safe) + tl.exp(z - safe)
            lane_max = new_max
        mx = tl.max(lane_max, axis=0)
        total = tl.sum(lane_sum * tl.exp(lane_max - mx), axis=0)
        tl.store(loss_ptr + row, mx + tl.log(total) - z_y)
        if GRAD:
            for start in range(0, C, BLOCK_C):  # pass 2: write the gradient
                m = start + cols < C
                z = tl.load(z_row + start + cols, mask=m, other=float("-inf")).to(tl.float32)
                r = (tl.exp(z - mx) / total - tl.where(start + cols == label, 1.0, 0.0)) * scale
                hi = r.to(r_ptr.dtype.element_ty)
                tl.store(r_row + start + cols, hi, mask=m)
                if SPLIT:
                    tl.store(lo_row + start + cols, (r - hi.to(tl.float32)).to(lo_ptr.dtype.element_ty), mask=m)


def softmax_xent_triton(logits: torch.Tensor, y: torch.Tensor, scale: float = 1.0,
                        grad_dtype: torch.dtype | None = None, grad: bool = True, split: bool = False
                        ) -> tuple[torch.Tensor, object]:
    """The kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    if logits.dtype not in KERNEL_DTYPES:
        raise ValueError(f"the softmax kernel takes {KERNEL_DTYPES} logits, got {logits.dtype}")
    n, c = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    loss = torch.empty(n, dtype=torch.float32, device=logits.device)
    R = torch.empty(n, c, dtype=grad_dtype or logits.dtype, device=logits.device) if grad else None
    lo = torch.empty_like(R) if grad and split else None
    if n == 0:
        return loss, (R, lo) if lo is not None else R
    single = c <= MAX_SINGLE
    block = next_pow2(c) if single else 4096
    warps = 4 if block <= 1024 else 8 if block <= 4096 else 16
    out = R if grad else loss
    jit(_xent_kernel)[(n,)](logits, y.contiguous(), loss, out, lo if lo is not None else out, c, logits.stride(0),
                            R.stride(0) if grad else 0, float(scale),
                            BLOCK_C=block, SINGLE=single, GRAD=grad, SPLIT=lo is not None, num_warps=warps)
    return loss, (R, lo) if lo is not None else R
