"""Decoding started before the model is built (`atlas.mining.early`): the geometry guessed from a spec is the model's,
the early batches give the same store as decoding after the model, and batches that do not fit the pass are
dropped, not used."""

from __future__ import annotations

import pytest

from atlas import store
from atlas.config import MineConfig
from atlas.data import FolderSource, open_source
from atlas.mining.early import input_geometry, start_decoding
from atlas.mining.loop import mine
from atlas.models import load_model

from test_mine_loader import CFG, OneByOne, folder  # noqa: F401 (fixture)

SPEC = "atlas:tiny@random:0"


@pytest.mark.parametrize("spec", ["atlas:tiny@random:0", "default", "open_clip:RN50@random:0",
                                  "open_clip:ViT-B-32@random:0", "open_clip:RN50x4@random:0"])
def test_the_guessed_geometry_is_the_models(spec):
    m = load_model(spec)
    assert input_geometry(spec) == (m.image_size, m.resize_mode, m.crop_rule)


def test_no_guess_where_the_geometry_needs_the_weights():
    assert input_geometry("openai:RN50@/nowhere.pt") is None
    assert input_geometry("hf:/nowhere") is None
    assert input_geometry("open_clip:NoSuchArch@random:0") is None
    assert input_geometry("not a spec") is None


def _digest(path) -> str:
    return store.contents_digest(path, skip=("date",))


def test_early_batches_give_the_same_store(tiny_model, folder, tmp_path):  # noqa: F811
    ref = tmp_path / "ref.h5"
    mine(tiny_model, FolderSource(folder), ref, CFG, num_workers=2)
    path, lines = tmp_path / "early.h5", []
    early = start_decoding(SPEC, FolderSource(folder), path, CFG, 2, "cpu")
    assert early is not None and early.plan.size == tiny_model.image_size and early.plan.thumbs == CFG.thumb_size
    r = mine(tiny_model, FolderSource(folder), path, CFG, num_workers=2, early=early, log=lines.append)
    assert (r.images, r.bad) == (14, 3)
    assert not any("does not fit" in line for line in lines), lines
    assert _digest(path) == _digest(ref)


def test_early_batches_that_do_not_fit_are_dropped(tiny_model, folder, tmp_path):  # noqa: F811
    ref = tmp_path / "ref.h5"
    mine(tiny_model, FolderSource(folder), ref, CFG, num_workers=2)
    path, lines = tmp_path / "early.h5", []
    early = start_decoding(SPEC, FolderSource(folder), path, MineConfig(**{**CFG.__dict__, "batch_size": 8}), 2,
                           "cpu")
    r = mine(tiny_model, FolderSource(folder), path, CFG, num_workers=2, early=early, log=lines.append)
    assert r.images == 14 and any("does not fit this pass" in line for line in lines), lines
    assert early.loader._started is None  # its processes were stopped
    assert _digest(path) == _digest(ref)


def test_no_early_start_where_it_cannot_help(folder, tmp_path):  # noqa: F811
    path = tmp_path / "s.h5"
    assert start_decoding(SPEC, OneByOne(folder), path, CFG, 2, "cpu") is None  # not files
    assert start_decoding(SPEC, FolderSource(folder), path, CFG, 0, "cpu") is None  # decoding in this process
    assert start_decoding("hf:/nowhere", FolderSource(folder), path, CFG, 2, "cpu") is None  # geometry unknown
    (store.work_dir(path) / "mine-0123").mkdir(parents=True)  # a checkpointed pass resumes where mine says
    assert start_decoding(SPEC, FolderSource(folder), path, CFG, 2, "cpu") is None
    assert start_decoding(SPEC, open_source("synthetic:8"), tmp_path / "t.h5", CFG, 2, "cpu") is None
