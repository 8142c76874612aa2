"""Data-parallel mining (atlas.mining.distributed) with 2 CPU processes over gloo, started by torchrun: the store is
bit for bit the one-process store (every dataset and attribute compared here with h5py), a killed rank resumes, and
a rerun on another number of processes or a broken process group is refused with a message that says what to do."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from atlas.config import MineConfig
from atlas.data import open_source
from atlas.mining import mine
from atlas.mining.distributed import DistributedError, Stitched, _widen, join
from test_shards import make_shards

import torch

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("visual.layer3.0", "visual.layer4.0")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
for _k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_k, None)


def _one_process(model, data: str, path: Path, batch: int) -> None:
    """The reference store, mined here with one intra-op thread as each torchrun process runs (OMP_NUM_THREADS=1):
    on a CPU, float32 sums depend on how many threads share them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mine(model, open_source(data), path, MineConfig(layers=LAYERS, batch_size=batch, precision="float32"),
             num_workers=0)
    finally:
        torch.set_num_threads(threads)


def _mine_args(data: str, store_path: Path, batch: int) -> list[str]:
    return ["-m", "atlas", "mine", "--data", data, "--model", "atlas:tiny@random:0", "--layers", ",".join(LAYERS),
            "--batch-size", str(batch), "--checkpoint-seconds", "0", "--device", "cpu", "--workers", "0",
            "--precision", "float32", "--store", str(store_path)]


def _torchrun(args: list[str], log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=log.parent)


def assert_same_store(a: Path, b: Path) -> int:
    """Every group, dataset (dtype, shape, bytes) and attribute of two HDF5 files equal; returns datasets compared."""
    compared = 0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names_a, names_b = [], []
        fa.visit(names_a.append)
        fb.visit(names_b.append)
        assert sorted(names_a) == sorted(names_b)
        for name in ["/", *names_a]:
            oa, ob = fa[name], fb[name]
            assert sorted(oa.attrs) == sorted(ob.attrs), name
            for k in oa.attrs:
                assert np.array_equal(np.asarray(oa.attrs[k]), np.asarray(ob.attrs[k])), (name, k)
            if isinstance(oa, h5py.Dataset):
                x, y = np.asarray(oa[()]), np.asarray(ob[()])
                assert (x.dtype, x.shape) == (y.dtype, y.shape), name
                assert x.tobytes() == y.tobytes(), f"{name} differs"  # bitwise: NaN rows and -0.0 included
                compared += 1
    return compared


def test_two_processes_make_the_one_process_store(tmp_path, tiny_model):
    """Tar shards with a corrupt JPEG member, 2 ranks (uneven parts: 7 batches of 4): bit for bit equal."""
    make_shards(tmp_path / "s", shards=3, per=9, corrupt=(5, 20))
    data = str(tmp_path / "s" / "{00000..00002}.tar")
    one = tmp_path / "one.h5"
    _one_process(tiny_model, data, one, 4)
    two = tmp_path / "two.h5"
    p = _torchrun(_mine_args(data, two, 4), tmp_path / "two.log")
    assert p.wait(timeout=180) == 0, (tmp_path / "two.log").read_text()
    text = (tmp_path / "two.log").read_text()
    assert "rank 1 of 2: mined images [12, 27) (1 bad files)" in text, text
    assert not (tmp_path / "two.h5.work").exists()
    assert assert_same_store(one, two) == 38  # 8 image columns + 15 per layer
    with h5py.File(two, "r") as f:
        assert np.nonzero(f["images/status"][()])[0].tolist() == [5, 20]
        assert f["neurons/tiny/visual.layer4.0/stats/count"][0] == 25


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _rank_pid(torchrun_pid: int, rank: int) -> int | None:
    for pid in _children(torchrun_pid):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def _position(store_path: Path, rank: int) -> int:
    found = list(Path(str(store_path) + ".work").glob(f"mine-*/rank{rank}-of-2/checkpoint.npz"))
    if not found:
        return -1
    try:
        with np.load(found[0]) as z:
            return int(z["position"])
    except (OSError, ValueError, KeyError):
        return -1


