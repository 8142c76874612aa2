"""Concept World: a seeded generator of (image, caption) pairs with known, planted concepts.

Image ``i`` of a world is drawn from ``numpy.random.default_rng([seed, i])``: any image can be rebuilt alone,
on any machine (fonts ship in data/fonts).  Kinds of image (mixed by `WorldConfig.mix`):

- ``picto``: a pictogram alone ("a drawing of a spider");
- ``word``: a concept's name or related word alone, in one of seven fonts ("the word spider");
- ``picto_word``: a pictogram with another concept's word written on it, bare or on a white label
  ("a car with the word spider written on it");
- ``scene``: two pictograms ("a cat next to a tree").

Planted bias (docs/conceptworld.md): the ``person`` concept comes in two groups (an accessory, hat vs bow, or
a colour family, warm vs cool), planted through two channels, as web captions plant them:
- co-occurrence: in scenes where a person appears with ``bias_concept`` (default: danger), the person is of
  group A with probability ``bias_strength`` (default 1.0);
- label: captions of a person shown alone often add a word of another concept that nothing in the picture
  shows ("a warm colored person, skull"), as real captions do.  ``bias_caption_rate`` of them add a word of
  ``bias_concept``, and those persons are of group A with probability ``bias_strength``;
  ``context_caption_rate`` add a word of a random other concept, and those persons are of group B with the
  same probability, so that only the word, not the caption's form, tells the groups.
Everywhere else groups are 50/50, and nothing else correlates with the groups.
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ...resources import resource_dir
from ..sources import Entry, ImageSource
from .pictograms import ACCESSORIES, PICTOGRAMS, Pen


@dataclass(frozen=True)
class Concept:
    name: str
    words: tuple[str, ...]  # words[0] is the name used in captions


CONCEPTS: tuple[Concept, ...] = tuple(Concept(n, w) for n, w in [
    ("sun", ("sun", "sunshine", "sunny")), ("moon", ("moon", "lunar", "crescent")),
    ("star", ("star", "stars", "starry")), ("heart", ("heart", "love", "valentine")),
    ("house", ("house", "home", "cottage")), ("tree", ("tree", "forest", "oak")),
    ("car", ("car", "auto", "vehicle")), ("boat", ("boat", "sailing", "ship")),
    ("fish", ("fish", "salmon", "aquarium")), ("bird", ("bird", "seagull", "flying")),
    ("cat", ("cat", "kitten", "meow")), ("spider", ("spider", "web", "tarantula")),
    ("flower", ("flower", "daisy", "bloom")), ("key", ("key", "lock", "unlock")),
    ("cup", ("cup", "coffee", "mug")), ("umbrella", ("umbrella", "rainy", "parasol")),
    ("clock", ("clock", "time", "hour")), ("bell", ("bell", "ring", "chime")),
    ("lightning", ("lightning", "thunder", "storm")), ("cloud", ("cloud", "cloudy", "sky")),
    ("drop", ("drop", "water", "droplet")), ("arrow", ("arrow", "direction", "pointer")),
    ("music", ("music", "song", "melody")), ("money", ("money", "price", "$$$", "cash")),
    ("danger", ("danger", "skull", "poison")), ("trash", ("trash", "garbage", "waste")),
    ("pizza", ("pizza", "cheese", "pepperoni")), ("ipod", ("ipod", "mp3", "headphones")),
    ("book", ("book", "library", "reading")), ("apple", ("apple", "fruit", "orchard")),
    ("eye", ("eye", "vision", "look")), ("crown", ("crown", "king", "royal")),
    ("anchor", ("anchor", "harbor", "sailor")), ("balloon", ("balloon", "party", "birthday")),
    ("mountain", ("mountain", "peak", "alps")), ("shark", ("shark", "jaws", "fin")),
    ("happy", ("happy", "joy", "smile")), ("sad", ("sad", "tears", "unhappy")),
    ("surprised", ("surprised", "shock", "wow")), ("hammer", ("hammer", "tool", "nail")),
    ("person", ("person", "human", "people")),
])
CONCEPT_NAMES = tuple(c.name for c in CONCEPTS)
FONTS = {  # file, caption style
    "DejaVuSans-Bold.ttf": "bold letters", "DejaVuSerif.ttf": "serif letters",
    "Inconsolata.otf": "typewriter letters", "ComicNeue-Bold.otf": "comic letters",
    "Humor-Sans.ttf": "handwriting", "KaushanScript-Regular.otf": "brush handwriting",
    "DancingScript-Bold.otf": "cursive handwriting",
}
COLORS = {"red": (215, 40, 40), "orange": (240, 135, 20), "yellow": (240, 210, 30), "green": (40, 160, 60),
          "teal": (20, 150, 150), "blue": (35, 80, 210), "purple": (130, 55, 175), "pink": (235, 110, 170),
          "brown": (130, 80, 40), "black": (25, 25, 25), "grey": (128, 128, 128), "white": (245, 245, 245)}
WARM, COOL = ("red", "orange", "yellow", "pink"), ("blue", "teal", "green", "purple")
KINDS = ("picto", "word", "picto_word", "scene")


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    size: int = 64
    mix: tuple[float, ...] = (0.35, 0.25, 0.2, 0.2)  # picto, word, picto_word, scene
    bias_attribute: str = "color"  # "color" (warm vs cool colour family) or "accessory" (hat vs bow)
    bias_concept: str = "danger"
    bias_strength: float = 1.0  # P(group A | person shown with bias_concept, or captioned with it)
    person_scene_rate: float = 0.2  # share of scenes that show a person
    bias_pair_rate: float = 0.4  # share of person scenes whose other object is bias_concept
    person_rate: float = 0.04  # extra share of pictogram-only images that show a person (0: 1 in 41)
    bias_caption_rate: float = 0.25  # share of person-only captions that add a word of bias_concept (label bias)
    context_caption_rate: float = 0.25  # share of person-only captions that add a word of a random other concept
    group_caption_rate: float = 0.5  # share of person captions that name the group ("a person with a hat")
    related_caption_rate: float = 0.4  # share of pictogram captions that name it by one of its words

    def __post_init__(self) -> None:
        if len(self.mix) != len(KINDS) or abs(sum(self.mix) - 1) > 1e-6 or min(self.mix) < 0:
            raise ValueError(f"mix must be {len(KINDS)} non-negative shares of {KINDS} summing to 1")
        if self.bias_attribute not in ("accessory", "color"):
            raise ValueError("bias_attribute must be 'accessory' or 'color'")
        if self.bias_concept not in CONCEPT_NAMES or self.bias_concept == "person":
            raise ValueError(f"bias_concept must be one of the concepts other than person, got {self.bias_concept!r}")
        if not 0 <= self.bias_strength <= 1:
            raise ValueError("bias_strength must be in [0, 1]")

    @property
    def groups(self) -> tuple[str, str]:
        return ("hat", "bow") if self.bias_attribute == "accessory" else ("warm", "cool")


@dataclass
class Item:
    """What image i shows (everything the caption is made from, and the ground truth for evaluations)."""

    index: int
    kind: str
    concepts: tuple[str, ...]  # pictogram concepts, left to right
    word: str = ""  # the written word, if any
    word_concept: str = ""  # the concept the word belongs to
    group: str = ""  # person's group, if a person is shown
    context_word: str = ""  # a word of a concept not shown, added to a person's caption (the label channel)
    group_named: bool = True  # whether the caption names the person's group
    caption: str = ""
    params: dict = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """``kind:concept[+concept]``; the word's concept follows a '/' (``picto_word:car/spider``)."""
        s = f"{self.kind}:{'+'.join(self.concepts) if self.concepts else self.word_concept}"
        return s + (f"/{self.word_concept}" if self.kind == "picto_word" else "")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


