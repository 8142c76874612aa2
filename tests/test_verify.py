"""Mining against a brute force written here from the documented definitions (open_clip's transform of the decoded
file, an eager float32 forward, forward hooks, the spatial max), and `atlas verify`'s own checks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from atlas import store
from atlas.cli import main
from atlas.config import MineConfig, VerifyConfig
from atlas.data import open_source
from atlas.mining import mine
from atlas.verify import source_of, verify

open_clip = pytest.importorskip("open_clip")


def _jpegs(folder, n: int, seed: int = 0) -> list:
    """Photo-like JPEGs of mixed sizes and aspect ratios (Concept World pictures enlarged, with noise)."""
    folder.mkdir(parents=True, exist_ok=True)
    world = open_source(f"conceptworld:{n}:{seed + 5}")
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(70, 700, 2))
        big = np.asarray(world.sample(i).image.resize((w, h), Image.BICUBIC)).astype(np.int16)
        noisy = (big + rng.normal(0, 6, big.shape)).clip(0, 255).astype(np.uint8)
        p = folder / f"{i:03d}.jpg"
        Image.fromarray(noisy).save(p, quality=int(rng.integers(70, 96)))
        paths.append(p)
    return paths


def brute_force(model, paths, layers):
    """{layer: (score [N, U], mean [N, U])}: each file opened with PIL, open_clip's validation transform, one image
    at a time through the float32 tower, the layer's output read by a forward hook; score = spatial max."""
    transform = open_clip.transform.image_transform(model.image_size, is_train=False, mean=model.mean, std=model.std)
    modules = dict(model.clip.named_modules())
    seen = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
             for n in layers]
    out = {n: ([], []) for n in layers}
    try:
        with torch.no_grad():
            for p in paths:
                model.clip.encode_image(transform(Image.open(p).convert("RGB"))[None])
                for n in layers:
                    a = seen[n]
                    if a.dim() == 3:  # tokens [1, L, D] (batch first): the patch grid, CLS left out
                        a = a[:, 1:, :].transpose(1, 2)
                    a = a.reshape(a.shape[0], a.shape[1], -1).double()  # [1, U, h*w]
                    out[n][0].append(a.amax(2)[0].numpy())
                    out[n][1].append(a.mean(2)[0].numpy())
    finally:
        for h in hooks:
            h.remove()
    return {n: (np.stack(s), np.stack(m)) for n, (s, m) in out.items()}


def assert_store_matches(path, model, paths, layers, top_k, rel=1e-5):
    ref = brute_force(model, paths, layers)
    with store.Store(path) as st:
        for n in layers:
            score, mean = ref[n]
            ld = st.layer(model.name, n)
            values, index = ld["topk/values"], ld["topk/index"]
            scale = np.abs(score).max(0)  # [U]
            for u in range(ld.units):
                got = values[u]
                want = score[index[u], u]
                # ``rel`` relative to the value, or to a tenth of the layer's scale for values near zero (as for the
                # pooled means below): a unit's value is a float32 sum of terms of the layer's scale, exact to about
                # 1e-7 of it whatever the result.  (The unit's own scale is too tight a floor: on a GPU, RN50 random
                # weights, a unit of layer4.2 whose largest value was 9.5e-5 differed by 1.5e-9 at a value of 3.5e-6,
                # a sum whose terms cancelled.)
                floor = 0.1 * scale.max() + 1e-12
                assert np.all(np.abs(got - want) <= rel * np.maximum(np.abs(want), floor)), (n, u)
                # the same top-k set, up to exact ties of the reference at the k-th value
                order = np.lexsort((np.arange(len(score)), -score[:, u]))[:top_k]
                kth = score[order[-1], u]
                assert set(index[u][score[index[u], u] > kth]) == set(order[score[order, u] > kth]), (n, u)
            np.testing.assert_allclose(ld["pooled"], mean, rtol=rel, atol=0.1 * rel * scale.max())


def test_default_mining_of_the_shipped_model_equals_a_brute_force(shipped, tmp_path):
    paths = _jpegs(tmp_path / "jpegs", 80)
    layers = ["visual.layer3.0", "visual.layer4.0"]
    path = tmp_path / "s.h5"
    mine(shipped, open_source(tmp_path / "jpegs"), path, MineConfig(layers=layers, top_k=8, batch_size=16),
         num_workers=2)
    assert_store_matches(path, shipped, paths, layers, 8)


@pytest.mark.slow
@pytest.mark.parametrize("spec,layers", [("open_clip:RN50@random:0", ["visual.layer4.2"]),
                                         ("open_clip:ViT-B-32@random:0", ["visual.transformer.resblocks.11"])])
def test_default_mining_of_real_architectures_equals_a_brute_force(spec, layers, tmp_path):
    from atlas.models import load_model

    model = load_model(spec)
    paths = _jpegs(tmp_path / "jpegs", 24, seed=1)
    path = tmp_path / "s.h5"
    mine(model, open_source(tmp_path / "jpegs"), path, MineConfig(layers=layers, top_k=4, batch_size=8))
    assert_store_matches(path, model, paths, layers, 4)
    r = verify(model, open_source(tmp_path / "jpegs"), path, VerifyConfig(units=16, images=8))
    assert r.ok and r.layers[0].max_rel < 1e-6 and r.layers[0].topk_match == 1.0


