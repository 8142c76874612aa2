"""Rendering is pinned: words, attack texts and Concept World images have the same pixels on every machine.

Golden sha256 hashes of the pixels drawn through the public functions (`World.image`, `stamp`, the synthetic
source's `draw`).  Pillow lays text out with libraqm where it is installed and with its BASIC layout otherwise;
atlas asks for BASIC everywhere, so the hashes must not depend on libraqm.  They do depend on Pillow's and
FreeType's rasterizers: after an intended change of the drawing code, `python tests/test_rendering.py` prints the
new hashes.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from atlas.attacks import typographic
from atlas.attacks.typographic import AttackText, stamp
from atlas.data import synthetic
from atlas.data.conceptworld import world as cw
from atlas.data.conceptworld.world import Item, World, WorldConfig

# (font, word, colour, height as a share of the side, angle, white label, side)
WORDS = [
    ("DejaVuSans-Bold.ttf", "spider", "red", 0.30, 0.0, False, 64),
    ("DejaVuSerif.ttf", "AVATAR", "blue", 0.25, 12.0, False, 64),
    ("Inconsolata.otf", "coffee", "black", 0.40, -20.0, False, 64),
    ("ComicNeue-Bold.otf", "Toffee", "purple", 0.22, 0.0, True, 64),
    ("Humor-Sans.ttf", "danger", "green", 0.35, 5.0, False, 96),
    ("KaushanScript-Regular.otf", "office", "orange", 0.30, -8.0, True, 64),
    ("DancingScript-Bold.otf", "flying", "teal", 0.45, 25.0, False, 128),
]
# (text, font, size, colour, label, position) on a 96 x 96 grey image
STAMPS = [
    ("ipod", "DejaVuSans-Bold.ttf", 0.16, (20, 20, 20), True, 0),
    ("AV office", "DejaVuSerif.ttf", 0.12, (200, 30, 30), False, 6),
    ("wow", "Humor-Sans.ttf", 0.3, (30, 30, 200), True, (0.5, 0.5)),
    ("Waffle", "KaushanScript-Regular.otf", 0.2, (0, 120, 0), False, 3),
]
SYNTHETIC_WORDS = [("cat", "red", "white", 0.5), ("house", "blue", "yellow", 0.8)]  # Pillow's own font
WORLD_IMAGES = 12  # the first images of the default world (seed 0, 64 px): the shipped model's training data

GOLDEN = {  # made with Pillow 13.0.0, FreeType 2.14.3 (libraqm 0.11.0 installed but not used)
    'word spider DejaVuSans-Bold.ttf 64px': '7ab044436a14d4cbc6b98aac0647b6f39861159364d1e70af254079ab8aa38bb',
    'word AVATAR DejaVuSerif.ttf 64px': '4cd380ef67f3723acd346520a051c9116ea0ab7523368479ab217bba1822d417',
    'word coffee Inconsolata.otf 64px': '17c43e8a6b840db70a3ec031230b5e260fbd4e11f163e5d0469ac327c41f1d91',
    'word Toffee ComicNeue-Bold.otf 64px': '7b1687d994e6dc5c09a32e881bb69b5ca485d39879429c463610cfc64bc58585',
    'word danger Humor-Sans.ttf 96px': 'b433ba206c58279fa626de33a1fc05b1b8b8641ab649534048740763945f53fc',
    'word office KaushanScript-Regular.otf 64px': 'd7897f3f18d9442fbcccab7c8af28f48028bf18039fc9eeca4bbd371c895586e',
    'word flying DancingScript-Bold.otf 128px': '0573c7d4cd08daf386da88b9da3593c94b6f6c7f57eb01d5234eff4d534fa209',
    'stamp ipod DejaVuSans-Bold.ttf': 'bfd0884ca79ba2ade4b27f3ee994a9eb5f668e893cfc4d84792054f3573d644b',
    'stamp AV office DejaVuSerif.ttf': 'faa4d7b751b40955983678698920d844b8c4f827792019035fcf8c77a6c08532',
    'stamp wow Humor-Sans.ttf': '58504500eb916dfb8d382af5740c9aeb4ed621aaa8f8a978382e760c3f49fe81',
    'stamp Waffle KaushanScript-Regular.otf': '242098e2406ee3672d94914ee1ab49dc2e53b63cbc4c131296be3b322e5e9aa4',
    'synthetic cat': '3960e7a9221a383c685e235017d4d2508a7f5d0fc4872169f994af17ba7c5f12',
    'synthetic house': '261257831cd8b26e87926b40c0cd43d5370d89e61e79c371b131a09cbb4a6973',
    'conceptworld 0 picto_word:drop/spider': '8f145621e2a58299dd064d1eea1ec9cd8823f47a0907a3519eb6404b689c64ec',
    'conceptworld 1 scene:anchor+flower': '797881d499db68f6ad4d0d7d200028c8eaa6edc32b54a723eb966325474c74ee',
    'conceptworld 2 picto:bird': 'fdb32f397e4df93836d914ce142855de02aa10735cebbac1264a0c265fb3c8d6',
    'conceptworld 3 scene:ipod+key': '3c532de92ed35e32ab3b2612a3618ef7a500d0c0c31ee8316c1176ace5f2909c',
    'conceptworld 4 scene:anchor+clock': '9e89079bdc3e282a7b650eb49fbcd6fa919c89c62c0442c931780db76beef48d',
    'conceptworld 5 word:mountain': '37bf4b5c7fc5d9f0fd71db2d2737cf26eea84c14cda0e4baeaee4603412eacbb',
    'conceptworld 6 word:arrow': '5278d13029ae1f28e804c6d653dabe7c5db50a32f8347008c7068dbfe5321df6',
    'conceptworld 7 picto:money': 'b3e05962261302aaab04291148e9d54644d435c127ca9b32d7ebfa474a3a85fc',
    'conceptworld 8 picto_word:surprised/crown': '8aa36a61c266e2f1206d4b0be2d77624575a9ef332a6c51c4b29ef9f86a93145',
    'conceptworld 9 word:bird': '1c989758256a4ccd0cfc7e2ac3166fefaa5de74dd0aaf1fb3e19f9cf2cb01e78',
    'conceptworld 10 word:happy': 'db2e7fe28adbfc2a54cd7c5f02b5cb40ca461aa4c436346926519ae19d3ebcce',
    'conceptworld 11 word:fish': 'b9b59b26328afff45bad66e1a4f902e1d661b4d75f0304da35c52392bec95f6a',
}


def _hash(img: Image.Image) -> str:
    return hashlib.sha256(f"{img.mode} {img.size}|".encode() + img.tobytes()).hexdigest()


def renders() -> dict[str, Image.Image]:
    """Every golden case, drawn now."""
    out = {}
    for font, word, color, height, angle, label, side in WORDS:
        params = {"bg": "white" if color != "white" else "black", "bg_kind": "plain", "bg_seed": 0, "objects": [],
                  "text": {"font": font, "label": label, "color": color, "height": height, "angle": angle,
                           "cx": 0.5, "cy": 0.5}}
        item = Item(0, "word", (), word=word, word_concept="", params=params)
        out[f"word {word} {font} {side}px"] = World(WorldConfig(size=side)).image(item)
    base = Image.new("RGB", (96, 96), (128, 128, 128))
    for text, font, size, color, label, position in STAMPS:
        out[f"stamp {text} {font}"] = stamp(base, AttackText(text, font, size, color, label, position))
    for word, color, bg, scale in SYNTHETIC_WORDS:
        p = {"shape": "word", "word": word, "color": color, "bg": bg, "background": "plain", "scale": scale,
             "angle": 0.0, "cx": 0.5, "cy": 0.5, "noise_seed": 0}
        out[f"synthetic {word}"] = synthetic.draw(p, 96)
    world = World(WorldConfig())
    for i in range(WORLD_IMAGES):
        it = world.item(i)
        out[f"conceptworld {i} {it.label}"] = world.image(it)
    return out


def _clear_font_caches() -> None:
    cw._font.cache_clear()
    typographic._font.cache_clear()
    synthetic._default_font.cache_clear()


def _environment() -> str:
    return (f"Pillow {Image.__version__}, FreeType {features.version('freetype2')}, libraqm installed: "
            f"{features.check('raqm')}, FREETYPE_PROPERTIES={os.environ.get('FREETYPE_PROPERTIES', '(unset)')}")


def test_rendered_pixels_match_the_golden_hashes():
    got = {k: _hash(v) for k, v in renders().items()}
    assert set(got) == set(GOLDEN), "the golden cases changed: rerun `python tests/test_rendering.py`"
    wrong = [k for k in got if got[k] != GOLDEN[k]]
    assert not wrong, (
        f"{len(wrong)} of {len(got)} renders have other pixels than the golden ones: {wrong}. On this machine: "
        f"{_environment()}. Check: (1) every font is loaded with layout_engine=ImageFont.Layout.BASIC "
        "(atlas/data/conceptworld/world.py, atlas/attacks/typographic.py, atlas/data/synthetic.py); (2) the Pillow "
        "and FreeType versions (their rasterizers and hinting change between releases; the hashes were made with "
        "Pillow 13.0.0 and FreeType 2.14.3); (3) FREETYPE_PROPERTIES, which changes FreeType's hinting; (4) a change "
        "of the drawing code, in which case `python tests/test_rendering.py` prints the new hashes.")


def test_every_case_draws_something():
    for name, img in renders().items():
        arr = np.asarray(img.convert("RGB"))
        assert len(np.unique(arr.reshape(-1, 3), axis=0)) >= 3, name  # background, ink and anti-aliased edges


def test_same_pixels_with_and_without_libraqm(monkeypatch):
    """Pillow without libraqm (as on machines that lack it) draws exactly what atlas draws here."""
    _clear_font_caches()
    here = {k: np.asarray(v) for k, v in renders().items()}
    monkeypatch.setattr(ImageFont.core, "HAVE_RAQM", False)
    _clear_font_caches()
    try:
        without = {k: np.asarray(v) for k, v in renders().items()}
        assert ImageFont.truetype(str(cw.resource_dir("data") / "fonts" / WORDS[0][0]), 20).layout_engine \
            == ImageFont.Layout.BASIC
    finally:
        _clear_font_caches()
    assert [k for k in here if not np.array_equal(here[k], without[k])] == []


def test_pinning_matters_where_libraqm_is_installed():
    """With libraqm, Pillow's default layout draws other pixels than the pinned BASIC layout (what the pin
    prevents).  Without libraqm both are BASIC and must agree."""
    path = str(cw.resource_dir("data") / "fonts" / "DejaVuSerif.ttf")
    drawn = []
    for font in (ImageFont.truetype(path, 40), cw._font("DejaVuSerif.ttf", 40)):
        img = Image.new("L", (200, 60))
        ImageDraw.Draw(img).text((4, 4), "AVATAR office", font=font, fill=255)
        drawn.append(np.asarray(img))
    assert cw._font("DejaVuSerif.ttf", 40).layout_engine == ImageFont.Layout.BASIC
    assert np.array_equal(drawn[0], drawn[1]) == (not features.check("raqm"))


if __name__ == "__main__":
    for k, v in renders().items():
        print(f"    {k!r}: {_hash(v)!r},")
