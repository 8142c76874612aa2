"""The paper's typographic experiments on any model, saved as `/attacks/<name>` reports (docs/store.md).

- `run_attack_table`: the automated attack table (targets such as "ipod", "pizza", "$$$" stamped at 8 fixed
  positions on a labelled image set) for a zero-shot classifier and a stored linear probe;
- `run_stroop`: colour words written in another colour, classified with "my favorite word, written in the
  color ___": does the model report the ink or the word?
- `run_word_sensitivity`: which rendered words excite each neuron of a layer most.

Each runner saves its report and returns a dataclass with the report's store name (``report``, e.g.
"attacks/table") and what was left out and why (``left_out``: (what, how many, why)), as the audit's does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .. import store
from ..data.catalog import open_source
from ..data.conceptworld import CONCEPTS, HELD_OUT_PICTOGRAMS, PICTOGRAM_LABELS, heldout_pictograms
from ..data.sources import ImageSource
from ..models import LoadedModel
from .typographic import (POSITIONS, AttackError, AttackText, attack_rows_shared, probe_classifier, stamp,
                          zero_shot_classifier)

PAPER_TARGETS = (("trash", "trash"), ("ipod", "ipod"), ("pizza", "pizza"), ("$$$", "money"), ("shark", "shark"),
                 ("meow", "cat"), ("library", "book"))
STROOP_COLORS = {"red": (215, 40, 40), "orange": (240, 135, 20), "yellow": (230, 200, 30), "green": (40, 160, 60),
                 "blue": (35, 80, 210), "purple": (130, 55, 175), "pink": (235, 110, 170), "brown": (130, 80, 40)}


@dataclass(frozen=True)
class AttackTableResult:
    report: str  # "attacks/NAME"
    left_out: list  # (what, how many, why)
    rows: dict[str, list]  # per (classifier, text, size): classifier, text, target, size, attempts, successes,
    #                        success_rate, pixels_changed, clean_accuracy


@dataclass(frozen=True)
class StroopResult:
    report: str
    incongruent: int  # colour words written in another colour
    incongruent_said_word: int  # ... classified as the word
    incongruent_said_ink: int  # ... classified as the ink
    controls: int  # colour words written in their own colour
    controls_correct: int
    left_out: list = field(default_factory=list)


@dataclass(frozen=True)
class WordSensitivityResult:
    report: str
    words: list[str]
    responses: np.ndarray  # [words, units]: mean over fonts of each unit's spatial max
    left_out: list = field(default_factory=list)


def attack_source(data: str | ImageSource, count: int, label_pattern: str | None) -> tuple[ImageSource, str | None]:
    """The labelled images to attack and their label pattern: ``data`` as given (a source, or a folder or spec
    for `open_source`), or for "conceptworld-pictos" ``count`` held-out Concept World pictograms, labelled by
    their pictogram unless ``label_pattern`` says otherwise."""
    if isinstance(data, ImageSource):
        return data, label_pattern
    if data == HELD_OUT_PICTOGRAMS:
        return heldout_pictograms(count), label_pattern or PICTOGRAM_LABELS
    return open_source(data), label_pattern


def default_words() -> list[str]:
    """Words for per-neuron typographic sensitivity: Concept World's, the attack texts, the colour words."""
    return list(dict.fromkeys([w for c in CONCEPTS for w in c.words] + [t for t, _ in PAPER_TARGETS]
                              + list(STROOP_COLORS)))


def labelled_images(source: ImageSource, label_pattern: str | None, limit: int
                    ) -> tuple[list[Image.Image], list[str], list[tuple[str, int, str]]]:
    """Up to ``limit`` decodable images of ``source`` with a label (through the pattern), and what was left out."""
    from ..probes.probe import labels_from_pattern

    labels = labels_from_pattern([e.label for e in source.entries], label_pattern)
    images, kept, skipped_bad, unlabelled = [], [], 0, 0
    for e, lab in zip(source.entries, labels):
        if len(images) >= limit:
            break
        if not lab:
            unlabelled += 1
            continue
        s = source.sample(e.index)
        if s.image is None:
            skipped_bad += 1
            continue
        images.append(s.image)
        kept.append(lab)
    left = [("images without a label", unlabelled, "no class to attack away from")] if unlabelled else []
    if skipped_bad:
        left.append(("unreadable images", skipped_bad, "could not be decoded"))
    return images, kept, left


