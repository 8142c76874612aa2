"""Automatic labels: the scorers against independent references, bad input, the store round trip, and the labels of
the shipped model against Concept World's planted concepts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score

from atlas import store
from atlas.attacks.experiments import run_word_sensitivity
from atlas.cli import main
from atlas.config import LabelConfig, MineConfig
from atlas.data import open_source
from atlas.errors import ConfigError, LabelError
from atlas.label_eval import evaluate_labels
from atlas.labels import (average_precision, average_ranks, check_vocabulary, label_units, match_scores,
                          read_vocabulary, vocabulary_probabilities)
from atlas.mining import mine
from atlas.notebook import open_atlas

LAYER = "visual.layer4.0"


@pytest.fixture(scope="module")
def labelled(shipped, tmp_path_factory):
    """The shipped model mined on 2,048 Concept World images (last block), its words report, labelled."""
    path = tmp_path_factory.mktemp("labels") / "cw.h5"
    mine(shipped, open_source("conceptworld:2048:1"), path, MineConfig(layers=(LAYER,), top_k=16), num_workers=0)
    run_word_sensitivity(shipped, path, LAYER)
    result = label_units(shipped, path, config=LabelConfig(bootstrap=50))
    return path, result


def test_average_precision_is_sklearns():
    rng = np.random.default_rng(0)
    for n, ties in ((50, False), (300, True)):
        s = rng.normal(size=n)
        if ties:
            s = np.round(s, 1)  # many tied scores: one threshold each
        y = rng.random(n) < 0.2
        assert abs(float(average_precision(s, y)) - average_precision_score(y, s)) < 1e-12
        w = rng.multinomial(n, np.full(n, 1 / n), size=3)  # bootstrap counts = repeating the images
        for row, ap in zip(w, average_precision(s, y, w)):
            rep = np.repeat(np.arange(n), row)
            assert abs(ap - average_precision_score(y[rep], s[rep])) < 1e-12


def test_match_score_is_rank_correlation_with_clip_dissects_p_brute_force():
    """match = Pearson r of the unit's activation ranks (scipy's rankdata, ties averaged) with the entry's column of
    P, each image's softmax over the vocabulary of scale x cosine, written out here with numpy."""
    rng = np.random.default_rng(1)
    acts, sims = rng.normal(size=(40, 3)), rng.uniform(-1, 1, size=(40, 5))
    acts[:, 1] = np.round(acts[:, 1])  # ties share their mean rank
    acts[:, 2] = 1.5  # a constant unit: NaN, not a number
    sims[:, 4] = -1.0  # an entry far from every image: P underflows float32 but not the float64 path
    for scale in (1.0, 100.0):
        got = match_scores(torch.from_numpy(acts), torch.from_numpy(sims), scale, chunk=2).numpy()
        e = np.exp(scale * (sims - sims.max(1, keepdims=True)))
        p = e / e.sum(1, keepdims=True)  # [40, 5] rows sum to 1
        for u in range(2):
            ranks = rankdata(acts[:, u])
            for c in range(5):
                assert abs(got[u, c] - np.corrcoef(ranks, p[:, c])[0, 1]) < 1e-9
        assert np.isnan(got[2]).all()
    assert np.allclose(average_ranks(torch.from_numpy(acts[:, :2])).numpy(), rankdata(acts[:, :2], axis=0))
    assert np.allclose(vocabulary_probabilities(torch.from_numpy(sims), 100.0).sum(1).numpy(), 1.0)


