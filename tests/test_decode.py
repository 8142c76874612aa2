"""Tests for atlas.data.decode: every file is built in tmp_path, offline."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from atlas.data import decode as dec
from atlas.data.decode import DEFAULT_MAX_PIXELS, REASONS, BadImage, decode_image

# ---------------------------------------------------------------- helpers


def _save(img: Image.Image, path: Path, fmt: str | None = None, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def _reason(source, **kw) -> BadImage:
    with pytest.raises(BadImage) as info:
        decode_image(source, **kw)
    assert info.value.reason in REASONS
    return info.value


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _png(w: int, h: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _bomb_png(w: int, h: int) -> bytes:
    """A valid 8-bit grayscale PNG of w x h zeros, streamed through zlib."""
    co = zlib.compressobj(9)
    row = b"\x00" * (w + 1)  # filter byte + w zero pixels
    parts = [co.compress(row) for _ in range(h)]
    parts.append(co.flush())
    return _png(w, h, 8, 0, b"".join(parts))


def _rgb_noise(w: int = 160, h: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


PATCHES = [(220, 30, 30), (30, 200, 40), (40, 50, 210), (230, 220, 40), (128, 128, 128), (20, 20, 20)]


def _patch_image(size: int = 64) -> Image.Image:
    a = np.zeros((size, size * len(PATCHES), 3), np.uint8)
    for i, c in enumerate(PATCHES):
        a[:, i * size:(i + 1) * size] = c
    return Image.fromarray(a)


def _patch_errors(img: Image.Image, size: int = 64) -> list[float]:
    a = np.asarray(img).astype(float)
    q = size // 4
    return [float(np.abs(a[q:-q, i * size + q:(i + 1) * size - q] - c).mean())
            for i, c in enumerate(PATCHES)]


# ---------------------------------------------------------------- API


def test_api_constants_and_badimage():
    assert DEFAULT_MAX_PIXELS == 64_000_000
    assert REASONS == ("empty", "not_an_image", "truncated", "corrupt", "too_large", "unreadable")
    e = BadImage("corrupt", "x.png: broken")
    assert e.reason == "corrupt" and str(e) == "x.png: broken" and isinstance(e, Exception)
    with pytest.raises(ValueError):
        BadImage("nope", "msg")


def test_module_does_not_import_torch():
    code = "import sys, atlas.data.decode; print('torch' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=str(Path(dec.__file__).parents[2]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- 1. empty / unreadable


def test_empty_file_and_empty_bytes(tmp_path):
    p = tmp_path / "zero.jpg"
    p.write_bytes(b"")
    e = _reason(p)
    assert e.reason == "empty" and "zero.jpg" in str(e)
    assert _reason(b"").reason == "empty"


def test_missing_file_is_unreadable(tmp_path):
    e = _reason(tmp_path / "nope.png")
    assert e.reason == "unreadable" and "nope.png" in str(e)


def test_directory_is_unreadable(tmp_path):
    d = tmp_path / "adir.png"
    d.mkdir()
    e = _reason(str(d))
    assert e.reason == "unreadable" and "adir.png" in str(e)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="running as root: root can read any file, so chmod 000 cannot deny access")
def test_permission_denied_is_unreadable(tmp_path):
    p = _save(_rgb_noise(), tmp_path / "secret.png")
    p.chmod(0)
    try:
        e = _reason(p)
    finally:
        p.chmod(0o644)
    assert e.reason == "unreadable" and "secret.png" in str(e)


def test_permission_error_from_open_is_unreadable(tmp_path, monkeypatch):
    # Works even as root: simulate the OS refusing access.
    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(dec, "open", deny, raising=False)
    e = _reason(tmp_path / "locked.png")
    assert e.reason == "unreadable" and "locked.png" in str(e) and "Permission denied" in str(e)


# ---------------------------------------------------------------- 2. not an image


def test_text_file_is_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("hello, this is a caption file and not an image\n" * 20)
    e = _reason(p)
    assert e.reason == "not_an_image" and "notes.jpg" in str(e)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_are_not_an_image(seed):
    data = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert _reason(data).reason == "not_an_image"


# ---------------------------------------------------------------- 3. truncated / corrupt


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_half_file_is_truncated_and_global_flag_untouched(tmp_path, fmt):
    full = _save(_rgb_noise(), tmp_path / f"full.{fmt.lower()}", fmt)
    data = full.read_bytes()
    cut = tmp_path / f"cut.{fmt.lower()}"
    cut.write_bytes(data[: len(data) // 2])
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    e = _reason(cut)
    assert e.reason == "truncated" and "cut." in str(e)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is before is False
    assert decode_image(full).size == (160, 120)  # the intact file is fine


def test_jpeg_cut_inside_header_is_truncated():
    buf = io.BytesIO()
    _rgb_noise().save(buf, "JPEG")
    assert _reason(buf.getvalue()[:10]).reason == "truncated"


def test_png_with_garbage_in_the_middle_is_rejected():
    buf = io.BytesIO()
    _rgb_noise().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    mid = len(data) // 2
    data[mid:mid + 64] = b"\xff" * 64  # bad IDAT CRC and bad zlib stream
    assert _reason(bytes(data)).reason in ("corrupt", "truncated")


def test_png_with_bad_ihdr_crc_is_corrupt_not_unknown():
    buf = io.BytesIO()
    _rgb_noise().save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[29] ^= 0xFF  # last byte of the IHDR CRC
    e = _reason(bytes(data), name="crc.png")
    assert e.reason == "corrupt" and "PNG" in str(e) and "crc.png" in str(e)


def test_png_with_undecodable_idat_is_rejected():
    data = _png(8, 8, 8, 0, b"this is not zlib data at all" * 4)
    assert _reason(data).reason in ("corrupt", "truncated")


# ---------------------------------------------------------------- 4. decompression bombs


@pytest.fixture(scope="module")
def huge_bomb() -> bytes:
    return _bomb_png(20_000, 20_000)


def test_real_bomb_is_rejected_fast(tmp_path, huge_bomb):
    assert len(huge_bomb) < 1_000_000  # 400 Mpx declared in < 1 MB
    p = tmp_path / "bomb.png"
    p.write_bytes(huge_bomb)
    t0 = time.perf_counter()
    e = _reason(p)
    elapsed = time.perf_counter() - t0
    assert e.reason == "too_large" and "bomb.png" in str(e)
    assert "400000000" in str(e)  # Pillow's own DecompressionBombError, mapped
    assert elapsed < 2.0


def test_bomb_under_pillow_limit_is_caught_by_our_header_check():
    # 80 Mpx: below Pillow's warning limit (~89.5 Mpx), above our 64 Mpx default.
    data = _bomb_png(10_000, 8_000)
    assert len(data) < 1_000_000
    t0 = time.perf_counter()
    e = _reason(data, name="b80.png")
    assert time.perf_counter() - t0 < 2.0
    assert e.reason == "too_large"
    assert "10000x8000" in str(e) and "b80.png" in str(e) and "64000000" in str(e)


def test_pillow_bomb_warning_becomes_too_large_and_does_not_leak():
    data = _bomb_png(10_000, 9_000)  # 90 Mpx > Image.MAX_IMAGE_PIXELS -> warning
    assert 10_000 * 9_000 > Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = _reason(data, max_pixels=200_000_000)
    assert e.reason == "too_large"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_max_pixels_argument_is_respected(tmp_path):
    p = _save(_rgb_noise(100, 100), tmp_path / "small.png")
    e = _reason(p, max_pixels=9_999)
    assert e.reason == "too_large" and "100x100" in str(e) and "9999" in str(e)
    assert decode_image(p, max_pixels=10_000).size == (100, 100)


# ---------------------------------------------------------------- 5. CMYK


def test_cmyk_jpeg_decodes_to_original_colours(tmp_path):
    p = _save(_patch_image().convert("CMYK"), tmp_path / "cmyk.jpg", "JPEG", quality=95)
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
        # Pillow always writes Adobe-style (inverted) CMYK with an APP14 marker.
        assert "adobe" in raw.info
    out = decode_image(p)
    assert out.mode == "RGB" and out.size == (64 * len(PATCHES), 64)
    errs = _patch_errors(out)
    assert max(errs) < 12, errs


def test_cmyk_tiff_decodes_to_original_colours(tmp_path):
    # Non-inverted CMYK storage (TIFF) must give the same colours.
    p = _save(_patch_image().convert("CMYK"), tmp_path / "cmyk.tif", "TIFF")
    errs = _patch_errors(decode_image(p))
    assert max(errs) < 2, errs


# ---------------------------------------------------------------- 6. high bit depth


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path):
    w = 513
    ramp = np.rint(np.linspace(0, 65535, w)).astype(np.uint16)
    img = Image.frombytes("I;16", (w, 4), np.tile(ramp, (4, 1)).astype("<u2").tobytes())
    p = _save(img, tmp_path / "ramp16.png")
    with Image.open(p) as raw:
        assert raw.mode == "I;16"  # Pillow 13 keeps 16-bit PNGs as I;16
    out = decode_image(p)
    assert out.mode == "RGB" and out.size == (w, 4)
    row = np.asarray(out)[0, :, 0].astype(int)
    assert (np.diff(row) >= 0).all()
    assert row[0] == 0 and row[-1] == 255
    assert abs(row[w // 2] - 128) <= 1
    assert len(np.unique(row)) > 250  # really spans the range, not clipped at 255
    np.testing.assert_array_equal(row, np.clip(np.rint(ramp / 257.0), 0, 255))
    a = np.asarray(out)
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()


@pytest.mark.parametrize("mode,dtype,values,expected", [
    ("I;16B", ">u2", [0, 1000, 40000, 65535], [0, 4, 156, 255]),
    ("I", "<i4", [0, 1000, 40000, 65535], [0, 4, 156, 255]),       # max > 255: 16-bit range
    ("I", "<i4", [0, 7, 128, 255], [0, 7, 128, 255]),               # already 8-bit range
    ("I", "<i4", [-50, 100, 70000, 200], [0, 0, 255, 1]),           # scaled then clipped
    ("F", "<f4", [0.0, 0.25, 0.5, 1.0], [0, 64, 128, 255]),         # unit range: *255
    ("F", "<f4", [-3.0, 12.4, 300.0, 254.6], [0, 12, 255, 255]),    # else clip
])
def test_high_depth_tiff_modes(tmp_path, mode, dtype, values, expected):
    img = Image.frombytes(mode, (4, 1), np.array([values], dtype=dtype).tobytes())
    p = _save(img, tmp_path / "deep.tif", "TIFF")
    with Image.open(p) as raw:
        assert raw.mode == mode
    out = decode_image(p)
    assert out.mode == "RGB"
    assert np.asarray(out)[0, :, 0].tolist() == expected


def test_i16l_mode_scaled_in_memory():
    # Pillow never opens a file as I;16L (it reports I;16), so test the converter directly.
    img = Image.frombytes("I;16L", (3, 1), np.array([[0, 32896, 65535]], "<u2").tobytes())
    out = dec._to_rgb(img)
    assert out.mode == "RGB" and np.asarray(out)[0, :, 0].tolist() == [0, 128, 255]


def test_16bit_rgb_png_hand_written():
    px = np.array([[[65535, 0, 0], [0, 65535, 0]],
                   [[0, 0, 65535], [32896, 32896, 32896]]], dtype=">u2")
    raw = b"".join(b"\x00" + px[y].tobytes() for y in range(2))
    out = decode_image(_png(2, 2, 16, 2, zlib.compress(raw)))
    assert out.mode == "RGB"
    assert np.asarray(out).tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [128, 128, 128]]]


# ---------------------------------------------------------------- 7. EXIF orientation


def _marked(w: int = 40, h: int = 20) -> Image.Image:
    """Black w x h image with a red 8x8 block at the stored top-left corner."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:8, :8] = (255, 0, 0)
    return Image.fromarray(a)


