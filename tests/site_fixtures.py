"""Shared fixtures of the site tests: a hostile image folder mined into a store, and built sites.

Import the fixtures into a test module (``from site_fixtures import hostile, small_site``).  Results are
cached per test session in this module, so test_site.py and test_browser.py share one build.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atlas.config import MineConfig, SiteConfig
from atlas.site import SiteResult, build_site

HOSTILE_LAYER = "visual.layer4.0"
MODEL = "tiny"

# Linux file names may hold any byte but '/' and NUL, so no payload in a *name* can close a tag.
EVIL_DIR = "<img src=x onerror=alert(2)>"
GOOD_FILES = [
    "<script>alert(1)<script>.png",
    "<svg onload=alert(1)>.png",
    '"onerror=alert(1) x.png',
    "'onmouseover='alert(1)'.jpg",
    "%2e%2e%2f%2e%2e%2fevil.png",
    "%3Cscript%3Ealert(1)%3C%2Fscript%3E.png",
    "ünïcødé 画像 🙂.png",
    "rtl\u202egnp.exe.png",
    "{{ 7*7 }}.png",
    "new\nline\ttab.png",
    "plain.png",
    f"{EVIL_DIR}/a.png",
    f"{EVIL_DIR}/b&amp;c.jpg",
    "%2e%2e/y.png",  # a sub-folder literally named '%2e%2e'
]
# names starting with '.' are hidden files: FolderSource leaves them out
HIDDEN_FILES = ["..png", "..%2f..%2fevil.png", "..%2f../x.png"]
CORRUPT = "<script>alert(5)<script>corrupt.jpg"
EMPTY = "<b onmouseover=alert(6)>empty.png"
BAD_FILES = [CORRUPT, EMPTY]

CAPTION_PAYLOADS = [
    "<script>window.__xss=1</script>",
    '"><img src=x onerror="window.__xss=2">',
    "{{ 7*7 }}",
    "</textarea><svg onload=alert(3)>",
    "{% if true %}jinja block{% endif %}",
    "&lt;already escaped&gt; & <b>bold</b>",
    "javascript:alert(4)",
    "' onmouseover='window.__xss=3' x='",
]
# raw strings that must never reach any page unescaped
RAW_PAYLOADS = [
    "<script>window.__xss", "<script>alert", "<img src=x onerror", "<svg onload", "</textarea>",
    '"onerror=alert(1)', "'onmouseover='", "<b onmouseover", "<b>bold</b>", "</title><script>",
    '"><img',
]
SITE_TITLE = "</title><script>window.__xss=8</script> atlas"
DATA_DIR_NAME = "data <svg onload=window.__xss=7>"


@dataclass
class Hostile:
    folder: Path  # the image folder
    store: Path
    captions: dict[str, str]  # source id -> caption
    good: list[str]  # source ids of decodable images
    bad: list[str]  # source ids of the corrupt and the empty file
    site: SiteResult | None = None


def _image_bytes(seed: int, fmt: str) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((40, 40, 3)) * 255).astype(np.uint8)
    arr[: 10 + seed % 20, :, seed % 3] = 255  # make the images differ beyond noise
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_hostile_folder(root: Path) -> tuple[Path, dict[str, str]]:
    """Write the hostile image folder under ``root``; return it and the captions it declares."""
    folder = root / DATA_DIR_NAME
    folder.mkdir(parents=True)
    for seed, rel in enumerate(GOOD_FILES + HIDDEN_FILES):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_image_bytes(seed, "JPEG" if rel.endswith(".jpg") else "PNG"))
    (folder / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (folder / EMPTY).write_bytes(b"")
    captions = {rel: CAPTION_PAYLOADS[i % len(CAPTION_PAYLOADS)] for i, rel in enumerate(GOOD_FILES)}
    captions[CORRUPT] = CAPTION_PAYLOADS[0]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        for rel, cap in captions.items():
            w.writerow([rel, cap])
    return folder, captions


_CACHE: dict[str, object] = {}


def mine_hostile(tiny_model, root: Path) -> Hostile:
    from atlas.data.sources import FolderSource
    from atlas.mining import mine

    folder, captions = make_hostile_folder(root / "in")
    store = root / "hostile.h5"
    mine(tiny_model, FolderSource(folder), store,
         MineConfig(layers=(HOSTILE_LAYER,), top_k=4, batch_size=8))
    return Hostile(folder, store, captions, sorted(GOOD_FILES), sorted(BAD_FILES))


@pytest.fixture(scope="session")
def hostile(tiny_model, tmp_path_factory) -> Hostile:
    """The hostile folder mined with the tiny model, and its site (title hostile too)."""
    if "hostile" not in _CACHE:
        h = mine_hostile(tiny_model, tmp_path_factory.mktemp("hostile"))
        h.site = build_site([h.store], h.store.parent / "site", SiteConfig(title=SITE_TITLE))
        _CACHE["hostile"] = h
    return _CACHE["hostile"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def small_site(small_store, tmp_path_factory) -> SiteResult:
    if "small" not in _CACHE:
        _CACHE["small"] = build_site([small_store], tmp_path_factory.mktemp("small_site") / "site")
    return _CACHE["small"]  # type: ignore[return-value]


def tree_snapshot(root: Path, exclude: Path | None = None) -> dict[str, tuple]:
    """relative path -> (is folder, size, mtime_ns) of everything under root, except the sub-tree
    ``exclude``.  Folders count by name only (their mtime changes when ``exclude`` is created)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        if exclude is not None and (d == exclude or exclude in d.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            if exclude is not None and p == exclude:
                continue
            st = p.lstat()
            is_dir = p.is_dir() and not p.is_symlink()
            out[str(p.relative_to(root))] = (True, 0, 0) if is_dir else (False, st.st_size, st.st_mtime_ns)
    return out
