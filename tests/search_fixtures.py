"""A store with known labels and top words for the search tests: a copy of the small store (tests/conftest.py) whose
last layer gets labels written through the store API and a words report; its first layer keeps neither."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from atlas import store

MODEL, LABELLED, BARE = "tiny", "visual.layer4.0", "visual.layer3.0"
# unit -> its labels, best first (every other unit gets "noise<u>", "filler")
LABELS = {3: ["dog", "animal"], 9: ["cat", "dog"], 7: ["red car", "vehicle"], 11: ["red", "blue"]}
# unit -> its top rendered words, best first (every other unit: "zebra", "quilt")
WORDS = {5: ["dog", "bird"]}


def make_searchable(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    with store.Store(dst) as st:
        units = st.layer(MODEL, LABELLED).units
    top = 2
    concept = [LABELS.get(u, [f"noise{u}", "filler"]) for u in range(units)]
    score = np.tile(np.array([2.0, 1.0], np.float32), (units, 1))  # [U, top]
    nan = np.full((units, top), np.nan, np.float32)
    store.write_check(dst, MODEL, LABELLED, "labels", {
        "concept": concept, "score": score, "match": score / 10, "word": nan, "auprc": nan,
        "check_auprc": nan[:, 0], "check_ci": nan, "check_base_rate": nan[:, 0]}, {"top": top})
    vocab = ["zebra", "quilt", "dog", "bird"]
    index = np.array([[vocab.index(w) for w in WORDS.get(u, ["zebra", "quilt"])] for u in range(units)], np.int32)
    store.write_report(dst, "attacks", "words", {
        "words": vocab, "top_index": index, "top_value": np.tile(np.array([3.0, 2.0], np.float32), (units, 1)),
        "responses": np.zeros((len(vocab), units), np.float32)},
        {"experiment": "word sensitivity", "layer": LABELLED, "fonts": [], "model": MODEL})
    return dst
