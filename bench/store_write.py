"""Writing a pooled matrix into the store: HDF5's own filter pipeline (one core) against chunks compressed and
checksummed by threads and written raw (`atlas.store.put_rows`), side by side in one run.

    python bench/store_write.py [--rows 200000] [--units 1024] [--store STORE] [--threads N] [--repeat 3]
                                [--dtype float32] [--quick]

The matrix: [--rows, --units] in --dtype (float32, as the store keeps pooled activations; float16 for the
comparison: it was the store's dtype before 2026-12-07), rows drawn from a real store's pooled matrix (--store, e.g.
the default build's atlas-out/atlas.h5: activations compress differently from noise) repeated to size, else ReLU'd
Gaussian noise.  Each way writes it into a fresh file in a temporary folder; the best of --repeat runs is printed,
with MB/s of the uncompressed matrix and the file size, and the file size scaled to a layer of 1,000,000 images x
2,560 units (RN50x4's last block).  Both ways store the same values (checked on read-back).  ``--quick``: 4,096 rows
x 256 units of noise, one run each: checks that the script runs (seconds).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from atlas import store


def matrix(rows: int, units: int, source: str | None, dtype: str = "float32") -> np.ndarray:
    if source:
        with h5py.File(source, "r") as f:
            names: list[str] = []
            f.visit(lambda n: names.append(n) if n.endswith("/pooled") else None)
            if not names:
                raise SystemExit(f"{source} holds no pooled matrix (neurons/<model>/<layer>/pooled)")
            base = f[max(names, key=lambda n: f[n].shape[1])][()]
        reps = -(-rows // len(base))
        return np.tile(base, (reps, -(-units // base.shape[1])))[:rows, :units].astype(dtype)
    x = np.random.default_rng(0).standard_normal((rows, units)).astype(dtype)
    return np.maximum(x, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--units", type=int, default=1024)
    ap.add_argument("--store", help="a store whose pooled matrix supplies the rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    ap.add_argument("--quick", action="store_true", help="a small matrix of noise, one run each (checks the script)")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.units, args.store, args.repeat = 4096, 256, None, 1
    m = matrix(args.rows, args.units, args.store, args.dtype)
    bad = np.zeros(len(m), bool)
    mb = m.nbytes / 1e6
    print(f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, {os.cpu_count()} CPUs; matrix {m.shape} "
          f"{args.dtype}, {mb:.0f} MB, rows from {args.store or 'noise'}")
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        results = {}
        for label, threads in (("HDF5 filters (1 core)", 0), (f"{args.threads} threads, raw chunks", args.threads)):
            best = float("inf")
            for k in range(args.repeat):
                path = Path(tmp) / f"{threads}-{k}.h5"
                t = time.perf_counter()
                with h5py.File(path, "w") as f:
                    store.put_rows(f, "pooled", m, bad, threads=threads)
                best = min(best, time.perf_counter() - t)
            with h5py.File(path, "r") as f:
                assert np.array_equal(f["pooled"][()], m, equal_nan=True)
            results[label] = best
            size = path.stat().st_size
            per_layer = size / m.size * 1_000_000 * 2560 / 1e9  # GB for 1M images x 2,560 units
            print(f"  {label:28s} {best:7.2f} s {mb / best:7.0f} MB/s  file {size / m.nbytes:.2f} of the matrix, "
                  f"{per_layer:.2f} GB per 1M-image x 2,560-unit layer")
        first, second = results.values()
        print(f"speed-up: {first / second:.2f}x")


if __name__ == "__main__":
    main()
