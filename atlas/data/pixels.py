"""The model's pixels: resize and centre crop exactly as the model's own validation transform does it.

open_clip's validation transform (`open_clip.transform.image_transform(size, is_train=False)`, "shortest" mode) is
torchvision's ``Resize(size, BICUBIC)`` then ``CenterCrop(size)`` of a PIL image: the shorter side becomes ``size``,
the longer ``int(size * long / short)`` (truncated), PIL resizes with its bicubic filter, and the crop starts at
``int(round((n - size) / 2))``.  "squash" models (SigLIP) resize both sides to ``size``.  Hugging Face's CLIP
processor crops at ``(n - size) // 2`` (``crop="floor"``).  `crop_box` is that geometry, `pil_crop` runs it with PIL.

`resize_exact` computes PIL's bicubic resize with PIL's own arithmetic (Resample.c: coefficients in float64,
normalized to 22-bit integers; two passes, each output pixel ``clip8((1 << 21) + sum(pixel * coefficient)) >> 22``,
rounded to 8 bits between them, computed exactly as float64 matmuls; Pillow >= 13 runs the vertical pass first when the height shrinks by more than twice
as many pixels as the width, older Pillows always the horizontal one first) in integer torch ops, on whatever device
the images are: the same bytes as the installed Pillow (tests/test_pixels.py compares them on hundreds of sizes),
restricted to the pixels the crop keeps.  `resize_approx` is torch's antialiased bicubic in float32 (faster, pixels within about 1/255 of PIL's).
"""

from __future__ import annotations

import functools

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image

MODES = ("shortest", "squash")
CROPS = ("round", "floor")
_BITS = 22  # PIL's PRECISION_BITS for 8-bit images: 32 - 8 - 2
_PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def vertical_first(width: int, height: int, new_width: int, new_height: int, pillow_major: int = _PILLOW_MAJOR) -> bool:
    """Whether PIL resizes ``width`` x ``height`` -> ``new_width`` x ``new_height`` with its vertical pass first
    (Pillow >= 13: when the height shrinks by more than twice as many pixels as the width; before: never)."""
    shrink = height - new_height
    return pillow_major >= 13 and shrink > 0 and shrink > (width - new_width) * 2


def crop_box(width: int, height: int, size: int, mode: str = "shortest",
             crop: str = "round") -> tuple[int, int, int, int]:
    """(new width, new height, left, top): resize a ``width`` x ``height`` image to the new size, then keep
    ``size`` x ``size`` pixels at (left, top) -- torchvision's Resize(size) + CenterCrop(size) (``crop="round"``),
    or Hugging Face's centre crop (``crop="floor"``)."""
    if mode == "squash":
        return size, size, 0, 0
    if mode != "shortest":
        raise ValueError(f"resize mode must be one of {MODES}, got {mode!r}")
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)  # torchvision's _compute_resized_output_size: truncated
    nw, nh = (size, new_long) if width <= height else (new_long, size)
    if crop == "round":
        return nw, nh, int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    if crop == "floor":
        return nw, nh, (nw - size) // 2, (nh - size) // 2
    raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")


def pil_crop(image: Image.Image, size: int, mode: str = "shortest", crop: str = "round") -> np.ndarray:
    """The model's view of an RGB image with PIL: [S, S, 3] uint8 (`crop_box`, PIL bicubic)."""
    nw, nh, left, top = crop_box(*image.size, size, mode, crop)
    if (nw, nh) != image.size:
        image = image.resize((nw, nh), Image.BICUBIC)
    return np.array(image.crop((left, top, left + size, top + size)), dtype=np.uint8)  # writable copy


def thumbnail(crop: np.ndarray, size: int) -> np.ndarray:
    """A thumbnail [T, T, 3] uint8 of the model's view ``crop`` [S, S, 3] (`pil_crop`): PIL's box filter (each
    thumbnail pixel the area average of the crop pixels it covers); the crop itself when S == T."""
    if crop.shape[0] == size:
        return np.array(crop, dtype=np.uint8)
    return np.array(Image.fromarray(crop).resize((size, size), Image.BOX), dtype=np.uint8)


