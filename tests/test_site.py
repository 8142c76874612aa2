"""Tests of the static site (atlas.site): layout, containment, escaping of hostile data, refusals.

No browser here (see test_browser.py).  The hostile image folder and its store come from
site_fixtures.py; every file is made under pytest's tmp folders.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import h5py
import numpy as np
import pytest

from atlas.config import SiteConfig
from atlas.site import SiteError, build_site
from atlas.store import Store
from site_fixtures import (  # noqa: F401  (fixtures)
    BAD_FILES,
    CAPTION_PAYLOADS,
    CORRUPT,
    DATA_DIR_NAME,
    EMPTY,
    EVIL_DIR,
    GOOD_FILES,
    HIDDEN_FILES,
    HOSTILE_LAYER,
    MODEL,
    RAW_PAYLOADS,
    SITE_TITLE,
    hostile,
    small_site,
    tree_snapshot,
)

VOID = {"meta", "link", "img", "input", "br", "hr", "source", "area", "base", "col", "embed", "wbr"}
ALLOWED_TAGS = {"html", "head", "meta", "title", "link", "body", "header", "a", "nav", "main", "footer",
                "script", "h1", "h2", "section", "dl", "dt", "dd", "code", "table", "thead", "tbody", "tr",
                "th", "td", "span", "p", "label", "input", "div", "img", "figure", "figcaption", "svg",
                "rect", "line", "text", "b", "ol"}
CSP = "default-src 'none'; img-src 'self' data:; style-src 'self'; script-src 'self'"
SITE_FILE = re.compile(
    r"index\.html|assets/(atlas\.js|search\.js|style\.css)|search/index\.js|search/[A-Za-z0-9_][A-Za-z0-9._-]*/"
    r"[A-Za-z0-9_][A-Za-z0-9._-]*\.js|(?P<m>[A-Za-z0-9_][A-Za-z0-9._-]*)/("
    r"skipped\.html|img/\d+\.jpg|[A-Za-z0-9_][A-Za-z0-9._-]*/(index\.html|\d+\.html|fv/\d+\.png))")
IMG_SRC = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+|(\.\./)?img/\d+\.jpg|fv/\d+\.png")


class Element:
    def __init__(self, tag: str, attrs: dict[str, str | None]):
        self.tag, self.attrs, self.text = tag, attrs, ""

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


class Page(HTMLParser):
    """Every element of an HTML file with its attributes (unescaped) and its text (unescaped)."""

    def __init__(self, path: Path):
        super().__init__(convert_charrefs=True)
        self.path = path
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(path.read_text(encoding="utf-8"))
        self.close()

    def handle_starttag(self, tag, attrs):
        el = Element(tag, dict(attrs))
        self.elements.append(el)
        if tag not in VOID:
            self._open.append(el)

    def handle_startendtag(self, tag, attrs):
        self.elements.append(Element(tag, dict(attrs)))

    def handle_endtag(self, tag):
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                return
        raise AssertionError(f"{self.path}: stray </{tag}>")

    def handle_data(self, data):
        for el in self._open:
            el.text += data

    def find(self, tag: str, cls: str | None = None) -> list[Element]:
        return [e for e in self.elements if e.tag == tag and (cls is None or cls in e.classes)]


def html_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def local_target(page: Path, ref: str) -> Path | None:
    """The file a relative href/src of ``page`` points at, or None for data: URIs and fragments."""
    parts = urlsplit(ref)
    if parts.scheme == "data" or ref.startswith("#"):
        return None
    assert not parts.scheme and not parts.netloc, f"{page}: non-relative reference {ref!r}"
    return (page.parent / unquote(parts.path)).resolve()


# ------------------------------------------------------------------------------------ layout


def test_small_site_page_count_and_layout(small_site, small_store):
    out = small_site.out
    with Store(small_store) as st:
        layers = [(ld.name, ld.units, ld.featurevis_done()) for ld in st.layers(MODEL)]
        assert st.models() == [MODEL]
    expected_pages = 1 + 1 + sum(1 + units for _, units, _ in layers)
    assert small_site.pages == expected_pages == len(html_files(out))
    assert (out / "index.html").is_file() and (out / MODEL / "skipped.html").is_file()
    for name, units, fv_done in layers:
        assert (out / MODEL / name / "index.html").is_file()
        pages = {p.name for p in (out / MODEL / name).glob("*.html")}
        assert pages == {"index.html"} | {f"{u}.html" for u in range(units)}
        fv = sorted(int(p.stem) for p in (out / MODEL / name).glob("fv/*.png"))
        assert fv == [int(u) for u in np.nonzero(fv_done)[0]]
    assert [int(u) for u in np.nonzero(layers[-1][2])[0]] == list(range(8))  # conftest renders 8
    images = [p for p in all_files(out) if p.suffix in (".jpg", ".png")]
    assert small_site.images == len(images)


def test_neuron_pages_mirror_neuron_ids(small_site, small_store):
    out = small_site.out
    with Store(small_store) as st:
        for ld in st.layers(MODEL):
            values = ld["topk/values"]
            for u in range(ld.units):
                path = out / MODEL / ld.name / f"{u}.html"
                rel = path.relative_to(out).with_suffix("").as_posix()
                assert rel == ld.neuron_id(u) == f"{MODEL}/{ld.name}/{u}"
                page = Page(path)
                (h1,) = page.find("h1", "nid")
                assert h1.text == ld.neuron_id(u)
                shown = page.find("figure", "example")
                assert len(shown) == min(SiteConfig().examples, values.shape[1])
            layer_page = Page(out / MODEL / ld.name / "index.html")
            tiles = [e.attrs["href"] for e in layer_page.find("a", "tile")]
            assert tiles == [f"{u}.html" for u in range(ld.units)]


def test_every_file_stays_inside_the_site_folder(small_site):
    out = small_site.out.resolve()
    files = all_files(out)
    assert len(files) > small_site.pages  # pages + images + assets
    for p in files:
        real = p.resolve()
        assert out in real.parents, f"{p} resolves to {real}, outside {out}"
        assert not p.is_symlink()
        assert SITE_FILE.fullmatch(p.relative_to(out).as_posix()), p


def test_every_relative_reference_resolves(small_site):
    out = small_site.out.resolve()
    checked = 0
    for path in html_files(out):
        page = Page(path)
        for el in page.elements:
            for attr in ("href", "src"):
                ref = el.attrs.get(attr)
                if ref is None:
                    continue
                target = local_target(path, ref)
                if target is None:
                    continue
                checked += 1
                assert out in target.parents and target.is_file(), f"{path}: {attr}={ref!r} is missing"
    assert checked > 10 * small_site.pages


def test_every_page_has_the_csp_and_one_script(small_site):
    """One script, atlas.js; the index page adds the search: its manifest and search.js (docs/site.md)."""
    for path in html_files(small_site.out):
        page = Page(path)
        metas = [m for m in page.find("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
        assert [m.attrs["content"] for m in metas] == [CSP], path
        depth = len(path.relative_to(small_site.out).parts) - 1
        search = ["search/index.js", "assets/search.js"] if path == small_site.out / "index.html" else []
        assert [s.attrs.get("src") for s in page.find("script")] == ["../" * depth + "assets/atlas.js", *search]


# ------------------------------------------------------------------------------------ hostile data


def test_hostile_folder_is_mined_as_expected(hostile):
    with Store(hostile.store) as st:
        ids = list(st.image_column("source_id"))
        assert sorted(ids) == sorted(GOOD_FILES + BAD_FILES)  # the hidden '..png' is left out
        assert not set(HIDDEN_FILES) & set(ids)
        assert sorted(i for _, i, _ in st.bad_images()) == sorted(BAD_FILES)
        captions = dict(zip(ids, st.image_column("caption")))
        assert captions == {i: hostile.captions.get(i, "") for i in ids}  # csv read back exactly
        assert captions[CORRUPT] == CAPTION_PAYLOADS[0] and captions[EMPTY] == ""
        labels = dict(zip(ids, st.image_column("label")))
        assert labels[f"{EVIL_DIR}/a.png"] == EVIL_DIR
        # with 512 units x 4 examples every decodable image is someone's top example
        shown = set(st.layer(MODEL, HOSTILE_LAYER)["topk/index"].ravel().tolist()) - {-1}
        assert {ids[i] for i in shown} == set(GOOD_FILES)


def test_hostile_site_writes_nothing_outside_its_folder(hostile, tmp_path, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    out = tmp_path / "out"
    before = tree_snapshot(base, exclude=out)
    parent_before = sorted(os.listdir(base.parent))
    result = build_site([hostile.store], out, SiteConfig(title=SITE_TITLE))
    assert tree_snapshot(base, exclude=out) == before
    assert sorted(os.listdir(base.parent)) == parent_before
    assert not list(base.parent.rglob("evil.png"))
    resolved = out.resolve()
    files = all_files(out)
    layers = sum(1 for f in files if f.parent.parent == out / "search")
    assert layers >= 1
    # + the three assets, the search manifest and one search index per layer
    assert len(files) == result.pages + result.images + 3 + 1 + layers
    for p in files:
        assert resolved in p.resolve().parents
        assert SITE_FILE.fullmatch(p.relative_to(out).as_posix()), f"unexpected site file {p}"
    # only integers name images (SITE_FILE above); every shown image has one
    names = {p.relative_to(out).as_posix() for p in files}
    with Store(hostile.store) as st:
        shown = set(st.layer(MODEL, HOSTILE_LAYER)["topk/index"].ravel().tolist()) - {-1}
    assert {n for n in names if "/img/" in n} == {f"{MODEL}/img/{i}.jpg" for i in shown}


def test_hostile_strings_are_escaped_everywhere(hostile):
    out = hostile.site.out
    pages = html_files(out)
    with Store(hostile.store) as st:
        units = st.layer(MODEL, HOSTILE_LAYER).units
    assert len(pages) == hostile.site.pages == 1 + 1 + 1 + units
    joined = ""
    for path in pages:
        text = path.read_text(encoding="utf-8")
        for raw in RAW_PAYLOADS:
            assert raw not in text, f"{path} holds the raw payload {raw!r}"
        joined += text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in joined
    assert "&lt;img src=x onerror=alert(2)&gt;" in joined  # the sub-folder, shown as a label
    assert "&amp;lt;already escaped&amp;gt;" in joined  # escaped once more, shown as typed
    assert "{{ 7*7 }}" in joined and "{% if true %}jinja block{% endif %}" in joined


def test_hostile_pages_have_only_expected_markup(hostile):
    out = hostile.site.out
    for path in html_files(out):
        page = Page(path)
        for el in page.elements:
            assert el.tag in ALLOWED_TAGS, f"{path}: unexpected <{el.tag}>"
            bad = [a for a in el.attrs if a.lower().startswith("on")]
            assert not bad, f"{path}: <{el.tag}> has event handler attributes {bad}"
            if el.tag == "img":
                assert IMG_SRC.fullmatch(el.attrs["src"]), f"{path}: img src {el.attrs['src'][:80]!r}"
            if el.tag == "a":
                href = el.attrs["href"]
                assert re.fullmatch(r"(\.\./)*index\.html|\d+\.html|[\w.-]+/(skipped|[\w.-]+/index)\.html",
                                    href), f"{path}: link {href!r}"
        scripts = page.find("script")
        search = ["search/index.js", "assets/search.js"] if path == out / "index.html" else []  # docs/site.md
        assert all(x.text == "" for x in scripts) and scripts[0].attrs["src"].endswith("assets/atlas.js")
        assert [x.attrs["src"] for x in scripts[1:]] == search
        title = page.find("title")[0]  # the page's; histograms hold <title>s too
        assert SITE_TITLE in title.text  # the title is text, all of it


def test_hostile_text_round_trips_exactly(hostile):
    """Captions, file names, labels and the data folder show exactly as typed, nothing evaluated."""
    out = hostile.site.out
    layer_dir = out / MODEL / HOSTILE_LAYER
    captions, sources, labels = set(), set(), set()
    for path in sorted(layer_dir.glob("*.html")):
        if path.name == "index.html":
            continue
        page = Page(path)
        captions |= {e.text for e in page.find("span", "caption")}
        for e in page.find("span", "source"):
            sources.add(e.attrs["title"])
            assert e.text.startswith(e.attrs["title"])
            if " · " in e.text[len(e.attrs["title"]):]:
                labels.add(e.text[len(e.attrs["title"]):].removeprefix(" · "))
    assert captions == {hostile.captions[g] for g in GOOD_FILES}
    assert "{{ 7*7 }}" in captions and "49" not in captions
    assert "jinja block" not in captions
    assert sources == set(GOOD_FILES)
    assert labels == {EVIL_DIR, "%2e%2e"}
    skipped = Page(out / MODEL / "skipped.html")
    assert len(skipped.find("tr")) == 1 + len(BAD_FILES)  # header + one row per skipped file
    codes = [c.text for c in skipped.find("code")]
    assert codes[0] == f"folder:{hostile.folder.resolve()}" and codes[0].endswith(DATA_DIR_NAME)
    assert sorted(codes[1:]) == sorted(BAD_FILES)
    index = Page(out / "index.html")
    assert any(DATA_DIR_NAME in c.text for c in index.find("code"))
    assert [a.attrs["href"] for a in index.find("a") if "skipped" in a.text] == [f"{MODEL}/skipped.html"]


# ------------------------------------------------------------------------------------ refusals


def _renamed_store(src: Path, dst: Path, old: str, new: str) -> Path:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "a") as f:
        f.move(old, new)
    return dst


@pytest.mark.parametrize("name", ["..", "<script>x", "a b", "-rf", "évil"])
def test_refuses_model_names_that_could_escape(small_store, tmp_path, name):
    bad = _renamed_store(small_store, tmp_path / "bad.h5", f"neurons/{MODEL}", f"neurons/{name}")
    out = tmp_path / "deep" / "site"
    with pytest.raises(SiteError, match=re.escape(repr(name))):
        build_site([bad], out)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir()}
    assert all(w == "bad.h5" or w.startswith("deep/site/assets/") for w in written), written


@pytest.mark.parametrize("name", ["..", "x<y>", "a b"])
def test_refuses_layer_names_that_could_escape(small_store, tmp_path, name):
    old = f"neurons/{MODEL}/visual.layer4.0"
    bad = _renamed_store(small_store, tmp_path / "bad.h5", old, f"neurons/{MODEL}/{name}")
    out = tmp_path / "deep" / "site"
    with pytest.raises(SiteError, match=re.escape(repr(name))):
        build_site([bad], out)
    written = [p for p in tmp_path.rglob("*") if not p.is_dir() and p.name != "bad.h5"]
    assert all(out.resolve() in p.resolve().parents for p in written), written
    assert set(os.listdir(out / MODEL)) == {"img", "skipped.html"}  # no layer pages at all


def test_refuses_no_stores(tmp_path):
    with pytest.raises(SiteError, match="at least one store"):
        build_site([], tmp_path / "site")
    assert not (tmp_path / "site").exists()


def test_refuses_out_that_is_a_file(small_store, tmp_path):
    out = tmp_path / "site"
    out.write_text("keep me")
    with pytest.raises(SiteError, match="not a folder"):
        build_site([small_store], out)
    assert out.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site"]


def test_refuses_the_same_model_twice(small_store, tmp_path):
    twin = tmp_path / "twin.h5"
    shutil.copyfile(small_store, twin)
    with pytest.raises(SiteError, match=re.escape(repr(MODEL))):
        build_site([small_store, twin], tmp_path / "site")


def test_site_imports_no_torch():
    code = ("import sys, atlas.site, atlas.store, atlas.notebook; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("link", ["assets", "index.html", f"{MODEL}", f"{MODEL}/img", f"{MODEL}/visual.layer4.0"])
def test_refuses_to_write_through_symlinks_in_out(small_store, tmp_path, link):
    """A site folder re-used with a link inside pointing away: refuse, and write nothing there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    out = tmp_path / "site"
    (out / link).parent.mkdir(parents=True, exist_ok=True)
    target = elsewhere / "index.html" if link.endswith(".html") else elsewhere
    if link.endswith(".html"):
        target.write_text("keep")
    (out / link).symlink_to(target)
    with pytest.raises(SiteError, match="outside the site folder"):
        build_site([small_store], out)
    assert sorted(p.name for p in elsewhere.iterdir()) == sorted(
        ["keep.txt"] + (["index.html"] if link.endswith(".html") else []))
    assert all(p.read_text() == "keep" for p in elsewhere.iterdir())


def test_png_bytes_decode_to_the_same_pixels_in_pillow():
    """The site's own PNG writer (small images) and Pillow's (large ones) both give files Pillow decodes to the
    array, in every colour type the site writes, with its chunks' CRCs checked (Image.verify)."""
    import io

    import numpy as np
    from PIL import Image

    from atlas.site.images import png_bytes

    rng = np.random.default_rng(1)
    for shape in [(7, 7, 4), (1, 1, 3), (9, 5), (12, 12, 3), (2, 33, 4), (128, 128, 3), (40, 40, 4)]:
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        data = png_bytes(a)
        Image.open(io.BytesIO(data)).verify()
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == {2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[2]]
            assert np.array_equal(np.asarray(im), a), shape
