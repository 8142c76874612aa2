"""Typographic attacks: text written on images, and what it does to a classifier and to neurons.

`stamp` renders an attack text onto an image (font, size, colour, one of 8 fixed positions or any point, on a
white "sticky label" or bare).  `attack_rows` reproduces the paper's automated attack: for every labelled
image and target, the text is stamped at each of the 8 positions and the attack succeeds when the top-1 class
becomes the target (images already of the target class are left out).  Classifiers are functions from
[N, 3, S, S] pixels to [N, classes] scores: a zero-shot head or a linear probe (`zero_shot_classifier`,
`probe_classifier`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..models import LoadedModel
from ..resources import resource_dir
from ..errors import AtlasError

# (x, y) centres as fractions of the image: the 8 fixed positions (corners, edge middles)
POSITIONS = ((0.25, 0.2), (0.5, 0.2), (0.75, 0.2), (0.2, 0.5), (0.8, 0.5), (0.25, 0.8), (0.5, 0.8), (0.75, 0.8))
MAX_CHARS = 40
Classifier = Callable[[torch.Tensor], torch.Tensor]


class AttackError(AtlasError, ValueError):
    pass


@dataclass(frozen=True)
class AttackText:
    text: str
    font: str = "DejaVuSans-Bold.ttf"  # a file in data/fonts (Humor-Sans.ttf, KaushanScript-Regular.otf: handwriting)
    size: float = 0.16  # text height as a fraction of the image side
    color: tuple[int, int, int] = (20, 20, 20)
    label: bool = True  # a white box behind the text
    position: int | tuple[float, float] = 0  # index into POSITIONS, or an (x, y) centre in [0, 1]

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise AttackError("attack text is empty; give the words to write on the images")
        if len(self.text) > MAX_CHARS:
            raise AttackError(f"attack text {self.text[:20]!r}... has {len(self.text)} characters; at most "
                              f"{MAX_CHARS} fit legibly on an image")
        if isinstance(self.position, int) and not 0 <= self.position < len(POSITIONS):
            raise AttackError(f"position {self.position} is not one of the {len(POSITIONS)} fixed positions 0..7")
        if not 0.03 <= self.size <= 0.6:
            raise AttackError(f"size {self.size} must be a fraction of the image side in 0.03..0.6")


@lru_cache(maxsize=64)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    path = resource_dir("data") / "fonts" / name
    if not path.is_file():
        raise AttackError(f"font {name!r} is not in atlas's fonts ({', '.join(p.name for p in path.parent.glob('*.[ot]tf'))})")
    # BASIC layout, as Concept World draws its words: libraqm's layout (used where installed) places glyphs
    # differently, so the attacked pixels would depend on the machine
    return ImageFont.truetype(str(path), px, layout_engine=ImageFont.Layout.BASIC)


def stamp(image: Image.Image, spec: AttackText) -> Image.Image:
    """The image with the text written on it (a new RGB image of the same size)."""
    img = image.convert("RGB").copy()
    w, h = img.size
    px = max(6, int(spec.size * h))
    font = _font(spec.font, px)
    left, top, right, bottom = font.getbbox(spec.text)
    if right - left > 0.95 * w:  # shrink to fit the width
        px = max(6, int(px * 0.95 * w / (right - left)))
        font = _font(spec.font, px)
        left, top, right, bottom = font.getbbox(spec.text)
    if right - left > w or px < 6:
        raise AttackError(f"attack text {spec.text!r} does not fit on a {w}x{h} image; use a shorter text")
    if right <= left or bottom <= top:
        raise AttackError(f"attack text {spec.text!r} renders no visible glyph in font {spec.font}")
    cx, cy = POSITIONS[spec.position] if isinstance(spec.position, int) else spec.position
    tw, th = right - left, bottom - top
    pad = max(1, th // 5)
    x = int(np.clip(cx * w - tw / 2, pad, max(pad, w - tw - pad)))
    y = int(np.clip(cy * h - th / 2, pad, max(pad, h - th - pad)))
    d = ImageDraw.Draw(img)
    d.fontmode = "L"  # anti-aliased glyphs (Pillow's default for RGB, pinned)
    if spec.label:
        d.rectangle([x - pad, y - pad, x + tw + pad, y + th + pad], fill=(250, 250, 250))
    d.text((x - left, y - top), spec.text, font=font, fill=tuple(spec.color))
    return img


def pixels_changed(a: Image.Image, b: Image.Image) -> float:
    """Fraction of pixels that differ between two images of the same size."""
    x, y = np.asarray(a.convert("RGB"), np.int16), np.asarray(b.convert("RGB"), np.int16)
    return float((np.abs(x - y).max(axis=2) > 0).mean())


class FeatureClassifier:
    """A classifier read from one forward pass: logits from the image embedding [N, D] and the spatial means
    [N, U] of ``layers``.  Several of them share one forward (`predict`); each is also a classifier of pixels."""

    def __init__(self, model: LoadedModel, layers: tuple[str, ...],
                 logits: Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]) -> None:
        self.model, self.layers, self.logits = model, layers, logits

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return predict(self.model, pixels, {"": self})[""]


def predict(model: LoadedModel, pixels: torch.Tensor, classifiers: dict[str, Classifier]) -> dict[str, torch.Tensor]:
    """[N, classes] scores of every classifier on [N, 3, S, S] ``pixels``, with one forward pass for all the
    `FeatureClassifier` ones (any other classifier is called on the pixels)."""
    from ..capture import pooled_activations

    shared = {n: c for n, c in classifiers.items() if isinstance(c, FeatureClassifier)}
    out: dict[str, torch.Tensor] = {}
    if shared:
        layers = sorted({layer for c in shared.values() for layer in c.layers})
        pooled, embedding = pooled_activations(model, pixels, layers, "mean")  # {layer: [N, U]}, [N, D]
        out = {n: c.logits(pooled, embedding) for n, c in shared.items()}
    return {n: out[n] if n in out else c(pixels) for n, c in classifiers.items()}


def zero_shot_classifier(model: LoadedModel, class_names: Sequence[str]) -> FeatureClassifier:
    """Cosine similarities of the normalized image embedding with the class names' zero-shot head."""
    from ..probes.zeroshot import zero_shot_head

    head = zero_shot_head(model, class_names)

    def logits(pooled: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
        return (f / f.norm(dim=-1, keepdim=True)) @ head.to(f.device).t()  # as zero_shot_logits

    return FeatureClassifier(model, (), logits)


def probe_classifier(model: LoadedModel, layer: str, W: np.ndarray, b: np.ndarray, mean: np.ndarray,
                     std: np.ndarray) -> FeatureClassifier:
    """A stored linear probe on a layer's pooled (spatial mean) activations."""
    Wt, bt = torch.as_tensor(W, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)
    mu, sd = torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)

    def logits(pooled: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
        return ((pooled[layer] - mu) / sd) @ Wt.t() + bt

    return FeatureClassifier(model, (layer,), logits)


@dataclass
class AttackRow:
    text: str
    target: str
    attempts: int = 0  # (image, position) pairs whose image is not of the target class
    successes: int = 0
    pixels_changed: float = 0.0  # mean fraction
    clean_accuracy: float = 0.0
    examples: list[tuple[int, int, int, int]] = field(default_factory=list)  # (image, position, before, after)

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else float("nan")


def attack_rows(model: LoadedModel, images: Sequence[Image.Image], labels: Sequence[int], classes: Sequence[str],
                targets: Sequence[tuple[str, str]], classify: Classifier,
                base: AttackText = AttackText("x"), positions: Sequence[int] = range(len(POSITIONS))
                ) -> list[AttackRow]:
    """For each (attack text, target class): success rate, pixels changed, clean accuracy (see module doc)."""
    names = [classes[i] if 0 <= i < len(classes) else None for i in labels]
    return attack_rows_shared(model, images, names, {"": (classify, classes)}, targets, base, positions)[""]


def attack_rows_shared(model: LoadedModel, images: Sequence[Image.Image], labels: Sequence[str | None],
                       classifiers: dict[str, tuple[Classifier, Sequence[str]]], targets: Sequence[tuple[str, str]],
                       base: AttackText = AttackText("x"), positions: Sequence[int] = range(len(POSITIONS))
                       ) -> dict[str, list[AttackRow]]:
    """`attack_rows` of several classifiers (name -> (classifier, its classes)) on the same labelled images, each
    attacked image stamped and passed through the model once for all of them (`predict`).  A classifier
    gets the rows of the targets among its classes; an image's label is its class name (None: no class)."""
    for cname, (_, cls) in classifiers.items():
        unknown = [t for _, t in targets if t not in cls]
        if unknown and len(classifiers) == 1:
            raise AttackError(f"target classes {unknown} are not among the classifier's classes")
    crops = [model.crop(im) for im in images]
    fns = {n: c for n, (c, _) in classifiers.items()}
    clean = {n: v.argmax(1).numpy() for n, v in predict(model, torch.stack([model.preprocess(c) for c in crops]),
                                                        fns).items()}
    y = {n: np.array([cls.index(lab) if lab in cls else -1 for lab in labels]) for n, (_, cls) in classifiers.items()}
    rows: dict[str, list[AttackRow]] = {n: [] for n in classifiers}
    for text, target in targets:
        mine = {n: c for n, c in fns.items() if target in classifiers[n][1]}
        if not mine:
            continue
        keep = [i for i in range(len(crops)) if labels[i] != target]
        attacked, changed, where = [], [], []
        for i in keep:
            for p in positions:
                spec = AttackText(text, base.font, base.size, base.color, base.label, p)
                a = stamp(crops[i], spec)
                attacked.append(model.preprocess(a))
                changed.append(pixels_changed(crops[i], a))
                where.append((i, p))
        preds = predict(model, torch.stack(attacked), mine) if attacked else {n: torch.zeros(0, 1) for n in mine}
        for n in mine:
            t = classifiers[n][1].index(target)
            pred = preds[n].argmax(1).numpy() if attacked else np.zeros(0, int)
            row = AttackRow(text, target, clean_accuracy=float((clean[n] == y[n]).mean()))
            row.attempts, row.successes = len(pred), int((pred == t).sum())
            row.pixels_changed = float(np.mean(changed)) if changed else float("nan")
            row.examples = [(i, p, int(clean[n][i]), int(q)) for (i, p), q in zip(where, pred)]
            rows[n].append(row)
    return rows
