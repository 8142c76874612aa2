"""Feature visualization on the random tiny model: objectives rise and images are neuron-specific."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lucent.optvis.param import spatial as lucent_spatial

from atlas import store
from atlas.config import FeatureVisConfig
from atlas.featurevis import featurevis, random_transform, render_channels
from atlas.featurevis.render import _Activations

LAYER = "visual.layer4.0"


def _cross_activations(model, units, images):
    """A[i, j]: mean activation of neuron units[j] on the visualization of neuron units[i]."""
    acts = _Activations(model, [LAYER])
    with torch.no_grad():
        acts.forward(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    return acts(LAYER)[:, units].mean((2, 3)).numpy()


def _own_wins(a):
    return [bool(a[j, j] > np.delete(a[:, j], j).max()) for j in range(a.shape[1])]


def test_objective_rises_and_images_are_specific_on_the_random_model(tiny_model):
    units = list(range(7, 512, 64))
    r = render_channels(tiny_model, LAYER, units, FeatureVisConfig(batch=8))  # default steps and lr
    assert r.images.shape == (8, 64, 64, 3) and r.images.dtype == np.uint8
    first, last = r.history[:4].mean(0), r.history[-4:].mean(0)
    assert (last > first).all() and (last - first).mean() > 1.0, (first, last)
    assert (r.objective > r.history[0]).all()
    a = _cross_activations(tiny_model, units, r.images)
    # random units are correlated, so allow one tie-break the other way; each image still excites its own
    # neuron more than the other images do on average
    assert sum(_own_wins(a)) >= 7, a
    assert all(a[j, j] > np.delete(a[:, j], j).mean() for j in range(8))


def test_images_are_specific_on_the_shipped_model():
    from atlas.models import load_model

    model = load_model("atlas:conceptclip")
    units = list(range(0, 1024, 128))
    r = render_channels(model, LAYER, units, FeatureVisConfig(batch=8, steps=64))
    assert all(_own_wins(_cross_activations(model, units, r.images)))


def test_render_leaves_model_and_lucent_untouched(tiny_model):
    params = {k: v.clone() for k, v in tiny_model.clip.state_dict().items()}
    device_before = lucent_spatial.device
    render_channels(tiny_model, LAYER, [0, 1], FeatureVisConfig(steps=2, batch=2))
    assert all(torch.equal(params[k], v) for k, v in tiny_model.clip.state_dict().items())
    assert all(p.requires_grad for p in tiny_model.clip.parameters())
    assert all(p.grad is None for p in tiny_model.clip.parameters())
    assert sum(len(m._forward_hooks) for m in tiny_model.clip.modules()) == 0
    assert lucent_spatial.device is device_before


def test_transforms_are_per_image():
    x = torch.rand(1, 3, 32, 32).expand(6, 3, 32, 32).contiguous()
    cfg = FeatureVisConfig(jitter=3, scales=(0.8, 1.0, 1.2), rotate_degrees=20)
    y = random_transform(x, cfg, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    diffs = [(y[i] - y[0]).abs().max().item() for i in range(1, 6)]
    assert min(diffs) > 1e-3  # six identical inputs, six different warps
    ident = random_transform(x, FeatureVisConfig(jitter=0, scales=(1.0,), rotate_degrees=0),
                             torch.Generator().manual_seed(0))
    assert torch.allclose(ident, x, atol=1e-5)


def test_featurevis_job_stores_and_resumes(tiny_model, small_store, tmp_path):
    import shutil

    path = tmp_path / "fv.h5"
    shutil.copy(small_store, path)
    with store.Store(path) as st:  # the fixture rendered units 0..7 with 4 steps, batch 8
        ld = st.layer("tiny", LAYER)
        done = ld.featurevis_done()
        assert done[:8].all() and not done[8:].any()
        assert ld["featurevis/images"].shape == (512, 64, 64, 3)
    cfg = FeatureVisConfig(steps=4, batch=8)
    r = featurevis(tiny_model, path, LAYER, units=range(4, 12), config=cfg)
    assert (r.rendered, r.reused) == (4, 4)
    with store.Store(path) as st:
        assert st.layer("tiny", LAYER).featurevis_done()[:12].all()
    with pytest.raises(ValueError, match="no unit 512"):
        featurevis(tiny_model, path, LAYER, units=[512], config=cfg)
    from atlas.models import ModelError

    with pytest.raises(ModelError, match="no hookable layer"):
        featurevis(tiny_model, path, "visual.layer9.0", config=cfg)
