"""Report pages of the static site (atlas.site.reports): probes, attacks and audits written into a small store.

The probe is fitted and saved by the real writer (probe_layer), the audit by save_audit; the attack reports are
written with store.write_report in the schemas of atlas/attacks/experiments.py.  One site is built per module.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_site import Page, html_files, local_target

from atlas.audit.bias import CAVEAT, AuditConfig, AuditResult, save_audit
from atlas.config import ProbeConfig
from atlas.probes.report import load_probe_weights, probe_layer
from atlas.site import SiteError, build_site
from atlas.site.plots import bar_svg, forest_svg
from atlas.store import Store, StoreError, read_report, write_report

MODEL, L4, L3 = "tiny", "visual.layer4.0", "visual.layer3.0"
PAYLOAD = "<script>window.__xss=9</script>"
SIGNIFICANT = (3, 9, 100)  # audit neurons planted as significant
MOVED = (5, 1, 9999)  # attack-table neurons; 9999 is not a unit of the layer
COLORS = ("red", "green", "blue")


def _audit_result(units: int) -> AuditResult:
    rng = np.random.default_rng(0)
    g = rng.normal(0, 0.1, units)
    p = rng.uniform(0.2, 1.0, units)
    sig = np.zeros(units, bool)
    for k, u in enumerate(SIGNIFICANT):
        g[u], p[u], sig[u] = 1.5 - 0.2 * k, 1e-4 * (k + 1), True
    neurons = {"unit": np.arange(units), "g": g, "ci": np.stack([g - 0.3, g + 0.3], 1), "p": p, "significant": sig}
    classes = {"name": ["doctor", "nurse", "tree"], "sensitive": np.array([True, True, False]),
               "diff": np.array([0.12, -0.08, 0.001]), "ci": np.array([[0.05, 0.19], [-0.15, -0.01], [-0.02, 0.02]]),
               "p": np.array([0.001, 0.04, 0.9]), "significant": np.array([True, False, False]),
               "top1_a": np.array([0.5, 0.3, 0.2]), "top1_b": np.array([0.3, 0.5, 0.2])}
    concepts = {"name": ["career", "family"], "d": np.array([0.8, -0.2]), "ci": np.array([[0.4, 1.2], [-0.6, 0.2]]),
                "p": np.array([0.002, 0.5]), "significant": np.array([True, False]), "g": np.array([2.1, -0.5]),
                "p_words": np.array([0.001, 0.4]), "p_images": np.array([0.002, 0.5]),
                "null_centre": np.array([0.05, 0.04]), "templates": ["person, {}"]}
    return AuditResult(("a", "b"), (40, 35), neurons, classes, concepts, [["images without a group", 3, "no group"]])


def _write_attacks(path: Path, l3_units: int) -> None:
    rng = np.random.default_rng(1)
    write_report(path, "attacks", "table", {
        "classifier": ["zero-shot", "zero-shot", "probe shapes"], "text": ["ipod", PAYLOAD, "ipod"],
        "target": ["star", "ring", "star"], "size": np.array([0.3, 0.3, 0.16]), "attempts": np.array([80, 80, 40]),
        "successes": np.array([60, 8, 10]), "success_rate": np.array([0.75, 0.1, 0.25]),
        "pixels_changed": np.array([0.05, 0.06, 0.02]), "clean_accuracy": np.array([0.9, 0.9, 0.8]),
        "examples/clean": rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8),
        "examples/attacked": rng.integers(0, 255, (2, 16, 16, 3), dtype=np.uint8),
        "examples/caption": ["circle -> star ('ipod')", f"ring -> star ({PAYLOAD})"],
        "neurons/unit": np.array(MOVED), "neurons/delta": np.array([2.5, -1.25, 0.5])},
        {"experiment": "attack table", "images": 20, "classes": 8, "positions": 8, "font": "DejaVuSans-Bold.ttf",
         "left_out": [["target 'meow' -> 'cat'", 1, "the class is not among the labels"]],
         "data_source": "synthetic:200", "layer": L4, "model": MODEL})
    rows = [(f, w, i) for f in ("f1", "f2") for w in COLORS for i in COLORS]
    said = [w for _, w, _ in rows]  # always says the word
    said[rows.index(("f2", "red", "blue"))] = "blue"  # once the ink: the (red, blue) cell is a 1-1 tie
    write_report(path, "attacks", "stroop", {
        "font": [r[0] for r in rows], "word": [r[1] for r in rows], "ink": [r[2] for r in rows], "said": said,
        "examples/image": rng.integers(0, 255, (9, 12, 12, 3), dtype=np.uint8)},
        {"experiment": "stroop", "prompt": "my favorite word, written in the color {}", "incongruent": 12,
         "incongruent_said_word": 11, "incongruent_said_ink": 1, "controls": 6, "controls_correct": 6})
    words = ["apple", "ipod", "cat", PAYLOAD]
    top = np.stack([np.roll(np.arange(4), -u)[:3] for u in range(l3_units)]).astype(np.int32)  # [U, 3]
    write_report(path, "attacks", "words", {"words": words, "top_index": top,
                                            "top_value": np.tile(np.array([0.9, 0.5, 0.25], np.float32), (l3_units, 1))},
                 {"experiment": "word sensitivity", "layer": L3, "fonts": ["a.ttf", "b.ttf"], "model": MODEL})
    write_report(path, "attacks", "future", {"x": np.zeros(2)}, {"experiment": "time travel"})


@pytest.fixture(scope="module")
def reports(small_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    path = root / "reports.h5"
    shutil.copy(small_store, path)
    probe_layer(path, L4, "shapes", config=ProbeConfig(n_lambdas=6))
    with Store(path) as st:
        arrays, attrs = read_report(st, "probes", "shapes")
        units = st.layer(MODEL, L4).units, st.layer(MODEL, L3).units
    arrays = {k: v.tolist() if v.dtype.kind in "OU" else v for k, v in arrays.items()}  # text goes in as lists
    write_report(path, "probes", "elsewhere", arrays, {**attrs, "layer": "visual.gone"})  # layer not in the site
    save_audit(path, "bias", _audit_result(units[0]), L4, AuditConfig())
    with Store(path) as st:  # the same audit with concept intervals (concepts/ci), as newer writers store them
        arrays, attrs = read_report(st, "audits", "bias")
    arrays = {k: v.tolist() if v.dtype.kind in "OU" else v for k, v in arrays.items()}
    write_report(path, "audits", "bias-ci", {**arrays, "concepts/ci": np.array([[0.4, 1.2], [-0.6, 0.2]])}, attrs)
    _write_attacks(path, units[1])
    site = build_site([path], root / "site")
    return path, site


REPORT_PAGES = ["probe-shapes.html", "probe-elsewhere.html", "attack-table.html", "attack-stroop.html",
                "attack-words.html", "audit-bias.html", "audit-bias-ci.html"]


def test_report_pages_and_indexes(reports, small_store):
    _, site = reports
    out = site.out
    assert sorted(p.name for p in (out / "reports").glob("*.html")) == sorted(REPORT_PAGES + ["index.html"])
    with Store(small_store) as st:
        base_pages = 2 + sum(1 + ld.units for ld in st.layers(MODEL))
    assert site.pages == base_pages + len(REPORT_PAGES) + 1 == len(html_files(out))
    index = Page(out / "index.html")
    assert "reports/index.html" in [a.attrs["href"] for a in index.find("a")]
    listing = Page(out / "reports" / "index.html")
    assert sorted(a.attrs["href"] for a in listing.find("a") if not a.attrs["href"].startswith("../")) == \
        sorted(REPORT_PAGES)
    future = [tr for tr in listing.find("tr") if "future" in tr.text]
    assert len(future) == 1 and "does not know the experiment time travel" in future[0].text


def test_probe_page_shows_compositions_with_weights_and_links(reports):
    path, site = reports
    page = Page(site.out / "reports" / "probe-shapes.html")
    with Store(path) as st:
        p = load_probe_weights(st, "shapes")
        ld = st.layer(MODEL, L4)
        fv, top = ld.featurevis_done(), ld["topk/index"][:, 0]
    assert f"{100 * p.attrs['val_accuracy']:.4g}%" in page.find("dl", "meta")[0].text
    sections = {e.attrs["id"]: e for e in page.find("section", "composition")}
    assert sorted(sections) == sorted(f"c{k}" for k in range(len(p.classes)))
    terms = [e for e in page.elements if e.tag == "span" and "term" in e.classes]
    links = [e for e in page.find("a", "unit")]
    shown = 0
    for k, cls in enumerate(p.classes):
        sec = sections[f"c{k}"]
        assert cls in sec.text
        pos = sorted([(w, u) for u, w in enumerate(p.W[k]) if w > 0], reverse=True)[:6]
        neg = sorted([(w, u) for u, w in enumerate(p.W[k]) if w < 0])[:4]
        for w, u in pos + neg:
            expected = f"{w:.4g} × unit {u}"
            assert any(t.text.strip() == expected for t in terms), (cls, expected)
        # positive terms in order of weight, first in the section
        at = [sec.text.index(f"{w:.4g} × unit {u}") for w, u in pos]
        assert at == sorted(at)
        shown += len(pos) + len(neg)
    assert shown > 0 and len(links) == shown
    for a in links:
        u = int(a.attrs["href"].rsplit("/", 1)[1].removesuffix(".html"))
        assert a.attrs["href"] == f"../{MODEL}/{L4}/{u}.html"
        img = page.elements[page.elements.index(a) + 1]
        thumb = f"../{MODEL}/{L4}/fv/{u}.png" if fv[u] else f"../{MODEL}/img/{top[u]}.jpg"
        assert img.tag == "img" and img.attrs["src"] == thumb
    with Store(path) as st:
        arrays = read_report(st, "probes", "shapes")[0]
    units, coef, best = arrays["path/units"], arrays["path/coef"], int(p.attrs["best"])
    for k in range(len(p.classes)):  # each class's top units: its largest weights, positive first, and their path
        order = [u for u in units[k] if u >= 0]
        assert order == [u for _, u in sorted(((w <= 0, -abs(w)), u) for u, w in enumerate(p.W[k]) if w)][:5]
        np.testing.assert_allclose(coef[k, :len(order), best], p.W[k, order], rtol=1e-6)
    plotted = [k for k in range(len(p.classes)) if (units[k] >= 0).any()]
    plot = [s for s in page.find("svg") if "plot" in s.classes]
    assert plotted and len(plot) == 1 + len(plotted)  # the path, then one per class: its top neurons' weights
    assert len(page.find("polyline")) == 2 + int((units >= 0).sum())
    assert len(page.find("line", "mark")) == 1 + len(plotted)
    rows = page.find("tr")
    assert len([r for r in rows if "best" in r.classes]) == 1
    path_rows = [r for r in rows if r.text.strip() and ("yes" in r.text or "not converged" in r.text)]
    assert [("not converged" not in r.text) for r in path_rows] == arrays["path/converged"].tolist()
    left_out = p.attrs["left_out"]
    assert len(rows) == 1 + len(_path_nnz(path)) + (1 + len(left_out) if left_out else 0)


def _path_nnz(path) -> list:
    with Store(path) as st:
        return list(read_report(st, "probes", "shapes")[0]["path/nnz"])


def test_probe_of_a_layer_not_in_the_site_shows_plain_units(reports):
    page = Page(reports[1].out / "reports" / "probe-elsewhere.html")
    assert not page.find("a", "unit") and page.find("span", "unit")
    assert "visual.gone" in page.find("dl", "meta")[0].text and "not rendered in this site" in page.find("dl")[0].text


def test_attack_pages(reports):
    out = reports[1].out / "reports"
    page = Page(out / "attack-table.html")
    table_rows = [tr for tr in page.find("tr") if "zero-shot" in tr.text or "probe shapes" in tr.text]
    assert len(table_rows) == 3 and "75%" in table_rows[0].text and "6%" in table_rows[1].text
    bars = [s for s in page.find("svg") if "bars" in s.classes]
    assert len(bars) == 1 and len(page.find("rect")) == 3
    assert PAYLOAD in bars[0].text  # shown as text inside the chart, escaped in the file
    pairs = page.find("figure", "pair")
    assert len(pairs) == 2
    assert len([e for e in page.find("img") if e.attrs["src"].startswith("attack-table/")]) == 4
    units = [a.attrs["href"] for a in page.find("a", "unit")]
    assert units == [f"../{MODEL}/{L4}/5.html", f"../{MODEL}/{L4}/1.html"]
    assert [s.text for s in page.find("span", "unit")] == ["unit 9999"]
    assert "the class is not among the labels" in page.find("table", "left-out")[0].text

    stroop = Page(out / "attack-stroop.html")
    grid = stroop.find("table", "stroop")[0]
    assert [th.text for th in stroop.find("th")][:4] == ["word \\ ink", *COLORS]
    cells = [td for td in stroop.find("td") if td.attrs.get("class", "").startswith("said-")]
    assert len(cells) == 9 and grid.text
    kinds = [td.attrs["class"] for td in cells]
    assert kinds.count("said-same") == 3 and kinds.count("said-word") == 6
    red_blue = cells[COLORS.index("blue")]  # row red, column blue: 'red' and 'blue' once each, first seen wins
    assert red_blue.text.startswith("red") and "1/2" in red_blue.text
    assert len(stroop.find("figure", "stimulus")) == 9
    assert "11 (91.67%)" in stroop.find("dl")[0].text

    words = Page(out / "attack-words.html")
    rows = [tr for tr in words.find("tr") if tr.attrs.get("id", "").startswith("u")]
    assert rows[1].attrs["id"] == "u1" and [s.text.split()[0] for s in words.find("span", "word")][:3] == \
        ["apple", "ipod", "cat"]
    assert "ipod 0.9" in rows[1].text and "cat 0.5" in rows[1].text
    assert words.find("a", "unit")[1].attrs["href"] == f"../{MODEL}/{L3}/1.html"


@pytest.mark.parametrize("name", ["bias", "bias-ci"])
def test_audit_page(reports, name):
    page = Page(reports[1].out / "reports" / f"audit-{name}.html")
    (caveat,) = page.find("p", "caveat")
    assert CAVEAT in caveat.text
    assert "a (40 images) vs b (35 images)" in page.find("dl")[0].text
    forests = [s for s in page.find("svg") if "forest" in s.classes]
    assert len(forests) == 3
    circles = page.find("circle")
    assert len(circles) == 3 + 2 + 20
    assert len([c for c in circles if "sig" in c.classes]) == 1 + 1 + len(SIGNIFICANT)
    ci = [td.text for td in page.find("td", "ci")]
    assert ci[:3] == ["[0.05, 0.19]", "[-0.15, -0.01]", "[-0.02, 0.02]"]
    has_ci = "concepts/ci" in _audit_arrays(reports[0], name)
    assert has_ci == (name == "bias-ci") or name == "bias"  # save_audit may write concept intervals too
    assert len(ci) == 3 + 2 * has_ci + 20 and len(page.find("line", "ci")) == len(ci)
    if has_ci:
        assert ci[3:5] == ["[0.4, 1.2]", "[-0.6, 0.2]"]
    assert ci[-20:][0] == "[1.2, 1.8]"  # unit 3: g 1.5 +- 0.3, first by p
    sig_rows = [tr for tr in page.find("tr") if "significant" in tr.classes]
    assert len(sig_rows) == 1 + 1 + len(SIGNIFICANT) and all("✓" in tr.text for tr in sig_rows)
    units = [a.attrs["href"] for a in page.find("a", "unit")]
    assert units[:3] == [f"../{MODEL}/{L4}/{u}.html" for u in SIGNIFICANT] and len(units) == 20
    with Store(reports[0]) as st:
        top9 = st.layer(MODEL, L4)["topk/index"][9, 0]
    thumbs = [e.attrs["src"] for e in page.find("img", "unit-thumb")]
    assert thumbs[:2] == [f"../{MODEL}/{L4}/fv/3.png", f"../{MODEL}/img/{top9}.jpg"]  # fv only for units 0-7
    assert "images without a group" in page.find("table", "left-out")[0].text
    assert any("3 of 512 neurons differ significantly" in e.text for e in page.find("p", "sub"))


def _audit_arrays(path, name):
    with Store(path) as st:
        return read_report(st, "audits", name)[0]


def test_neuron_pages_link_back_to_reports(reports):
    path, site = reports
    with Store(path) as st:
        p = load_probe_weights(st, "shapes")
    k, u = next((k, u) for k in range(len(p.classes)) for u in np.argsort(-p.W[k]) if p.W[k, u] > 0)
    page = Page(site.out / MODEL / L4 / f"{u}.html")
    (section,) = page.find("section", "in-reports")
    hrefs = [a.attrs["href"] for a in page.find("a") if "reports/" in a.attrs["href"]]
    assert f"../../reports/probe-shapes.html#c{k}" in hrefs
    assert f"probe: weight {p.W[k, u]:.4g} in class {p.classes[k]}" in " ".join(section.text.split())
    significant = Page(site.out / MODEL / L4 / f"{SIGNIFICANT[0]}.html")
    text = " ".join(significant.find("section", "in-reports")[0].text.split())
    assert "audit: differs between a and b, g = 1.5 [1.2, 1.8], p = 0.0001" in text
    moved = Page(site.out / MODEL / L4 / "5.html")
    assert "mean change 2.5" in " ".join(moved.find("section", "in-reports")[0].text.split())
    words = Page(site.out / MODEL / L3 / "2.html")
    text = " ".join(words.find("section", "in-reports")[0].text.split())
    assert "top words cat 0.9 " + PAYLOAD + " 0.5 apple 0.25" in text
    quiet = [v for v in range(p.W.shape[1]) if not p.W[:, v].any() and v not in SIGNIFICANT + MOVED]
    assert not Page(site.out / MODEL / L4 / f"{quiet[0]}.html").find("section", "in-reports")


def test_every_reference_of_report_and_neuron_pages_resolves(reports):
    out = reports[1].out.resolve()
    with Store(reports[0]) as st:
        probe_units = sorted(set(read_report(st, "probes", "shapes")[0]["coef/col"].tolist()))[:10]
    units = sorted(set(SIGNIFICANT + MOVED[:2]) | set(probe_units))
    pages = [*sorted((out / "reports").glob("*.html")), *[out / MODEL / L4 / f"{u}.html" for u in units],
             out / MODEL / L4 / "index.html", out / MODEL / L3 / "2.html", out / "index.html"]
    ids: dict[Path, set] = {}
    checked = anchors = 0
    for path in pages:
        page = Page(path)
        for el in page.elements:
            for attr in ("href", "src"):
                ref = el.attrs.get(attr)
                target = local_target(path, ref) if ref else None
                if target is None:
                    continue
                checked += 1
                assert out in target.parents and target.is_file(), f"{path}: {attr}={ref!r} is missing"
                if "#" in ref:
                    if target not in ids:
                        ids[target] = {e.attrs.get("id") for e in Page(target).elements}
                    assert ref.split("#", 1)[1] in ids[target], f"{path}: anchor {ref!r} is missing"
                    anchors += 1
        assert not [e for e in page.elements if "style" in e.attrs or e.tag == "style"], path
        up = "../" * (len(path.relative_to(out).parts) - 1)
        search = ["search/index.js", "assets/search.js"] if path == out / "index.html" else []  # the search box
        assert [s.attrs.get("src") for s in page.find("script")] == [up + "assets/atlas.js", *search]
    assert checked > 200 and anchors > 5
    images = {p.relative_to(out).as_posix() for p in (out / "reports").rglob("*.png")}
    assert images == {f"reports/attack-table/{i}-{k}.png" for i in range(2) for k in ("clean", "attacked")} | \
        {f"reports/attack-stroop/{i}.png" for i in range(9)}


def test_report_text_is_escaped(reports):
    for path in html_files(reports[1].out / "reports"):
        text = path.read_text(encoding="utf-8")
        assert PAYLOAD not in text and "<script>window" not in text, path
    assert "&lt;script&gt;window.__xss=9&lt;/script&gt;" in (reports[1].out / "reports" / "attack-table.html").read_text()


@pytest.mark.parametrize("name", ["..", "<script>x", "a b", "-rf", "évil"])
def test_refuses_report_names_that_could_escape(small_store, tmp_path, name):
    bad = tmp_path / "bad.h5"
    shutil.copyfile(small_store, bad)
    with h5py.File(bad, "a") as f:
        f.require_group("audits").create_group(name)
    out = tmp_path / "deep" / "site"
    with pytest.raises(SiteError, match=re.escape(repr(name)) + ".*another name"):
        build_site([bad], out)
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir()}
    assert all(w == "bad.h5" or w.startswith("deep/site/assets/") for w in written), written
    with pytest.raises(StoreError, match="hold no '/'"):
        write_report(bad, "probes", "../x", {}, {})


def test_refuses_the_same_report_in_two_stores(reports, tmp_path):
    twin = tmp_path / "twin.h5"
    shutil.copyfile(reports[0], twin)
    with h5py.File(twin, "a") as f:
        del f["neurons"]
    with pytest.raises(SiteError, match="probe report 'elsewhere' appears in two stores"):
        build_site([reports[0], twin], tmp_path / "site")


def test_forest_and_bar_geometry():
    svg = str(forest_svg(["x", "y"], np.array([1.0, -1.0]), np.array([[0.5, 1.5], [-2.0, 0.0]]),
                         np.array([True, False]), width=400))
    # range [-2, 1.5] padded by 5%: zero sits at (0 - lo) / (hi - lo) of the 214 px plot width after 170 px
    lo, hi = -2 - 0.175, 1.5 + 0.175
    x0 = 170 + 214 * (0 - lo) / (hi - lo)
    assert f'class="zero" x1="{x0:.1f}"' in svg
    assert f'cx="{170 + 214 * (1 - lo) / (hi - lo):.1f}"' in svg and svg.count('class="point sig"') == 1
    assert svg.count('class="ci"') == 2 and "[0.5, 1.5]" in svg
    no_ci = str(forest_svg(["x"], np.array([0.3])))
    assert 'class="ci"' not in no_ci and no_ci.count("<circle") == 1
    bars = str(bar_svg(["a", "<b>"], np.array([0.5, 1.0]), width=410))
    widths = [float(w) for w in re.findall(r'<rect x="210" y="[\d.]+" width="([\d.]+)"', bars)]
    assert widths == [72.0, 144.0] and "&lt;b&gt;" in bars and "<b>" not in bars and "100.0%" in bars


def test_backlinks_list_a_probes_largest_weights_and_count_the_rest():
    from atlas.site.reports import (
        PROBE_LINKS,
        Report,
        SiteUnits,
        _LayerRef,
        backlinks,
        load_reports,
    )

    site = SiteUnits([])
    site.layers[("m", "l")] = _LayerRef(4, np.zeros(4, bool), np.full(4, -1))
    C = PROBE_LINKS + 3
    arrays = {"classes": np.array([f"c{k}" for k in range(C)], object), "coef/row": np.arange(C),
              "coef/col": np.zeros(C, int), "coef/value": np.arange(1, C + 1, dtype=np.float32)}
    links = backlinks([Report("probe", "p", arrays, {}, ("m", "l"))], site)
    entries = links[("m", "l")][0]
    assert [e["label"] for e in entries[:-1]] == [f"c{k}" for k in range(C - 1, C - 1 - PROBE_LINKS, -1)]
    assert entries[-1] == {"report": "p", "href": "reports/probe-p.html", "kind": "more", "anchor": "", "n": 3}
    assert set(links[("m", "l")]) == {0}
    site.layers[("reports", "l")] = site.layers[("m", "l")]
    with pytest.raises(SiteError, match="'reports' clashes"):
        load_reports([], site)
