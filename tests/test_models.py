"""The model registry and capture hooks."""

from __future__ import annotations

import pytest
import torch

from atlas.capture import capture, hooked
from atlas.models import DEFAULT_SPEC, ModelError, ModelSpec, load_model, read_state_dict


def test_spec_parsing():
    s = ModelSpec.parse("open_clip:RN50x4@/weights/RN50x4.pt")
    assert (s.family, s.arch, s.weights) == ("open_clip", "RN50x4", "/weights/RN50x4.pt")
    assert str(s) == "open_clip:RN50x4@/weights/RN50x4.pt"
    assert ModelSpec.parse("default") == ModelSpec.parse(DEFAULT_SPEC)
    assert ModelSpec.parse("atlas:tiny@random:7").random_seed == 7
    assert ModelSpec.parse("atlas:tiny@random").random_seed == 0
    assert ModelSpec.parse("atlas:tiny@/x.safetensors").random_seed is None


@pytest.mark.parametrize("bad, words", [
    ("RN50", "FAMILY:ARCH"),
    ("hub:RN50@x", "unknown model family"),
    ("atlas:tiny@random:x", "integer seed"),
])
def test_bad_specs_say_what_to_do(bad, words):
    with pytest.raises(ModelError, match=words):
        load_model(bad)


def test_unknown_arch_and_missing_weights():
    with pytest.raises(ModelError, match="did you mean RN50"):
        load_model("open_clip:RN5O@random:0")
    with pytest.raises(ModelError, match="names no weights"):
        load_model("open_clip:RN50")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("atlas:tiny@/nonexistent/w.safetensors")


def test_layer_table(tiny_model):
    m = tiny_model
    assert list(m.layers) == ["visual.layer1.0", "visual.layer2.0", "visual.layer3.0", "visual.layer4.0"]
    named = dict(m.clip.named_modules())
    for info in m.layers.values():
        assert info.name in named  # canonical names are named_modules() paths
        assert info.kind == "conv"
    assert [m.layers[n].units for n in m.layers] == [64, 128, 256, 512]
    assert [m.layers[n].grid for n in m.layers] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert m.default_layers == tuple(m.layers)
    assert m.neuron_id("visual.layer4.0", 12) == "tiny/visual.layer4.0/12"
    with pytest.raises(ModelError, match="did you mean visual.layer4.0"):
        m.layer("visual.layer4.O")


def test_random_weights_are_seeded():
    a, b, c = (load_model(f"atlas:tiny@random:{s}") for s in (0, 0, 1))
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    pa, pc = a.clip.state_dict(), c.clip.state_dict()
    assert all(torch.equal(pa[k], b.clip.state_dict()[k]) for k in pa)
    assert not torch.equal(pa["visual.conv1.weight"], pc["visual.conv1.weight"])


def test_vit_token_layers():
    m = load_model("open_clip:ViT-B-32@random:0")
    blocks = [n for n in m.layers if m.layers[n].kind == "tokens"]
    mlps = [n for n in m.layers if m.layers[n].kind == "mlp"]
    assert len(blocks) == len(mlps) == 12 and len(m.layers) == 24
    assert m.layer(mlps[-1]).units == 3072 and mlps[-1] == "visual.transformer.resblocks.11.mlp.gelu"
    info = m.layer(blocks[-1])
    assert (info.kind, info.units, info.grid, info.prefix_tokens) == ("tokens", 768, (7, 7), 1)
    out = torch.randn(2, 50, 768)
    canon = info.canonical(out)  # [batch, units, h, w] of the patch tokens
    assert canon.shape == (2, 768, 7, 7)
    assert torch.equal(canon[1, :, 2, 3], out[1, 1 + 2 * 7 + 3])


def test_checkpoint_roundtrip_and_mismatch(tmp_path, tiny_model):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in tiny_model.clip.state_dict().items()}
    st_path, pt_path = tmp_path / "w.safetensors", tmp_path / "w.pt"
    save_file(state, str(st_path))
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, pt_path)
    for p in (st_path, pt_path):
        m = load_model(f"atlas:tiny@{p}")
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            assert torch.equal(m.encode_image(x), tiny_model.encode_image(x))
    assert len(read_state_dict(pt_path)) == len(state)
    # a checkpoint of another architecture is refused with the keys that do not fit
    other = tmp_path / "vit.safetensors"
    save_file({"visual.proj": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ModelError, match="does not fit"):
        load_model(f"atlas:tiny@{other}")


def test_preprocess_matches_open_clip(tiny_model):
    import open_clip
    from PIL import Image

    img = Image.fromarray((torch.rand(90, 130, 3) * 255).byte().numpy())
    ref = open_clip.image_transform(64, is_train=False)(img)
    assert ref.shape == tiny_model.preprocess(img).shape == (3, 64, 64)
    assert (ref - tiny_model.preprocess(img)).abs().max() < 1e-5


def _manual_bottleneck(block, x):
    """Recompute a Bottleneck's output from its parts, out of place."""
    out = torch.relu(block.bn1(block.conv1(x)))
    out = torch.relu(block.bn2(block.conv2(out)))
    out = block.bn3(block.conv3(block.avgpool(out)))
    identity = block.downsample(x) if block.downsample is not None else x
    return torch.relu(out + identity)


def test_capture_sees_true_output_despite_inplace_ops(tiny_model):
    m = tiny_model
    x = torch.randn(4, 3, 64, 64)
    names = ["visual.layer2.0", "visual.bn1", "visual.layer3.0"]
    assert capture(m.clip, ["visual.layer2"], lambda: None) == {}  # no forward: nothing captured
    with torch.no_grad():
        got = capture(m.clip, names + ["visual.layer1"], lambda: m.encode_image(x))
        v = m.visual
        # bn1's output is overwritten by the in-place act1 right after: the capture must hold the pre-ReLU value
        ref_bn1 = v.bn1(v.conv1(x))
        assert (ref_bn1 < 0).any()
        assert torch.allclose(got["visual.bn1"], ref_bn1, atol=1e-6)
        # a Bottleneck ends with `out += identity; relu_(out)`: compare to an out-of-place recomputation
        ref_l2 = _manual_bottleneck(v.layer2[0], got["visual.layer1"])
        assert torch.allclose(got["visual.layer2.0"], ref_l2, atol=1e-5)
        ref_l3 = _manual_bottleneck(v.layer3[0], got["visual.layer2.0"])
        assert torch.allclose(got["visual.layer3.0"], ref_l3, atol=1e-5)


def test_hooks_always_come_off(tiny_model):
    m = tiny_model
    before = sum(len(mod._forward_hooks) for mod in m.clip.modules())

    def boom(name, out):
        raise RuntimeError("fail inside a hook")

    with pytest.raises(RuntimeError, match="fail inside"):
        with hooked(m.clip, ["visual.layer1.0"], boom):
            m.encode_image(torch.zeros(1, 3, 64, 64))
    with pytest.raises(KeyError, match="no module named"):
        with hooked(m.clip, ["visual.layer1.0", "visual.nope"], boom):
            pass
    assert sum(len(mod._forward_hooks) for mod in m.clip.modules()) == before == 0


def test_text_tower(tiny_model):
    with torch.no_grad():
        e = tiny_model.encode_text(["a red circle", "the word cat"])
    assert e.shape == (2, 128) and torch.isfinite(e).all()
    assert not torch.allclose(e[0], e[1])
