"""Every script in bench/ runs in its ``--quick`` mode on the CPU and prints the figures it is for.

Each runs as a user runs it (``python bench/X.py --quick``, a subprocess of this interpreter, OMP_NUM_THREADS=1)
and the tests read what it printed: the rows are there, every number is finite and ratios are positive, and where
the bench checks a property (the same states bit for bit, the same objective as scikit-learn) that it holds.  A new
script in bench/ is run too, with the generic check (`check_any`) until it gets a ``check_<name>`` here.  The runs
start together, two at a time, when the first test of this file asks for them (about 30 s on an idle 2-core
machine in all).

Timings of --quick runs are not figures: these tests assert that the numbers exist, not what they are.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# script -> arguments after --quick; longest runs first (they start first), scripts not named here before them
RUNS = {
    # --quick alone mines RN50 and ViT-B-32 at batch 2 (80 s on 2 cores); one small ViT exercises the same paths
    "mining_overhead": ["--models", "ViT-S-32"],
    "mine_vs_naive": [],  # four whole processes (about 60 s on 2 cores)
    "featurevis_vs_lucent": [],
    "mine_e2e": [],
    "probe_gpu": [],
    "data_path": [],
    "mining_kernels": [],
    "probe_vs_sklearn": [],
    "store_write": [],
}
HELPERS = {"naive_mine"}  # run by another bench (mine_vs_naive), not on its own
BENCHES = sorted({p.stem for p in (ROOT / "bench").glob("*.py")} - set(RUNS) - HELPERS) + list(RUNS)
NUM = r"[-+]?(?:\d+\.?\d*(?:e[-+]?\d+)?|nan|inf)"


def run(script: str) -> str:
    cmd = [sys.executable, str(ROOT / "bench" / f"{script}.py"), "--quick", *RUNS.get(script, [])]
    # two runs at a time, one torch thread each: oversubscribed OpenMP threads make small ops 10x slower on a busy host
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} exited with {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def line(out: str, pattern: str) -> list[float]:
    """The numbers captured by ``pattern`` (a regex with groups) in the first line of ``out`` that matches it."""
    m = re.search(pattern, out, re.MULTILINE)
    assert m, f"no line matches {pattern!r} in:\n{out}"
    return [float(g) for g in m.groups()]


def finite(*xs: float, positive: bool = True) -> None:
    for x in xs:
        assert math.isfinite(x) and (x > 0 or not positive), xs


def check_mining_overhead(out: str) -> None:
    for path in ("forward", "plain", "fast-torch"):
        finite(*line(out, rf"^{path}\s+\d+\s+({NUM})\s+({NUM})x\s+({NUM})x"))
    assert re.search(r"^states of fast-torch vs plain \(.*\): bit for bit$", out, re.MULTILINE), out


def check_featurevis_vs_lucent(out: str) -> None:
    before, after = line(out, rf"^atlas batch 8: .*mean objective ({NUM}) -> ({NUM})\)$")
    finite(before, after, positive=False)
    assert after > before  # 4 steps of ascent raise the channel objective
    for b in (1, 2):
        finite(*line(out, rf"^lucent render_vis\s+{b}\s+({NUM})\s+({NUM})$"))
        finite(*line(out, rf"^speed-up of atlas's best \(({NUM}) s/neuron\) over lucent at batch {b}: ({NUM})x$"))


def check_mine_e2e(out: str) -> None:
    finite(*line(out, rf"^forward-only\s+64 images\s+({NUM}) s\s+({NUM}) images/s"))
    runs = re.findall(rf"^end-to-end\s+64 images\s+({NUM}) s\s+({NUM}) images/s.*\(4 layers: .*; 0 bad files\)$", out,
                      re.MULTILINE)
    phases = re.findall(rf"^\s+mine\(\) phases: setup ({NUM}) s, .* forward ({NUM}) s", out, re.MULTILINE)
    ratios = re.findall(rf"whole mine\(\) call / forward-only = ({NUM}) / ({NUM}) = ({NUM})", out)
    assert runs and len(phases) == len(runs) == len(ratios), out  # one of each per pixel path
    for numbers in runs + ratios:
        finite(*map(float, numbers))
    for numbers in phases:
        finite(*map(float, numbers), positive=False)


def check_mine_vs_naive(out: str) -> None:
    rows = dict(re.findall(rf"^(naive float32|atlas float32|atlas defaults|atlas best)\s+({NUM})\s+", out,
                           re.MULTILINE))
    assert set(rows) == {"naive float32", "atlas float32", "atlas defaults", "atlas best"}, out  # CPU: no bf16 rows
    finite(*map(float, rows.values()))
    assert "FAILED" not in out, out
    agree = re.findall(rf"visual\.layer\d\.\d ({NUM})%", line_of(out, "same top-16 sets"))
    assert len(agree) == 4 and all(float(a) == 100.0 for a in agree), out  # float32 naive and atlas: same sets


def line_of(out: str, start: str) -> str:
    return next(x for x in out.splitlines() if x.startswith(start))


def check_probe_gpu(out: str) -> None:
    path = re.findall(rf"^\s+({NUM})\s+(\d+)\s+({NUM})\s+({NUM})\s+(\d+)\s+({NUM})\s+({NUM})\s+(True|False)$", out,
                      re.MULTILINE)
    assert len(path) == 3, out  # --lambdas 3
    nnz = [int(r[4]) for r in path]
    assert nnz == sorted(nnz) and nnz[-1] > 0  # the path starts sparse and grows
    finite(*(float(x) for r in path for x in (r[0], r[2], r[5])))
    f32, bf16, g32, g16 = line(out, rf"^speed-up vs saga: float32 ({NUM})x, bfloat16 ({NUM})x; objective gap vs saga: "
                                    rf"float32 ({NUM}), bfloat16 ({NUM})$")
    finite(f32, bf16, positive=False)  # printed to one decimal: saga is faster on the quick problem (0.0x)
    assert abs(g32) < 1e-4 and abs(g16) < 1e-3


def check_data_path(out: str) -> None:
    for row in (r"forward-only \(bf16, reduce\)", r"loader-only \(cpu decode\)", r"end-to-end \(cpu decode \+ forward\)"):
        n, s, rate = line(out, rf"^{row}\s+(\d+) images\s+({NUM}) s\s+({NUM}) images/s")
        assert n == 64
        finite(s, rate)
    finite(*line(out, rf"^cpu decode: end-to-end / forward-only = ({NUM}) / ({NUM}) = ({NUM}) \(target"))


def check_mining_kernels(out: str) -> None:
    """Without CUDA the kernels' references run once each and print no time (GPU time only: 'nan')."""
    for model in ("RN50", "ViT-B-32"):
        finite(line(out, rf"^{model}: \d+ blocks, batch \d+, .* candidate pairs ({NUM})%$")[0])
    for row in ("reduce, torch", "stats, torch", r"maps, torch \(all U\*K pooled\)", r"merge, torch \(sort of k\+B\)",
                r"tail, torch \(bn3, add, relu: 3 passes\)"):
        (ms,) = line(out, rf"^\s+{row}\s+({NUM}) ms/batch")
        assert math.isnan(ms) or (math.isfinite(ms) and ms > 0)


