"""Does JPEG decoding keep up with the GPU?  Forward-only vs loader-only vs end-to-end images/s, one run.

    python bench/data_path.py [--n 4000] [--batch 256] [--workers 14] [--quick]

Writes ``--n`` synthetic JPEGs (400x300, varied content, quality 90) into a temporary folder, then measures
on one device, each over all files:

- forward-only: the image tower (open_clip:RN50x4@random:0, 288 px) in bf16 autocast, channels_last,
  on pixels already on the device, with the mining reduce (spatial max and mean of the last block, by
  a hook); this is the ceiling;
- loader-only: `atlas.data.loader.JpegLoader` with GPU decode (nvJPEG, GPU resize) and with CPU worker
  processes (PIL decode as mining's, resize on the GPU: the loader's default on CUDA), down to uint8
  batches on the device;
- end-to-end: loader + normalize + the same forward and reduce, for each decode path.

Prints images/s for each and the ratio end-to-end / forward-only (target: >= 0.9).  The files are
freshly written, so they are read from the page cache (as on a machine whose data set fits in RAM).
Each loader measurement reads the file list ``--repeat`` times.  ``--quick``: 64 small files, the tiny model, the CPU: checks that the script runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


MIXED_SIZES = ((500, 375), (375, 500), (640, 480), (480, 640), (500, 333), (333, 500), (800, 600), (1024, 768),
               (300, 400), (400, 300), (1200, 900), (640, 427), (427, 640), (500, 500), (256, 256), (1600, 1200))


def write_jpegs(folder: Path, n: int, size: tuple[int, int] = (400, 300), quality: int = 90,
                mixed: bool = False) -> list[Path]:
    """``n`` varied JPEGs: smooth colour fields, shapes and noise, a different mix per image.  ``mixed``: each
    image takes one of `MIXED_SIZES` (common photo sizes, 256 to 1600 px; a quarter of them are random sizes
    from 200 to 1200 px) instead of ``size``.  Written by one process per core (image ``i`` depends on ``i``
    alone)."""
    one = partial(_one_jpeg, folder=folder, size=size, quality=quality, mixed=mixed)
    if n < 64:
        return [one(i) for i in range(n)]
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        return list(pool.map(one, range(n), chunksize=32))


def _one_jpeg(i: int, folder: Path, size: tuple[int, int], quality: int, mixed: bool) -> Path:
    rng = np.random.default_rng(i)
    w, h = size
    if mixed:
        w, h = (MIXED_SIZES[rng.integers(len(MIXED_SIZES))] if rng.random() < 0.75 else
                tuple(int(v) for v in rng.integers(200, 1200, 2)))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(0.005, 0.05, 3)
    base = np.stack([np.sin(xx * f[c] + yy * f[(c + 1) % 3] + rng.uniform(0, 6)) for c in range(3)], -1)
    img = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(2, 12)):
        x0, y0 = rng.integers(0, w), rng.integers(0, h)
        box = [x0, y0, x0 + rng.integers(10, 200), y0 + rng.integers(10, 200)]
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=color)
    arr = np.asarray(img).astype(np.int16) + rng.normal(0, rng.uniform(1, 12), (h, w, 3)).astype(np.int16)
    path = folder / f"{i:06d}.jpg"
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=quality)
    return path


class Tower:
    """The image tower in bf16 autocast and channels_last, with mining's simplest reduce on one layer."""

    def __init__(self, model, layer: str, device: torch.device):
        from atlas.capture import hooked

        self.model, self.device = model, device
        self.visual = model.clip.visual.to(memory_format=torch.channels_last)
        self.reduced: list[torch.Tensor] = []
        self.hooks = hooked(model.clip, [layer], self._reduce)

    def _reduce(self, _name: str, out: torch.Tensor) -> None:
        flat = out.flatten(2).float()  # [B, U, h*w]
        self.reduced.append(torch.stack([flat.amax(2), flat.mean(2)]))  # consumed at once, as mining

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> None:
        self.reduced.clear()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            self.visual(x.contiguous(memory_format=torch.channels_last))


