"""Mining fused into ResNet blocks (atlas.kernels.tail, atlas.mining.fused_tails) and recorded in CUDA graphs (atlas.mining.cuda_graphs):
the fused tail against the block's own ops, fused mining against hooked mining, graph mining against eager.

As in test_kernels.py, the test_interp_* tests run the kernels on CPU tensors in Triton's interpreter, in a
subprocess started by `test_fused_kernels_in_the_interpreter`; the *_gpu tests need CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_kernels import (
    INTERPRETER,
    gpu,
    planted,
    run_in_interpreter,
    same_bits,
    thresholds,
)

from atlas.config import MineConfig
from atlas.kernels import triton_available
from atlas.kernels.mining import beats, spatial_reduce
from atlas.mining.loop import LayerState
from atlas.models import LayerInfo

if not INTERPRETER:
    @pytest.mark.skipif(not triton_available(), reason="triton is not installed")
    def test_fused_kernels_in_the_interpreter():
        run_in_interpreter(__file__)


def tail_case(shape, dtype=torch.float32, layout="nchw", id_layout=None, seed=0, device="cpu"):
    """(y, identity, bn): a Bottleneck tail's inputs with planted NaN, +-inf, ties and signed zeros, and an eval
    BatchNorm2d with random statistics."""
    y = planted(shape, dtype, seed=seed, layout=layout, device=device)
    identity = planted(shape, dtype, seed=seed + 1, layout=id_layout or layout, device=device)
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    bn = torch.nn.BatchNorm2d(c).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=g))
        bn.bias.copy_(torch.randn(c, generator=g))
        bn.running_mean.copy_(torch.randn(c, generator=g))
        bn.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    return y, identity, bn.to(device)


def check_tail(y, identity, bn, rank_by="max", ulp_share=0.0):
    """Kernel against the block's own ops: outputs equal to one unit in the last place of y's dtype (in at most
    ``ulp_share`` of the elements), the fused reduction exactly spatial_reduce of the kernel's own output."""
    from atlas.kernels.tail import bottleneck_tail

    with torch.no_grad():
        ref, none = bottleneck_tail(y, identity, bn, backend="torch")
        image_index = torch.arange(y.shape[0], device=y.device) * 3
        tv, ti = thresholds(ref)
        out, red = bottleneck_tail(y, identity, bn, (image_index, tv, ti, rank_by), backend="triton")
        plain, no_red = bottleneck_tail(y, identity, bn, backend="triton")
    assert none is None and no_red is None
    assert out.dtype == y.dtype and out.shape == y.shape and out.stride() == y.contiguous(
        memory_format=torch.channels_last if y.is_contiguous(memory_format=torch.channels_last) and
        not y.is_contiguous() else torch.contiguous_format).stride()
    assert torch.equal(out.isnan(), ref.isnan()) and same_bits(plain.float(), out.float())
    x, r = out.double().nan_to_num(0.0), ref.double().nan_to_num(0.0)
    # rounding errors are in units of the terms, which the sums may cancel: bound by the terms' magnitudes
    c = lambda t: t.detach().double()[:, None, None]
    terms = ((c(bn.weight) * (y.double() - c(bn.running_mean)) * torch.rsqrt(c(bn.running_var) + bn.eps)).abs()
             + c(bn.bias).abs() + identity.double().abs() + r.abs()).nan_to_num(0.0, 0.0, 0.0)
    off = x != r
    assert ((x - r).abs() <= 4 * torch.finfo(y.dtype).eps * terms)[off].all(), (x - r).abs()[off].max()
    if y.dtype != torch.float32:  # in float32 the order of operations shows in the last bit
        assert float(off.double().mean()) <= ulp_share, float(off.double().mean())
    want = spatial_reduce(out, image_index, tv, ti, rank_by, backend="torch")
    assert same_bits(red.peak, want.peak) and torch.equal(red.arg, want.arg)
    torch.testing.assert_close(red.mean, want.mean, rtol=2e-6, atol=1e-6, equal_nan=True)
    assert torch.equal(red.flag, beats(red.peak if rank_by == "max" else red.mean, image_index, tv, ti))
    if rank_by == "max":
        assert torch.equal(red.flag, want.flag)
    return out, ref


