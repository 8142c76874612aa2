"""atlas.open: the store as Python objects with rich reprs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import atlas
from atlas.store import Store


def test_open_gives_neurons_with_examples(small_store):
    with atlas.open(small_store) as a:
        assert a.layers == ["visual.layer3.0", "visual.layer4.0"]
        n = a["tiny/visual.layer4.0/3"]
        assert n.id == "tiny/visual.layer4.0/3" and repr(n) == "Neuron('tiny/visual.layer4.0/3')"
        with Store(small_store) as st:
            ld = st.layer("tiny", "visual.layer4.0")
            assert [e.index for e in n.examples] == [i for i in ld["topk/index"][3] if i >= 0]
            assert [e.value for e in n.examples] == pytest.approx(ld["topk/values"][3][: len(n.examples)])
            assert n.stats["mean"] == pytest.approx(ld["stats/mean"][3])
        e = n.examples[0]
        assert e.rank == 1 and e.image.size == (96, 96) and e.overlay().size == (96, 96)
        assert 0 <= e.argmax[0] < 2 and 0 <= e.argmax[1] < 2
        assert e.caption == a.captions[e.index]
        counts, edges = n.histogram
        assert counts.sum() == 200 and len(edges) == len(counts) + 1
        assert n.featurevis.size == (64, 64)
        assert a["tiny/visual.layer4.0/100"].featurevis is None  # not rendered in the fixture
        html = n._repr_html_()
        assert html.count("<img") == 1 + min(8, len(n.examples)) and "data:image/png;base64," in html
        assert "visual.layer4.0" in a._repr_html_()


@pytest.mark.parametrize("bad", ["tiny/visual.layer4.0", "tiny/visual.layer4.0/x", "other/visual.layer4.0/1"])
def test_bad_neuron_ids(small_store, bad):
    with atlas.open(small_store) as a:
        with pytest.raises(KeyError):
            a[bad]
        with pytest.raises(IndexError, match="512 units"):
            a.neuron("visual.layer4.0", 512)


def test_open_does_not_import_torch(small_store):
    code = f"import sys, atlas; a = atlas.open({str(small_store)!r}); a['tiny/visual.layer4.0/0'].examples; " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_store(tmp_path):
    from atlas.store import StoreError

    with pytest.raises(StoreError, match="does not exist"):
        atlas.open(tmp_path / "nope.h5")
    assert np.__name__  # numpy stays importable alongside
