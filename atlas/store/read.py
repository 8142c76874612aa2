"""Reading a store: `Store` (the open file: models, layers, images, reports, thumbnails), `LayerData` (one layer
group) and `read_report`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from ..names import unit_id
from .featurevis import Facet, Visualizations, list_visualizations, read_facets, read_visualizations
from .schema import check_schema, is_text, layer_groups, layer_path


def read_report(st: "Store", kind: str, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, attrs) of ``/<kind>/<name>``; text datasets come back as arrays of str."""
    key = f"{kind}/{name}"
    if key not in st.file:
        have = list(st.file[kind]) if kind in st.file else []
        raise StoreError(f"store {st.path} has no {kind[:-1]} report {name!r}"
                         + (f"; it has {', '.join(have)}" if have else ""))
    g = st.file[key]
    arrays: dict[str, np.ndarray] = {}

    def visit(n: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            arrays[n] = obj.asstr()[()] if is_text(obj) else obj[()]

    g.visititems(visit)
    return arrays, _decoded_attrs(g)


def _decoded_attrs(g: h5py.Group) -> dict[str, Any]:
    """A group's attributes as Python values, the JSON ones (lists, dicts) decoded."""
    attrs = {}
    for k, v in g.attrs.items():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        attrs[k] = v
    return attrs


@dataclass(frozen=True)
class LayerData:
    """Read access to one layer group (arrays are loaded lazily from the open file)."""

    model: str
    name: str
    group: h5py.Group

    @property
    def units(self) -> int:
        return int(self.group.attrs["units"])

    @property
    def kind(self) -> str:
        return str(self.group.attrs["kind"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.group.attrs["grid"])  # type: ignore[return-value]

    @property
    def top_k(self) -> int:
        """Top examples kept per unit (the k of ``topk/*``)."""
        return int(self.group["topk/values"].shape[1])

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.group.attrs["config"])

    def neuron_id(self, unit: int) -> str:
        return unit_id(self.model, self.name, unit)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.group[key][()]

    def has(self, key: str) -> bool:
        return key in self.group

    def rows(self, key: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (units) of dataset ``key``, e.g. ``topk/values`` -> [stop - start, k]: one slice read
        from the file, not the whole layer."""
        return self.group[key][start:stop]

    def example_maps(self, start: int, stop: int) -> list[np.ndarray]:
        """Per unit of ``start:stop``: its top examples' maps [k, mh, mw] float32: those recomputed by `atlas maps`
        (``topk/replayed/``) where a unit has them, else the maps mining kept (``topk/maps``)."""
        out = list(self.rows("topk/maps", start, stop).astype(np.float32))
        if "topk/replayed/done" in self.group:
            for j in np.nonzero(self.rows("topk/replayed/done", start, stop))[0]:
                out[j] = self.rows("topk/replayed/maps", start + int(j), start + int(j) + 1)[0].astype(np.float32)
        return out

    def replayed(self) -> np.ndarray:
        """[U] bool: units whose top examples' maps were recomputed at full detail (`atlas maps`)."""
        g = self.group
        return g["topk/replayed/done"][()] if "topk/replayed/done" in g else np.zeros(self.units, bool)

    def stat_names(self) -> list[str]:
        """The per-unit statistics the layer holds: the one-value-per-unit datasets of ``stats/`` (count, mean, std,
        min, max, positive, nonfinite, ...), sorted; ``stats/hist`` ([U, B]) is not among them."""
        g = self.group["stats"] if "stats" in self.group else {}
        return sorted(n for n in g if isinstance(g[n], h5py.Dataset) and g[n].ndim == 1)

    def check(self, kind: str = "verify") -> dict[str, Any] | None:
        """The attributes of the layer's last ``kind`` check (`write_check`), JSON decoded; None if never run."""
        return _decoded_attrs(self.group[kind]) if kind in self.group else None

    def labels(self, unit: int | None = None) -> list[dict[str, Any]] | dict[str, Any] | None:
        """The layer's automatic labels (`atlas label`, docs/store.md) as plain Python data: per unit a dict with
        ``id``, ``unit``, ``labels`` (best first: ``concept``, ``score``, ``match``, ``word``, ``auprc``; NaN
        floats become None), the top label's check ``auprc``, ``ci`` ([low, high]) and ``base_rate``, and
        ``nearest``: the vocabulary entries closest to the unit's text-tower direction, best first (``word``,
        ``cos``; ``[]`` for a layer without such directions).  One unit's dict with ``unit``, all units' list
        without; None when the layer was never labelled."""
        if "labels" not in self.group:
            return None
        if unit is None:
            return self.labels_rows(0, self.units)
        if not 0 <= int(unit) < self.units:
            raise IndexError(f"layer {self.name} has {self.units} units; no unit {unit}")
        out = self.labels_rows(int(unit), int(unit) + 1)
        assert out is not None
        return out[0]

    def labels_rows(self, start: int, stop: int) -> list[dict[str, Any]] | None:
        """`labels` of units ``start:stop`` (one list entry per unit, as `labels` gives them), each dataset of
        ``labels/`` read as one slice of rows, not the whole layer; None when the layer was never labelled."""
        if "labels" not in self.group:
            return None
        g = self.group["labels"]
        start, stop = max(0, int(start)), min(int(stop), self.units)
        rows = slice(start, stop)
        cols = {k: g[k][rows] for k in ("score", "match", "word", "auprc")}
        concept = g["concept"].asstr()[rows] if is_text(g["concept"]) else g["concept"][rows]
        check = {k: g[k][rows] for k in ("check_auprc", "check_ci", "check_base_rate")}
        num = lambda x: None if not np.isfinite(x) else float(x)
        near_words = near_cos = None
        if "nearest_words" in g:
            near_words, near_cos = g["nearest_words"].asstr()[rows], g["nearest_cos"][rows]  # [n, k] each
        out = []
        for i, u in enumerate(range(start, stop)):
            labels = [{"concept": str(concept[i][j]), "score": num(cols["score"][i][j]),
                       "match": num(cols["match"][i][j]), "word": num(cols["word"][i][j]),
                       "auprc": num(cols["auprc"][i][j])} for j in range(concept.shape[1]) if concept[i][j]]
            out.append({"id": self.neuron_id(u), "unit": u, "labels": labels,
                        "auprc": num(check["check_auprc"][i]), "ci": [num(x) for x in check["check_ci"][i]],
                        "base_rate": num(check["check_base_rate"][i]),
                        "nearest": [] if near_words is None else
                        [{"word": str(wd), "cos": num(c)} for wd, c in zip(near_words[i], near_cos[i])]})
        return out

    def featurevis(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(config JSON, images [U, S, S, 3], objective [U], done [U]) of the layer's feature visualizations, or
        None."""
        if "featurevis" not in self.group:
            return None
        fv = self.group["featurevis"]
        return str(fv.attrs["config"]), fv["images"][()], fv["objective"][()], fv["done"][()]

    def visualizations(self, kind: str = "channel", name: str = "", images: bool = True) -> Visualizations | None:
        """The layer's visualizations of one kind (``name``: the facet or direction set), or None."""
        return read_visualizations(self.group, kind, name, images)

    def visualization_kinds(self) -> list[tuple[str, str]]:
        """(kind, name) of every kind of visualization the layer holds, channel first."""
        return list_visualizations(self.group)

    def featurevis_done(self) -> np.ndarray:
        if "featurevis/done" not in self.group:
            return np.zeros(self.units, bool)
        return self.group["featurevis/done"][()]


class Store:
    """A read-only view of a store file.  Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"store {self.path} does not exist; run `atlas mine` or `atlas build` first")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path} is not a readable HDF5 store ({e})") from e
        check_schema(self.file, self.path)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}

    def reports(self, kind: str) -> list[str]:
        return sorted(self.file[kind]) if kind in self.file else []

    def report_attrs(self, kind: str, name: str) -> dict[str, Any]:
        """The attributes of report ``/<kind>/<name>`` (JSON ones decoded), without reading its arrays."""
        return _decoded_attrs(self.file[f"{kind}/{name}"])

    def models(self) -> list[str]:
        return list(self.file["neurons"]) if "neurons" in self.file else []

    def layers(self, model: str) -> list[LayerData]:
        return [LayerData(model, n, g) for n, g in layer_groups(self.file[f"neurons/{model}"])]

    def has_layer(self, model: str, layer: str) -> bool:
        key = layer_path(model, layer)
        return key in self.file and "kind" in self.file[key].attrs

    def layer(self, model: str, layer: str) -> LayerData:
        key = f"neurons/{model}/{layer}"
        if key not in self.file or "kind" not in self.file[key].attrs:
            known = [f"{m}/{ld.name}" for m in self.models() for ld in self.layers(m)]
            raise StoreError(f"store {self.path} has no layer {model}/{layer}; it has: {', '.join(known)}")
        return LayerData(model, layer, self.file[key])

    def facets(self, model: str) -> dict[str, Facet]:
        """The facets trained for ``model`` (`atlas facet train`), by name."""
        return read_facets(self.file, model)

    # images
    @property
    def n_images(self) -> int:
        return int(self.file["images/source_id"].shape[0]) if "images/source_id" in self.file else 0

    def image_column(self, name: str) -> np.ndarray:
        col = self.file[f"images/{name}"]
        return col.asstr()[()] if is_text(col) else col[()]

    def thumb_rows(self) -> np.ndarray:
        """[N] int64: each image's row in /images/thumbs, -1 for none (all -1 in a store without thumbnails)."""
        return self.file["images/thumb_row"][()] if "images/thumb_row" in self.file else np.zeros(0, np.int64)

    def thumbs(self) -> h5py.Dataset:
        """/images/thumbs [M, T, T, 3] uint8, read lazily (index it)."""
        return self.file["images/thumbs"]

    def thumbnail(self, index: int) -> np.ndarray | None:
        """[T, T, 3] uint8 crop of image ``index`` as the model saw it, or None if not stored."""
        row = int(self.file["images/thumb_row"][index])
        return None if row < 0 else self.file["images/thumbs"][row]

    def bad_images(self) -> list[tuple[int, str, str]]:
        """(index, source id, reason) of every image that was skipped."""
        status = self.file["images/status"][()]
        idx = np.nonzero(status)[0]
        ids = self.file["images/source_id"].asstr()
        reasons = self.file["images/reason"].asstr()
        return [(int(i), ids[i], reasons[i]) for i in idx]
