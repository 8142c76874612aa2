"""The one model registry: a spec string becomes a loaded CLIP with its layer table.

Spec grammar: ``FAMILY:ARCH[@WEIGHTS]``

- ``open_clip:RN50@/path/to/weights.pt`` an open_clip architecture with a local checkpoint
  (``.safetensors``, or a ``.pt``/``.bin`` state dict read with ``weights_only=True``);
- ``open_clip:ViT-B-32@random:3`` the same architecture with seeded random weights (for tests);
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

DEFAULT_SPEC = "atlas:conceptclip"
FAMILIES = ("atlas", "open_clip")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Weights that ship with atlas (in data/), by architecture: file name and sha256.  ``atlas:ARCH`` with no
# ``@WEIGHTS`` loads them through the same path as any local checkpoint, after checking the hash.
SHIPPED = {
    "conceptclip": ("conceptclip.safetensors", "54012d6a9b6b9adb1a34f7adb25851bf132f9e379ca2a850b8ea15a986097356"),
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


class ModelError(ValueError):
    """A model spec that cannot be parsed or loaded; the message says what to do."""


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
        if self.layout == "nchw":
            return out
        n, length, c = out.shape  # [batch, tokens, width]
        patches = out[:, self.prefix_tokens:, :]
        return patches.transpose(1, 2).reshape(n, c, *self.grid)


def _hookable(module: nn.Module) -> str | None:
    """The kind of layer a module is offered as, by its type: the registry's one special-case table."""
    from open_clip.modified_resnet import Bottleneck
    from open_clip.transformer import ResidualAttentionBlock

    if isinstance(module, Bottleneck):
        return "conv"
    if isinstance(module, ResidualAttentionBlock):
        return "tokens"
    return None