def test_bad_vocabularies(shipped, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n  \n")
    with pytest.raises(LabelError, match="empty.txt holds no words"):
        read_vocabulary(empty)
    with pytest.raises(LabelError, match="does not exist"):
        read_vocabulary(tmp_path / "missing.txt")
    with pytest.raises(LabelError, match=r"entry 2 of v.txt \('&nbsp;'\) is empty"):  # HTML for a space
        check_vocabulary(shipped, ["cat", "&nbsp;"], ("{}",), "v.txt")
    with pytest.raises(LabelError, match=r"entry 1 of v.txt .* tokens .* reads 16"):
        check_vocabulary(shipped, ["antidisestablishmentarianism " * 3], ("a photo of a {}",), "v.txt")


def test_missing_layer_and_bad_vocab_through_the_cli(labelled, tmp_path):
    path, _ = labelled
    r = CliRunner().invoke(main, ["label", str(path), "--layer", "visual.layer9.9"])
    assert r.exit_code == 1 and "no mined layer visual.layer9.9" in r.output and "--layer one of" in r.output
    empty = tmp_path / "v.txt"
    empty.write_text("")
    r = CliRunner().invoke(main, ["label", str(path), "--vocab", str(empty)])
    assert r.exit_code == 1 and "holds no words" in r.output


def test_labels_round_trip_through_the_store(labelled):
    path, result = labelled
    lab = result.layers[0]
    with store.Store(path) as st:
        g = st.layer("conceptclip", LAYER)
        units = g.labels()
        attrs = g.check("labels")
    assert len(units) == 1024 and attrs["vocab_size"] == len(result.vocab) and attrs["images"] == 2048
    assert LabelConfig(**{**attrs["config"], "templates": tuple(attrs["config"]["templates"])}) == LabelConfig(bootstrap=50)
    for u in (0, 17, 1023):
        assert [x["concept"] for x in units[u]["labels"]] == lab.concept[u]
        assert units[u]["labels"][0]["score"] == pytest.approx(float(lab.score[u, 0]))
        assert units[u]["id"] == f"conceptclip/{LAYER}/{u}"
    # the bootstrap interval holds the AUPRC; every unit was labelled, unchecked ones are counted
    ok = np.isfinite(lab.check_auprc)
    assert ok.sum() + attrs["unchecked_units"] + attrs["dead_units"] == 1024
    assert np.all(lab.check_ci[ok, 0] <= lab.check_auprc[ok] + 1e-6)
    assert np.all(lab.check_auprc[ok] <= lab.check_ci[ok, 1] + 1e-6)
    with open_atlas(path) as a:
        assert a.unit_labels(f"conceptclip/{LAYER}/17") == units[17]
        assert a.unit_labels(LAYER)[5] == units[5]


def test_planted_concepts_get_their_labels(shipped, labelled):
    path, _ = labelled
    r = evaluate_labels(shipped, path, causal_units=16)
    hits, total = r.planted["labels (match + words)"]
    assert total >= 30
    # measured 2026-12-07 on these 2,048 probing images: 24 / 33, precision 281 / 1,024 (with Pearson on raw
    # cosines, before the rank correlation with P: 23 / 33 and 204 on 4,096); the 90% target is not met
    assert hits >= 24 and r.precision["labels (match + words)"][0] >= 270
    const = next(v for k, v in r.precision.items() if k.startswith("baseline: constant"))
    top_ex = r.precision["baseline: top examples' class"]
    assert r.precision["labels (match + words)"][0] > max(const[0], 2 * top_ex[0])
    assert hits > r.planted["baseline: top examples' class"][0]
    # the probing images' own ceiling (AUROC against Concept World's labels): 26 / 33 on these images
    assert r.ceiling is not None and r.ceiling[1] == total and 24 <= r.ceiling[0] <= 28
    assert r.causal[1] == 16 and r.causal[0] >= 10


VOCAB = ["dog", "cat", "red", "blue", "car", "tree", "house", "river", "apple", "banana", "guitar", "piano",
         "mountain", "ocean", "chair", "table", "bird", "fish", "cloud", "stone", "window", "lamp", "shoe", "book"]


def test_nearest_words_are_the_closest_text_embeddings_to_the_unit_directions(tiny_model, small_store, tmp_path):
    """On the random-weight tiny model: the stored nearest words of the last ResNet block equal a brute force (text
    embeddings from encode_text, directions from the pooling run on one-hot inputs); the earlier block has none;
    the neuron page lists them."""
    path = tmp_path / "s.h5"
    path.write_bytes(small_store.read_bytes())
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB))
    config = LabelConfig(bootstrap=10)
    result = label_units(tiny_model, path, vocab_file=vocab_file, config=config)
    # brute force: per entry the mean of its normalized embeddings over the templates, normalized
    with torch.no_grad():
        embs = [tiny_model.encode_text([t.format(w) for w in VOCAB]).double() for t in config.templates]  # [C, D]
        text = sum(e / e.norm(dim=1, keepdim=True) for e in embs)
        text = text / text.norm(dim=1, keepdim=True)
        pool = tiny_model.clip.visual.attnpool
        units = pool.v_proj.in_features
        eye = torch.eye(units)
        dirs = (pool.c_proj(pool.v_proj(eye)) - pool.c_proj(pool.v_proj(torch.zeros(1, units)))).double()  # [U, D]
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    cos = (dirs @ text.t()).numpy()  # [U, C]
    order = np.argsort(-cos, 1)[:, :10]
    with store.Store(path) as st:
        last, first = st.layer("tiny", "visual.layer4.0").labels(), st.layer("tiny", "visual.layer3.0").labels()
    assert len(last) == units
    for u in range(units):
        assert [n["word"] for n in last[u]["nearest"]] == [VOCAB[j] for j in order[u]]
        assert np.abs(np.array([n["cos"] for n in last[u]["nearest"]]) - cos[u, order[u]]).max() < 1e-5
    assert all(row["nearest"] == [] for row in first)
    by_layer = {lab.layer: lab for lab in result.layers}
    assert by_layer["visual.layer3.0"].nearest_words is None
    assert by_layer["visual.layer4.0"].nearest_words[7] == [VOCAB[j] for j in order[7]]
    # the neuron page shows them, with their cosines; the earlier layer's page has no such section
    from atlas.site.render import build_site

    build_site([path], tmp_path / "site")
    page = (tmp_path / "site" / "tiny" / "visual.layer4.0" / "7.html").read_text()
    assert "Closest words to the unit's direction in the text tower" in page
    for j in order[7]:
        assert f'<span class="word">{VOCAB[j]} <small>{cos[7, j]:.4g}</small></span>' in page
    other = (tmp_path / "site" / "tiny" / "visual.layer3.0" / "7.html").read_text()
    assert "Closest words" not in other
    # and both layers' pages show the unit's automatic labels, best first, with the stored scores
    for layer, rows in (("visual.layer4.0", last), ("visual.layer3.0", first)):
        page = (tmp_path / "site" / "tiny" / layer / "7.html").read_text()
        cells = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", page.split('<table class="labels">')[1])
        assert [c for c, _ in cells] == [lab["concept"] for lab in rows[7]["labels"]] and cells, layer
        assert [float(v) for _, v in cells] == [float(f"{lab['score']:.4g}") for lab in rows[7]["labels"]]


