"""Report pages: the probes, attacks and audits a store holds (`/probes`, `/attacks`, `/audits`, docs/store.md).

Each report becomes ``reports/<kind>-<name>.html`` (kind: probe, attack, audit); ``reports/index.html`` lists
them.  Report names are validated like model and layer names before anything is written.  Units named by a
report link to their neuron pages when the site renders that layer (``SiteUnits``), and neuron pages link back
through ``backlinks``, computed once per site so that rendering the layer pages stays a dictionary look-up.
"""

from __future__ import annotations

import json

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..names import unit_id
from ..store import LayerData, Store, read_report
from .images import png_bytes
from .plots import bar_svg, forest_svg, line_svg
from .writer import SiteError, Writer, component

KINDS = (("probes", "probe"), ("attacks", "attack"), ("audits", "audit"))
EXPERIMENTS = {"attack table": "report_attack_table.html", "stroop": "report_stroop.html",
               "word sensitivity": "report_words.html"}
TOP_TERMS, TOP_NEGATIVE, TOP_NEURONS = 6, 4, 20
PROBE_LINKS = 8  # classes of one probe listed on a neuron page (largest |weight| first); the rest are counted
NAN = float("nan")
NO_CAVEAT = ("This audit was stored without its caveat. An audit measures associations inside one model on one "
             "image set; it does not say why they arise or that they matter elsewhere, and a null result is not "
             "evidence of fairness.")
# the attributes each page shows, with what to show where an older report lacks one
_ATTRS: dict[str, dict[str, Any]] = {
    "probe": {"model": "", "layer": "", "units": 0, "n_train": 0, "n_val": 0, "val_accuracy": NAN,
              "neurons_per_class": NAN, "label_source": "", "label_pattern": ""},
    "attack table": {"images": 0, "classes": 0, "positions": 0, "font": "", "data_source": "", "layer": "",
                     "model": ""},
    "stroop": {"prompt": ""},
    "word sensitivity": {"layer": "", "model": "", "fonts": []},
    "audit": {"model": "", "layer": "", "fdr": NAN, "bootstrap": 0, "permutations": 0, "caveat": NO_CAVEAT,
              "context": "{}", "min_effect": 0.0, "min_association": 0.0},
}


@dataclass(frozen=True)
class _LayerRef:
    units: int
    fv: np.ndarray  # [U] bool: feature vis written as <model>/<layer>/fv/<u>.png
    top: np.ndarray  # [U] index of the top image with a thumbnail (<model>/img/<i>.jpg), -1 if none


class SiteUnits:
    """The layers the site renders, for links from report pages to neuron pages (paths from the site root)."""

    def __init__(self, models: Sequence[tuple[Store, str]]):
        self.layers: dict[tuple[str, str], _LayerRef] = {}
        for st, model in models:
            rows = st.thumb_rows()
            for ld in st.layers(model):
                self.layers[(model, ld.name)] = _layer_ref(ld, rows)

    def link(self, target: tuple[str, str] | None, unit: int) -> dict[str, Any]:
        """{unit, id, href, img}; href and img are None where the site has no such page or picture."""
        u = int(unit)
        ref = self.layers.get(target) if target else None
        if target is None or ref is None or not 0 <= u < ref.units:
            return {"unit": u, "id": f"unit {u}", "href": None, "img": None}
        model, layer = target
        img = f"{model}/{layer}/fv/{u}.png" if ref.fv[u] else \
            f"{model}/img/{int(ref.top[u])}.jpg" if ref.top[u] >= 0 else None
        return {"unit": u, "id": unit_id(model, layer, u), "href": f"{unit_id(model, layer, u)}.html", "img": img}


def _layer_ref(ld: LayerData, thumb_rows: np.ndarray) -> _LayerRef:
    top = ld.group["topk/index"][:, 0].astype(np.int64)  # [U]
    ok = (top >= 0) & (top < len(thumb_rows))
    ok[ok] = thumb_rows[top[ok]] >= 0
    return _LayerRef(ld.units, ld.featurevis_done().astype(bool), np.where(ok, top, -1))


