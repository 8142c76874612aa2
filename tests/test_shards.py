"""Webdataset-style tar shards (atlas.data.shards): brace patterns, keys, captions and labels, bad members recorded
as bad files are, and mining a store from shards equal to mining the same images from a folder."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas import store
from atlas.config import MineConfig
from atlas.data import open_source
from atlas.data.shards import ShardSource, expand_braces
from atlas.data.sources import DataError
from atlas.mining import mine


def _jpeg(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size + seed % 7, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_shards(folder: Path, shards: int = 3, per: int = 5, corrupt: tuple[int, ...] = ()) -> list[bytes]:
    """``shards`` tar files of ``per`` keys each (key.jpg, key.txt, key.cls; every third key a key.json instead of
    the .txt); keys in ``corrupt`` (global numbers) get truncated JPEG bytes.  Returns every key's image bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for s in range(shards):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for j in range(per):
                n = s * per + j
                data = _jpeg(n)
                if n in corrupt:
                    data = data[: len(data) // 3]  # truncated JPEG
                images.append(data)
                key = f"{n:06d}"
                _add(tar, f"{key}.jpg", data)
                if n % 3 == 2:
                    _add(tar, f"{key}.json", json.dumps({"caption": f"json caption {n}", "label": "j"}).encode())
                else:
                    _add(tar, f"{key}.txt", f"caption {n}".encode())
                    _add(tar, f"{key}.cls", str(n % 4).encode())
    return images


def test_braces():
    assert expand_braces("a/{008..011}.tar") == ["a/008.tar", "a/009.tar", "a/010.tar", "a/011.tar"]
    assert expand_braces("{x,y}-{1..2}") == ["x-1", "x-2", "y-1", "y-2"]
    with pytest.raises(DataError, match="runs backwards"):
        expand_braces("{3..1}.tar")


def test_listing_keys_captions_labels(tmp_path):
    make_shards(tmp_path / "s", shards=2, per=4)
    src = open_source(str(tmp_path / "s" / "{00000..00001}.tar"))
    assert isinstance(src, ShardSource) and len(src) == 8
    assert [e.source_id for e in src.entries[:2]] == ["00000.tar/000000", "00000.tar/000001"]
    assert src.entries[4].source_id == "00001.tar/000004"
    assert (src.entries[0].caption, src.entries[0].label) == ("caption 0", "0")
    assert (src.entries[2].caption, src.entries[2].label) == ("json caption 2", "j")
    assert src.sample(5).image.size == (40 + 5 % 7, 40)
    assert src.description.startswith("shards:/")
    assert len(src.fingerprint()) == 64


def test_no_shards_match(tmp_path):
    with pytest.raises(DataError, match="no shards match"):
        open_source(str(tmp_path / "{00000..00003}.tar"))
    make_shards(tmp_path / "s", shards=1, per=1)
    with pytest.raises(DataError, match="1 of 2 shards do not exist"):
        open_source(str(tmp_path / "s" / "{00000..00001}.tar"))


def test_bad_member_and_damaged_shard_recorded_rest_mined(tmp_path, tiny_model):
    images = make_shards(tmp_path / "s", shards=3, per=5, corrupt=(6,))
    # a fourth shard cut inside its second member's bytes: the first is mined, the second (its header is whole)
    # recorded as unreadable, and the listing's stop as one more bad entry naming the shard
    with tarfile.open(tmp_path / "s" / "00003.tar", "w") as tar:
        _add(tar, "000015.jpg", _jpeg(15))
        _add(tar, "000016.jpg", _jpeg(16))
    with tarfile.open(tmp_path / "s" / "00003.tar") as tar:
        cut = tar.getmember("000016.jpg").offset_data + 100  # inside the second member's bytes
    raw = (tmp_path / "s" / "00003.tar").read_bytes()
    (tmp_path / "s" / "00003.tar").write_bytes(raw[:cut])
    src = open_source(str(tmp_path / "s" / "{00000..00003}.tar"))
    assert len(src) == 18 and src.entries[17].source_id == "00003.tar/<rest of shard>" and src.damaged
    path = tmp_path / "shards.h5"
    r = mine(tiny_model, src, path, MineConfig(layers=("visual.layer4.0",), top_k=4, batch_size=4),
             num_workers=1)
    assert r.images == 18 and r.bad == 3
    with store.Store(path) as st:
        status = st.file["images/status"][()]
        reasons = st.file["images/reason"].asstr()[()]
        sha = st.file["images/sha256"][()]
        index = st.file["neurons/tiny/visual.layer4.0/topk/index"][()]
        pooled = st.file["neurons/tiny/visual.layer4.0/pooled"][()]
    assert store.REASON_CODES[status[6]] == "truncated" and "00001.tar/000006" in reasons[6]
    assert store.REASON_CODES[status[16]] == "unreadable" and "00003.tar/000016" in reasons[16]
    assert store.REASON_CODES[status[17]] == "unreadable" and "00003.tar is damaged" in reasons[17]
    assert np.nonzero(status)[0].tolist() == [6, 16, 17]
    import hashlib
    assert bytes(sha[0]).decode() == hashlib.sha256(images[0]).hexdigest()
    assert not np.isin(index, [6, 16, 17]).any() and np.isnan(pooled[[6, 16, 17]]).all()
    assert np.isfinite(np.delete(pooled, [6, 16, 17], axis=0)).all()


def test_shards_mine_as_the_same_folder(tmp_path, tiny_model):
    """The same images from tar shards and from a folder give the same top-k, statistics and pooled matrix."""
    images = make_shards(tmp_path / "s", shards=2, per=6)
    folder = tmp_path / "f"
    folder.mkdir()
    for n, data in enumerate(images):
        (folder / f"{n:06d}.jpg").write_bytes(data)
    cfg = MineConfig(layers=("visual.layer3.0",), top_k=3, batch_size=5)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    mine(tiny_model, open_source(str(tmp_path / "s" / "{00000..00001}.tar")), a, cfg, num_workers=0)
    mine(tiny_model, open_source(str(folder)), b, cfg, num_workers=0)
    with store.Store(a) as sa, store.Store(b) as sb:
        for key in ("topk/values", "topk/index", "topk/maps", "stats/mean", "stats/hist", "pooled"):
            x = sa.file[f"neurons/tiny/visual.layer3.0/{key}"][()]
            y = sb.file[f"neurons/tiny/visual.layer3.0/{key}"][()]
            assert np.array_equal(x, y), key
        assert np.array_equal(sa.file["images/thumbs"][()], sb.file["images/thumbs"][()])


def test_verify_finds_the_shards_from_the_store(tmp_path, tiny_model):
    """`atlas verify` reopens the shards from the store's data_source (shards:<pattern>) and agrees with mining."""
    from atlas.config import VerifyConfig
    from atlas.verify import source_of, verify

    make_shards(tmp_path / "s", shards=2, per=5, corrupt=(3,))
    path = tmp_path / "v.h5"
    mine(tiny_model, open_source(str(tmp_path / "s" / "{00000..00001}.tar")), path,
         MineConfig(layers=("visual.layer4.0",), top_k=4, batch_size=4), num_workers=0)
    src = source_of(path)
    assert isinstance(src, ShardSource) and len(src) == 10
    result = verify(tiny_model, src, path, VerifyConfig(units=16, images=9))
    assert result.ok and result.layers[0].topk_match == 1.0