def test_probing_images_run_through_the_model(tiny_model, small_store, tmp_path):
    """--probe-data runs the images through the model: on the store's own images with the spatial mean it gives the
    labels of the stored pooled path; --summary max changes the activations, not the images; a bad spec or summary
    is an error that names the option."""
    path = tmp_path / "s.h5"
    path.write_bytes(small_store.read_bytes())
    vocab_file = tmp_path / "vocab.txt"
    vocab_file.write_text("\n".join(VOCAB))
    layer = ["visual.layer4.0"]
    stored = label_units(tiny_model, path, layer, vocab_file, LabelConfig(bootstrap=10), write=False).layers[0]
    rerun = label_units(tiny_model, path, layer, vocab_file, LabelConfig(bootstrap=10, probe_data="synthetic:200"),
                        write=False)
    assert rerun.images == 200 and rerun.left_out == []
    again = rerun.layers[0]
    live = np.isfinite(stored.match[:, 0])  # units constant over the images (ReLU-dead here) have no label
    assert np.array_equal(np.isfinite(again.match[:, 0]), live) and live.sum() > 100
    assert np.abs(again.match[live] - stored.match[live]).max() < 1e-4
    assert np.abs(again.score[live] - stored.score[live]).max() < 1e-3
    assert sum(a[0] == b[0] for a, b in zip(again.concept, stored.concept)) >= 0.95 * len(stored.concept)
    label_units(tiny_model, path, layer, vocab_file, LabelConfig(bootstrap=10, summary="max"))
    with store.Store(path) as st:
        attrs = st.layer("tiny", "visual.layer4.0").check("labels")
    assert attrs["config"]["summary"] == "max" and attrs["images"] == 200
    with pytest.raises(LabelError, match="--probe-data 'nowhere:5'"):
        label_units(tiny_model, path, layer, vocab_file, LabelConfig(bootstrap=10, probe_data="nowhere:5"))
    with pytest.raises(ConfigError, match="summary must be 'mean' or 'max'"):
        LabelConfig(summary="median")
    r = CliRunner().invoke(main, ["label", str(path), "--layer", "visual.layer4.0", "--vocab", str(vocab_file),
                                  "--probe-data", "nowhere:5", "--model", "atlas:tiny@random:0"])
    assert r.exit_code == 1 and "--probe-data 'nowhere:5'" in r.output
