"""Canonical names, spelled in one place: a unit is ``model/layer/unit`` -- the model's name, the layer's
`named_modules()` path, the unit's index -- the same string in the store, the site's URLs, the CLI and the API."""

from __future__ import annotations


def unit_id(model: str, layer: str, unit: int) -> str:
    """``model/layer/unit``, e.g. ``conceptclip/visual.layer4.0/469``."""
    return f"{model}/{layer}/{int(unit)}"


def parse_unit_id(text: str) -> tuple[str, str, int]:
    """``model/layer/unit`` -> (model, layer, unit); a KeyError that shows the form for anything else."""
    parts = str(text).split("/")
    if len(parts) != 3 or not all(parts[:2]) or not parts[2].isdigit():
        raise KeyError(f"unit ids look like 'model/layer/unit' (e.g. 'conceptclip/visual.layer4.0/469'), got {text!r}")
    return parts[0], parts[1], int(parts[2])
