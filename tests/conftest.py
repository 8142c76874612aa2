"""Shared fixtures: a random tiny model and a small mined store (built once per session)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

from atlas.config import FeatureVisConfig, MineConfig  # noqa: E402
from atlas.data import open_source  # noqa: E402
from atlas.featurevis import featurevis  # noqa: E402
from atlas.mining import mine  # noqa: E402
from atlas.models import load_model  # noqa: E402

SMALL_LAYERS = ("visual.layer3.0", "visual.layer4.0")


@pytest.fixture(scope="session")
def tiny_model():
    """atlas:tiny with seeded random weights (the default model of the skeleton)."""
    return load_model("atlas:tiny@random:0")


@pytest.fixture(scope="session")
def shipped():
    """The shipped Concept World CLIP, the default model (read only: tests must not change it)."""
    return load_model("default")


@pytest.fixture(scope="session")
def small_store(tiny_model, tmp_path_factory):
    """200 synthetic images mined on two layers; feature visualizations of the first 8 units of the last."""
    path = tmp_path_factory.mktemp("store") / "small.h5"
    mine(tiny_model, open_source("synthetic:200"), path, MineConfig(layers=SMALL_LAYERS, top_k=8, batch_size=32))
    featurevis(tiny_model, path, SMALL_LAYERS[-1], units=range(8), config=FeatureVisConfig(steps=4, batch=8))
    return path


# tests/_skips.py: a skip not listed in tests/SKIPS.md fails the run; pytester: the in-process test of that check
pytest_plugins = ["_skips", "pytester"]
