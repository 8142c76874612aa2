"""Peak memory of `atlas mine` against the number of images: it must not grow with N beyond the pooled matrix,
which lives on disk (a memmap) and is written to the store in blocks.

    python bench/scale_rss.py [--sizes 2000,8000,32000] [--model atlas:tiny@random:0] [--layers ...] [--quick]

Each size runs `atlas.mining.mine` over ``synthetic:N`` in a fresh process (one decoding process: 0 workers, so
the figures are one process's), into a fresh store, while a thread samples /proc/self/status every 20 ms.  Printed
per size: the peak of RssAnon (private memory: what the process really holds), the peak of RssFile (pages of mapped
files, the pooled memmaps among them: the kernel drops them under pressure), VmHWM (the kernel's own peak RSS, both
kinds), the pooled bytes of the run, the bytes of the thumbnails the store keeps (every image that is some unit's
top example: at most units x k per layer, whatever N) and the store's size.  ``--quick``: sizes 256 and 1024 (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
from pathlib import Path
peak = {"RssAnon": 0, "RssFile": 0}
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile", "VmHWM"):
            out[k] = int(v.split()[0]) * 1024
    return out
stop = threading.Event()
def sample():
    while not stop.is_set():
        s = status()
        for k in peak:
            peak[k] = max(peak[k], s[k])
        time.sleep(0.02)
import torch
torch.set_num_threads(1)
from atlas.config import MineConfig
from atlas.data import open_source
from atlas.mining import mine
from atlas.models import load_model
n, model, layers, out = int(sys.argv[1]), sys.argv[2], tuple(sys.argv[3].split(",")), Path(sys.argv[4])
m = load_model(model)
src = open_source(f"synthetic:{n}")
base = status()
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
r = mine(m, src, out, MineConfig(layers=layers, batch_size=64), num_workers=0)
secs = time.perf_counter() - t
stop.set(); time.sleep(0.05)
s = status()
for k in peak:
    peak[k] = max(peak[k], s[k])
pooled = sum(n * m.layer(l).units * 4 for l in layers)
import h5py
with h5py.File(out, "r") as f:
    thumbs = f["images/thumbs"].shape[0] * f["images/thumbs"][0].nbytes if "images/thumbs" in f else 0
print(json.dumps({"thumbs": thumbs, "n": n, "before_anon": base["RssAnon"], "peak_anon": peak["RssAnon"], "peak_file": peak["RssFile"],
                  "vmhwm": s["VmHWM"], "pooled": pooled, "store": out.stat().st_size, "seconds": secs}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,8000,32000")
    ap.add_argument("--model", default="atlas:tiny@random:0")
    ap.add_argument("--layers", default="visual.layer3.0,visual.layer4.0")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    sizes = [256, 1024] if a.quick else [int(x) for x in a.sizes.split(",")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    mb = lambda b: f"{b / 2**20:8.1f}"
    print(f"{'images':>8} {'anon before':>12} {'peak anon':>10} {'peak file':>10} {'VmHWM':>8} {'pooled':>8} "
          f"{'thumbs':>8} {'store':>8} {'images/s':>9}   (MiB)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            out = Path(tmp) / f"rss-{n}.h5"
            r = subprocess.run([sys.executable, "-c", CHILD, str(n), a.model, a.layers, str(out)], env=env,
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr)
            d = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(d)
            print(f"{n:>8} {mb(d['before_anon']):>12} {mb(d['peak_anon']):>10} {mb(d['peak_file']):>10} "
                  f"{mb(d['vmhwm']):>8} {mb(d['pooled']):>8} {mb(d['thumbs']):>8} {mb(d['store']):>8} {n / d['seconds']:>9.0f}")
    grew = rows[-1]["peak_anon"] - rows[0]["peak_anon"]
    thumbs = rows[-1]["thumbs"] - rows[0]["thumbs"]
    print(f"from {sizes[0]} to {sizes[-1]} images: peak anon {grew / 2**20:+.1f} MiB, the thumbnail table "
          f"{thumbs / 2**20:+.1f} MiB (bounded by units x k per layer), the rest "
          f"{(grew - thumbs) / (sizes[-1] - sizes[0]):.0f} bytes per image (the image index)")

if __name__ == "__main__":
    main()