def draft_scale(width: int, height: int, size: int) -> int:
    """The factor (1, 2, 4 or 8) by which libjpeg's draft mode shrinks a JPEG for ``draft_size=size``
    (Pillow's `JpegImageFile.draft`): the largest that keeps both sides >= size."""
    fit = min(width // size, height // size)
    return next((s for s in (8, 4, 2) if fit >= s), 1)


def _bicubic(x: np.ndarray) -> np.ndarray:
    """PIL's bicubic filter (a = -0.5), term by term in C's order."""
    x = np.abs(x)
    near = ((1.5 * x - 2.5) * x) * x + 1.0
    far = ((((x - 5.0) * x + 8.0) * x) - 4.0) * -0.5
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=4096)
def pil_coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's bicubic coefficients for resizing ``in_size`` samples to ``out_size`` (Resample.c's
    precompute_coeffs and normalize_coeffs_8bpc): first input sample [out] int64 and weights [out, K] int32
    (K taps; zero past each output's last sample)."""
    scale = float(np.float32(in_size)) / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale  # [out]
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates toward zero
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin  # taps per output
    taps = np.arange(ksize)
    x = (((xmin[:, None] + taps[None, :]).astype(np.float64) - center[:, None]) + 0.5) * (1.0 / filterscale)
    w = np.where(taps[None, :] < xmax[:, None], _bicubic(x), 0.0)  # [out, K]
    total = np.cumsum(w, axis=1)[:, -1:]  # summed in order, as C does
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    fixed = np.where(w < 0, -0.5 + w * (1 << _BITS), 0.5 + w * (1 << _BITS))
    return xmin, np.trunc(fixed).astype(np.int32)


@functools.lru_cache(maxsize=512)
def _band(in_size: int, out_size: int, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, int, int]:
    """PIL's coefficients for the outputs [start, stop) of a resize ``in_size`` -> ``out_size`` as a band matrix
    [hi - lo, stop - start] float64 over the input samples [lo, hi) they read."""
    xmin, w = pil_coefficients(in_size, out_size)
    xmin, w = xmin[start:stop], w[start:stop]  # [m], [m, K]
    k = w.shape[1]
    lo, hi = int(xmin.min()), int(min(in_size, (xmin + k).max()))
    rows = xmin[:, None] + np.arange(k)[None, :] - lo  # [m, K]
    cols = np.broadcast_to(np.arange(stop - start)[:, None], rows.shape)
    used = w != 0  # taps past an output's last sample weigh 0 (and may lie past the edge): each (row, col) once
    band = np.zeros((hi - lo, stop - start), np.float64)
    band[rows[used], cols[used]] = w[used]
    return torch.from_numpy(band).to(device), lo, hi


def _resample_last(x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """One PIL pass along the last dim: [..., n] uint8 -> [..., m] uint8 with ``band`` [n, m].  The sums are
    integers below 2**31 (8-bit samples times 22-bit weights), exact in float64 whatever the order of the
    additions, so a float64 matmul gives PIL's integer sums; then PIL's rounding, ``clip8((1 << 21) + sum) >> 22``."""
    acc = torch.matmul(x.to(torch.float64), band)  # [..., m], exact integers
    return acc.add_(1 << (_BITS - 1)).div_(1 << _BITS).floor_().clamp_(0, 255).to(torch.uint8)


def resize_exact(images: torch.Tensor, size: int, mode: str = "shortest", crop: str = "round") -> torch.Tensor:
    """`pil_crop` of images of one shape in torch: [n, 3, H, W] uint8 -> [n, 3, S, S] uint8, the same bytes as
    PIL, on the images' device."""
    h, w = images.shape[-2:]
    nw, nh, left, top = crop_box(w, h, size, mode, crop)
    return _resize_to(images, nw, nh, range(left, left + size), range(top, top + size))


def _resize_to(x: torch.Tensor, nw: int, nh: int, cols: range, rows: range) -> torch.Tensor:
    """PIL's bicubic resize of [n, 3, H, W] uint8 to ``nw`` x ``nh``, computing only the output columns ``cols``
    and rows ``rows`` (each output pixel depends on its own taps alone): [n, 3, len(rows), len(cols)] uint8."""
    h, w = x.shape[-2:]
    if (nw, nh) == (w, h):  # PIL copies
        return x[..., rows.start:rows.stop, cols.start:cols.stop].contiguous()

    def horizontal(x: torch.Tensor) -> torch.Tensor:  # [n, 3, r, W] -> [n, 3, r, len(cols)]
        if nw == w:
            return x[..., cols.start:cols.stop]
        band, c0, c1 = _band(w, nw, cols.start, cols.stop, x.device)  # [c1 - c0, len(cols)]
        return _resample_last(x[..., c0:c1], band)

    def vertical(x: torch.Tensor) -> torch.Tensor:  # [n, 3, H, c] -> [n, 3, len(rows), c]
        if nh == h:
            return x[..., rows.start:rows.stop, :]
        band, r0, r1 = _band(h, nh, rows.start, rows.stop, x.device)  # [r1 - r0, len(rows)]
        return _resample_last(x[..., r0:r1, :].transpose(-1, -2), band).transpose(-1, -2)

    out = horizontal(vertical(x)) if vertical_first(w, h, nw, nh) else vertical(horizontal(x))
    return out.contiguous()


def resize_approx(images: torch.Tensor, size: int, mode: str = "shortest", crop: str = "round",
                  draft: bool = False) -> torch.Tensor:
    """The fast approximation of `pil_crop` for images of one shape: [n, 3, H, W] uint8 -> [n, 3, S, S] uint8
    (torch's bicubic with antialiasing, float32, rounded once; PIL rounds between its two passes).  ``draft``:
    first shrink as JPEG draft mode would (an s x s box average, the DC term of libjpeg's scaled IDCT)."""
    h, w = images.shape[-2:]
    x = images
    step = draft_scale(w, h, size) if draft else 1
    if step > 1:
        x = F.avg_pool2d(x.float(), step, ceil_mode=True)  # [n, 3, ceil(H / s), ceil(W / s)]
        h, w = x.shape[-2:]
    nw, nh, left, top = crop_box(w, h, size, mode, crop)
    if (nw, nh) != (w, h):
        x = F.interpolate(x.float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    if x.dtype != torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    return x[..., top:top + size, left:left + size]