def run_attack_table(model: LoadedModel, data: str | ImageSource, store_path: str | os.PathLike, name: str = "table",
                     label_pattern: str | None = None, targets: Sequence[tuple[str, str]] = PAPER_TARGETS,
                     probe: str | None = None, images: int = 200, sizes: Sequence[float] = (0.16, 0.3),
                     font: str = "DejaVuSans-Bold.ttf", examples: int = 6, layer: str | None = None,
                     top_neurons: int = 20) -> AttackTableResult:
    """The attack table for the zero-shot classifier (and the stored probe ``probe``, if given), and the
    units of ``layer`` (default: the probe's layer, else the model's last default layer) that the attack texts
    move most: mean change of pooled activation, attacked minus clean, over images, texts and positions.
    ``data``: the labelled images (`attack_source`: a source, a folder, or "conceptworld-pictos")."""
    source, label_pattern = attack_source(data, images, label_pattern)
    pics, labs, left_out = labelled_images(source, label_pattern, images)
    if not targets or len(pics) < 2:
        raise AttackError(f"nothing to attack: {len(pics)} labelled images and {len(targets)} targets; check --data, "
                          "--label-pattern and --targets")
    # the zero-shot head knows every label and every target class (a target need not occur among the images)
    classes = sorted(set(labs) | {c for _, c in targets})
    classifiers = {"zero-shot": (zero_shot_classifier(model, classes), classes)}
    if probe:
        from ..probes.report import load_probe_weights

        with store.Store(store_path) as st:
            stored = load_probe_weights(st, probe)
        classify = probe_classifier(model, stored.attrs["layer"], stored.W, stored.b, stored.mean, stored.std)
        classifiers[f"probe {probe}"] = (classify, stored.classes)
    rows: dict[str, list] = {k: [] for k in ("classifier", "text", "target", "size", "attempts", "successes",
                                            "success_rate", "pixels_changed", "clean_accuracy")}
    pairs_clean, pairs_attacked, pair_caption = [], [], []
    crops = [model.crop(p) for p in pics]
    for cname, (_, cls) in classifiers.items():
        left_out += [(f"{cname}: target {t!r} -> {c!r}", 1, "the classifier has no such class")
                     for t, c in targets if c not in cls]
    # every attacked image goes through the model once for all classifiers; rows come classifier by classifier
    by_size = {size: attack_rows_shared(model, pics, labs, classifiers, targets, AttackText("x", font=font, size=size))
               for size in sizes}
    for cname, (classify, cls) in classifiers.items():
        for size in sizes:
            for r in by_size[size][cname]:
                for k, v in (("classifier", cname), ("text", r.text), ("target", r.target), ("size", size),
                             ("attempts", r.attempts), ("successes", r.successes),
                             ("success_rate", r.success_rate), ("pixels_changed", r.pixels_changed),
                             ("clean_accuracy", r.clean_accuracy)):
                    rows[k].append(v)
                wins = []
                if cname == "zero-shot" and size == max(sizes):  # successes on different images, one each
                    seen: set[int] = set()
                    for e in r.examples:
                        if e[3] == cls.index(r.target) and e[0] not in seen and len(wins) < examples:
                            seen.add(e[0])
                            wins.append(e)
                for i, p, before, after in wins:
                    pairs_clean.append(np.asarray(crops[i]))
                    pairs_attacked.append(np.asarray(stamp(crops[i], AttackText(r.text, font, size, position=p))))
                    pair_caption.append(f"{cls[before]} -> {cls[after]} ({r.text!r})")
    arrays = {k: (v if isinstance(v[0], str) else np.array(v)) for k, v in rows.items()}
    layer = layer or (stored.attrs["layer"] if probe else model.default_layers[-1])
    delta = _activation_change(model, crops, [t for t, _ in targets], layer, font, max(sizes))  # [U]
    top = np.argsort(-delta, kind="stable")[:top_neurons]
    arrays.update({"neurons/unit": top.astype(np.int32), "neurons/delta": delta[top].astype(np.float32)})
    if pairs_clean:
        arrays.update({"examples/clean": np.stack(pairs_clean), "examples/attacked": np.stack(pairs_attacked),
                       "examples/caption": pair_caption})
    attrs = {"experiment": "attack table", "layer": layer, "model": model.name,
             "images": len(pics), "classes": len(classes), "positions": len(POSITIONS),
             "font": font, "left_out": [list(x) for x in left_out], "data_source": source.description}
    store.write_report(store_path, "attacks", name, arrays, attrs)
    return AttackTableResult(f"attacks/{name}", left_out, rows)


