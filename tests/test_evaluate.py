"""Multimodal-neuron evaluation: the held-out split, AUROCs against a brute force, in-sample vs held-out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.cli import main
from atlas.data.conceptworld import CONCEPT_NAMES
from atlas.evaluate import (ConceptNeurons, ConceptReport, concept_neurons, layer_scores, neurons_from_scores,
                            concept_test_images, report_markdown, selection_half)

C = len(CONCEPT_NAMES)


def probe_labels(per_group: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """per_group images of every (concept, pictogram or word), in a shuffled order."""
    concept = np.repeat(np.arange(C), 2 * per_group)
    is_word = np.tile(np.repeat([False, True], per_group), C)
    order = np.random.default_rng(seed).permutation(len(concept))
    return concept[order], is_word[order]


def brute_auroc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half: every pair, one by one."""
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def brute_halves(concept: np.ndarray, is_word: np.ndarray) -> np.ndarray:
    """The documented split, written out again: odd occurrences of a (concept, kind) pick, even ones score."""
    pick, seen = [], {}
    for key in zip(concept.tolist(), is_word.tolist()):
        seen[key] = seen.get(key, 0) + 1
        pick.append(seen[key] % 2 == 1)
    return np.array(pick)


def test_selection_half_alternates_within_each_concept_and_kind():
    concept = np.array([0, 0, 1, 0, 1, 0, 0, 1, 1, 1])
    is_word = np.array([0, 1, 0, 0, 0, 1, 0, 0, 1, 0], bool)
    #      groups:      a  b  c  a  c  b  a  c  d  c  (a=(0,pic) b=(0,word) c=(1,pic) d=(1,word))
    expected = np.array([1, 1, 1, 0, 0, 0, 1, 1, 1, 0], bool)
    assert np.array_equal(selection_half(concept, is_word), expected)
    concept, is_word = probe_labels(7, seed=3)
    pick = selection_half(concept, is_word)
    assert np.array_equal(pick, brute_halves(concept, is_word))
    for c in range(C):
        for w in (False, True):
            g = (concept == c) & (is_word == w)
            assert pick[g].sum() == 4 and (~pick[g]).sum() == 3  # 7 images: 4 pick, 3 score


def test_planted_neuron_auroc_matches_brute_force_in_sample_and_held_out():
    concept, is_word = probe_labels(8, seed=0)
    rng = np.random.default_rng(1)
    n, units, target, planted = len(concept), 6, 7, 4
    scores = rng.normal(0, 1, (n, units))
    scores[:, planted] += 2.2 * (concept == target)  # detects concept 7 as pictogram and as word, imperfectly
    scores = np.round(scores * 2) / 2  # half-steps: plenty of ties, which count half
    r = neurons_from_scores("L", torch.tensor(scores, dtype=torch.float32), concept, is_word, threshold=0.8)
    assert r.best_unit[target] == r.heldout_unit[target] == planted
    pick = brute_halves(concept, is_word)
    s = scores[:, planted]
    for kind, got_in, got_held in ((False, r.auroc_picto, r.heldout_picto), (True, r.auroc_word, r.heldout_word)):
        k = is_word == kind
        assert got_in[target] == pytest.approx(
            brute_auroc(s[k & (concept == target)].tolist(), s[k & (concept != target)].tolist()), abs=1e-9)
        held = k & ~pick
        expected = brute_auroc(s[held & (concept == target)].tolist(), s[held & (concept != target)].tolist())
        assert got_held[target] == pytest.approx(expected, abs=1e-9)
        assert 0.8 < expected < 1.0
    assert r.multimodal[target] and r.multimodal_heldout[target]
    assert len(r.heldout_unit) == len(r.heldout_picto) == len(r.heldout_word) == C


