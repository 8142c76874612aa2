"""The static site in a real browser: Debian's chromium driven by playwright, over file:// only.

Every visited page must load without console errors, CSP warnings, page errors or failed requests;
every image must decode and every relative link must name a file of the site.  On the hostile site
(file names, captions, labels, data folder and title full of HTML/JS payloads) no payload may run.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import pytest

from atlas.store import Store

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"Debian's chromium is not installed at {CHROMIUM}"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")

from site_fixtures import (  # noqa: E402,F401  (fixtures)
    CAPTION_PAYLOADS,
    GOOD_FILES,
    HOSTILE_LAYER,
    MODEL,
    hostile,
    small_site,
)

LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Force lazy images to load, wait for every image to settle, report what each decoded to.
IMAGES_JS = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = "eager"; });
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  return imgs.map(i => ({src: i.getAttribute("src").slice(0, 80), w: i.naturalWidth, done: i.complete}));
}"""
LINKS_JS = "() => [...document.querySelectorAll('a[href]')].map(a => [a.getAttribute('href'), a.href])"


class Browser:
    """One page in a context that lets file:// through and aborts (and records) everything else."""

    def __init__(self, pw):
        self.browser = pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        self.context = self.browser.new_context()
        self.offsite: list[str] = []  # every non-file:// request the browser tried
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.console: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.dialogs: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append((r.url, str(r.failure))))
        self.page.on("dialog", self._dialog)

    def _route(self, route):
        url = route.request.url
        if url.startswith("file://"):
            route.continue_()
        else:
            self.offsite.append(url)
            route.abort()

    def _dialog(self, dialog):
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def reset(self) -> None:
        """Leave the current page (its pending loads abort now, not during the next visit), clear logs."""
        self.page.goto("about:blank")
        for log in (self.console, self.errors, self.failed, self.dialogs):
            log.clear()

    def close(self) -> None:
        self.context.close()
        self.browser.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as pw:
        b = Browser(pw)
        try:
            yield b
        finally:
            b.close()


def url_of(path: Path) -> str:
    return path.resolve().as_uri()


def path_of(url: str) -> Path:
    parts = urlsplit(url)
    assert parts.scheme == "file", url
    return Path(url2pathname(unquote(parts.path)))


def check_page(b: Browser, site: Path, path: Path, hostile_page: bool = False) -> dict:
    """Load ``path`` and assert every property a site page must have; return what was seen."""
    b.reset()
    response = b.page.goto(url_of(path), wait_until="load")
    assert response is None or response.ok, path
    images = b.page.evaluate(IMAGES_JS)
    links = b.page.evaluate(LINKS_JS)
    b.page.wait_for_timeout(0)  # let pending events (console, dialogs) arrive
    where = path.relative_to(site).as_posix()
    bad_console = [(t, m) for t, m in b.console
                   if t == "error" or (t == "warning" and "content security policy" in m.lower())]
    assert not bad_console, f"{where}: console {bad_console}"
    assert not b.errors, f"{where}: page errors {b.errors}"
    assert not b.failed, f"{where}: failed requests {b.failed}"
    assert not b.offsite, f"{where}: tried to reach {b.offsite}"
    broken = [i for i in images if not i["done"] or i["w"] <= 0]
    assert not broken, f"{where}: images that did not load {broken}"
    root = site.resolve()
    for raw, absolute in links:
        if raw.startswith("#"):
            continue
        assert not urlsplit(raw).scheme, f"{where}: link {raw!r} leaves the site"
        target = path_of(absolute.split("#")[0])
        assert target.is_file() and root in target.parents, f"{where}: link {raw!r} -> {target} missing"
        # the browser's resolution agrees with resolving the href against the page's file
        assert target == (path.parent / unquote(raw.split("#")[0])).resolve()
    if hostile_page:
        assert b.page.evaluate("() => typeof window.__xss") == "undefined", f"{where}: a payload ran"
        assert not b.dialogs, f"{where}: a payload opened {b.dialogs}"
    return {"images": images, "links": links}


