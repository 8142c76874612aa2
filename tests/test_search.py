"""Search: the ranking on a store with known labels and words (exact scores), the site's index of the same store,
the text tower's directions against the pooling modules run on one-hot inputs, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from atlas.cli import main
from atlas.notebook import open_atlas
from atlas.search import embedding_directions, search, tower_layer
from atlas.searchindex import SearchError, build_index, query_index, unit_texts
from atlas.site.render import build_site
from atlas.store import Store
from search_fixtures import BARE, LABELLED, MODEL, make_searchable


@pytest.fixture(scope="module")
def searchable(small_store, tmp_path_factory):
    return make_searchable(small_store, tmp_path_factory.mktemp("search") / "s.h5")


def ranked(result):
    return [(h.id.rsplit("/", 1)[1] and h.unit, round(h.score, 6)) for h in result.hits]


def test_labels_rank_first_with_their_weights(searchable):
    r = search(searchable, "dog", layer=LABELLED, top=5)
    # label rank 0: 1; top word rank 0: 0.5; label rank 1: 0.5 (ties: lower unit first)
    assert ranked(r) == [(3, 1.0), (5, 0.5), (9, 0.5)]
    assert r.hits[0].id == f"{MODEL}/{LABELLED}/3" and r.hits[0].text == "dog, animal | words: zebra, quilt"
    assert r.hits[0].label_score == 2.0 and r.hits[0].tower is None
    assert ranked(search(searchable, "do", layer=LABELLED)) == [(3, 0.5), (5, 0.25), (9, 0.25)]  # prefix: halved
    assert ranked(search(searchable, "red car", layer=LABELLED)) == [(7, 1.0), (11, 0.5)]  # every word > some
    assert ranked(search(searchable, "Vehicle!", layer=LABELLED)) == [(7, 0.5)]


def test_ids_are_searchable_without_labels_and_the_notes_say_what_is_missing(searchable):
    for q in ("4", f"{BARE}/4", f"{MODEL}/{BARE}/4"):
        r = search(searchable, q, layer=BARE)
        assert ranked(r) == [(4, 1.0)], q
    r = search(searchable, "dog", layer=BARE)
    assert r.hits == []
    assert any("atlas label" in n and BARE in n for n in r.notes)
    assert any("atlas attack words" in n and BARE in n for n in r.notes)
    assert any("--model" in n for n in r.notes)
    every = search(searchable, "dog", top=2)  # both layers, the labelled one ranks
    assert [h.id for h in every.hits] == [f"{MODEL}/{LABELLED}/3", f"{MODEL}/{LABELLED}/5"]


def test_bad_input(searchable, tmp_path):
    for q in ("", "   "):
        with pytest.raises(SearchError, match="query is empty"):
            search(searchable, q)
    with pytest.raises(SearchError, match=f"no layer 'visual.nope'.*{LABELLED}"):
        search(searchable, "dog", layer="visual.nope")
    with pytest.raises(SearchError, match="--top"):
        search(searchable, "dog", top=0)
    res = CliRunner().invoke(main, ["search", str(searchable), "dog", "--layer", "visual.nope"])
    assert res.exit_code == 1 and "no layer 'visual.nope'" in res.output
    res = CliRunner().invoke(main, ["search", str(searchable), " "])
    assert res.exit_code == 1 and "query is empty" in res.output
    res = CliRunner().invoke(main, ["search", str(tmp_path / "missing.h5"), "dog"])
    assert res.exit_code == 2 and "does not exist" in res.output


def test_cli_and_notebook_print_the_same_ranking(searchable):
    res = CliRunner().invoke(main, ["search", str(searchable), "dog", "--layer", LABELLED, "--top", "2"])
    assert res.exit_code == 0, res.output
    lines = [x for x in res.output.splitlines() if not x.startswith("note:")]
    assert lines[0].startswith(f"{MODEL}/{LABELLED}/3  1.000") and "dog, animal" in lines[0]
    assert lines[1].startswith(f"{MODEL}/{LABELLED}/5  0.500")
    with open_atlas(searchable) as a:
        assert [h.unit for h in a.search("dog", layer=LABELLED).hits] == [3, 5, 9]


def test_text_tower_directions_are_the_pooling_on_one_hot_inputs(tiny_model, searchable):
    assert tower_layer(tiny_model) == LABELLED
    assert embedding_directions(tiny_model, BARE) is None
    M = embedding_directions(tiny_model, LABELLED)  # [U, D]
    pool = tiny_model.clip.visual.attnpool
    with torch.no_grad():
        eye = torch.eye(M.shape[0])
        ref = pool.c_proj(pool.v_proj(eye)) - pool.c_proj(pool.v_proj(torch.zeros(1, M.shape[0])))  # [U, D]
    ref = (ref / ref.norm(dim=1, keepdim=True)).numpy()
    assert np.abs(M - ref).max() < 1e-5
    r = search(searchable, "dog", top=4, model=tiny_model)
    assert r.tower_layers == [LABELLED]
    assert all(h.layer == LABELLED and abs(h.score - h.label - h.tower) < 1e-9 for h in r.hits)
    assert [h.score for h in r.hits] == sorted((h.score for h in r.hits), reverse=True)
    bare = search(searchable, "dog", layer=BARE, model=tiny_model)
    assert bare.hits == [] and any("joint embedding space" in n and LABELLED in n for n in bare.notes)


def test_site_index_holds_the_tokens_and_postings(searchable, tmp_path):
    with Store(searchable) as st:
        index = build_index(unit_texts(st, MODEL, LABELLED))
    dog = index["post"][index["tokens"].index("dog")]
    assert dog == [3 * 16 + 0, 5 * 16 + 8, 9 * 16 + 1]  # label rank 0, top word rank 0, label rank 1
    assert {"dog", "animal", "red", "car", "vehicle", "zebra", "quilt", "noise0"} <= set(index["tokens"])
    assert index["tokens"] == sorted(index["tokens"])
    build_site([searchable], tmp_path / "site")
    text = (tmp_path / "site" / "search" / MODEL / f"{LABELLED}.js").read_text()
    shard = json.loads(text.split(f'["{MODEL}/{LABELLED}"] = ', 1)[1].rstrip().rstrip(";"))
    assert shard == index
    manifest = (tmp_path / "site" / "search" / "index.js").read_text()
    assert f"search/{MODEL}/{BARE}.js" in manifest and "atlas label" in manifest
    assert np.allclose(query_index(shard, "red car")[[7, 11]], [1.0, 0.5])


def test_search_without_a_model_imports_no_torch():
    """The site's index and the label ranking read stores alone (the notebook's `Atlas.search` too)."""
    import subprocess
    import sys

    code = ("import sys, atlas.search, atlas.searchindex, atlas.site.search, atlas.notebook; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
