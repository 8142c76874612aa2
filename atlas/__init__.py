"""atlas: a neuron atlas and interpretability toolkit for CLIP-like models.

The public verbs::

    atlas.load_model(spec)            # a CLIP from the registry (atlas.models)
    atlas.build(...)                  # mine -> feature visualization -> site
    atlas.open(path)                  # read a store in a notebook: layers, neurons, examples

Importing atlas does not import torch; the verbs that need it import it when called.
"""

from __future__ import annotations

from .version import __version__

__all__ = ["__version__", "build", "load_model", "open"]


def __getattr__(name: str):
    if name == "load_model":
        from .models import load_model

        return load_model
    if name == "build":
        from .build import build

        return build
    if name == "open":
        from .notebook import open_atlas

        return open_atlas
    raise AttributeError(f"module 'atlas' has no attribute {name!r}")
