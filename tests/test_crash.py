"""Crash safety with real processes and real `kill -9` (no mocks, except one regression test for a
window too narrow for timed kills to hit).

- `atlas mine` killed at random moments (model load, mid-stream, checkpoint writes, final commit)
  resumes to a store identical to an uninterrupted run's;
- a second writer of a store fails at once (StoreBusy / non-zero exit), and the lock dies with its holder;
- `atlas featurevis` killed mid-run keeps its finished batches and ends identical to an uninterrupted run;
- `store.transaction` killed at random moments leaves either the old or the new store, never a broken one.

Subprocesses run single-threaded (OMP_NUM_THREADS=1) so timings, and results, are stable.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlas import store

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "cli.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
MODEL = "atlas:tiny@random:0"
LAYERS = "visual.layer3.0,visual.layer4.0"


def _mine_cmd(store_path: Path, n: int) -> list[str]:
    return [sys.executable, str(CLI), "mine", "--data", f"synthetic:{n}", "--model", MODEL, "--layers", LAYERS,
            "--batch-size", "16", "--checkpoint-seconds", "0", "--device", "cpu", "--store", str(store_path)]


def _start(cmd: list[str], log: Path, cwd: Path) -> subprocess.Popen:
    with open(log, "wb") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=cwd)


def _kill9(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL


def _lock_holder(store_path: Path) -> int | None:
    """The pid written into the lock file by the last process that took the lock (None if none yet)."""
    try:
        text = store_path.with_name(store_path.name + ".lock").read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    m = re.fullmatch(r"pid (\d+)", text.strip())
    return int(m.group(1)) if m else None


def _tmp(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".tmp")


def _mine_checkpoint(store_path: Path) -> Path | None:
    found = sorted(store.work_dir(store_path).glob("mine-*/checkpoint.npz"))
    return found[0] if found else None


def _mine_position(store_path: Path) -> int:
    ckpt = _mine_checkpoint(store_path)
    if ckpt is None:
        return 0
    with np.load(ckpt, allow_pickle=False) as z:  # must always load: checkpoints are replaced atomically
        return int(z["position"])


def _mine_phase(store_path: Path, pid: int, started: float) -> str:
    """Which part of `atlas mine` process ``pid`` (started at wall time ``started``) is in right now."""
    if store_path.exists():
        return "after-commit"  # the store is complete: removing checkpoints, printing, exiting
    if _lock_holder(store_path) != pid:
        return "start-up"  # imports, model load, data listing: the lock is not taken yet
    tmp = _tmp(store_path)
    try:
        if tmp.stat().st_mtime >= started:
            return "commit"  # inside store.transaction (writing the copy, thumbnails, fsync, rename)
    except FileNotFoundError:
        pass
    for f in store.work_dir(store_path).glob("mine-*/*.tmp.npz"):
        try:
            if f.stat().st_mtime >= started:
                return "checkpoint-write"
        except FileNotFoundError:
            pass
    return "mining"


def _leftovers(folder: Path, store_path: Path) -> list[str]:
    bad = [p.name for p in folder.iterdir() if p.name.startswith(store_path.name) and ".tmp" in p.name]
    if store.work_dir(store_path).exists():
        bad.append(f"{store.work_dir(store_path).name}/ holding {sorted(os.listdir(store.work_dir(store_path)))}")
    return bad


# ------------------------------------------------------------------------------------------------
# 1. kill -9 during `atlas mine`

MINE_N = 1000  # one uninterrupted run: ~2.7 s start-up, ~1.8 s mining, ~1.5 s commit (thumbnails) here
PLANNED_KILLS = 7
SEED = 20240611


@pytest.mark.slow
def test_kill_9_during_mine_resumes_to_identical_store(tmp_path):
    a, b = tmp_path / "A.h5", tmp_path / "B.h5"

    # reference: one uninterrupted run, timing its phases to spread the kills over a whole run
    t0 = time.monotonic()
    p = _start(_mine_cmd(a, MINE_N), tmp_path / "ref.log", tmp_path)
    t_lock = t_commit = None
    while p.poll() is None:
        t = time.monotonic() - t0
        if t_lock is None and _lock_holder(a) == p.pid:
            t_lock = t
        if t_commit is None and _tmp(a).exists():
            t_commit = t
        time.sleep(0.01)
    t_exit = time.monotonic() - t0
    assert p.returncode == 0, (tmp_path / "ref.log").read_text()
    assert t_lock is not None and t_commit is not None and t_lock < t_commit < t_exit, (t_lock, t_commit, t_exit)
    assert _leftovers(tmp_path, a) == []

    def expected_runtime(position: int) -> float:
        return t_lock + (t_commit - t_lock) * (1 - position / MINE_N) + (t_exit - t_commit)

    # kill times: one draw per stratum of a run's expected runtime (3 % .. 93 %), in seeded random order;
    # the first three from the lower strata so that a fast run cannot end the test before 3 kills
    rng = random.Random(SEED)
    fractions = [0.03 + 0.90 * (i + rng.random()) / PLANNED_KILLS for i in range(PLANNED_KILLS)]
    low, rest = [f for f in fractions if f < 0.55], [f for f in fractions if f >= 0.55]
    rng.shuffle(low)
    first, rest = low[:3], low[3:] + rest
    rng.shuffle(rest)
    fractions = first + rest

    kills: list[dict] = []
    logs: list[str] = []
    for attempt in range(PLANNED_KILLS + 1):  # the last attempt is never killed
        position = _mine_position(b)
        planned = attempt < PLANNED_KILLS and not b.exists()  # no more kills once the store is committed
        delay = fractions[attempt] * expected_runtime(position) if planned else None
        log = tmp_path / f"B-run{attempt}.log"
        started = time.time()
        p = _start(_mine_cmd(b, MINE_N), log, tmp_path)
        if planned and len(kills) >= 3 and not any(k["had_checkpoint"] for k in kills):
            # three timed kills and none after a checkpoint (a loaded machine runs slower than the reference run,
            # and the next timed kill may come after the run's end): this one waits for the run's next checkpoint,
            # then kills
            deadline = time.monotonic() + 120
            while p.poll() is None and _mine_position(b) <= position and time.monotonic() < deadline:
                time.sleep(0.01)
            delay = 0.0
        try:
            p.wait(timeout=delay if delay is not None else 120)
        except subprocess.TimeoutExpired:
            if delay is None:
                p.kill()
                p.wait()
                pytest.fail(f"the final `atlas mine` run hung:\n{log.read_text()}")
            had_checkpoint = _mine_checkpoint(b) is not None
            phase = _mine_phase(b, p.pid, started)
            _kill9(p)
            logs.append(log.read_text())
            kills.append(dict(delay=round(delay, 2), phase=phase, had_checkpoint=had_checkpoint,
                              position_before=position, position_after=_mine_position(b)))
            continue
        logs.append(log.read_text())
        assert p.returncode == 0, logs[-1]
        break

    report = "\n".join(str(k) for k in kills)
    print(f"\nreference run: lock {t_lock:.2f}s, commit {t_commit:.2f}s, exit {t_exit:.2f}s\nkills:\n{report}")
    assert len(kills) >= 3, f"only {len(kills)} kills landed while `atlas mine` ran:\n{report}"
    assert any(k["had_checkpoint"] for k in kills), f"no kill landed after a checkpoint existed:\n{report}"
    assert any("resumed at image" in text for text in logs), "no run resumed from a checkpoint:\n" + logs[-1]
    assert _leftovers(tmp_path, b) == [], report
    assert store.contents_digest(a) == store.contents_digest(b), report


def test_mine_after_an_unfinished_clean_up_removes_the_checkpoints(tmp_path, tiny_model, monkeypatch):
    """A run killed between its commit and the removal of its work folder: the next run has nothing to
    mine, and must still remove the stale checkpoints (the kills above only rarely land in that window)."""
    from atlas.config import MineConfig
    from atlas.data import open_source
    from atlas.mining import mine

    s = tmp_path / "S.h5"
    cfg = MineConfig(layers=tuple(LAYERS.split(",")), batch_size=16)
    with monkeypatch.context() as m:
        m.setattr(store, "remove_work", lambda work: None)  # "dies" right after the commit
        mine(tiny_model, open_source("synthetic:32"), s, cfg, checkpoint_seconds=0)
    assert _mine_checkpoint(s) is not None
    r = mine(tiny_model, open_source("synthetic:32"), s, cfg, checkpoint_seconds=0)
    assert r.skipped_layers == cfg.layers
    assert _leftovers(tmp_path, s) == []


# ------------------------------------------------------------------------------------------------
# 2. one writer at a time


@pytest.mark.slow
def test_second_writer_fails_at_once(tmp_path, tiny_model):
    from atlas.config import MineConfig
    from atlas.data import open_source
    from atlas.mining import mine

    n = 5000
    s = tmp_path / "busy.h5"
    bg = _start(_mine_cmd(s, n), tmp_path / "bg.log", tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not (_lock_holder(s) == bg.pid and store.work_dir(s).is_dir()):
            assert bg.poll() is None, (tmp_path / "bg.log").read_text()
            assert time.monotonic() < deadline, "the background `atlas mine` never took the lock"
            time.sleep(0.02)
        os.kill(bg.pid, signal.SIGSTOP)  # frozen while holding the lock: it cannot finish, and frees the CPU

        # in-process second writer
        source = open_source(f"synthetic:{n}")
        cfg = MineConfig(layers=tuple(LAYERS.split(",")), batch_size=16)
        t = time.monotonic()
        with pytest.raises(store.StoreBusy) as err:
            mine(tiny_model, source, s, cfg, checkpoint_seconds=0)
        assert time.monotonic() - t < 2.0
        assert "being written" in str(err.value) and str(s) in str(err.value), str(err.value)
        assert f"pid {bg.pid}" in str(err.value)

        # second writer through the CLI: a clean error, non-zero exit
        second = subprocess.run(_mine_cmd(s, n), capture_output=True, text=True, env=ENV, cwd=tmp_path,
                                timeout=60)
        assert second.returncode != 0
        assert "being written" in second.stderr and str(s) in second.stderr, second.stderr
        assert "Traceback" not in second.stderr, second.stderr
        assert bg.poll() is None and _lock_holder(s) == bg.pid, "the first writer must hold the lock all along"
    finally:
        if bg.poll() is None:
            _kill9(bg)
    assert not s.exists()  # the killed writer never committed

    # the kernel dropped the dead writer's flock: the lock can be taken at once
    t = time.monotonic()
    with store.lock(s):
        assert _lock_holder(s) == os.getpid()
    assert time.monotonic() - t < 0.5


def test_lock_held_here_refuses_a_subprocess(tmp_path):
    s = tmp_path / "locked.h5"
    probe = textwrap.dedent("""
        import sys, time
        from atlas import store
        t = time.monotonic()
        try:
            with store.lock(sys.argv[1]):
                print("ACQUIRED")
        except store.StoreBusy as e:
            print(f"BUSY {time.monotonic() - t:.3f} {e}")
    """)
    with store.lock(s):
        r = subprocess.run([sys.executable, "-c", probe, str(s)], capture_output=True, text=True, env=ENV,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("BUSY "), r.stdout + r.stderr
        assert float(r.stdout.split()[1]) < 1.0
        assert "being written" in r.stdout and str(s) in r.stdout and f"pid {os.getpid()}" in r.stdout, r.stdout
    r = subprocess.run([sys.executable, "-c", probe, str(s)], capture_output=True, text=True, env=ENV, timeout=60)
    assert r.stdout.strip() == "ACQUIRED", r.stdout + r.stderr  # released with the block


# ------------------------------------------------------------------------------------------------
# 3. kill -9 during `atlas featurevis`

FV_LAYER = "visual.layer4.0"


def _featurevis_cmd(store_path: Path) -> list[str]:
    return [sys.executable, str(CLI), "featurevis", "--store", str(store_path), "--layer", FV_LAYER,
            "--units", "0-47", "--batch", "8", "--steps", "30", "--device", "cpu"]


def _batch_checkpoints(store_path: Path) -> list[Path]:
    return [p for p in store.work_dir(store_path).glob("featurevis-*/units-*.npz") if not p.name.endswith(".tmp.npz")]


@pytest.mark.slow
def test_kill_9_during_featurevis_keeps_finished_batches(tmp_path, small_store):
    ref, s = tmp_path / "ref.h5", tmp_path / "S.h5"
    shutil.copyfile(small_store, ref)
    shutil.copyfile(small_store, s)

    reference = _start(_featurevis_cmd(ref), tmp_path / "ref.log", tmp_path)  # uninterrupted, alongside
    try:
        p = _start(_featurevis_cmd(s), tmp_path / "killed.log", tmp_path)
        deadline = time.monotonic() + 120
        while len(_batch_checkpoints(s)) < 2:
            assert p.poll() is None, "ended before the kill:\n" + (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        _kill9(p)
        saved = len(_batch_checkpoints(s))
        assert 2 <= saved < 6, saved
        assert store.contents_digest(s) == store.contents_digest(small_store)  # nothing was committed

        rerun = subprocess.run(_featurevis_cmd(s), capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        m = re.search(r"rendered (\d+) neurons \((\d+) already done\)", rerun.stdout)
        assert m, rerun.stdout
        rendered, reused = int(m.group(1)), int(m.group(2))
        assert reused >= 8 * saved and rendered + reused == 48, rerun.stdout

        assert reference.wait(timeout=120) == 0, (tmp_path / "ref.log").read_text()
    finally:
        if reference.poll() is None:
            _kill9(reference)

    with store.Store(ref) as a, store.Store(s) as b:
        la, lb = a.layer(_model_name(a), FV_LAYER), b.layer(_model_name(b), FV_LAYER)
        assert lb.featurevis_done()[:48].all()
        assert np.array_equal(la["featurevis/done"], lb["featurevis/done"])
        assert np.array_equal(la["featurevis/images"], lb["featurevis/images"])
        assert np.array_equal(la["featurevis/objective"], lb["featurevis/objective"], equal_nan=True)
    assert store.contents_digest(ref) == store.contents_digest(s)
    assert not list(tmp_path.glob("*.tmp*"))


def _model_name(st: store.Store) -> str:
    (name,) = st.models()
    return name


# ------------------------------------------------------------------------------------------------
# 4. kill -9 during store.transaction

SCRATCH_BYTES = 50_000_000
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from atlas import store
    path, gen = sys.argv[1], int(sys.argv[2])
    base = np.random.default_rng(0).integers(0, 256, {n}, dtype=np.uint8)
    print("ready", flush=True)
    while True:
        gen += 1
        with store.lock(path), store.transaction(path) as f:
            if "scratch" in f:
                del f["scratch"]
            f.create_dataset("scratch", data=base + np.uint8(gen % 256))
            f.attrs["scratch_gen"] = gen
        sys.stdout.write("committed %d\\n" % gen)  # one write: a kill can't split it into pieces
        sys.stdout.flush()
""").format(n=SCRATCH_BYTES)


