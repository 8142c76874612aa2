"""The fast feature-visualization path (atlas/featurevis/fast.py) against the reference loop (render.py),
on the random tiny model: the cut tower computes the reference's activations, both paths raise their
units and render neuron-specific images, the batched transforms are exact, and fallbacks warn."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from atlas.config import FeatureVisConfig
from atlas.featurevis import FastOptions, FastRenderer, affine_params, render_channels, warp
from atlas.featurevis import fast as fast_mod
from atlas.featurevis.fast import cut_tower
from atlas.featurevis.render import _Activations

LAYER = "visual.layer4.0"
UNITS = list(range(7, 512, 64))  # 8 units
CFG = FeatureVisConfig(batch=8, steps=24)


def _reference_acts(model, layer, x01):
    acts = _Activations(model, [layer])
    with torch.no_grad():
        acts.forward(x01)
    return acts(layer)


def _cross(model, images):
    """A[i, j]: mean activation of UNITS[j] on the image rendered for UNITS[i] (reference forward)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return _reference_acts(model, LAYER, x)[:, UNITS].mean((2, 3)).numpy()


@pytest.mark.parametrize("layer", ["visual.layer4.0", "visual.layer3.0"])
@pytest.mark.parametrize("fold_bn", [False, True])
def test_cut_tower_computes_the_reference_activations_and_nothing_after(tiny_model, layer, fold_bn):
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ref = _reference_acts(tiny_model, layer, x)
    tower = cut_tower(tiny_model, tiny_model.layer(layer), fold_bn)
    with torch.no_grad():
        got = tower(tiny_model.normalize(x))
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    called = {n.target for n in tower.graph.nodes if n.op == "call_module"}
    block = layer.removeprefix("visual.")
    assert f"{block}.act3" not in called  # cut at the pre-activation, before the block's last ReLU
    assert not any(t.startswith("attnpool") for t in called)
    if block == "layer3.0":
        assert not any(t.startswith("layer4") for t in called)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules()) != fold_bn
    assert not any(p.requires_grad for p in tower.parameters())


def test_both_paths_raise_their_units_and_render_specific_images(tiny_model):
    ref = render_channels(tiny_model, LAYER, UNITS, CFG)
    fast = FastRenderer(tiny_model, LAYER, FastOptions(dtype="float32")).render(UNITS, CFG)
    for r in (ref, fast):
        assert r.images.shape == (8, 64, 64, 3) and r.images.dtype == np.uint8
        rise = r.objective - r.history[0]
        assert (rise > 0).all() and rise.mean() > 0.5, rise
        a = _cross(tiny_model, r.images)
        own_wins = [bool(a[j, j] > np.delete(a[:, j], j).max()) for j in range(8)]
        assert sum(own_wins) >= 7, a
    # same parameterization, transforms and optimizer: the fp32 fast path follows the reference
    scale = np.abs(ref.history).max()
    assert np.abs(fast.history - ref.history).max() < 0.02 * scale
    assert np.abs(fast.objective - ref.objective).max() < 0.02 * scale


def test_bf16_fast_path_rises_and_is_specific(tiny_model):
    r = FastRenderer(tiny_model, LAYER, FastOptions(dtype="bfloat16")).render(UNITS, CFG)
    assert (r.objective > r.history[0]).all()
    a = _cross(tiny_model, r.images)
    assert sum(bool(a[j, j] > np.delete(a[:, j], j).max()) for j in range(8)) >= 7, a


def test_zero_transform_parameters_give_the_identity_and_warp_resizes():
    cfg = FeatureVisConfig(jitter=0, scales=(1.0,), rotate_degrees=0, size=32)
    theta = affine_params(cfg, 5, torch.Generator().manual_seed(0))
    assert theta.shape == (5, 2, 3)
    assert torch.equal(theta, torch.tensor([[1.0, 0, 0], [0, 1, 0]]).expand(5, 2, 3))
    x = torch.rand(5, 3, 32, 32)
    assert torch.allclose(warp(x, theta), x, atol=1e-5)
    up = warp(x, theta, out_size=64)
    assert up.shape == (5, 3, 64, 64)
    assert torch.allclose(up, F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False), atol=1e-5)


