"""How faithful and how interpretable an SAE is on Concept World (docs/sae.md).

`zero_shot_through`: the evaluation's zero-shot accuracy (`atlas.evaluate.zero_shot`) with the layer's output
replaced by the SAE's reconstruction.  `concept_units`: the multimodal-neuron evaluation
(`atlas.evaluate.neurons_from_scores`, the same code path) with the SAE's feature scores (spatial max of each
feature's map, as for neurons) in place of the neurons', beside the neurons' own figure, and a polysemanticity
figure for both: per unit, the number of concepts it detects (AUROC >= 0.8 as a pictogram or as a word).
`chance_multimodal`: the same count with each concept's pictograms paired with another concept's words, what
polysemantic units reach by coincidence (a unit that detects many concepts detects some pictogram and some word).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..capture import replaced_output
from ..data.conceptworld import CONCEPT_NAMES
from ..evaluate import ConceptNeurons, concept_aurocs, concept_test_images, layer_scores, neurons_from_scores, zero_shot
from ..kernels.sae import SaeTensors, decode, encode, feature_maps
from ..models import LoadedModel


def reconstructed(model: LoadedModel, layer: str, sae: SaeTensors):
    """Forwards inside the block see ``layer``'s output (its canonical map; a token layer's prefix tokens kept)
    replaced by the SAE's reconstruction of every position."""
    info = model.layer(layer)
    p = sae.to(model.device)

    def reconstruct(first: torch.Tensor) -> torch.Tensor:
        a = info.canonical(first).float()  # [B, d, h, w]
        b, d, h, w = a.shape
        rows = a.permute(0, 2, 3, 1).reshape(-1, d)
        rec = decode(*encode(rows, p), p).reshape(b, h, w, d)
        if info.layout == "nchw":
            return rec.permute(0, 3, 1, 2).to(first.dtype).contiguous()
        new = first.clone()
        new[:, info.prefix_tokens:, :] = rec.reshape(b, h * w, d).to(first.dtype)
        return new

    return replaced_output(model.clip, info.name, reconstruct)


def zero_shot_through(model: LoadedModel, layer: str, sae: SaeTensors, per_concept: int = 40,
                      images=None) -> dict[str, list[float]]:
    """{"<images>, <prompts>": [accuracy of the model, accuracy with the layer reconstructed]} on the held-out
    Concept World images of `atlas.evaluate`."""
    images = images or concept_test_images(model, per_concept=per_concept, size=model.image_size)
    plain = zero_shot(model, images)
    with reconstructed(model, layer, sae):
        through = zero_shot(model, images)
    return {k: [plain[k], through[k]] for k in plain}


def feature_scores(model: LoadedModel, pixels: torch.Tensor, layer: str, sae: SaeTensors,
                   batch: int = 256) -> torch.Tensor:
    """[N, F]: each feature's spatial max over the layer's map (the miner's default score), per image."""
    from ..capture import hooked

    info, p, out = model.layer(layer), sae.to(model.device), []

    def keep(_name: str, act: torch.Tensor) -> None:
        out.append(feature_maps(info.canonical(act).detach(), p).flatten(2).amax(2).cpu())

    with torch.no_grad(), hooked(model.clip, [info.name], keep):
        for i in range(0, len(pixels), batch):
            model.encode_image(pixels[i:i + batch].to(model.device))
    return torch.cat(out)


def concepts_per_unit(scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray,
                      threshold: float = 0.8) -> np.ndarray:
    """[U] int: per unit, the concepts whose AUROC as a pictogram or as a word is >= threshold."""
    n = np.zeros(scores.shape[1], np.int64)
    for c in range(len(CONCEPT_NAMES)):
        a_p, a_w = concept_aurocs(scores, concept, is_word, c)
        n += (torch.maximum(a_p, a_w) >= threshold).numpy()
    return n


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    while True:
        perm = rng.permutation(n)
        if (perm != np.arange(n)).all():
            return perm


def chance_multimodal(layer: str, scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray,
                      threshold: float = 0.9, trials: int = 5, seed: int = 0) -> float:
    """Mean held-out multimodal count of `neurons_from_scores` over ``trials`` relabellings of the word images:
    each concept's words given to another concept (a seeded derangement), so that a "multimodal" unit is one that
    detects the pictograms of one concept and the words of an unrelated one: the figure polysemantic units reach by
    coincidence, to set beside the true pairing's."""
    rng, concept, is_word = np.random.default_rng(seed), np.asarray(concept), np.asarray(is_word, bool)
    counts = []
    for _ in range(trials):
        relabelled = concept.copy()
        relabelled[is_word] = derangement(len(CONCEPT_NAMES), rng)[concept[is_word]]
        counts.append(sum(neurons_from_scores(layer, scores, relabelled, is_word, threshold).multimodal_heldout))
    return float(np.mean(counts))