def test_killed_rank_resumes_to_the_one_process_store(tmp_path, tiny_model):
    data = "synthetic:320"
    one = tmp_path / "one.h5"
    _one_process(tiny_model, data, one, 8)
    two = tmp_path / "two.h5"
    p = _torchrun(_mine_args(data, two, 8), tmp_path / "run1.log")
    killed_at, deadline = None, time.monotonic() + 150
    while p.poll() is None and time.monotonic() < deadline:
        pos = _position(two, 1)
        if 160 + 16 <= pos < 300:  # rank 1 (images [160, 320)) has checkpointed at least two batches
            pid = _rank_pid(p.pid, 1)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed_at = pos
                break
        time.sleep(0.005)
    rc = p.wait(timeout=120)
    log = (tmp_path / "run1.log").read_text()
    if killed_at is None:
        pytest.fail(f"rank 1 finished before it could be killed (rc {rc}):\n{log}")
    assert rc != 0 and not two.exists(), log
    # a rerun on one process is refused: the checkpoints belong to parts of a 2-process run
    r = subprocess.run([sys.executable, *_mine_args(data, two, 8)], env=ENV, cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "another number of processes" in r.stderr and "rank0-of-2" in r.stderr, r.stderr
    p = _torchrun(_mine_args(data, two, 8), tmp_path / "run2.log")
    assert p.wait(timeout=180) == 0, (tmp_path / "run2.log").read_text()
    log2 = (tmp_path / "run2.log").read_text()
    assert "rank 1 of 2: mined images [160, 320) (0 bad files, resumed at image" in log2, log2
    assert int(log2.split("rank 1 of 2: mined images [160, 320) (0 bad files, resumed at image ")[1].split(")")[0]) \
        >= killed_at
    assert assert_same_store(one, two) == 38  # 8 image columns + 15 per layer
    assert not (tmp_path / "two.h5.work").exists()


def test_world_size_without_a_process_group_says_what_to_do(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(DistributedError, match="WORLD_SIZE=2 is set .*start atlas with torchrun"):
        join()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(DistributedError, match="WORLD_SIZE='two' is not a whole number"):
        join()


def test_histograms_widen_as_mining_widens_them():
    """_widen: a histogram over [-R, R] widened by 2**g equals binning the same scores over [-R 2**g, R 2**g]."""
    rng = np.random.default_rng(0)
    s = rng.normal(0, 3, 500)
    bins, r = 16, 8.0

    def hist(scale: float) -> np.ndarray:
        w = scale / (bins // 2)
        return np.bincount(np.clip(np.floor(s / w).astype(int) + bins // 2, 0, bins - 1), minlength=bins)

    s = s[np.abs(s) < r]
    h = torch.from_numpy(np.stack([hist(r), hist(r)]))
    wide = _widen(h, torch.tensor([2, 0]))
    assert np.array_equal(wide[0].numpy(), hist(4 * r)) and np.array_equal(wide[1].numpy(), hist(r))


def test_stitched_reads_rows_across_ranks():
    a, b = np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(12, 20, dtype=np.float32).reshape(2, 4)
    m = Stitched([(0, 3, a), (3, 5, b)], 5, 4)
    assert np.array_equal(m[1:5], np.concatenate([a, b])[1:5]) and m[:1].nbytes == 16 and m.shape == (5, 4)


def test_ranks_that_disagree_are_refused(monkeypatch):
    """`Team.agree` (what every rank says, gathered): other settings on one rank, or a rank that failed (rank 0 not
    getting the store's lock), stop every rank with a message naming the rank."""
    from atlas.mining.distributed import Team

    said = [("mine-abc ['visual.layer4.0'] 300", None), ("mine-def ['visual.layer4.0'] 300", None)]
    monkeypatch.setattr(torch.distributed, "all_gather_object", lambda out, obj: out.__setitem__(slice(None), said))
    with pytest.raises(DistributedError, match=r"ranks \[1\] have other settings than rank 0 .*same command"):
        Team(0, 2).agree("settings", said[0][0])
    said[:] = [("", None), ("", "store x.h5 is being written by pid 7")]
    with pytest.raises(DistributedError, match="rank 1 stopped: store x.h5 is being written by pid 7"):
        Team(0, 2).agree("store lock")


def test_union_of_the_ranks_thumbnails(tmp_path):
    """`UnionThumbs`: each image's thumbnail from the rank whose part holds it; what a rank did not make is not done."""
    from atlas.mining.thumbs import PassThumbs, UnionThumbs

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = PassThumbs(tmp_path / "a", 10, 2), PassThumbs(tmp_path / "b", 10, 2)
    pics = np.arange(10 * 12, dtype=np.uint8).reshape(10, 2, 2, 3)
    a.put([0, 1, 3], pics[[0, 1, 3]])
    b.put([5, 9], pics[[5, 9]])
    b.put([2], pics[[7]])  # outside b's part [4, 10): ignored
    u = UnionThumbs([(0, 4, a), (4, 10, b)], 10, 2)
    assert u.done.tolist() == [1, 1, 0, 1, 0, 1, 0, 0, 0, 1]
    out = np.zeros((4, 2, 2, 3), np.uint8)
    u.take([9, 0, 5, 3], out)
    assert np.array_equal(out, pics[[9, 0, 5, 3]])


def test_decoding_processes_are_shared_among_a_hosts_ranks(monkeypatch):
    from atlas.mining.distributed import local_share

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert (local_share(14), local_share(2), local_share(0)) == (3, 1, 0)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert local_share(14) == 14


def test_an_sae_layer_mined_by_two_processes_is_the_one_process_layer(tmp_path, tiny_model):
    """An SAE's virtual layer under torchrun: the same store, bit for bit, with its links to the neurons."""
    import shutil

    from atlas.config import SaeConfig
    from atlas.sae import train_sae

    data = "synthetic:24"
    base = tmp_path / "base.h5"
    _one_process(tiny_model, data, base, 4)
    r = train_sae(tiny_model, base, SaeConfig(layer="visual.layer4.0", width="32", k=4, steps=10, batch=32,
                                              dead_after=500), evaluate=False)
    one, two = tmp_path / "one" / "s.h5", tmp_path / "two" / "s.h5"  # (same names: the layer records its SAE file's)
    for p in (one, two):
        p.parent.mkdir()
        shutil.copy(base, p)
        shutil.copytree(f"{base}.sae", f"{p}.sae")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mine(tiny_model, open_source(data), one, MineConfig(layers=(r.layer,), batch_size=4, precision="float32"),
             num_workers=0)
    finally:
        torch.set_num_threads(threads)
    args = _mine_args(data, two, 4)
    args[args.index("--layers") + 1] = r.layer
    p = _torchrun(args, tmp_path / "two.log")
    assert p.wait(timeout=180) == 0, (tmp_path / "two.log").read_text()
    assert assert_same_store(one, two) > 38
    with h5py.File(two, "r") as f:
        g = f[f"neurons/tiny/{r.layer}"]
        assert g["sae/neurons"].shape[0] == 32 and g.attrs["base_layer"] == "visual.layer4.0"
