"""Triton kernels against their torch references (atlas.kernels), and the fast mining and probe paths against the
plain ones.

The test_interp_* tests run the kernels on CPU tensors in Triton's interpreter.  Triton must be imported with
TRITON_INTERPRET=1 already set, so they exist only in a process started that way: `test_kernels_in_the_interpreter`
runs this file again in such a subprocess.  The tests named *_gpu run the kernels compiled, on CUDA, with real
sizes (skipped without a GPU)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from atlas.config import MineConfig
from atlas.errors import ConfigError
from atlas.kernels import choose, triton_available
from atlas.kernels.mining import beats, spatial_reduce, spatial_reduce_triton
from atlas.kernels.softmax_ce import softmax_xent
from atlas.kernels.stats import Stats, score_stats
from atlas.kernels.topk import Merged, gather_maps, merge_topk
from atlas.mining.loop import LayerState
from atlas.models import LayerInfo
from probe_problems import sparse_problem

INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"
gpu = pytest.mark.skipif(not (torch.cuda.is_available() and triton_available()), reason="needs CUDA and triton")


def run_in_interpreter(test_file: str) -> None:
    """Run ``test_file``'s test_interp_* tests in a process where triton is imported in interpreter mode."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest",
                        "-k", "test_interp_", test_file], capture_output=True, text=True, env=env, timeout=600,
                       cwd=Path(__file__).parent.parent)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1], r.stdout[-2000:]


if not INTERPRETER:
    @pytest.mark.skipif(not triton_available(), reason="triton is not installed")
    def test_kernels_in_the_interpreter():
        run_in_interpreter(__file__)


def planted(shape, dtype=torch.float32, seed=0, layout="nchw", device="cpu"):
    """[B, U, h, w] activations with NaN, +-inf, ties, signed zeros and constant maps, in a memory layout."""
    g = torch.Generator().manual_seed(seed)
    b, u, h, w = shape
    a = torch.randn(shape, generator=g).round(decimals=1)  # rounding makes ties within maps and across images
    flat = a.view(b, u, h * w)
    flat[0, 0, -1] = math.nan
    if u > 2:
        flat[-1, 1] = -math.inf
        flat[0, 2, 0] = math.inf
    if u > 5 and h * w > 1:
        flat[:, 3] = 0.0
        flat[:, 3, -1] = -0.0
        flat[:, 4] = 1.5  # constant maps: every image ties on every unit's score
        flat[:, 5, 1] = math.nan
    a = a.to(dtype)
    if layout == "channels_last":
        a = a.to(memory_format=torch.channels_last)
    elif layout == "strided":  # h and w do not merge into one stride
        a = torch.cat([a, a], 3)[..., ::2]
    return a.to(device)


def tokens(b, grid, units, prefix=1, dtype=torch.float32, seed=0, device="cpu"):
    """A token layer's output [B, prefix + grid^2, U] and its canonical view [B, U, grid, grid]."""
    g = torch.Generator().manual_seed(seed)
    out = torch.randn(b, prefix + grid * grid, units, generator=g).round(decimals=1).to(dtype).to(device)
    out[0, prefix, 0] = math.nan
    info = LayerInfo("t", "tokens", units, (grid, grid), "nlc", prefix)
    return out, info


def thresholds(a, seed=1):
    """Per-unit k-th values and indices: some empty (-inf, -1), some equal to a score of the batch (ties)."""
    b, u = a.shape[:2]
    g = torch.Generator().manual_seed(seed)
    peak = a.float().flatten(2).amax(2).nan_to_num(nan=-math.inf, posinf=-math.inf).cpu()  # [B, U]
    tv = torch.randn(u, generator=g)
    tv[::3] = -math.inf
    tv[1::3] = peak[torch.randint(0, b, (u,), generator=g)[1::3], torch.arange(u)[1::3]]
    ti = torch.randint(-1, 2 * b, (u,), generator=g)
    ti[::3] = -1
    return tv.to(a.device), ti.to(a.device)


def same_bits(x, y):
    """Equal bit for bit (any NaN equals any NaN); floats compare their bits, so -0.0 differs from 0.0."""
    if x.shape != y.shape or x.dtype != y.dtype:
        return False
    if not x.is_floating_point():
        return torch.equal(x, y)
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[x.dtype]
    return torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(0.0).view(bits), y.nan_to_num(0.0).view(bits))