@dataclass
class ConceptUnits:
    """Neurons of a layer and the features of its SAE on the same held-out Concept World images."""

    neurons: ConceptNeurons
    features: ConceptNeurons
    neuron_concepts: np.ndarray  # [U] concepts detected per neuron (AUROC >= 0.8, pictogram or word)
    feature_concepts: np.ndarray  # [F] the same per feature
    single: dict[str, tuple[int, int]]  # "neurons"/"features": concepts with a unit of AUROC >= threshold as a
    # pictogram, and (maybe another unit) as a word
    chance: dict[str, float]  # "neurons"/"features": `chance_multimodal` (held-out, mean of the relabellings)

    @staticmethod
    def _poly(n: np.ndarray) -> str:
        live = n[n > 0]
        return (f"{len(live)} of {len(n)} detect a concept; among them {live.mean():.2f} concepts each on average, "
                f"{(live == 1).mean():.0%} exactly one" if len(live) else f"none of {len(n)} detects a concept")

    @property
    def markdown(self) -> str:
        n = len(CONCEPT_NAMES)
        rows = [("neurons", self.neurons, self.neuron_concepts), ("SAE features", self.features, self.feature_concepts)]
        t = self.neurons.threshold
        lines = [f"| units | multimodal (one unit, both AUROC >= {t:.1f}), held-out | in-sample | chance: pictograms "
                 f"paired with another concept's words, held-out | some unit >= {t:.1f} as a pictogram, some as a word "
                 "(in-sample) | concepts per unit (AUROC >= 0.8) |", "|---|---|---|---|---|---|"]
        for (name, r, poly), key in zip(rows, ("neurons", "features")):
            p, w = self.single[key]
            lines.append(f"| {name} of `{r.layer}` ({len(poly)}) | {sum(r.multimodal_heldout)} / {n} | "
                         f"{sum(r.multimodal)} / {n} | {self.chance[key]:.1f} / {n} | {p} / {n}, {w} / {n} | "
                         f"{self._poly(poly)} |")
        return "\n".join(lines) + "\n"


def concept_units(model: LoadedModel, layer: str, virtual_layer: str, sae: SaeTensors, per_concept: int = 40,
                  threshold: float = 0.9, images=None) -> ConceptUnits:
    """`ConceptUnits` of ``layer``'s neurons and its SAE's features (`atlas.evaluate.neurons_from_scores` on each)."""
    images = images or concept_test_images(model, per_concept=per_concept, size=model.image_size)
    neurons = layer_scores(model, images.pixels, [layer])[layer]
    features = feature_scores(model, images.pixels, layer, sae)
    pairs = (("neurons", neurons), ("features", features))
    single = {key: best_single(s, images.concept, images.is_word, threshold) for key, s in pairs}
    chance = {key: chance_multimodal(key, s, images.concept, images.is_word, threshold) for key, s in pairs}
    return ConceptUnits(neurons_from_scores(layer, neurons, images.concept, images.is_word, threshold),
                        neurons_from_scores(virtual_layer, features, images.concept, images.is_word, threshold),
                        concepts_per_unit(neurons, images.concept, images.is_word),
                        concepts_per_unit(features, images.concept, images.is_word), single, chance)


def best_single(scores: torch.Tensor, concept: np.ndarray, is_word: np.ndarray, threshold: float) -> tuple[int, int]:
    """(concepts with some unit of pictogram AUROC >= threshold, concepts with some unit of word AUROC >=
    threshold), the units picked separately (in-sample)."""
    p = w = 0
    for c in range(len(CONCEPT_NAMES)):
        a_p, a_w = concept_aurocs(scores, concept, is_word, c)
        p += int(a_p.max() >= threshold)
        w += int(a_w.max() >= threshold)
    return p, w


def fidelity_report(store_path, virtual_layer: str, device: str = "cpu", per_concept: int = 40) -> str:
    """Markdown: the SAE's held-out figures, zero-shot accuracy through its reconstruction, and its features
    against the layer's neurons on Concept World (what `atlas sae eval` prints)."""
    from ..models import resolve_device
    from ..names import split_sae_layer
    from .run import load_sae, store_model

    model = store_model(store_path, str(resolve_device(device)))
    parts = split_sae_layer(virtual_layer)
    if parts is None:
        raise KeyError(f"--layer {virtual_layer!r} is not an SAE's layer; they look like 'visual.layer4.0/sae16k'")
    sae, meta = load_sae(store_path, model.name, virtual_layer, model.weights_sha256)
    images = concept_test_images(model, per_concept=per_concept, size=model.image_size)
    zs = zero_shot_through(model, parts[0], sae, images=images)
    units = concept_units(model, parts[0], virtual_layer, sae, images=images)
    m = meta.get("metrics", {})
    lines = [f"SAE `{virtual_layer}` of `{model.name}`: {sae.width} features, k = {sae.k}; held-out fraction of "
             f"variance explained {m.get('fve', float('nan')):.3f}, L0 {m.get('l0', float('nan')):.1f}, dead "
             f"{m.get('dead_fraction', float('nan')):.1%} (never fire on the held-out inputs)", "",
             "| images | prompts | model | layer through the SAE |", "|---|---|---|---|"]
    for k, (a, b) in zs.items():
        kind, prompts = k.split(", ")
        lines.append(f"| {kind} | {prompts} | {100 * a:.1f}% | {100 * b:.1f}% |")
    return "\n".join(lines) + "\n\n" + units.markdown
