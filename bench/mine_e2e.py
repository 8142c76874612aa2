"""Does `atlas mine` from JPEG files keep up with the GPU?  Forward-only vs the whole mine() call, one run.

    python bench/mine_e2e.py [--n 8192] [--batch 256] [--workers 14] [--precision auto] [--mixed]
                             [--paths exact-device,exact-cpu,approx,draft-cpu] [--quick]

Writes ``--n`` synthetic JPEGs (400x300, varied content, quality 90; `bench/data_path.py`'s `write_jpegs`) into a
temporary folder, loads ``--model`` (open_clip:RN50x4@random:0, 288 px) once, then measures on one device:

- forward-only: the image tower alone (``model.clip.visual``, no hooks) on normalized pixels already on the
  device, set up as mining sets it up (`atlas.mining.loop._model_path`: bf16 autocast and channels_last on CUDA, for
  ``--precision auto``), ``--n`` images in batches of ``--batch``; again with the mined blocks' tails fused as
  mine() fuses them on CUDA (atlas.mining.fused_tails, no reduction: "forward-fused"); the faster of the two is the ceiling;
- end-to-end: one `atlas.mining.mine(...)` call from the JPEG folder into a fresh store in the temporary folder,
  mining the model's default layers with ``MineConfig(batch_size=--batch)`` otherwise at its defaults (top-k 16,
  keep_pooled), ``--workers`` decoding processes: everything but the model load -- worker start-up, decoding
  (`JpegLoader`, PIL crop in the workers: mining's exact pixels), copies, forward, the top-k and statistics
  updates, checkpoints, the commit with its thumbnails.  Its phases (`MineResult.seconds`) are printed.

Before the timed mine() call, one untimed mine() of two batches into a scratch store compiles the mining
kernels (Triton, on CUDA) and warms the allocator.  Prints images/s of both and the ratio end-to-end /
forward-only (target: >= 0.9).  The files are freshly written, so they are read from the page cache.
``--paths``: the end-to-end call once per pixel path, each into a fresh store: ``exact-device`` (the default on
CUDA: full decode in the workers, PIL's resize computed exactly on the GPU), ``exact-cpu`` (PIL's resize in the
workers), ``approx`` (torch's float bicubic on the GPU), ``draft-cpu``/``draft-device`` (libjpeg draft decoding).
``--mixed``: JPEGs of mixed sizes (`data_path.MIXED_SIZES`) instead of 400x300 (a shape group per size on the
device path).  ``--quick``: 64 small files, the tiny model, the CPU: checks that the script runs.
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

from atlas.config import PRECISIONS, MineConfig
from atlas.data import FolderSource
from atlas.data.loader import normalize
from atlas.mining.loop import _model_path, _precision, mine
from atlas.models import load_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_only(model, n: int, batch: int, precision: str, fused: bool = False) -> float:
    """Images/s of the image tower alone on pixels on the device, as mining runs it; ``fused``: with the default
    layers' ResNet block tails fused as mine() fuses them on CUDA (atlas.mining.fused_tails), without the reduction."""
    from contextlib import nullcontext

    from atlas.mining.fused_tails import fused_tails
    from atlas.mining.loop import _fusable_layers

    device, s = model.device, model.image_size
    gen = torch.Generator(device=device).manual_seed(0)
    pixels = torch.randint(0, 256, (batch, 3, s, s), dtype=torch.uint8, device=device, generator=gen)
    steps = max(1, n // batch)
    blocks = _fusable_layers(model, [model.layer(n) for n in model.default_layers], None) if fused else {}
    if fused and not blocks:
        return 0.0
    with torch.no_grad(), fused_tails(blocks) if blocks else nullcontext(), \
            _model_path(model, precision) as memory_format:
        x = normalize(pixels, model.mean, model.std).contiguous(memory_format=memory_format)
        for _ in range(3):  # warm-up: cuDNN's algorithm choice, the allocator
            model.clip.visual(x)
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            model.clip.visual(x)
        sync(device)
        dt = time.perf_counter() - t
    label = "forward-fused" if fused else "forward-only"
    print(f"{label:<14} {steps * batch:>7} images {dt:>8.2f} s {steps * batch / dt:>9.0f} images/s", flush=True)
    return steps * batch / dt


def end_to_end(model, folder: Path, out: Path, cfg: MineConfig, workers: int, forward_rate: float,
               resize: str = "auto") -> float:
    """Images/s of one whole mine() call (after an untimed two-batch warm-up into a scratch store)."""
    source = FolderSource(folder)
    t = time.perf_counter()
    for f in out.glob("*.h5"):
        f.unlink()
    mine(model, source, out / "warmup.h5", MineConfig(batch_size=cfg.batch_size, max_images=2 * cfg.batch_size,
                                                      precision=cfg.precision, pixels=cfg.pixels),
         num_workers=workers, resize=resize)
    print(f"(warm-up mine() of {2 * cfg.batch_size} images: {time.perf_counter() - t:.2f} s)", flush=True)
    sync(model.device)
    marks: list[tuple[float, int]] = []  # (time, images done) after each batch
    t = time.perf_counter()
    r = mine(model, source, out / "store.h5", cfg, num_workers=workers, resize=resize,
             progress=lambda done, total: marks.append((time.perf_counter(), done)))
    sync(model.device)
    dt = time.perf_counter() - t
    print(f"{'end-to-end':<14} {r.images:>7} images {dt:>8.2f} s {r.images / dt:>9.0f} images/s pixels {cfg.pixels}, "
          f"resize {resize} "
          f"({len(r.layers)} layers: {', '.join(r.layers)}; {r.bad} bad files)", flush=True)
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in r.seconds.items())
    print(f"  mine() phases: {phases}; the rest {dt - sum(r.seconds.values()):.2f} s")
    half = len(marks) // 2
    if len(marks) >= 4:  # the second half of the batches: past the workers' start-up and the pipeline's filling
        (t0, n0), (t1, n1) = marks[half - 1], marks[-2]  # the last mark is taken before the final GPU sync
        rate = (n1 - n0) / (t1 - t0)
        print(f"  second half of the batch loop ({n1 - n0} images): {rate:.0f} images/s = {rate / forward_rate:.2f} "
              "of forward-only")
    loop = r.seconds["wait"] + r.seconds["forward"] + r.seconds["checkpoint"]
    if loop > 0:  # the first batch's wait is worker start-up; checkpoints hold the final GPU sync
        steady = (r.images - cfg.batch_size) / loop
        print(f"  batch loop after the first batch (wait + forward + checkpoints; the CUDA graphs' capture "
              f"included): {steady:.0f} images/s = {steady / forward_rate:.2f} of forward-only")
    return r.images / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="open_clip:RN50x4@random:0")
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--precision", choices=PRECISIONS, default="auto")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--paths", default="exact-device", help="comma-separated: exact-device, exact-cpu, approx, "
                    "draft-cpu, draft-device (see the module docstring)")
    ap.add_argument("--mixed", action="store_true", help="JPEGs of mixed sizes")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.model, args.n, args.batch, args.device, args.workers = "atlas:tiny@random:0", 64, 16, "cpu", 2
        args.paths = "exact-cpu,exact-device,approx,draft-cpu"

    device = torch.device(args.device)
    t = time.perf_counter()
    model = load_model(args.model, device=device)
    for p in model.clip.parameters():
        p.requires_grad_(False)
    precision = _precision(args.precision, device)
    cfg = MineConfig(batch_size=args.batch, precision=precision)
    print(f"model {args.model} at {model.image_size} px loaded in {time.perf_counter() - t:.1f} s; {precision}"
          f"{', channels_last' if device.type == 'cuda' else ''}; batch {args.batch}; {args.workers} workers; "
          f"{os.cpu_count()} CPUs; {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        folder, out = Path(tmp) / "jpegs", Path(tmp) / "out"
        folder.mkdir()
        out.mkdir()
        t = time.perf_counter()
        files = write_jpegs(folder, args.n, mixed=args.mixed)
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"wrote {args.n} JPEGs ({'mixed sizes' if args.mixed else '400x300'}, q90, {mb:.0f} MiB) in "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        fwd = max(forward_only(model, args.n, args.batch, precision),
                  forward_only(model, args.n, args.batch, precision, fused=True))  # the faster is the ceiling
        rows = []
        for path in args.paths.split(","):
            pixels, _, where = path.partition("-")
            run = MineConfig(batch_size=args.batch, precision=precision, pixels=pixels)
            rows.append((path, end_to_end(model, folder, out, run, args.workers, fwd, where or "device")))
    print()
    for path, e2e in rows:
        print(f"{path:<13} whole mine() call / forward-only = {e2e:.0f} / {fwd:.0f} = {e2e / fwd:.2f} "
              "(the commit is a one-off cost: see the phases)")


if __name__ == "__main__":
    main()
