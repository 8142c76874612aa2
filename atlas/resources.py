"""Where the files that ship with atlas are: site_templates/ and data/ (fonts, weights).

In a wheel they are installed inside the package (atlas/site_templates, atlas/shipped); in a checkout
or an editable install they are the folders at the top of the repository."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
_INSTALLED = {"site_templates": "site_templates", "data": "shipped"}


def resource_dir(name: str) -> Path:
    if name not in _INSTALLED:
        raise KeyError(f"unknown resource folder {name!r}; known: {', '.join(_INSTALLED)}")
    for candidate in (_HERE / _INSTALLED[name], _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"atlas's {name}/ folder is missing (looked in {_HERE / _INSTALLED[name]} and "
                            f"{_HERE.parent / name}); reinstall atlas")