@dataclass
class Report:
    kind: str  # probe | attack | audit
    name: str
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    target: tuple[str, str] | None  # (model, layer) rendered by the site that the report's units belong to

    @property
    def page(self) -> str:
        return f"{self.kind}-{self.name}.html"

    @property
    def experiment(self) -> str:
        return str(self.attrs.get("experiment", "")) if self.kind == "attack" else self.kind

    def need(self, *keys: str) -> None:
        missing = [k for k in keys if k not in self.arrays]
        if missing:
            raise SiteError(f"{self.kind} report {self.name!r} lacks {', '.join(missing)}: it was written by another "
                         "atlas version or by hand; write it again with this atlas")


def load_reports(stores: Sequence[Store], site: SiteUnits) -> list[Report]:
    """Every report of ``stores``, names validated; two reports of one kind and name are refused."""
    out: list[Report] = []
    seen: set[tuple[str, str]] = set()
    if any(model == "reports" for model, _ in site.layers):
        raise SiteError("model name 'reports' clashes with the site's reports folder; rebuild the store under "
                        "another model name")
    for st in stores:
        for group, kind in KINDS:
            for name in st.reports(group):
                try:
                    component(name)
                except SiteError as e:
                    raise SiteError(f"{kind} report {name!r} in {st.path} cannot be used in a site path (letters, "
                                 "digits, '._-' only); write it again under another name") from e
                if (kind, name) in seen:
                    raise SiteError(f"{kind} report {name!r} appears in two stores; rename one")
                seen.add((kind, name))
                arrays, attrs = read_report(st, group, name)
                out.append(Report(kind, name, arrays, attrs, _target(st, attrs, site)))
    return out


def _target(st: Store, attrs: dict[str, Any], site: SiteUnits) -> tuple[str, str] | None:
    """The rendered layer a report's units belong to: its model and layer attributes, the model defaulting to
    the one of its store that holds the layer (audits name no model).  None: units show as plain text."""
    layer, model = attrs.get("layer"), attrs.get("model")
    if not isinstance(layer, str):
        return None
    models = [model] if isinstance(model, str) else st.models()
    hits = [(m, layer) for m in models if (m, layer) in site.layers]
    return hits[0] if len(hits) == 1 else None


# ------------------------------------------------------------------------------------ back-links


def backlinks(reports: Sequence[Report], site: SiteUnits) -> dict[tuple[str, str], dict[int, list[dict]]]:
    """(model, layer) -> unit -> what the reports say about that unit, for the neuron pages."""
    out: dict[tuple[str, str], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))

    def add(r: Report, unit: int, **entry: Any) -> None:
        ref = site.layers.get(r.target) if r.target else None
        if ref is not None and 0 <= unit < ref.units:
            out[r.target][unit].append({"report": r.name, "href": f"reports/{r.page}", **entry})

    for r in reports:
        a = r.arrays
        if r.target is None:
            continue
        if r.kind == "probe":
            r.need("classes", "coef/row", "coef/col", "coef/value")
            order = np.argsort(-np.abs(a["coef/value"]), kind="stable")
            seen: Counter = Counter()
            for k, u, v in zip(a["coef/row"][order], a["coef/col"][order], a["coef/value"][order]):
                seen[int(u)] += 1
                if seen[int(u)] <= PROBE_LINKS:
                    add(r, int(u), kind="probe", anchor=f"#c{int(k)}", label=str(a["classes"][k]), value=float(v))
            for u, n in seen.items():
                if n > PROBE_LINKS:
                    add(r, u, kind="more", anchor="", n=n - PROBE_LINKS)
        elif r.experiment == "attack table" and "neurons/unit" in a:
            r.need("neurons/delta")
            for u, d in zip(a["neurons/unit"], a["neurons/delta"]):
                add(r, int(u), kind="moved", anchor="#neurons", value=float(d))
        elif r.experiment == "word sensitivity":
            for u, words in enumerate(_top_words(r)):
                add(r, u, kind="words", anchor=f"#u{u}", words=words)
        elif r.kind == "audit":
            r.need("neurons/unit", "neurons/g", "neurons/ci", "neurons/p", "neurons/significant")
            for u, g, ci, p, s in zip(a["neurons/unit"], a["neurons/g"], a["neurons/ci"], a["neurons/p"],
                                      a["neurons/significant"]):
                if s:
                    add(r, int(u), kind="audit", anchor="#neurons", value=float(g), lo=float(ci[0]),
                        hi=float(ci[1]), p=float(p), groups=[str(x) for x in r.attrs.get("groups", [])])
    return out


