"""Procedural pictograms of Concept World's concepts.

Each pictogram is a function ``draw(pen)`` that draws in unit coordinates (x, y in [-1, 1], y down) with a
`Pen`; the pen maps to pixels and chooses filled or outlined strokes.  The caller renders the pictogram at
any size, colour, stroke width and rotation (see world.py).
"""

from __future__ import annotations

import math
from typing import Callable

from PIL import ImageDraw

Point = tuple[float, float]
CLEAR = (0, 0, 0, 0)


class Pen:
    """Unit-coordinate drawing on an RGBA canvas.  ``outline`` draws strokes instead of fills."""

    def __init__(self, draw: ImageDraw.ImageDraw, size: int, color: tuple[int, int, int], stroke: float,
                 outline: bool):
        self.d, self.s, self.outline = draw, size, outline
        self.color = color + (255,)
        self.w = max(1, int(round(stroke * size)))

    def p(self, x: float, y: float) -> Point:
        return ((x + 1) * 0.5 * (self.s - 1), (y + 1) * 0.5 * (self.s - 1))

    def box(self, x0: float, y0: float, x1: float, y1: float) -> list[float]:
        a, b = self.p(x0, y0), self.p(x1, y1)
        return [min(a[0], b[0]), min(a[1], b[1]), max(a[0], b[0]), max(a[1], b[1])]

    def _style(self, hole: bool) -> dict:
        if hole:
            return {"fill": CLEAR}
        return {"outline": self.color, "width": self.w} if self.outline else {"fill": self.color}

    def circle(self, x: float, y: float, r: float, hole: bool = False, ry: float | None = None) -> None:
        self.d.ellipse(self.box(x - r, y - (ry or r), x + r, y + (ry or r)), **self._style(hole))

    def poly(self, pts: list[Point], hole: bool = False) -> None:
        self.d.polygon([self.p(*q) for q in pts], **self._style(hole))

    def rect(self, x0: float, y0: float, x1: float, y1: float, hole: bool = False) -> None:
        self.d.rectangle(self.box(x0, y0, x1, y1), **self._style(hole))

    def line(self, pts: list[Point], width: float = 1.0, hole: bool = False) -> None:
        self.d.line([self.p(*q) for q in pts], fill=CLEAR if hole else self.color,
                    width=max(1, int(round(self.w * width))), joint="curve")

    def arc(self, x: float, y: float, r: float, start: float, end: float, width: float = 1.0) -> None:
        self.d.arc(self.box(x - r, y - r, x + r, y + r), start, end, fill=self.color,
                   width=max(1, int(round(self.w * width))))


def _star(n: int, r_out: float, r_in: float, cx: float = 0, cy: float = 0, turn: float = -90) -> list[Point]:
    pts = []
    for k in range(2 * n):
        a = math.radians(turn + 180 * k / n)
        r = r_out if k % 2 == 0 else r_in
        pts.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return pts


def sun(p: Pen) -> None:
    p.circle(0, 0, 0.45)
    for k in range(8):
        a = 2 * math.pi * k / 8
        p.line([(0.6 * math.cos(a), 0.6 * math.sin(a)), (0.95 * math.cos(a), 0.95 * math.sin(a))], 1.5)


def moon(p: Pen) -> None:
    p.circle(0, 0, 0.8)
    p.circle(0.38, -0.18, 0.68, hole=True)


def star(p: Pen) -> None:
    p.poly(_star(5, 0.95, 0.4))


def heart(p: Pen) -> None:
    p.circle(-0.4, -0.3, 0.45)
    p.circle(0.4, -0.3, 0.45)
    p.poly([(-0.83, -0.15), (0.83, -0.15), (0, 0.85)])


def house(p: Pen) -> None:
    p.poly([(-0.9, -0.05), (0, -0.85), (0.9, -0.05)])
    p.rect(-0.65, -0.05, 0.65, 0.85)
    p.rect(-0.18, 0.3, 0.18, 0.85, hole=True)


def tree(p: Pen) -> None:
    p.rect(-0.14, 0.2, 0.14, 0.95)
    p.circle(0, -0.3, 0.62)


