"""`atlas mine` against the script a user would write, as whole processes on the same JPEGs.

    python bench/mine_vs_naive.py [--n 16384] [--models RN50x4,ViT-B-32,ViT-L-14] [--workers 14] [--batch 256]
                                  [--folder DIR] [--rows naive float32,...] [--repeat 1] [--quick]

Writes (or reuses, in ``--folder``) ``--n`` JPEGs of mixed photo sizes (`data_path.write_jpegs(mixed=True)`),
saves each model's random weights (``open_clip:ARCH@random:0`` from atlas's registry) as an open_clip state dict
so both sides load the same file, then runs, each as its own process timed from launch to exit:

- naive float32 / naive bfloat16: `bench/naive_mine.py` (DataLoader of ``--workers`` processes, open_clip's
  transform, hooks on the model's default layers, spatial max, running topk k=16, pooled means in memory), at
  ``--batch``;
- atlas float32: ``atlas mine --precision float32`` with the same batch and workers (matched to naive float32);
- atlas defaults: ``atlas mine`` with no flags (on a GPU: bfloat16, batch and workers that fit the machine);
- atlas best: ``atlas mine --batch-size B --workers W`` (the flags that were fastest).

For each it prints the whole-process seconds, the startup (from launch until the first batch was through the
model: imports, model load, workers, first decode) and the steady images/s after it, as each process reports
them, and the ratios to the naive script at the same precision.  It then checks that naive float32 and atlas
float32 found the same top-k sets (by file name; ties at the k-th value count as agreement).  On a CPU-only
machine the bfloat16 rows are left out.  ``--quick``: open_clip's RN50 on 24 files, batch 8, 1 worker, on the
CPU: checks that the script runs (its timings are not figures).
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

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data_path import write_jpegs  # noqa: E402

LINE = re.compile(r"in ([\d.]+) s \(whole command\): first batch after ([\d.]+) s(?:, then ([\d,]+) images/s)?")


def run(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    """Run one whole process; its wall time from launch to exit and the startup/steady figures it printed (and,
    for atlas, its settings and seconds-by-phase lines).  A failed process is reported, not fatal."""
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.time() - t
    out = p.stdout + p.stderr
    m = LINE.search(out)
    if p.returncode != 0 or not m:
        print(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{out[-3000:]}", flush=True)
        return {"wall": float("nan"), "startup": float("nan"), "steady": float("nan"), "notes": []}
    steady = float(m.group(3).replace(",", "")) if m.group(3) else float("nan")
    notes = [line for line in out.splitlines() if line.startswith("mine: ") and ("phase" in line or "workers" in line)]
    return {"wall": wall, "startup": float(m.group(2)), "steady": steady, "notes": notes}


def same_topk(naive: Path, store_path: Path, layers: list[str], model_name: str) -> dict[str, float]:
    """Per layer: the fraction of units whose top-k file sets agree (a file swapped with another of the same k-th
    value counts as agreement)."""
    from atlas import store

    got = np.load(naive)
    out = {}
    with store.Store(store_path) as st:
        ids = np.array([str(x) for x in st.image_column("source_id")])
        for layer in layers:
            ld = st.layer(model_name, layer)
            vals, index = ld["topk/values"], ld["topk/index"]  # [U, k]
            nv, nf = got[f"{layer}/values"], got[f"{layer}/files"]
            agree = 0
            for u in range(len(vals)):
                a = set(ids[index[u][index[u] >= 0]])
                b = set(nf[u])
                kth = min(vals[u][-1], nv[u][-1])
                tied = {f for f, v in zip(nf[u], nv[u]) if np.isclose(v, kth, rtol=1e-4)} | \
                       {ids[i] for i, v in zip(index[u], vals[u]) if i >= 0 and np.isclose(v, kth, rtol=1e-4)}
                agree += (a - tied) == (b - tied)
            out[layer] = agree / len(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--models", default="RN50x4,ViT-B-32,ViT-L-14")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--folder", default=None, help="reuse (or write) the JPEGs here")
    ap.add_argument("--rows", default="naive float32,atlas float32,naive bfloat16,atlas defaults,atlas best",
                    help="which rows to run (comma-separated; the top-k check needs both float32 rows)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each row (interleaved); the table shows the "
                    "faster of two or the median of three, and the spread of the whole seconds")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.models, args.workers, args.batch = 24, "RN50", 1, 8
    from atlas import store
    from atlas.models import load_model

    cuda = torch.cuda.is_available() and not args.quick
    tmp = Path(tempfile.mkdtemp(prefix="mine-vs-naive-"))
    folder = Path(args.folder) if args.folder else tmp / "jpegs"
    have = len(list(folder.glob("*.jpg"))) if folder.is_dir() else 0
    if have and have != args.n:  # writing into it would leave other files that both sides then mine
        raise SystemExit(f"--folder {folder} holds {have} JPEGs, not --n {args.n}: give a new or empty folder, "
                         "or the --n it was written with")
    if have != args.n:
        folder.mkdir(parents=True, exist_ok=True)
        write_jpegs(folder, args.n, mixed=True)
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.quick:
        env["OMP_NUM_THREADS"] = "1"
    device = "cuda" if cuda else "cpu"
    print(f"{args.n} JPEGs of mixed sizes in {folder}; device {torch.cuda.get_device_name() if cuda else 'cpu'}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}; each row one whole process, launch to exit")
    for arch in args.models.split(","):
        m = load_model(f"open_clip:{arch}@random:0", device="cpu")
        weights = tmp / f"{arch}.pt"
        torch.save(m.clip.state_dict(), weights)
        layers = list(m.default_layers)
        spec = f"open_clip:{arch}@{weights}"
        naive = [sys.executable, str(HERE / "naive_mine.py"), "--folder", str(folder), "--arch", arch, "--weights",
                 str(weights), "--layers", ",".join(layers), "--k", "16", "--batch", str(args.batch), "--workers",
                 str(args.workers), "--device", device]
        atlas = [sys.executable, "-m", "atlas", "mine", "--model", spec, "--data", str(folder), "--device", device]
        commands = {
            "naive float32": naive + ["--precision", "float32", "--out", str(tmp / f"{arch}-naive.npz")],
            "atlas float32": atlas + ["--store", str(tmp / f"{arch}-f32.h5"), "--precision", "float32",
                                      "--batch-size", str(args.batch), "--workers", str(args.workers)],
            "naive bfloat16": naive + ["--precision", "bfloat16"],
            "atlas defaults": atlas + ["--store", str(tmp / f"{arch}-default.h5")],
            "atlas best": atlas + ["--store", str(tmp / f"{arch}-best.h5"), "--batch-size", str(args.batch),
                                   "--workers", str(args.workers)],
        }
        wanted = [r.strip() for r in args.rows.split(",")]
        rows = {}
        for _ in range(args.repeat):  # rows interleaved, so that drift of the machine touches each alike
            for key, cmd in commands.items():
                if key in wanted and (cuda or "bfloat16" not in key):
                    if "--store" in cmd:  # a fresh store each time (a second run on a mined store has nothing to do)
                        Path(cmd[cmd.index("--store") + 1]).unlink(missing_ok=True)
                    rows.setdefault(key, []).append(run(cmd, env))
        spread = {key: max(r["wall"] for r in rs) - min(r["wall"] for r in rs) for key, rs in rows.items()}
        rows = {key: min(rs, key=lambda r: r["wall"]) if len(rs) < 3 else sorted(rs, key=lambda r: r["wall"])[1]
                for key, rs in rows.items()}  # one run: it; two: the faster; three: the median
        print(f"\n{arch} ({len(layers)} layers: {', '.join(layers)}), {args.n} images, k 16, batch {args.batch}, "
              f"{args.workers} workers where set")
        print(f"{'':16s} {'whole s':>8s} {'startup s':>9s} {'steady img/s':>12s} {'vs naive (whole)':>17s}"
              + (f" {'whole s spread':>14s}" if args.repeat > 1 else ""))
        for key, r in rows.items():
            peer = rows.get("naive bfloat16" if cuda and "float32" not in key else "naive float32")
            ratio = f"{peer['wall'] / r['wall']:.2f}x faster" if peer and not key.startswith("naive") else ""
            print(f"{key:16s} {r['wall']:8.1f} {r['startup']:9.1f} {r['steady']:12,.0f} {ratio:>17s}"
                  + (f" {spread[key]:14.1f}" if args.repeat > 1 else ""))
        for key, r in rows.items():
            for note in r["notes"]:
                print(f"  {key}: {note}")
        if "naive float32" in rows and "atlas float32" in rows and (tmp / f"{arch}-f32.h5").exists():
            with store.Store(tmp / f"{arch}-f32.h5") as st:
                name = st.models()[0]
            agree = same_topk(tmp / f"{arch}-naive.npz", tmp / f"{arch}-f32.h5", layers, name)
            print("same top-16 sets, naive float32 vs atlas float32: "
                  + ", ".join(f"{k} {100 * v:.1f}%" for k, v in agree.items()))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
