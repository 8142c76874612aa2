"""Reading model checkpoints from local files, safely.

- ``.safetensors`` files hold tensors only: always safe.
- Pickled state dicts (``.pt``, ``.bin``, ``.pth``) load with ``torch.load(weights_only=True)``: a pickle that
  would build anything but tensors and containers (run code) is refused, never executed.
- TorchScript archives (OpenAI's released ``RN50x4.pt`` and friends) are *programs*: ``torch.jit.load`` runs
  their code.  atlas opens them only when the caller passes ``trust=True`` (``--trust-checkpoint``), or after
  the user converted them once with ``atlas convert``.
- Hugging Face ``CLIPModel`` directories (``config.json`` + ``model.safetensors``) are converted to open_clip's
  module layout, so a ViT-B/32 has the same layer names whichever format it came in.

Where weights are expected in a cache (OpenAI's ``~/.cache/clip``, Hugging Face's hub cache used by
open_clip), `cached_weights` says which file to fetch and where to put it when it is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .errors import ModelError

OPENAI_ARCHS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding serialized code (``code/`` and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for n in names)


def read_state_dict(path: Path, trust: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling code (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; check the path after '@' in the model spec")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if is_torchscript(path):
        if not trust:
            raise ModelError(
                f"{path} is a TorchScript archive: it contains code, which atlas runs only if you trust the file. "
                "Pass --trust-checkpoint (trust_checkpoint=True), or convert it once to tensors-only safetensors: "
                f"atlas convert {path} --out {path.with_suffix('.safetensors')} --trust-checkpoint")
        return {k: v for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that wants to import or call something, or not a checkpoint at all
        raise ModelError(f"refused to load {path}: it is not a plain tensor checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:160]}). atlas never unpickles code from user files; "
                         "if you made this file yourself, save its state_dict() or a .safetensors file") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def build_openai(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An open_clip CLIP (QuickGELU, fp32) shaped after an OpenAI state dict's keys and shapes."""
    from open_clip.model import build_model_from_openai_state_dict

    state = dict(state)
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights
        state.pop(key, None)
    try:
        model = build_model_from_openai_state_dict(dict(state), quick_gelu=True, cast_dtype=None).float()  # it pops keys
        # open_clip's builder loads the weights into fp16 copies; load them again, so fp32 files stay exact
        model.load_state_dict(state)
        return model
    except (KeyError, RuntimeError, AssertionError) as e:
        raise ModelError(f"this is not an OpenAI CLIP checkpoint ({type(e).__name__}: {str(e)[:200]}); "
                         "for open_clip checkpoints use open_clip:ARCH@FILE") from e


# --- caches -------------------------------------------------------------------------------------------


def openai_url(arch: str) -> str:
    from open_clip.pretrained import get_pretrained_cfg

    return get_pretrained_cfg(arch, "openai").get("url", "")


def openai_cache_path(arch: str) -> Path:
    """Where OpenAI's clip package keeps a model: ~/.cache/clip/<file name of its URL>."""
    url = openai_url(arch)
    name = url.rsplit("/", 1)[-1] if url else f"{arch}.pt"
    return Path(os.environ.get("ATLAS_CLIP_CACHE", Path.home() / ".cache" / "clip")) / name


def openai_expected_sha(arch: str) -> str:
    """OpenAI's URLs carry the sha256 of the file as their second-to-last path component."""
    parts = openai_url(arch).split("/")
    return parts[-2] if len(parts) > 2 and len(parts[-2]) == 64 else ""


