"""The one model registry: a spec string becomes a loaded CLIP with its layer table.

Spec grammar: ``FAMILY:ARCH[@WEIGHTS]``

- ``open_clip:RN50@/path/to/weights.pt`` an open_clip architecture with a local checkpoint
  (``.safetensors``, or a ``.pt``/``.bin`` state dict read with ``weights_only=True``);
- ``open_clip:ViT-B-32@random:3`` the same architecture with seeded random weights (for tests);
- ``openai:RN50x4[@/path/RN50x4.pt]`` OpenAI's released models (state dicts; TorchScript archives only with
  ``trust_checkpoint``); without ``@`` the file is looked up in OpenAI's cache, ``~/.cache/clip``;
- ``open_clip:ViT-B-32@laion2b_s34b_b79k`` an open_clip pretrained tag, looked up in the Hugging Face cache;
- ``hf:/path/to/dir`` a Hugging Face ``CLIPModel`` directory (``save_pretrained``), converted to open_clip;
- ``atlas:conceptclip`` (the default) atlas's own CLIP trained on Concept World, shipped in data/ and
  checked against its sha256; ``atlas:tiny@random:0`` a smaller configuration with random weights (tests).

A layer is named by its ``named_modules()`` path (``visual.layer4.0``).  Which modules are offered, and
how their outputs are laid out, is decided here from the module types, never inside ``forward``.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .capture import hooked
from .checkpoints import (OPENAI_ARCHS, build_openai, cached_status, hf_config, is_torchscript, no_init,  # noqa: F401
                          open_clip_cached, openai_cache_path, openai_expected_sha, openai_url, read_hf_clip,
                          read_state_dict, sha256_file)
from .data.pixels import crop_box
from .errors import ConfigError, ModelError
from .hf import read_hf_siglip
from .names import unit_id
from .openclip import import_open_clip, needs_transformers
from .resources import resource_dir

DEFAULT_SPEC = "atlas:conceptclip"
FAMILIES = ("atlas", "open_clip", "openai", "hf")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Weights that ship with atlas (in data/), by architecture: file name and sha256.  ``atlas:ARCH`` with no
# ``@WEIGHTS`` loads them through the same path as any local checkpoint, after checking the hash.
SHIPPED = {
    "conceptclip": ("conceptclip.safetensors", "0a1bfc80c8f5f0007f87e595cd7859e44d7dac051086984cd1d020194c56af17"),
}

# atlas's own open_clip configurations.  "tiny": a ModifiedResNet CLIP small enough to train on
# synthetic data in minutes and to mine and visualize on a laptop CPU.
ATLAS_CONFIGS: dict[str, dict] = {
    "tiny": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
    # the shipped Concept World model (atlas train --arch conceptclip): a wider image tower, a narrower text
    # tower (its 49,408-token embedding dominates the file size; captions are short and simple)
    "conceptclip": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 32, "head_width": 32},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    arch: str
    weights: str | None = None  # a file path, "random:<seed>", or None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        if text in ("default", "", None):
            text = DEFAULT_SPEC
        m = re.fullmatch(r"([a-z_]+):([^@]+)(?:@(.+))?", text.strip())
        if not m:
            raise ModelError(f"model spec {text!r} is not of the form FAMILY:ARCH[@WEIGHTS], "
                             f"e.g. 'open_clip:RN50@/path/RN50.pt' or '{DEFAULT_SPEC}'")
        family, arch, weights = m.groups()
        if family not in FAMILIES:
            raise ModelError(f"unknown model family {family!r} in {text!r}; known: {', '.join(FAMILIES)}")
        return cls(family, arch, weights)

    @property
    def random_seed(self) -> int | None:
        if self.weights is None or not self.weights.startswith("random"):
            return None
        _, _, seed = self.weights.partition(":")
        if not seed.isdigit() and seed != "":
            raise ModelError(f"random weights take an integer seed ('@random:0'), got '@{self.weights}'")
        return int(seed or 0)

    def __str__(self) -> str:
        return f"{self.family}:{self.arch}" + (f"@{self.weights}" if self.weights else "")


@dataclass(frozen=True)
class LayerInfo:
    """A hookable layer.  Activations are handed to atlas in the canonical layout [batch, units, h, w]:
    conv layers as they are; token layers as their patch tokens on the patch grid (prefix tokens such
    as CLS are left out of the map)."""

    name: str
    kind: str  # "conv": units are channels | "tokens": units are residual-stream dimensions
    units: int
    grid: tuple[int, int]
    layout: str  # "nchw" or "nlc" (batch-first tokens)
    prefix_tokens: int = 0
    # the module whose *input* is this layer's pre-activation (a Bottleneck's residual sum before its
    # final ReLU, Microscope's "Add" node), or "" if the layer output is not followed by such a ReLU
    pre_activation: str = ""

    def canonical(self, out: torch.Tensor) -> torch.Tensor:
        """A module output -> [batch, units, h, w] (a view where possible; never modified in place)."""
        if isinstance(out, tuple):  # transformers' layers may return (hidden_states, ...)
            out = out[0]
        if self.layout == "nchw":
            return out
        n, length, c = out.shape  # [batch, tokens, width]
        patches = out[:, self.prefix_tokens:, :]
        return patches.transpose(1, 2).reshape(n, c, *self.grid)

    def cls(self, out: torch.Tensor) -> torch.Tensor | None:
        """The CLS token of a token layer's output: [batch, units]; None for conv layers."""
        out = out[0] if isinstance(out, tuple) else out
        return out[:, 0, :] if self.layout == "nlc" and self.prefix_tokens else None


