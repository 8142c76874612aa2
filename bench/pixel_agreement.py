"""How far the speed options move the model's pixels: draft decoding and torch's bicubic against the exact pixels.

    python bench/pixel_agreement.py [--n 512] [--sizes 224,288] [--quick]

Writes ``--n`` JPEGs of mixed sizes (`data_path.write_jpegs(mixed=True)`: common photo sizes from 256 to 1600 px)
and loads them with `atlas.data.loader.JpegLoader` three ways at each model input size: exact (full decode, PIL's
bicubic: open_clip's transform, which this script checks on the first 32 files), ``draft=True`` (libjpeg shrinks
the JPEG by 1/2-1/8 while decoding) and ``approx=True`` (torch's antialiased bicubic in float32).  Prints, per size
and option, the share of images whose pixels are identical to the exact ones, the mean and the 99th percentile of
the per-image mean absolute difference, and the largest single-pixel difference (levels of 255).  These are the
pixel figures of docs/store.md ("Tolerances").  Runs on the CPU; ``--quick``: 24 files, one size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_path import write_jpegs

from atlas.data.loader import JpegLoader


def load(files: list[Path], size: int, **kw) -> torch.Tensor:
    return torch.cat([b.pixels for b in JpegLoader(files, size, batch_size=32, workers=2, **kw)])  # [n, 3, S, S]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--sizes", default="224,288")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.n, args.sizes = 24, "224"
    import open_clip

    with tempfile.TemporaryDirectory(prefix="atlas-pixels-") as tmp:
        files = write_jpegs(Path(tmp), args.n, mixed=True)
        print(f"{args.n} JPEGs of mixed sizes (256-1600 px), quality 90; Pillow {Image.__version__}")
        print("size  option  identical images  mean |diff| per image (mean, p99)  max |diff|")
        for size in (int(s) for s in args.sizes.split(",")):
            exact = load(files, size)
            ref = open_clip.transform.image_transform(size, is_train=False, mean=(0, 0, 0), std=(1, 1, 1))
            for k, f in enumerate(files[:32]):  # the exact pixels are open_clip's (an independent check)
                want = (ref(Image.open(f).convert("RGB")) * 255).round().to(torch.uint8)
                assert torch.equal(want, exact[k]), f"{f.name}: the loader's pixels are not open_clip's"
            for option in ("draft", "approx"):
                got = load(files, size, **{option: True})
                d = (got.float() - exact.float()).abs()  # [n, 3, S, S] in levels of 255
                per_image = d.mean((1, 2, 3)).numpy()
                same = float((d.amax((1, 2, 3)) == 0).float().mean())
                print(f"{size:<5} {option:<7} {100 * same:>15.1f}%  {per_image.mean():>12.2f} {np.percentile(per_image, 99):>8.2f}"
                      f"{'':>16} {int(d.max()):>5}", flush=True)


if __name__ == "__main__":
    main()