def test_a_neuron_lucky_on_the_picking_half_scores_zero_held_out():
    """A unit perfect on the images it is picked on and worst on the others: in-sample it averages out (0.5)
    and loses to an honest detector; held-out it is picked, and scored 0 where it was not picked."""
    concept, is_word = probe_labels(4, seed=2)
    pick = selection_half(concept, is_word)
    rng = np.random.default_rng(5)
    scores = rng.normal(0, 1, (len(concept), 2))
    scores[(concept == 3) & pick, 0] = 10.0
    scores[(concept == 3) & ~pick, 0] = -10.0
    scores[:, 1] += 2.5 * (concept == 3)
    r = neurons_from_scores("L", torch.tensor(scores, dtype=torch.float32), concept, is_word)
    assert r.auroc_picto[3] > 0.9 and r.best_unit[3] == 1
    pos, neg = scores[(concept == 3) & ~is_word, 0], scores[(concept != 3) & ~is_word, 0]
    assert brute_auroc(pos.tolist(), neg.tolist()) == 0.5  # unit 0 in-sample, by the brute force
    assert r.heldout_unit[3] == 0 and r.heldout_picto[3] == 0.0 and r.heldout_word[3] == 0.0
    assert not r.multimodal_heldout[3]


def test_too_few_images_to_split_is_an_error():
    concept, is_word = probe_labels(1, seed=0)
    with pytest.raises(ValueError, match="at least 2 per concept and kind"):
        neurons_from_scores("L", torch.zeros(len(concept), 3), concept, is_word)


def test_report_states_held_out_and_in_sample_counts():
    def neurons(layer, ins, held):
        r = ConceptNeurons(layer, 0.9, best_unit=[0] * C, heldout_unit=[1] * C)
        r.auroc_picto = r.auroc_word = [0.95] * ins + [0.5] * (C - ins)
        r.heldout_picto = r.heldout_word = [0.95] * held + [0.5] * (C - held)
        return r

    md = report_markdown({"pictograms, all prompts": 0.5}, [neurons("a", 2, 1), neurons("b.c", 33, 31)])
    assert "| layer | held-out | in-sample |" in md
    assert "| `a` | 1 / 41 | 2 / 41 |" in md and "| `b.c` | 31 / 41 | 33 / 41 |" in md
    assert f"| {CONCEPT_NAMES[31]} | 0 | 0.950 | 0.950 | yes | 1 | 0.500 | 0.500 | no |" in md
    assert "| pictograms | all prompts | 50.0% |" in md


def test_concept_neurons_on_a_model_are_neurons_from_its_scores(tiny_model):
    ps = concept_test_images(tiny_model, per_concept=2, size=tiny_model.image_size)
    assert len(ps.concept) == 4 * C and selection_half(ps.concept, ps.is_word).sum() == 2 * C
    layers = ["visual.layer4.0"]
    (r,) = concept_neurons(tiny_model, ps, layers)
    ref = neurons_from_scores(layers[0], layer_scores(tiny_model, ps.pixels, layers)[layers[0]], ps.concept,
                              ps.is_word)
    assert r == ref
    assert all(0 <= a <= 1 for a in r.heldout_picto + r.heldout_word + r.auroc_picto + r.auroc_word)


def test_eval_concepts_command_prints_both_counts(tiny_model, tmp_path, monkeypatch):
    """The command is a thin layer: it passes its options to `evaluate_concepts` and prints the report."""
    import atlas.evaluate
    import atlas.models

    calls = []
    r = ConceptNeurons("visual.layer4.0", 0.8, [0] * C, [0.9] * C, [0.85] * C, [1] * C, [0.9] * C, [0.7] * C)

    def fake(model, per_concept, layers, threshold):
        calls.append((model, per_concept, layers, threshold))
        return ConceptReport({"words, all prompts": 0.25}, [r])

    monkeypatch.setattr(atlas.models, "load_model", lambda *a, **k: tiny_model)
    monkeypatch.setattr(atlas.evaluate, "evaluate_concepts", fake)
    out = tmp_path / "eval.md"
    res = CliRunner().invoke(main, ["eval", "concepts", "--per-concept", "5", "--layers", "visual.layer4.0",
                                    "--threshold", "0.8", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert calls == [(tiny_model, 5, ("visual.layer4.0",), 0.8)]
    assert "| `visual.layer4.0` | 0 / 41 | 41 / 41 |" in res.output and out.read_text() == report_markdown(
        {"words, all prompts": 0.25}, [r])
