"""How far each mining mode is from the independent reference: `atlas verify`'s figures per model and mode.

    python bench/verify_modes.py [--n 1024] [--models default,open_clip:RN50@random:0,...] [--modes ...] [--quick]

Writes ``--n`` JPEGs of mixed sizes (`data_path.write_jpegs(mixed=True)`) into a temporary folder; for each model
and mode mines the model's default layers into a fresh store with `atlas.mining.mine` (top-k 16, batch 64, the
mode's precision and pixels, on the device: the whole fast path, i.e. CUDA graphs, Triton kernels and fused blocks
where they apply) and runs `atlas.verify.verify` (``--units`` units per layer on their top-k plus ``--images``
random images; the reference path: plain PIL, open_clip's transform, eager float32, TF32 off).  Prints per model,
mode and layer: the share of units with the same top-k set, the largest absolute error, the largest error relative
to the unit's scale, units outranked by a sampled image, and the tolerance `atlas verify` applies to that mode.
These are the figures of docs/store.md ("Tolerances").  ``--quick``: 48 images, the tiny model, the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_path import write_jpegs

from atlas.config import MineConfig, VerifyConfig
from atlas.data import FolderSource
from atlas.mining import mine
from atlas.models import load_model
from atlas.verify import verify

MODES = {"float32-exact": ("float32", "exact"), "bfloat16-exact": ("bfloat16", "exact"),
         "bfloat16-approx": ("bfloat16", "approx"), "bfloat16-draft": ("bfloat16", "draft"),
         "float32-approx": ("float32", "approx"), "float32-draft": ("float32", "draft")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--models", default="default,open_clip:RN50@random:0,open_clip:ViT-B-32@random:0")
    ap.add_argument("--modes", default="float32-exact,bfloat16-exact,bfloat16-approx,bfloat16-draft")
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.models, args.device, args.workers = 48, "atlas:tiny@random:0", "cpu", 2
        args.modes, args.units, args.images = "float32-exact,float32-approx,float32-draft", 16, 16
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{args.n} mixed-size JPEGs; {name}; {args.units} units per layer, {args.images} random images; "
          f"torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="atlas-verify-") as tmp:
        folder = Path(tmp) / "jpegs"
        folder.mkdir()
        write_jpegs(folder, args.n, mixed=True)
        source = FolderSource(folder)
        for spec in args.models.split(","):
            model = load_model(spec, device=device)
            for mode in args.modes.split(","):
                precision, pixels = MODES[mode]
                if precision == "bfloat16" and device.type == "cpu" and not args.quick:
                    pass  # CPU bfloat16 autocast runs, slowly: kept for completeness
                store_path = Path(tmp) / f"{model.name}-{mode}.h5"
                t = time.perf_counter()
                mine(model, source, store_path, MineConfig(top_k=16, batch_size=64, precision=precision,
                                                           pixels=pixels), num_workers=args.workers)
                mined = time.perf_counter() - t
                r = verify(model, source, store_path, VerifyConfig(units=args.units, images=args.images))
                for c in r.layers:
                    rows.append((model.name, mode, c))
                    print(f"{model.name:<12} {mode:<16} {c.line()}  [mined in {mined:.1f} s, verified in "
                          f"{r.seconds:.1f} s]", flush=True)
                store_path.unlink()
            del model
    print("\nmodel        mode             same top-k  max abs     max rel     outranked  tolerance")
    for model_name, mode, c in rows:
        print(f"{model_name:<12} {mode:<16} {100 * c.topk_match:>9.1f}%  {c.max_abs:<10.3g}  {c.max_rel:<10.3g}  "
              f"{c.outranked:>9}  {c.tolerance:g}  {c.layer}")
    worst = {}
    for _, mode, c in rows:
        worst[mode] = max(worst.get(mode, 0.0), c.max_rel)
    print("worst max rel per mode: " + ", ".join(f"{m} {v:.3g}" for m, v in worst.items()))


if __name__ == "__main__":
    main()
