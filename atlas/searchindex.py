"""The text side of search, without torch: what each unit is called (its automatic labels and its top rendered
words, read from the store), a compact inverted index over those words, and the one ranking rule that both
`atlas search` (Python, `query_index`) and the site's search box (site_templates/assets/search.js) apply to it.

Index of one layer (`build_index`, plain lists, written by the site as JSON inside a .js file)::

    tokens  [T] sorted distinct lower-case tokens of every label and top word
    post    [T] lists of postings, each unit * 16 + code; code 0..7: the token is in the unit's label of rank code,
            8..15: in its top word of rank code - 8 (ranks past 7 count as 7)
    text    [U] what the unit is called, for display ("label, label | words: w, w"; "" when nothing is known)

Ranking (`WEIGHTS`, `query_index`): a query's tokens are looked up by prefix (binary search in ``tokens``); a
posting weighs 1 / (1 + rank), times 0.5 for a top word (labels are the stronger evidence), times 0.5 when the
token only starts with the query token.  A unit's match is the mean over query tokens of its best posting
weight (so a unit matching every word ranks above one matching some); ties go to the lower unit.  A query that
names a unit (``model/layer/unit``, ``layer/unit`` or a unit number) matches it with 1.0.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import store
from .errors import AtlasError

TOKEN = re.compile(r"[a-z0-9]+")
MAX_RANK = 7
PREFIX_WEIGHT, WORD_WEIGHT = 0.5, 0.5


class SearchError(AtlasError, ValueError):
    """A search that cannot run as asked: an empty query, a layer the store does not hold."""


def tokens(text: str) -> list[str]:
    """Lower-case runs of letters and digits: 'Red car!' -> ['red', 'car']."""
    return TOKEN.findall(text.lower())


def weight(code: int, exact: bool) -> float:
    """A posting's weight (module doc): label rank r -> 1 / (1 + r), top word rank r -> 0.5 / (1 + r); halved for a
    prefix match."""
    rank, word = code & 7, code >= 8
    return (WORD_WEIGHT if word else 1.0) / (1 + rank) * (1.0 if exact else PREFIX_WEIGHT)


@dataclass
class UnitTexts:
    """What the units of one layer are called: per unit its labels [(concept, score)] best first and its top words
    [(word, response)] best first; ``missing`` says what the store lacks and how to add it."""

    model: str
    layer: str
    units: int
    labels: list[list[tuple[str, float | None]]]
    words: list[list[tuple[str, float]]]
    missing: list[str] = field(default_factory=list)

    def text(self, unit: int) -> str:
        parts = [", ".join(c for c, _ in self.labels[unit])]
        if self.words[unit]:
            parts.append("words: " + ", ".join(w for w, _ in self.words[unit]))
        return " | ".join(p for p in parts if p)


def words_reports(st: store.Store, model: str, layer: str) -> list[str]:
    """Names of the word-sensitivity reports (`atlas attack words`) of ``model``'s ``layer``."""
    out = []
    for name in st.reports("attacks"):
        attrs = st.report_attrs("attacks", name)
        if attrs.get("experiment") == "word sensitivity" and attrs.get("layer") == layer \
                and attrs.get("model", model) == model:
            out.append(name)
    return out


def unit_texts(st: store.Store, model: str, layer: str) -> UnitTexts:
    """Labels and top words of every unit of ``model``'s ``layer`` (`SearchError` if the store lacks the layer)."""
    if not st.has_layer(model, layer):
        have = ", ".join(ld.name for m in st.models() for ld in st.layers(m)) or "none"
        raise SearchError(f"store {st.path} has no layer {layer!r} of model {model}; pass --layer one of: {have}")
    ld = st.layer(model, layer)
    U = ld.units
    missing = []
    labels: list[list[tuple[str, float | None]]] = [[] for _ in range(U)]
    rows = ld.labels()
    if rows is None:
        missing.append(f"{layer} has no labels: run `atlas label {st.path} --layer {layer}`")
    else:
        labels = [[(lab["concept"], lab["score"]) for lab in r["labels"]] for r in rows]
    words: list[list[tuple[str, float]]] = [[] for _ in range(U)]
    reports = words_reports(st, model, layer)
    if not reports:
        missing.append(f"{layer} has no words report: run `atlas attack words --store {st.path} --layer {layer}`")
    else:
        arrays, _ = store.read_report(st, "attacks", reports[0])
        vocab = [str(w) for w in arrays["words"]]
        idx, val = arrays["top_index"], arrays["top_value"]  # [U, top]
        words = [[(vocab[int(j)], float(v)) for j, v in zip(idx[u], val[u]) if 0 <= j < len(vocab)]
                 for u in range(min(U, len(idx)))] + [[] for _ in range(U - min(U, len(idx)))]
    return UnitTexts(model, layer, U, labels, words, missing)


def build_index(texts: UnitTexts) -> dict[str, Any]:
    """The layer's compact inverted index (module doc) as plain lists and numbers."""
    post: dict[str, set[int]] = {}
    for u in range(texts.units):
        entries = [(c, min(r, MAX_RANK)) for r, (c, _) in enumerate(texts.labels[u])]
        entries += [(w, 8 + min(r, MAX_RANK)) for r, (w, _) in enumerate(texts.words[u])]
        for text, code in entries:
            for t in tokens(text):
                post.setdefault(t, set()).add(u * 16 + code)
    toks = sorted(post)
    return {"model": texts.model, "layer": texts.layer, "units": texts.units, "tokens": toks,
            "post": [sorted(post[t]) for t in toks], "text": [texts.text(u) for u in range(texts.units)]}


def id_match(query: str, model: str, layer: str, units: int) -> int | None:
    """The unit a query names: ``model/layer/unit``, ``layer/unit`` or a bare unit number; else None."""
    q = query.strip()
    for prefix in (f"{model}/{layer}/", f"{layer}/", ""):
        if q.startswith(prefix) and q[len(prefix):].isdigit():
            u = int(q[len(prefix):])
            return u if u < units else None
    return None


def query_index(index: dict[str, Any], query: str) -> np.ndarray:
    """[U] float64 match of every unit of one layer's index with ``query`` (the ranking rule of the module doc)."""
    U = int(index["units"])
    qt = tokens(query)
    score = np.zeros(U)
    for q in qt:
        best = np.zeros(U)
        toks = index["tokens"]
        i = bisect.bisect_left(toks, q)
        while i < len(toks) and toks[i].startswith(q):
            p = np.asarray(index["post"][i], np.int64)
            w = np.array([weight(c, toks[i] == q) for c in range(16)])[p & 15]
            np.maximum.at(best, p >> 4, w)
            i += 1
        score += best / len(qt)
    u = id_match(query, index["model"], index["layer"], U)
    if u is not None:
        score[u] = max(score[u], 1.0)
    return score


def check_query(query: str) -> str:
    q = query.strip()
    if not q:
        raise SearchError("the search query is empty; give a word (e.g. 'dog'), a label or a unit id "
                          "(model/layer/unit)")
    return q


__all__ = ["SearchError", "UnitTexts", "build_index", "check_query", "id_match", "query_index", "tokens",
           "unit_texts", "weight", "words_reports"]