def open_clip_cached(arch: str, tag: str) -> Path:
    """A pretrained open_clip checkpoint already in the Hugging Face cache, or a ModelError saying what to get."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(arch)
        raise ModelError(f"open_clip knows no pretrained weights {arch!r} tagged {tag!r}"
                         + (f"; tags for {arch}: {', '.join(tags)}" if tags else "")
                         + "; or give a file: open_clip:ARCH@/path/to/weights")
    parts = cfg.get("hf_hub", "").strip("/").split("/")  # "org/repo/" or "org/repo/file name"
    repo = "/".join(parts[:2]) if len(parts) >= 2 else ""
    names = ("/".join(parts[2:]),) if len(parts) > 2 else ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
    if repo:
        from huggingface_hub import try_to_load_from_cache

        for name in names:
            found = try_to_load_from_cache(repo, name)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    legacy = Path.home() / ".cache" / "clip" / (cfg.get("url", "").rsplit("/", 1)[-1] or "-")
    if legacy.is_file():
        return legacy
    from huggingface_hub.constants import HF_HUB_CACHE

    get = f"https://huggingface.co/{repo}/blob/main/{names[0]}" if repo else cfg.get("url", "")
    how = (f"`huggingface-cli download {repo} {names[0]}` on a machine with network and copy its cache "
           f"({HF_HUB_CACHE}) here" if repo else f"save it as {legacy}")
    raise ModelError(f"the weights of open_clip:{arch}@{tag} are not on this machine. Get {get}: {how}; or put "
                     f"the file anywhere and use open_clip:{arch}@/path/to/file")


def cached_status() -> list[tuple[str, str]]:
    """(spec, where found or 'not found') for OpenAI's released models, then every open_clip pretrained
    checkpoint found in the Hugging Face cache."""
    from .openclip import import_open_clip

    open_clip = import_open_clip()

    out = []
    for arch in OPENAI_ARCHS:
        p = openai_cache_path(arch)
        out.append((f"openai:{arch}", str(p) if p.is_file() else f"not found (would be {p})"))
    for arch, tag in open_clip.list_pretrained():
        try:
            out.append((f"open_clip:{arch}@{tag}", str(open_clip_cached(arch, tag))))
        except ModelError:
            pass
    return out


# --- Hugging Face ---------------------------------------------------------------------------------------


HF_TYPES = ("clip", "siglip")


def hf_config(directory: Path) -> dict:
    """config.json of a Hugging Face model directory, checked to be a model type atlas reads."""
    cfg_path = Path(directory) / "config.json"
    if not cfg_path.is_file():
        raise ModelError(f"{directory} is not a Hugging Face model directory (no config.json); "
                         "save one with model.save_pretrained(directory)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("model_type") not in HF_TYPES:
        raise ModelError(f"{directory}: model_type {cfg.get('model_type')!r} is not supported; atlas reads "
                         f"{', '.join(HF_TYPES)} (CLIPModel, SiglipModel)")
    return cfg


def read_hf_clip(directory: Path) -> tuple[torch.nn.Module, dict, Path]:
    """An HF ``CLIPModel`` directory -> (open_clip CLIP with the same weights, its config, the weights file)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    directory = Path(directory)
    cfg = hf_config(directory)
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise ModelError(f"{directory} holds no model.safetensors: save with safe_serialization=True (the "
                         "default), so that no pickle has to be opened")
    hf: dict[str, torch.Tensor] = {}
    for f in files:
        hf.update(read_state_dict(f))
    v, t = cfg["vision_config"], cfg["text_config"]
    for tower, c in (("vision", v), ("text", t)):
        if c.get("hidden_act", "quick_gelu") not in ("quick_gelu", "gelu"):
            raise ModelError(f"{directory}: {tower} activation {c.get('hidden_act')!r} is not supported")
    quick = v.get("hidden_act", "quick_gelu") == "quick_gelu"
    vcfg = CLIPVisionCfg(layers=v["num_hidden_layers"], width=v["hidden_size"], patch_size=v["patch_size"],
                         image_size=v["image_size"], head_width=v["hidden_size"] // v["num_attention_heads"],
                         mlp_ratio=v["intermediate_size"] / v["hidden_size"])
    tcfg = CLIPTextCfg(context_length=t["max_position_embeddings"], vocab_size=t["vocab_size"],
                       width=t["hidden_size"], heads=t["num_attention_heads"], layers=t["num_hidden_layers"],
                       mlp_ratio=t["intermediate_size"] / t["hidden_size"])
    model = CLIP(cfg.get("projection_dim", 512), vcfg, tcfg, quick_gelu=quick)
    model.load_state_dict(hf_clip_to_open_clip(hf), strict=True)
    return model.float(), cfg, files[0]


def _blocks(hf: dict[str, torch.Tensor], src: str, dst: str) -> dict[str, torch.Tensor]:
    out = {}
    n = len({k.split(".")[3] for k in hf if k.startswith(src + ".")})
    for i in range(n):
        a, b = f"{src}.{i}.", f"{dst}.{i}."
        q, k, v = (hf[a + f"self_attn.{p}_proj.weight"] for p in "qkv")
        qb, kb, vb = (hf[a + f"self_attn.{p}_proj.bias"] for p in "qkv")
        out[b + "attn.in_proj_weight"] = torch.cat([q, k, v])
        out[b + "attn.in_proj_bias"] = torch.cat([qb, kb, vb])
        for hname, oname in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[b + oname + ".weight"] = hf[a + hname + ".weight"]
            out[b + oname + ".bias"] = hf[a + hname + ".bias"]
    return out


def hf_clip_to_open_clip(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (and fuse q/k/v, transpose projections of) an HF CLIPModel state dict to open_clip's CLIP."""
    sd = {
        "logit_scale": hf["logit_scale"],
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": hf["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].t().contiguous(),
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
    }
    sd.update(_blocks(hf, "text_model.encoder.layers", "transformer.resblocks"))
    sd.update(_blocks(hf, "vision_model.encoder.layers", "visual.transformer.resblocks"))
    return sd


def convert(source: Path, out: Path, trust: bool = False) -> int:
    """Write the tensors of ``source`` to ``out`` as safetensors (atomically); returns how many."""
    from safetensors.torch import save_file

    if out.suffix != ".safetensors":
        raise ModelError(f"--out {out} must end in .safetensors")
    state = {k: v.contiguous() for k, v in read_state_dict(source, trust=trust).items()}
    tmp = out.with_name(out.name + ".tmp")
    save_file(state, str(tmp), metadata={"converted_from": source.name})
    os.replace(tmp, out)
    return len(state)


@contextmanager
def no_init() -> Iterator[None]:
    """Skip torch.nn.init's random initializers while a model whose every weight is then loaded is built (a third
    of RN50x4's load time, more for larger models).  Safe because load_model refuses a file that leaves any
    parameter or persistent buffer missing; what modules compute outside torch.nn.init (open_clip's attn_mask) is
    computed as usual."""
    names = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
             "xavier_normal_", "orthogonal_", "constant_", "ones_", "zeros_", "eye_", "dirac_", "sparse_")
    saved = {n: getattr(torch.nn.init, n) for n in names if hasattr(torch.nn.init, n)}
    try:
        for n in saved:
            setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)
