"""Canonical names, spelled in one place: a unit is ``model/layer/unit`` -- the model's name, the layer's
`named_modules()` path, the unit's index -- the same string in the store, the site's URLs, the CLI and the API.

A sparse autoencoder trained on a layer is a *virtual layer* named ``<layer>/sae<width>`` (``visual.layer4.0/sae16k``:
16,384 features; widths that are a multiple of 1,024 are written with ``k``), and its features are units like any
other: ``conceptclip/visual.layer4.0/sae16k/123``."""

from __future__ import annotations

import re

SAE_PART = re.compile(r"sae(\d+)(k?)")


def unit_id(model: str, layer: str, unit: int) -> str:
    """``model/layer/unit``, e.g. ``conceptclip/visual.layer4.0/469`` or ``conceptclip/visual.layer4.0/sae16k/12``."""
    return f"{model}/{layer}/{int(unit)}"


def parse_unit_id(text: str) -> tuple[str, str, int]:
    """``model/layer/unit`` -> (model, layer, unit); a KeyError that shows the form for anything else.  The layer
    may be an SAE's virtual layer (``model/visual.layer4.0/sae16k/12`` -> layer ``visual.layer4.0/sae16k``)."""
    parts = str(text).split("/")
    if len(parts) == 4 and SAE_PART.fullmatch(parts[2]):
        parts = [parts[0], f"{parts[1]}/{parts[2]}", parts[3]]
    if len(parts) != 3 or not all(parts[:2]) or not parts[2].isdigit():
        raise KeyError(f"unit ids look like 'model/layer/unit' (e.g. 'conceptclip/visual.layer4.0/469', or "
                       f"'conceptclip/visual.layer4.0/sae16k/12' for a feature of a sparse autoencoder), got {text!r}")
    return parts[0], parts[1], int(parts[2])


def sae_name(width: int) -> str:
    """The last part of an SAE's virtual layer: ``sae16k`` for 16,384 features, ``sae96`` for 96."""
    return f"sae{width // 1024}k" if width % 1024 == 0 else f"sae{width}"


def sae_layer(layer: str, width: int) -> str:
    """The virtual layer of an SAE with ``width`` features trained on ``layer``: ``visual.layer4.0/sae16k``."""
    return f"{layer}/{sae_name(width)}"


def split_sae_layer(layer: str) -> tuple[str, str] | None:
    """``visual.layer4.0/sae16k`` -> (``visual.layer4.0``, ``sae16k``); None for a real layer."""
    base, _, part = str(layer).rpartition("/")
    return (base, part) if base and "/" not in base and SAE_PART.fullmatch(part) else None


def sae_width(part: str) -> int:
    """``sae16k`` -> 16384, ``sae96`` -> 96."""
    m = SAE_PART.fullmatch(part)
    if not m:
        raise KeyError(f"an SAE's layer part looks like 'sae16k' or 'sae96', got {part!r}")
    return int(m.group(1)) * (1024 if m.group(2) else 1)