def wait_until(b: Browser, cond, timeout_ms: int = 5000) -> None:
    """Poll ``cond`` while the browser delivers events (console messages arrive asynchronously)."""
    for _ in range(timeout_ms // 50):
        if cond():
            return
        b.page.wait_for_timeout(50)
    assert cond()


def neuron_sample(units: int) -> list[int]:
    return sorted(set(range(min(5, units))) | set(range(max(0, units - 5), units)))


def test_small_site_pages_load_cleanly(browser, small_site, small_store):
    site = small_site.out
    check_page(browser, site, site / "index.html")
    check_page(browser, site, site / MODEL / "skipped.html")
    visited = 2
    with Store(small_store) as st:
        layers = [(ld.name, ld.units) for ld in st.layers(MODEL)]
    for name, units in layers:
        seen = check_page(browser, site, site / MODEL / name / "index.html")
        assert len(seen["images"]) == units  # one tile per unit, all loaded (lazy ones forced)
        for u in neuron_sample(units):
            seen = check_page(browser, site, site / MODEL / name / f"{u}.html")
            assert len(seen["images"]) >= 2 * 8  # thumbnail + heatmap per example
            visited += 1
        visited += 1
    assert visited == 2 + sum(1 + len(neuron_sample(u)) for _, u in layers)


def test_hostile_site_loads_cleanly_and_no_payload_runs(browser, hostile):
    site = hostile.site.out
    with Store(hostile.store) as st:
        ld = st.layer(MODEL, HOSTILE_LAYER)
        index, units = ld["topk/index"], ld.units
    # every neuron page that first shows some image, so every image's name and caption is seen
    units_to_visit = set(neuron_sample(units))
    seen_images: set[int] = set()
    for u in range(units):
        new = set(index[u].tolist()) - {-1} - seen_images
        if new:
            units_to_visit.add(u)
            seen_images |= new
    assert len(seen_images) == len(GOOD_FILES)
    pages = [site / "index.html", site / MODEL / "skipped.html", site / MODEL / HOSTILE_LAYER / "index.html"]
    pages += [site / MODEL / HOSTILE_LAYER / f"{u}.html" for u in sorted(units_to_visit)]
    texts = ""
    for path in pages:
        check_page(browser, site, path, hostile_page=True)
        texts += browser.page.inner_text("body") + "\n" + browser.page.title() + "\n"
    # the payloads are on screen as text, exactly as typed
    for payload in CAPTION_PAYLOADS:
        assert payload in texts, payload
    assert "<img src=x onerror=alert(2)>" in texts and "<script>alert(5)<script>corrupt.jpg" in texts


def test_click_through_and_heatmap_toggle(browser, small_site):
    site = small_site.out
    page = browser.page
    browser.reset()
    page.goto(url_of(site / "index.html"))
    page.click("table.layers >> text=visual.layer4.0")  # the layer table, not the search notes
    page.wait_for_load_state("load")
    assert path_of(page.url) == (site / MODEL / "visual.layer4.0" / "index.html").resolve()
    page.click("a#u3")
    page.wait_for_load_state("load")
    assert path_of(page.url) == (site / MODEL / "visual.layer4.0" / "3.html").resolve()
    assert page.inner_text("h1.nid") == f"{MODEL}/visual.layer4.0/3"
    heat = page.locator(".heat")
    assert heat.count() == 8
    display = "els => els.map(e => getComputedStyle(e).display)"
    assert "none" not in heat.evaluate_all(display)
    page.uncheck("#heat-toggle")
    assert set(heat.evaluate_all(display)) == {"none"}
    assert set(page.locator("svg.cell").evaluate_all(display)) == {"none"}
    assert set(page.locator("img.thumb").evaluate_all(display)) != {"none"}  # thumbnails stay
    page.check("#heat-toggle")
    assert "none" not in heat.evaluate_all(display)
    # keyboard paging (once focus left the checkbox: keys typed into inputs are theirs)
    page.click("h1.nid")
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/4.html", timeout=5000)
    assert page.inner_text("h1.nid") == f"{MODEL}/visual.layer4.0/4"
    # and the breadcrumb back to the layer
    page.click("nav >> text=visual.layer4.0")
    page.wait_for_load_state("load")
    assert path_of(page.url) == (site / MODEL / "visual.layer4.0" / "index.html").resolve()
    assert all(i["w"] > 0 for i in page.evaluate(IMAGES_JS))
    # loads cut short because a click navigated away (lazy grid images) are aborted, not broken
    broken = [f for f in browser.failed if "ERR_ABORTED" not in f[1]]
    assert not browser.errors and not broken and not browser.offsite


def test_csp_blocks_inline_script_and_remote_loads(browser, small_site):
    """Defence in depth: even markup that got in could neither run inline script nor fetch."""
    site = small_site.out
    page = browser.page
    browser.reset()
    page.goto(url_of(site / MODEL / "visual.layer4.0" / "0.html"))
    with page.expect_event("requestfailed", timeout=5000) as failed:
        page.evaluate("""() => {
          const s = document.createElement("script"); s.textContent = "window.__inline = 1";
          document.body.append(s);
          const i = document.createElement("img"); i.src = "http://192.0.2.1/x.png"; document.body.append(i);
        }""")
    assert failed.value.url == "http://192.0.2.1/x.png"
    assert page.evaluate("() => typeof window.__inline") == "undefined"
    wait_until(browser, lambda: sum("Content Security Policy" in m for _, m in browser.console) >= 2)
    assert [u for u, why in browser.failed] == ["http://192.0.2.1/x.png"]
    assert browser.offsite == []  # stopped by the CSP before the network


def test_route_guard_sees_network_attempts(browser):
    """The guard check_page relies on: outside the site's CSP, http(s) requests reach it and abort."""
    page = browser.page
    browser.reset()
    page.set_content('<img src="http://192.0.2.1/a.png"><img src="https://example.invalid/b.png">')
    wait_until(browser, lambda: len(browser.offsite) >= 2 and len(browser.failed) >= 2)
    assert sorted(browser.offsite) == ["http://192.0.2.1/a.png", "https://example.invalid/b.png"]
    assert len(browser.failed) == 2
    browser.offsite.clear()


def test_featurevis_kind_tabs_switch_without_scripts(browser, small_store, tmp_path):
    """Neuron pages with several kinds: one panel shows at a time, a click on a tab shows its panel, with
    JavaScript off (the tabs are radio buttons and CSS), and every page still loads cleanly."""
    import shutil

    import numpy as np

    from atlas import store
    from atlas.site import build_site

    path = tmp_path / "kinds.h5"
    shutil.copy(small_store, path)
    layer = "visual.layer4.0"
    done = np.zeros(512, bool)
    done[:4] = True
    for kind, name, shape in (("neuron", "", (512, 16, 16, 3)), ("diversity", "", (512, 3, 16, 16, 3)),
                              ("faceted", "text", (512, 16, 16, 3))):
        images = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
        store.write_visualizations(path, MODEL, layer, store.Visualizations(
            kind, name, "{}", "{}", images, np.ones(512, np.float32), done))
    site = tmp_path / "site"
    build_site([path], site)
    check_page(browser, site, site / MODEL / layer / "2.html")
    ctx = browser.browser.new_context(java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.goto(url_of(site / MODEL / layer / "2.html"), wait_until="load")

        def shown():
            return [p.get_attribute("data-kind") for p in page.query_selector_all(".fv-panel") if p.is_visible()]

        assert shown() == ["channel"]
        page.click("label.fv-tab:text-is('diversity')")
        assert shown() == ["diversity"]
        assert sum(i.is_visible() for i in page.query_selector_all(".fv-diversity img")) == 3
        page.click("label.fv-tab:text-is('faceted: text')")
        assert shown() == ["faceted"]
    finally:
        ctx.close()
