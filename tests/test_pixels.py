"""The model's pixels against references atlas did not write: open_clip's validation transform, torchvision's
Resize/CenterCrop and PIL's resize, on hundreds of sizes and aspect ratios and on real JPEG files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from atlas.data.decode import decode_image
from atlas.data.loader import JpegLoader, normalize
from atlas.data.pixels import _resize_to, pil_coefficients, pil_crop, resize_exact, vertical_first

open_clip = pytest.importorskip("open_clip")
from torchvision import transforms as T  # noqa: E402


def _sizes(n: int, seed: int, lo: int = 8, hi: int = 1100) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    out = [(int(w), int(h)) for w, h in rng.integers(lo, hi, (n, 2))]
    # aspect ratios that are easy to get wrong: 3:2, 4:3, 16:9, one pixel off square, very thin
    return out + [(300, 500), (500, 300), (640, 480), (1920, 1080), (225, 224), (224, 225), (1000, 9), (9, 1000)]


def _noise(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [64, 224, 288])
def test_geometry_and_bytes_equal_torchvision_resize_and_center_crop(size):
    """Resize(size, BICUBIC) + CenterCrop(size) -- open_clip's "shortest" mode -- on 150 random sizes (the torch
    resize, which is meant for GPUs and slow on a CPU, on 40 of them)."""
    reference = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
    for k, (w, h) in enumerate(_sizes(150, size)):
        image = _noise(w, h, k)
        want = np.asarray(reference(image))
        assert np.array_equal(pil_crop(image, size), want), (w, h, size)
        if k % 4 == 0 or k >= 150:
            got = resize_exact(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None], size)
            assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want), (w, h, size)


def test_squash_equals_torchvision_resize_to_a_square():
    for k, (w, h) in enumerate(_sizes(30, 7, hi=700)):
        image = _noise(w, h, k)
        want = np.asarray(T.Resize((96, 96), interpolation=T.InterpolationMode.BICUBIC)(image))
        assert np.array_equal(pil_crop(image, 96, "squash"), want), (w, h)
        got = resize_exact(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None], 96, "squash")
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want), (w, h)


def test_exact_resize_equals_pil_for_any_pair_of_sizes_both_pass_orders():
    """PIL's resize to arbitrary sizes (up and down, either pass first) -- not only the crop's."""
    rng = np.random.default_rng(3)
    orders = set()
    for k in range(120):
        w, h = (int(v) for v in rng.integers(5, 500, 2))
        nw, nh = (int(v) for v in rng.integers(5, 500, 2))
        image = _noise(w, h, k)
        want = np.asarray(image.resize((nw, nh), Image.BICUBIC))
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None]
        got = _resize_to(x, nw, nh, range(nw), range(nh))  # the whole output, no crop
        assert np.array_equal(got[0].permute(1, 2, 0).numpy(), want), (w, h, nw, nh)
        orders.add(vertical_first(w, h, nw, nh))
    assert orders == ({True, False} if int(Image.__version__.split(".")[0]) >= 13 else {False})
    assert not vertical_first(100, 500, 100, 50, pillow_major=12)  # before Pillow 13: horizontal first always
    assert vertical_first(100, 500, 100, 50, pillow_major=13)


def test_coefficients_are_pils_fixed_point_weights():
    """Each output's weights sum to 1.0 in 22-bit fixed point (up to the per-tap rounding), as PIL's do."""
    for n_in, n_out in [(400, 288), (288, 400), (1920, 224), (7, 3), (224, 224)]:
        xmin, w = pil_coefficients(n_in, n_out)
        total = w.astype(np.int64).sum(1)
        assert np.all(np.abs(total - (1 << 22)) <= w.shape[1]), (n_in, n_out)
        assert xmin.min() >= 0 and (xmin + (w != 0).sum(1)).max() <= n_in


@pytest.mark.parametrize("resize_mode", ["shortest", "squash"])
def test_preprocess_equals_open_clips_validation_transform(tiny_model, resize_mode):
    """`LoadedModel.preprocess` is open_clip's `image_transform(size, is_train=False)` bit for bit: same resize,
    crop, ToTensor and Normalize arithmetic."""
    size = tiny_model.image_size
    reference = open_clip.transform.image_transform(size, is_train=False, mean=tiny_model.mean, std=tiny_model.std,
                                                    resize_mode=resize_mode)
    kept = tiny_model.resize_mode
    tiny_model.resize_mode = resize_mode
    try:
        for k, (w, h) in enumerate(_sizes(120, 11)):
            image = _noise(w, h, k)
            assert torch.equal(tiny_model.preprocess(image), reference(image)), (w, h)
    finally:
        tiny_model.resize_mode = kept


def test_mining_loader_feeds_open_clips_pixels_from_real_jpegs(tmp_path, tiny_model):
    """JPEG files of many sizes through the loader as mining uses it (decode in workers, resize on the CPU or
    on the device): the normalized input equals open_clip's transform of `Image.open(path).convert("RGB")`."""
    rng = np.random.default_rng(5)
    paths = []
    for k, (w, h) in enumerate(_sizes(40, 5, lo=40, hi=1400)):
        yy, xx = np.mgrid[0:h, 0:w]
        smooth = np.stack([np.sin(xx / (7 + c * 5) + yy / (11 + c)) for c in range(3)], -1) * 90 + 128
        arr = (smooth + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)  # photo-like: edges + noise
        p = tmp_path / f"{k:03d}.jpg"
        Image.fromarray(arr).save(p, quality=int(rng.integers(60, 98)))
        paths.append(p)
    size = tiny_model.image_size
    reference = open_clip.transform.image_transform(size, is_train=False, mean=tiny_model.mean, std=tiny_model.std)
    want = torch.stack([reference(Image.open(p).convert("RGB")) for p in paths])
    for resize in ("cpu", "device"):
        got = torch.cat([normalize(b.pixels, tiny_model.mean, tiny_model.std) for b in
                         JpegLoader(paths, size, batch_size=16, workers=0, resize=resize)])
        assert torch.equal(got, want), resize
    # the decode is a full decode: the same array as PIL's own
    for p in paths[:5]:
        assert np.array_equal(np.asarray(decode_image(p)), np.asarray(Image.open(p).convert("RGB")))


def test_hf_crop_rounding_matches_transformers_clip_processor():
    transformers = pytest.importorskip("transformers")
    proc_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    proc = proc_cls(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_rescale=False,
                    do_normalize=False, do_convert_rgb=True)
    for k, (w, h) in enumerate(_sizes(30, 13, lo=70, hi=400)):
        image = _noise(w, h, k)
        want = np.asarray(proc(image, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
        assert np.array_equal(pil_crop(image, 64, crop="floor"), want.round().astype(np.uint8)), (w, h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tests/SKIPS.md)")
def test_exact_resize_gives_pils_bytes_gpu():
    """PIL's arithmetic as float64 matmuls on the GPU: the same bytes as PIL, in batches of one shape."""
    rng = np.random.default_rng(8)
    for k, (w, h) in enumerate(_sizes(60, 8)):
        images = [_noise(w, h, 100 * k + j) for j in range(3)]
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).cuda()
        size = int(rng.choice([224, 288, 336]))
        got = resize_exact(x, size).permute(0, 2, 3, 1).cpu().numpy()
        for j, im in enumerate(images):
            assert np.array_equal(got[j], pil_crop(im, size)), (w, h, size)
