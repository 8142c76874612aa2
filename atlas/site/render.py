"""Render one or more stores into a static site that opens from the file system (file://).

Pages mirror neuron ids: the neuron ``model/layer/unit`` is ``model/layer/unit.html``.  Every path is
built from validated names (model, layer) and integers (units, image indices), never from dataset file
names, and is checked to stay inside the output folder.  Jinja autoescapes everything (captions and file
names are shown as text) and fails on undefined variables.  No torch here: the site reads stores only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SiteConfig
from ..resources import resource_dir
from ..store import REPORTS, LayerData, Store, StoreError
from .images import data_uri, heatmap_rgba, jpeg_bytes, png_bytes
from .plots import histogram_svg
from .sae import sae_links
from .reports import SiteUnits, backlinks, load_reports, render_reports
from .search import write_search
from .writer import SiteError, Writer, component, environment

def thumbnail_parts(model: str, index: int) -> list[str]:
    """Where the site puts image ``index``'s thumbnail: ``model/img/<index>.jpg`` (joined with '/', relative to the
    site's root)."""
    return [model, "img", f"{int(index)}.jpg"]


def featurevis_parts(model: str, layer: str, unit: int, kind: str = "channel", name: str = "",
                     image: int | None = None) -> list[str]:
    """Where the site puts a unit's feature visualization: ``model/layer/fv/<unit>.png`` (channel; an SAE's layer
    ``layer/saeN`` is two folders); other kinds
    ``fv-<kind>[-<name>]/<unit>.png``, the diversity kind's images ``fv-diversity/<unit>-<image>.png``."""
    folder = "fv" if kind == "channel" else "-".join(["fv", kind] + ([name] if name else []))
    return [model, *layer.split("/"), folder, f"{int(unit)}.png" if image is None else f"{int(unit)}-{int(image)}.png"]


KIND_CAPTIONS = {  # what each kind maximized (docs/featurevis.md)
    "channel": "channel objective: the mean of the unit's map",
    "neuron": "neuron objective: the unit at the centre position of its map",
    "diversity": "channel objective plus lucent's diversity term: images of one unit pushed apart",
    "faceted": "channel objective plus the facet's logit at a lower layer",
    "direction": "direction objective: cosine of the layer's activations with a stored direction",
}


def _other_kinds(w: Writer, ld: LayerData) -> list[dict[str, Any]]:
    """Write the images of every kind but channel; return each kind's kind, name, done [U], objective [U] and
    images per unit (None: one, no index in the file name)."""
    out = []
    for kind, name in ld.visualization_kinds():
        if kind == "channel":
            continue
        vis = ld.visualizations(kind, name)
        many = vis.images.shape[1] if vis.images.ndim == 5 else None  # diversity: [U, n, S, S, 3]
        for u in np.nonzero(vis.done)[0]:
            for j in range(many or 1):
                w.binary(featurevis_parts(ld.model, ld.name, u, kind, name, j if many else None),
                         png_bytes(vis.images[u, j] if many else vis.images[u]))
        out.append({"kind": kind, "name": name, "done": vis.done, "objective": vis.objective, "many": many})
    return out


