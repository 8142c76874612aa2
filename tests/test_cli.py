"""The command line: help, a small end-to-end build, and clean errors for bad input."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from atlas import store
from atlas.cli import main

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["build", "mine", "featurevis", "site", "models", "layers", "info", "export"]


def test_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in r.output
        sub = CliRunner().invoke(main, [cmd, "--help"])
        assert sub.exit_code == 0 and "Usage:" in sub.output and len(sub.output.splitlines()) > 3


def test_checkout_shim_runs():
    out = subprocess.run([sys.executable, str(ROOT / "cli.py"), "--version"], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.startswith("atlas, version")


@pytest.mark.slow
def test_small_build_end_to_end(tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["build", "--model", "atlas:tiny@random:0", "--data", "synthetic:96", "--out", str(out), "--layers",
                                  "visual.layer3.0,visual.layer4.0", "--steps", "2", "--top-k", "4",
                                  "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (out / "atlas.h5").is_file() and (out / "site" / "index.html").is_file()
    with store.Store(out / "atlas.h5") as st:
        assert [ld.name for ld in st.layers("tiny")] == ["visual.layer3.0", "visual.layer4.0"]
        assert st.layer("tiny", "visual.layer4.0").featurevis_done().all()
        assert not st.layer("tiny", "visual.layer3.0").featurevis_done().any()
    pages = list((out / "site").rglob("*.html"))
    assert len(pages) == 1 + 1 + 2 + 256 + 512 + 5  # + reports: index, probe, attack table, Stroop, words
    assert "(777 pages" in r.output
    assert "reports: probes/probe, attacks/table, attacks/stroop, attacks/words" in r.output
    assert "skipped audits/audit: no group labels" in r.output
    assert re.search(r"analyses [\d.]+s \(probes/probe [\d.]+s, attacks/table [\d.]+s", r.output), r.output
    # not a terminal: each step ends in a plain line saying what was done in how long, and so does the command
    assert re.search(r"^mine: 96/96 images in [\d.]+ s \([\d.]+ images/s\)$", r.output, re.M), r.output
    assert re.search(r"^featurevis visual.layer4.0: 512/512 units in [\d.]+ s", r.output, re.M), r.output
    assert re.search(r"^site: 2/2 layers in [\d.]+ s", r.output, re.M), r.output
    assert re.search(r"^built .*index.html in [\d.]+ s$", r.output, re.M), r.output
    # a second build reuses everything and gives the same store
    digest = store.contents_digest(out / "atlas.h5")
    r2 = CliRunner().invoke(main, ["build", "--model", "atlas:tiny@random:0", "--data", "synthetic:96", "--out", str(out), "--layers",
                                   "visual.layer3.0,visual.layer4.0", "--steps", "2", "--top-k", "4",
                                   "--device", "cpu"])
    assert r2.exit_code == 0 and store.contents_digest(out / "atlas.h5") == digest
    info = CliRunner().invoke(main, ["info", str(out / "atlas.h5")])
    assert "feature vis 512/512" in info.output and "model_spec: atlas:tiny@random:0" in info.output


def test_models_and_layers():
    r = CliRunner().invoke(main, ["models"])
    assert r.exit_code == 0 and "atlas:conceptclip                shipped with atlas" in r.output
    assert "openai:RN50x4" in r.output and ".cache/clip/RN50x4.pt" in r.output
    r = CliRunner().invoke(main, ["models", "--all"])
    assert "open_clip:RN50x4" in r.output and "open_clip:ViT-L-14" in r.output
    r = CliRunner().invoke(main, ["layers", "atlas:tiny@random:0"])
    assert r.exit_code == 0 and "* visual.layer4.0" in r.output and "512 units" in r.output


@pytest.mark.parametrize("args, message", [
    (["mine", "--data", "/no/such/folder", "--store", "{tmp}/s.h5"], "data folder /no/such/folder does not exist"),
    (["mine", "--model", "RN50", "--store", "{tmp}/s.h5"], "FAMILY:ARCH"),
    (["mine", "--layers", "visual.layer9.0", "--store", "{tmp}/s.h5"], "no hookable layer 'visual.layer9.0'"),
    (["mine", "--device", "cuda:7", "--store", "{tmp}/s.h5"], "no CUDA GPU"),
    (["mine", "--data", "synthetic:abc", "--store", "{tmp}/s.h5"], "is not of the form synthetic:N"),
    (["mine", "--data", "conceptworld:1:2:3", "--store", "{tmp}/s.h5"], "conceptworld:N:SEED"),
    (["build", "--out", "{tmp}/file.txt"], "is a file"),
    (["featurevis", "--store", "{tmp}/file.txt", "--layer", "x"], "not a readable HDF5 store"),
    (["featurevis", "--store", "{tmp}/file.txt", "--layer", "x", "--units", "5-2"], "runs backwards"),
    (["site", "{tmp}/file.txt", "--out", "{tmp}/site"], "not a readable HDF5 store"),
])
def test_bad_input_gives_a_clear_error(tmp_path, args, message):
    (tmp_path / "file.txt").write_text("not a store")
    r = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code != 0
    assert message in r.output, r.output
    assert "Traceback" not in r.output


def test_progress_lines_when_not_a_terminal():
    import io

    from atlas.cli.progress import Progress

    out = io.StringIO()
    p = Progress(out, every=0.0, terminal=False)
    for done in (0, 25, 50, 100):
        p("mine", done, 100)
    p("report probes/probe", 0, 1)
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[0] == "mine: 0/100 images"
    assert re.fullmatch(r"mine: 25/100 images \(25%\), [\d.]+ images/s, ETA \d+:\d\d", lines[1]), lines
    assert re.fullmatch(r"mine: 100/100 images in [\d.]+ s \([\d.]+ images/s\)", lines[3]), lines
    assert re.fullmatch(r"report probes/probe: done in [\d.]+ s", lines[-1]), lines
    bar = io.StringIO()
    q = Progress(bar, terminal=True)  # a terminal: a tqdm bar with the rate
    q("featurevis visual.layer4.0", 0, 8)
    q("featurevis visual.layer4.0", 8, 8)
    assert "8/8" in bar.getvalue() and "units/s" in bar.getvalue()



def test_settings_fit_the_machine_and_are_printed(tmp_path):
    from atlas.mining.machine import GIB, fit_machine

    assert (fit_machine("cpu", 2).batch_size, fit_machine("cpu", 64).workers) == (64, 0)  # CPU: as always
    h100 = fit_machine("cuda", 16, 80 * GIB)
    assert (h100.batch_size, h100.workers) == (256, 14) and "80 GiB GPU" in h100.why
    assert (fit_machine("cuda", 64, 16 * GIB).batch_size, fit_machine("cuda", 64, 16 * GIB).workers) == (128, 14)
    assert (fit_machine("cuda", 3, 8 * GIB).batch_size, fit_machine("cuda", 3, 8 * GIB).workers) == (64, 1)
    r = CliRunner().invoke(main, ["mine", "--model", "atlas:tiny@random:0", "--data", "synthetic:8", "--store",
                                  str(tmp_path / "s.h5"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert re.search(r"^mine: 4 layers x 8 images on cpu: batch 64, 0 decoding workers \(CPU, \d+ cores\), float32, "
                     r"exact pixels$", r.output, re.M), r.output
    with store.Store(tmp_path / "s.h5") as st:  # the store records the batch that was used
        assert st.layers("tiny")[0].config["batch_size"] == 64