@contextmanager
def timer(label: str, images: int, results: dict[str, float], device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t
    results[label] = images / dt
    print(f"{label:<34} {images:>6} images {dt:>7.2f} s {images / dt:>9.0f} images/s", flush=True)


def rate(label: str, loader, fn, results: dict[str, float], device: torch.device) -> None:
    """Images/s over the whole loader, and in steady state (after the first batch: worker start-up and
    the first reads are a one-time cost, negligible over a real data set); results[label] = steady."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    first, n, n_first = None, 0, 0
    for b in loader:
        fn(b)
        n += len(b.index)
        if first is None:
            sync()
            first, n_first = time.perf_counter(), n
    sync()
    dt = time.perf_counter() - t0
    steady = (n - n_first) / (time.perf_counter() - first) if first and n > n_first else n / dt
    results[label] = steady
    print(f"{label:<34} {n:>6} images {dt:>7.2f} s {n / dt:>7.0f} images/s; steady {steady:>6.0f} images/s",
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="open_clip:RN50x4@random:0")
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="passes over the files in each loader measurement")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--paths", default="gpu,cpu", help="loader paths, comma-separated: gpu (nvJPEG), cpu "
                    "(CPU decode, device resize), cpu-exact (CPU decode and PIL resize: mining's exact pixels)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.model, args.n, args.batch, args.device, args.paths = "atlas:tiny@random:0", 64, 16, "cpu", "cpu"
        args.repeat, args.workers = 1, 2

    from atlas.data.loader import JpegLoader, normalize
    from atlas.models import load_model

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = load_model(args.model, device=device)  # eval mode
    for p in model.clip.parameters():
        p.requires_grad_(False)
    conv = [n for n, i in model.layers.items() if i.kind == "conv"]
    layer = (conv or list(model.layers))[-1]
    s = model.image_size
    tower = Tower(model, layer, device)
    paths_to_run = [p for p in args.paths.split(",") if p]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        t = time.perf_counter()
        files = write_jpegs(Path(tmp), args.n)
        mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"wrote {args.n} JPEGs (400x300, q90, {mb:.0f} MiB) in {time.perf_counter() - t:.1f} s; model "
              f"{args.model} at {s} px, reduce on {layer}; batch {args.batch}; {args.workers} workers; "
              f"{os.cpu_count()} CPUs; {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}",
              flush=True)
        with tower.hooks:
            gen = torch.Generator(device=device).manual_seed(0)
            pixels = torch.randint(0, 256, (args.batch, 3, s, s), dtype=torch.uint8, device=device, generator=gen)
            x = normalize(pixels, model.mean, model.std)
            for _ in range(3):  # warm-up: cuDNN's algorithm search, allocator
                tower(x)
            steps = max(1, args.n // args.batch)
            with timer("forward-only (bf16, reduce)", steps * args.batch, results, device):
                for _ in range(steps):
                    tower(normalize(pixels, model.mean, model.std))
            for path in paths_to_run:
                kw = {"batch_size": args.batch, "device": device, "decode": path.split("-")[0],
                      "resize": "cpu" if path == "cpu-exact" else "auto", "workers": args.workers}
                list(JpegLoader(files[: 2 * args.batch], s, **kw))  # warm-up (nvJPEG handles, pinned pool)
                many = files * args.repeat
                rate(f"loader-only ({path} decode)", JpegLoader(many, s, **kw), lambda b: None, results, device)
                rate(f"end-to-end ({path} decode + forward)", JpegLoader(many, s, **kw),
                     lambda b: tower(normalize(b.pixels, model.mean, model.std)), results, device)
    fwd = results["forward-only (bf16, reduce)"]
    print("\nratios use steady-state rates")
    for path in paths_to_run:
        e2e = results[f"end-to-end ({path} decode + forward)"]
        print(f"{path} decode: end-to-end / forward-only = {e2e:.0f} / {fwd:.0f} = {e2e / fwd:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
