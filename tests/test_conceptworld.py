"""Concept World: concepts, determinism, image kinds, fonts and the planted bias."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from atlas.data import open_source
from atlas.data.conceptworld import CONCEPT_NAMES, CONCEPTS, FONTS, ConceptWorldSource, World, WorldConfig
from atlas.data.conceptworld.pictograms import PICTOGRAMS
from atlas.resources import resource_dir


def test_at_least_32_concepts_each_with_a_pictogram_and_words():
    assert len(CONCEPTS) >= 32 and len(set(CONCEPT_NAMES)) == len(CONCEPTS)
    assert set(PICTOGRAMS) == set(CONCEPT_NAMES)
    for c in CONCEPTS:
        assert c.words[0] == c.name and len(c.words) >= 3
    assert "$$$" in dict((c.name, c.words) for c in CONCEPTS)["money"]


def test_every_pictogram_draws_something_distinct():
    w = World(WorldConfig(size=64, mix=(1, 0, 0, 0)))
    seen = {}
    for i in range(3000):
        it = w.item(i)
        if it.concepts[0] not in seen:
            seen[it.concepts[0]] = (it, np.asarray(w.image(it)).astype(int))
    assert set(seen) == set(CONCEPT_NAMES)
    for name, (it, img) in seen.items():
        bg = np.asarray(w._background(it.params, 64).convert("RGB")).astype(int)
        changed = (np.abs(img - bg).sum(2) > 30).mean()
        assert 0.02 < changed < 0.9, (name, changed)  # a visible object, not the whole image


def test_items_are_deterministic_and_seeded():
    a, b = World(WorldConfig(seed=3)), World(WorldConfig(seed=3))
    for i in (0, 17, 999):
        assert a.item(i).caption == b.item(i).caption
        assert np.array_equal(np.asarray(a.image(a.item(i))), np.asarray(b.image(b.item(i))))
    other = World(WorldConfig(seed=4))
    assert [a.item(i).caption for i in range(20)] != [other.item(i).caption for i in range(20)]


def test_kinds_captions_and_labels():
    w = World(WorldConfig())
    items = [w.item(i) for i in range(4000)]
    share = Counter(it.kind for it in items)
    for kind, p in zip(("picto", "word", "picto_word", "scene"), WorldConfig().mix):
        assert abs(share[kind] / 4000 - p) < 0.03
    for it in items[:500]:
        if it.kind == "word":
            assert it.word in it.caption and it.label == f"word:{it.word_concept}"
        elif it.kind == "picto_word":
            assert it.word_concept != it.concepts[0] and it.word in it.caption
            assert it.label == f"picto_word:{it.concepts[0]}/{it.word_concept}"
        elif it.kind == "scene":
            assert len(set(it.concepts)) == 2 and it.label == "scene:" + "+".join(it.concepts)
    plain = [it for it in items if it.kind == "word" and it.caption == it.word]
    assert len(plain) > 0.2 * share["word"]  # unmarked captions tie words to pictures


def test_fonts_ship_with_licences_including_handwriting():
    fonts = resource_dir("data") / "fonts"
    for name in FONTS:
        assert (fonts / name).is_file()
    assert sum("handwriting" in style for style in FONTS.values()) >= 2
    licences = {p.stem for p in (fonts / "licenses").iterdir()}
    assert {"dejavu-core", "inconsolata", "comic-neue", "humor-sans", "kaushanscript", "dancingscript"} <= licences
    w = World(WorldConfig(mix=(0, 1, 0, 0)))
    used = Counter(w.item(i).params["text"]["font"] for i in range(700))
    assert set(used) == set(FONTS)


def _group_shares(cfg: WorldConfig, n: int = 60000) -> dict[str, tuple[float, int]]:
    """Share of group A (and count) among persons: in scenes with/without the bias concept, and alone with a
    bias word, another concept's word, or no added word in the caption."""
    w = World(cfg)
    bias_words = set(w.concepts[cfg.bias_concept].words)
    counts: dict[str, Counter] = {k: Counter() for k in ("scene_bias", "scene_other", "word_bias", "word_other",
                                                         "alone")}
    for i in range(n):
        it = w.item(i)
        if not it.group:
            continue
        if len(it.concepts) == 2:
            counts["scene_bias" if cfg.bias_concept in it.concepts else "scene_other"][it.group] += 1
        elif it.kind == "picto":
            key = "word_bias" if it.context_word in bias_words else "word_other" if it.context_word else "alone"
            counts[key][it.group] += 1
    return {k: (c[cfg.groups[0]] / max(1, sum(c.values())), sum(c.values())) for k, c in counts.items()}


@pytest.mark.parametrize("strength", [1.0, 0.7])
def test_planted_bias_has_the_stated_strength_and_nothing_else(strength):
    cfg = WorldConfig(bias_strength=strength)
    s = _group_shares(cfg)
    assert min(n for _, n in s.values()) > 150
    assert abs(s["scene_bias"][0] - strength) < 0.05  # co-occurrence channel
    assert abs(s["word_bias"][0] - strength) < 0.06  # label channel: the bias concept's words go with group A
    assert abs(s["word_other"][0] - (1 - strength)) < 0.06  # ... and other words, as often, with group B
    assert abs(s["scene_other"][0] - 0.5) < 0.05 and abs(s["alone"][0] - 0.5) < 0.06  # elsewhere: no correlation
    # a word added at all says nothing of the group: as many group A as group B persons get one
    w = World(cfg)
    added = Counter(w.item(i).group for i in range(60000)
                    if w.item(i).concepts == ("person",) and w.item(i).context_word)
    assert abs(added[cfg.groups[0]] / sum(added.values()) - 0.5) < 0.06


def test_colour_family_attribute():
    cfg = WorldConfig(bias_attribute="color", bias_concept="trash")
    w = World(cfg)
    for i in range(3000):
        it = w.item(i)
        if it.group:
            col = next(o["color"] for o in it.params["objects"] if o["concept"] == "person")
            assert col in (("red", "orange", "yellow", "pink") if it.group == "warm" else ("blue", "teal", "green", "purple"))
    assert abs(_group_shares(cfg, 40000)["scene_bias"][0] - 1.0) < 0.06


def test_accessory_attribute():
    cfg = WorldConfig(bias_attribute="accessory", bias_strength=0.8)
    assert cfg.groups == ("hat", "bow")
    assert abs(_group_shares(cfg, 40000)["scene_bias"][0] - 0.8) < 0.06


@pytest.mark.parametrize("bad", [dict(mix=(1, 0, 0)), dict(bias_attribute="hats"), dict(bias_concept="person"),
                                 dict(bias_concept="unicorn"), dict(bias_strength=1.5)])
def test_bad_world_configs(bad):
    with pytest.raises(ValueError):
        WorldConfig(**bad)


def test_source_spec():
    s = open_source("conceptworld:50:2")
    assert isinstance(s, ConceptWorldSource) and len(s) == 50 and s.config.seed == 2
    assert s.sample(3).image.size == (64, 64) and s.entries[3].caption == s.items[3].caption
    assert s.fingerprint() != open_source("conceptworld:50:3").fingerprint()
    d = open_source("default")
    assert len(d) == 4096 and d.config.seed == 1  # the shipped model trained on seed 0