# Microscope and the paper's Lucid code name ResNet blocks after TensorFlow graph nodes:
# image_block_4_5_Add_6_0 (Microscope) or image_block_4/5/Add_6 ... (Lucid) is stage 4, block 5's residual sum,
# open_clip's module visual.layer4.5 (atlas stores that block's output, ReLU(sum); docs/models.md).
_ALIASES = (
    (re.compile(r"image_block_(\d+)[_/](\d+)(?:[_/](?:add|Add)(?:_\d+)?)?(?:[_/](?:Relu|relu)(?:_\d+)?)?(?:[_/:]0)?"),
     "visual.layer{0}.{1}"),
)


def alias(name: str) -> str | None:
    """The canonical layer name of a Microscope / Lucid alias, or None if ``name`` is no alias."""
    for pattern, template in _ALIASES:
        m = pattern.fullmatch(name)
        if m:
            return template.format(*m.groups())
    return None


def _hookable(name: str, module: nn.Module) -> str | None:
    """The kind of layer a module is offered as, by its type: the registry's one special-case table.

    conv:   a ResNet Bottleneck's output; a neuron is a channel, its map the block's spatial grid.
    tokens: a transformer block's output, the residual stream; a neuron is one of its dimensions.
    mlp:    the activation inside a transformer block's MLP; a neuron is one hidden unit (4 x width).
    Token layers are mapped over the patch grid; the CLS token is kept apart (pooled_cls in the store)."""
    from open_clip.modified_resnet import Bottleneck
    from open_clip.transformer import ResidualAttentionBlock

    if isinstance(module, Bottleneck):
        return "conv"
    if isinstance(module, ResidualAttentionBlock):
        return "tokens"
    if name.endswith(".mlp.gelu") and ".resblocks." in name:
        return "mlp"
    # transformers' towers (hf.py), by class name so that transformers need not be installed
    if type(module).__name__ in ("SiglipEncoderLayer", "CLIPEncoderLayer"):
        return "tokens"
    if name.endswith(".mlp.activation_fn") and "encoder.layers." in name:
        return "mlp"
    return None


