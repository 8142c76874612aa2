"""`atlas build`: mine -> feature visualization -> analyses (probe, attacks, audit) -> site, each step
resumable and skipped when done."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from .analyses import run_analyses
from .config import BuildConfig, KindConfig, to_dict
from .data import open_source
from .data.conceptworld import ConceptWorldSource
from .errors import ConfigError
from .featurevis import featurevis
from .featurevis.facets import conceptworld_facets
from .mining import mine
from .mining.distributed import local_device
from .models import load_model
from .site import build_site
from .verify import VerifyResult, already_verified, verify

StepProgress = Callable[[str, int, int], None]


@dataclass
class BuildResult:
    store: Path
    site: Path
    pages: int
    images: int
    bad_images: int
    seconds: dict[str, float] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)
    skipped_reports: list[tuple[str, str]] = field(default_factory=list)
    report_seconds: dict[str, float] = field(default_factory=dict)  # each report run now (part of "analyses")
    verified: VerifyResult | None = None  # the build's closing check (BuildConfig.verify)
    rank: int = 0  # under torchrun: this process's rank; only rank 0 goes past mining


def build(config: BuildConfig = BuildConfig(), out: str | Path = "atlas-out", *, captions: str | None = None,
          device: str = "auto", num_workers: int | None = None, progress: StepProgress | None = None,
          trust_checkpoint: bool = False, log: Callable[[str], None] | None = None) -> BuildResult:
    """Build a complete atlas in ``out``: ``out/atlas.h5`` (the store) and ``out/site/`` (the pages).
    ``num_workers`` (None: what fits the machine) and ``log`` (the settings line) go to `mine`."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; choose another path")
    out.mkdir(parents=True, exist_ok=True)
    store_path, site_path = out / "atlas.h5", out / "site"
    seconds: dict[str, float] = {}

    def step(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    t = time.perf_counter()
    device = local_device(device)  # under torchrun: each process its own GPU
    model = load_model(config.model, device=device, trust_checkpoint=trust_checkpoint)
    source = open_source(config.data, captions=captions)
    seconds["load"] = time.perf_counter() - t

    t = time.perf_counter()
    mined = mine(model, source, store_path, config.mine, num_workers=num_workers, progress=step("mine"), log=log)
    seconds["mine"] = time.perf_counter() - t
    if mined.rank:  # torchrun: the other ranks mined their parts; rank 0 wrote the store and does the rest alone
        return BuildResult(store_path, site_path, 0, mined.images, mined.bad, seconds, rank=mined.rank)

    t = time.perf_counter()
    fv_layers = config.featurevis_layers if config.featurevis_layers is not None else mined.layers[-1:]
    for layer in fv_layers:
        featurevis(model, store_path, layer, config=config.featurevis, progress=step(f"featurevis {layer}"))
    seconds["featurevis"] = time.perf_counter() - t

    if config.facets:
        t = time.perf_counter()
        if not isinstance(source, ConceptWorldSource):
            raise ConfigError("--facets trains Concept World's facets (text, pictogram, scene) and needs Concept "
                              "World data; on other data train facets with `atlas facet train` and render them with "
                              "`atlas featurevis --kind faceted --facet NAME`")
        for layer, name in conceptworld_facets(store_path, list(fv_layers), list(mined.layers)):
            featurevis(model, store_path, layer, config=config.featurevis, kind=KindConfig("faceted", name=name),
                       progress=step(f"featurevis {layer} faceted:{name}"))
        seconds["facets"] = time.perf_counter() - t

    t = time.perf_counter()
    analysed = run_analyses(model, source, store_path, mined.layers[-1], config.analyses, work=out,
                            progress=(lambda key: progress(f"report {key}", 0, 1)) if progress else None)
    seconds["analyses"] = time.perf_counter() - t

    t = time.perf_counter()
    checked = None
    if config.verify and not already_verified(store_path, model.name, config.verify):  # (a rebuild changes nothing)
        checked = verify(model, source, store_path, config.verify)
    seconds["verify"] = time.perf_counter() - t

    t = time.perf_counter()
    site = build_site([store_path], site_path, config.site, progress=step("site"))
    (site_path / "build.json").write_text(json.dumps(
        {"build_config": to_dict(replace(config)), "store": str(store_path.resolve())}, indent=1))
    seconds["site"] = time.perf_counter() - t
    return BuildResult(store_path, site_path, site.pages, site.images, mined.bad, seconds, analysed.done,
                       analysed.skipped, analysed.seconds, checked)