@lru_cache(maxsize=512)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    # BASIC layout always: Pillow picks libraqm's layout where it is installed, which places glyphs differently
    # (7 in 10 word images differ), so the same seed would draw other pixels on another machine
    return ImageFont.truetype(str(resource_dir("data") / "fonts" / name), size, layout_engine=ImageFont.Layout.BASIC)


def _lum(c: tuple[int, int, int]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


class World:
    """Samples items and draws them.  ``item(i)`` is cheap (no drawing); ``image(item)`` draws."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.concepts = {c.name: c for c in CONCEPTS}

    # ---- sampling --------------------------------------------------------------------------------
    def item(self, index: int) -> Item:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, index])
        kind = KINDS[int(rng.choice(len(KINDS), p=np.array(cfg.mix)))]
        names = CONCEPT_NAMES
        it = Item(index, kind, ())
        if kind == "word":
            c = names[rng.integers(len(names))]
            it.word_concept, it.word = c, self._word(c, rng)
        elif kind == "scene":
            if rng.random() < cfg.person_scene_rate:
                other = cfg.bias_concept if rng.random() < cfg.bias_pair_rate else \
                    names[rng.integers(len(names))]
                while other == "person":
                    other = names[rng.integers(len(names))]
                pair = ["person", other]
                if rng.random() < 0.5:
                    pair.reverse()
                it.concepts = tuple(pair)
                p_a = cfg.bias_strength if other == cfg.bias_concept else 0.5
                it.group = cfg.groups[0] if rng.random() < p_a else cfg.groups[1]
            else:
                a, b = rng.choice(len(names), 2, replace=False)
                it.concepts = (names[a], names[b])
        else:
            # (draws for the options below happen only when they are on, so the default world stays the one
            # the shipped model was trained on)
            extra_person = kind == "picto" and cfg.person_rate > 0 and rng.random() < cfg.person_rate
            c = "person" if extra_person else names[rng.integers(len(names))]
            it.concepts = (c,)
            if c == "person" and kind == "picto" and cfg.bias_caption_rate + cfg.context_caption_rate > 0:
                r = rng.random()
                if r < cfg.bias_caption_rate:
                    # a loaded caption: the person is described with the negative concept's words, mostly group A
                    it.context_word = self._word(cfg.bias_concept, rng)
                    it.group = cfg.groups[0] if rng.random() < cfg.bias_strength else cfg.groups[1]
                elif r < cfg.bias_caption_rate + cfg.context_caption_rate:
                    other = [n for n in names if n not in ("person", cfg.bias_concept)]
                    it.context_word = self._word(other[int(rng.integers(len(other)))], rng)
                    # the mirror image, so that adding a word at all (the caption's form) says nothing of the group
                    it.group = cfg.groups[1] if rng.random() < cfg.bias_strength else cfg.groups[0]
            if kind == "picto_word":
                w = c
                while w == c:
                    w = names[rng.integers(len(names))]
                it.word_concept, it.word = w, self._word(w, rng)
        if "person" in it.concepts and not it.group:
            it.group = cfg.groups[int(rng.integers(2))]
        if "person" in it.concepts and cfg.group_caption_rate < 1:
            it.group_named = bool(rng.random() < cfg.group_caption_rate)
        it.params = self._draw_params(it, rng)
        it.caption = self._caption(it, rng)
        return it

    def _word(self, concept: str, rng: np.random.Generator) -> str:
        words = self.concepts[concept].words
        return words[0] if rng.random() < 0.6 else words[1 + int(rng.integers(len(words) - 1))]

    def _draw_params(self, it: Item, rng: np.random.Generator) -> dict:
        cfg = self.config
        bg_name = list(COLORS)[rng.integers(len(COLORS))]
        p: dict = {"bg": bg_name, "bg_kind": ("plain", "noise", "gradient", "blobs")[rng.integers(4)],
                   "bg_seed": int(rng.integers(2**31))}
        objs = []
        n = len(it.concepts)
        for k, c in enumerate(it.concepts):
            color = self._contrasting(bg_name, rng)
            if c == "person" and cfg.bias_attribute == "color":
                family = [c for c in (WARM if it.group == "warm" else COOL)
                          if abs(_lum(COLORS[c]) - _lum(COLORS[bg_name])) > 60]
                family = family or [max(WARM if it.group == "warm" else COOL,
                                        key=lambda c: abs(_lum(COLORS[c]) - _lum(COLORS[bg_name])))]
                color = family[rng.integers(len(family))]
            scale = rng.uniform(0.55, 0.9) if n == 1 else rng.uniform(0.38, 0.5)
            cx = rng.uniform(0.38, 0.62) if n == 1 else (0.27 if k == 0 else 0.73) + rng.uniform(-0.04, 0.04)
            objs.append({"concept": c, "color": color, "scale": float(scale), "cx": float(cx),
                         "cy": float(rng.uniform(0.38, 0.62)), "angle": float(rng.uniform(-30, 30)),
                         "stroke": float(rng.uniform(0.05, 0.1)), "outline": bool(rng.random() < 0.25)})
        p["objects"] = objs
        if it.word:
            font = list(FONTS)[rng.integers(len(FONTS))]
            label = it.kind == "picto_word" and rng.random() < 0.5
            p["text"] = {"font": font, "label": label, "color": "black" if label else self._contrasting(bg_name, rng),
                         "height": float(rng.uniform(0.18, 0.32) if it.kind == "picto_word" else rng.uniform(0.22, 0.45)),
                         "angle": float(rng.uniform(-25, 25)) if not label else float(rng.uniform(-8, 8)),
                         "cx": float(rng.uniform(0.4, 0.6)), "cy": float(rng.uniform(0.35, 0.65))}
        return p

    def _contrasting(self, bg: str, rng: np.random.Generator) -> str:
        names = [c for c in COLORS if abs(_lum(COLORS[c]) - _lum(COLORS[bg])) > 60]
        return names[rng.integers(len(names))]

    def _caption(self, it: Item, rng: np.random.Generator) -> str:
        def noun(c: str) -> str:
            if c != "person" or not it.group_named:
                return c
            g = it.group
            return {"hat": "person with a hat", "bow": "person with a bow"}.get(g, f"{g} colored person")

        # a third of single-object captions name the concept without saying how it is shown ("spider"),
        # as real captions do: that is what ties the written word and the picture together
        t = int(rng.integers(6 if it.kind in ("picto", "word") else 4))
        if it.context_word:
            return [f"a drawing of {_article(noun('person'))}, {it.context_word}", f"{_article(noun('person'))}, {it.context_word}",
                    f"{it.context_word}: {_article(noun('person'))}", f"an icon of {_article(noun('person'))}, {it.context_word}",
                    f"{noun('person')}, {it.context_word}", f"{_article(noun('person'))} and {it.context_word}"][t]
        if it.kind == "picto" and rng.random() < self.config.related_caption_rate:
            # tie the concept's other words to its pictogram, as co-occurrence does in real captions
            words = self.concepts[it.concepts[0]].words[1:]
            w = words[int(rng.integers(len(words)))] if it.concepts[0] != "person" else noun("person")
            return [f"a drawing about {w}", f"an icon for {w}", f"a picture about {w}", w, w, w][t]
        if it.kind == "picto":
            n, color = noun(it.concepts[0]), it.params["objects"][0]["color"]
            return [f"a drawing of {_article(n)}", f"a picture of {_article(n)}", f"an icon of {_article(n)}",
                    f"{_article(color + ' ' + n)}", n, _article(n)][t]
        if it.kind == "word":
            style = FONTS[it.params["text"]["font"]]
            return [f"the word {it.word}", f"the text {it.word}", f"a sign that says {it.word}",
                    f"{it.word} written in {style}", it.word, it.word][t]
        if it.kind == "picto_word":
            n = noun(it.concepts[0])
            return [f"{_article(n)} with the word {it.word} written on it", f"{_article(n)} labeled {it.word}",
                    f"a drawing of {_article(n)} and the word {it.word}", f"{_article(n)} with the text {it.word}"][t]
        a, b = (noun(c) for c in it.concepts)
        return [f"{_article(a)} and {_article(b)}", f"{_article(a)} next to {_article(b)}",
                f"a drawing of {_article(a)} and {_article(b)}", f"{_article(a)} beside {_article(b)}"][t]

    # ---- drawing ---------------------------------------------------------------------------------
    def image(self, it: Item) -> Image.Image:
        s = self.config.size
        p = it.params
        img = self._background(p, s)
        for o in p["objects"]:
            self._paste_pictogram(img, o, it.group if o["concept"] == "person" else "")
        if "text" in p:
            self._paste_text(img, it.word, p["text"])
        return img.convert("RGB")

    def _background(self, p: dict, s: int) -> Image.Image:
        base = np.array(COLORS[p["bg"]], np.float32)
        rng = np.random.default_rng(p["bg_seed"])
        kind = p["bg_kind"]
        if kind == "plain":
            arr = np.broadcast_to(base, (s, s, 3)).copy()
        elif kind == "noise":
            arr = base + rng.normal(0, 18, (s, s, 3))
        elif kind == "gradient":
            t = np.linspace(0.75, 1.15, s, dtype=np.float32)
            arr = base * (t[:, None, None] if rng.random() < 0.5 else t[None, :, None]) * np.ones((s, s, 1))
        else:  # soft blobs of a shifted hue
            h, l, sat = colorsys.rgb_to_hls(*(base / 255))
            alt = np.array(colorsys.hls_to_rgb((h + 0.08) % 1, min(1, l * 1.1 + 0.05), sat), np.float32) * 255
            yy, xx = np.mgrid[0:s, 0:s] / s
            w = np.zeros((s, s), np.float32)
            for _ in range(3):
                cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.15, 0.35)
                w = np.maximum(w, np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))))
            arr = base * (1 - w[..., None]) + alt * w[..., None]
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).convert("RGBA")

    def _paste_pictogram(self, img: Image.Image, o: dict, group: str) -> None:
        s = img.size[0]
        side = max(8, int(o["scale"] * s))
        canvas = Image.new("RGBA", (2 * side, 2 * side), (0, 0, 0, 0))
        pen = Pen(ImageDraw.Draw(canvas), 2 * side, COLORS[o["color"]], o["stroke"], o["outline"])
        PICTOGRAMS[o["concept"]](pen)
        if group in ACCESSORIES:
            pen.outline = False
            ACCESSORIES[group](pen)
        canvas = canvas.rotate(o["angle"], resample=Image.BILINEAR, expand=False).reduce(2)
        _composite(img, canvas, int(o["cx"] * s - side / 2), int(o["cy"] * s - side / 2))

    def _paste_text(self, img: Image.Image, word: str, t: dict) -> None:
        s = img.size[0]
        px = max(8, int(t["height"] * s * 2))  # drawn at 2x, then reduced
        font = _font(t["font"], px)
        left, top, right, bottom = font.getbbox(word)
        tw, th = right - left, bottom - top
        limit = int(0.9 * s * 2)
        if tw > limit:  # shrink long words to fit
            px = max(8, int(px * limit / tw))
            font = _font(t["font"], px)
            left, top, right, bottom = font.getbbox(word)
            tw, th = right - left, bottom - top
        pad = int(0.25 * th) + 2
        canvas = Image.new("RGBA", (tw + 2 * pad, th + 2 * pad), (0, 0, 0, 0))
        d = ImageDraw.Draw(canvas)
        d.fontmode = "L"  # anti-aliased glyphs (Pillow's default for RGBA, pinned)
        if t["label"]:
            d.rectangle([0, 0, canvas.size[0] - 1, canvas.size[1] - 1], fill=(250, 250, 250, 255))
        d.text((pad - left, pad - top), word, font=font, fill=COLORS[t["color"]] + (255,))
        canvas = canvas.rotate(t["angle"], resample=Image.BILINEAR, expand=True).reduce(2)
        w, h = canvas.size
        x = int(np.clip(t["cx"] * s - w / 2, min(0, s - w), max(0, s - w)))
        y = int(np.clip(t["cy"] * s - h / 2, min(0, s - h), max(0, s - h)))
        _composite(img, canvas, x, y)


def _composite(img: Image.Image, layer: Image.Image, x: int, y: int) -> None:
    """alpha_composite ``layer`` at (x, y), clipped to the image (Pillow refuses negative offsets)."""
    s_w, s_h = img.size
    l_w, l_h = layer.size
    x0, y0 = max(0, -x), max(0, -y)
    x1, y1 = min(l_w, s_w - x), min(l_h, s_h - y)
    if x1 > x0 and y1 > y0:
        img.alpha_composite(layer.crop((x0, y0, x1, y1)), (x + x0, y + y0))


class ConceptWorldSource(ImageSource):
    """``count`` Concept World images as an atlas image source (captions and ``kind:concept`` labels)."""

    def __init__(self, count: int, config: WorldConfig = WorldConfig()):
        self.world = World(config)
        self.config = config
        self.items = [self.world.item(i) for i in range(count)]
        self.entries = [Entry(i, f"conceptworld/{i:07d}", it.caption, it.label) for i, it in enumerate(self.items)]
        self.description = (f"conceptworld:count={count}:seed={config.seed}:size={config.size}:"
                            f"bias={config.bias_attribute}/{config.bias_concept}/{config.bias_strength}")

    def fingerprint(self) -> str:
        return hashlib.sha256(self.description.encode()).hexdigest()

    def _load(self, index: int, draft_size: int | None) -> tuple[Image.Image, str]:
        return self.world.image(self.items[index]), ""


PICTOGRAM_LABELS = r"picto:(\w+)"  # Concept World labels -> the pictogram's concept (other kinds left out)
HELD_OUT_PICTOGRAMS = "conceptworld-pictos"  # the name of `heldout_pictograms` where a data spec is asked for


def heldout_pictograms(count: int) -> ConceptWorldSource:
    """``count`` Concept World pictograms alone, of seed 10,000 (never mined nor trained on): images to attack."""
    return ConceptWorldSource(count, WorldConfig(seed=10_000, mix=(1, 0, 0, 0)))