def check_reduce(a, rank_by, image_index=None):
    image_index = torch.arange(a.shape[0], device=a.device) * 2 if image_index is None else image_index
    tv, ti = thresholds(a)
    ref = spatial_reduce(a, image_index, tv, ti, rank_by, backend="torch")
    ker = spatial_reduce(a, image_index, tv, ti, rank_by, backend="triton")
    assert same_bits(ker.peak, ref.peak)
    assert torch.equal(ker.arg, ref.arg) and ker.arg.dtype == torch.int32
    torch.testing.assert_close(ker.mean, ref.mean, rtol=2e-6, atol=1e-6, equal_nan=True)
    # another tiling, two chunks per step: the same results (max, argmax, flag exact; the sums' order may differ)
    small = spatial_reduce_triton(a, image_index, tv, ti, rank_by, tile=64, long=8, unroll=2)
    assert same_bits(small.peak, ker.peak) and torch.equal(small.arg, ker.arg)
    torch.testing.assert_close(small.mean, ker.mean, rtol=2e-6, atol=1e-6, equal_nan=True)
    score = ker.peak if rank_by == "max" else ker.mean
    assert torch.equal(ker.flag, beats(score, image_index, tv, ti))  # the contract, on the kernel's own score
    if rank_by == "max":
        assert torch.equal(ker.flag, ref.flag)


CASES = {
    "nchw-f32": dict(shape=(5, 37, 7, 9)),
    "channels_last-bf16": dict(shape=(3, 70, 4, 6), dtype=torch.bfloat16, layout="channels_last"),
    "channels_last-f16": dict(shape=(2, 6, 3, 3), dtype=torch.float16, layout="channels_last"),
    "hw1": dict(shape=(4, 33, 1, 1)),
    "b1-bf16": dict(shape=(1, 130, 5, 5), dtype=torch.bfloat16),
    "w1-f64": dict(shape=(2, 9, 5, 1), dtype=torch.float64),
    "strided": dict(shape=(2, 7, 4, 8), layout="strided"),
    "long-map": dict(shape=(2, 3, 40, 40)),
}


@pytest.mark.parametrize("rank_by", ["max", "mean"])
@pytest.mark.parametrize("case", list(CASES))
def test_interp_spatial_reduce_kernel_matches_reference(case, rank_by):
    check_reduce(planted(**CASES[case]), rank_by)


def test_interp_spatial_reduce_kernel_on_token_views():
    out, info = tokens(3, 7, 65)
    check_reduce(info.canonical(out), "max")
    check_reduce(info.canonical(out.bfloat16()), "mean")


def test_spatial_reduce_contract_by_hand():
    a = torch.tensor([[[1.0, 3.0, 3.0, -1.0], [2.0, math.nan, 5.0, math.nan], [-math.inf] * 4]]).view(1, 3, 2, 2)
    red = spatial_reduce(a, torch.tensor([7]), torch.tensor([3.0, -math.inf, -math.inf]),
                         torch.tensor([8, 3, 3]), backend="torch")
    assert red.arg.tolist() == [[1, 1, 0]]  # first maximum; first NaN; all -inf: the first
    assert red.peak[0, 0] == 3.0 and math.isnan(red.peak[0, 1]) and red.peak[0, 2] == -math.inf
    # 3.0 ties the k-th value and image 7 < 8 wins; NaN counts as -inf, which ties, but image 7 > 3 loses; a
    # -inf score counts as float32's lowest finite value and beats -inf
    assert red.flag.tolist() == [[True, False, True]]
    empty = spatial_reduce(a, torch.tensor([7]), torch.full((3,), -math.inf), torch.full((3,), -1), backend="torch")
    assert empty.flag.all()  # anything, even NaN (as -inf), beats an empty slot


def test_kernel_outputs_are_checked():
    score, index, arg, v, i, a = merge_case(4, 3, 2)
    with pytest.raises(ValueError, match=r"merge_topk: output values is \(3, 2\) torch.float64"):
        merge_topk(score, index, arg, v, i, a, backend="torch", out=Merged(v.double(), i, a, a.clone()))
    maps = torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="gather_maps: .*contiguous: False"):
        gather_maps(torch.zeros(4, 3, 2, 2), torch.zeros(3, 2, dtype=torch.int32), maps, (2, 2), backend="torch",
                    out=maps.transpose(0, 1).contiguous().transpose(0, 1))


