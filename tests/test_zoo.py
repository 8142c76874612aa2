"""Numeric parity of every architecture of the paper in every checkpoint format (random weights).

For each architecture a reference open_clip model (QuickGELU, as OpenAI trained them) gets seeded random
weights, rounded through fp16 the way OpenAI stores them; the same weights are written as an OpenAI state dict,
an OpenAI-style TorchScript archive, an open_clip training checkpoint and a safetensors file.  Loaded through
atlas, each must give the reference's image and text embeddings exactly (tolerance 0: same implementation,
same weights), and its captured block outputs must equal the true block outputs recomputed out of place.
Hugging Face CLIPModel directories (ViTs only: transformers has no ResNet CLIP) are checked against
transformers' own forward, to 1e-4 of the embeddings' scale (another implementation, other summation order).
"""

from __future__ import annotations

import copy
import gc
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from atlas.capture import capture
from atlas.models import load_model

ARCHS = ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14"]
FORMATS = ["openai state dict", "openai torchscript", "open_clip checkpoint", "open_clip safetensors"]
# transformers' CLIPConfig for OpenAI's ViTs: (width, layers, heads, patch, image) vision; (width, heads) text
HF = {"ViT-B-32": ((768, 12, 12, 32, 224), (512, 8), 512), "ViT-B-16": ((768, 12, 12, 16, 224), (512, 8), 512),
      "ViT-L-14": ((1024, 24, 16, 14, 224), (768, 12), 768)}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=ARCHS)
def zoo(request, tmp_path_factory):
    import open_clip
    from open_clip.model import convert_weights_to_lp

    arch = request.param
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = open_clip.create_model(arch, pretrained=None, load_weights=False, force_quick_gelu=True).eval()
    convert_weights_to_lp(ref)  # round to fp16 where OpenAI's files are fp16, then compute in fp32
    ref.float()
    size = ref.visual.image_size if isinstance(ref.visual.image_size, int) else ref.visual.image_size[0]
    d = tmp_path_factory.mktemp(arch)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 4 - 2  # [1, 3, S, S]
    tokens = open_clip.tokenizer.SimpleTokenizer(context_length=77)(["a photo of an ipod", "the word pizza"])
    files = {}
    half = copy.deepcopy(ref)
    convert_weights_to_lp(half)
    sd = dict(half.state_dict())
    sd.update(input_resolution=torch.tensor(size), context_length=torch.tensor(77), vocab_size=torch.tensor(49408))
    files["openai state dict"] = d / "openai.pt"
    torch.save(sd, files["openai state dict"])
    del half, sd
    files["openai torchscript"] = d / "openai_jit.pt"
    traced = torch.jit.trace_module(ref, {"encode_image": (x,)}, check_trace=False)
    torch.jit.save(traced, str(files["openai torchscript"]))
    del traced
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    files["open_clip checkpoint"] = d / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in state.items()}}, files["open_clip checkpoint"])
    files["open_clip safetensors"] = d / "model.safetensors"
    save_file(state, str(files["open_clip safetensors"]))
    del state
    with torch.no_grad():
        img, txt = ref.encode_image(x), ref.encode_text(tokens)
    yield SimpleNamespace(arch=arch, ref=ref, x=x, tokens=tokens, img=img, txt=txt, files=files)
    for f in files.values():
        f.unlink(missing_ok=True)
    del ref
    gc.collect()


def _spec(arch: str, fmt: str, path) -> str:
    return f"openai:{arch}@{path}" if fmt.startswith("openai") else f"open_clip:{arch}-quickgelu@{path}"


def _true_block_output(block, x):
    """A block recomputed out of place from its input x: a Bottleneck or a transformer block."""
    if hasattr(block, "conv3"):  # [B, C, H, W]
        out = torch.relu(block.bn1(block.conv1(x)))
        out = torch.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(block.avgpool(out)))
        return torch.relu(out + (block.downsample(x) if block.downsample is not None else x))
    h = block.ln_1(x)  # [B, T, C]
    x = x + block.ls_1(block.attn(h, h, h, need_weights=False)[0])
    return x + block.ls_2(block.mlp(block.ln_2(x)))