def check_probe_vs_sklearn(out: str) -> None:
    rows = re.findall(rf"^(atlas fista|sklearn saga \(multinomial\)|sklearn liblinear \(one-vs-rest\))\s+(\d+) "
                      rf"(float64|float32)\s+.+?\s+({NUM})\s+({NUM})\s+(\d+)\s+(\d+)$", out, re.MULTILINE)
    assert {(r[0], r[1], r[2]) for r in rows if r[0] == "atlas fista"} == {
        ("atlas fista", t, p) for t in ("1", "2") for p in ("float64", "float32")}, out
    assert {r[2] for r in rows if "saga" in r[0]} == {"float64", "float32"}, out
    objectives = [float(r[4]) for r in rows if "liblinear" not in r[0]]
    finite(*[float(r[3]) for r in rows], *objectives)
    assert max(objectives) - min(objectives) <= 1e-4 * min(objectives)  # atlas and saga solve the same problem
    for precision in ("float64", "float32"):
        ratio, gap = line(out, rf"^matched \({precision}, 1 thread each\): atlas 1 thread\(s\) {precision} .* "
                               rf"({NUM})x; objective gap \(atlas - saga\) / saga ({NUM}) \[2000 x 32 x 5, 1 lambda")
        finite(ratio)
        assert abs(gap) < 1e-4
    assert "matched at 2 threads each: not possible" in out
    finite(line(out, rf"^best-effort \(each side's fastest row\): .*: ({NUM})x;")[0])


def check_store_write(out: str) -> None:
    for way in (r"HDF5 filters \(1 core\)", r"\d+ threads, raw chunks"):
        s, mbs, share, layer_gb = line(out, rf"^\s+{way}\s+({NUM}) s\s+({NUM}) MB/s\s+file ({NUM}) of the matrix, "
                                            rf"({NUM}) GB per 1M-image x 2,560-unit layer$")
        finite(s, mbs, share, layer_gb)
        assert share < 1.0  # compressed
        assert abs(layer_gb - share * 4 * 2560 * 1e6 / 1e9) < 0.02 * layer_gb  # float32: 4 bytes a value
    finite(*line(out, rf"^speed-up: ({NUM})x$"))


def check_any(out: str) -> None:
    """A bench without checks of its own: it printed at least one finite number."""
    assert any(math.isfinite(float(x)) for x in re.findall(rf"(?<![\w.]){NUM}(?!\w)", out)), out


@pytest.fixture(scope="module")
def outputs(request) -> dict[str, Future]:
    """The stdout of each bench whose test is selected, run two at a time from the first request on."""
    selected = {item.callspec.params["script"] for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    pool = ThreadPoolExecutor(2)
    futures = {s: pool.submit(run, s) for s in BENCHES if s in selected}
    yield futures
    pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("script", BENCHES)
def test_quick(script, outputs):
    """``python bench/SCRIPT.py --quick`` exits 0 and prints its figures (checked by check_SCRIPT, else check_any)."""
    globals().get(f"check_{script}", check_any)(outputs[script].result())
