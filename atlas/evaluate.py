"""Ground-truth evaluations on Concept World: zero-shot accuracy and multimodal concept neurons.

`zero_shot` classifies held-out pictogram-only and word-only images among all concepts with text prompts.
`concept_neurons` measures, for each concept and layer, the best neuron's AUROC at detecting the concept
as a pictogram (against other pictograms) and as a written word (against other words); a concept has a
*multimodal neuron* in a layer when one neuron reaches both AUROCs >= threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .capture import pooled_activations
from .data.conceptworld import CONCEPT_NAMES, World, WorldConfig
from .models import LoadedModel

PICTO_PROMPTS = ("a drawing of a {}", "a picture of a {}", "an icon of a {}")
WORD_PROMPTS = ("the word {}", "the text {}", "a sign that says {}")


@dataclass
class ProbeSet:
    """Held-out single-object images: pictogram-only and word-only (the concept's name written in one of the
    fonts), ``per_concept`` of each per concept."""

    pixels: torch.Tensor  # [N, 3, S, S] normalized
    concept: np.ndarray  # [N] concept index
    is_word: np.ndarray  # [N] bool


def probe_set(model: LoadedModel, per_concept: int = 40, seed: int = 10_000, size: int = 64) -> ProbeSet:
    """Images from a world with another seed than training, filtered to single pictograms or words."""
    world = World(WorldConfig(seed=seed, size=size, mix=(0.5, 0.5, 0.0, 0.0)))
    counts = {(c, w): 0 for c in CONCEPT_NAMES for w in (False, True)}
    pix, concept, is_word = [], [], []
    i = 0
    while min(counts.values()) < per_concept:
        it = world.item(i)
        i += 1
        key = (it.word_concept if it.kind == "word" else it.concepts[0], it.kind == "word")
        if counts[key] >= per_concept or (it.kind == "word" and it.word != key[0]):
            continue  # words: the concept's name only (related words are another question)
        counts[key] += 1
        pix.append(model.preprocess(world.image(it)))
        concept.append(CONCEPT_NAMES.index(key[0]))
        is_word.append(key[1])
    return ProbeSet(torch.stack(pix), np.array(concept), np.array(is_word))


def zero_shot(model: LoadedModel, ps: ProbeSet, batch: int = 256) -> dict[str, float]:
    """Top-1 accuracy on pictograms and on words, with picture prompts, word prompts and both."""
    dev = model.device
    from .probes.zeroshot import zero_shot_head

    heads = {"picture prompts": zero_shot_head(model, CONCEPT_NAMES, PICTO_PROMPTS),
             "word prompts": zero_shot_head(model, CONCEPT_NAMES, WORD_PROMPTS),
             "all prompts": zero_shot_head(model, CONCEPT_NAMES, PICTO_PROMPTS + WORD_PROMPTS)}
    with torch.no_grad():
        feats = torch.cat([model.encode_image(ps.pixels[i:i + batch].to(dev)).float()
                           for i in range(0, len(ps.pixels), batch)])
    feats = feats / feats.norm(dim=-1, keepdim=True)
    out = {}
    for name, w in heads.items():
        pred = (feats @ w.t()).argmax(1).cpu().numpy()
        for kind, mask in (("pictograms", ~ps.is_word), ("words", ps.is_word)):
            out[f"{kind}, {name}"] = float((pred[mask] == ps.concept[mask]).mean())
    return out


def layer_scores(model: LoadedModel, pixels: torch.Tensor, layers: Sequence[str], batch: int = 256
                 ) -> dict[str, torch.Tensor]:
    """Per image and unit, the spatial max of each layer (the miner's default score): {layer: [N, U]}."""
    return pooled_activations(model, pixels, layers, "max", batch)[0]


def auroc(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Per-column AUROC of scores pos [P, U] against neg [Q, U] (ties count half): [U]."""
    neg_sorted = neg.t().contiguous().sort(dim=1).values  # [U, Q]
    p = pos.t().contiguous()  # [U, P]
    below = torch.searchsorted(neg_sorted, p, right=False).double()
    upto = torch.searchsorted(neg_sorted, p, right=True).double()
    return ((below + upto) / 2).mean(1) / neg.shape[0]


@dataclass
class ConceptNeurons:
    layer: str
    threshold: float
    best_unit: list[int] = field(default_factory=list)  # per concept
    auroc_picto: list[float] = field(default_factory=list)
    auroc_word: list[float] = field(default_factory=list)

    @property
    def multimodal(self) -> list[bool]:
        return [min(a, b) >= self.threshold for a, b in zip(self.auroc_picto, self.auroc_word)]


def concept_neurons(model: LoadedModel, ps: ProbeSet, layers: Sequence[str] | None = None,
                    threshold: float = 0.9) -> list[ConceptNeurons]:
    """For each layer and concept, the neuron maximizing min(AUROC as pictogram, AUROC as word)."""
    layers = list(layers or model.default_layers)
    scores = layer_scores(model, ps.pixels, layers)
    results = []
    for layer in layers:
        s = scores[layer]
        r = ConceptNeurons(layer, threshold)
        for c in range(len(CONCEPT_NAMES)):
            pic, word = ~ps.is_word, ps.is_word
            a_p = auroc(s[pic & (ps.concept == c)], s[pic & (ps.concept != c)])
            a_w = auroc(s[word & (ps.concept == c)], s[word & (ps.concept != c)])
            u = int(torch.minimum(a_p, a_w).argmax())
            r.best_unit.append(u)
            r.auroc_picto.append(float(a_p[u]))
            r.auroc_word.append(float(a_w[u]))
        results.append(r)
    return results


def report_markdown(zs: dict[str, float], neurons: list[ConceptNeurons]) -> str:
    """The tables written to docs/conceptworld.md."""
    lines = ["| images | prompts | top-1 accuracy |", "|---|---|---|"]
    for k, v in zs.items():
        kind, prompts = k.split(", ")
        lines.append(f"| {kind} | {prompts} | {100 * v:.1f}% |")
    lines += ["", "| layer | concepts with a multimodal neuron (both AUROC >= %.2f) |" % neurons[0].threshold,
              "|---|---|"]
    for r in neurons:
        lines.append(f"| `{r.layer}` | {sum(r.multimodal)} / {len(r.multimodal)} |")
    last = neurons[-1]
    lines += ["", f"Per concept, best neuron of `{last.layer}`:", "",
              "| concept | unit | AUROC pictogram | AUROC word | multimodal |", "|---|---|---|---|---|"]
    for c, u, a, b, m in zip(CONCEPT_NAMES, last.best_unit, last.auroc_picto, last.auroc_word, last.multimodal):
        lines.append(f"| {c} | {u} | {a:.3f} | {b:.3f} | {'yes' if m else 'no'} |")
    return "\n".join(lines) + "\n"


@dataclass
class ConceptReport:
    zero_shot: dict[str, float]
    neurons: list[ConceptNeurons]

    @property
    def markdown(self) -> str:
        return report_markdown(self.zero_shot, self.neurons)


def evaluate_concepts(model: LoadedModel, per_concept: int = 40, layers: Sequence[str] | None = None,
                      threshold: float = 0.9, seed: int = 10_000) -> ConceptReport:
    """Zero-shot accuracy and multimodal concept neurons of ``model`` on held-out Concept World images."""
    ps = probe_set(model, per_concept=per_concept, seed=seed, size=model.image_size)
    return ConceptReport(zero_shot(model, ps), concept_neurons(model, ps, layers, threshold))