def test_batched_warp_is_the_per_image_warp():
    cfg = FeatureVisConfig(jitter=4, scales=(0.9, 1.1), rotate_degrees=15, size=32)
    theta = affine_params(cfg, 6, torch.Generator().manual_seed(1))
    assert len({tuple(t.flatten().tolist()) for t in theta}) == 6  # one draw per image
    x = torch.rand(6, 3, 32, 32)
    batched = warp(x, theta, out_size=48)
    for i in range(6):
        assert torch.allclose(batched[i], warp(x[i:i + 1], theta[i:i + 1], out_size=48)[0], atol=1e-6)
    # a pure shift by 2 pixels (normalized: 2 * 2 / 32) moves the image by 2 pixels
    shift = torch.tensor([[[1.0, 0, 4 / 32], [0, 1, 0]]])
    assert torch.allclose(warp(x[:1], shift)[..., :, :-2], x[:1, ..., :, 2:], atol=1e-5)
    # rotating by 90 degrees is rot90
    c, s = math.cos(math.pi / 2), math.sin(math.pi / 2)
    rot = torch.tensor([[[c, -s, 0], [s, c, 0]]])
    assert torch.allclose(warp(x[:1], rot), torch.rot90(x[:1], 1, dims=(2, 3)), atol=1e-4)


def test_fast_render_leaves_the_model_untouched_and_checks_units(tiny_model):
    params = {k: v.clone() for k, v in tiny_model.clip.state_dict().items()}
    FastRenderer(tiny_model, LAYER).render([0, 1], FeatureVisConfig(steps=2, batch=2))
    assert all(torch.equal(params[k], v) for k, v in tiny_model.clip.state_dict().items())
    assert all(p.requires_grad and p.grad is None for p in tiny_model.clip.parameters())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny_model.clip.modules()) == 0
    with pytest.raises(ValueError, match="no unit 512"):
        FastRenderer(tiny_model, LAYER).render([512])


def test_failed_compile_warns_and_renders_uncompiled_with_padding(tiny_model, monkeypatch):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler here")
        return call

    monkeypatch.setattr(fast_mod.torch, "compile", broken)
    renderer = FastRenderer(tiny_model, LAYER, FastOptions(compile="on"))
    assert renderer.compiled is not None
    with pytest.warns(UserWarning, match="torch.compile failed"):
        r = renderer.render([3, 4, 5], FeatureVisConfig(steps=2, batch=4))  # padded to 4 while compiled
    assert renderer.compiled is None
    assert r.images.shape[0] == 3 and r.objective.shape == (3,) and r.history.shape == (2, 3)


def test_untraceable_tower_falls_back_to_the_hook_cut(tiny_model, monkeypatch):
    def untraceable(*args):
        raise fast_mod._Cut("pretend torch.fx fails")

    monkeypatch.setattr(fast_mod, "cut_tower", untraceable)
    with pytest.warns(UserWarning, match="pretend torch.fx fails"):
        renderer = FastRenderer(tiny_model, LAYER, FastOptions(dtype="float32"))
    assert not renderer.traced
    r = renderer.render(UNITS[:4], FeatureVisConfig(steps=6, batch=4))
    assert (r.objective > r.history[0]).all()
    assert all(p.requires_grad and p.grad is None for p in tiny_model.clip.parameters())
    assert sum(len(m._forward_pre_hooks) for m in tiny_model.clip.modules()) == 0


def test_options_are_checked():
    with pytest.raises(ValueError, match="dtype"):
        FastOptions(dtype="int8")
    with pytest.raises(ValueError, match="compile"):
        FastOptions(compile="yes")
