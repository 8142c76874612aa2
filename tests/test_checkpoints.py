"""Loading checkpoints safely, in every format, and building atlases from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from atlas.checkpoints import hf_clip_to_open_clip, is_torchscript, no_init, read_state_dict
from atlas.cli import main
from atlas.errors import ModelError
from atlas.models import alias, load_model
from atlas.store import Store

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
    """Unpickling this calls os.mkdir(marker): a checkpoint that runs code when loaded unsafely."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _Evil(str(marker))}, evil)
    # the file really is malicious: an unsafe load runs the payload (in a throwaway process)
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(evil)!r}, weights_only=False)"],
                   check=False, capture_output=True)
    assert marker.exists()
    marker.rmdir()
    with pytest.raises(ModelError, match="refused to load .*never unpickles code"):
        read_state_dict(evil)
    r = CliRunner().invoke(main, ["mine", "--model", f"open_clip:RN50@{evil}", "--store", str(tmp_path / "s.h5")])
    assert r.exit_code != 0 and "refused to load" in r.output and "Traceback" not in r.output
    assert not marker.exists()


def _tiny_openai_model(seed: int = 0) -> torch.nn.Module:
    """A small ModifiedResNet CLIP (64 px) built as OpenAI built theirs: QuickGELU, 64-wide attention heads."""
    import open_clip

    torch.manual_seed(seed)
    return open_clip.model.CLIP(
        128, open_clip.model.CLIPVisionCfg(layers=[1, 1, 1, 1], width=16, image_size=64, head_width=64),
        open_clip.model.CLIPTextCfg(context_length=16, vocab_size=49408, width=128, heads=2, layers=2),
        quick_gelu=True).eval()


def _tiny_openai_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Its state dict with the scalar entries OpenAI's files carry."""
    sd = dict(_tiny_openai_model(seed).state_dict())
    sd["input_resolution"], sd["context_length"], sd["vocab_size"] = torch.tensor(64), torch.tensor(16), torch.tensor(49408)
    return sd


def test_torchscript_needs_trust(tmp_path):
    ref = _tiny_openai_model()
    traced = torch.jit.trace_module(ref, {"encode_image": (torch.rand(1, 3, 64, 64),)})
    path = tmp_path / "jit.pt"
    torch.jit.save(traced, str(path))
    assert is_torchscript(path)
    with pytest.raises(ModelError, match="TorchScript archive: it contains code.*--trust-checkpoint.*atlas convert"):
        load_model(f"openai:tiny@{path}")
    m = load_model(f"openai:tiny@{path}", trust_checkpoint=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m.encode_image(x), ref.encode_image(x))
    # convert once, then no trust is needed
    out = tmp_path / "jit.safetensors"
    r = CliRunner().invoke(main, ["convert", str(path), "--out", str(out)])
    assert r.exit_code != 0 and "--trust-checkpoint" in r.output and not out.exists()
    r = CliRunner().invoke(main, ["convert", str(path), "--out", str(out), "--trust-checkpoint"])
    assert r.exit_code == 0, r.output
    m2 = load_model(f"openai:tiny@{out}")
    with torch.no_grad():
        assert torch.equal(m2.encode_image(x), m.encode_image(x))


def test_openai_state_dict_infers_the_architecture(tmp_path):
    path = tmp_path / "tiny_openai.pt"
    torch.save(_tiny_openai_state(), path)
    m = load_model(f"openai:custom@{path}")
    assert m.name == "custom" and m.image_size == 64 and m.layer("visual.layer4.0").units == 512
    assert m.clip.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"
    with pytest.raises(ModelError, match="not an OpenAI CLIP checkpoint"):
        bad = tmp_path / "bad.pt"
        torch.save({"visual.proj": torch.zeros(2, 2)}, bad)
        load_model(f"openai:custom@{bad}")


def test_missing_weights_say_what_to_get(tmp_path, monkeypatch):
    monkeypatch.setenv("ATLAS_CLIP_CACHE", str(tmp_path / "clip"))
    with pytest.raises(ModelError, match=r"get https://openaipublic.azureedge.net/clip/models/7e526bd1.*/RN50x4.pt "
                                         r"and put it at .*clip/RN50x4.pt"):
        load_model("openai:RN50x4")
    with pytest.raises(ModelError, match="OpenAI released no model 'RN50x8'"):
        load_model("openai:RN50x8")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match=r"open_clip:ViT-B-32@laion2b_s34b_b79k are not on this machine. Get "
                                         r"https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        load_model("open_clip:ViT-B-32@laion2b_s34b_b79k")
    with pytest.raises(ModelError, match="no pretrained weights 'ViT-B-32' tagged 'nope'.*openai"):
        load_model("open_clip:ViT-B-32@nope")


