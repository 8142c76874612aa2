"""Image sources: listing order, labels, captions, fingerprints, bad arguments."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from atlas.data import DataError, FolderSource, open_source


def _img(path, seed=0, size=(20, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size + (3,), dtype=np.uint8)).save(path)


def test_folder_listing_labels_and_captions(tmp_path):
    _img(tmp_path / "b" / "2.png")
    _img(tmp_path / "a" / "deep" / "1.png")
    _img(tmp_path / "top.png")
    _img(tmp_path / ".hidden" / "x.png")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "captions.csv").write_text("path,caption,extra\n./top.png,\"a top, with comma\",1\nb/2.png,two,2\n")
    s = FolderSource(tmp_path)
    assert [e.source_id for e in s.entries] == ["a/deep/1.png", "b/2.png", "top.png"]
    assert [e.label for e in s.entries] == ["a", "b", ""]
    assert [e.caption for e in s.entries] == ["", "two", "a top, with comma"]
    samples = list(s)
    assert all(x.image is not None and x.image.mode == "RGB" for x in samples)
    assert len(samples[0].sha256) == 64


def test_fingerprint_changes_with_content(tmp_path):
    _img(tmp_path / "1.png")
    f1 = FolderSource(tmp_path).fingerprint()
    assert FolderSource(tmp_path).fingerprint() == f1
    _img(tmp_path / "2.png")
    assert FolderSource(tmp_path).fingerprint() != f1


def test_synthetic_is_deterministic_and_indexable():
    a, b = open_source("synthetic:20"), open_source("synthetic:20")
    assert len(a) == 20 and a.fingerprint() == b.fingerprint() != open_source("synthetic:21").fingerprint()
    assert np.array_equal(np.asarray(a.sample(13).image), np.asarray(b.sample(13).image))
    assert a.entries[13].caption == b.entries[13].caption and a.entries[13].caption
    assert not np.array_equal(np.asarray(a.sample(1).image), np.asarray(a.sample(2).image))


def test_bad_folders_and_caption_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="holds no files"):
        FolderSource(empty)
    with pytest.raises(DataError, match="does not exist"):
        FolderSource(tmp_path / "missing")
    d = tmp_path / "d"
    _img(d / "1.png")
    (d / "captions.csv").write_text("file,text\nx.png,y\n")
    with pytest.raises(DataError, match="must have a header with columns 'path' and 'caption'"):
        FolderSource(d)
    (tmp_path / "c.csv").write_text("path,caption\n,empty\n")
    with pytest.raises(DataError, match="line 2: empty 'path'"):
        FolderSource(d, captions=tmp_path / "c.csv")
    with pytest.raises(DataError, match="captions file .*nope.csv does not exist"):
        FolderSource(d, captions=tmp_path / "nope.csv")


def test_undecodable_file_names_are_kept_and_escaped(tmp_path):
    import os

    raw = os.fsencode(str(tmp_path)) + b"/caf\xe9.png"  # Latin-1 bytes: not valid UTF-8
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(raw.decode("utf-8", "surrogateescape"), format="PNG")
    s = FolderSource(tmp_path)
    assert [e.source_id for e in s.entries] == ["caf\\xe9.png"]
    assert s.sample(0).image is not None and len(s.fingerprint()) == 64
