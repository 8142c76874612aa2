"""Streaming mining against a brute-force, all-in-memory computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from atlas import store
from atlas.capture import capture
from atlas.config import MineConfig
from atlas.data import FolderSource, open_source
from atlas.mining.loop import MIN_RANGE_EXP, mine
from atlas.store.write import _filtered_chunk


def brute_force(model, source, layer, cfg):
    """Every image's full activation map in memory, batched exactly as the miner batches."""
    info = model.layer(layer)
    acts, idx = [], []
    for start in range(0, len(source), cfg.batch_size):
        samples = [source.sample(i, draft_size=model.image_size)
                   for i in range(start, min(start + cfg.batch_size, len(source)))]
        good = [s for s in samples if s.image is not None]
        if not good:
            continue
        x = torch.stack([model.preprocess(s.image) for s in good])
        with torch.no_grad():
            out = capture(model.clip, [layer], lambda: model.encode_image(x))[layer]
        acts.append(info.canonical(out).float())
        idx += [s.index for s in good]
    return torch.cat(acts), np.array(idx)  # [N_good, U, h, w], [N_good]


def expected(acts, idx, cfg):
    n, u = acts.shape[:2]
    flat = acts.reshape(n, u, -1)
    peak, arg = flat.max(2)
    score = (peak if cfg.rank_by == "max" else flat.mean(2)).numpy().astype(np.float64)  # [N, U]
    mh, mw = min(acts.shape[2], cfg.map_size), min(acts.shape[3], cfg.map_size)
    small = F.adaptive_avg_pool2d(acts, (mh, mw)).numpy()
    k = cfg.top_k
    top_i = np.zeros((u, k), np.int64)
    rows = np.zeros((u, k), np.int64)
    for unit in range(u):
        order = sorted(range(n), key=lambda r: (-score[r, unit], idx[r]))[:k]  # value desc, index asc
        rows[unit] = order
        top_i[unit] = idx[order]
    return score, arg.numpy(), small, top_i, rows, flat.mean(2).numpy()


