"""Typographic attacks and bias-audit statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.audit.bias import AuditConfig, AuditError, _bh, _compare, _hedges_g, read_groups_csv, run_audit
from atlas.attacks.typographic import (POSITIONS, AttackError, AttackText, attack_rows, attack_rows_shared, pixels_changed,
                                      probe_classifier, stamp, zero_shot_classifier)


def test_stamp_writes_text_where_asked():
    base = Image.new("RGB", (64, 64), (0, 120, 0))
    for p in range(len(POSITIONS)):
        out = stamp(base, AttackText("ipod", position=p, size=0.2))
        diff = np.abs(np.asarray(out, int) - np.asarray(base, int)).max(2) > 0
        ys, xs = np.nonzero(diff)
        cx, cy = POSITIONS[p]
        assert abs(xs.mean() / 64 - cx) < 0.2 and abs(ys.mean() / 64 - cy) < 0.2
        assert 0.02 < pixels_changed(base, out) < 0.4
    bare = stamp(base, AttackText("ipod", label=False, color=(250, 0, 0)))
    assert pixels_changed(base, bare) < pixels_changed(base, stamp(base, AttackText("ipod")))
    hand = stamp(base, AttackText("ipod", font="Humor-Sans.ttf"))
    assert not np.array_equal(np.asarray(hand), np.asarray(stamp(base, AttackText("ipod"))))


@pytest.mark.parametrize("kwargs, message", [
    (dict(text=""), "empty"), (dict(text="   "), "empty"), (dict(text="x" * 41), "at most 40"),
    (dict(text="ok", position=8), "0..7"), (dict(text="ok", size=0.9), "0.03..0.6"),
])
def test_bad_attack_texts(kwargs, message):
    with pytest.raises(AttackError, match=message):
        AttackText(**kwargs)


def test_unrenderable_text_and_font():
    with pytest.raises(AttackError, match="renders no visible glyph"):
        stamp(Image.new("RGB", (64, 64)), AttackText("\u200b\u200b"))  # zero-width spaces
    with pytest.raises(AttackError, match="font 'Nope.ttf'"):
        stamp(Image.new("RGB", (64, 64)), AttackText("a", font="Nope.ttf"))


def test_attack_table_counts_and_success(tiny_model):
    images = [Image.new("RGB", (64, 64), c) for c in [(200, 0, 0)] * 3 + [(0, 0, 200)] * 3]
    labels = [0, 0, 0, 1, 1, 1]

    def says_word_if_white_box(pixels: torch.Tensor) -> torch.Tensor:
        # a toy classifier: class 1 when a bright label is present, else by the mean red/blue
        bright = (pixels > 1.5).flatten(1).float().mean(1) > 0.01
        red = pixels[:, 0].mean((1, 2)) > pixels[:, 2].mean((1, 2))
        out = torch.stack([red.float(), (~red).float()], 1)
        out[bright] = torch.tensor([0.0, 5.0])
        return out

    rows = attack_rows(tiny_model, images, labels, ["red", "blue"], [("blue", "blue")], says_word_if_white_box,
                        positions=range(8))
    r = rows[0]
    assert r.attempts == 3 * 8  # the blue images are already of the target class: left out
    assert r.successes == 24 and r.success_rate == 1.0 and r.clean_accuracy == 1.0
    with pytest.raises(AttackError, match="not among"):
        attack_rows(tiny_model, images, labels, ["red", "blue"], [("x", "green")], says_word_if_white_box)


def test_classifiers_share_each_forward_and_get_their_own_rows(tiny_model, monkeypatch):
    """Two classifiers (zero-shot, a probe) attacked together: each image goes through the model once, and each
    classifier's rows equal those of attacking it alone."""
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (80, 70, 3), dtype=np.uint8)) for _ in range(5)]
    classes = ["cat", "dog", "ipod"]
    labels = ["cat", "dog", "cat", None, "ipod"]
    layer = tiny_model.default_layers[-1]
    units = tiny_model.layer(layer).units
    W, b = rng.normal(size=(2, units)), rng.normal(size=2)
    probe = probe_classifier(tiny_model, layer, W, b, np.zeros(units), np.ones(units))
    readers = {"zero-shot": (zero_shot_classifier(tiny_model, classes), classes), "probe": (probe, ["cat", "ipod"])}
    targets = [("ipod", "ipod"), ("woof", "dog")]
    seen = []
    encode = tiny_model.encode_image
    monkeypatch.setattr(tiny_model, "encode_image", lambda x: (seen.append(len(x)), encode(x))[1])
    both = attack_rows_shared(tiny_model, images, labels, readers, targets, AttackText("x", size=0.3), range(3))
    # clean once, then per target the images not of its class at 3 positions: 5 + (4 + 4) * 3, one forward each
    assert sum(seen) == 5 + (4 + 4) * 3
    assert [r.target for r in both["zero-shot"]] == ["ipod", "dog"] and [r.target for r in both["probe"]] == ["ipod"]
    monkeypatch.setattr(tiny_model, "encode_image", encode)
    for name, (classify, cls) in readers.items():
        alone = attack_rows_shared(tiny_model, images, labels, {name: (classify, cls)},
                                   [t for t in targets if t[1] in cls], AttackText("x", size=0.3), range(3))[name]
        for a, b2 in zip(alone, both[name]):
            assert (a.attempts, a.successes, a.examples, a.clean_accuracy) == \
                   (b2.attempts, b2.successes, b2.examples, b2.clean_accuracy)
            assert a.pixels_changed == b2.pixels_changed


def test_benjamini_hochberg():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    assert _bh(p, 0.05).tolist() == [True, True] + [False] * 8
    assert not _bh(np.array([0.5, 0.9]), 0.05).any() and _bh(np.array([0.01, 0.02]), 0.05).all()


def test_effect_sizes_intervals_and_permutation_p():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    in_a = np.arange(200) < 100
    x[in_a, 0] += 1.0  # a planted difference in column 0 only
    g, ci, p = _compare(x, in_a, _hedges_g, AuditConfig(bootstrap=300, permutations=300))
    a, b = x[in_a, 0], x[~in_a, 0]
    sp = np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    assert g[0] == pytest.approx((a.mean() - b.mean()) / sp * (1 - 3 / (4 * 200 - 9)))
    assert ci[0, 0] < g[0] < ci[0, 1] and ci[0, 0] > 0.5
    assert p[0] < 0.01 and p[1] > 0.01 and p[2] > 0.01


def test_audit_refuses_small_or_many_groups(tiny_model, tmp_path):
    imgs = [Image.new("RGB", (64, 64), (i, i, i)) for i in range(30)]
    with pytest.raises(AuditError, match="exactly 2 groups"):
        run_audit(tiny_model, imgs, ["a"] * 10 + ["b"] * 10 + ["c"] * 10, "visual.layer4.0", ["x"], ["y"], {"z": ["z"]})
    with pytest.raises(AuditError, match="group 'b' has 5 images.*too few for a confident statement"):
        run_audit(tiny_model, imgs, ["a"] * 25 + ["b"] * 5, "visual.layer4.0", ["x"], ["y"], {"z": ["z"]})
    (tmp_path / "g.csv").write_text("image,group\nmissing.png,a\nx.png,\n")
    paths, groups, left = read_groups_csv(tmp_path / "g.csv", tmp_path)
    assert paths == [] and {w for w, _, _ in left} == {"rows without a group", "rows whose image is missing"}
    (tmp_path / "bad.csv").write_text("file,team\n")
    with pytest.raises(AuditError, match="needs a header with columns 'image' or 'path' and 'group'"):
        read_groups_csv(tmp_path / "bad.csv", tmp_path)
