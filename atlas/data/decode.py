"""Robust image decoding: any file in, a fully loaded 8-bit RGB PIL image out.

Policy
------
* Every failure becomes :class:`BadImage` with a short ``reason`` code (see
  ``REASONS``) and a message naming the file; nothing else escapes.
* Size is checked from the header *before* pixel data is decoded
  (``Image.open`` is lazy), so decompression bombs cost almost nothing.
  Pillow's own ``DecompressionBombWarning``/``Error`` are also mapped to
  ``"too_large"``.  Pillow's global limit (``Image.MAX_IMAGE_PIXELS``) still
  applies on top of ``max_pixels``.
* Truncated files are refused, never padded with grey: we do not touch
  ``ImageFile.LOAD_TRUNCATED_IMAGES`` (if the caller set it, Pillow's lenient
  behaviour is theirs).
* EXIF orientation is applied; animated files give their first frame.
* Alpha (RGBA, LA, P/L/RGB with a transparency key) is composited over white.
* High bit depth is *scaled*, not clipped: 16-bit values are divided by 257;
  32-bit ``"I"`` is treated as 16-bit if its max exceeds 255; float ``"F"`` is
  multiplied by 255 if its max is <= 1.0, else clipped to 0..255.
* CMYK (including Adobe-inverted JPEGs, which Pillow handles on read) is
  converted with Pillow's plain CMYK->RGB formula; ICC profiles are ignored.
"""

from __future__ import annotations

import io
import os
import threading
import warnings
from pathlib import Path
from typing import IO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from ..errors import AtlasError

DEFAULT_MAX_PIXELS = 64_000_000
REASONS = ("empty", "not_an_image", "truncated", "corrupt", "too_large", "unreadable")

Source = Union[str, os.PathLike, bytes, bytearray, memoryview]

# Signatures of common formats: a file that starts like one of these but that
# Pillow cannot identify is "corrupt", not "not_an_image".
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"BM": "BMP",
}
# Formats atlas opens.  Others (EPS runs Ghostscript, for one) are refused as not images.
SAFE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
_TRUNCATION_HINTS = ("truncat", "broken data stream", "premature end")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class BadImage(AtlasError):
    """A file that cannot be used as an image.

    ``.reason`` is a short code from ``REASONS``; ``str(e)`` is a human
    message that names the file and says what is wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown BadImage reason {reason!r}")
        super().__init__(message)
        self.reason = reason


def decode_image(
    source: Source,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    name: str | None = None,
) -> Image.Image:
    """Open a path (str/Path) or bytes and return a fully loaded RGB 8-bit PIL image.

    ``draft_size`` lets the JPEG decoder downscale by 1/2, 1/4 or 1/8 while
    keeping both sides >= ``draft_size``.  ``name`` labels the source in error
    messages (default: the path, or ``"<bytes>"``).  Raises :class:`BadImage`.
    """
    label = name if name is not None else _default_name(source)
    with _open_source(source, label) as fp:
        return _decode(fp, label, max_pixels, draft_size)


def _default_name(source: Source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(source)


def _open_source(source: Source, label: str) -> IO[bytes]:
    """Return an open binary file positioned at 0; refuse empty/unreadable input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp: IO[bytes] = io.BytesIO(bytes(source))
    else:
        try:
            fp = open(Path(source), "rb")
        except OSError as e:
            raise BadImage("unreadable", f"{label}: cannot open file ({e.strerror or e})") from e
    try:
        empty = not fp.read(1)
        fp.seek(0)
    except OSError as e:
        fp.close()
        raise BadImage("unreadable", f"{label}: cannot read file ({e.strerror or e})") from e
    if empty:
        fp.close()
        raise BadImage("empty", f"{label}: file is empty (0 bytes)")
    return fp


_OPEN_LOCK = threading.Lock()


def _open(fp: IO[bytes]) -> Image.Image:
    """Image.open with Pillow's decompression-bomb warning raised as an error.  Pillow checks the size while opening
    (header only: cheap), so only this is locked: `warnings.catch_warnings` changes process-wide state and, entered
    from several threads at once, can leave its filter behind (decoding itself runs unlocked, in parallel)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return Image.open(fp, formats=SAFE_FORMATS)


def _decode(fp: IO[bytes], label: str, max_pixels: int, draft_size: int | None) -> Image.Image:
    head = fp.read(16)
    fp.seek(0)
    try:
        with _open(fp) as im:
            _check_size(im.size, max_pixels, label)
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return _to_rgb(_orient(im))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("too_large", f"{label}: image too large ({e})") from e
    except UnidentifiedImageError as e:
        raise _unidentified(head, label) from e
    except Exception as e:  # any decoder failure is the file's fault
        raise _classify(e, label) from e


def _check_size(size: tuple[int, int], max_pixels: int, label: str) -> None:
    w, h = size
    if w * h > max_pixels:
        raise BadImage(
            "too_large",
            f"{label}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
            "(possible decompression bomb)",
        )


def _unidentified(head: bytes, label: str) -> BadImage:
    for magic, fmt in _MAGIC.items():
        if head.startswith(magic):
            return BadImage("corrupt", f"{label}: looks like {fmt} but its header cannot be parsed")
    return BadImage("not_an_image", f"{label}: not a recognised image format")


def _classify(e: Exception, label: str) -> BadImage:
    text = str(e) or type(e).__name__
    if isinstance(e, EOFError) or any(h in text.lower() for h in _TRUNCATION_HINTS):
        return BadImage("truncated", f"{label}: image data is truncated ({text})")
    return BadImage("corrupt", f"{label}: image data is corrupt ({type(e).__name__}: {text})")


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to a new 8-bit RGB image."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return Image.fromarray(_scale_to_u8(np.asarray(im), im.mode), "L").convert("RGB")
    if im.mode in ("P", "L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return im.convert("RGB")


def _scale_to_u8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map high-bit-depth samples to 0..255 by scaling (see module policy)."""
    x = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    peak = float(x.max()) if x.size else 0.0
    if mode.startswith("I;16") or (mode == "I" and peak > 255):
        x = x / 257.0
    elif mode == "F" and peak <= 1.0:
        x = x * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)
