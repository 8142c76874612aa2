"""atlas.data.loader: batches of files -> uint8 pixels, in order, bad files reported, the CPU and device resizes
equal to mining's preprocessing (the fully decoded file, PIL's bicubic) and the speed options (draft decoding,
torch's bicubic, the decode_jpeg path: nvJPEG's, run here on the CPU) close to it."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from atlas.data.decode import decode_image
from atlas.data.loader import JpegLoader, _orient, crop_box, normalize, pil_crop, resize_approx

S = 64  # the tiny model's input size


def _natural(w: int, h: int, seed: int) -> Image.Image:
    """Smooth colour fields, a few shapes and mild noise: JPEG-like content, not white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(2, 6, 3) / max(w, h)
    base = np.stack([np.sin(xx * f[c] * 6 + yy * f[(c + 1) % 3] * 4 + c) for c in range(3)], -1) * 0.5 + 0.5
    img = Image.fromarray((base * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        draw.ellipse([x0, y0, x0 + w // 4, y0 + h // 4], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    noisy = np.asarray(img).astype(np.int16) + rng.normal(0, 3, (h, w, 3)).astype(np.int16)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """12 files: JPEGs of several shapes (one large enough for JPEG draft mode, one smaller than S), a grey
    JPEG, an EXIF-rotated JPEG, a PNG, and four bad files (text, truncated JPEG, empty, missing)."""
    d = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i, (w, h) in enumerate([(400, 300), (300, 400), (1200, 900), (50, 40), (333, 250)]):
        p = d / f"{i:02d}.jpg"
        _natural(w, h, i).save(p, quality=90)
        paths.append(p)
    p = d / "05.jpg"
    _natural(320, 240, 5).convert("L").save(p, quality=90)
    paths.append(p)
    p, exif = d / "06.jpg", Image.Exif()
    exif[0x0112] = 6  # rotate 270 on display
    _natural(360, 240, 6).save(p, quality=90, exif=exif)
    paths.append(p)
    p = d / "07.png"
    _natural(256, 200, 7).save(p)
    paths.append(p)
    (d / "08.jpg").write_text("not an image")
    (d / "09.jpg").write_bytes((d / "00.jpg").read_bytes()[:3000])
    (d / "10.jpg").write_bytes(b"")
    paths += [d / "08.jpg", d / "09.jpg", d / "10.jpg", d / "11-missing.jpg"]
    p = d / "12.jpg"
    _natural(640, 480, 12).save(p, quality=90)
    paths.append(p)
    return paths


BAD = {8: "not_an_image", 9: "truncated", 10: "empty", 11: "unreadable"}


def _load(files, **kw):
    batches = list(JpegLoader(files, S, batch_size=5, **kw))
    index = torch.cat([b.index for b in batches]).tolist()
    pixels = torch.cat([b.pixels for b in batches])
    return batches, index, pixels


def test_cpu_path_is_minings_preprocessing_in_order_with_bad_files_reported(files, tiny_model):
    batches, index, pixels = _load(files, decode="cpu", workers=0)
    assert [(b.start, b.stop) for b in batches] == [(0, 5), (5, 10), (10, 13)]
    assert index == [i for i in range(13) if i not in BAD]  # order kept, bad files left out
    assert pixels.shape == (9, 3, S, S) and pixels.dtype == torch.uint8
    assert all(b.pixels.is_contiguous(memory_format=torch.channels_last) for b in batches)
    bad = {i: (reason, message) for b in batches for i, reason, message in b.bad}
    assert {i: r for i, (r, _) in bad.items()} == BAD
    assert all(files[i].name in message for i, (_, message) in bad.items())
    for row, i in enumerate(index):  # exactly what atlas.mining feeds the model
        ref = tiny_model.to_tensor(tiny_model.crop(decode_image(files[i])))  # fully decoded
        assert torch.equal((ref * 255).round().to(torch.uint8), pixels[row]), files[i].name


def test_worker_processes_give_the_same_batches_and_hashes(files):
    _, index0, pixels0 = _load(files, decode="cpu", workers=0)
    batches, index2, pixels2 = _load(files, decode="cpu", workers=2, hashes=True)
    assert index2 == index0 and torch.equal(pixels2, pixels0)
    sha = [h for b in batches for h in b.sha256]
    assert sha[0] == hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert sha[11] == "" and len(sha) == 13


def test_decode_jpeg_path_is_close_to_pil_and_reports_the_same_bad_files(files):
    cpu_batches, index_cpu, cpu = _load(files, decode="cpu", workers=0)
    gpu_batches, index_gpu, gpu = _load(files, decode="gpu", workers=2)  # torchvision's CPU decoder here
    assert index_gpu == index_cpu
    assert [[(i, r) for i, r, _ in b.bad] for b in gpu_batches] == [[(i, r) for i, r, _ in b.bad] for b in cpu_batches]
    diff = (gpu.float() - cpu.float()).abs()  # [n, 3, S, S] in 0..255
    per_image = diff.mean((1, 2, 3))
    assert per_image.max() < 2.0, per_image  # mean abs < 2/255 on every image (the docstring's claim)


def test_resize_on_the_device_gives_the_cpu_paths_bytes(files):
    _, index_cpu, cpu = _load(files, decode="cpu", workers=0, resize="cpu")
    batches, index_dev, dev = _load(files, decode="cpu", workers=2, resize="device", hashes=True)
    assert index_dev == index_cpu and {i for b in batches for i, _, _ in b.bad} == set(BAD)
    assert dev.shape == cpu.shape and dev.dtype == torch.uint8
    assert torch.equal(dev, cpu)  # PIL's arithmetic on the device: the same bytes
    assert len(JpegLoader(files[8:12], S, batch_size=4, resize="device", workers=0)) == 1  # all bad: empty
    assert next(iter(JpegLoader(files[8:12], S, batch_size=4, resize="device", workers=0))).pixels.shape[0] == 0


def test_speed_options_are_close_to_the_exact_pixels_but_not_equal(files):
    _, _, exact = _load(files, decode="cpu", workers=0)
    _, _, draft = _load(files, decode="cpu", workers=0, draft=True)
    _, _, approx = _load(files, decode="cpu", workers=0, approx=True)
    big = 2  # 1200x900, shrunk by 8 for S = 64 to 150x113: another aspect ratio, so the resize gives 84x64 where
    # the exact path gives 85x64 and the crop moves by a pixel
    assert not torch.equal(draft[big], exact[big]) and (draft[big].float() - exact[big].float()).abs().mean() < 16
    same = [3, 7]  # the 50x40 JPEG (too small to shrink) and the PNG
    assert torch.equal(draft[same], exact[same])
    assert not torch.equal(approx, exact) and (approx.float() - exact.float()).abs().mean((1, 2, 3)).max() < 1.0
    with pytest.raises(ValueError, match="approx=True resizes on the device"):
        JpegLoader(files, S, approx=True, resize="cpu")


def test_torch_resize_is_close_to_pil_bicubic():
    for seed, (w, h) in enumerate([(400, 300), (300, 500), (1000, 700), (90, 70), (64, 64)]):
        image = _natural(w, h, seed)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
        for mode in ("shortest", "squash"):
            ref = torch.from_numpy(pil_crop(image, S, mode)).permute(2, 0, 1).float()
            got = resize_approx(x, S, mode)[0].float()
            assert got.shape == (3, S, S)
            assert (got - ref).abs().mean() < 1.0 and (got - ref).abs().max() <= 16, (w, h, mode)


def test_crop_box_is_the_models_crop(tiny_model):
    for w, h in [(400, 300), (300, 400), (64, 64), (65, 200), (30, 20)]:
        image = _natural(w, h, 0)
        assert np.array_equal(pil_crop(image, S), np.asarray(tiny_model.crop(image)))
    assert crop_box(400, 300, 288) == (384, 288, 48, 0)
    assert crop_box(500, 300, 64) == (106, 64, 21, 0)  # torchvision truncates 106.67 (round-1 atlas rounded: 107)
    assert crop_box(400, 300, 288, "squash") == (288, 288, 0, 0)
    assert crop_box(301, 200, 200, crop="floor") == (301, 200, 50, 0) and crop_box(301, 200, 200)[2] == 50
    assert crop_box(303, 200, 200, crop="floor")[2] == 51 and crop_box(303, 200, 200)[2] == 52  # round(51.5) = 52


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
    image = _natural(30, 20, orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.info["exif"] = exif.tobytes()
    ref = np.asarray(ImageOps.exif_transpose(image))
    got = _orient(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1), orientation).permute(1, 2, 0)
    assert np.array_equal(got.numpy(), ref)


def test_normalize_is_the_models_normalization(tiny_model):
    pixels = torch.randint(0, 256, (2, 3, S, S), dtype=torch.uint8)
    ref = tiny_model.normalize(pixels.float().div(255.0))
    assert torch.allclose(normalize(pixels, tiny_model.mean, tiny_model.std), ref, atol=1e-6)
    assert normalize(pixels, tiny_model.mean, tiny_model.std, torch.bfloat16).dtype == torch.bfloat16


def test_arguments_are_checked(files):
    with pytest.raises(ValueError, match="decode must be"):
        JpegLoader(files, S, decode="nvdec")
    with pytest.raises(ValueError, match="resize_mode"):
        JpegLoader(files, S, resize_mode="fill")
    with pytest.raises(ValueError, match="resize must be"):
        JpegLoader(files, S, resize="gpu")
    assert len(JpegLoader(files, S, batch_size=5)) == 3
    assert [b.stop for b in JpegLoader(files, S, batch_size=5, start=3, stop=9, workers=0)] == [8, 9]