def _red_corner(img: Image.Image) -> str:
    a = np.asarray(img).astype(int)
    corners = {"tl": a[2, 2], "tr": a[2, -3], "bl": a[-3, 2], "br": a[-3, -3]}
    red = [k for k, v in corners.items() if v[0] > 200 and v[1] < 60 and v[2] < 60]
    assert len(red) == 1, corners
    return red[0]


@pytest.mark.parametrize("orientation,size,corner", [
    (1, (40, 20), "tl"),
    (3, (40, 20), "br"),   # rotate 180
    (6, (20, 40), "tr"),   # rotate 90 CW
    (8, (20, 40), "bl"),   # rotate 90 CCW
])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, orientation, size, corner, fmt):
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _save(_marked(), tmp_path / f"o{orientation}.{fmt.lower()}", fmt, exif=exif.tobytes())
    out = decode_image(p)
    assert out.size == size
    assert _red_corner(out) == corner


# ---------------------------------------------------------------- 8. modes and alpha


def test_rgba_composited_over_white(tmp_path):
    a = np.zeros((1, 3, 4), np.uint8)
    a[0, 0] = (0, 0, 0, 0)          # fully transparent -> white
    a[0, 1] = (255, 0, 0, 255)      # opaque red stays red
    a[0, 2] = (0, 0, 255, 128)      # half blue over white
    out = decode_image(_save(Image.fromarray(a, "RGBA"), tmp_path / "a.png"))
    px = np.asarray(out).astype(int)[0]
    assert px[0].tolist() == [255, 255, 255]
    assert px[1].tolist() == [255, 0, 0]
    assert np.abs(px[2] - [127, 127, 255]).max() <= 2