@pytest.fixture(scope="module")
def mined(shipped, tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    _jpegs(d / "jpegs", 60, seed=2)
    path = d / "s.h5"
    mine(shipped, open_source(d / "jpegs"), path, MineConfig(layers=["visual.layer4.0"], top_k=6, batch_size=16))
    return d, path


def test_verify_passes_records_and_is_shown(shipped, mined, tmp_path):
    d, path = mined
    r = verify(shipped, source_of(path), path, VerifyConfig(units=24, images=20))
    (c,) = r.layers
    assert r.ok and c.ok and c.topk_match == 1.0 and c.outranked == 0 and c.max_rel < 1e-6
    assert c.units == 24 and c.tolerance == 1e-5 and c.mode == "float32, exact pixels, mined on cpu"
    with store.Store(path) as st:
        rec = st.layer(shipped.name, "visual.layer4.0").check("verify")
        assert rec["ok"] and rec["units"] == 24 and rec["config"]["images"] == 20
        assert len(st.layer(shipped.name, "visual.layer4.0")["verify/units"]) == 24
    from atlas.site import build_site

    build_site([path], tmp_path / "site")
    page = (tmp_path / "site" / shipped.name / "visual.layer4.0" / "index.html").read_text()
    assert "verified: 24 units, 100% same top-6" in page and "mined in float32 from exact pixels" in page
    assert "no non-finite activations" in page


def test_verify_catches_wrong_values_and_wrong_top_k(shipped, mined, tmp_path):
    import shutil

    d, good = mined
    path = tmp_path / "bad.h5"
    shutil.copyfile(good, path)
    with h5py.File(path, "r+") as f:
        g = f[f"neurons/{shipped.name}/visual.layer4.0"]
        values, index = g["topk/values"][()], g["topk/index"][()]
        values[:, 0] *= 1.001  # every unit's best value off by 0.1%
        index[3, -1] = np.setdiff1d(np.arange(60), index[3])[0]  # unit 3: a wrong image in its top-k
        g["topk/values"][...], g["topk/index"][...] = values, index
    r = verify(shipped, source_of(path), path, VerifyConfig(units=2048, images=60), write=False)  # all of both
    (c,) = r.layers
    assert not r.ok and c.max_rel > 5e-4 and c.units == values.shape[0]
    assert 3 in c.mismatched and c.topk_match < 1.0 and c.outranked >= 1  # the image taken out outranks the intruder
    res = CliRunner().invoke(main, ["verify", str(path), "--units", "8", "--images", "8", "--layers",
                                    "visual.layer4.0"])
    assert res.exit_code == 1 and "FAILED" in res.output and "NOT verified" in res.output


def test_verify_refuses_changed_files_and_other_data(shipped, mined, tmp_path):
    import shutil

    d, good = mined
    copy = tmp_path / "jpegs"
    shutil.copytree(d / "jpegs", copy)
    other = tmp_path / "other"
    _jpegs(other, 3, seed=9)
    with pytest.raises(store.StoreError, match="not the ones store"):
        source_of(good, str(other))
    with store.Store(good) as st:
        top = int(st.layer(shipped.name, "visual.layer4.0")["topk/index"][0, 0])
    Image.new("RGB", (90, 90), (1, 2, 3)).save(copy / f"{top:03d}.jpg")
    with pytest.raises(store.StoreError, match=f"{top:03d}.jpg changed since it was mined"):
        verify(shipped, open_source(copy), good, VerifyConfig(units=64, images=0), write=False)
    with pytest.raises(store.StoreError, match="not the generated set"):
        source_of(good, "conceptworld:60:3")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/SKIPS.md)")
@pytest.mark.parametrize("spec,layers", [("open_clip:RN50@random:0", ["visual.layer3.5", "visual.layer4.2"]),
                                         ("open_clip:ViT-B-32@random:0", ["visual.transformer.resblocks.11"])])
def test_float32_mining_equals_a_brute_force_gpu(spec, layers, tmp_path):
    """float32 on CUDA means float32: the fast path (device resize, Triton kernels, CUDA graphs, fused blocks where
    they apply) with TF32 off agrees with the brute force on the CPU within 1e-4 (cuDNN's float32 algorithms differ
    from the CPU's by up to a few 1e-5 of a unit's scale), and TF32 is put back after."""
    from atlas.models import load_model

    model = load_model(spec, device="cuda")
    paths = _jpegs(tmp_path / "jpegs", 96, seed=3)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    mine(model, open_source(tmp_path / "jpegs"), tmp_path / "s.h5",
         MineConfig(layers=layers, top_k=8, batch_size=32, precision="float32"), num_workers=4, resize="device")
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # put back
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    model.clip.cpu()  # the brute force on the CPU: nothing shared with the GPU run but the weights
    assert_store_matches(tmp_path / "s.h5", model, paths, layers, 8, rel=1e-4)
