"""The site's search index: per layer one script, ``search/<model>/<layer>.js``, that adds the layer's compact
inverted index (`atlas.searchindex.build_index`: labels and top words of every unit) to the global
``ATLAS_SEARCH.shards``, and ``search/index.js``, the manifest the index page loads first.  Scripts, not JSON: a
page opened from file:// may not fetch files (Chromium blocks it), but it may add <script> tags, so the search box
(assets/search.js) loads the shards lazily, on the first keystroke.  Built from the store alone."""

from __future__ import annotations

import json
from typing import Any

from ..searchindex import build_index, unit_texts
from ..store import Store
from .writer import Writer

GLOBAL = "window.ATLAS_SEARCH = window.ATLAS_SEARCH || {shards: {}, manifest: null};\n"


def shard_script(index: dict[str, Any]) -> str:
    """The .js file of one layer's index (JSON is JavaScript; '</' is escaped so the text is inert anywhere)."""
    key = f"{index['model']}/{index['layer']}"
    data = json.dumps(index, separators=(",", ":"), ensure_ascii=True).replace("</", "<\\/")
    return f"{GLOBAL}window.ATLAS_SEARCH.shards[{json.dumps(key)}] = {data};\n"


def manifest_script(shards: list[dict[str, Any]], missing: list[str]) -> str:
    data = json.dumps({"shards": shards, "missing": missing}, separators=(",", ":"), ensure_ascii=True)
    return f"{GLOBAL}window.ATLAS_SEARCH.manifest = {data.replace('</', '<' + chr(92) + '/')};\n"


def write_search(w: Writer, models: list[tuple[Store, str]]) -> dict[str, Any]:
    """Write every layer's shard and the manifest; returns what the index page says about the search."""
    shards, missing, units = [], [], 0
    for st, model in models:
        for ld in st.layers(model):
            texts = unit_texts(st, model, ld.name)
            missing += texts.missing
            w.path("search", model, *f"{ld.name}.js".split("/")).write_text(  # an SAE's layer: a sub-folder
                shard_script(build_index(texts)), encoding="utf-8")
            shards.append({"key": f"{model}/{ld.name}", "src": f"search/{model}/{ld.name}.js", "units": ld.units})
            units += ld.units
    w.path("search", "index.js").write_text(manifest_script(shards, missing), encoding="utf-8")
    return {"layers": len(shards), "units": units, "missing": missing}