def test_openai_cache_and_its_sha(tmp_path, monkeypatch):
    """A file in OpenAI's cache is checked against the sha256 in OpenAI's URL."""
    monkeypatch.setenv("ATLAS_CLIP_CACHE", str(tmp_path))
    torch.save(_tiny_openai_state(), tmp_path / "RN50.pt")
    with pytest.raises(ModelError, match="must have afeb0e10f9e5a86d.*corrupted or was replaced"):
        load_model("openai:RN50")


def test_microscope_aliases_resolve_to_canonical_names():
    assert alias("image_block_4_5_Add_6_0") == "visual.layer4.5"
    assert alias("image_block_4/5/Add_6/Relu_2") == "visual.layer4.5"
    assert alias("image_block_1/0/Relu_2") == "visual.layer1.0"
    assert alias("visual.layer4.5") is None and alias("image_block_x") is None
    m = load_model("atlas:tiny@random:0")
    assert m.layer("image_block_4_0_Add_6_0").name == "visual.layer4.0"


def _tiny_hf_clip(directory: Path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=77, vocab_size=49408),
                     vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=64, patch_size=16), projection_dim=32)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(directory)
    return model


def test_hf_clip_directory_matches_transformers(tmp_path):
    pytest.importorskip("transformers")
    hf = _tiny_hf_clip(tmp_path / "hfclip")
    m = load_model(f"hf:{tmp_path / 'hfclip'}")
    assert m.name == "hfclip" and m.image_size == 64 and "visual.transformer.resblocks.1.mlp.gelu" in m.layers
    x = torch.rand(3, 3, 64, 64)
    tokens = m.tokenizer(["a photo of a cat", "the word spider", "x"])
    with torch.no_grad():
        ref_i = hf.get_image_features(pixel_values=x)
        ref_t = hf.get_text_features(input_ids=tokens)
        ref_i, ref_t = (getattr(r, "pooler_output", r) for r in (ref_i, ref_t))
        assert (m.encode_image(x) - ref_i).abs().max() < 1e-5
        assert (m.clip.encode_text(tokens) - ref_t).abs().max() < 1e-5
    with pytest.raises(ModelError, match="not a Hugging Face model directory"):
        load_model(f"hf:{tmp_path}")


def test_hf_conversion_renames_every_tensor():
    from transformers import CLIPConfig, CLIPModel

    hf = CLIPModel(CLIPConfig(text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=2),
                              vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                 num_attention_heads=2, image_size=32, patch_size=16)))
    hsd = hf.state_dict()
    sd = hf_clip_to_open_clip(hsd)
    used = sum(v.numel() for v in sd.values())
    assert used == sum(v.numel() for k, v in hsd.items() if "position_ids" not in k)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["openai", "open_clip", "hf", "hf-siglip"])
def test_build_from_each_family(tmp_path, family):
    """`atlas build --model SPEC --data FOLDER` with a tiny random-weight model of each family."""
    from PIL import Image

    data = tmp_path / "imgs"
    for i in range(10):
        (data / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.effect_noise((48, 40), 40 + i).convert("RGB").save(data / f"c{i % 2}" / f"{i}.png")
    if family == "openai":
        path = tmp_path / "tiny_openai.pt"
        torch.save(_tiny_openai_state(), path)
        spec, name, layer = f"openai:tinyrn@{path}", "tinyrn", "visual.layer4.0"
    elif family == "open_clip":
        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in load_model("atlas:tiny@random:1").clip.state_dict().items()}, str(path))
        spec, name, layer = f"atlas:tiny@{path}", "tiny", "visual.layer4.0"
        spec = _register_open_clip_tiny(tmp_path, path)
        name = "atlas-test-tiny"
    elif family == "hf":
        pytest.importorskip("transformers")
        _tiny_hf_clip(tmp_path / "tinyvit")
        spec, name, layer = f"hf:{tmp_path / 'tinyvit'}", "tinyvit", "visual.transformer.resblocks.1.mlp.gelu"
    else:
        pytest.importorskip("sentencepiece")
        make_siglip_dir(tmp_path / "tinysiglip")
        spec, name, layer = f"hf:{tmp_path / 'tinysiglip'}", "tinysiglip", "visual.encoder.layers.1.mlp.activation_fn"
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["build", "--model", spec, "--data", str(data), "--out", str(out), "--steps", "2",
                                  "--top-k", "3", "--device", "cpu", "--no-reports"])  # reports: test_cli, test_analyses
    assert r.exit_code == 0, r.output
    with Store(out / "atlas.h5") as st:
        assert st.models() == [name] and st.meta["model_spec"] == spec
        ld = st.layers(name)[-1]
        assert ld.name == layer and ld.featurevis_done().all() and st.n_images == 10
    assert (out / "site" / name / layer / "0.html").is_file()