@pytest.mark.parametrize("fmt", FORMATS)
def test_embeddings_and_block_outputs_match(zoo, fmt):
    model = load_model(_spec(zoo.arch, fmt, zoo.files[fmt]), trust_checkpoint=fmt == "openai torchscript")
    with torch.no_grad():
        assert torch.equal(model.encode_image(zoo.x), zoo.img), f"{zoo.arch} {fmt}: image embeddings differ"
        assert torch.equal(model.clip.encode_text(zoo.tokens), zoo.txt), f"{zoo.arch} {fmt}: text embeddings differ"
    last = [n for n in model.layers if model.layers[n].kind in ("conv", "tokens")][-1]
    blocks = dict(model.clip.named_modules())
    parent = last.rsplit(".", 1)[0]  # the module holding the block list
    idx = int(last.rsplit(".", 1)[1])
    prev = f"{parent}.{idx - 1}" if idx > 0 else None
    names = [last] + ([prev] if prev else [])
    with torch.no_grad():
        got = capture(model.clip, names, lambda: model.encode_image(zoo.x))
        ref = capture(zoo.ref, names, lambda: zoo.ref.encode_image(zoo.x))
        assert torch.equal(got[last], ref[last])
        if prev:  # the block output equals the block recomputed, out of place, from its input
            assert (got[last] - _true_block_output(blocks[last], got[prev])).abs().max() <= 1e-4 * got[last].abs().max()
    info = model.layer(last)
    assert info.units == got[last].shape[1 if info.kind == "conv" else 2]
    del model
    gc.collect()


def test_default_layers_and_units(zoo):
    model = load_model(_spec(zoo.arch, "open_clip safetensors", zoo.files["open_clip safetensors"]))
    layers = model.default_layers
    assert len(layers) == 4
    if zoo.arch.startswith("RN"):
        widths = {"RN50": 64, "RN101": 64, "RN50x4": 80, "RN50x16": 96, "RN50x64": 128}[zoo.arch]
        assert [model.layer(n).units for n in layers] == [widths * 4 * 2**i for i in range(4)]
        last_stage = max(int(n.split(".")[2]) for n in model.layers if n.startswith("visual.layer4."))
        assert layers[-1] == f"visual.layer4.{last_stage}"
    else:
        width = HF[zoo.arch][0][0]
        assert all(model.layer(n).kind == "mlp" and model.layer(n).units == 4 * width for n in layers)
        assert model.layer(layers[-1]).prefix_tokens == 1


@pytest.mark.parametrize("arch", list(HF))
def test_hf_clip_directory_matches_transformers(arch, tmp_path):
    transformers = pytest.importorskip("transformers")
    (vw, vl, vh, patch, size), (tw, th), proj = HF[arch]
    cfg = transformers.CLIPConfig(
        vision_config=dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh, intermediate_size=4 * vw,
                           patch_size=patch, image_size=size),
        text_config=dict(hidden_size=tw, num_attention_heads=th, intermediate_size=4 * tw, num_hidden_layers=12),
        projection_dim=proj)
    torch.manual_seed(0)
    hf = transformers.CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / arch)
    model = load_model(f"hf:{tmp_path / arch}")
    x = torch.rand(1, 3, size, size) * 4 - 2
    tokens = model.tokenizer(["a photo of an ipod", "the word pizza"])
    with torch.no_grad():
        ref_i, ref_t = hf.get_image_features(pixel_values=x), hf.get_text_features(input_ids=tokens)
        ref_i, ref_t = (getattr(r, "pooler_output", r) for r in (ref_i, ref_t))
        img, txt = model.encode_image(x), model.clip.encode_text(tokens)
    assert (img - ref_i).abs().max() <= 1e-4 * ref_i.abs().max()
    assert (txt - ref_t).abs().max() <= 1e-4 * ref_t.abs().max()
    assert model.default_layers[-1] == f"visual.transformer.resblocks.{vl - 1}.mlp.gelu"


def test_hf_siglip_base_directory_matches_transformers(tmp_path):
    """SigLIP ViT-B/16 (224 px) as saved by transformers: atlas runs transformers' own towers."""
    pytest.importorskip("sentencepiece")
    from test_checkpoints import make_siglip_dir

    hf = make_siglip_dir(tmp_path / "siglip-b16", vision=(768, 12, 12, 16, 224), text=(768, 12, 12))
    model = load_model(f"hf:{tmp_path / 'siglip-b16'}")
    x = torch.rand(1, 3, 224, 224) * 2 - 1
    tokens = model.tokenizer(["a photo of an ipod", "the word pizza"])
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), hf.get_image_features(pixel_values=x).pooler_output)
        assert torch.equal(model.clip.encode_text(tokens), hf.get_text_features(input_ids=tokens).pooler_output)
        got = capture(model.clip, ["visual.encoder.layers.11"], lambda: model.encode_image(x))
        hidden = hf.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[12]
    info = model.layer("visual.encoder.layers.11")
    assert torch.equal(info.canonical(got["visual.encoder.layers.11"]), info.canonical(hidden))
    assert (info.units, info.grid, info.prefix_tokens) == (768, (14, 14), 0)
    assert model.layer(model.default_layers[-1]).units == 3072