def test_la_composited_over_white(tmp_path):
    a = np.array([[[0, 0], [0, 255], [0, 128]]], np.uint8)
    out = decode_image(_save(Image.fromarray(a, "LA"), tmp_path / "la.png"))
    px = np.asarray(out).astype(int)[0]
    assert px[0].tolist() == [255] * 3 and px[1].tolist() == [0] * 3
    assert abs(px[2, 0] - 127) <= 2


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.putpixel((1, 0), 1)
    for ext in ("png", "gif"):
        out = decode_image(_save(img, tmp_path / f"p.{ext}", transparency=0))
        assert np.asarray(out)[0].tolist() == [[255, 255, 255], [255, 0, 0]], ext


def test_rgb_png_with_transparency_key(tmp_path):
    img = Image.new("RGB", (2, 1), (10, 20, 30))
    img.putpixel((1, 0), (200, 0, 0))
    out = decode_image(_save(img, tmp_path / "k.png", transparency=(10, 20, 30)))
    assert np.asarray(out)[0].tolist() == [[255, 255, 255], [200, 0, 0]]


def test_bilevel_and_gray(tmp_path):
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    out = decode_image(_save(one, tmp_path / "b.png"))
    assert np.asarray(out)[0].tolist() == [[0, 0, 0], [255, 255, 255]]
    gray = Image.new("L", (3, 2), 77)
    out = decode_image(_save(gray, tmp_path / "g.png"))
    assert out.mode == "RGB" and out.size == (3, 2) and (np.asarray(out) == 77).all()


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(p) as raw:
        assert raw.n_frames == 3
    out = decode_image(p)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert (np.asarray(out) == [255, 0, 0]).all()


