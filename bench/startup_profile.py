"""Where the start of an `atlas mine` process goes: each step from the process's start to the first batch through
the model, timed in one fresh process.

    python bench/startup_profile.py --spec open_clip:RN50x4@W.pt --folder DIR [--device cuda] [--workers 14]

Prints, for each step, the seconds since the process started (Linux /proc, as `atlas mine` reports it) and the
step's own seconds: interpreter start, ``import torch``, ``import atlas`` (CLI), ``import open_clip``, CUDA's
start, `load_model` (build, weights read and hashed, copy to the device), the decoding workers' first batch of
the folder's JPEGs (`atlas.mining.batches`), and one forward of it.  It measures what the startup is made of; it
is not a benchmark of atlas against a peer (bench/mine_vs_naive.py is).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def started() -> float:
    """time.time() at which this process started (Linux /proc)."""
    with open(f"/proc/{os.getpid()}/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


T0 = started()
_last = [T0]


def mark(step: str) -> None:
    now = time.time()
    print(f"{now - T0:7.2f} s  (+{now - _last[0]:5.2f})  {step}", flush=True)
    _last[0] = now


def main() -> None:
    mark("interpreter up")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spec", default=None)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workers", type=int, default=14)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="the shipped model on the CPU, 8 written JPEGs")
    args = ap.parse_args()
    if args.quick:
        import tempfile
        import sys
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from data_path import write_jpegs
        args.folder = tempfile.mkdtemp(prefix="startup-profile-")
        write_jpegs(Path(args.folder), 8, mixed=True)
        args.spec, args.device, args.workers, args.batch = "atlas:conceptclip", "cpu", 1, 4
        mark("wrote 8 JPEGs (--quick)")
    if not args.spec or not args.folder:
        ap.error("--spec and --folder are required (or --quick)")
    import torch
    mark(f"import torch {torch.__version__}")
    import atlas.cli  # noqa: F401
    mark("import atlas.cli")
    import open_clip  # noqa: F401
    mark("import open_clip")
    if args.device.startswith("cuda"):
        torch.cuda.init()
        torch.zeros(1, device=args.device)
        mark("CUDA's start (a first tensor on the GPU)")
    from atlas.models import load_model
    from atlas.data import open_source
    from atlas.mining.batches import batches
    mark("import atlas.models, atlas.data, atlas.mining")
    model = load_model(args.spec, device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    mark(f"load_model {args.spec}")
    source = open_source(args.folder)
    mark(f"open_source ({len(source)} files)")
    it = batches(model, source, 0, min(len(source), args.batch * 4), args.batch, args.workers)
    b = next(it)
    mark(f"first decoded batch of {len(b.good)} images from {args.workers} workers")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=args.device.startswith("cuda")):
        model.clip.encode_image(b.pixels)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    mark("first forward (bf16 autocast, eager)")
    with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=args.device.startswith("cuda")):
        model.clip.encode_image(b.pixels)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    mark("second forward")
    b = next(it)
    mark("second decoded batch")
    del it


if __name__ == "__main__":
    main()
