"""The commit's pooled write from one memmap against the ranks' files read through `Stitched` (the merge of
`torchrun` mining, atlas.mining.distributed): the same `store.put_rows`, the same bytes.

    python bench/scale_merge.py [--rows 32768] [--units 1024] [--ranks 2] [--repeat 2] [--quick]

The matrix is ReLU'd Gaussian noise in float32; each way writes it into a fresh HDF5 file; the best of --repeat is
printed with MiB/s of the uncompressed matrix, and whether both files hold the same values.  ``--quick``: 2,048 x
256, one run (seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import h5py
import numpy as np

from atlas import store
from atlas.mining.distributed import Stitched


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=32768)
    ap.add_argument("--units", type=int, default=1024)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.rows, a.units, a.repeat = 2048, 256, 1
    n, u = a.rows, a.units
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        whole = np.lib.format.open_memmap(f"{d}/whole.npy", "w+", np.float32, (n, u))
        whole[:] = np.maximum(rng.standard_normal((n, u), np.float32), 0)
        whole.flush()
        cuts = [r * n // a.ranks for r in range(a.ranks + 1)]
        parts = []
        for r in range(a.ranks):
            m = np.lib.format.open_memmap(f"{d}/rank{r}.npy", "w+", np.float32, (cuts[r + 1] - cuts[r], u))
            m[:] = whole[cuts[r]:cuts[r + 1]]
            m.flush()
            parts.append((cuts[r], cuts[r + 1], m))
        bad = np.zeros(n, bool)
        mib = whole.nbytes / 2**20
        for i, (name, rows) in enumerate((("one memmap", whole),
                                          (f"{a.ranks} rank files (Stitched)", Stitched(parts, n, u)))):
            best = float("inf")
            for rep in range(a.repeat):
                with h5py.File(f"{d}/s{i}-{rep}.h5", "w") as f:
                    t = time.perf_counter()
                    store.put_rows(f, "pooled", rows, bad)
                    best = min(best, time.perf_counter() - t)
            print(f"{name}: {n} x {u} float32 ({mib:.0f} MiB) in {best:.2f} s = {mib / best:.0f} MiB/s")
        with h5py.File(f"{d}/s0-0.h5") as f, h5py.File(f"{d}/s1-0.h5") as g:
            print(f"same values: {'yes' if np.array_equal(f['pooled'][()], g['pooled'][()]) else 'no'}")


if __name__ == "__main__":
    main()