def _top_words(r: Report) -> list[list[tuple[str, float]]]:
    r.need("words", "top_index", "top_value")
    words = [str(x) for x in r.arrays["words"]]
    return [[(words[int(j)], float(v)) for j, v in zip(idx, val) if 0 <= j < len(words)]
            for idx, val in zip(r.arrays["top_index"], r.arrays["top_value"])]


# ------------------------------------------------------------------------------------ pages


def render_reports(w: Writer, reports: Sequence[Report], site: SiteUnits) -> dict[str, int]:
    """Write every report page and reports/index.html; returns the count per kind for the site index."""
    rows = []
    for r in reports:
        info = {k: r.attrs.get(k, d) for k, d in _ATTRS.get(r.experiment, {}).items()}
        if r.target and not info.get("model"):  # audits name no model: the one of their store
            info["model"] = r.target[0]
        common = {"report": r, "info": info, "left_out": _left_out(r.attrs),
                  "layer_href": "{}/{}/index.html".format(*r.target) if r.target else None}
        if r.kind == "probe":
            w.page("report_probe.html", ["reports", r.page], **common, **_probe(r, site))
        elif r.kind == "audit":
            w.page("report_audit.html", ["reports", r.page], **common, **_audit(r, site))
        elif r.experiment in EXPERIMENTS:
            ctx = {"attack table": _attack_table, "stroop": _stroop, "word sensitivity": _words}[r.experiment]
            w.page(EXPERIMENTS[r.experiment], ["reports", r.page], **common, **ctx(w, r, site))
        else:
            rows.append({"report": r, "href": None, "summary": []})
            continue
        rows.append({"report": r, "href": r.page, "summary": _summary(r)})
    w.page("reports_index.html", ["reports", "index.html"], rows=rows)
    return {kind: sum(r.kind == kind for r in reports) for _, kind in KINDS}


def _left_out(attrs: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(str(x[0]), int(x[1]), str(x[2])) for x in attrs.get("left_out", []) if len(x) == 3]


def _summary(r: Report) -> list[tuple[str, float, str]]:
    """(label, number, suffix) facts shown next to a report in the index."""
    a, at = r.arrays, r.attrs
    if r.kind == "probe":
        return [("classes", len(a["classes"]), ""), ("validation accuracy", 100 * at.get("val_accuracy", NAN), "%"),
                ("neurons per class", at.get("neurons_per_class", NAN), "")]
    if r.kind == "audit":
        return [("significant neurons", int(np.sum(a["neurons/significant"])), f" of {len(a['neurons/unit'])}"),
                ("significant classes", int(np.sum(a["classes/significant"])), f" of {len(a['classes/name'])}")]
    if r.experiment == "attack table":
        return [("rows", len(a["text"]), ""), ("highest success rate", 100 * float(np.max(a["success_rate"])), "%")]
    if r.experiment == "stroop":
        return [("incongruent stimuli", at.get("incongruent", NAN), ""),
                ("said the word", at.get("incongruent_said_word", NAN), ""),
                ("said the ink", at.get("incongruent_said_ink", NAN), "")]
    return [("units", len(a["top_index"]), ""), ("words", len(a["words"]), "")]