def _activation_change(model: LoadedModel, crops: Sequence[Image.Image], texts: Sequence[str], layer: str,
                       font: str, size: float, limit: int = 64) -> np.ndarray:
    """[U] mean pooled-activation change of ``layer`` when each text is stamped on each of the first ``limit``
    crops (one fixed position per image, cycling through the 8)."""
    from ..capture import pooled_activations

    crops = list(crops[:limit])
    clean = torch.stack([model.preprocess(c) for c in crops])
    base = pooled_activations(model, clean, [layer], "mean")[0][layer]  # [n, U]
    change = torch.zeros(base.shape[1])
    for text in texts:
        stamped = torch.stack([model.preprocess(stamp(c, AttackText(text, font, size, position=i % len(POSITIONS))))
                               for i, c in enumerate(crops)])
        change += (pooled_activations(model, stamped, [layer], "mean")[0][layer] - base).mean(0)
    return (change / len(texts)).numpy()


def run_stroop(model: LoadedModel, store_path: str | os.PathLike, name: str = "stroop",
               prompt: str = "my favorite word, written in the color {}", fonts: Sequence[str] = (
                   "DejaVuSans-Bold.ttf", "ComicNeue-Bold.otf", "Humor-Sans.ttf")) -> StroopResult:
    """Colour words in every other colour (incongruent) and in their own colour (controls)."""
    from ..probes.zeroshot import zero_shot_head, zero_shot_logits

    names = list(STROOP_COLORS)
    head = zero_shot_head(model, names, (prompt,))
    s = model.image_size
    rows = []
    for font in fonts:
        for word in names:
            for ink in names:
                img = stamp(Image.new("RGB", (s, s), (250, 250, 250)),
                            AttackText(word, font=font, size=0.3, color=STROOP_COLORS[ink], label=False,
                                       position=(0.5, 0.5)))
                rows.append((font, word, ink, img))
    pixels = torch.stack([model.preprocess(r[3]) for r in rows])
    pred = zero_shot_logits(model, head, pixels).argmax(1).numpy()
    said = [names[p] for p in pred]
    word = np.array([r[1] for r in rows])
    ink = np.array([r[2] for r in rows])
    incong = word != ink
    result = {"incongruent": int(incong.sum()), "incongruent_said_word": int((np.array(said) == word)[incong].sum()),
              "incongruent_said_ink": int((np.array(said) == ink)[incong].sum()),
              "controls": int((~incong).sum()), "controls_correct": int((np.array(said) == word)[~incong].sum())}
    store.write_report(store_path, "attacks", name, {
        "font": [r[0] for r in rows], "word": list(word), "ink": list(ink), "said": said,
        "examples/image": np.stack([np.asarray(r[3]) for r in rows[: len(names) ** 2]])},
        {"experiment": "stroop", "prompt": prompt, **result})
    return StroopResult(f"attacks/{name}", **result)


def run_word_sensitivity(model: LoadedModel, store_path: str | os.PathLike, layer: str,
                         words: Sequence[str] | None = None, name: str = "words", top: int = 5, fonts: Sequence[str] = (
                             "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "Humor-Sans.ttf", "KaushanScript-Regular.otf")
                         ) -> WordSensitivityResult:
    """Each word (default: `default_words`) rendered black on white in several fonts; a neuron's response is its
    mean spatial max over fonts.  Saves the top words per neuron; the result holds the responses [words, units]."""
    from ..capture import pooled_activations

    info = model.layer(layer)
    s = model.image_size
    words = [w for w in dict.fromkeys(default_words() if words is None else words) if w.strip()]
    imgs = [stamp(Image.new("RGB", (s, s), (250, 250, 250)), AttackText(w, font=f, size=0.3, label=False,
                                                                           position=(0.5, 0.5)))
            for w in words for f in fonts]
    pixels = torch.stack([model.preprocess(i) for i in imgs])
    acts = pooled_activations(model, pixels, [info.name], "max")[0][info.name]
    resp = acts.view(len(words), len(fonts), -1).mean(1).numpy()  # [words, units]
    order = np.argsort(-resp, axis=0, kind="stable")[:top].T  # [units, top]
    store.write_report(store_path, "attacks", name, {
        "words": list(words), "top_index": order.astype(np.int32),
        "top_value": np.take_along_axis(resp.T, order, axis=1).astype(np.float32),
        "responses": resp.astype(np.float32)},
        {"experiment": "word sensitivity", "layer": info.name, "fonts": list(fonts), "model": model.name})
    return WordSensitivityResult(f"attacks/{name}", words, resp)
