"""Triton kernels for atlas's hot loops, each beside a torch reference with the same contract.

- `mining.spatial_reduce`: one pass over a layer's activations [B, U, h, w] -> per (image, unit) spatial max,
  argmax, mean, and whether the score may enter the unit's running top-k (atlas.mining).
- `stats.score_stats`, `topk.merge_topk`, `topk.gather_maps`: the running statistics, top-k and maps of mining
  (atlas.mining.layerstate); they take ``out`` tensors, which may be the state's own (updated in place under CUDA graphs).
- `tail.bottleneck_tail`: a ResNet block's last ops (bn3, + shortcut, ReLU) in one pass, optionally with the
  reduction above fused in (atlas.mining.fused_tails).
- `softmax_ce.softmax_xent`: logits [n, C] and labels [n] -> per-row cross-entropy and its logit gradient,
  one pass with the row on chip (atlas.probes.solver).

Every entry point takes ``backend``: "torch" (the reference), "triton" (the kernel: CUDA tensors, or CPU tensors
when TRITON_INTERPRET=1, Triton's slow interpreter, for tests) or "auto" (the kernel for CUDA tensors when
triton imports, else the reference).  The environment variable ATLAS_KERNELS=torch|triton|auto sets the
default.  atlas imports and runs without triton installed: "auto" then always takes the reference.  triton
itself is imported only when a kernel is first launched; TRITON_INTERPRET must be set before that (Triton
fixes the mode of its own library functions at import), so tests run the interpreter in a subprocess.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Callable

import torch

from ..errors import ConfigError

BACKENDS = ("auto", "torch", "triton")


@lru_cache(maxsize=1)
def _triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except (ImportError, OSError, RuntimeError) as e:  # missing, or an install that cannot load
        return f"{type(e).__name__}: {e}"
    return None


def triton_available() -> bool:
    return _triton_import_error() is None


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: Triton kernels run on the CPU, in numpy."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def choose(backend: str | None, x: torch.Tensor) -> str:
    """Resolve ``backend`` (None: $ATLAS_KERNELS, else "auto") for tensor ``x``: "torch" or "triton"."""
    backend = backend or os.environ.get("ATLAS_KERNELS") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r} "
                         "(check the ATLAS_KERNELS environment variable)")
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if x.is_cuda and triton_available() else "torch"
    if not triton_available():
        raise ConfigError(f"kernel backend 'triton' asked for, but triton does not import "
                           f"({_triton_import_error()}); install triton or use backend 'torch'")
    if not x.is_cuda and not interpreting():
        raise ConfigError(f"kernel backend 'triton' needs CUDA tensors (got a tensor on {x.device}); set "
                           "TRITON_INTERPRET=1 to run the kernel in Triton's CPU interpreter (slow, for tests), "
                           "or use backend 'torch'")
    return "triton"


_JIT: dict[Callable, object] = {}


def jit(fn: Callable, helpers: tuple[str, ...] = ()) -> object:
    """``triton.jit(fn)``, made on first launch: kernels are plain functions written against a module global
    ``tl`` (None until then), so that importing atlas never imports triton.  ``helpers``: names of module-level
    functions the kernel calls; they are replaced by their ``triton.jit`` versions in the module, once."""
    if fn not in _JIT:
        import triton
        import triton.language as tl

        fn.__globals__["tl"] = tl
        for name in helpers:
            helper = fn.__globals__[name]
            if not isinstance(helper, triton.runtime.JITFunction):
                helper.__globals__["tl"] = tl  # a helper may live in another kernel module
                fn.__globals__[name] = triton.jit(helper)
        _JIT[fn] = triton.jit(fn)
    return _JIT[fn]


def outputs(out, like, device: torch.device, what: str):
    """``out`` (tensors to write a kernel's results into) checked against ``like`` (tensors, e.g. on the meta
    device, with the results' shapes and dtypes): same shapes and dtypes, on ``device``, row-major.  They may be the
    kernel's own inputs (an in-place update)."""
    names = getattr(out, "_fields", None) or [f"#{i}" for i in range(len(out))]
    for name, o, t in zip(names, out, like, strict=True):
        if o.shape != t.shape or o.dtype != t.dtype or o.device != device or not o.is_contiguous():
            raise ValueError(f"{what}: output {name} is {tuple(o.shape)} {o.dtype} on {o.device} (contiguous: "
                             f"{o.is_contiguous()}); pass a contiguous {tuple(t.shape)} {t.dtype} tensor on {device} "
                             "(torch.empty of that shape), or no out")
    return out


def copy_into(out, result, what: str):
    """A reference implementation's ``result`` (tensors) written into ``out`` (checked by `outputs`); returns out."""
    for o, t in zip(outputs(out, result, result[0].device, what), result):
        o.copy_(t)
    return out


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()