def _probe(r: Report, site: SiteUnits) -> dict[str, Any]:
    r.need("classes", "coef/row", "coef/col", "coef/value", "intercept", "path/lambda", "path/nnz",
           "path/train_acc", "path/val_acc")
    a, at = r.arrays, r.attrs
    rows, cols, vals = a["coef/row"], a["coef/col"], a["coef/value"].astype(float)
    classes = []
    for k, name in enumerate(a["classes"]):
        sel = rows == k
        us, vs = cols[sel], vals[sel]
        pos, neg = np.argsort(-vs, kind="stable"), np.argsort(vs, kind="stable")
        pos, neg = pos[vs[pos] > 0], neg[vs[neg] < 0]
        classes.append({
            "index": k, "name": str(name), "intercept": float(a["intercept"][k]), "nnz": int(sel.sum()),
            "pos": [{"w": float(vs[i]), **site.link(r.target, us[i])} for i in pos[:TOP_TERMS]],
            "neg": [{"w": float(vs[i]), **site.link(r.target, us[i])} for i in neg[:TOP_NEGATIVE]],
            "more_pos": max(len(pos) - TOP_TERMS, 0), "more_neg": max(len(neg) - TOP_NEGATIVE, 0)})
    nnz = a["path/nnz"].astype(float)
    best = int(at.get("best", -1))
    n_lam = len(a["path/lambda"])
    conv = a["path/converged"] if "path/converged" in a else np.full(n_lam, -1)  # -1: a store from before
    kkt = a["path/kkt"] if "path/kkt" in a else np.full(n_lam, np.nan)
    steps = a["path/iterations"] if "path/iterations" in a else np.full(n_lam, -1)
    path = [{"lambda": float(lam), "nnz": int(n), "train": float(t), "val": float(v), "best": i == best,
             "converged": int(c), "kkt": float(g), "steps": int(st)}
            for i, (lam, n, t, v, c, g, st) in enumerate(zip(a["path/lambda"], nnz, a["path/train_acc"],
                                                             a["path/val_acc"], conv, kkt, steps))]
    if "path/units" in a and "path/coef" in a:  # per class, its top units' coefficients along the path
        x = -np.log10(np.asarray(a["path/lambda"], float))
        for c in classes:
            units, coef = a["path/units"][c["index"]], a["path/coef"][c["index"]]
            series = {f"unit {int(u)}": coef[j] for j, u in enumerate(units) if u >= 0}
            c["path_plot"] = line_svg(x, series, width=420, height=160, x_label="-log10 λ (weaker penalty →)",
                                      y_label="weight", marks=[(float(x[best]), "chosen")] if 0 <= best < len(x)
                                      else []) if series else None
    unconverged = sum(1 for p in path if p["converged"] == 0)
    plot = line_svg(nnz, {"train": a["path/train_acc"], "validation": a["path/val_acc"]},
                    x_label="non-zero weights (all classes)", y_label="accuracy",
                    marks=[(float(nnz[best]), "chosen")] if 0 <= best < len(nnz) else [])
    cfg = at.get("config") or {}
    tol = (json.loads(cfg) if isinstance(cfg, str) else cfg).get("tol")
    return {"classes": classes, "path": path, "plot": plot, "best": best, "unconverged": unconverged,
            "tol": "%g" % tol if tol is not None else "the solver's tolerance"}


def _attack_table(w: Writer, r: Report, site: SiteUnits) -> dict[str, Any]:
    keys = ("classifier", "text", "target", "size", "attempts", "successes", "success_rate", "pixels_changed",
            "clean_accuracy")
    r.need(*keys)
    a = r.arrays
    rows = [dict(zip(keys, vals)) for vals in zip(*(a[k] for k in keys))]
    chart = bar_svg([f"{x['text']} → {x['target']} (size {float(x['size']):g})" for x in rows],
                    a["success_rate"], series=[str(x) for x in a["classifier"]])
    pairs = []
    if "examples/clean" in a:
        r.need("examples/attacked", "examples/caption")
        for i, (clean, attacked, caption) in enumerate(zip(a["examples/clean"], a["examples/attacked"],
                                                             a["examples/caption"])):
            pairs.append({"clean": _image(w, r, f"{i}-clean.png", clean),
                          "attacked": _image(w, r, f"{i}-attacked.png", attacked), "caption": str(caption)})
    neurons = []
    if "neurons/unit" in a:
        r.need("neurons/delta")
        neurons = [{"delta": float(d), **site.link(r.target, u)} for u, d in zip(a["neurons/unit"], a["neurons/delta"])]
    return {"rows": rows, "chart": chart, "pairs": pairs, "neurons": neurons}


