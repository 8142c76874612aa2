"""The reports a build adds (probe, attack table, Stroop, word sensitivity, audit), their CLI commands, and
the bias audit on the shipped model: it finds the planted bias and nothing else."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from atlas import store
from atlas.analyses import run_analyses
from atlas.audit import audit_images
from atlas.audit.bias import AuditConfig, conceptworld_group_set
from atlas.attacks.experiments import run_attack_table, run_stroop, run_word_sensitivity
from atlas.cli import main
from atlas.config import AnalysesConfig, MineConfig
from atlas.data import open_source
from atlas.data.conceptworld import ConceptWorldSource, WorldConfig
from atlas.mining import mine

LAYER = "visual.layer4.0"


@pytest.fixture(scope="module")
def cw_store(shipped, tmp_path_factory):
    """The shipped model mined on 240 Concept World images (its last block)."""
    path = tmp_path_factory.mktemp("cw") / "atlas.h5"
    mine(shipped, open_source("conceptworld:240:1"), path, MineConfig(layers=(LAYER,), top_k=4))
    return path


def _copy(path, tmp_path):
    out = tmp_path / "atlas.h5"
    shutil.copy(path, out)
    return out


def test_attack_table_stroop_and_words(shipped, cw_store, tmp_path):
    path = _copy(cw_store, tmp_path)
    pictos = ConceptWorldSource(40, WorldConfig(seed=10_000, mix=(1, 0, 0, 0)))
    r = run_attack_table(shipped, pictos, path, "t", r"picto:(\w+)", (("ipod", "ipod"), ("$$$", "money")),
                         images=40, sizes=(0.3,))
    rows = r.rows
    assert r.report == "attacks/t" and r.left_out == []
    assert rows["text"] == ["ipod", "$$$"] and all(0 <= s <= 1 for s in rows["success_rate"])
    assert rows["clean_accuracy"][0] > 0.9  # the held-out pictograms are classified right before the attack
    with store.Store(path) as st:
        arrays, attrs = store.read_report(st, "attacks", "t")
    # attempts: every (image not of the target, position) pair
    assert arrays["attempts"][0] == 8 * sum(1 for e in pictos.entries if e.label != "picto:ipod")
    assert 0 < arrays["pixels_changed"][0] < 0.5 and attrs["layer"] == LAYER
    if "examples/clean" in arrays:  # a text's before/after pairs show different images
        for text in set(rows["text"]):
            mine = [c.tobytes() for c, cap in zip(arrays["examples/clean"], arrays["examples/caption"])
                    if cap.endswith(f"({text!r})")]
            assert len(set(mine)) == len(mine)
    delta = arrays["neurons/delta"]
    assert len(arrays["neurons/unit"]) == 20 and np.all(np.diff(delta) <= 0) and delta[0] > 0

    s = run_stroop(shipped, path, "s")
    assert s.report == "attacks/s" and s.incongruent == 3 * 8 * 7 and s.controls == 3 * 8
    assert s.incongruent_said_word + s.incongruent_said_ink <= s.incongruent
    with store.Store(path) as st:  # the same counts in the store
        _, attrs = store.read_report(st, "attacks", "s")
    assert (attrs["incongruent"], attrs["controls_correct"]) == (s.incongruent, s.controls_correct)

    w = run_word_sensitivity(shipped, path, LAYER, ["spider", "pizza", " ", "spider"], "w")
    assert w.report == "attacks/w" and w.words == ["spider", "pizza"]
    assert w.responses.shape == (2, 1024)  # blank and repeated words dropped
    with store.Store(path) as st:
        arrays, _ = store.read_report(st, "attacks", "w")
    assert arrays["top_index"].shape == (1024, 2) and set(arrays["words"]) == {"spider", "pizza"}


def test_audit_finds_the_planted_bias_and_nothing_else(shipped, cw_store, tmp_path):
    """Warm vs cool persons (the planted attribute): danger, and only danger, in classes and concepts."""
    path = _copy(cw_store, tmp_path)
    csv = conceptworld_group_set(tmp_path / "set", per_group=100)
    cfg = AuditConfig(bootstrap=200, permutations=1000)
    r = audit_images(shipped, path, LAYER, csv, tmp_path / "set", "person, {}", cfg)
    assert r.groups == ("cool", "warm") and r.counts == (100, 100)
    sig_concepts = [n for n, s in zip(r.concepts["name"], r.concepts["significant"]) if s]
    sig_classes = [n for n, s in zip(r.classes["name"], r.classes["significant"]) if s]
    assert sig_concepts == ["danger"] and sig_classes == ["danger"]
    k = r.concepts["name"].index("danger")
    assert r.concepts["d"][k] < r.concepts["null_centre"][k] - 0.2  # warm persons lean to danger
    c = r.classes["name"].index("danger")
    assert r.classes["top1_b"][c] > 0.8 and r.classes["top1_a"][c] < 0.1
    with store.Store(path) as st:
        arrays, attrs = store.read_report(st, "audits", "audit")
    assert attrs["context"] == "person, {}" and "does not say why" in attrs["caveat"]
    assert arrays["concepts/ci"].shape == (40, 2)

    # negative controls: a random split of the same images, and an attribute nothing was planted on
    rng = np.random.default_rng(0)
    groups = [str(g) for g in rng.permutation(["cool"] * 100 + ["warm"] * 100)]
    rows = "image,group\n" + "".join(f"{p.name},{g}\n" for p, g in zip(sorted((tmp_path / "set").glob("*.png")),
                                                                        groups))
    # hostile files go through atlas's decoder, as in mining: counted and left out, not crashing the audit
    (tmp_path / "set" / "text.png").write_text("not an image")
    good = sorted((tmp_path / "set").glob("*.png"))[0]
    (tmp_path / "set" / "cut.png").write_bytes(good.read_bytes()[:200])
    (tmp_path / "set" / "random.csv").write_text(rows + "text.png,cool\ncut.png,warm\n")
    r = audit_images(shipped, path, LAYER, tmp_path / "set" / "random.csv", tmp_path / "set", "person, {}", cfg)
    assert r.counts == (100, 100) and ["unreadable images", 2, "could not be decoded"] in [list(x) for x in r.left_out]
    assert not r.concepts["significant"].any() and not r.classes["significant"].any()
    assert not r.neurons["significant"].any()
    acc = conceptworld_group_set(tmp_path / "acc", per_group=100, bias_attribute="accessory")
    r = audit_images(shipped, path, LAYER, acc, tmp_path / "acc", "person, {}", cfg)
    assert not r.concepts["significant"].any() and not r.classes["significant"].any()


def test_run_analyses_writes_every_report_and_resumes(shipped, cw_store, tmp_path, monkeypatch):
    path = _copy(cw_store, tmp_path)
    cfg = AnalysesConfig(attack_images=24, audit_per_group=25)
    r = run_analyses(shipped, open_source("conceptworld:240:1"), path, LAYER, cfg, work=tmp_path)
    assert r.done == ["probes/probe", "attacks/table", "attacks/stroop", "attacks/words", f"labels/{LAYER}",
                      "audits/audit"], r.skipped
    assert list(r.seconds) == r.done and min(r.seconds.values()) > 0  # each report's time
    with store.Store(path) as st:
        labels = st.layer(shipped.name, LAYER).labels()
        assert len(labels) == st.layer(shipped.name, LAYER).units
        # the labels use the words report just written: rendered-word evidence beside the image-text match
        assert any(lab["labels"][0]["word"] is not None for lab in labels)
        _, attrs = store.read_report(st, "probes", "probe")
        assert attrs["layer"] == LAYER and attrs["label_pattern"] == r"picto:(\w+)"
        arrays, _ = store.read_report(st, "attacks", "table")
        assert "probe probe" in set(arrays["classifier"])  # the probe was attacked too

    import atlas.attacks.experiments as ex

    monkeypatch.setattr(ex, "run_attack_table", lambda *a, **k: pytest.fail("finished reports must be kept"))
    again = run_analyses(shipped, open_source("conceptworld:240:1"), path, LAYER, cfg, work=tmp_path)
    assert again.done == r.done and not again.skipped and again.seconds == {}  # nothing ran again


def test_analyses_say_what_they_skip(tiny_model, small_store, tmp_path):
    """Synthetic shapes: no groups to audit; the probe and the attack table still run on the shape labels."""
    path = _copy(small_store, tmp_path)
    r = run_analyses(tiny_model, open_source("synthetic:200"), path, "visual.layer4.0",
                     AnalysesConfig(attack_images=16, attacks=False), work=tmp_path)
    assert r.done == ["probes/probe", "labels/visual.layer4.0"] and list(r.seconds) == r.done
    assert r.skipped == [("audits/audit", "no group labels: give audit_groups (a CSV of image,group)")]
    with pytest.raises(ValueError, match="go together"):
        AnalysesConfig(audit_groups="g.csv")


def test_cli_attack_and_audit(cw_store, tmp_path):
    path = _copy(cw_store, tmp_path)
    run = CliRunner().invoke
    r = run(main, ["probe", "--store", str(path), "--layer", LAYER, "--label-pattern", r"picto:(\w+)"])
    assert r.exit_code == 0, r.output
    r = run(main, ["attack", "table", "--store", str(path), "--images", "16", "--sizes", "0.3",
                   "--targets", "ipod=ipod,pizza=pizza", "--probe", "probe"])
    assert r.exit_code == 0, r.output
    assert "zero-shot" in r.output and "'ipod' -> ipod" in r.output and "probe probe" in r.output
    with store.Store(path) as st:
        assert store.read_report(st, "attacks", "table")[1]["layer"] == LAYER  # the probe's layer
    r = run(main, ["attack", "table", "--store", str(path), "--targets", "ipod"])
    assert r.exit_code != 0 and "TEXT=CLASS" in r.output
    r = run(main, ["attack", "table", "--store", str(path), "--sizes", "big"])
    assert r.exit_code != 0 and "--sizes" in r.output
    r = run(main, ["attack", "stroop", "--store", str(path), "--prompt", "no slot"])
    assert r.exit_code != 0 and "'{}'" in r.output
    r = run(main, ["attack", "stroop", "--store", str(path)])
    assert r.exit_code == 0 and "incongruent: 168" in r.output
    r = run(main, ["attack", "words", "--store", str(path), "--layer", LAYER, "--words", "cat,dog"])
    assert r.exit_code == 0 and "2 words x 1024 units" in r.output
    r = run(main, ["audit", "--store", str(path), "--layer", LAYER])
    assert r.exit_code != 0 and "either --groups" in r.output
    (tmp_path / "g.csv").write_text("image,group\n" + "".join(f"x{i}.png,a\n" for i in range(3)))
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (64, 64)).save(tmp_path / f"x{i}.png")
    r = run(main, ["audit", "--store", str(path), "--layer", LAYER, "--groups", str(tmp_path / "g.csv"),
                   "--folder", str(tmp_path)])
    assert r.exit_code != 0 and "exactly 2 groups" in r.output


def test_every_experiment_runner_returns_one_shape_of_result():
    """The four runners return dataclasses with ``report`` and ``left_out`` (docs/architecture.md)."""
    import dataclasses
    import typing

    from atlas.attacks import experiments as ex
    from atlas.audit import audit_images

    for runner in (ex.run_attack_table, ex.run_stroop, ex.run_word_sensitivity, audit_images):
        result = typing.get_type_hints(runner)["return"]
        assert dataclasses.is_dataclass(result), runner.__name__
        assert {"report", "left_out"} <= {f.name for f in dataclasses.fields(result)}, runner.__name__



def test_audit_and_words_take_a_users_own_concepts_and_words(cw_store, tmp_path):
    """`atlas audit --concepts FILE --sensitive ...` audits a user's folder against the file's concepts (saved as
    given: names, classes, which are sensitive); `atlas attack words --words-file`; bad files are refused naming
    the option, the file and what to do."""
    from PIL import Image

    from atlas.audit import read_concepts

    path = _copy(cw_store, tmp_path)
    run = CliRunner().invoke
    folder = tmp_path / "mine"
    folder.mkdir()
    rows = []
    for i in range(40):  # two groups of the user's own images: reddish and bluish squares with noise
        rgb = np.clip(np.random.default_rng(i).normal((200, 40, 40) if i % 2 else (40, 40, 200), 30, (48, 48, 3)),
                      0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.png")
        rows.append(f"{i}.png,{'warm' if i % 2 else 'cool'}")
    (folder / "groups.csv").write_text("image,group\n" + "\n".join(rows) + "\n")
    (tmp_path / "concepts.txt").write_text("# my concepts\nfire: fire, flame\nwater: water, sea\ntree\n"
                                           "money: money, coin\nbird\nhouse\n")
    assert read_concepts(tmp_path / "concepts.txt") == {"fire": ("fire", "flame"), "water": ("water", "sea"),
                                                        "tree": ("tree",), "money": ("money", "coin"),
                                                        "bird": ("bird",), "house": ("house",)}
    r = run(main, ["audit", "--store", str(path), "--layer", LAYER, "--groups", str(folder / "groups.csv"),
                   "--folder", str(folder), "--concepts", str(tmp_path / "concepts.txt"), "--sensitive", "fire",
                   "--min-group", "20", "--name", "mine"])
    assert r.exit_code == 0, r.output
    assert "groups cool (20) vs warm (20)" in r.output
    with store.Store(path) as st:
        arrays, attrs = store.read_report(st, "audits", "mine")
    names = ["fire", "water", "tree", "money", "bird", "house"]
    assert [str(x) for x in arrays["concepts/name"]] == names
    assert [str(x) for x in arrays["classes/name"]] == names  # the sensitive ones first: fire is first already
    assert arrays["classes/sensitive"].tolist() == [True] + [False] * 5
    assert arrays["concepts/ci"].shape == (6, 2) and np.isfinite(arrays["concepts/d"]).all()

    def refused(args, *needles):
        r = run(main, ["audit", "--store", str(path), "--layer", LAYER, "--groups", str(folder / "groups.csv"),
                       "--folder", str(folder), *args])
        assert r.exit_code != 0 and all(n in r.output for n in needles), r.output

    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    refused(["--concepts", str(tmp_path / "empty.txt")], "--concepts", "empty.txt", "holds no words")
    refused(["--concepts", str(tmp_path / "nope.txt")], "--concepts", "nope.txt", "does not exist")
    (tmp_path / "two.txt").write_text("fire\nwater\n")
    refused(["--concepts", str(tmp_path / "two.txt")], "names 2 concept(s)", "at least 3")
    (tmp_path / "dup.txt").write_text("fire\nwater\nfire: flame\n")
    refused(["--concepts", str(tmp_path / "dup.txt")], "'fire' is given twice")
    (tmp_path / "noword.txt").write_text("fire:\nwater\ntree\n")
    refused(["--concepts", str(tmp_path / "noword.txt")], "needs a concept name and at least one word")
    refused(["--concepts", str(tmp_path / "concepts.txt"), "--sensitive", "danger"],
            "'danger' are not among the audit's concepts")
    (tmp_path / "odd.txt").write_text("fire\nwater\ntree\n&nbsp;\n")
    refused(["--concepts", str(tmp_path / "odd.txt")], "odd.txt", "empty once the tokenizer cleans it")

    (tmp_path / "words.txt").write_text("cat\ndog\nhot dog\n")
    r = run(main, ["attack", "words", "--store", str(path), "--layer", LAYER, "--words-file",
                   str(tmp_path / "words.txt"), "--name", "mywords"])
    assert r.exit_code == 0 and "3 words x 1024 units" in r.output, r.output
    r = run(main, ["attack", "words", "--store", str(path), "--layer", LAYER, "--words-file", str(tmp_path / "empty.txt")])
    assert r.exit_code != 0 and "--words-file" in r.output and "holds no words" in r.output
    r = run(main, ["attack", "words", "--store", str(path), "--layer", LAYER, "--words", "a", "--words-file",
                   str(tmp_path / "words.txt")])
    assert r.exit_code != 0 and "not both" in r.output
