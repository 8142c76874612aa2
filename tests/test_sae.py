"""Sparse autoencoders (atlas.sae, atlas.kernels.sae, atlas.mining.virtual): the forward against a brute force
written here, the trainer's properties, dead-latent accounting, bad input, and the virtual layer through mine ->
store -> site.  Tiny SAEs on CPU."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas import store
from atlas.capture import capture
from atlas.config import MineConfig, SaeConfig
from atlas.data import open_source
from atlas.errors import AtlasError, ConfigError
from atlas.kernels.sae import SaeTensors, decode, dense_code, encode, feature_maps, reference_forward
from atlas.mining import mine
from atlas.names import parse_unit_id, sae_layer, sae_name, split_sae_layer, unit_id
from atlas.sae import SaeError, feature_direction, fit, metrics, train_sae
from atlas.sae.train import _Gathered, _step, dead_update, fired, prefixes

LAYER = "visual.layer4.0"


def random_sae(d=12, width=40, k=5, seed=0) -> SaeTensors:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    return SaeTensors(torch.randn(width, d, generator=g), torch.randn(width, generator=g) * 0.1, w_dec,
                      torch.randn(d, generator=g), k)


def brute_force(x: torch.Tensor, p: SaeTensors) -> tuple[torch.Tensor, torch.Tensor]:
    """Row by row in float64 with plain Python: the k largest pre-activations kept, ReLU, decoder rows summed."""
    z = torch.zeros(x.shape[0], p.width, dtype=torch.float64)
    rec = torch.zeros(x.shape[0], p.d, dtype=torch.float64)
    for i, row in enumerate(x.double()):
        pre = [float(p.w_enc[f].double() @ (row - p.b_pre.double()) + p.b_enc[f]) for f in range(p.width)]
        for f in sorted(range(p.width), key=lambda f: -pre[f])[:p.k]:
            z[i, f] = max(pre[f], 0.0)
        rec[i] = sum(z[i, f] * p.w_dec[f].double() for f in range(p.width)) + p.b_pre.double()
    return z, rec


def test_forward_matches_brute_force():
    p = random_sae()
    x = torch.randn(9, p.d, generator=torch.Generator().manual_seed(1)) * 2
    z_ref, rec_ref = brute_force(x, p)
    vals, idx = encode(x, p)
    assert torch.allclose(dense_code(vals, idx, p.width).double(), z_ref, atol=1e-5)
    assert torch.allclose(decode(vals, idx, p).double(), rec_ref, atol=1e-5)
    z_dense, rec_dense = reference_forward(x, p)
    assert torch.allclose(z_dense.double(), z_ref, atol=1e-5) and torch.allclose(rec_dense.double(), rec_ref, atol=1e-5)
    maps = x.reshape(3, 3, p.d).permute(0, 2, 1).reshape(3, p.d, 3, 1)  # [B, d, h, w]: 3 images of 3 positions
    fm = feature_maps(maps, p, chunk=4)  # [3, F, 3, 1]
    assert torch.allclose(fm.permute(0, 2, 3, 1).reshape(9, p.width).double(), z_ref, atol=1e-5)


def test_topk_keeps_exactly_k():
    p = random_sae(k=7)
    x = torch.randn(50, p.d)
    vals, idx = encode(x, p)
    assert idx.shape == (50, 7)
    assert all(len(set(r)) == 7 for r in idx.tolist())  # k distinct latents per input
    assert ((dense_code(vals, idx, p.width) > 0).sum(1) <= 7).all()
    shifted = SaeTensors(p.w_enc, p.b_enc + 100.0, p.w_dec, p.b_pre, p.k)  # every pre-activation positive
    vals, idx = encode(x, shifted)
    assert ((dense_code(vals, idx, p.width) > 0).sum(1) == 7).all()


def test_sparse_gradients_equal_dense_autograd():
    p = random_sae()
    x = torch.randn(16, p.d)
    dense = {k: getattr(p, k).clone().requires_grad_() for k in ("w_enc", "b_enc", "w_dec", "b_pre")}
    sparse = {k: getattr(p, k).clone().requires_grad_() for k in ("w_enc", "b_enc", "w_dec", "b_pre")}
    z, rec = reference_forward(x, SaeTensors(**dense, k=p.k))
    (x - rec).pow(2).sum().backward()
    xc = x - sparse["b_pre"]
    with torch.no_grad():
        vals, idx = (xc @ sparse["w_enc"].t() + sparse["b_enc"]).topk(p.k, dim=1)
    zz = _Gathered.apply(vals, xc, sparse["w_enc"], sparse["b_enc"], idx).clamp_min(0)
    (x - decode(zz, idx, SaeTensors(**sparse, k=p.k))).pow(2).sum().backward()
    for k in dense:
        assert torch.allclose(dense[k].grad, sparse[k].grad, atol=1e-4), k


def sparse_data(n=6000, d=16, atoms=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=g)
    code = (torch.rand(n, atoms, generator=g) < 0.08) * torch.rand(n, atoms, generator=g) * 3
    return code @ dictionary + 1.0


def test_loss_falls_and_reconstruction_beats_the_mean():
    x = sparse_data()
    cfg = SaeConfig(layer="l", width="3x", k=4, steps=150, batch=128, lr=2e-3, dead_after=3000)
    r = fit(x[:5000], 48, cfg)
    assert r.losses[-1] < 0.6 * r.losses[0]
    m = metrics(x[5000:], r.sae)
    assert m["fve"] > 0.5  # held out: far better than predicting the mean (FVE 0)
    assert abs(m["l0"] - 4) < 1e-9 or m["l0"] <= 4
    assert torch.allclose(r.sae.w_dec.norm(dim=1), torch.ones(48), atol=1e-4)  # unit-norm decoder rows


def test_matryoshka_loss_is_the_mean_over_nested_prefixes():
    """With matryoshka 3 the loss is the mean of the normalized errors of the first F/4, F/2 and F features, each
    decoded alone from the same TopK code (the brute force written above, truncated)."""
    p = random_sae(width=40, k=6)
    x = torch.randn(10, p.d)
    z, _ = brute_force(x, p)
    var = 2.5
    expect = np.mean([float((x.double() - z[:, :m] @ p.w_dec[:m].double() - p.b_pre.double()).pow(2).sum(1).mean())
                      / var for m in (10, 20, 40)])
    params = {k: getattr(p, k).clone().requires_grad_() for k in ("w_enc", "b_enc", "w_dec", "b_pre")}
    cfg = SaeConfig(layer="l", width="40", k=6, aux_k=0, matryoshka=3)
    loss = _step(x, params, torch.zeros(40, dtype=torch.int64), cfg, var, False)
    assert prefixes(40, 3) == [10, 20, 40]
    assert abs(float(loss.detach()) - expect) < 1e-4 * expect
    loss.backward()  # the sparse backward takes the prefixes' masks
    assert torch.isfinite(params["w_enc"].grad).all() and float(params["w_enc"].grad.abs().sum()) > 0


def test_matryoshka_prefix_reconstructs_alone():
    """Trained with nested prefixes, the first quarter of the features reconstructs held-out inputs alone far better
    than the first quarter of a plain SAE trained the same way (whose features are in no order)."""
    x = sparse_data()

    def prefix_fve(n):
        r = fit(x[:5000], 48, SaeConfig(layer="l", width="3x", k=4, steps=150, batch=128, lr=2e-3, dead_after=3000,
                                        matryoshka=n))
        vals, idx = encode(x[5000:], r.sae)
        rec = decode(vals * (idx < 12), idx, r.sae)
        return 1 - float((x[5000:] - rec).pow(2).sum() / (x[5000:] - x[5000:].mean(0)).pow(2).sum())

    plain, nested = prefix_fve(1), prefix_fve(3)
    assert nested > plain + 0.1, (plain, nested)


def test_dead_latent_accounting_brute_force():
    g = torch.Generator().manual_seed(3)
    width, since = 10, torch.zeros(10, dtype=torch.int64)
    last = [None] * width  # brute force: the input count at which each latent last fired
    seen = 0
    fires = [0] * width
    for _ in range(6):
        n = int(torch.randint(1, 5, (1,), generator=g))
        idx = torch.stack([torch.randperm(width, generator=g)[:3] for _ in range(n)])  # [n, 3]
        vals = torch.rand(n, 3, generator=g) - 0.4  # some <= 0: not fired
        dead_update(since, vals, idx)
        for i in range(n):
            for j in range(3):
                if vals[i, j] > 0:
                    last[int(idx[i, j])] = seen + n
                    fires[int(idx[i, j])] += 1
        seen += n
        expect = [seen - (last[f] if last[f] is not None else 0) for f in range(width)]
        assert since.tolist() == expect
        assert fired(vals, idx, width).tolist() == [int(((idx == f) & (vals > 0)).sum()) for f in range(width)]
    x = torch.randn(30, 12)
    p = random_sae(width=40)
    vals, idx = encode(x, p)
    never = [f for f in range(40) if not any(vals[i, j] > 0 and idx[i, j] == f for i in range(30) for j in range(p.k))]
    assert metrics(x, p)["dead_fraction"] == pytest.approx(len(never) / 40)


def test_names_of_virtual_layers():
    assert sae_name(16384) == "sae16k" and sae_name(96) == "sae96"
    assert sae_layer(LAYER, 16384) == "visual.layer4.0/sae16k"
    assert split_sae_layer("visual.layer4.0/sae16k") == (LAYER, "sae16k") and split_sae_layer(LAYER) is None
    uid = unit_id("conceptclip", "visual.layer4.0/sae16k", 123)
    assert uid == "conceptclip/visual.layer4.0/sae16k/123"
    assert parse_unit_id(uid) == ("conceptclip", "visual.layer4.0/sae16k", 123)
    with pytest.raises(KeyError):
        parse_unit_id("conceptclip/visual.layer4.0/other/1")


@pytest.mark.parametrize("kwargs, says", [({"width": "0"}, "--width"), ({"width": "abc"}, "--width"),
                                          ({"width": "8", "k": 9}, "--k"), ({"k": 0}, "--k"),
                                          ({"matryoshka": 0}, "--matryoshka")])
def test_bad_config(kwargs, says):
    with pytest.raises(ConfigError, match=says):
        SaeConfig(layer=LAYER, **kwargs)


def test_matryoshka_prefixes_must_hold_a_feature():
    assert SaeConfig(layer=LAYER, width="8", k=1, matryoshka=4).features(16) == 8  # prefixes 1, 2, 4, 8
    with pytest.raises(ConfigError, match="--matryoshka 5"):
        SaeConfig(layer=LAYER, width="8", k=1, matryoshka=5).features(16)


def test_bad_width_for_the_layer_and_nan():
    with pytest.raises(ConfigError, match="--k 40 is more than the 32 features"):
        SaeConfig(layer=LAYER, width="2x", k=40).features(16)
    x = torch.randn(100, 8)
    x[3, 2] = float("nan")
    with pytest.raises(SaeError, match="NaN"):
        fit(x, 16, SaeConfig(layer=LAYER, width="16", k=2, steps=2))


@pytest.fixture(scope="module")
def sae_store(tiny_model, tmp_path_factory):
    """64 synthetic images, layer4.0 mined; an SAE of 96 features trained on it; its virtual layer mined."""
    path = tmp_path_factory.mktemp("sae") / "s.h5"
    source = open_source("synthetic:64")
    mine(tiny_model, source, path, MineConfig(layers=(LAYER,), top_k=4, batch_size=16))
    r = train_sae(tiny_model, path, SaeConfig(layer=LAYER, width="96", k=4, steps=30, batch=64, dead_after=500))
    mine(tiny_model, source, path, MineConfig(layers=(r.layer,), top_k=4, batch_size=16))
    return path, r


def test_train_writes_weights_and_figures(sae_store, tiny_model):
    path, r = sae_store
    assert r.layer == "visual.layer4.0/sae96" and r.width == 96
    assert r.path == store.sae_path(path, tiny_model.name, r.layer) and r.path.is_file()
    arrays, meta = store.read_sae(path, tiny_model.name, r.layer, tiny_model.weights_sha256)
    assert arrays["w_dec"].shape == (96, tiny_model.layer(LAYER).units)
    assert meta["config"]["k"] == 4 and meta["layer"] == LAYER and 0 <= meta["metrics"]["dead_fraction"] <= 1
    d = feature_direction(path, f"{tiny_model.name}/{r.layer}/5")
    assert torch.allclose(d, torch.from_numpy(arrays["w_dec"][5])) and abs(float(d.norm()) - 1) < 1e-4


def test_virtual_layer_mined_like_a_real_one(sae_store, tiny_model):
    """The stored top-k of every feature equals a brute force: the layer captured, every position encoded with
    the plain formula, the spatial max per image."""
    path, r = sae_store
    sae, _ = __import__("atlas.sae", fromlist=["load_sae"]).load_sae(path, tiny_model.name, r.layer)
    source = open_source("synthetic:64")
    x = torch.stack([tiny_model.preprocess(source.sample(i).image) for i in range(64)])
    with torch.no_grad():
        a = capture(tiny_model.clip, [LAYER], lambda: tiny_model.encode_image(x))[LAYER].float()  # [64, d, h, w]
    rows = a.permute(0, 2, 3, 1).reshape(-1, a.shape[1])
    z, _ = reference_forward(rows, sae)
    score = z.reshape(64, -1, 96).amax(1)  # [64, F]
    with store.Store(path) as st:
        ld = st.layer(tiny_model.name, r.layer)
        assert ld.kind == "sae" and ld.units == 96 and ld.grid == tiny_model.layer(LAYER).grid
        assert [x.name for x in st.layers(tiny_model.name)] == [LAYER, r.layer]
        values, index = ld["topk/values"], ld["topk/index"]
        live = values[:, 0] > 0
        expect = score.t().sort(dim=1, descending=True).values[:, :4].numpy()
        assert np.allclose(values[live], expect[live], atol=1e-4)
        assert np.allclose(score.numpy()[index[live, 0], np.nonzero(live)[0]], values[live, 0], atol=1e-4)
        assert np.allclose(ld["pooled"], z.reshape(64, -1, 96).mean(1).numpy(), atol=1e-4)
        w = ld["sae/neurons"]
        assert (np.abs(sae.w_dec.numpy()[np.arange(96)[:, None], w]).min(1)
                >= np.sort(np.abs(sae.w_dec.numpy()), 1)[:, -w.shape[1]] - 1e-6).all()


def test_virtual_layer_pages_and_links(sae_store, tiny_model, tmp_path):
    from atlas.site.render import build_site

    path, r = sae_store
    build_site([path], tmp_path / "site")
    page = tmp_path / "site" / tiny_model.name / LAYER / "sae96" / "3.html"
    html = page.read_text()
    with store.Store(path) as st:
        n = int(st.layer(tiny_model.name, r.layer)["sae/neurons"][3, 0])
        f = int(st.layer(tiny_model.name, r.layer)["sae/features"][n, 0])
    assert f'href="../../../{tiny_model.name}/{LAYER}/{n}.html"' in html  # the feature -> its neuron
    neuron = (tmp_path / "site" / tiny_model.name / LAYER / f"{n}.html").read_text()
    assert f'href="../../{tiny_model.name}/{LAYER}/sae96/{f}.html"' in neuron  # the neuron -> its feature
    assert (tmp_path / "site" / "search" / tiny_model.name / LAYER / "sae96.js").is_file()


def test_bad_store_inputs(sae_store, tiny_model, tmp_path):
    path, r = sae_store
    with pytest.raises(SaeError, match="--layer visual.layer3.0 is not mined"):
        train_sae(tiny_model, path, SaeConfig(layer="visual.layer3.0", width="8", k=2, steps=1))
    with pytest.raises(AtlasError, match="no hookable layer"):
        train_sae(tiny_model, path, SaeConfig(layer="visual.nothing", width="8", k=2, steps=1))
    copy = tmp_path / "c.h5"
    shutil.copy(path, copy)
    other = store.sae_path(copy, tiny_model.name, "visual.layer3.0/sae96")
    other.parent.mkdir(parents=True)
    shutil.copy(store.sae_path(path, tiny_model.name, r.layer), other)  # an SAE of layer4.0 under layer3.0's name
    with pytest.raises(store.SaeFileError, match="virtual_layer differs"):
        store.read_sae(copy, tiny_model.name, "visual.layer3.0/sae96")
    with pytest.raises(store.SaeFileError, match="weights_sha256 differs"):
        store.read_sae(path, tiny_model.name, r.layer, "0" * 64)
    with pytest.raises(store.SaeFileError, match="atlas sae train"):
        mine(tiny_model, open_source("synthetic:64"), copy, MineConfig(layers=("visual.layer4.0/sae8",), top_k=4,
                                                                         batch_size=16))


def test_cli_train(sae_store, tmp_path):
    from atlas.cli import main

    path, _ = sae_store
    copy = tmp_path / "s.h5"
    shutil.copy(path, copy)
    res = CliRunner().invoke(main, ["sae", "train", "--store", str(copy), "--layer", LAYER, "--width", "64",
                                    "--k", "3", "--steps", "5", "--batch", "32", "--matryoshka", "3", "--no-eval"])
    assert res.exit_code == 0, res.output
    assert "visual.layer4.0/sae64" in res.output and "fraction of variance explained" in res.output
    assert store.read_sae(copy, "tiny", "visual.layer4.0/sae64")[1]["config"]["matryoshka"] == 3  # in the weights file
    # a wide SAE's layer mined with --map-size 1: per example (value, image, peak position) and a 1 x 1 map, which
    # is the example's spatial mean: the same number as its row of the pooled matrix
    res = CliRunner().invoke(main, ["mine", "--model", "atlas:tiny@random:0", "--data", "synthetic:64", "--store",
                                    str(copy), "--layers", "visual.layer4.0/sae64", "--top-k", "4", "--map-size", "1",
                                    "--workers", "0", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    with store.Store(copy) as st:
        ld = st.layer("tiny", "visual.layer4.0/sae64")
        maps, index, values, pooled = ld["topk/maps"], ld["topk/index"], ld["topk/values"], ld["pooled"]
        assert maps.shape == (64, 4, 1, 1) and ld["topk/argmax"].shape == (64, 4)
        live = values > 0
        assert np.allclose(maps[..., 0, 0][live], pooled[index[live], np.nonzero(live)[0]], atol=1e-5)
    res = CliRunner().invoke(main, ["sae", "train", "--store", str(copy), "--layer", LAYER, "--width", "4",
                                    "--k", "8"])
    assert res.exit_code == 1 and "--k 8 is more than --width 4" in res.output


def test_labels_and_search_cover_the_virtual_layer(sae_store, tiny_model, tmp_path):
    """`atlas label` labels the features like neurons; their nearest words come from the decoder rows carried
    through the neurons' embedding directions (checked here by brute force); `atlas search` finds a feature by id."""
    from atlas.config import LabelConfig
    from atlas.labels import label_units
    from atlas.sae import load_sae
    from atlas.search import embedding_directions, search, unit_directions

    path, r = sae_store
    copy = tmp_path / "s.h5"
    shutil.copy(path, copy)
    shutil.copytree(path.with_name(path.name + ".sae"), copy.with_name(copy.name + ".sae"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["dog", "cat", "red", "blue", "car", "tree", "house", "river", "apple", "bird",
                                "fish", "cloud"]))
    label_units(tiny_model, copy, layers=[r.layer], vocab_file=vocab, config=LabelConfig(bootstrap=10))
    from atlas.errors import LabelError

    with pytest.raises(LabelError, match="SAE's virtual layer: label it from the store's pooled"):  # no module to hook
        label_units(tiny_model, copy, [r.layer], vocab, LabelConfig(bootstrap=10, summary="max"))
    with store.Store(copy) as st:
        labels = st.layer(tiny_model.name, r.layer).labels()
    assert len(labels) == 96 and labels[0]["id"] == f"{tiny_model.name}/{r.layer}/0"
    sae, _ = load_sae(copy, tiny_model.name, r.layer)
    base = embedding_directions(tiny_model, LAYER)  # [d, D], unit rows
    f = 5
    expect = sum(float(sae.w_dec[f, u]) * base[u] for u in range(base.shape[0]))
    got = unit_directions(tiny_model, copy, r.layer)[f]
    assert np.allclose(got, expect / np.linalg.norm(expect), atol=1e-6)
    hits = search(copy, f"{tiny_model.name}/{r.layer}/7", layer=r.layer).hits
    assert hits and hits[0].unit == 7