def car(p: Pen) -> None:
    p.poly([(-0.95, 0.35), (-0.95, -0.05), (-0.55, -0.1), (-0.3, -0.5), (0.35, -0.5), (0.6, -0.1),
            (0.95, -0.02), (0.95, 0.35)])
    p.circle(-0.5, 0.42, 0.22)
    p.circle(0.5, 0.42, 0.22)


def boat(p: Pen) -> None:
    p.poly([(-0.95, 0.35), (0.95, 0.35), (0.6, 0.8), (-0.6, 0.8)])
    p.poly([(0.05, -0.9), (0.05, 0.25), (0.75, 0.25)])
    p.line([(0, -0.9), (0, 0.35)])


def fish(p: Pen) -> None:
    p.circle(-0.1, 0, 0.65, ry=0.4)
    p.poly([(0.45, 0), (0.95, -0.45), (0.95, 0.45)])
    p.circle(-0.45, -0.1, 0.08, hole=True)


def bird(p: Pen) -> None:
    p.line([(-0.9, -0.3), (-0.45, 0.1), (0, -0.2), (0.45, 0.1), (0.9, -0.3)], 2.0)
    p.circle(0, 0.0, 0.16)


def cat(p: Pen) -> None:
    p.circle(0, 0.15, 0.65)
    p.poly([(-0.6, -0.15), (-0.55, -0.9), (-0.15, -0.45)])
    p.poly([(0.6, -0.15), (0.55, -0.9), (0.15, -0.45)])
    p.circle(-0.25, 0.05, 0.09, hole=True)
    p.circle(0.25, 0.05, 0.09, hole=True)
    for s in (-1, 1):
        p.line([(0.15 * s, 0.35), (0.95 * s, 0.25)], 0.6)
        p.line([(0.15 * s, 0.42), (0.95 * s, 0.5)], 0.6)


def spider(p: Pen) -> None:
    p.circle(0, 0.1, 0.32)
    p.circle(0, -0.35, 0.18)
    for s in (-1, 1):
        for k, y in enumerate((-0.2, 0.0, 0.2, 0.4)):
            p.line([(0.2 * s, y), (0.6 * s, y - 0.35 + 0.15 * k), (0.95 * s, y + 0.1 + 0.1 * k)], 0.9)


def flower(p: Pen) -> None:
    for k in range(6):
        a = 2 * math.pi * k / 6
        p.circle(0.5 * math.cos(a), 0.5 * math.sin(a), 0.32)
    p.circle(0, 0, 0.28, hole=True)
    p.circle(0, 0, 0.18)


def key(p: Pen) -> None:
    p.circle(-0.55, 0, 0.38)
    p.circle(-0.55, 0, 0.16, hole=True)
    p.rect(-0.2, -0.08, 0.95, 0.08)
    p.rect(0.55, 0.08, 0.68, 0.35)
    p.rect(0.8, 0.08, 0.93, 0.3)


def cup(p: Pen) -> None:
    p.poly([(-0.6, -0.6), (0.45, -0.6), (0.35, 0.8), (-0.5, 0.8)])
    p.arc(0.5, 0.0, 0.35, -80, 80, 1.6)


def umbrella(p: Pen) -> None:
    p.d.pieslice(p.box(-0.95, -0.85, 0.95, 0.85), 180, 360, **p._style(False))
    p.line([(0, 0), (0, 0.7)], 1.4)
    p.arc(0.18, 0.7, 0.18, 0, 180, 1.4)


def clock(p: Pen) -> None:
    p.circle(0, 0, 0.9)
    p.circle(0, 0, 0.75, hole=True)
    p.line([(0, 0), (0, -0.55)], 1.4)
    p.line([(0, 0), (0.4, 0.15)], 1.4)


def bell(p: Pen) -> None:
    p.poly([(-0.75, 0.55), (-0.5, 0.2), (-0.45, -0.45), (0, -0.75), (0.45, -0.45), (0.5, 0.2), (0.75, 0.55)])
    p.circle(0, 0.72, 0.17)


def lightning(p: Pen) -> None:
    p.poly([(0.15, -0.95), (-0.55, 0.1), (-0.05, 0.1), (-0.25, 0.95), (0.55, -0.15), (0.05, -0.15), (0.35, -0.95)])


