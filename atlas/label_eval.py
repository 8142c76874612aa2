"""`atlas eval labels`: automatic labels scored against Concept World's ground truth (atlas/labels.py makes them).

- *planted*: of the concepts with a multimodal neuron in the layer (`atlas.evaluate.concept_neurons`, in-sample),
  the share whose neuron's top-1 label is the concept's name;
- *precision*: the share of the layer's units whose top-1 label is right: a Concept World concept (or one of its
  words) that the unit detects, AUROC >= ``threshold`` on the held-out test images of that concept (pictograms and
  words) against all others.  Labels that name no concept count as wrong: nothing in Concept World shows them;
- the same figures for two baselines: the most frequent concept among each unit's stored top examples, and one
  constant label (the concept most images show);
- *ceiling* (Concept World stores with pooled activations): for how many planted concepts the neuron's pooled
  activations over the store's images have their best AUROC, among all concepts, for that concept, against what
  Concept World says each image shows: how far the probing images themselves point to the planted concept;
- *word hits*: of the misses, those labelled with another of the concept's own words (e.g. 'direction' for arrow);
- *causal*: zeroing a labelled unit (a forward hook) lowers the zero-shot score (cosine with the concept's prompts) of its label's concept on
  that concept's test images more than it lowers a control concept's (the next concept in Concept World's list) on
  the control's images.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from . import store
from .capture import ablated
from .data.conceptworld import CONCEPT_NAMES
from .evaluate import PICTO_PROMPTS, WORD_PROMPTS, auroc, concept_test_images, layer_scores, neurons_from_scores
from .labels import WORD_TO_CONCEPT, Presence, label_units
from .models import LoadedModel
from .probes.zeroshot import zero_shot_head


@dataclass
class LabelEval:
    layer: str
    planted: dict[str, tuple[int, int]]  # method -> (concepts whose neuron is labelled right, concepts with one)
    precision: dict[str, tuple[int, int]]  # method -> (units labelled right, units)
    causal: tuple[int, int]  # (labelled units where the ablation hits the label's concept harder, units tested)
    threshold: float
    misses: list[tuple[str, int, str]] = field(default_factory=list)  # (concept, unit, its top-1 label)
    causal_rows: list[tuple[int, str, str, float, float]] = field(default_factory=list)  # unit, concept, control, drops
    word_hits: int = 0  # of the misses, those whose top-1 label is another of the concept's words (not counted)
    ceiling: tuple[int, int] | None = None  # planted neurons whose probing-image AUROC is best for their concept

    @property
    def markdown(self) -> str:
        lines = [f"Labels of `{self.layer}` against Concept World's ground truth:", "",
                 "| method | planted concepts' neurons labelled right | label precision (all units) |", "|---|---|---|"]
        for m in self.planted:
            (a, n), (b, u) = self.planted[m], self.precision[m]
            lines.append(f"| {m} | {a} / {n} ({100 * a / max(n, 1):.1f}%) | {b} / {u} ({100 * b / max(u, 1):.1f}%) |")
        c, n = self.causal
        lines += ["", f"Causal check: zeroing the unit lowers its label's zero-shot score more than a control "
                  f"concept's for {c} of {n} labelled units ({100 * c / max(n, 1):.1f}%).", ""]
        if self.misses:
            lines.append("Planted concepts whose neuron got another top-1 label: "
                         + ", ".join(f"{c} (unit {u}: {lab!r})" for c, u, lab in self.misses))
        if self.word_hits:
            lines += ["", f"Of these, {self.word_hits} got another of the concept's own words (counted as misses; "
                      "the precision column counts such labels as right)."]
        if self.ceiling:
            k, n = self.ceiling
            lines += ["", f"Ceiling of the probing images: for {k} of {n} planted concepts the neuron's pooled "
                      "activations over the store's images find that concept best (AUROC against Concept World's "
                      "labels of what each image shows, over all 41 concepts): labels that know what each image shows "
                      "and read these activations, not the text tower."]
        return "\n".join(lines) + "\n"


def _concept_of(label: str) -> str | None:
    return WORD_TO_CONCEPT.get(label.lower()) if label else None


def _presence_ceiling(pooled: np.ndarray, status: np.ndarray, pres: Presence, have: list[tuple[str, int]]
                      ) -> tuple[int, int]:
    """How many planted neurons' pooled activations over the probing images have their best AUROC, among all
    concepts, for their own concept (images shown by Concept World's labels; the images left out when mined
    dropped)."""
    rows = np.nonzero((status == 0) & np.isfinite(pooled).all(1))[0]
    shows = np.array([[c in pres.sets[i] for c in CONCEPT_NAMES] for i in rows])  # [n, concepts]
    hits = 0
    for name, u in have:
        a = torch.from_numpy(pooled[rows, u:u + 1].astype(np.float64))
        au = [float(auroc(a[shows[:, k]], a[~shows[:, k]])[0]) if shows[:, k].any() else 0.0
              for k in range(len(CONCEPT_NAMES))]
        hits += CONCEPT_NAMES[int(np.argmax(au))] == name
    return hits, len(have)


def _zero_shot_probs(model: LoadedModel, head: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """[n, concepts] zero-shot scores: cosine similarities of the image embeddings with the concept heads (the
    logits before the softmax, which on this model is saturated at 1.0 for nearly every test image)."""
    with torch.no_grad():
        f = model.encode_image(pixels.to(model.device)).float()
        return ((f / f.norm(dim=1, keepdim=True)) @ head.to(f.device).t()).cpu()


def evaluate_labels(model: LoadedModel, store_path: str | os.PathLike, layer: str | None = None,
                    per_concept: int = 40, threshold: float = 0.8, causal_units: int = 64,
                    causal_images: int = 20) -> LabelEval:
    """Score the store's labels of ``layer`` (default: its last mined layer; labelled now, not written, when the
    store holds none) on held-out Concept World images; see the module doc for each figure."""
    with store.Store(store_path) as st:
        layers = [ld.name for ld in st.layers(model.name)] if model.name in st.models() else []
        layer = layer or (layers[-1] if layers else "")
        if layer not in layers:
            raise store.StoreError(f"store {store_path} has no layer {layer!r} of model {model.name}; pass --layer "
                                   f"one of: {', '.join(layers) or 'none: run atlas mine'}")
        ld = st.layer(model.name, layer)
        stored = ld.labels()
        top_index = ld["topk/index"]  # [U, k]
        pooled = ld["pooled"] if ld.has("pooled") else None  # [N, U]
        status = st.image_column("status")
        labels = st.image_column("label")
        cw = str(st.meta.get("data_source", "")).startswith("conceptworld:")
    if stored is None:
        top1 = label_units(model, store_path, [layer], write=False).layers[0].top1()
    else:
        top1 = [u["labels"][0]["concept"] if u["labels"] else "" for u in stored]
    units = len(top1)
    # baselines: the most frequent concept among the top examples; one constant label
    pres = Presence(labels, [""] * len(labels), cw)
    top_ex = []
    for row in top_index:
        counts = Counter(c for i in row if i >= 0 for c in pres.sets[i] if c in CONCEPT_NAMES)
        top_ex.append(counts.most_common(1)[0][0] if counts else "")
    everywhere = Counter(c for s in pres.sets for c in s if c in CONCEPT_NAMES)
    constant = [everywhere.most_common(1)[0][0] if everywhere else CONCEPT_NAMES[0]] * units
    methods = {"labels (match + words)": top1, "baseline: top examples' class": top_ex,
               f"baseline: constant '{constant[0]}'": constant}
    # ground truth on held-out images
    images = concept_test_images(model, per_concept=per_concept, size=model.image_size)
    scores = layer_scores(model, images.pixels, [layer])[layer]  # [n, U]
    neurons = neurons_from_scores(layer, scores, images.concept, images.is_word)
    detect = torch.stack([auroc(scores[images.concept == c], scores[images.concept != c])
                          for c in range(len(CONCEPT_NAMES))]).numpy()  # [concepts, U]
    planted, precision = {}, {}
    have = [(CONCEPT_NAMES[c], neurons.best_unit[c]) for c in range(len(CONCEPT_NAMES)) if neurons.multimodal[c]]
    for name, lab in methods.items():
        planted[name] = (sum(lab[u] == c for c, u in have), len(have))
        right = [(k := _concept_of(lab[u])) is not None and detect[CONCEPT_NAMES.index(k), u] >= threshold
                 for u in range(units)]
        precision[name] = (int(sum(right)), units)
    misses = [(c, u, top1[u]) for c, u in have if top1[u] != c]
    word_hits = sum(_concept_of(lab) == c for c, _, lab in misses)
    ceiling = _presence_ceiling(pooled, status, pres, have) if cw and pooled is not None else None
    first = [u for _, u in have]  # the planted concepts' neurons first, then the other units in order
    order = list(dict.fromkeys(first + list(range(units))))
    causal, rows = _causal(model, layer, top1, order, images, causal_units, causal_images)
    return LabelEval(layer, planted, precision, causal, threshold, misses, rows, word_hits, ceiling)


def _causal(model: LoadedModel, layer: str, top1: list[str], order: list[int], images, limit: int, per: int
            ) -> tuple[tuple[int, int], list]:
    """Ablate up to ``limit`` units whose top-1 label names a concept (in ``order``); compare the drop of the
    label's zero-shot score on ``per`` of its images with a control concept's on the control's images."""
    info = model.layer(layer)
    head = zero_shot_head(model, CONCEPT_NAMES, PICTO_PROMPTS + WORD_PROMPTS)
    idx = {c: np.nonzero(images.concept == c)[0][:per] for c in range(len(CONCEPT_NAMES))}
    clean = {c: _zero_shot_probs(model, head, images.pixels[i])[:, c].mean().item() for c, i in idx.items()}
    chosen = [(u, CONCEPT_NAMES.index(k)) for u in order if (k := _concept_of(top1[u]))][:limit]
    holds, rows = 0, []
    for u, c in chosen:
        ctrl = (c + 1) % len(CONCEPT_NAMES)
        with ablated(model.clip, info.name, u, info.layout):
            drop = clean[c] - _zero_shot_probs(model, head, images.pixels[idx[c]])[:, c].mean().item()
            drop_ctrl = clean[ctrl] - _zero_shot_probs(model, head, images.pixels[idx[ctrl]])[:, ctrl].mean().item()
        holds += drop > drop_ctrl
        rows.append((u, CONCEPT_NAMES[c], CONCEPT_NAMES[ctrl], drop, drop_ctrl))
    return (holds, len(chosen)), rows