TAIL_CASES = {
    "nchw-f32": dict(shape=(3, 37, 7, 9)),
    "channels_last-bf16": dict(shape=(3, 70, 4, 6), dtype=torch.bfloat16, layout="channels_last"),
    "mixed-layouts": dict(shape=(2, 9, 5, 5), layout="channels_last", id_layout="nchw"),
    "strided-f16": dict(shape=(2, 7, 4, 8), dtype=torch.float16, layout="strided"),
    "hw1": dict(shape=(4, 33, 1, 1)),
}


@pytest.mark.parametrize("rank_by", ["max", "mean"])
@pytest.mark.parametrize("case", list(TAIL_CASES))
def test_interp_bottleneck_tail_kernel_matches_the_block(case, rank_by):
    check_tail(*tail_case(**TAIL_CASES[case]), rank_by, ulp_share=0.02)


def test_bottleneck_tail_rejects_bad_input():
    from atlas.kernels.tail import bottleneck_tail

    y, identity, bn = tail_case((2, 5, 3, 3))
    with pytest.raises(ValueError, match="same"):
        bottleneck_tail(y, identity[:, :4], bn)
    with pytest.raises(ValueError, match="eval mode"):
        bottleneck_tail(y, identity, bn.train())
    with pytest.raises(ValueError, match="over 4 channels, y has 5; pass the block's own bn3"):
        bottleneck_tail(y, identity, torch.nn.BatchNorm2d(4).eval())
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        bottleneck_tail(y.int(), identity, bn.eval())
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        bottleneck_tail(y.double(), identity.double(), bn.eval())


# --- mining fused into ResNet blocks (atlas.mining.fused_tails) ---------------------------------------------------------

def _blocks(device="cpu", seed=0):
    """Two open_clip Bottlenecks (one with a downsampling shortcut) with random batch-norm statistics, in eval."""
    from open_clip.modified_resnet import Bottleneck

    torch.manual_seed(seed)
    blocks = torch.nn.Sequential(Bottleneck(8, 4, stride=2), Bottleneck(16, 4)).eval()
    for m in blocks.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_()
            m.bias.data.normal_()
    return blocks.to(device)