def _register_open_clip_tiny(tmp_path: Path, weights: Path) -> str:
    """Register atlas's tiny config with open_clip under a new name: a tiny model of the open_clip family."""
    import json

    import open_clip

    from atlas.models import ATLAS_CONFIGS

    cfg = tmp_path / "atlas-test-tiny.json"
    cfg.write_text(json.dumps(ATLAS_CONFIGS["tiny"]))
    open_clip.add_model_config(cfg)
    return f"open_clip:atlas-test-tiny@{weights}"


def make_siglip_dir(directory: Path, vision=(64, 2, 2, 16, 64), text=(64, 2, 2), seed: int = 0):
    """A transformers SiglipModel with random weights and a small SentencePiece tokenizer, saved to a folder.

    vision: (width, layers, heads, patch, image); text: (width, layers, heads)."""
    import io

    import sentencepiece as spm
    from transformers import SiglipConfig, SiglipModel, SiglipTokenizer

    (vw, vl, vh, patch, size), (tw, tl, th) = vision, text
    cfg = SiglipConfig(
        vision_config=dict(hidden_size=vw, num_hidden_layers=vl, num_attention_heads=vh, intermediate_size=4 * vw,
                           patch_size=patch, image_size=size),
        text_config=dict(hidden_size=tw, num_hidden_layers=tl, num_attention_heads=th, intermediate_size=4 * tw,
                         vocab_size=1000, max_position_embeddings=16, pad_token_id=1, eos_token_id=1))
    torch.manual_seed(seed)
    model = SiglipModel(cfg).eval()
    model.save_pretrained(directory)
    corpus = ["a photo of an ipod", "the word pizza", "a drawing of a spider", "a sign that says danger"] * 40
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=60,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    (directory / "spiece.model").write_bytes(buf.getvalue())
    SiglipTokenizer(vocab_file=str(directory / "spiece.model")).save_pretrained(directory)
    return model


def test_hf_siglip_directory_runs_on_transformers(tmp_path):
    pytest.importorskip("sentencepiece")
    hf = make_siglip_dir(tmp_path / "sig")
    m = load_model(f"hf:{tmp_path / 'sig'}")
    assert (m.name, m.image_size, m.mean, m.resize_mode) == ("sig", 64, (0.5, 0.5, 0.5), "squash")
    assert m.layer("visual.encoder.layers.1").kind == "tokens" and m.layer("visual.encoder.layers.1").prefix_tokens == 0
    assert m.default_layers[-1] == "visual.encoder.layers.1.mlp.activation_fn"
    x = torch.rand(2, 3, 64, 64)
    tokens = m.tokenizer(["a photo of an ipod", "the word pizza"])
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        assert torch.equal(m.encode_image(x), hf.get_image_features(pixel_values=x).pooler_output)
        assert torch.equal(m.clip.encode_text(tokens), hf.get_text_features(input_ids=tokens).pooler_output)
        from atlas.capture import capture

        got = capture(m.clip, ["visual.encoder.layers.1"], lambda: m.encode_image(x))["visual.encoder.layers.1"]
        hidden = hf.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[2]  # after layer 1
        assert torch.equal(m.layer("visual.encoder.layers.1").canonical(got), m.layer("visual.encoder.layers.1").canonical(hidden))
    assert m.crop(__import__("PIL").Image.new("RGB", (100, 30))).size == (64, 64)  # squashed, not cropped


def test_a_file_loads_to_the_model_it_came_from_without_random_init(tmp_path):
    """Loading from a file skips torch.nn.init's initializers (`no_init`): every tensor, parameters and buffers
    (open_clip's attn_mask, computed outside torch.nn.init, included), equals the source model's, the outputs are
    equal, and the initializers work again afterwards."""
    src = load_model("open_clip:RN50@random:3")
    path = tmp_path / "rn50.pt"
    torch.save(src.clip.state_dict(), path)
    got = load_model(f"open_clip:RN50@{path}")
    want = dict(src.clip.named_buffers()) | dict(src.clip.named_parameters())
    have = dict(got.clip.named_buffers()) | dict(got.clip.named_parameters())
    assert set(have) == set(want) and "attn_mask" in have
    for name, t in want.items():
        assert torch.equal(have[name], t), name
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(got.clip.encode_image(x), src.clip.encode_image(x))
    w = torch.zeros(4, 4)
    torch.nn.init.ones_(w)
    assert w.sum() == 16  # restored
    with no_init():
        torch.nn.init.zeros_(w)
    assert w.sum() == 16  # skipped inside