def test_concepts_per_unit_brute_force():
    """The polysemanticity figure: per unit, concepts with AUROC >= 0.8 as a pictogram or as a word, against a
    pairwise-count AUROC written here."""
    from atlas.data.conceptworld import CONCEPT_NAMES
    from atlas.sae.fidelity import best_single, concepts_per_unit

    rng = np.random.default_rng(0)
    c = len(CONCEPT_NAMES)
    concept = np.repeat(np.arange(c), 4)
    is_word = np.tile([False, True, False, True], c)
    scores = torch.from_numpy(rng.normal(size=(len(concept), 3)))
    scores[concept == 2, 0] += 5  # unit 0 detects concept 2 (both forms)
    scores[(concept == 5) & is_word, 1] += 5  # unit 1 detects concept 5 as a word only
    s = scores.numpy()

    def auc(pos, neg):
        return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])

    expect, picto, word = np.zeros(3, int), set(), set()
    for k in range(c):
        for u in range(3):
            a = [auc(s[(concept == k) & (is_word == w), u], s[(concept != k) & (is_word == w), u]) for w in (False, True)]
            expect[u] += max(a) >= 0.8
            picto |= {k} if a[0] >= 0.9 else set()
            word |= {k} if a[1] >= 0.9 else set()
    assert concepts_per_unit(scores, concept, is_word).tolist() == expect.tolist()
    assert expect[0] >= 1 and expect[1] >= 1
    assert best_single(scores, concept, is_word, 0.9) == (len(picto), len(word))