def _kind_views(model: str, layer: str, u: int, channel_done: bool, objective: float | None,
                others: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The neuron page's tabs: one per kind rendered for unit ``u`` (image paths relative to the page)."""
    views, rel = [], 2 + layer.count("/")  # image paths relative to the page, in model/layer[/saeN]/
    if channel_done:
        views.append({"kind": "channel", "name": "", "title": "channel", "caption": KIND_CAPTIONS["channel"],
                      "images": ["/".join(featurevis_parts(model, layer, u)[rel:])], "objective": objective})
    for o in others:
        if not o["done"][u]:
            continue
        kind, name = o["kind"], o["name"]
        images = ["/".join(featurevis_parts(model, layer, u, kind, name, j)[rel:]) for j in range(o["many"])] \
            if o["many"] else ["/".join(featurevis_parts(model, layer, u, kind, name)[rel:])]
        views.append({"kind": kind, "name": name, "title": kind + (f": {name}" if name else ""),
                      "caption": KIND_CAPTIONS[kind], "images": images, "objective": float(o["objective"][u])})
    return views


@dataclass
class SiteResult:
    out: Path
    pages: int
    images: int


def build_site(stores: Sequence[str | Path], out: str | Path, config: SiteConfig = SiteConfig(),
               progress: Callable[[int, int], None] | None = None) -> SiteResult:
    """Render ``stores`` into the folder ``out`` (created; pages already there are overwritten)."""
    if not stores:
        raise SiteError("give at least one store to render")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SiteError(f"site output {out} exists and is not a folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    w = Writer(out, environment(), config)
    for asset in sorted((resource_dir("site_templates") / "assets").iterdir()):
        # through w.path, not copytree: a link left in ``out`` must not carry writes out of it
        w.path("assets", asset.name).write_bytes(asset.read_bytes())

    opened = [Store(p) for p in stores]
    try:
        models = []
        seen: set[str] = set()
        for st in opened:
            for model in st.models():
                if model in seen:
                    raise SiteError(f"model name {model!r} appears in two stores; rebuild one under "
                                    "another model name")
                seen.add(model)
                models.append((st, model))
        has_reports = any(st.reports(kind) for st in opened for kind in REPORTS)
        site = SiteUnits(models) if has_reports else None
        reports = load_reports(opened, site) if site else []  # names checked before any page is written
        links = backlinks(reports, site) if site else {}
        total = sum(len(st.layers(m)) for st, m in models)
        done = 0
        if progress:
            progress(0, total)
        summaries = []
        for st, model in models:
            summaries.append(_model_pages(w, st, model))
            for ld in st.layers(model):
                _layer_pages(w, st, ld, links.get((model, ld.name), {}))
                done += 1
                if progress:
                    progress(done, total)
        counts = render_reports(w, reports, site) if site else None
        search = write_search(w, models)
        w.page("index.html", ["index.html"], models=summaries, reports=counts, search=search)
    finally:
        for st in opened:
            st.close()
    return SiteResult(w.out, w.pages, w.images)


def _model_pages(w: Writer, st: Store, model: str) -> dict[str, Any]:
    """Thumbnails shared by the model's layers, the skipped-images page; returns the index summary."""
    component(model)
    rows = st.thumb_rows()
    thumbs = st.thumbs() if len(rows) and (rows >= 0).any() else None
    shown = np.nonzero(rows >= 0)[0]
    shown = shown[np.argsort(rows[shown])]  # in storage order: read the compressed chunks once each
    block = 512
    for start in range(0, len(shown), block):
        part = shown[start:start + block]
        lo, hi = int(rows[part[0]]), int(rows[part[-1]]) + 1
        data = thumbs[lo:hi]  # [rows, T, T, 3]
        for index in part:
            w.binary(thumbnail_parts(model, index), jpeg_bytes(data[int(rows[index]) - lo]))
    bad = st.bad_images()
    w.page("images.html", [model, "skipped.html"], model=model, bad=bad, meta=st.meta)
    layers = []
    for ld in st.layers(model):
        for part in ld.name.split("/"):  # an SAE's layer, layer/saeN, is a folder inside its layer's
            component(part)
        layers.append({"name": ld.name, "kind": ld.kind, "units": ld.units, "grid": ld.grid,
                       "featurevis": int(ld.featurevis_done().sum())})
    return {"name": model, "meta": st.meta, "layers": layers, "bad": len(bad), "n_images": st.n_images}


def _layer_pages(w: Writer, st: Store, ld: LayerData, links: dict[int, list[dict]]) -> None:
    """The layer's index and one page per unit; ``links``: unit -> what reports say about it (reports.py)."""
    model, layer = ld.model, ld.name
    values, index = ld["topk/values"], ld["topk/index"]
    argmax, maps = ld["topk/argmax"], ld.example_maps(0, ld.units)  # per unit [k, mh, mw]: `atlas maps`' where made
    stats = {k: ld[f"stats/{k}"] for k in ("mean", "std", "min", "max", "count", "positive", "nonfinite")}
    hist, hist_range = ld["stats/hist"], ld["stats/range"]
    fv_done = ld.featurevis_done()
    fv_images = ld["featurevis/images"] if ld.has("featurevis/images") else None  # [U, S, S, 3], read once
    fv_objective = ld["featurevis/objective"] if ld.has("featurevis/objective") else None
    others = _other_kinds(w, ld)  # neuron, diversity, faceted, direction: written here, shown as tabs
    captions, labels = st.image_column("caption"), st.image_column("label")
    source_ids = st.image_column("source_id")
    labelled = ld.labels() or []  # per unit; its ``nearest``: closest entries to the unit's text-tower direction
    gh, gw = ld.grid
    tiles = []
    for u in range(ld.units):
        if fv_done[u]:
            w.binary(featurevis_parts(model, layer, u), png_bytes(fv_images[u]))
        top = int(index[u, 0])
        tiles.append({"unit": u, "fv": bool(fv_done[u]), "top": top if top >= 0 else None,
                      "max": float(stats["max"][u])})
    where = layer.split("/")  # an SAE's layer, layer/saeN: a folder inside its layer's folder
    saes = sae_links(st, ld)
    w.page("layer.html", [model, *where, "index.html"], model=model, layer=ld, tiles=tiles,
           config=ld.config, trust=_trust(ld))
    k = min(w.cfg.examples, values.shape[1])
    for u in range(ld.units):
        vmax = float(np.nanmax(maps[u][:k])) if np.isfinite(maps[u][:k]).any() else 0.0
        heat = heatmap_rgba(maps[u][:k], vmax)  # [k, h, w, 4]: elementwise, one call per unit
        examples = []
        for r in range(k):
            i = int(index[u, r])
            if i < 0:
                continue
            cell = int(argmax[u, r])
            examples.append({
                "rank": r + 1, "index": i, "value": float(values[u, r]), "caption": str(captions[i]),
                "label": str(labels[i]), "source_id": str(source_ids[i]),
                "heat": data_uri(png_bytes(heat[r])),
                "cell": {"x": cell % gw, "y": cell // gw, "w": gw, "h": gh},
            })
        objective = float(fv_objective[u]) if fv_objective is not None else None
        neuron = {"id": ld.neuron_id(u), "unit": u, "fv": bool(fv_done[u]),
                  "kinds": _kind_views(model, layer, u, bool(fv_done[u]), objective, others) if others else [],
                  "stats": {k2: float(v[u]) for k2, v in stats.items()},
                  "hist": histogram_svg(hist[u], float(hist_range[u]), float(stats["mean"][u]))}
        w.page("neuron.html", [model, *where, f"{u}.html"], sae=saes.get(u, []), model=model, layer=ld, neuron=neuron,
               examples=examples, backlinks=links.get(u, []), nearest=labelled[u]["nearest"] if labelled else [],
               unit_labels=labelled[u] if labelled and labelled[u]["labels"] else None,
               prev=u - 1 if u > 0 else None,
               next=u + 1 if u + 1 < ld.units else None)


def _trust(ld: LayerData) -> dict[str, Any]:
    """What the layer page says about how far its numbers can be trusted: how it was mined, the model's non-finite
    activations, and the last `atlas verify` of the layer."""
    cfg = ld.config
    bad = ld["stats/nonfinite_maps"] if ld.has("stats/nonfinite_maps") else None
    check = ld.check("verify")
    return {"precision": cfg.get("precision", "float32"), "pixels": cfg.get("pixels", "legacy"),
            "nonfinite": None if bad is None else int(bad.sum()),
            "nonfinite_units": None if bad is None else int((bad > 0).sum()),
            "verify": check}


__all__ = ["SiteError", "SiteResult", "StoreError", "build_site", "featurevis_parts", "thumbnail_parts"]
