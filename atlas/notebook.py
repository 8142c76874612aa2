"""`atlas.open(path)`: the store as Python objects for notebooks, with rich HTML reprs.  No torch."""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from .config import ExportConfig
from .export import ExportResult, export_open
from .names import parse_unit_id
from .search import SearchResult
from .search import search as search_units
from .site.images import data_uri, overlay, png_bytes
from .store import LayerData, Store, StoreError


@dataclass(frozen=True)
class Example:
    rank: int
    index: int  # image index in the store
    value: float  # the neuron's score on this image
    caption: str
    label: str
    source_id: str
    argmax: tuple[int, int]  # (row, col) of the peak in the layer's grid
    map: np.ndarray  # [mh, mw] pooled spatial activation map
    thumbnail: np.ndarray | None  # [T, T, 3] uint8

    @property
    def image(self) -> Image.Image | None:
        return None if self.thumbnail is None else Image.fromarray(self.thumbnail)

    def overlay(self) -> Image.Image | None:
        """The thumbnail with this example's heatmap blended over it."""
        if self.thumbnail is None:
            return None
        return Image.fromarray(overlay(self.thumbnail, self.map, float(np.nanmax(self.map)) or 1.0))


class Neuron:
    def __init__(self, atlas: "Atlas", layer: LayerData, unit: int):
        if not 0 <= unit < layer.units:
            raise IndexError(f"layer {layer.name} has {layer.units} units; no unit {unit}")
        self._atlas, self._layer, self.unit = atlas, layer, unit
        self.id = layer.neuron_id(unit)

    def __repr__(self) -> str:
        return f"Neuron({self.id!r})"

    @cached_property
    def stats(self) -> dict[str, float]:
        g = self._layer.group["stats"]
        return {k: float(g[k][self.unit]) for k in ("mean", "std", "min", "max", "count", "positive", "nonfinite")}

    @cached_property
    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts [bins], edges [bins + 1])"""
        counts = self._layer.group["stats/hist"][self.unit]
        r = float(self._layer.group["stats/range"][self.unit])
        return counts, np.linspace(-r, r, len(counts) + 1)

    @cached_property
    def examples(self) -> list[Example]:
        g, u = self._layer.group, self.unit
        st = self._atlas.store
        gh, gw = self._layer.grid
        out = []
        for r, (i, v, a, m) in enumerate(zip(g["topk/index"][u], g["topk/values"][u], g["topk/argmax"][u],
                                             self._layer.example_maps(u, u + 1)[0])):
            if i < 0:
                continue
            out.append(Example(r + 1, int(i), float(v), self._atlas.captions[i], self._atlas.labels[i],
                               self._atlas.source_ids[i], (int(a) // gw, int(a) % gw),
                               m.astype(np.float32), st.thumbnail(int(i))))
        return out

    @property
    def featurevis(self) -> Image.Image | None:
        if not self._layer.featurevis_done()[self.unit]:
            return None
        return Image.fromarray(self._layer.group["featurevis/images"][self.unit])

    def _repr_html_(self) -> str:
        s = self.stats
        parts = [f"<div><b>{html.escape(self.id)}</b> mean {s['mean']:.4g} · std {s['std']:.4g} · "
                 f"max {s['max']:.4g}</div><div style='display:flex;gap:4px;flex-wrap:wrap'>"]
        fv = self.featurevis
        if fv is not None:
            parts.append(f"<img src='{data_uri(png_bytes(np.asarray(fv)))}' width=128 title='feature vis'>")
        for e in self.examples[:8]:
            ov = e.overlay()
            if ov is not None:
                parts.append(f"<img src='{data_uri(png_bytes(np.asarray(ov)))}' width=96 "
                             f"title='{html.escape(f'#{e.rank} {e.value:.3g} {e.caption}', quote=True)}'>")
        return "".join(parts) + "</div>"


class Atlas:
    """An opened store.  ``atlas["model/layer/unit"]`` or ``atlas.neuron(layer, unit)``."""

    def __init__(self, path: str | Path):
        self.store = Store(path)
        self.meta = self.store.meta
        models = self.store.models()
        if not models:
            raise StoreError(f"store {path} holds no mined layers yet; run `atlas mine` on it")
        self.model = models[0]

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "Atlas":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def captions(self) -> np.ndarray:
        return self.store.image_column("caption")

    @cached_property
    def labels(self) -> np.ndarray:
        return self.store.image_column("label")

    @cached_property
    def source_ids(self) -> np.ndarray:
        return self.store.image_column("source_id")

    @property
    def layers(self) -> list[str]:
        return [ld.name for ld in self.store.layers(self.model)]

    def neuron(self, layer: str, unit: int) -> Neuron:
        return Neuron(self, self.store.layer(self.model, layer), int(unit))

    def __getitem__(self, neuron_id: str) -> Neuron:
        try:
            model, layer, unit = parse_unit_id(neuron_id)
        except KeyError:
            raise KeyError(f"neuron ids look like 'model/layer/unit' (e.g. '{self.model}/{self.layers[-1]}/0'), "
                           f"got {neuron_id!r}") from None
        if model != self.model:
            raise KeyError(f"this store holds model {self.model!r}, not {model!r}")
        return self.neuron(layer, int(unit))

    def export(self, out: str | Path, config: ExportConfig = ExportConfig(), *,
               overwrite: bool = False) -> ExportResult:
        """Write the store as JSON lines in Neuronpedia's layout into ``out`` (`atlas.export.export_store`)."""
        return export_open(self.store, out, config, overwrite=overwrite)

    def unit_labels(self, unit_or_layer: str) -> dict | list[dict] | None:
        """Automatic labels (`atlas label`) as plain data: of one unit (``model/layer/unit``) or of every unit of a
        layer (its name); None when the layer was never labelled."""
        if unit_or_layer.count("/") == 2:
            n = self[unit_or_layer]
            return n._layer.labels(n.unit)
        return self.store.layer(self.model, unit_or_layer).labels()

    def search(self, query: str, layer: str | None = None, top: int = 10, model: object = None) -> SearchResult:
        """Units ranked by how well ``query`` matches their labels, top words or id, plus (with a loaded ``model``)
        the text tower's similarity where the layer lives in the embedding space (`atlas.search.search`)."""
        return search_units(self.store.path, query, layer, top, model)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Atlas({str(self.store.path)!r}, model={self.model!r}, layers={self.layers})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(ld.name)}</td><td>{ld.kind}</td><td>{ld.units}</td></tr>"
                       for ld in self.store.layers(self.model))
        return (f"<div><b>{html.escape(self.model)}</b> · {self.store.n_images} images · "
                f"<code>{html.escape(str(self.meta.get('model_spec')))}</code></div>"
                f"<table><tr><th>layer</th><th>kind</th><th>units</th></tr>{rows}</table>")


def open_atlas(path: str | Path) -> Atlas:
    """Open a store for reading: ``a = atlas.open('atlas-out/atlas.h5'); a['tiny/visual.layer4.0/3']``."""
    return Atlas(path)
