"""Feature visualizations of every kind and the facets they use: the one place that reads and writes them
(docs/store.md, "featurevis").

A layer's visualizations of one kind are one group under ``/neurons/<model>/<layer>``:

    featurevis/                       channel (the group every store since schema 2 has; its kind is implied)
    featurevis-neuron/                neuron
    featurevis-diversity/             diversity: images [U, n, S, S, 3]
    featurevis-faceted/<facet>/       faceted, one group per facet
    featurevis-direction/<name>/      direction, one group per direction set: also vectors [U, C]

each with images [U, S, S, 3] (diversity [U, n, S, S, 3]) uint8, objective [U] float32, done [U] bool and the
attributes ``config`` (FeatureVisConfig JSON) and, except in old channel groups, ``kind``, ``name``,
``kind_config`` (KindConfig JSON) and ``source`` (faceted: the facet's fingerprint).  Facets live in ``/facets/<model>/<name>``: weights [C] float32 on the layer's
raw pooled activations, attributes ``layer``, ``bias``, ``config`` (FacetConfig JSON) and the fit's figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .files import transaction
from .schema import layer_path
from .write import put

KINDS = ("channel", "neuron", "direction", "diversity", "faceted")  # the order the site shows them in
NAMED = ("faceted", "direction")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def group_name(kind: str, name: str = "") -> str:
    """The group of a kind's visualizations inside a layer's group (module docstring)."""
    if kind not in KINDS:
        raise StoreError(f"unknown feature-visualization kind {kind!r}; one of {', '.join(KINDS)}")
    if (kind in NAMED) != bool(name) or (name and not _NAME.fullmatch(name)):
        raise StoreError(f"kind {kind} {'needs a name' if kind in NAMED else 'takes no name'} of letters, digits, "
                         f"'_', '.', '-' (got {name!r})")
    if kind == "channel":
        return "featurevis"
    return f"featurevis-{kind}" + (f"/{name}" if name else "")


@dataclass
class Visualizations:
    """One kind's visualizations of a layer (read by `read_visualizations`)."""

    kind: str
    name: str
    config: str  # FeatureVisConfig JSON
    kind_config: str  # KindConfig JSON ("" in channel groups written before kinds existed)
    images: np.ndarray  # [U, S, S, 3] uint8 (diversity: [U, n, S, S, 3])
    objective: np.ndarray  # [U] float32
    done: np.ndarray  # [U] bool
    vectors: np.ndarray | None = None  # direction: [U, C] float32 (NaN rows: none)
    source: str = ""  # faceted: the facet's fingerprint (`Facet.fingerprint`); a retrained facet renders again

    @property
    def key(self) -> str:
        """``kind`` or ``kind:name``: how the site and the CLI name it."""
        return f"{self.kind}:{self.name}" if self.name else self.kind


def list_visualizations(layer: h5py.Group) -> list[tuple[str, str]]:
    """(kind, name) of every visualization group of a layer, in `KINDS` order, names sorted."""
    out = []
    for kind in KINDS:
        g = group_name(kind, "x" if kind in NAMED else "").split("/")[0]
        if g not in layer:
            continue
        if kind in NAMED:
            out += [(kind, n) for n in sorted(layer[g])]
        elif "done" in layer[g]:
            out.append((kind, ""))
    return out


def read_visualizations(layer: h5py.Group, kind: str = "channel", name: str = "",
                        images: bool = True) -> Visualizations | None:
    """A layer's visualizations of one kind, or None where it has none.  ``images=False`` leaves the images out
    (an empty array): for listing what is done."""
    key = group_name(kind, name)
    if key not in layer:
        return None
    g = layer[key]
    return Visualizations(kind, name, str(g.attrs["config"]), str(g.attrs.get("kind_config", "")),
                          g["images"][()] if images else np.zeros((0,), np.uint8), g["objective"][()],
                          g["done"][()].astype(bool), g["vectors"][()] if "vectors" in g else None,
                          str(g.attrs.get("source", "")))


def write_visualizations(path: str | os.PathLike, model: str, layer: str, vis: Visualizations) -> None:
    """Replace one kind's visualizations of a layer in one transaction (the caller holds the store's `lock`)."""
    key = group_name(vis.kind, vis.name)
    with transaction(path) as f:
        g = f[layer_path(model, layer)]
        if key in g:
            del g[key]
        fv = g.create_group(key)
        fv.attrs["config"] = vis.config
        if vis.kind != "channel" or vis.kind_config:
            fv.attrs.update({"kind": vis.kind, "name": vis.name, "kind_config": vis.kind_config, "source": vis.source})
        put(fv, "images", vis.images)
        put(fv, "objective", vis.objective)
        put(fv, "done", vis.done)
        if vis.vectors is not None:
            put(fv, "vectors", vis.vectors.astype(np.float32))


@dataclass
class Facet:
    """A facet probe (module docstring): logit = pooled . weights + bias on ``layer``'s raw pooled activations."""

    name: str
    layer: str
    weights: np.ndarray  # [C] float32
    bias: float
    config: str  # FacetConfig JSON
    figures: dict[str, Any]  # train/val accuracy, positives, negatives, ...

    @property
    def fingerprint(self) -> str:
        """sha256 of the layer, weights and bias: what a faceted visualization depends on."""
        h = hashlib.sha256(self.layer.encode() + b"\0" + np.asarray(self.weights, np.float32).tobytes())
        h.update(np.float64(self.bias).tobytes())
        return h.hexdigest()


def facet_path(model: str, name: str) -> str:
    if not _NAME.fullmatch(name) or "/" in model or not model:
        raise StoreError(f"facet name {name!r}: use letters, digits, '_', '.' and '-'")
    return f"facets/{model}/{name}"


def write_facet(path: str | os.PathLike, model: str, facet: Facet) -> None:
    """Replace the facet ``/facets/<model>/<name>`` in one transaction (the caller holds the store's `lock`)."""
    key = facet_path(model, facet.name)
    with transaction(path) as f:
        if layer_path(model, facet.layer) not in f:
            raise StoreError(f"store {path} has no layer {model}/{facet.layer} to train a facet on")
        if key in f:
            del f[key]
        g = f.create_group(key)
        put(g, "weights", facet.weights.astype(np.float32))
        g.attrs.update({"layer": facet.layer, "bias": float(facet.bias), "config": facet.config,
                        "figures": json.dumps(facet.figures, sort_keys=True)})


def read_facets(f: h5py.File, model: str) -> dict[str, Facet]:
    """Every facet of ``model`` in the store, by name."""
    if f"facets/{model}" not in f:
        return {}
    out = {}
    for name, g in f[f"facets/{model}"].items():
        out[name] = Facet(name, str(g.attrs["layer"]), g["weights"][()], float(g.attrs["bias"]),
                          str(g.attrs["config"]), json.loads(str(g.attrs["figures"])))
    return out


__all__ = ["Facet", "KINDS", "Visualizations", "facet_path", "group_name", "list_visualizations", "read_facets",
           "read_visualizations", "write_facet", "write_visualizations"]