def _image(w: Writer, r: Report, name: str, arr: np.ndarray) -> str:
    """Write one report image as reports/<kind>-<name>/<file>; returns its path relative to reports/."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise SiteError(f"{r.kind} report {r.name!r} holds an image of shape {arr.shape} and type {arr.dtype}, not "
                     "[H, W, 3] uint8; write it again with this atlas")
    folder = f"{r.kind}-{r.name}"
    w.binary(["reports", folder, name], png_bytes(arr))
    return f"{folder}/{name}"


def _stroop(w: Writer, r: Report, site: SiteUnits) -> dict[str, Any]:
    r.need("font", "word", "ink", "said")
    a = r.arrays
    word, ink, said = ([str(x) for x in a[k]] for k in ("word", "ink", "said"))
    words, inks = list(dict.fromkeys(word)), list(dict.fromkeys(ink))
    said_at: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for wd, ik, s in zip(word, ink, said):
        said_at[(wd, ik)][s] += 1
    grid = []
    for wd in words:
        cells = []
        for ik in inks:
            c = said_at.get((wd, ik))
            if not c:
                cells.append(None)
                continue
            top, n = c.most_common(1)[0]
            kind = "same" if wd == ik and top == wd else "word" if top == wd else "ink" if top == ik else "other"
            cells.append({"said": top, "n": n, "total": sum(c.values()), "kind": kind})
        grid.append({"word": wd, "cells": cells})
    examples = [{"src": _image(w, r, f"{i}.png", img), "word": word[i], "ink": ink[i], "said": said[i]}
                for i, img in enumerate(a.get("examples/image", [])) if i < len(word)]
    counts = {k: int(r.attrs.get(k, 0)) for k in ("incongruent", "incongruent_said_word", "incongruent_said_ink",
                                                   "controls", "controls_correct")}
    return {"inks": inks, "grid": grid, "examples": examples, "counts": counts, "fonts": list(dict.fromkeys(
        str(x) for x in a["font"]))}


def _words(w: Writer, r: Report, site: SiteUnits) -> dict[str, Any]:
    return {"units": [{"words": words, **site.link(r.target, u)} for u, words in enumerate(_top_words(r))],
            "n_words": len(r.arrays["words"])}


def _audit(r: Report, site: SiteUnits) -> dict[str, Any]:
    r.need("neurons/unit", "neurons/g", "neurons/ci", "neurons/p", "neurons/significant", "classes/name",
           "classes/sensitive", "classes/diff", "classes/ci", "classes/p", "classes/significant", "classes/top1_a",
           "classes/top1_b", "concepts/name", "concepts/d", "concepts/p", "concepts/significant")
    a, at = r.arrays, r.attrs
    ci = a.get("concepts/ci")
    classes = [{"name": str(n), "sensitive": bool(s), "est": float(d), "lo": float(c[0]), "hi": float(c[1]),
                "p": float(p), "sig": bool(g), "top1_a": float(ta), "top1_b": float(tb)}
               for n, s, d, c, p, g, ta, tb in zip(*(a[f"classes/{k}"] for k in (
                   "name", "sensitive", "diff", "ci", "p", "significant", "top1_a", "top1_b")))]
    concepts = [{"name": str(n), "est": float(d), "lo": float(ci[i, 0]) if ci is not None else None,
                 "hi": float(ci[i, 1]) if ci is not None else None, "p": float(p), "sig": bool(g),
                 "centre": float(a["concepts/null_centre"][i]) if "concepts/null_centre" in a else None}
                for i, (n, d, p, g) in enumerate(zip(*(a[f"concepts/{k}"] for k in ("name", "d", "p", "significant"))))]
    k = min(TOP_NEURONS, len(a["neurons/unit"]))
    neurons = [{"est": float(g), "lo": float(c[0]), "hi": float(c[1]), "p": float(p), "sig": bool(s),
                **site.link(r.target, u)}
               for u, g, c, p, s in zip(*(a[f"neurons/{key}"][:k] for key in ("unit", "g", "ci", "p", "significant")))]
    groups = [str(x) for x in at.get("groups", ["a", "b"])]
    diff = f"mean probability, {groups[0]} minus {groups[-1]}"
    return {
        "groups": groups, "counts": [int(x) for x in at.get("counts", [])], "classes": classes, "concepts": concepts,
        "neurons": neurons, "n_neurons": len(a["neurons/unit"]), "n_significant": int(np.sum(a["neurons/significant"])),
        "has_concept_ci": ci is not None,
        "class_plot": forest_svg([c["name"] for c in classes], a["classes/diff"], a["classes/ci"],
                                 a["classes/significant"], x_label=diff),
        "concept_plot": forest_svg([c["name"] for c in concepts], a["concepts/d"], ci, a["concepts/significant"],
                                   x_label=f"effect size d ({groups[0]} vs {groups[-1]})"),
        "neuron_plot": forest_svg([f"unit {n['unit']}" for n in neurons], a["neurons/g"][:k], a["neurons/ci"][:k],
                                  a["neurons/significant"][:k], x_label=f"Hedges' g ({groups[0]} vs {groups[-1]})"),
    }