def cloud(p: Pen) -> None:
    p.circle(-0.45, 0.15, 0.38)
    p.circle(0.05, -0.15, 0.5)
    p.circle(0.5, 0.15, 0.38)
    p.rect(-0.45, 0.15, 0.5, 0.53)


def drop(p: Pen) -> None:
    p.poly([(0, -0.95), (-0.5, 0.2), (0.5, 0.2)])
    p.circle(0, 0.3, 0.52)


def arrow(p: Pen) -> None:
    p.rect(-0.9, -0.18, 0.3, 0.18)
    p.poly([(0.2, -0.6), (0.95, 0), (0.2, 0.6)])


def music(p: Pen) -> None:
    p.circle(-0.35, 0.6, 0.28, ry=0.22)
    p.rect(-0.12, -0.8, 0.02, 0.6)
    p.poly([(0.02, -0.8), (0.6, -0.5), (0.6, -0.25), (0.02, -0.5)])


def money(p: Pen) -> None:  # a stack of coins with a dollar sign on top
    for y in (0.65, 0.4, 0.15):
        p.circle(0, y, 0.7, ry=0.2)
    p.circle(0, -0.35, 0.6)
    p.line([(0.2, -0.6), (-0.2, -0.55), (-0.2, -0.38), (0.2, -0.32), (0.2, -0.15), (-0.2, -0.1)], 0.9, hole=True)
    p.line([(0, -0.75), (0, 0.05)], 0.7, hole=True)


def danger(p: Pen) -> None:  # a skull
    p.circle(0, -0.2, 0.7)
    p.rect(-0.38, 0.3, 0.38, 0.85)
    p.circle(-0.28, -0.2, 0.2, hole=True)
    p.circle(0.28, -0.2, 0.2, hole=True)
    p.poly([(0, 0.05), (-0.1, 0.25), (0.1, 0.25)], hole=True)
    for x in (-0.2, 0, 0.2):
        p.line([(x, 0.55), (x, 0.85)], 0.6, hole=True)


def trash(p: Pen) -> None:
    p.rect(-0.85, -0.7, 0.85, -0.5)
    p.rect(-0.2, -0.9, 0.2, -0.7)
    p.poly([(-0.7, -0.45), (0.7, -0.45), (0.55, 0.95), (-0.55, 0.95)])
    for x in (-0.3, 0, 0.3):
        p.line([(x, -0.25), (x * 0.85, 0.75)], 0.7, hole=True)


def pizza(p: Pen) -> None:
    p.poly([(-0.8, -0.75), (0.8, -0.75), (0, 0.95)])
    p.rect(-0.85, -0.9, 0.85, -0.7)
    for x, y in ((-0.3, -0.4), (0.25, -0.45), (0.0, 0.05), (-0.05, 0.5)):
        p.circle(x, y, 0.12, hole=True)


def ipod(p: Pen) -> None:
    p.rect(-0.55, -0.95, 0.55, 0.95)
    p.rect(-0.4, -0.8, 0.4, -0.15, hole=True)
    p.circle(0, 0.45, 0.32, hole=True)
    p.circle(0, 0.45, 0.11)


def book(p: Pen) -> None:
    p.poly([(-0.95, -0.6), (-0.05, -0.75), (-0.05, 0.75), (-0.95, 0.9)])
    p.poly([(0.95, -0.6), (0.05, -0.75), (0.05, 0.75), (0.95, 0.9)])
    for y in (-0.3, 0.0, 0.3):
        p.line([(-0.8, y), (-0.2, y - 0.1)], 0.5, hole=True)
        p.line([(0.2, y - 0.1), (0.8, y)], 0.5, hole=True)


def apple(p: Pen) -> None:
    p.circle(-0.3, 0.15, 0.55)
    p.circle(0.3, 0.15, 0.55)
    p.line([(0, -0.3), (0.1, -0.85)], 1.2)
    p.circle(0.35, -0.7, 0.22, ry=0.1)


def eye(p: Pen) -> None:
    p.circle(0, 0, 0.95, ry=0.5)
    p.circle(0, 0, 0.4, hole=True)
    p.circle(0, 0, 0.22)


