"""`atlas maps` (atlas.replay): top examples' maps recomputed for a layer mined with 1 x 1 maps equal the maps mining
keeps at full size (real and SAE layers), and a numpy brute force of adaptive average pooling written here from
its definition; the store, site, export and notebook read them; bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas import store
from atlas.cli import main
from atlas.config import MineConfig, SaeConfig
from atlas.data import open_source
from atlas.errors import AtlasError
from atlas.mining import mine
from atlas.replay import fill_maps, fill_store_maps, replay_maps
from atlas.sae import train_sae

LAYER = "visual.layer3.0"  # 4 x 4 on the tiny model: maps of 2 x 2 pool windows


def pooled_brute_force(a: np.ndarray, mh: int, mw: int) -> np.ndarray:
    """Adaptive average pooling by its definition: cell (i, j) averages rows floor(i h / mh) .. ceil((i + 1) h / mh)
    - 1 and the same for columns."""
    h, w = a.shape
    out = np.zeros((mh, mw))
    for i in range(mh):
        for j in range(mw):
            r0, r1 = (i * h) // mh, math.ceil((i + 1) * h / mh)
            c0, c1 = (j * w) // mw, math.ceil((j + 1) * w / mw)
            out[i, j] = a[r0:r1, c0:c1].astype(np.float64).mean()
    return out


@pytest.fixture(scope="module")
def stores(tiny_model, tmp_path_factory):
    """The same 48 images mined twice: with 1 x 1 maps and with full maps (map_size 8 >= the grid)."""
    d = tmp_path_factory.mktemp("replay")
    source = open_source("synthetic:48")
    small, full = d / "small.h5", d / "full.h5"
    mine(tiny_model, source, small, MineConfig(layers=(LAYER,), top_k=5, batch_size=16, map_size=1))
    mine(tiny_model, source, full, MineConfig(layers=(LAYER,), top_k=5, batch_size=16, map_size=8))
    return source, small, full


def test_replayed_maps_equal_full_maps_and_the_brute_force(tiny_model, stores):
    source, small, full = stores
    units = np.array([0, 3, 7, 15])
    got = replay_maps(tiny_model, source, small, LAYER, units, map_size=8)
    with store.Store(full) as st:
        ld = st.layer(tiny_model.name, LAYER)
        want, index = ld["topk/maps"][units], ld["topk/index"][units]
    with store.Store(small) as st:
        assert np.array_equal(st.layer(tiny_model.name, LAYER)["topk/index"][units], index)
        assert st.layer(tiny_model.name, LAYER)["topk/maps"].shape[2:] == (1, 1)
    assert got.shape == want.shape == (4, 5, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the brute force: one plain forward of the unit's top image with a hook, pooled by the definition to 2 x 2
    img = int(index[1, 0])
    x = tiny_model.preprocess(source.sample(img).image)[None]
    module = dict(tiny_model.clip.named_modules())[LAYER]
    caught = []
    hook = module.register_forward_hook(lambda _m, _i, out: caught.append(out.detach()))
    with torch.no_grad():
        tiny_model.clip.encode_image(x)
    hook.remove()
    acts = caught[0]  # [1, U, 4, 4]
    two = replay_maps(tiny_model, source, small, LAYER, [3], map_size=2)
    np.testing.assert_allclose(two[0, 0], pooled_brute_force(acts[0, 3].numpy(), 2, 2), rtol=1e-5, atol=1e-6)


def test_fill_writes_maps_that_site_export_and_notebook_read(tiny_model, stores, tmp_path):
    import shutil

    source, small, _ = stores
    path = tmp_path / "s.h5"
    shutil.copy(small, path)
    n = fill_maps(tiny_model, source, path, LAYER, [2, 5], map_size=8, block=1)
    assert n == 2
    with store.Store(path) as st:
        ld = st.layer(tiny_model.name, LAYER)
        assert ld.replayed().nonzero()[0].tolist() == [2, 5]
        maps = ld.example_maps(0, 6)
        assert [m.shape for m in maps] == [(5, 1, 1)] * 2 + [(5, 4, 4)] + [(5, 1, 1)] * 2 + [(5, 4, 4)]
        np.testing.assert_allclose(maps[2].mean(axis=(1, 2)), ld["topk/maps"][2][:, 0, 0], rtol=1e-5, atol=1e-6)
    # the notebook and the export show the 4 x 4 maps of unit 2
    import atlas

    a = atlas.open(path)
    assert a.neuron(LAYER, 2).examples[0].map.shape == (4, 4)
    r = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "ex"), "--layer", LAYER])
    assert r.exit_code == 0, r.output
    import gzip

    recs = [json.loads(line) for f in sorted((tmp_path / "ex").rglob("activations/*.jsonl.gz"))
            for line in gzip.open(f, "rt")]
    by = {(rec["index"], rec["rank"]): rec for rec in recs}
    assert np.array(by[(2, 1)]["heatmap"]).shape == (4, 4) and np.array(by[(3, 1)]["heatmap"]).shape == (1, 1)
    # maps of another size replace the replayed group whole
    fill_maps(tiny_model, source, path, LAYER, [4], map_size=2)
    with store.Store(path) as st:
        ld = st.layer(tiny_model.name, LAYER)
        assert ld.replayed().nonzero()[0].tolist() == [4] and ld.example_maps(4, 5)[0].shape == (5, 2, 2)


def test_sae_layer_replayed_like_mined(tiny_model, tmp_path):
    source = open_source("synthetic:40")
    path, full = tmp_path / "s.h5", tmp_path / "f.h5"
    mine(tiny_model, source, path, MineConfig(layers=(LAYER,), top_k=4, batch_size=16))
    r = train_sae(tiny_model, path, SaeConfig(layer=LAYER, width="64", k=4, steps=20, batch=64, dead_after=500),
                  evaluate=False)
    import shutil

    shutil.copy(path, full)
    shutil.copytree(f"{path}.sae", f"{full}.sae")
    mine(tiny_model, source, path, MineConfig(layers=(r.layer,), top_k=4, batch_size=16, map_size=1))
    mine(tiny_model, source, full, MineConfig(layers=(r.layer,), top_k=4, batch_size=16, map_size=8))
    with store.Store(full) as st:
        ld = st.layer(tiny_model.name, r.layer)
        live = np.nonzero(ld["topk/index"][:, 0] >= 0)[0][:6]  # features that fired on some image
        want = ld["topk/maps"][live]
    got = replay_maps(tiny_model, source, path, r.layer, live, map_size=8)
    assert len(live) and got.shape == want.shape
    np.testing.assert_allclose(np.nan_to_num(got), np.nan_to_num(want), rtol=1e-4, atol=1e-5)


def test_cli_and_bad_input(tiny_model, stores, tmp_path):
    import shutil

    _, small, _ = stores
    path = tmp_path / "s.h5"
    shutil.copy(small, path)
    r = CliRunner().invoke(main, ["maps", str(path), "--layer", LAYER, "--units", "0-3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "maps of 4 units of visual.layer3.0 recomputed" in r.output
    with store.Store(path) as st:
        assert st.layer(tiny_model.name, LAYER).replayed().sum() == 4
    units = tiny_model.layer(LAYER).units
    r = CliRunner().invoke(main, ["maps", str(path), "--layer", LAYER, "--units", str(units)])
    assert r.exit_code != 0 and f"--units: layer visual.layer3.0 has units 0..{units - 1}" in r.output
    r = CliRunner().invoke(main, ["maps", str(path), "--layer", "visual.layer2.0"])
    assert r.exit_code != 0 and "has no layer" in r.output
    with pytest.raises(AtlasError, match="has units 0.."):
        fill_store_maps(path, LAYER, [-1], device="cpu")
