"""Ground-truth evaluations on Concept World: zero-shot accuracy and multimodal concept neurons.

`zero_shot` classifies held-out pictogram-only and word-only images among all concepts with text prompts.
`concept_neurons` measures, for each concept and layer, the best neuron's AUROC at detecting the concept
as a pictogram (against other pictograms) and as a written word (against other words); a concept has a
*multimodal neuron* in a layer when one neuron reaches both AUROCs >= threshold.  The neuron is picked and
scored twice: in-sample (on all test images) and held-out (picked on one half, scored on the other), since
the best of a thousand neurons on the images it was picked on overstates how well it detects the concept.
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
class ConceptTestImages:
    """Held-out single-object images: pictogram-only and word-only (the concept's name written in one of the
    fonts), ``per_concept`` of each per concept."""

    pixels: torch.Tensor  # [N, 3, S, S] normalized
    concept: np.ndarray  # [N] concept index
    is_word: np.ndarray  # [N] bool


def concept_test_images(model: LoadedModel, per_concept: int = 40, seed: int = 10_000, size: int = 64) -> ConceptTestImages:
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
    return ConceptTestImages(torch.stack(pix), np.array(concept), np.array(is_word))


def zero_shot(model: LoadedModel, images: ConceptTestImages, batch: int = 256) -> dict[str, float]:
    """Top-1 accuracy on pictograms and on words, with picture prompts, word prompts and both."""
    dev = model.device
    from .probes.zeroshot import zero_shot_head

    heads = {"picture prompts": zero_shot_head(model, CONCEPT_NAMES, PICTO_PROMPTS),
             "word prompts": zero_shot_head(model, CONCEPT_NAMES, WORD_PROMPTS),
             "all prompts": zero_shot_head(model, CONCEPT_NAMES, PICTO_PROMPTS + WORD_PROMPTS)}
    with torch.no_grad():
        feats = torch.cat([model.encode_image(images.pixels[i:i + batch].to(dev)).float()
                           for i in range(0, len(images.pixels), batch)])
    feats = feats / feats.norm(dim=-1, keepdim=True)
    out = {}
    for name, w in heads.items():
        pred = (feats @ w.t()).argmax(1).cpu().numpy()
        for kind, mask in (("pictograms", ~images.is_word), ("words", images.is_word)):
            out[f"{kind}, {name}"] = float((pred[mask] == images.concept[mask]).mean())
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
    """Per concept, the best neuron of ``layer`` and its AUROCs, picked two ways.

    In-sample (``best_unit``, ``auroc_picto``, ``auroc_word``): the neuron maximizing min(AUROC as pictogram,
    AUROC as word) over all test images, scored on the same images: optimistic, since 1 of U neurons is picked.
    Held-out (``heldout_*``): the neuron is picked the same way on the selection half of the images
    (`selection_half`) and scored on the other half, which played no part in picking it.
    """

    layer: str
    threshold: float
    best_unit: list[int] = field(default_factory=list)  # per concept
    auroc_picto: list[float] = field(default_factory=list)
    auroc_word: list[float] = field(default_factory=list)
    heldout_unit: list[int] = field(default_factory=list)  # per concept, picked on the selection half
    heldout_picto: list[float] = field(default_factory=list)  # its AUROCs on the other half
    heldout_word: list[float] = field(default_factory=list)

    @property
    def multimodal(self) -> list[bool]:
        return [min(a, b) >= self.threshold for a, b in zip(self.auroc_picto, self.auroc_word)]

    @property
    def multimodal_heldout(self) -> list[bool]:
        return [min(a, b) >= self.threshold for a, b in zip(self.heldout_picto, self.heldout_word)]


def selection_half(concept: np.ndarray, is_word: np.ndarray) -> np.ndarray:
    """[N] bool: True for the images a neuron is picked on, False for those it is scored on.  Within each
    (concept, pictogram or word) group, in probe-set order, the 1st, 3rd, 5th... image is for picking and the
    2nd, 4th, 6th... for scoring: deterministic, and every concept's positives and negatives are halved."""
    concept, is_word = np.asarray(concept), np.asarray(is_word, bool)
    rank = np.zeros(len(concept), np.int64)
    seen: dict[tuple[int, bool], int] = {}
    for i, key in enumerate(zip(concept.tolist(), is_word.tolist())):
        rank[i] = seen.get(key, 0)
        seen[key] = rank[i] + 1
    return rank % 2 == 0