def crown(p: Pen) -> None:
    p.poly([(-0.9, 0.6), (-0.9, -0.6), (-0.45, 0), (0, -0.8), (0.45, 0), (0.9, -0.6), (0.9, 0.6)])


def anchor(p: Pen) -> None:
    p.circle(0, -0.75, 0.18)
    p.line([(0, -0.55), (0, 0.85)], 1.5)
    p.line([(-0.45, -0.3), (0.45, -0.3)], 1.5)
    p.arc(0, 0.25, 0.65, 20, 160, 1.6)


def balloon(p: Pen) -> None:
    p.circle(0, -0.25, 0.6, ry=0.7)
    p.poly([(0, 0.4), (-0.12, 0.55), (0.12, 0.55)])
    p.line([(0, 0.55), (0.15, 0.75), (-0.1, 0.95)], 0.6)


def mountain(p: Pen) -> None:
    p.poly([(-0.95, 0.8), (-0.3, -0.7), (0.15, 0.1), (0.45, -0.3), (0.95, 0.8)])
    p.poly([(-0.3, -0.7), (-0.48, -0.3), (-0.12, -0.3)], hole=True)


def shark(p: Pen) -> None:  # a fin above waves
    p.poly([(-0.5, 0.3), (0.1, -0.85), (0.45, 0.3)])
    p.line([(-0.95, 0.45), (-0.6, 0.3), (-0.25, 0.5), (0.1, 0.3), (0.45, 0.5), (0.95, 0.3)], 1.5)


def happy(p: Pen) -> None:
    p.circle(0, 0, 0.9)
    p.circle(-0.3, -0.25, 0.12, hole=True)
    p.circle(0.3, -0.25, 0.12, hole=True)
    p.d.arc(p.box(-0.5, -0.3, 0.5, 0.55), 20, 160, fill=CLEAR, width=max(2, p.w))


def sad(p: Pen) -> None:
    p.circle(0, 0, 0.9)
    p.circle(-0.3, -0.25, 0.12, hole=True)
    p.circle(0.3, -0.25, 0.12, hole=True)
    p.d.arc(p.box(-0.45, 0.25, 0.45, 0.85), 200, 340, fill=CLEAR, width=max(2, p.w))


def surprised(p: Pen) -> None:
    p.circle(0, 0, 0.9)
    p.circle(-0.3, -0.3, 0.14, hole=True)
    p.circle(0.3, -0.3, 0.14, hole=True)
    p.circle(0, 0.35, 0.2, ry=0.26, hole=True)


def hammer(p: Pen) -> None:
    p.rect(-0.1, -0.3, 0.1, 0.95)
    p.poly([(-0.75, -0.75), (0.55, -0.75), (0.75, -0.55), (0.75, -0.35), (-0.75, -0.35)])


def person(p: Pen) -> None:  # a stick figure; accessories (the planted group attribute) are drawn by world.py
    p.circle(0, -0.5, 0.2)
    p.line([(0, -0.3), (0, 0.35)], 1.5)
    p.line([(-0.45, -0.05), (0.45, -0.05)], 1.3)
    p.line([(-0.35, 0.95), (0, 0.35), (0.35, 0.95)], 1.4)


def hat(p: Pen) -> None:  # group A accessory: a top hat on the head of `person`
    p.rect(-0.32, -0.78, 0.32, -0.7)
    p.rect(-0.18, -1.0, 0.18, -0.78)


def bow(p: Pen) -> None:  # group B accessory: a ribbon bow on the head of `person`
    p.poly([(0, -0.78), (-0.32, -0.95), (-0.32, -0.62)])
    p.poly([(0, -0.78), (0.32, -0.95), (0.32, -0.62)])


PICTOGRAMS: dict[str, Callable[[Pen], None]] = {f.__name__: f for f in (
    sun, moon, star, heart, house, tree, car, boat, fish, bird, cat, spider, flower, key, cup, umbrella, clock,
    bell, lightning, cloud, drop, arrow, music, money, danger, trash, pizza, ipod, book, apple, eye, crown,
    anchor, balloon, mountain, shark, happy, sad, surprised, hammer, person)}
ACCESSORIES: dict[str, Callable[[Pen], None]] = {"hat": hat, "bow": bow}