def test_chance_multimodal_counts_coincidences():
    """Monosemantic units (unit c: concept c, both forms) are multimodal for every concept and for none once the
    words are given to another concept; units for every (pictogram concept, word concept) pair reach every concept
    either way: the chance figure is all coincidence."""
    from atlas.data.conceptworld import CONCEPT_NAMES
    from atlas.sae.fidelity import chance_multimodal, derangement

    c = len(CONCEPT_NAMES)
    concept, is_word = np.repeat(np.arange(c), 4), np.tile([False, True, False, True], c)
    mono = torch.from_numpy((concept[:, None] == np.arange(c)[None, :]).astype(np.float64))
    assert chance_multimodal("l", mono, concept, is_word) == 0.0
    a, b = np.meshgrid(np.arange(c), np.arange(c), indexing="ij")  # unit (a, b): pictograms of a, words of b
    pairs = np.where(is_word[:, None], concept[:, None] == b.reshape(1, -1), concept[:, None] == a.reshape(1, -1))
    assert chance_multimodal("l", torch.from_numpy(pairs.astype(np.float64)), concept, is_word, trials=2) == c
    perm = derangement(c, np.random.default_rng(3))
    assert sorted(perm.tolist()) == list(range(c)) and (perm != np.arange(c)).all()


def test_features_rendered_with_their_decoder_rows(sae_store, tiny_model, tmp_path):
    """`featurevis` of an SAE's layer renders each feature with the direction objective of its decoder row at the
    SAE's layer; checked independently: lucent's direction objective (mean over positions of the cosine between the
    decoder row and the activations, at the layer's pre-activation as atlas's channel objective reads it),
    recomputed here with a plain forward pre-hook on the stored uint8 image, and rising above a grey image's."""
    from atlas.config import FeatureVisConfig
    from atlas.featurevis import featurevis
    from atlas.site.render import build_site

    path, r = sae_store
    copy = tmp_path / "f.h5"
    shutil.copy(path, copy)
    shutil.copytree(store.sae_path(path, tiny_model.name, r.layer).parents[2],
                    store.sae_path(copy, tiny_model.name, r.layer).parents[2])
    cfg = FeatureVisConfig(steps=64, batch=2, size=48, lr=0.1)
    out = featurevis(tiny_model, copy, r.layer, units=[3, 5], config=cfg, fast=None)
    assert (out.layer, out.rendered, out.reused) == (r.layer, 2, 0)
    with store.Store(copy) as st:
        vis = st.layer(tiny_model.name, r.layer).visualizations("direction", "decoder")
        assert np.nonzero(vis.done)[0].tolist() == [3, 5]
    w_dec = store.read_sae(copy, tiny_model.name, r.layer)[0]["w_dec"][[3, 5]]  # [2, d]
    info = tiny_model.layer(LAYER)
    seen = {}
    module = dict(tiny_model.clip.named_modules())[info.pre_activation or LAYER]
    handle = module.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach().clone()))  # ReLU in place
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073])[None, :, None, None]
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711])[None, :, None, None]

    def lucent_direction(img: torch.Tensor) -> torch.Tensor:  # img [B, 3, s, s] in [0, 1]
        x = torch.nn.functional.interpolate(img, size=(tiny_model.image_size,) * 2, mode="bilinear",
                                            align_corners=False)
        with torch.no_grad():
            tiny_model.clip.encode_image((x - mean) / std)
        cos = torch.nn.functional.cosine_similarity(seen["x"], torch.from_numpy(w_dec)[:, :, None, None], dim=1)
        return cos.mean((1, 2))  # [B]

    try:
        img = torch.from_numpy(vis.images[[3, 5]]).permute(0, 3, 1, 2).float() / 255
        got, grey = lucent_direction(img), lucent_direction(torch.full_like(img, 0.5))
    finally:
        handle.remove()
    assert np.allclose(got.numpy(), vis.objective[[3, 5]], atol=0.03), (got, vis.objective[[3, 5]])
    assert (got > grey + 0.01).all(), (got, grey)  # the render raised it (tiny random model: +0.02 to +0.04)
    with pytest.raises(ConfigError, match="decoder rows"):
        featurevis(tiny_model, copy, r.layer, units=[3], config=cfg, kind=__import__(
            "atlas.config", fromlist=["KindConfig"]).KindConfig(kind="neuron"))
    with pytest.raises(ConfigError, match="has 96 features"):
        featurevis(tiny_model, copy, r.layer, units=[96], config=cfg)
    build_site([copy], tmp_path / "site")
    page = (tmp_path / "site" / tiny_model.name / LAYER / "sae96" / "3.html").read_text()
    assert "fv-direction-decoder/3.png" in page
    assert (tmp_path / "site" / tiny_model.name / LAYER / "sae96" / "fv-direction-decoder" / "3.png").is_file()


