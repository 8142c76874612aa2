"""Writing a pooled matrix into the store: HDF5's own filter pipeline (one core) against chunks compressed and
checksummed by threads and written raw (`atlas.store.put_rows`), side by side in one run.

    python bench/store_write.py [--rows 200000] [--units 1024] [--store STORE] [--threads N] [--repeat 3] [--quick]

The matrix: float16 [--rows, --units], rows drawn from a real store's pooled matrix (--store, e.g. the default
build's atlas-out/atlas.h5: activations compress differently from noise) repeated to size, else ReLU'd Gaussian
noise.  Each way writes it into a fresh file in a temporary folder; the best of --repeat runs is printed, with
MB/s of the uncompressed matrix and the file size.  Both ways store the same values (checked on read-back).
``--quick``: 4,096 rows x 256 units of noise, one run each: checks that the script runs (seconds).
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


def matrix(rows: int, units: int, source: str | None) -> np.ndarray:
    if source:
        with h5py.File(source, "r") as f:
            names: list[str] = []
            f.visit(lambda n: names.append(n) if n.endswith("/pooled") else None)
            if not names:
                raise SystemExit(f"{source} holds no pooled matrix (neurons/<model>/<layer>/pooled)")
            base = f[max(names, key=lambda n: f[n].shape[1])][()]
        reps = -(-rows // len(base))
        return np.tile(base, (reps, -(-units // base.shape[1])))[:rows, :units]
    x = np.random.default_rng(0).standard_normal((rows, units)).astype(np.float16)
    return np.maximum(x, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--units", type=int, default=1024)
    ap.add_argument("--store", help="a store whose pooled matrix supplies the rows")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a small matrix of noise, one run each (checks the script)")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.units, args.store, args.repeat = 4096, 256, None, 1
    m = matrix(args.rows, args.units, args.store)
    bad = np.zeros(len(m), bool)
    mb = m.nbytes / 1e6
    print(f"h5py {h5py.version.version}, HDF5 {h5py.version.hdf5_version}, {os.cpu_count()} CPUs; matrix {m.shape} "
          f"float16, {mb:.0f} MB, rows from {args.store or 'noise'}")
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
            print(f"  {label:28s} {best:7.2f} s {mb / best:7.0f} MB/s  file {path.stat().st_size / m.nbytes:.2f} "
                  "of the matrix")
        first, second = results.values()
        print(f"speed-up: {first / second:.2f}x")


if __name__ == "__main__":
    main()