class LoadedModel:
    """A CLIP model with what atlas needs: towers, tokenizer, preprocessing and the layer table."""

    def __init__(self, spec: ModelSpec, clip: nn.Module, tokenizer, weights_sha256: str):
        self.spec = spec
        self.name = re.sub(r"[^A-Za-z0-9._-]", "-", spec.arch)
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.weights_sha256 = weights_sha256
        size = clip.visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
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
        """Resize the shorter side to image_size (bicubic) and centre-crop: what the model sees."""
        s = self.image_size
        w, h = image.size
        scale = s / min(w, h)
        nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BICUBIC)
        left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
        return image.crop((left, top, left + s, top + s))

    def to_tensor(self, crop: Image.Image) -> torch.Tensor:
        """A cropped RGB image -> [3, S, S] float tensor in [0, 1]."""
        arr = np.asarray(crop, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """[batch, 3, S, S] in [0, 1] -> CLIP-normalized pixels (differentiable)."""
        mean = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> [3, S, S] normalized tensor, as open_clip's validation transform."""
        return self.normalize(self.to_tensor(self.crop(image))[None])[0]

    # --- layers -------------------------------------------------------------------------------
    def layer(self, name: str) -> LayerInfo:
        if name not in self.layers:
            close = difflib.get_close_matches(name, list(self.layers), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ModelError(f"model {self.name} has no hookable layer {name!r}{hint} "
                             f"(`atlas layers {self.spec}` lists them)")
        return self.layers[name]

    @property
    def default_layers(self) -> tuple[str, ...]:
        """The last block of each stage (ResNet) or every block (ViT, at most 12)."""
        names = list(self.layers)
        conv = [n for n in names if self.layers[n].kind == "conv"]
        if conv:  # visual.layerS.B: keep the last B of each stage S
            last: dict[str, str] = {}
            for n in conv:
                last[n.rsplit(".", 1)[0]] = n
            return tuple(last.values())
        return tuple(names[-12:])

    def neuron_id(self, layer: str, unit: int) -> str:
        return f"{self.name}/{layer}/{unit}"


def _layer_table(model: LoadedModel) -> dict[str, LayerInfo]:
    """Find hookable modules of the image tower and their output shapes with one dry forward pass."""
    from .capture import hooked

    visual = model.clip.visual
    kinds = {f"visual.{n}": _hookable(m) for n, m in visual.named_modules() if n}
    kinds = {n: k for n, k in kinds.items() if k}
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str, out: torch.Tensor) -> None:
        shapes[name] = tuple(out.shape[1:])

    x = torch.zeros(1, 3, model.image_size, model.image_size, device=model.device)
    with torch.no_grad(), hooked(model.clip, list(kinds), record):
        model.clip.encode_image(x)
    table: dict[str, LayerInfo] = {}
    for name, kind in kinds.items():
        shape = shapes[name]
        if kind == "conv":  # [C, H, W]; a Bottleneck ends in act3 = ReLU(residual sum)
            table[name] = LayerInfo(name, kind, shape[0], (shape[1], shape[2]), "nchw", 0, f"{name}.act3")
        else:  # [tokens, width], batch first
            length, width = shape
            side = int(np.sqrt(length))  # patch grid; the remaining tokens are prefix (CLS, registers)
            prefix = length - side * side
            table[name] = LayerInfo(name, kind, width, (side, side), "nlc", prefix)
    return table


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_state(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, dtypes, shapes and bytes (for random-weight models)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _build(spec: ModelSpec) -> tuple[nn.Module, object]:
    import open_clip

    if spec.family == "atlas":
        if spec.arch not in ATLAS_CONFIGS:
            raise ModelError(f"unknown atlas model {spec.arch!r}; known: {', '.join(ATLAS_CONFIGS)}")
        cfg = ATLAS_CONFIGS[spec.arch]
        clip = open_clip.model.CLIP(**cfg)
        ctx = cfg["text_cfg"]["context_length"]
        return clip, open_clip.tokenizer.SimpleTokenizer(context_length=ctx)
    if spec.arch not in open_clip.list_models():
        close = difflib.get_close_matches(spec.arch, open_clip.list_models(), n=3)
        raise ModelError(f"open_clip has no architecture {spec.arch!r}"
                         + (f"; did you mean {', '.join(close)}?" if close else ""))
    clip = open_clip.create_model(spec.arch, pretrained=None, load_weights=False)
    return clip, open_clip.get_tokenizer(spec.arch)


def _lively_init(clip: nn.Module) -> None:
    """Random atlas models: Kaiming-normal convs and unit bn3 gains, so activations keep their scale
    through depth (open_clip's CLIP init zeroes bn3 and shrinks every block's output ~3x).  open_clip
    random models keep open_clip's own init, for parity with it."""
    for name, module in clip.visual.named_modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif name.endswith("bn3"):
            nn.init.ones_(module.weight)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling code: safetensors, or torch.load(weights_only)."""
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist; check the path after '@' in the model spec")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle that wants code, TorchScript archive, not a checkpoint at all
        raise ModelError(f"cannot read weights file {path} safely ({type(e).__name__}: {str(e)[:200]}); "
                         "atlas loads only plain state dicts (weights_only=True) and .safetensors") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"weights file {path} holds a {type(obj).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_model(spec: str | ModelSpec = DEFAULT_SPEC, device: str | torch.device = "cpu") -> LoadedModel:
    """Build a model from its spec and load its weights (see the module docstring for the grammar)."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    seed = spec.random_seed
    expected_sha = None
    if spec.weights is None and spec.family == "atlas" and spec.arch in SHIPPED:
        from .resources import resource_dir

        file_name, expected_sha = SHIPPED[spec.arch]
        weights_path = resource_dir("data") / file_name
    elif spec.weights is None:
        raise ModelError(f"model spec {spec} names no weights: append '@/path/to/weights' "
                         f"(a .safetensors or state-dict .pt file) or '@random:SEED' for random weights")
    else:
        weights_path = Path(spec.weights).expanduser()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed or 0)
        clip, tokenizer = _build(spec)
        if seed is not None and spec.family == "atlas":
            _lively_init(clip)
    if seed is not None:
        sha = sha256_state(clip.state_dict())
    else:
        path = weights_path
        sha = sha256_file(path) if path.is_file() else ""
        if expected_sha and sha != expected_sha:
            raise ModelError(f"weights file {path} has sha256 {sha[:16]}…, but {spec} ships with "
                             f"{expected_sha[:16]}…: the file is corrupted or was replaced; reinstall atlas "
                             "(or restore the file from the repository)")
        state = read_state_dict(path)
        missing, unexpected = clip.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing or unexpected:
            raise ModelError(f"weights file {path} does not fit {spec.family}:{spec.arch}: "
                             f"{len(missing)} missing keys (e.g. {missing[:3]}), "
                             f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); "
                             "check that the architecture in the spec matches the checkpoint")
    return LoadedModel(spec, clip.to(device), tokenizer, sha)


def list_models() -> list[str]:
    """Known specs (without weights): atlas's own and every open_clip architecture."""
    import open_clip

    return [f"atlas:{a}" for a in ATLAS_CONFIGS] + [f"open_clip:{a}" for a in open_clip.list_models()]