@pytest.mark.parametrize("rank_by", ["max", "mean"])
def test_topk_and_statistics_match_brute_force(tiny_model, tmp_path, rank_by):
    source = open_source("synthetic:150")
    cfg = MineConfig(layers=("visual.layer2.0", "visual.layer4.0"), top_k=7, batch_size=32, rank_by=rank_by,
                     map_size=4, hist_bins=16)
    path = tmp_path / "s.h5"
    r = mine(tiny_model, source, path, cfg)
    assert r.images == 150 and r.bad == 0
    with store.Store(path) as st:
        for layer in cfg.layers:
            acts, idx = brute_force(tiny_model, source, layer, cfg)
            score, arg, small, top_i, rows, pooled = expected(acts, idx, cfg)
            ld = st.layer("tiny", layer)
            assert np.array_equal(ld["topk/index"], top_i)
            u = np.arange(ld.units)[:, None]
            assert np.array_equal(ld["topk/values"], score[rows, u].astype(np.float32))
            assert np.array_equal(ld["topk/argmax"], arg[rows, u])
            assert np.array_equal(ld["topk/maps"], small[rows, u].astype(np.float32))
            assert ld["topk/maps"].shape[2:] == (min(4, ld.grid[0]), min(4, ld.grid[1]))
            np.testing.assert_allclose(ld["stats/mean"], score.mean(0), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(ld["stats/std"], score.std(0), rtol=1e-7, atol=1e-12)
            assert np.array_equal(ld["stats/max"], score.max(0).astype(np.float32))
            assert np.array_equal(ld["stats/min"], score.min(0).astype(np.float32))
            assert np.array_equal(ld["stats/positive"], (score > 0).sum(0))
            assert np.array_equal(ld["stats/count"], np.full(ld.units, 150))
            # histogram: as if made in one go over [-R, R], R the smallest power of two above max |score|
            peak = np.abs(score).max(0)
            exp = np.maximum(np.floor(np.log2(np.maximum(peak, 1e-300))) + 1, MIN_RANGE_EXP)
            exp = np.where(peak > 0, exp, MIN_RANGE_EXP)
            assert np.array_equal(ld["stats/range"], np.ldexp(1.0, exp.astype(int)))
            width = ld["stats/range"][None, :] / 8
            bins = np.clip(np.floor(score / width).astype(int) + 8, 0, 15)
            hist = np.stack([np.bincount(bins[:, j], minlength=16) for j in range(ld.units)])
            assert np.array_equal(ld["stats/hist"], hist)
            assert ld["stats/hist"].sum(1).tolist() == [150] * ld.units
            assert np.array_equal(ld["pooled"], pooled.astype(np.float32))
            assert np.array_equal(ld["stats/nonfinite_maps"], np.zeros(ld.units))


def test_ties_break_by_image_index(tiny_model, tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    for i in range(12):
        img.save(folder / f"{i:02d}.png")
    cfg = MineConfig(layers=("visual.layer4.0",), top_k=5, batch_size=4)
    mine(tiny_model, FolderSource(folder), tmp_path / "s.h5", cfg)
    with store.Store(tmp_path / "s.h5") as st:
        ld = st.layer("tiny", "visual.layer4.0")
        assert (ld["topk/index"] == np.arange(5)).all()  # identical images: the lowest indices win
        assert (ld["topk/values"] == ld["topk/values"][:, :1]).all()


def test_bad_files_are_skipped_and_recorded(tiny_model, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "cats").mkdir(parents=True)
    (folder / "dogs").mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / ("cats" if i % 2 else "dogs") / f"{i}.jpg")
    (folder / "cats" / "empty.jpg").write_bytes(b"")
    (folder / "dogs" / "notes.txt").write_text("not an image")
    good = (folder / "cats" / "1.jpg").read_bytes()
    (folder / "dogs" / "half.jpg").write_bytes(good[: len(good) // 2])
    (folder / "captions.csv").write_text("path,caption\ncats/1.jpg,a noisy cat\nmissing.jpg,gone\n")
    source = FolderSource(folder)
    assert source.unmatched_captions == ["missing.jpg"]
    assert len(source) == 9  # every non-hidden file but the captions CSV
    cfg = MineConfig(layers=("visual.layer4.0",), top_k=3, batch_size=4)
    r = mine(tiny_model, source, tmp_path / "s.h5", cfg)
    assert (r.images, r.bad) == (9, 3)
    with store.Store(tmp_path / "s.h5") as st:
        bad = {sid: reason for _, sid, reason in st.bad_images()}
        assert set(bad) == {"cats/empty.jpg", "dogs/notes.txt", "dogs/half.jpg"}
        assert "empty" in bad["cats/empty.jpg"] and "truncat" in bad["dogs/half.jpg"]
        reasons = st.image_column("status")
        assert sorted(store.REASON_CODES[c] for c in reasons if c) == ["empty", "not_an_image", "truncated"]
        labels = dict(zip(st.image_column("source_id"), st.image_column("label")))
        assert labels["cats/1.jpg"] == "cats" and labels["dogs/0.jpg"] == "dogs"
        caps = dict(zip(st.image_column("source_id"), st.image_column("caption")))
        assert caps["cats/1.jpg"] == "a noisy cat" and caps["cats/3.jpg"] == ""
        ld = st.layer("tiny", "visual.layer4.0")
        bad_rows = [i for i, c in enumerate(reasons) if c]
        assert np.isnan(ld["pooled"][bad_rows]).all() and not np.isnan(np.delete(ld["pooled"], bad_rows, 0)).any()
        assert not set(ld["topk/index"].ravel()) & set(bad_rows)
        assert (ld["stats/count"] == 6).all()
        for i in set(ld["topk/index"].ravel()):  # every shown example has its thumbnail
            assert st.thumbnail(int(i)).shape == (96, 96, 3)


def test_rerun_skips_and_conflicts_are_refused(tiny_model, tmp_path):
    path = tmp_path / "s.h5"
    source = open_source("synthetic:40")
    cfg = MineConfig(layers=("visual.layer4.0",), top_k=3, batch_size=16)
    mine(tiny_model, source, path, cfg)
    digest = store.contents_digest(path)
    again = mine(tiny_model, source, path, cfg)
    assert again.skipped_layers == ("visual.layer4.0",) and store.contents_digest(path) == digest
    # adding a layer keeps the first one untouched
    mine(tiny_model, source, path, MineConfig(layers=("visual.layer3.0",), top_k=3, batch_size=16))
    with store.Store(path) as st:
        assert [ld.name for ld in st.layers("tiny")] == ["visual.layer4.0", "visual.layer3.0"]
    with pytest.raises(store.StoreError, match="other settings"):
        mine(tiny_model, source, path, MineConfig(layers=("visual.layer4.0",), top_k=5, batch_size=16))
    with pytest.raises(store.StoreError, match="data_fingerprint"):
        mine(tiny_model, open_source("synthetic:41"), path, cfg)
    from atlas.models import load_model

    with pytest.raises(store.StoreError, match="weights_sha256"):
        mine(load_model("atlas:tiny@random:1"), source, path, cfg)


def test_nonfinite_scores_are_counted_not_ranked():
    from atlas.mining.loop import LayerState
    from atlas.models import LayerInfo

    info = LayerInfo("x", "conv", 2, (1, 1), "nchw")
    st = LayerState(info, MineConfig(top_k=2, hist_bins=4, keep_pooled=False), torch.device("cpu"))
    acts = torch.tensor([[1.0, math.nan], [2.0, 3.0], [math.inf, -1.0]]).view(3, 2, 1, 1)
    st.update(torch.tensor([0, 1, 2]), acts)
    assert st.nonfinite.tolist() == [1, 1] and st.count.tolist() == [2, 2]
    assert st.index[0].tolist() == [1, 0] and st.index[1].tolist() == [1, 2]
    assert st.max.tolist() == [2.0, 3.0] and st.min.tolist() == [1.0, -1.0]
    assert st.hist.sum(1).tolist() == [2, 2]


def test_a_model_that_overflows_is_counted_stored_and_shown(tmp_path):
    """A unit whose activations are inf on every image and one that overflows float16 (but not float32): the first
    is counted per image in stats/nonfinite_maps, stored as inf (not as NaN of a skipped row) and told apart by
    the probe and the layer page; the second is stored exactly."""
    from atlas.models import load_model
    from atlas.probes.probe import fit_probe
    from atlas.site import build_site

    model = load_model("atlas:tiny@random:0")
    layer = "visual.layer4.0"
    bn = dict(model.clip.named_modules())[f"{layer}.bn3"]
    with torch.no_grad():
        bn.bias[5] = math.inf  # unit 5: relu(inf + identity) = inf everywhere
        bn.bias[7] = 1e6  # unit 7: about 1e6, beyond float16's 65,504
    path = tmp_path / "s.h5"
    r = mine(model, open_source("synthetic:40"), path, MineConfig(layers=[layer], top_k=4, batch_size=16))
    assert r.nonfinite == {layer: 40}
    with store.Store(path) as st:
        ld = st.layer("tiny", layer)
        counts = ld["stats/nonfinite_maps"]
        assert counts[5] == 40 and counts.sum() == 40 and ld["stats/nonfinite"][5] == 40
        pooled = ld["pooled"]
        assert pooled.dtype == np.float32 and np.isposinf(pooled[:, 5]).all() and np.isfinite(np.delete(pooled, 5, 1)).all()
        assert (pooled[:, 7] > 5e5).all() and (ld["topk/values"][7] > 5e5).all()  # float16 would have made these inf
        assert (ld["topk/index"][5] == -1).all()  # non-finite scores enter no top-k
        labels = [f"c{i % 2}" for i in range(40)]
        probe = fit_probe(pooled, labels, skipped=st.image_column("status") != 0)
        left = {w: (n, why) for w, n, why in probe.left_out}
        assert left["units with non-finite activations"][0] == 1 and "images without activations" not in left
        assert probe.n_train + probe.n_val == 40 and not probe.W[:, 5].any()
    build_site([path], tmp_path / "site")
    page = (tmp_path / "site" / "tiny" / layer / "index.html").read_text()
    assert "40 non-finite activations" in page and "in 1 units" in page


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("n,u", [(0, 5), (1, 3), (1000, 7), (5000, 300), (3000, 2500)])
def test_pooled_rows_are_written_block_by_block(tmp_path, n, u, threads):
    """store.put_rows: the same matrix as one write, bad rows NaN, with blocks much smaller than the matrix; the
    chunks compressed by HDF5 (threads=0) or by threads and written raw, which HDF5 then reads and checksums."""
    import h5py

    m = np.random.default_rng(n).standard_normal((n, u)).astype(np.float16)
    bad = np.zeros(n, bool)
    bad[::7] = True
    with h5py.File(tmp_path / "a.h5", "w") as f:
        ds = store.put_rows(f, "p", m, bad, block_bytes=1 << 14, threads=threads)
        expect = m.copy()
        expect[bad] = np.nan
        assert ds.dtype == np.float16 and ds.compression == "gzip" and ds.fletcher32
        np.testing.assert_array_equal(ds[()], expect)
    with h5py.File(tmp_path / "a.h5", "r") as f:  # afresh: from the file, every chunk's checksum verified
        np.testing.assert_array_equal(f["p"][()], expect)


@pytest.mark.parametrize("threads", [0, 1, 3])
@pytest.mark.parametrize("shape,dtype", [((400, 96, 96, 3), np.uint8), ((701, 16, 30, 31), np.float16),
                                         ((9000, 333), np.float32)])
def test_large_arrays_are_written_by_threads(tmp_path, shape, dtype, threads):
    """store.put: a large numeric array (a partial last chunk) reads back the same, HDF5 verifying every chunk's
    checksum, whether HDF5 compressed the chunks (threads=0) or threads did; gzip level 4 either way, and the
    threads' chunks are byte for byte HDF5's (the same zlib at the same level, the same checksum)."""
    import h5py

    rng = np.random.default_rng(len(shape))
    a = (rng.integers(0, 40, shape) if dtype == np.uint8 else rng.standard_normal(shape)).astype(dtype)
    assert a.nbytes >= 8 << 20
    with h5py.File(tmp_path / "a.h5", "w") as f:
        ds = store.put(f, "a", a, threads=threads)
        assert ds.compression == "gzip" and ds.compression_opts == 4 and ds.fletcher32
        assert shape[0] % ds.chunks[0]  # a partial edge chunk is exercised
        if len(shape) > 2:  # whole rows of about 1 MB: one thumbnail or one unit's maps is one chunk
            assert ds.chunks[1:] == shape[1:] and ds.chunks[0] == (1 << 20) // a[0].nbytes
    with h5py.File(tmp_path / "a.h5", "r") as f:
        np.testing.assert_array_equal(f["a"][()], a)
    with h5py.File(tmp_path / "b.h5", "w") as g:
        store.put(g, "a", a, threads=0)
    with h5py.File(tmp_path / "a.h5", "r") as f, h5py.File(tmp_path / "b.h5", "r") as g:
        for at in [(0,) * len(shape), tuple((n - 1) // c * c for n, c in zip(shape, f["a"].chunks))]:
            assert f["a"].id.read_direct_chunk(at) == g["a"].id.read_direct_chunk(at), at


def test_fletcher32_is_hdf5s(tmp_path):
    """store.fletcher32 against the checksums HDF5 wrote itself, over chunks of even and odd compressed lengths and
    all-zero chunks; a damaged chunk written raw is refused on read."""
    import h5py

    a = np.random.default_rng(0).standard_normal((1001, 301)).astype(np.float16)
    a[:200] = 0
    parities = set()
    with h5py.File(tmp_path / "f.h5", "w") as f:
        ds = f.create_dataset("x", data=a, chunks=True, fletcher32=True, compression="gzip", compression_opts=1)
        for r in range(0, a.shape[0], ds.chunks[0]):
            for c in range(0, a.shape[1], ds.chunks[1]):
                _, raw = ds.id.read_direct_chunk((r, c))
                parities.add(len(raw) % 2)
                assert int.from_bytes(raw[-4:], "little") == store.fletcher32(raw[:-4]), (r, c)
        raw = bytearray(_filtered_chunk(a[:ds.chunks[0], :ds.chunks[1]] + 1, ds.chunks))
        raw[-1] ^= 1  # a wrong checksum
        ds.id.write_direct_chunk((0, 0), bytes(raw))
        with pytest.raises(OSError):
            ds[:1, :1]
    assert parities == {0, 1}


@pytest.mark.parametrize("spec", ["atlas:tiny@random:0", "open_clip:ViT-B-32@random:0"])
def test_weights_cast_once_give_autocasts_results(spec):
    """Mining casts conv/linear/attention weights to bfloat16 once: the same roundings autocast makes at every call,
    so the same outputs; the float32 weights come back afterwards.  On the CPU _model_path does not cast (see
    _cast_once), so the cast itself is checked here with MultiheadAttention's fast path off, as CUDA autocast has
    it (the fast path ignores CPU autocast and computes in float32)."""
    from atlas.mining.loop import _cast_once, _model_path
    from atlas.models import load_model

    model = load_model(spec)
    with torch.no_grad(), _model_path(model, "bfloat16"):
        assert all(p.dtype == torch.float32 for p in model.visual.parameters())  # no cast on the CPU
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        check_cast_once(model, lambda: _cast_once(model.visual, True))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def check_cast_once(model, cast_once):
    spec = str(model.spec)
    if model.device.type == "cuda":  # as _model_path will have it, so that cuDNN picks the same kernels
        model.visual.to(memory_format=torch.channels_last)
    before = {n: p.detach().clone() for n, p in model.visual.named_parameters()}
    x = torch.randn(2, 3, model.image_size, model.image_size, generator=torch.Generator().manual_seed(0))
    x = x.to(model.device)
    with torch.no_grad(), torch.autocast(model.device.type, dtype=torch.bfloat16):
        want = model.clip.encode_image(x)
    with torch.no_grad(), cast_once(), torch.autocast(model.device.type, dtype=torch.bfloat16):
        cast = [n for n, p in model.visual.named_parameters() if p.dtype == torch.bfloat16]
        got = model.clip.encode_image(x)
    assert len(cast) > 10 and any(n.endswith("in_proj_weight") for n in cast) == ("ViT" in spec)
    assert not any("bn" in n or "ln" in n or "embedding" in n for n in cast)  # autocast keeps those float32
    assert torch.equal(got, want)
    for n, p in model.visual.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("spec", ["open_clip:RN50@random:0", "open_clip:ViT-B-32@random:0"])
def test_weights_cast_once_give_autocasts_results_gpu(spec):
    from atlas.mining.loop import _model_path
    from atlas.models import load_model

    model = load_model(spec, device="cuda")  # CUDA autocast turns MultiheadAttention's fast path off
    check_cast_once(model, lambda: _model_path(model, "bfloat16"))