def _digest_without_scratch(path: Path) -> str:
    """store.contents_digest, leaving out the writer's `scratch` dataset and attribute."""
    return store.contents_digest(path, skip=("scratch",))


@pytest.mark.slow
def test_commit_is_atomic(tmp_path, small_store):
    s = tmp_path / "T.h5"
    shutil.copyfile(small_store, s)
    original = _digest_without_scratch(s)
    assert original == _digest_without_scratch(small_store)
    base = np.random.default_rng(0).integers(0, 256, SCRATCH_BYTES, dtype=np.uint8)
    rng = random.Random(SEED)
    gen = 0  # the generation of `scratch` the store holds (0: none yet)
    mid_transaction = commits = 0
    for _ in range(8):
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(s), str(gen)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=ENV, text=True)
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
        time.sleep(rng.uniform(0.0, 0.4))
        assert w.poll() is None, w.stderr.read()
        _kill9(w)
        mid_transaction += _tmp(s).exists()
        # whole lines only: a line cut by the kill (no newline) was never reported
        lines = w.stdout.read().split("\n")[:-1]
        printed = [int(line.split()[1]) for line in lines if line.startswith("committed ")]
        last_printed = printed[-1] if printed else gen

        with h5py.File(s, "r") as f:  # must open: never a half-written file
            now = int(f.attrs.get("scratch_gen", 0))
            # either the last commit it reported, or one more it finished but had no time to report
            assert now in (last_printed, last_printed + 1), (gen, last_printed, now)
            assert ("scratch" in f) == (now > 0)
            if now:
                assert np.array_equal(f["scratch"][()], base + np.uint8(now % 256)), f"generation {now} is corrupt"
        assert _digest_without_scratch(s) == original
        commits += now - gen
        gen = now
    print(f"\n{commits} commits, {mid_transaction} of 8 kills left a half-written {_tmp(s).name}")
    assert commits >= 1 and mid_transaction >= 1

    # the next writer clears what the killed one left and commits normally
    with store.lock(s), store.transaction(s) as f:
        del f["scratch"]
        del f.attrs["scratch_gen"]
    assert not _tmp(s).exists()
    assert store.contents_digest(s) == store.contents_digest(small_store)