# ---------------------------------------------------------------- 9. draft


def test_jpeg_draft_downscales_but_keeps_min_side(tmp_path):
    p = _save(_rgb_noise(2000, 1600), tmp_path / "big.jpg", "JPEG")
    small = decode_image(p, draft_size=224)
    assert small.mode == "RGB"
    assert 224 <= min(small.size) < 1600
    assert small.size == (500, 400)  # scale 1/4; 1/8 would give 200 < 224
    assert decode_image(p).size == (2000, 1600)


def test_draft_ignored_for_non_jpeg(tmp_path):
    p = _save(_rgb_noise(600, 400), tmp_path / "big.png")
    assert decode_image(p, draft_size=64).size == (600, 400)


# ---------------------------------------------------------------- 10. bytes and names


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP"])
def test_bytes_input_matches_path(tmp_path, fmt):
    p = _save(_rgb_noise(), tmp_path / f"x.{fmt.lower()}", fmt)
    a, b = decode_image(p), decode_image(p.read_bytes())
    c = decode_image(bytearray(p.read_bytes()))
    assert a.size == b.size == c.size == (160, 120)
    assert np.array_equal(np.asarray(a), np.asarray(b)) and np.array_equal(np.asarray(a), np.asarray(c))
    assert decode_image(str(p)).size == (160, 120)


def test_name_appears_in_every_message(tmp_path):
    buf = io.BytesIO()
    _rgb_noise().save(buf, "PNG")
    png = buf.getvalue()
    bad_crc = bytearray(png)
    bad_crc[29] ^= 0xFF
    cases = {  # reason: (data, max_pixels)
        "empty": (b"", DEFAULT_MAX_PIXELS),
        "not_an_image": (b"plain text " * 50, DEFAULT_MAX_PIXELS),
        "truncated": (png[: len(png) // 2], DEFAULT_MAX_PIXELS),
        "corrupt": (bytes(bad_crc), DEFAULT_MAX_PIXELS),
        "too_large": (png, 10),
    }
    for reason, (data, limit) in cases.items():
        e = _reason(data, name="shard-07/000123.png", max_pixels=limit)
        assert e.reason == reason
        assert "shard-07/000123.png" in str(e)
        assert "<bytes>" in str(_reason(data, max_pixels=limit))
        path = tmp_path / f"{reason}.png"
        path.write_bytes(data)
        e = _reason(path, max_pixels=limit)
        assert e.reason == reason and str(path) in str(e)
    missing = tmp_path / "missing.png"
    assert str(missing) in str(_reason(missing))
    assert "shard-07/x.png" in str(_reason(missing, name="shard-07/x.png"))


# ---------------------------------------------------------------- 11. loaded, closed, RGB


def _open_fds_to(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    n = 0
    for fd in fd_dir.iterdir():
        try:
            n += os.readlink(fd) == str(path)
        except OSError:
            pass
    return n


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to count open files")
def test_result_is_loaded_rgb_and_file_closed(tmp_path):
    p = _save(_rgb_noise(), tmp_path / "c.jpg", "JPEG")
    out = decode_image(p)
    assert _open_fds_to(p) == 0
    assert out.mode == "RGB" and not isinstance(out, ImageFile.ImageFile)
    assert getattr(out, "fp", None) is None
    p.unlink()  # pixel access must not need the file any more
    assert np.asarray(out).shape == (120, 160, 3)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert _reason(bad).reason == "corrupt"
    assert _open_fds_to(bad) == 0