@pytest.mark.parametrize("n,c,dtype", [(7, 5, torch.float32), (9, 1000, torch.bfloat16), (3, 1, torch.float32),
                                       (5, 300, torch.float16)])
def test_interp_softmax_kernel_matches_reference(n, c, dtype):
    g = torch.Generator().manual_seed(c)
    z = (torch.randn(n, c, generator=g) * 6).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    for grad_dtype in (torch.float32, torch.bfloat16):
        l_ref, r_ref = softmax_xent(z, y, 0.25, grad_dtype, backend="torch")
        l_ker, r_ker = softmax_xent(z, y, 0.25, grad_dtype, backend="triton")
        torch.testing.assert_close(l_ker, l_ref, rtol=1e-6, atol=1e-5)
        assert r_ker.dtype == grad_dtype
        torch.testing.assert_close(r_ker.float(), r_ref.float(), rtol=1e-2 if grad_dtype == torch.bfloat16 else 1e-5,
                                   atol=1e-7)
    l_only, none = softmax_xent(z, y, grad=False, backend="triton")
    assert none is None and torch.allclose(l_only, l_ref, rtol=1e-6, atol=1e-5)
    r32 = softmax_xent(z, y, 0.25, torch.float32, backend="torch")[1]  # the split: R to 16 significant bits
    for backend in ("torch", "triton"):
        _, (hi, lo) = softmax_xent(z, y, 0.25, torch.bfloat16, backend=backend, split=True)
        assert hi.dtype == lo.dtype == torch.bfloat16
        torch.testing.assert_close(hi.float() + lo.float(), r32, rtol=2 ** -15, atol=1e-12)
        assert (lo.float().abs() <= hi.float().abs() * 2 ** -7).all()  # hi is R rounded: lo within its ulp
    with pytest.raises(ValueError, match="split gives R as a half-precision"):
        softmax_xent(z, y, grad_dtype=torch.float32, split=True)


def test_interp_softmax_kernel_two_pass_for_long_rows(monkeypatch):
    import atlas.kernels.softmax_ce as sce

    monkeypatch.setattr(sce, "MAX_SINGLE", 256)  # rows longer than this take the online two-pass loop
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 1000, generator=g) * 4
    z[0, :500] = -math.inf  # a first block with nothing in it
    y = torch.randint(500, 1000, (6,), generator=g)
    l_ref, r_ref = softmax_xent(z, y, 0.5, backend="torch")
    l_ker, r_ker = softmax_xent(z, y, 0.5, backend="triton")
    torch.testing.assert_close(l_ker, l_ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(r_ker, r_ref, rtol=1e-5, atol=1e-7)
    _, (hi, lo) = softmax_xent(z, y, 0.5, torch.bfloat16, backend="triton", split=True)
    # the bf16 pair keeps the kernel's float32 residual to 2^-15 of it; the kernel's own float32 residual is within
    # 1e-5 of the reference's (the line above): together up to 2^-15 + 1e-5 (an unseeded run once measured 3.09e-5)
    torch.testing.assert_close(hi.float() + lo.float(), r_ref, rtol=2 ** -15 + 1e-5, atol=1e-12)


def check_stats(score, bins=16, device="cpu"):
    """Both backends from the same running state, over a few batches: counts, min, max and histogram equal bit for
    bit; the float64 mean and M2 (sums in another order) to rounding."""
    u = score.shape[1]
    z = dict(device=device)
    state = (torch.zeros(u, dtype=torch.int64, **z), torch.zeros(u, dtype=torch.float64, **z),
             torch.zeros(u, dtype=torch.float64, **z), torch.zeros(u, dtype=torch.int64, **z),
             torch.zeros(u, dtype=torch.int64, **z), torch.full((u,), math.inf, **z), torch.full((u,), -math.inf, **z),
             torch.zeros(u, bins, dtype=torch.int64, **z), torch.full((u,), -20, **z))
    for batch in (score * 1e-7, score, score * 64, score[:1]):  # the range grows, then a batch of one
        ref = score_stats(batch, *state, -20, backend="torch")
        ker = score_stats(batch, *state, -20, backend="triton")
        own = [t.clone() for t in state]  # in place: the state's tensors as the outputs (races: GPU tests only)
        assert score_stats(batch, *own, -20, backend="triton", out=Stats(*own)).count is own[0]
        for name, x, y, z in zip(ref._fields, ker, ref, own):
            if name in ("mean", "m2"):
                torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12 * float(y.abs().max()), msg=name)
            else:
                assert same_bits(x, y), name
            assert same_bits(z, x), name
        state = ref
    assert state.hist.sum() == (torch.isfinite(score).sum() * 3 + torch.isfinite(score[:1]).sum())
    fin = torch.isfinite(score)
    n = fin.sum(0)
    assert torch.equal(state.count, n * 3 + fin[0])
    # the running mean is the mean of all finite scores seen (float64, compared to rounding)
    s = torch.where(fin, score.double(), 0.0)
    expect = (s.sum(0) * (1e-7 + 1 + 64) + s[0]) / (n * 3 + fin[0]).clamp(min=1)
    torch.testing.assert_close(state.mean, expect, rtol=1e-9, atol=1e-12)