def check_fused_blocks(device="cpu", dtype=torch.float32, batch=5, size=12):
    """The blocks' forward with fused tails equals the plain forward (to a unit in the last place), feeding
    LayerStates the same top-k as forward hooks do; the blocks' forward is restored afterwards."""
    from atlas.capture import hooked
    from atlas.mining.fused_tails import fused_tails

    blocks = _blocks(device)
    names = {"0": blocks[0], "1": blocks[1]}
    infos = {n: LayerInfo(n, "conv", 16, (size // 2, size // 2), "nchw") for n in names}
    cfg = MineConfig(top_k=3, map_size=2, keep_pooled=False)
    xs = [torch.randn(batch, 8, size, size, generator=torch.Generator().manual_seed(s)).to(device, dtype)
          for s in range(3)]
    plain = {n: LayerState(infos[n], cfg, torch.device(device), backend="triton") for n in names}
    fused = {n: LayerState(infos[n], cfg, torch.device(device), backend="triton") for n in names}
    current = {}
    with torch.no_grad():
        for i, x in enumerate(xs):
            index = torch.arange(i * batch, (i + 1) * batch, device=device)
            with hooked(blocks, list(names), lambda n, out: plain[n].update(index, out)):
                want = blocks(x)
            current["index"] = index
            with fused_tails(names, fused, current):
                got = blocks(x)
            assert "forward" not in blocks[0].__dict__  # restored
            torch.testing.assert_close(got, want, rtol=2 * torch.finfo(dtype).eps, atol=1e-5)
    for n in names:
        torch.testing.assert_close(fused[n].values, plain[n].values, rtol=1e-5, atol=1e-6)
        assert torch.equal(fused[n].index, plain[n].index) and (fused[n].index >= 0).all()
        assert torch.equal(fused[n].count, plain[n].count)
        torch.testing.assert_close(fused[n].maps, plain[n].maps, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # without states: the tail alone
        want = blocks(xs[0])
        with fused_tails(names):
            torch.testing.assert_close(blocks(xs[0]), want, rtol=2 * torch.finfo(dtype).eps, atol=1e-5)


def test_interp_fused_blocks_match_hooked_mining():
    check_fused_blocks()


def test_interp_mine_with_fused_blocks_matches_hooks(tmp_path, monkeypatch):
    """atlas.mining on the shipped architecture (random weights), two blocks fused vs hooked, all kernels in
    Triton's interpreter: the same top-k images, values to rounding."""
    import h5py

    from atlas.data import open_source
    from atlas.mining import mine
    from atlas.models import load_model

    monkeypatch.setenv("ATLAS_KERNELS", "triton")
    model = load_model("atlas:tiny@random:0")
    source = open_source("synthetic:8")
    cfg = MineConfig(batch_size=4, top_k=3, layers=("visual.layer1.0", "visual.layer3.0"))
    fused = mine(model, source, tmp_path / "fused.h5", cfg, fuse_blocks=True)
    assert fused.fused_layers == cfg.layers
    assert mine(model, source, tmp_path / "hooked.h5", cfg, fuse_blocks=False).fused_layers == ()
    with h5py.File(tmp_path / "fused.h5") as a, h5py.File(tmp_path / "hooked.h5") as b:
        for layer in fused.layers:
            g, h = a[f"neurons/{model.name}/{layer}"], b[f"neurons/{model.name}/{layer}"]
            np.testing.assert_array_equal(g["topk/index"][()], h["topk/index"][()], err_msg=layer)
            for key in ("topk/values", "topk/maps", "stats/mean", "stats/max", "pooled"):
                np.testing.assert_allclose(g[key][()], h[key][()], rtol=1e-3, atol=1e-5, err_msg=f"{layer} {key}")


def test_fuse_blocks_needs_the_triton_kernels(tmp_path):
    from atlas.data import open_source
    from atlas.mining import mine
    from atlas.models import load_model

    with pytest.raises(ValueError, match="fuse_blocks=True needs the Triton kernels"):
        mine(load_model("atlas:tiny@random:0"), open_source("synthetic:8"), tmp_path / "s.h5", MineConfig(),
             fuse_blocks=True)


def test_graph_step_updates_states_in_place_like_plain_updates():
    """GraphStep's eager steps (all a CPU has): the states update their own tensors (a graph replays fixed
    addresses), with the results of plain updates."""
    from atlas.capture import hooked
    from atlas.mining.cuda_graphs import GraphStep

    blocks = _blocks()
    info = LayerInfo("1", "conv", 16, (6, 6), "nchw")
    cfg = MineConfig(top_k=3, map_size=2)
    plain, step_state = (LayerState(info, cfg, torch.device("cpu"), np.zeros((15, 16), np.float32))
                         for _ in range(2))
    current = {}
    step = GraphStep(blocks, current, [step_state], warmup=10**6)
    before = {k: getattr(step_state, k).data_ptr() for k in LayerState.TENSORS}
    with torch.no_grad(), hooked(blocks, ["1"], lambda n, out: (plain if current.get("plain") else step_state)
                                 .update(current["index"], out)):
        for i in range(3):
            x = torch.randn(5, 8, 12, 12, generator=torch.Generator().manual_seed(i))
            index = torch.arange(5 * i, 5 * i + 5)
            step(x, index)
            current.update(plain=True, index=index)
            blocks(x)
            current["plain"] = False
    assert step.eager == 3 and step.graphs == []
    for k in LayerState.TENSORS:
        assert getattr(step_state, k).data_ptr() == before[k], k
        assert torch.equal(getattr(step_state, k), getattr(plain, k)), k
    step_state.drain()
    assert np.array_equal(step_state.pooled, plain.pooled) and np.abs(plain.pooled).sum() > 0


def test_fused_tails_refuse_other_modules():
    from atlas.mining.fused_tails import fusable, fused_tails

    blocks = _blocks()
    assert fusable(blocks[0]) and not fusable(blocks[0].train()) and not fusable(torch.nn.Conv2d(2, 2, 1))
    with pytest.raises(ValueError, match="not an open_clip Bottleneck in eval mode"):
        with fused_tails({"0": blocks[0]}):
            pass
    with pytest.raises(ValueError, match="pass a state for every block and ``current``"):
        with fused_tails({"0": blocks[0].eval()}, states={}):
            pass


def test_fused_tails_put_the_forward_back_and_refuse_gradients():
    from atlas.mining.fused_tails import fused_tails

    blocks = _blocks()
    own = blocks[1].forward  # an instance attribute set by someone else before
    blocks[1].forward = own
    with pytest.raises(KeyError), fused_tails({"0": blocks[0], "1": blocks[1]}):
        assert blocks[0].__dict__["forward"] is not None
        raise KeyError("inside")
    assert "forward" not in blocks[0].__dict__ and blocks[1].__dict__["forward"] is own
    with fused_tails({"0": blocks[0]}), pytest.raises(RuntimeError, match="torch.no_grad"):
        blocks[0](torch.randn(1, 8, 4, 4))


if not INTERPRETER:  # the test_interp_* tests run in the interpreter's subprocess only
    for _name in [n for n in globals() if n.startswith("test_interp_")]:
        del globals()[_name]


# --- on a GPU: compiled kernels, real sizes -----------------------------------------------------------------

@gpu
@pytest.mark.parametrize("shape,dtype,layout", [
    ((64, 256, 56, 56), torch.bfloat16, "channels_last"), ((64, 2048, 7, 7), torch.bfloat16, "channels_last"),
    ((16, 512, 28, 28), torch.float32, "nchw"), ((8, 1024, 14, 14), torch.float16, "channels_last")])
def test_bottleneck_tail_kernel_gpu(shape, dtype, layout):
    y, identity, bn = tail_case(shape, dtype, layout, device="cuda")
    for rank_by in ("max", "mean"):
        check_tail(y, identity, bn, rank_by, ulp_share=0.01)


@gpu
def test_fused_blocks_gpu():
    check_fused_blocks("cuda", batch=32, size=28)


@gpu
def test_mining_with_fused_blocks_gpu(tmp_path):
    """RN50 in bfloat16 with CUDA graphs, blocks fused vs hooked: the fused tail rounds a few activations the other
    way, which then travels through the later blocks, so compare as near-equal: top-k images and values."""
    import h5py

    from atlas.data import open_source
    from atlas.mining import mine
    from atlas.models import load_model

    model = load_model("open_clip:RN50@random:0", device="cuda")
    source = open_source("synthetic:256")
    cfg = MineConfig(batch_size=64, top_k=8, layers=("visual.layer1.0", "visual.layer3.5", "visual.layer4.2"))
    fused = mine(model, source, tmp_path / "fused.h5", cfg)
    assert fused.fused_layers == cfg.layers and fused.graph_batches == 2
    assert mine(model, source, tmp_path / "hooked.h5", cfg, fuse_blocks=False).fused_layers == ()
    with h5py.File(tmp_path / "fused.h5") as a, h5py.File(tmp_path / "hooked.h5") as b:
        for layer in cfg.layers:
            g, h = a[f"neurons/{model.name}/{layer}"], b[f"neurons/{model.name}/{layer}"]
            same = (g["topk/index"][()] == h["topk/index"][()]).mean()
            assert same >= 0.9, (layer, same)
            np.testing.assert_allclose(g["topk/values"][()], h["topk/values"][()], rtol=0.03, atol=1e-3)
            np.testing.assert_allclose(g["stats/mean"][()], h["stats/mean"][()], rtol=0.01, atol=1e-3)


# --- mining with the step recorded in a CUDA graph ------------------------------------------------------------

def test_cuda_graphs_need_cuda_and_triton(tmp_path):
    from atlas.data import open_source
    from atlas.mining import mine
    from atlas.models import load_model

    with pytest.raises(ValueError, match="cuda_graphs=True needs a CUDA device"):
        mine(load_model("atlas:tiny@random:0"), open_source("synthetic:8"), tmp_path / "s.h5", MineConfig(),
             cuda_graphs=True)


@gpu
def test_mining_with_cuda_graphs_equals_eager_gpu(tmp_path):
    """Full batches replayed from a graph, the last (partial) one eager: the same store as eager mining."""
    import h5py

    from atlas.data import open_source
    from atlas.mining import mine
    from atlas.models import load_model

    model = load_model("open_clip:RN50@random:0", device="cuda")
    source = open_source("synthetic:200")
    cfg = MineConfig(batch_size=32, top_k=8, layers=("visual.layer1.0", "visual.layer3.5", "visual.layer4.2"))
    assert mine(model, source, tmp_path / "eager.h5", cfg, cuda_graphs=False).graph_batches == 0
    assert mine(model, source, tmp_path / "graph.h5", cfg, cuda_graphs=True).graph_batches == 200 // 32 - 2
    with h5py.File(tmp_path / "eager.h5") as a, h5py.File(tmp_path / "graph.h5") as b:
        for layer in cfg.layers:
            g, h = a[f"neurons/{model.name}/{layer}"], b[f"neurons/{model.name}/{layer}"]
            for key in ("topk/values", "topk/index", "topk/argmax", "topk/maps", "stats/count", "stats/mean",
                        "stats/std", "stats/min", "stats/max", "stats/hist", "pooled"):
                np.testing.assert_array_equal(g[key][()], h[key][()], err_msg=f"{layer} {key}")
            assert (g["topk/index"][()] >= 0).all()
