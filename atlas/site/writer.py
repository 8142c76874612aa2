"""Writing a site's files: `Writer` puts pages (jinja2 templates, autoescaped, undefined names an error) and binary files
under the site folder, every path component checked (`component`), nothing written outside it."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from ..config import SiteConfig
from ..errors import AtlasError
from ..resources import resource_dir
from ..version import __version__

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class SiteError(AtlasError, ValueError):
    pass


def component(name: str) -> str:
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise SiteError(f"name {name!r} cannot be used in a site path (letters, digits, '._-' only); "
                        "rename the model or layer")
    return name


class Writer:
    def __init__(self, out: Path, env: jinja2.Environment, cfg: SiteConfig):
        self.out, self.env, self.cfg = out.resolve(), env, cfg
        self.pages = self.images = 0

    def path(self, *parts: str) -> Path:
        p = self.out.joinpath(*[component(x) for x in parts]).resolve()
        if self.out not in p.parents:
            raise SiteError(f"refusing to write {p} outside the site folder {self.out}")
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def page(self, template: str, parts: Sequence[str], **ctx: Any) -> None:
        depth = len(parts) - 1
        html = self.env.get_template(template).render(root="../" * depth, cfg=self.cfg,
                                                      version=__version__, **ctx)
        self.path(*parts).write_text(html, encoding="utf-8")
        self.pages += 1

    def binary(self, parts: Sequence[str], data: bytes) -> None:
        self.path(*parts).write_bytes(data)
        self.images += 1


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("site_templates"))),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda x: "nan" if x is None or not np.isfinite(x) else f"{float(x):.4g}"
    return env