def stats_scores(b, u, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(b, u, generator=g).round(decimals=1) * 3
    s[0, 0], s[1 % b, 1 % u], s[:, -1] = math.nan, math.inf, 2.0  # a NaN, an inf, an exact power of two
    s[-1, 0] = -0.0
    return s.to(device)


@pytest.mark.parametrize("b,u,bins", [(9, 37, 16), (1, 5, 2), (70, 3, 10), (40, 6, 100), (40, 6, 130)])
def test_interp_score_stats_kernel_matches_reference(b, u, bins):
    check_stats(stats_scores(b, u), bins)


# --- the top-k merge and the maps of new entries ----------------------------------------------------------------

def merge_case(b, u, k, seed=0, device="cpu", full=True):
    """Scores with NaN, +-inf, signed zeros and ties (within the batch and with kept entries), and a kept top-k
    (sorted, some units with empty slots) whose images come before and after the batch's."""
    g = torch.Generator().manual_seed(seed)
    score = (torch.randn(b, u, generator=g) * 2).round()
    score[0, 0], score[-1, 1 % u], score[b // 2, 2 % u], score[:, 3 % u] = math.nan, math.inf, -math.inf, -0.0
    score[1 % b, 3 % u] = 0.0
    kept_v = (torch.randn(u, k, generator=g) * 2).round().sort(1, descending=True).values
    kept_i = torch.stack([torch.randperm(3 * (b + k), generator=g)[:k] for _ in range(u)])  # unique per unit
    kept_i = torch.where(kept_i >= b, kept_i + b, kept_i)  # batch images take b..2b-1
    order = torch.argsort(kept_v * 1e6 - kept_i.double(), dim=1, descending=True)  # value desc, index asc
    kept_v, kept_i = kept_v.gather(1, order), kept_i.gather(1, order)
    if not full:
        kept_v[::2, k // 2:], kept_i[::2, k // 2:] = -math.inf, -1  # empty slots
    kept_a = torch.randint(0, 50, (u, k), generator=g, dtype=torch.int32)
    arg = torch.randint(0, 50, (b, u), generator=g, dtype=torch.int32)
    index = torch.arange(b, 2 * b)
    return [t.to(device) for t in (score, index, arg, kept_v.float(), kept_i, kept_a)]


def check_merge(case):
    ref = merge_topk(*case, backend="torch")
    ker = merge_topk(*case, backend="triton")
    for name, x, y in zip(ref._fields, ker, ref):
        assert same_bits(x, y), name
    score, index, arg, *top = case
    own = [t.clone() for t in top]  # in place: the top-k's own tensors as the outputs (races: GPU tests only)
    into = Merged(*own, torch.empty_like(ker.source))
    merge_topk(score, index, arg, *own, backend="triton", out=into)
    for name, x, y in zip(ref._fields, into, ker):
        assert same_bits(x, y), f"in place: {name}"
    return ref


@pytest.mark.parametrize("b,u,k,full", [(9, 7, 4, True), (9, 7, 4, False), (150, 5, 16, True), (3, 20, 8, False),
                                        (70, 33, 1, True)])
def test_interp_merge_topk_kernel_matches_reference(b, u, k, full):
    ref = check_merge(merge_case(b, u, k, full=full))
    assert (ref.source >= k).any() and (ref.source < k).any()  # entries kept and entries entering


def test_interp_merge_topk_kernel_takes_any_strides():
    score, index, arg, v, i, a = merge_case(9, 7, 4, full=False)
    col_major = [t.t().contiguous().t() for t in (v, i, a)]  # the same values, column-major
    ref = merge_topk(score, index, arg, v, i, a, backend="torch")
    ker = merge_topk(score.t().contiguous().t(), index, arg, *col_major, backend="triton")
    for name, x, y in zip(ref._fields, ker, ref):
        assert same_bits(x, y), name


def test_merge_topk_reference_by_hand():
    score = torch.tensor([[3.0, math.nan], [5.0, -0.0], [3.0, 0.0]])  # 3 images x 2 units
    values = torch.tensor([[4.0, 3.0], [-math.inf, -math.inf]])
    index = torch.tensor([[7, 9], [-1, -1]])
    m = merge_topk(score, torch.tensor([10, 2, 8]), torch.zeros(3, 2, dtype=torch.int32), values, index,
                   torch.zeros(2, 2, dtype=torch.int32), backend="torch")
    assert m.values.tolist() == [[5.0, 4.0], [-0.0, 0.0]]  # 3.0 ties: image 7 (kept) before 8 and 10
    assert m.index.tolist() == [[2, 7], [2, 8]] and m.source.tolist() == [[3, 0], [3, 4]]


def check_maps(a, k, map_hw, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, u = a.shape[:2]
    source = torch.randint(0, k + b, (u, k), generator=g, dtype=torch.int32).to(a.device)
    maps = torch.randn(u, k, map_hw[0] * map_hw[1], generator=g).to(a.device)
    ref = gather_maps(a, source, maps, map_hw, backend="torch")
    ker = gather_maps(a, source, maps, map_hw, backend="triton")
    own = maps.clone()
    assert gather_maps(a, source, own, map_hw, backend="triton", out=own) is own
    assert same_bits(own, ker)  # in place: the same maps (whether threads race is seen only on a GPU, *_gpu)
    kept = (source < k)[..., None].expand_as(ref)
    assert torch.equal(ker[kept], ref[kept])
    torch.testing.assert_close(ker, ref, rtol=1e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("shape,layout,map_hw", [((5, 6, 7, 9), "nchw", (3, 4)), ((4, 5, 8, 8), "channels_last", (8, 8)),
                                                  ((3, 4, 6, 6), "strided", (1, 1)), ((3, 4, 1, 1), "nchw", (1, 1))])
def test_interp_gather_maps_kernel_matches_reference(shape, layout, map_hw):
    check_maps(planted(shape, torch.bfloat16, layout=layout).float().nan_to_num(0.0, 1e3, -1e3), 4, map_hw)


# --- LayerState: the fast update against the plain one ------------------------------------------------------

ROUNDED = ("mean", "m2", "maps")  # float sums that the kernels may add in another order than torch


def assert_same_state(fast: LayerState, ref: LayerState, pooled_exact: bool = True) -> None:
    """Equal bit for bit; with pooled_exact False (the kernels), the sums of ROUNDED and the pooled matrices to
    rounding."""
    for name in LayerState.TENSORS:
        x, y = getattr(fast, name), getattr(ref, name)
        if name in ROUNDED and not pooled_exact:
            assert x.dtype == y.dtype and x.shape == y.shape, name
            torch.testing.assert_close(x, y, rtol=1e-5 if name == "maps" else 1e-10, atol=1e-6, equal_nan=True,
                                       msg=name)
        else:
            assert same_bits(x, y), name
    for name in ("pooled", "pooled_cls"):
        p, q = getattr(fast, name), getattr(ref, name)
        if p is not None:
            if pooled_exact:
                np.testing.assert_array_equal(p, q)
            else:
                np.testing.assert_allclose(p.astype(np.float32), q.astype(np.float32), rtol=1e-3, atol=1e-6)


def run_states(info, cfg, outputs, backend, n_images, device="cpu", starts=None, pooled_exact=True, inplace=False):
    """Feed the same module outputs to update (fast, with backend; ``inplace``: into its own tensors, as under
    atlas.mining.cuda_graphs) and update_reference; compare after each."""
    def state():
        pooled = np.zeros((n_images, info.units), np.float32) if cfg.keep_pooled else None
        cls = np.zeros((n_images, info.units), np.float32) if cfg.keep_pooled and info.prefix_tokens else None
        return LayerState(info, cfg, torch.device(device), pooled, cls, backend=backend)

    fast, ref = state(), state()
    fast.inplace = inplace
    first = 0
    for i, out in enumerate(outputs):
        b = out.shape[0]
        start = starts[i] if starts else first
        index = torch.arange(start, start + b, device=device)
        first += b
        before = [getattr(fast, k) for k in LayerState.TENSORS]
        fast.update(index, out)
        ref.update_reference(index, out)
        assert_same_state(fast, ref, pooled_exact)
        if inplace:
            assert all(getattr(fast, k) is t for k, t in zip(LayerState.TENSORS, before))
    return fast


def conv_batches(n, shape, dtype=torch.float32, layout="nchw", repeat_first=False):
    outs = [planted(shape, dtype, seed=s, layout=layout) for s in range(n)]
    if repeat_first:  # the same images again under later indices: every score ties an earlier one
        outs[1] = outs[0].clone()
    return outs


LAYERSTATE_CASES = {
    "nchw-max": dict(shape=(8, 9, 6, 6), cfg=dict(top_k=5, map_size=4), repeat_first=True),
    "channels_last-bf16": dict(shape=(6, 10, 7, 5), dtype=torch.bfloat16, layout="channels_last",
                               cfg=dict(top_k=3, map_size=3)),
    "map1x1": dict(shape=(5, 7, 4, 4), cfg=dict(top_k=4, map_size=1)),
    "grid1x1": dict(shape=(5, 7, 1, 1), cfg=dict(top_k=2, map_size=8)),
    "k-larger-than-all": dict(shape=(3, 6, 3, 3), cfg=dict(top_k=20, map_size=2)),
}


@pytest.mark.parametrize("case", list(LAYERSTATE_CASES))
def test_layer_state_fast_update_is_bit_identical(case, backend="torch"):
    c = LAYERSTATE_CASES[case]
    b, u, h, w = c["shape"]
    info = LayerInfo("x", "conv", u, (h, w), "nchw")
    outs = conv_batches(5, c["shape"], c.get("dtype", torch.float32), c.get("layout", "nchw"), c.get("repeat_first", False))
    cfg = MineConfig(hist_bins=8, **c["cfg"])
    fast = run_states(info, cfg, outs, backend, 5 * b, pooled_exact=backend == "torch")
    assert (fast.index >= 0).any() and fast.nonfinite.sum() > 0 and fast.count.sum() > 0


def test_layer_state_fast_update_on_tokens_and_out_of_order_batches(backend="torch"):
    outs, info = zip(*[tokens(4, 3, 11, seed=s) for s in range(4)])
    run_states(info[0], MineConfig(top_k=3, map_size=2, hist_bins=8), list(outs), backend, 16,
               starts=[8, 0, 12, 4], pooled_exact=backend == "torch")


@pytest.mark.parametrize("case", list(LAYERSTATE_CASES))
def test_interp_layer_state_fast_update_is_bit_identical(case):
    test_layer_state_fast_update_is_bit_identical(case, "triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_interp_layer_state_updates_in_place(backend):
    """As under a CUDA graph: the kernels write into the state's own tensors (the torch path copies)."""
    c = LAYERSTATE_CASES["channels_last-bf16"]
    outs = conv_batches(4, c["shape"], c["dtype"], c["layout"])
    info = LayerInfo("x", "conv", c["shape"][1], c["shape"][2:], "nchw")
    run_states(info, MineConfig(hist_bins=8, **c["cfg"]), outs, backend, 4 * c["shape"][0],
               pooled_exact=False, inplace=True)


def test_interp_layer_state_on_tokens_and_out_of_order_batches():
    test_layer_state_fast_update_on_tokens_and_out_of_order_batches("triton")


def test_interp_layer_state_rank_by_mean_is_bit_identical_when_sums_are_exact():
    # quarters summed over 16 pixels are exact in float32 in any order, so the kernel's mean equals torch's
    outs = [(torch.randint(-8, 9, (6, 9, 4, 4), generator=torch.Generator().manual_seed(s)) / 4.0) for s in range(4)]
    info = LayerInfo("x", "conv", 9, (4, 4), "nchw")
    run_states(info, MineConfig(top_k=4, map_size=2, rank_by="mean", hist_bins=8), outs, "triton", 24,
               pooled_exact=False)  # top-k values compared bit for bit; M2's squares still round


# --- the probe solver on the kernel -------------------------------------------------------------------------

def _probe_problem(n=600, f=20, c=4, seed=0):
    X, y = sparse_problem(n, f, c, seed, support=5)
    return torch.tensor(X, dtype=torch.float32), torch.tensor(y)


def test_interp_solver_on_the_softmax_kernel_matches_the_reference(monkeypatch):
    from atlas.probes.solver import fista

    X, y = _probe_problem(n=64)  # the interpreter runs one row per program: keep it small
    ref = fista(X, y, 4, 0.01, tol=0.0, max_iter=20)
    monkeypatch.setenv("ATLAS_KERNELS", "triton")
    ker = fista(X, y, 4, 0.01, tol=0.0, max_iter=20)
    assert abs(ker.objective - ref.objective) <= 1e-5 * ref.objective
    torch.testing.assert_close(ker.W, ref.W, rtol=1e-4, atol=1e-6)


def test_solver_takes_half_precision_features():
    from atlas.probes.solver import fista, objective

    X, y = _probe_problem()
    r64 = fista(X.double(), y, 4, 0.01, tol=1e-9, max_iter=2000)
    r16 = fista(X.bfloat16(), y, 4, 0.01, tol=1e-7, max_iter=2000)
    assert r16.W.dtype == torch.float32 and r16.b.dtype == torch.float32
    f16 = objective(X.double(), y, r16.W.double(), r16.b.double(), 0.01)
    assert r64.objective <= f16 <= r64.objective * (1 + 2e-3)


# --- dispatch and fallbacks ---------------------------------------------------------------------------------

def test_backend_choice_and_errors(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("ATLAS_KERNELS", raising=False)
    assert choose("auto", cpu) == "torch" and choose(None, cpu) == "torch"
    with pytest.raises(ValueError, match="one of"):
        choose("cuda", cpu)
    if triton_available():
        with pytest.raises(ConfigError, match="TRITON_INTERPRET=1"):
            choose("triton", cpu)
    monkeypatch.setenv("ATLAS_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ATLAS_KERNELS"):
        choose(None, cpu)


def test_atlas_mines_without_triton():
    """With triton unimportable, atlas imports, "auto" takes the reference and "triton" says why it cannot."""
    code = """
import sys
sys.modules["triton"] = None  # import triton now raises ImportError
import torch
from atlas.config import MineConfig
from atlas.errors import ConfigError
from atlas.kernels import choose, triton_available
from atlas.mining.loop import LayerState
from atlas.models import LayerInfo
from atlas.probes.solver import fista
assert not triton_available()
st = LayerState(LayerInfo("x", "conv", 3, (2, 2), "nchw"), MineConfig(top_k=2, keep_pooled=False), torch.device("cpu"))
st.update(torch.arange(4), torch.randn(4, 3, 2, 2))
assert st.count.tolist() == [4, 4, 4]
fista(torch.randn(50, 3), torch.randint(0, 2, (50,)), 2, 0.01, max_iter=5)
try:
    choose("triton", torch.zeros(1))
except ConfigError as e:
    assert "does not import" in str(e), e
else:
    raise AssertionError("no error")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# --- on a GPU: compiled kernels, real sizes -----------------------------------------------------------------

@gpu
@pytest.mark.parametrize("shape,dtype,layout", [
    ((64, 256, 56, 56), torch.bfloat16, "channels_last"), ((64, 2048, 7, 7), torch.bfloat16, "nchw"),
    ((32, 1024, 14, 14), torch.float32, "channels_last"), ((16, 512, 28, 28), torch.float16, "nchw"),
    ((7, 33, 1, 1), torch.float32, "nchw")])
def test_spatial_reduce_kernel_gpu(shape, dtype, layout):
    for rank_by in ("max", "mean"):
        check_reduce(planted(shape, dtype, layout=layout, device="cuda"), rank_by)
    out, info = tokens(32, 7, 768, device="cuda")
    check_reduce(info.canonical(out), "max")
    check_reduce(info.canonical(out.bfloat16()), "mean")


@gpu
@pytest.mark.parametrize("b,u,k,full", [(256, 2048, 16, True), (256, 768, 16, False), (1000, 64, 5, True)])
def test_merge_topk_kernel_gpu(b, u, k, full):
    check_merge(merge_case(b, u, k, device="cuda", full=full))


@gpu
@pytest.mark.parametrize("shape,map_hw", [((64, 256, 56, 56), (8, 8)), ((64, 2048, 7, 7), (7, 7)),
                                          ((32, 768, 7, 7), (1, 1))])
def test_gather_maps_kernel_gpu(shape, map_hw):
    check_maps(planted(shape, torch.bfloat16, layout="channels_last", device="cuda").float().nan_to_num(0.0, 1e3, -1e3),
               16, map_hw)


@gpu
@pytest.mark.parametrize("b,u,bins", [(256, 2048, 64), (256, 768, 64), (3, 100, 10)])
def test_score_stats_kernel_gpu(b, u, bins):
    check_stats(stats_scores(b, u, device="cuda"), bins, "cuda")


@gpu
@pytest.mark.parametrize("shape,dtype,layout,map_size", [
    ((64, 256, 28, 28), torch.bfloat16, "channels_last", 8), ((64, 2048, 7, 7), torch.bfloat16, "nchw", 8),
    ((64, 512, 14, 14), torch.float32, "channels_last", 1)])
def test_layer_state_fast_update_gpu(shape, dtype, layout, map_size):
    b, u, h, w = shape
    info = LayerInfo("x", "conv", u, (h, w), "nchw")
    outs = [planted(shape, dtype, seed=s, layout=layout, device="cuda") for s in range(6)]
    for inplace in (False, True):
        fast = run_states(info, MineConfig(top_k=16, map_size=map_size), outs, "triton", 6 * b, "cuda",
                          pooled_exact=False, inplace=inplace)
        assert (fast.index >= 0).all()
    outs, infos = zip(*[tokens(64, 7, 768, seed=s, dtype=torch.bfloat16, device="cuda") for s in range(4)])
    run_states(infos[0], MineConfig(top_k=16), list(outs), "triton", 256, "cuda", pooled_exact=False)


@gpu
@pytest.mark.parametrize("n,c,dtype", [(8192, 1000, torch.float32), (8192, 1000, torch.bfloat16),
                                       (1024, 20000, torch.float32), (100, 7, torch.float32)])
def test_softmax_kernel_gpu(n, c, dtype):
    z = (torch.randn(n, c, device="cuda") * 6).to(dtype)
    y = torch.randint(0, c, (n,), device="cuda")
    l_ref, r_ref = softmax_xent(z, y, 1.0 / n, torch.float32, backend="torch")
    l_ker, r_ker = softmax_xent(z, y, 1.0 / n, torch.float32, backend="triton")
    torch.testing.assert_close(l_ker, l_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r_ker, r_ref, rtol=1e-4, atol=1e-9)


@gpu
def test_solver_bf16_on_gpu_matches_float64():
    from atlas.probes.solver import fista, objective, sklearn_lambda

    X, y = _probe_problem(n=20000, f=256, c=50, seed=3)
    lam = sklearn_lambda(0.05, len(y))
    r64 = fista(X.double().cuda(), y.cuda(), 50, lam, tol=1e-9, max_iter=5000)
    r16 = fista(X.cuda().bfloat16(), y.cuda(), 50, lam, tol=1e-7, max_iter=5000)
    assert r16.W.dtype == torch.float32 and r16.W.is_cuda and r16.converged
    f16 = objective(X.double(), y, r16.W.double().cpu(), r16.b.double().cpu(), lam)
    assert r64.objective <= f16 * (1 + 1e-6) and f16 <= r64.objective * (1 + 2e-3)


if not INTERPRETER:  # the test_interp_* tests run in test_kernels_in_the_interpreter's subprocess only
    for _name in [n for n in globals() if n.startswith("test_interp_")]:
        del globals()[_name]
