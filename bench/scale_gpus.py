"""Data-parallel mining: one process against N torchrun processes on the same images, and whether the stores agree.

    python bench/scale_gpus.py [--nproc 2] [--data DATA] [--model SPEC] [--layers L1,L2] [--device auto]
                               [--batch-size B] [--workers W] [--precision P] [--quick]

Runs ``atlas mine`` twice as a user does, each a fresh store in a temporary folder: ``python -m atlas mine ...``,
then ``torchrun --standalone --nproc-per-node N -m atlas mine ...`` (every rank its own GPU with ``--device auto``
or ``cuda``; gloo between ranks either way).  Printed per run: the whole command's seconds, images / whole seconds,
the loop's rate (from each process's last progress line: all images over the slowest rank's loop seconds, start-up
and commit left out), then the speedup of the loop rates,
and the store check: bit for bit equal (`store.contents_digest`, expected in float32), else the share of units whose
top-k sets agree per layer (the fast path: bfloat16 on a GPU).  On a GPU host: ``--nproc 2 --device auto`` with
``--data`` a folder or tar shards.  ``--quick``: synthetic:96 on the CPU, tiny model, 2 processes (seconds).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    secs = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")
    return secs, r.stdout + r.stderr


def steady(text: str, ranks: int) -> float:
    """images/s of the loop, from each process's last progress line ("mine: i/n images in T s"): all images over
    the slowest rank's seconds (the job waits for it)."""
    done = re.findall(r"mine: ([\d,]+)/([\d,]+) images in ([\d.]+) s", text)[-ranks:]
    if len(done) < ranks:
        return float("nan")
    return sum(int(n.replace(",", "")) for _, n, _ in done) / max(float(t) for _, _, t in done)


def topk_agreement(a: Path, b: Path) -> dict[str, float]:
    out = {}
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for model in fa["neurons"]:
            for layer in fa[f"neurons/{model}"]:
                ia, ib = (f[f"neurons/{model}/{layer}/topk/index"][()] for f in (fa, fb))
                out[layer] = float(np.mean([set(x) == set(y) for x, y in zip(ia, ib)]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--data", default="synthetic:4096")
    ap.add_argument("--model", default="atlas:tiny@random:0")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", default=None)
    ap.add_argument("--workers", default=None, help="decoding processes per rank (default: what fits)")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.data, a.device, a.batch_size, a.workers, a.nproc = "synthetic:96", "cpu", "16", "0", 2
    from atlas import store

    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if a.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # float32 on a CPU is bit for bit only with the same threads per process
    with tempfile.TemporaryDirectory() as tmp:
        args = ["-m", "atlas", "mine", "--data", a.data, "--model", a.model, "--device", a.device,
                "--precision", a.precision, "--checkpoint-seconds", "600"]
        for flag, value in (("--layers", a.layers), ("--batch-size", a.batch_size), ("--workers", a.workers)):
            if value is not None:
                args += [flag, value]
        one, many = Path(tmp) / "one.h5", Path(tmp) / "many.h5"
        s1, t1 = run([sys.executable, *args, "--store", str(one)], env)
        sn, tn = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                      str(a.nproc), *args, "--store", str(many)], env)
        with h5py.File(one, "r") as f:
            n = int(f.attrs["n_images"])
        r1, rn = steady(t1, 1), steady(tn, a.nproc)
        print(f"data {a.data}, model {a.model}, device {a.device}, precision {a.precision}")
        print(f"{'processes':>10} {'whole s':>8} {'images/whole s':>15} {'loop images/s':>16}")
        print(f"{1:>10} {s1:>8.1f} {n / s1:>15.1f} {r1:>16.1f}")
        print(f"{a.nproc:>10} {sn:>8.1f} {n / sn:>15.1f} {rn:>16.1f}")
        print(f"speedup: loop {rn / r1:.2f}x, whole command {s1 / sn:.2f}x")
        same = store.contents_digest(one) == store.contents_digest(many)
        print(f"stores bit for bit equal: {'yes' if same else 'no'}")
        if not same:
            for layer, share in topk_agreement(one, many).items():
                print(f"  {layer}: same top-k sets for {100 * share:.1f}% of units")


if __name__ == "__main__":
    main()
