"""The built-in synthetic image set: coloured shapes and words on varied backgrounds, with captions.

Image ``i`` is drawn from a generator seeded with ``(seed, i)``, so any image can be rebuilt alone,
in any order, on any machine: mining it is resumable and its results are reproducible.
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .sources import Entry, ImageSource

COLORS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "stripes", "word")
WORDS = ("cat", "car", "sun", "tree", "house", "fish", "bird", "boat")
BACKGROUNDS = ("plain", "noise", "gradient")


class ShapesSource(ImageSource):
    DEFAULT_COUNT = 2000
    SIZE = 96

    def __init__(self, count: int = DEFAULT_COUNT, seed: int = 0):
        self.count, self.seed = count, seed
        self.description = f"synthetic:shapes:count={count}:seed={seed}"
        self.entries = [self._entry(i) for i in range(count)]

    def _params(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        names = list(COLORS)
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = names[rng.integers(len(names))]
        bg = names[rng.integers(len(names))]
        while bg == color:
            bg = names[rng.integers(len(names))]
        return {
            "shape": shape, "color": color, "bg": bg,
            "background": BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
            "word": WORDS[rng.integers(len(WORDS))],
            "scale": float(rng.uniform(0.35, 0.8)), "angle": float(rng.uniform(0, 360)),
            "cx": float(rng.uniform(0.35, 0.65)), "cy": float(rng.uniform(0.35, 0.65)),
            "noise_seed": int(rng.integers(2**31)),
        }

    def _entry(self, index: int) -> Entry:
        p = self._params(index)
        if p["shape"] == "word":
            caption = f"the word {p['word']} written in {p['color']} on {p['bg']}"
        else:
            caption = f"a {p['color']} {p['shape']} on a {p['bg']} background"
        label = "word" if p["shape"] == "word" else p["shape"]
        return Entry(index, f"shapes/{index:06d}", caption, label)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.description.encode()).hexdigest()

    def _load(self, index: int, draft_size: int | None) -> tuple[Image.Image, str]:
        return draw(self._params(index), self.SIZE), ""


def _background(p: dict, size: int) -> Image.Image:
    base = np.array(COLORS[p["bg"]], dtype=np.float32)
    if p["background"] == "plain":
        arr = np.broadcast_to(base, (size, size, 3)).copy()
    elif p["background"] == "noise":
        rng = np.random.default_rng(p["noise_seed"])
        arr = base + rng.normal(0, 25, (size, size, 3))
    else:
        ramp = np.linspace(0.6, 1.2, size, dtype=np.float32)[:, None, None]
        arr = base * ramp * np.ones((1, size, 1), np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def draw(p: dict, size: int) -> Image.Image:
    img = _background(p, size)
    d = ImageDraw.Draw(img)
    d.fontmode = "L"  # anti-aliased glyphs (Pillow's default for RGB, pinned)
    fill = COLORS[p["color"]]
    r = p["scale"] * size / 2
    cx, cy = p["cx"] * size, p["cy"] * size
    box = (cx - r, cy - r, cx + r, cy + r)
    shape = p["shape"]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, int(r / 3)))
    elif shape in ("square", "triangle", "star", "cross"):
        d.polygon(_polygon(shape, cx, cy, r, math.radians(p["angle"])), fill=fill)
    elif shape == "stripes":
        for k in range(-3, 4):
            off = k * r / 2
            d.line((cx - r, cy + off - r, cx + r, cy + off + r), fill=fill, width=max(2, int(r / 6)))
    else:
        font = _default_font(max(10, int(r * 0.8)))
        d.text((cx, cy), p["word"], fill=fill, font=font, anchor="mm")
    return img


@lru_cache(maxsize=64)
def _default_font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font (Aileron) with the BASIC layout: libraqm's layout, which Pillow picks where it is
    installed, places glyphs differently, so the same image would differ between machines."""
    font = ImageFont.load_default(size=size)
    return font if font.layout_engine == ImageFont.Layout.BASIC else font.font_variant(
        layout_engine=ImageFont.Layout.BASIC)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, n = [r * 0.9], 4
    elif shape == "triangle":
        radii, n = [r], 3
    elif shape == "star":
        radii, n = [r, r * 0.45], 10
    else:  # cross: 12 corners of a plus sign
        pts = [(1, 0.3), (0.3, 0.3), (0.3, 1), (-0.3, 1), (-0.3, 0.3), (-1, 0.3),
               (-1, -0.3), (-0.3, -0.3), (-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3)]
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]
    return [(cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / n),
             cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]
