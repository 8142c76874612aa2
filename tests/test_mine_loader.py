"""Mining a folder through `JpegLoader` (the files path of `atlas.mining.batches.batches`) gives exactly what the
per-image PIL path gives; MineConfig.precision is checked, resolved and recorded."""

from __future__ import annotations

import hashlib
import json
import time

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image, ImageDraw

from atlas import store
from atlas.cli import main
from atlas.config import MineConfig
from atlas.data import FolderSource, ImageSource
from atlas.mining.batches import batches
from atlas.mining.loop import mine

LAYERS = ("visual.layer3.0", "visual.layer4.0")
CFG = MineConfig(layers=LAYERS, top_k=5, batch_size=4, map_size=4, hist_bins=16, precision="float32")
BAD = {"cats/truncated.jpg": "truncated", "dogs/empty.jpg": "empty", "dogs/notes.jpg": "not_an_image"}


def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(xx * rng.uniform(0.01, 0.1) + yy * rng.uniform(0.01, 0.1) + c) for c in range(3)], -1)
    img = Image.fromarray(((base * 0.5 + 0.5) * 255).astype(np.uint8))
    x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    ImageDraw.Draw(img).ellipse([x0, y0, x0 + w // 3, y0 + h // 3], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """15 files in two class folders: JPEGs of several shapes (one large enough for JPEG draft mode, one
    smaller than the model's 64 px), a grey and an EXIF-rotated JPEG, a PNG, and three bad files."""
    root = tmp_path_factory.mktemp("jpegs")
    (root / "cats").mkdir()
    (root / "dogs").mkdir()
    shapes = [(400, 300), (300, 400), (700, 560), (50, 40), (333, 250), (128, 128), (90, 200), (260, 180)]
    for i, (w, h) in enumerate(shapes):
        _picture(w, h, i).save(root / ("cats" if i % 2 else "dogs") / f"{i}.jpg", quality=90)
    _picture(320, 240, 20).convert("L").save(root / "cats" / "grey.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6
    _picture(240, 160, 21).save(root / "dogs" / "rotated.jpg", quality=90, exif=exif)
    _picture(200, 150, 22).save(root / "cats" / "drawing.png")
    (root / "cats" / "truncated.jpg").write_bytes((root / "dogs" / "0.jpg").read_bytes()[:2000])
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    (root / "dogs" / "notes.jpg").write_text("not an image")
    (root / "captions.csv").write_text("path,caption\ncats/1.jpg,a cat\n")
    return root


class OneByOne(ImageSource):
    """A folder's images read one at a time through `ImageSource.sample` and `LoadedModel.preprocess`: the path
    mining takes for sources that are not files (not a `FolderSource`, so `JpegLoader` is not used)."""

    def __init__(self, folder) -> None:
        self.files = FolderSource(folder)
        self.entries, self.description = self.files.entries, self.files.description

    def fingerprint(self) -> str:
        return self.files.fingerprint()

    def _load(self, index: int, draft_size: int | None):  # the subclass hook of ImageSource
        return self.files._load(index, draft_size)


@pytest.fixture(scope="module")
def pil_store(tiny_model, folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("pil") / "s.h5"
    mine(tiny_model, OneByOne(folder), path, CFG)
    return path


def _contents(path) -> dict[str, object]:
    """Every dataset's values and every attribute of a store, by name."""
    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:
        out["/"] = dict(f.attrs)

        def add(name: str, obj) -> None:
            out[f"{name}@attrs"] = dict(obj.attrs)
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]

        f.visititems(add)
    return out


def _assert_same_store(a, b) -> None:
    ca, cb = _contents(a), _contents(b)
    assert sorted(ca) == sorted(cb)
    for k in ca:
        if isinstance(ca[k], np.ndarray):
            assert ca[k].dtype == cb[k].dtype and ca[k].shape == cb[k].shape, k
            equal_nan = ca[k].dtype.kind == "f"
            assert np.array_equal(ca[k], cb[k], equal_nan=equal_nan), k
        else:
            assert repr(ca[k]) == repr(cb[k]), k
    assert store.contents_digest(a) == store.contents_digest(b)


@pytest.mark.parametrize("workers,resize", [(0, "cpu"), (2, "cpu"), (2, "device")])
def test_loader_path_gives_the_pil_paths_store(tiny_model, folder, pil_store, tmp_path, workers, resize):
    """Files through the loader (decoded in this process or in workers; resized there or on the device) give the
    store that images one by one through `ImageSource.sample` give, thumbnails included: the loader's made
    while decoding (`PassThumbs`), the other's decoded at the commit."""
    path = tmp_path / "s.h5"
    t = time.perf_counter()
    r = mine(tiny_model, FolderSource(folder), path, CFG, num_workers=workers, resize=resize)
    took = time.perf_counter() - t
    assert (r.images, r.bad) == (14, 3)
    assert set(r.seconds) == {"setup", "first_batch", "wait", "forward", "checkpoint", "commit", "pooled",
                              "thumbnails"}  # the phases, none counted twice
    assert min(r.seconds.values()) >= 0 and r.seconds["thumbnails"] > 0 and sum(r.seconds.values()) <= took
    _assert_same_store(pil_store, path)
    with store.Store(path) as st:  # the per-image records, spelled out
        ids = st.image_column("source_id")
        status = st.image_column("status")
        reasons = dict(zip(ids, st.image_column("reason")))
        sha = dict(zip(ids, st.image_column("sha256")))
        assert {i: store.REASON_CODES[c] for i, c in zip(ids, status) if c} == BAD
        assert all(i in reasons[i] for i in BAD) and not any(reasons[i] for i in ids if i not in BAD)
        for i in ids:
            want = "" if i in BAD else hashlib.sha256((folder / i).read_bytes()).hexdigest()
            assert (sha[i].decode() if isinstance(sha[i], bytes) else sha[i]) == want, i
        ld = st.layer("tiny", LAYERS[-1])
        assert (ld["stats/count"] == 11).all() and (ld["topk/index"] >= 0).all()


def test_batches_are_the_same_fixed_slices_and_bit_identical_pixels(tiny_model, folder):
    source = FolderSource(folder)
    for start in (0, 4):  # a resumed run starts at a batch boundary
        fast = list(batches(tiny_model, source, start, len(source), 4, 0))
        ref = list(batches(tiny_model, OneByOne(folder), start, len(source), 4, 0))
        assert [(b.start, b.stop) for b in fast] == [(b.start, b.stop) for b in ref]
        assert fast[0].start == start and fast[-1].stop == len(source)
        for f, r in zip(fast, ref):
            assert f.good == r.good and f.bad == r.bad and f.sha256 == r.sha256
            assert torch.equal(f.index, r.index)
            assert f.pixels.dtype == r.pixels.dtype == torch.float32
            assert torch.equal(f.pixels, r.pixels)  # LoadedModel.preprocess, bit for bit


def test_an_interrupted_loader_run_resumes_to_the_same_store(tiny_model, folder, pil_store, tmp_path):
    path, calls = tmp_path / "s.h5", []

    def crash(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 3:  # the start, then after the first batch (checkpointed), then after the second
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        mine(tiny_model, FolderSource(folder), path, CFG, num_workers=2, checkpoint_seconds=0, progress=crash)
    assert not path.exists()
    r = mine(tiny_model, FolderSource(folder), path, CFG, num_workers=2, checkpoint_seconds=0)
    assert r.resumed_from == 4  # [0, 4) was checkpointed; the crash came after [4, 8), before its checkpoint
    _assert_same_store(pil_store, path)


def test_precision_is_checked_resolved_and_recorded(tiny_model, folder, tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'float32', 'bfloat16'\), got 'fp16'"):
        MineConfig(precision="fp16")
    r = CliRunner().invoke(main, ["mine", "--model", "atlas:tiny@random:0", "--data", str(folder), "--store",
                                  str(tmp_path / "x.h5"), "--precision", "half"])
    assert r.exit_code != 0 and "--precision" in r.output and "'bfloat16'" in r.output
    source = FolderSource(folder)
    path = tmp_path / "s.h5"
    mine(tiny_model, source, path, MineConfig(layers=LAYERS[-1:], top_k=3, batch_size=8))  # "auto": float32 on CPU
    with store.Store(path) as st:
        assert st.layer("tiny", LAYERS[-1]).config["precision"] == "float32"
    assert mine(tiny_model, source, path, MineConfig(layers=LAYERS[-1:], top_k=3, batch_size=8,
                                                     precision="float32")).skipped_layers == LAYERS[-1:]
    with pytest.raises(store.StoreError, match="other settings") as e:
        mine(tiny_model, source, path, MineConfig(layers=LAYERS[-1:], top_k=3, batch_size=8, precision="bfloat16"))
    assert "pass --precision float32" in str(e.value)  # only the precision differs: say how to match the store
    with pytest.raises(store.StoreError, match="other settings") as e:
        mine(tiny_model, source, path, MineConfig(layers=LAYERS[-1:], top_k=4, batch_size=8))
    assert "--precision" not in str(e.value)


def test_bfloat16_runs_and_a_layer_from_before_precision_counts_as_float32(tiny_model, folder, tmp_path):
    source = FolderSource(folder)
    cfg = MineConfig(layers=LAYERS[-1:], top_k=3, batch_size=8)
    path = tmp_path / "bf16.h5"
    mine(tiny_model, source, path, MineConfig(layers=LAYERS[:1], top_k=3, batch_size=8, precision="bfloat16"))
    ref = tmp_path / "f32.h5"
    mine(tiny_model, source, ref, MineConfig(layers=LAYERS[:1], top_k=3, batch_size=8, precision="float32"))
    with store.Store(path) as st, store.Store(ref) as rs:
        ld, lr = st.layer("tiny", LAYERS[0]), rs.layer("tiny", LAYERS[0])
        assert ld.config["precision"] == "bfloat16" and (ld["stats/count"] == 11).all()
        scale = np.abs(lr["stats/mean"]).max()
        assert 0 < np.abs(ld["stats/mean"] - lr["stats/mean"]).max() < 0.05 * scale  # bf16, not float32
    # a store written before MineConfig.precision existed: its layer config has no "precision"
    mine(tiny_model, source, ref, cfg)
    with h5py.File(ref, "r+") as f:
        attrs = f[f"neurons/tiny/{LAYERS[-1]}"].attrs
        old = json.loads(attrs["config"])
        del old["precision"]
        attrs["config"] = json.dumps(old, sort_keys=True, separators=(",", ":"))
    assert mine(tiny_model, source, ref, cfg).skipped_layers == LAYERS[-1:]


@pytest.mark.parametrize("workers", [0, 2])
def test_thumbnails_are_the_crop_of_the_full_decode_and_changed_files_are_refused(tiny_model, folder, pil_store, tmp_path,
                                                                        workers):
    """Every thumbnail is the model's view of its fully decoded file (torchvision's Resize and CenterCrop on PIL) box-
    filtered to the thumbnail's side (not drafted: the 700x560 JPEG's draft differs); made again in worker processes or on threads they are the same; a file rewritten since
    mining is refused, naming it."""
    import shutil

    from torchvision import transforms as T

    from atlas.data.decode import decode_image
    from atlas.data.loader import pil_crop
    from atlas.mining.thumbs import make_thumbnails

    size = CFG.thumb_size
    with store.Store(pil_store) as st:
        ids, rows = st.image_column("source_id"), st.image_column("thumb_row")
        shown = [i for i, r in enumerate(rows) if r >= 0]
        assert "dogs/2.jpg" in [ids[i] for i in shown]  # the file libjpeg could draft has a thumbnail
        for i in shown:
            data = (folder / ids[i]).read_bytes()
            s = tiny_model.image_size  # the model's view, by torchvision's transforms on PIL, then PIL's box filter
            view = T.CenterCrop(s)(T.Resize(s, interpolation=T.InterpolationMode.BICUBIC)(decode_image(data)))
            want = np.asarray(view.resize((size, size), Image.BOX))
            np.testing.assert_array_equal(st.thumbnail(i), want)
            if ids[i] == "dogs/2.jpg":  # a drafted decode would have given other bytes
                assert (pil_crop(decode_image(data, draft_size=size), size) != want).any()
    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    path = tmp_path / "s.h5"
    shutil.copyfile(pil_store, path)
    source = FolderSource(root)
    with h5py.File(path, "a") as f:
        kept = f["images/thumbs"][()]
        f["images/thumb_row"][...] = -1
        assert make_thumbnails(f, tiny_model, source, shown, size, len(ids), workers) == len(shown)
        np.testing.assert_array_equal(f["images/thumbs"][len(kept):], kept[rows[shown]])
        victim, broken = shown[0], shown[1]
        _picture(123, 97, 99).save(root / ids[victim], quality=80)
        f["images/thumb_row"][...] = -1
        with pytest.raises(store.StoreError, match=f"{ids[victim]} changed since it was mined.*restore the original"):
            make_thumbnails(f, tiny_model, source, shown, size, len(ids), workers)
        (root / ids[victim]).write_bytes((folder / ids[victim]).read_bytes())  # restored
        (root / ids[broken]).write_bytes((folder / ids[broken]).read_bytes()[:300])  # truncated
        with pytest.raises(store.StoreError, match=f"{ids[broken]} became unreadable .*since it was mined"):
            make_thumbnails(f, tiny_model, source, shown, size, len(ids), workers)
