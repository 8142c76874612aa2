"""Hugging Face SigLIP directories, run by transformers' own implementation behind open_clip's interface.

CLIPModel directories are converted to open_clip (checkpoints.read_hf_clip); SigLIP's towers (no CLS token, an
attention-pooling head, a SentencePiece tokenizer, sigmoid-trained logits) have no open_clip counterpart with
the same module layout, so atlas wraps ``transformers.SiglipModel`` instead.  Layer names are then the vision
tower's module paths under ``visual.`` (``visual.encoder.layers.11``, ``visual.encoder.layers.11.mlp.activation_fn``).
Needs the optional dependency transformers (and sentencepiece for the tokenizer).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .errors import ModelError


class HFTowers(nn.Module):
    """A transformers CLIP-like model with open_clip's ``visual``, ``encode_image`` and ``encode_text``."""

    def __init__(self, hf_model: nn.Module, image_size: int):
        super().__init__()
        self.visual = hf_model.vision_model  # registered first, so layers are named visual.encoder.layers.N
        self.hf = hf_model
        self.visual.image_size = image_size

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """[batch, 3, S, S] normalized -> [batch, embed]."""
        out = self.hf.get_image_features(pixel_values=pixels)
        return getattr(out, "pooler_output", out)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """[batch, context] token ids -> [batch, embed]."""
        out = self.hf.get_text_features(input_ids=tokens)
        return getattr(out, "pooler_output", out)


class HFTokenizer:
    """The directory's own tokenizer, padded to the model's context like SigLIP was trained."""

    def __init__(self, directory: Path, context_length: int):
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as e:
            raise ModelError(f"{directory} holds no usable tokenizer ({type(e).__name__}: {str(e)[:160]}); save "
                             "one there with tokenizer.save_pretrained(directory)") from e
        self.context_length = context_length

    def __call__(self, texts: list[str] | str) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.tok(texts, padding="max_length", max_length=self.context_length, truncation=True,
                        return_tensors="pt").input_ids


def read_hf_siglip(directory: Path, cfg: dict) -> tuple[HFTowers, HFTokenizer, tuple, tuple, Path]:
    """(towers, tokenizer, mean, std, weights file) of a SiglipModel directory."""
    try:
        from transformers import SiglipModel
    except ImportError as e:
        raise ModelError("SigLIP directories run on transformers: pip install transformers sentencepiece") from e
    files = sorted(directory.glob("model*.safetensors"))
    if not files:
        raise ModelError(f"{directory} holds no model.safetensors: save with safe_serialization=True (the "
                         "default), so that no pickle has to be opened")
    model = SiglipModel.from_pretrained(str(directory), local_files_only=True, use_safetensors=True).float().eval()
    pre = directory / "preprocessor_config.json"
    pcfg = json.loads(pre.read_text()) if pre.is_file() else {}
    mean = tuple(pcfg.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(pcfg.get("image_std", (0.5, 0.5, 0.5)))
    size = cfg["vision_config"].get("image_size", 224)
    ctx = cfg["text_config"].get("max_position_embeddings", 64)
    return HFTowers(model, size), HFTokenizer(directory, ctx), mean, std, files[0]