def concept_aurocs(s: torch.Tensor, concept: np.ndarray, is_word: np.ndarray, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per unit of scores s [N, U], AUROC for concept c as pictogram (against other pictograms) and as word."""
    pic, word = ~is_word, is_word
    return (auroc(s[pic & (concept == c)], s[pic & (concept != c)]),
            auroc(s[word & (concept == c)], s[word & (concept != c)]))


def neurons_from_scores(layer: str, scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray,
                        threshold: float = 0.9) -> ConceptNeurons:
    """`ConceptNeurons` of one layer from its scores [N, U] of the test images (concept [N], is_word [N]).
    A neuron is picked by the largest min(AUROC pictogram, AUROC word), the lowest unit on ties."""
    concept, is_word = np.asarray(concept), np.asarray(is_word, bool)
    pick = selection_half(concept, is_word)
    for kind in (False, True):
        n = np.bincount(concept[is_word == kind], minlength=len(CONCEPT_NAMES))
        if n.min() < 2:
            raise ValueError(f"concept {CONCEPT_NAMES[int(n.argmin())]} has {n.min()} {'word' if kind else 'pictogram'} "
                             "images; picking a neuron on one half and scoring it on the other needs at least 2 per "
                             "concept and kind (raise per_concept)")
    s_pick, s_held = scores[torch.from_numpy(pick)], scores[torch.from_numpy(~pick)]  # [N/2, U] each
    r = ConceptNeurons(layer, threshold)
    for c in range(len(CONCEPT_NAMES)):
        a_p, a_w = concept_aurocs(scores, concept, is_word, c)
        u = int(torch.minimum(a_p, a_w).argmax())
        r.best_unit.append(u)
        r.auroc_picto.append(float(a_p[u]))
        r.auroc_word.append(float(a_w[u]))
        a_p, a_w = concept_aurocs(s_pick, concept[pick], is_word[pick], c)
        u = int(torch.minimum(a_p, a_w).argmax())
        a_p, a_w = concept_aurocs(s_held[:, u:u + 1], concept[~pick], is_word[~pick], c)
        r.heldout_unit.append(u)
        r.heldout_picto.append(float(a_p[0]))
        r.heldout_word.append(float(a_w[0]))
    return r


def concept_neurons(model: LoadedModel, images: ConceptTestImages, layers: Sequence[str] | None = None,
                    threshold: float = 0.9) -> list[ConceptNeurons]:
    """For each layer and concept, the neuron maximizing min(AUROC as pictogram, AUROC as word), picked and
    scored in-sample and held-out (`ConceptNeurons`)."""
    layers = list(layers or model.default_layers)
    scores = layer_scores(model, images.pixels, layers)
    return [neurons_from_scores(layer, scores[layer], images.concept, images.is_word, threshold) for layer in layers]


def report_markdown(zs: dict[str, float], neurons: list[ConceptNeurons]) -> str:
    """The tables written to docs/conceptworld-eval.md."""
    lines = ["| images | prompts | top-1 accuracy |", "|---|---|---|"]
    for k, v in zs.items():
        kind, prompts = k.split(", ")
        lines.append(f"| {kind} | {prompts} | {100 * v:.1f}% |")
    last = neurons[-1]
    n = len(last.multimodal)
    lines += ["", f"Concepts with a multimodal neuron (both AUROC >= {last.threshold:.2f}): held-out, the neuron "
              "picked on one half of the images and scored on the other; in-sample, picked and scored on all:", "",
              "| layer | held-out | in-sample |", "|---|---|---|"]
    for r in neurons:
        lines.append(f"| `{r.layer}` | {sum(r.multimodal_heldout)} / {n} | {sum(r.multimodal)} / {n} |")
    lines += ["", f"Per concept, best neuron of `{last.layer}` (in-sample, then held-out):", "",
              "| concept | unit | AUROC pictogram | AUROC word | multimodal | held-out unit | AUROC pictogram "
              "| AUROC word | multimodal |", "|---|---|---|---|---|---|---|---|---|"]
    for c in range(n):
        lines.append(f"| {CONCEPT_NAMES[c]} | {last.best_unit[c]} | {last.auroc_picto[c]:.3f} | "
                     f"{last.auroc_word[c]:.3f} | {'yes' if last.multimodal[c] else 'no'} | {last.heldout_unit[c]} | "
                     f"{last.heldout_picto[c]:.3f} | {last.heldout_word[c]:.3f} | "
                     f"{'yes' if last.multimodal_heldout[c] else 'no'} |")
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
    images = concept_test_images(model, per_concept=per_concept, seed=seed, size=model.image_size)
    return ConceptReport(zero_shot(model, images), concept_neurons(model, images, layers, threshold))