class LoadedModel:
    """A CLIP model with what atlas needs: towers, tokenizer, preprocessing and the layer table."""

    def __init__(self, spec: ModelSpec, clip: nn.Module, tokenizer, weights_sha256: str,
                 mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD, resize_mode: str = "shortest",
                 crop_rule: str = "round"):
        self.spec = spec
        base = Path(spec.arch.rstrip("/")).name if spec.family == "hf" else spec.arch  # hf: the directory's name
        self.name = re.sub(r"[^A-Za-z0-9._-]", "-", base).lstrip(".-") or "model"
        self.clip = clip.eval()
        pos = getattr(clip, "positional_embedding", None)  # open_clip text tower: [context, width]
        if pos is not None and getattr(tokenizer, "context_length", None) not in (None, pos.shape[0]):
            tokenizer = _tokenizer(pos.shape[0])  # a checkpoint with its own context length (e.g. small tests)
        self.tokenizer = tokenizer
        self.weights_sha256 = weights_sha256
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.resize_mode = resize_mode  # "shortest": resize the short side, centre-crop; "squash": resize both
        self.crop_rule = crop_rule  # the centre crop's offset: "round" (torchvision, open_clip), "floor" (HF's processor)
        self.layers: dict[str, LayerInfo] = _layer_table(self)

    # --- towers -------------------------------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def to(self, device: str | torch.device) -> "LoadedModel":
        self.clip.to(device)
        return self

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, S, S] normalized pixels -> [batch, embed] image embeddings."""
        return self.clip.encode_image(pixels)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """list of strings -> [len(texts), embed] text embeddings."""
        tokens = self.tokenizer(list(texts)).to(self.device)
        return self.clip.encode_text(tokens)

    # --- preprocessing ------------------------------------------------------------------------
    def crop(self, image: Image.Image) -> Image.Image:
        """What the model sees of an RGB image: its own validation transform's resize and centre crop
        (`atlas.data.pixels.crop_box`: open_clip's and torchvision's geometry, PIL's bicubic)."""
        s = self.image_size
        nw, nh, left, top = crop_box(*image.size, s, self.resize_mode, self.crop_rule)
        if (nw, nh) != image.size:
            image = image.resize((nw, nh), Image.BICUBIC)
        return image.crop((left, top, left + s, top + s))

    def to_tensor(self, crop: Image.Image) -> torch.Tensor:
        """A cropped RGB image -> [3, S, S] float tensor in [0, 1]."""
        arr = np.asarray(crop, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[batch, 3, S, S] in [0, 1] -> CLIP-normalized pixels (differentiable)."""
        mean, std = self._norm_constants(x01.device, x01.dtype)
        return (x01 - mean) / std

    def _norm_constants(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """[1, 3, 1, 1] mean and std, made once per device and dtype: building them from Python numbers on a
        GPU is a host-to-device copy that waits for the work queued before it (a sync per batch)."""
        cache = self.__dict__.setdefault("_norm_cache", {})
        key = (str(device), dtype)
        if key not in cache:
            cache[key] = tuple(torch.tensor(v, device=device, dtype=dtype).view(1, 3, 1, 1)
                               for v in (self.mean, self.std))
        return cache[key]

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> [3, S, S] normalized tensor, as open_clip's validation transform."""
        return self.normalize(self.to_tensor(self.crop(image))[None])[0]

    # --- layers -------------------------------------------------------------------------------
    def layer(self, name: str) -> LayerInfo:
        """A layer by its canonical name or an alias (Microscope / Lucid names, see `alias`)."""
        name = alias(name) or name
        if name not in self.layers:
            close = difflib.get_close_matches(name, list(self.layers), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelError(f"model {self.name} has no hookable layer {name!r}{hint} "
                             f"(`atlas layers {self.spec}` lists them)")
        return self.layers[name]

    @property
    def default_layers(self) -> tuple[str, ...]:
        """The last block of each stage (ResNet); the MLP neurons of the blocks at 1/4, 1/2, 3/4 and all of
        the depth (ViT), the transformer's counterpart of the four ResNet stages."""
        names = list(self.layers)
        conv = [n for n in names if self.layers[n].kind == "conv"]
        if conv:  # visual.layerS.B: keep the last B of each stage S
            last: dict[str, str] = {}
            for n in conv:
                last[n.rsplit(".", 1)[0]] = n
            return tuple(last.values())
        mlp = [n for n in names if self.layers[n].kind == "mlp"] or names
        return tuple(mlp[i] for i in sorted({max(0, len(mlp) * q // 4 - 1) for q in (1, 2, 3, 4)}))

    def neuron_id(self, layer: str, unit: int) -> str:
        return unit_id(self.name, layer, unit)


def _layer_table(model: LoadedModel) -> dict[str, LayerInfo]:
    """Find hookable modules of the image tower and their output shapes with one dry forward pass."""
    visual = model.clip.visual
    kinds = {f"visual.{n}": _hookable(n, m) for n, m in visual.named_modules() if n}
    kinds = {n: k for n, k in kinds.items() if k}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: torch.Tensor) -> None:
        out = out[0] if isinstance(out, tuple) else out
        shapes[name] = tuple(out.shape[1:])

    x = torch.zeros(1, 3, model.image_size, model.image_size, device=model.device)
    with torch.no_grad(), hooked(model.clip, list(kinds), record):
        model.clip.encode_image(x)
    table: dict[str, LayerInfo] = {}
    for name, kind in kinds.items():
        shape = shapes[name]
        if kind == "conv":  # [C, H, W]; a Bottleneck ends in act3 = ReLU(residual sum)
            table[name] = LayerInfo(name, kind, shape[0], (shape[1], shape[2]), "nchw", 0, f"{name}.act3")
        else:  # [tokens, width] (residual stream) or [tokens, 4 * width] (MLP), batch first
            length, width = shape
            side = int(np.sqrt(length))  # patch grid; the remaining tokens are prefix (CLS, registers)
            prefix = length - side * side
            table[name] = LayerInfo(name, kind, width, (side, side), "nlc", prefix)
    return table


def sha256_state(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, dtypes, shapes and bytes (for random-weight models)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def build_towers(spec: ModelSpec) -> tuple[nn.Module, object]:
    open_clip = import_open_clip(transformers=spec.family == "open_clip" and needs_transformers(spec.arch))

    if spec.family == "atlas":
        if spec.arch not in ATLAS_CONFIGS:
            raise ModelError(f"unknown atlas model {spec.arch!r}; known: {', '.join(ATLAS_CONFIGS)}")
        cfg = ATLAS_CONFIGS[spec.arch]
        clip = open_clip.model.CLIP(**cfg)
        ctx = cfg["text_cfg"]["context_length"]
        return clip, open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    if spec.family == "openai":  # OpenAI's models, trained with QuickGELU
        arch = _openai_arch(spec.arch)
        with _quiet_open_clip():
            clip = open_clip.create_model(arch, pretrained=None, load_weights=False, force_quick_gelu=True)
        return clip, _tokenizer(77)
    if spec.family == "hf":
        raise ModelError("hf:DIRECTORY specs load a saved directory; random weights are not offered for them")
    if spec.arch not in open_clip.list_models():
        close = difflib.get_close_matches(spec.arch, open_clip.list_models(), n=3)
        raise ModelError(f"open_clip has no architecture {spec.arch!r}"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    with _quiet_open_clip():
        clip = open_clip.create_model(spec.arch, pretrained=None, load_weights=False)
    return clip, open_clip.get_tokenizer(spec.arch)


class _quiet_open_clip:
    """open_clip logs a warning for every model it builds without weights; atlas loads them itself."""

    def __enter__(self) -> None:
        import logging

        self.logger, self.level = logging.getLogger(), logging.getLogger().level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def _lively_init(clip: nn.Module) -> None:
    """Random atlas models: Kaiming-normal convs and unit bn3 gains, so activations keep their scale
    through depth (open_clip's CLIP init zeroes bn3 and shrinks every block's output ~3x).  open_clip
    random models keep open_clip's own init, for parity with it."""
    for name, module in clip.visual.named_modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif name.endswith("bn3"):
            nn.init.ones_(module.weight)


def resolve_device(device: str) -> torch.device:
    """"auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or "cuda:N" -> a torch device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"--device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def load_model(spec: str | ModelSpec = DEFAULT_SPEC, device: str | torch.device = "cpu",
               trust_checkpoint: bool = False) -> LoadedModel:
    """Build a model from its spec and load its weights (see the module docstring for the grammar).

    ``device``: a torch device, or "auto" (CUDA when there is a GPU, else the CPU; `resolve_device`).
    ``trust_checkpoint`` allows opening TorchScript archives, which run code (atlas/checkpoints.py)."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    device = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    if spec.random_seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.random_seed)
            clip, tokenizer = build_towers(spec)
            if spec.family == "atlas":
                _lively_init(clip)
        return LoadedModel(spec, clip.to(device), tokenizer, sha256_state(clip.state_dict()))
    if spec.family == "hf":
        directory = Path(spec.arch).expanduser()
        if hf_config(directory)["model_type"] == "siglip":

            towers, tokenizer, mean, std, path = read_hf_siglip(directory, hf_config(directory))
            return LoadedModel(spec, towers.to(device), tokenizer, sha256_file(path), mean, std, "squash")
        clip, cfg, path = read_hf_clip(directory)
        tokenizer = _tokenizer(cfg["text_config"]["max_position_embeddings"])
        # Hugging Face's CLIPImageProcessor: the same resize, a centre crop at (n - size) // 2
        return LoadedModel(spec, clip.to(device), tokenizer, sha256_file(path), crop_rule="floor")
    path, expected = _weights_path(spec)
    sha = sha256_file(path) if path.is_file() else ""
    if expected and sha != expected:
        raise ModelError(f"weights file {path} has sha256 {sha[:16]}…, but {spec} must have {expected[:16]}…: "
                         "the file is corrupted or was replaced; restore it (atlas's own weights ship with "
                         "atlas: reinstall it)")
    state = read_state_dict(path, trust=trust_checkpoint)
    if spec.family == "openai":
        return LoadedModel(spec, build_openai(state).to(device), _tokenizer(77), sha)
    with torch.random.fork_rng(devices=[]), no_init():
        clip, tokenizer = build_towers(spec)
    missing, unexpected = clip.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise ModelError(f"weights file {path} does not fit {spec.family}:{spec.arch}: "
                         f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
                         "check that the architecture in the spec matches the checkpoint "
                         "(OpenAI's released files load with openai:ARCH@FILE)")
    return LoadedModel(spec, clip.to(device), tokenizer, sha)


def _tokenizer(context_length: int):
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def _weights_path(spec: ModelSpec) -> tuple[Path, str]:
    """The weights file a spec names (or the cache where its family keeps it) and its expected sha256."""
    if spec.family == "atlas" and spec.weights is None:
        if spec.arch not in SHIPPED:
            raise ModelError(f"atlas:{spec.arch} ships no weights: append '@/path/to/weights' or '@random:SEED'")

        name, sha = SHIPPED[spec.arch]
        return resource_dir("data") / name, sha
    if spec.family == "openai" and spec.weights is None:
        arch = _openai_arch(spec.arch)
        path = openai_cache_path(arch)
        if not path.is_file():

            raise ModelError(f"OpenAI's {arch} weights are not on this machine: get {openai_url(arch)} and put it "
                             f"at {path} (OpenAI's clip cache), or anywhere and use openai:{arch}@/path/to/file. "
                             "OpenAI's files are TorchScript archives: load them with --trust-checkpoint, or "
                             "convert them once with `atlas convert FILE --out FILE.safetensors --trust-checkpoint`")
        return path, openai_expected_sha(arch)
    if spec.family == "open_clip" and spec.weights and not _looks_like_path(spec.weights):
        return open_clip_cached(spec.arch, spec.weights), ""
    if spec.weights is None:
        raise ModelError(f"model spec {spec} names no weights: append '@/path/to/weights' (a .safetensors or "
                         f"state-dict file), '@TAG' (open_clip's pretrained tags) or '@random:SEED'")
    return Path(spec.weights).expanduser(), ""


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or "." in weights or Path(weights).exists()


def _openai_arch(arch: str) -> str:
    """OpenAI's names (ViT-B/32) and open_clip's (ViT-B-32) both work."""

    name = arch.replace("/", "-")
    if name not in OPENAI_ARCHS:
        close = difflib.get_close_matches(name, OPENAI_ARCHS, n=3)
        raise ModelError(f"OpenAI released no model {arch!r}; they are: {', '.join(OPENAI_ARCHS)}"
                         + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return name


def model_status(show_all: bool = False) -> list[tuple[str, str]]:
    """(spec, where its weights are) for atlas's models, OpenAI's releases and open_clip's architectures."""

    out = [(f"atlas:{a}", "shipped with atlas" if a in SHIPPED else "no weights (use @random:SEED or @FILE)")
           for a in ATLAS_CONFIGS]
    out += cached_status()
    if show_all:
        open_clip = import_open_clip()

        out += [(f"open_clip:{a}", "needs @FILE or @TAG") for a in open_clip.list_models()]
    return out


def list_models() -> list[str]:
    """Known specs (without weights): atlas's own and every open_clip architecture."""
    open_clip = import_open_clip()

    return [f"atlas:{a}" for a in ATLAS_CONFIGS] + [f"open_clip:{a}" for a in open_clip.list_models()]