def test_verify_checks_the_virtual_layer_against_the_formula(sae_store, tiny_model, tmp_path):
    """`atlas verify` on an SAE's layer: the base layer's maps from the reference path, the SAE's formula in float64;
    the stored top-k agree, and a changed stored value is caught."""
    import h5py

    from atlas.config import VerifyConfig
    from atlas.verify import verify

    path, r = sae_store
    copy = tmp_path / "v.h5"
    shutil.copy(path, copy)
    shutil.copytree(f"{path}.sae", f"{copy}.sae")
    source = open_source("synthetic:64")
    res = verify(tiny_model, source, copy, VerifyConfig(units=96, images=16), layers=[r.layer], write=False)
    (check,) = res.layers
    assert check.layer == r.layer and check.units == 96 and check.ok, check.line()
    assert check.topk_match == 1.0 and check.max_rel < 1e-5
    with h5py.File(copy, "r+") as f:
        g = f[f"neurons/{tiny_model.name}/{r.layer}"]
        live = int(np.nonzero(g["topk/values"][:, 0] > 0)[0][0])
        g["topk/values"][live, 0] *= 1.05
    bad = verify(tiny_model, source, copy, VerifyConfig(units=96, images=16), layers=[r.layer], write=False)
    assert not bad.layers[0].ok and bad.layers[0].max_rel > 0.01


@pytest.mark.parametrize("n_dead", [1, 3, 20, 39, 40])
def test_dead_topk_is_the_masked_topk(n_dead):
    from atlas.sae.train import dead_topk

    g = torch.Generator().manual_seed(n_dead)
    pre = torch.randn(50, 40, generator=g)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.randperm(40, generator=g)[:n_dead]] = True
    k = min(8, n_dead)
    vals, idx = dead_topk(pre, dead, k)
    # brute force per row: the dead latents sorted by value, the k largest
    for r in range(50):
        want = sorted(((float(pre[r, f]), f) for f in range(40) if dead[f]), reverse=True)[:k]
        assert [f for _, f in want] == idx[r].tolist()
        assert torch.equal(vals[r], pre[r, idx[r]])
