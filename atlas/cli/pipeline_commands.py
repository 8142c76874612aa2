"""Commands of the pipeline: build, mine, maps, featurevis, site, verify, info, export."""

from __future__ import annotations

import os
import time
from pathlib import Path

import click

from .progress import Progress, process_started
from ..config import (EXPORT_FORMATS, FEATUREVIS_KINDS, PIXELS, PRECISIONS, RESIZES, AnalysesConfig, BuildConfig,
                      ExportConfig, FeatureVisConfig, KindConfig, MineConfig, SiteConfig)
from .common import (captions_opt, data_opt, device_opt, guarded, layers_opt, main, model_opt, parse_units,
                     split_list, trust_opt, workers_opt)


@main.command()
@model_opt
@data_opt
@captions_opt
@click.option("--out", default="atlas-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder: OUT/atlas.h5 (store) and OUT/site/index.html (site).")
@layers_opt
@click.option("--featurevis-layers", default=None, help="Layers to visualize (default: the last mined layer; "
              "'none' for no feature visualization).")
@click.option("--max-images", type=click.IntRange(1), default=None, help="Mine only the first N images.")
@click.option("--top-k", default=MineConfig.top_k, show_default=True, type=click.IntRange(1, 1000))
@click.option("--steps", default=BuildConfig().featurevis.steps, show_default=True, type=click.IntRange(1),
              help="Feature visualization optimizer steps.")
@click.option("--label-pattern", default=None,
              help=r"Regex whose group 1 is the class for the probe and the attack table, e.g. 'picto:(\w+)' "
                   "(default on Concept World; else the labels as they are).")
@click.option("--no-reports", is_flag=True, help="Skip the probe, attack and audit reports.")
@click.option("--facets", is_flag=True, help="Also train Concept World's facets (text, pictogram, scene) on the layer "
              "before each visualized one and render faceted visualizations (about 3x the featurevis time; "
              "docs/featurevis.md).")
@click.option("--audit-groups", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV of image,group to audit (paths relative to --audit-folder).")
@click.option("--audit-folder", default=None, type=click.Path(exists=True, file_okay=False))
@device_opt
@workers_opt
@trust_opt
def build(model_spec, data, captions, out, layers, featurevis_layers, max_images, top_k, steps, label_pattern,
          no_reports, facets, audit_groups, audit_folder, device, workers, trust_checkpoint):
    """Mine, visualize, analyse and render a whole atlas (defaults: the shipped model on the built-in data)."""
    from ..build import build as run_build

    if (audit_groups is None) != (audit_folder is None):
        raise click.UsageError("--audit-groups and --audit-folder go together")
    fv = None if featurevis_layers is None else (() if featurevis_layers == "none" else split_list(featurevis_layers))
    on = not no_reports
    analyses = AnalysesConfig(probe=on, attacks=on, audit=on, labels=on, label_pattern=label_pattern,
                              audit_groups=audit_groups, audit_folder=audit_folder)
    cfg = BuildConfig(model=model_spec, data=data,
                      mine=MineConfig(layers=split_list(layers), top_k=top_k, max_images=max_images),
                      featurevis=FeatureVisConfig(steps=steps), site=SiteConfig(), featurevis_layers=fv,
                      analyses=analyses, facets=facets)
    bars, t0 = Progress(), time.perf_counter()
    r = guarded(lambda: run_build(cfg, out, captions=captions, device=device, num_workers=workers, progress=bars,
                                  trust_checkpoint=trust_checkpoint, log=lambda line: click.echo(line, err=True)))
    bars.close()
    if r.rank:
        click.echo(f"rank {r.rank}: mined its part of the images; rank 0 writes the store and builds the rest")
        return
    parts = ", ".join(f"{k} {v:.1f}s" for k, v in r.report_seconds.items())
    times = ", ".join(f"{k} {v:.1f}s" + (f" ({parts})" if k == "analyses" and parts else "")
                      for k, v in r.seconds.items())
    click.echo(f"store: {r.store}\nsite:  {r.site / 'index.html'} ({r.pages} pages, {r.images} images; "
               f"{r.bad_images} bad input files skipped)\nreports: {', '.join(r.reports) or 'none'}\ntime:  {times}")
    for key, why in r.skipped_reports:
        click.echo(f"skipped {key}: {why}")
    if r.verified is not None:
        for c in r.verified.layers:
            click.echo(f"verify {c.line()}")
    click.echo(f"built {r.site / 'index.html'} in {time.perf_counter() - t0:.1f} s")
    if r.verified is not None:
        if not r.verified.ok:
            raise click.ClickException(f"the store's numbers disagree with the independent reference (above); the "
                                       f"site shows it; run `atlas verify {r.store}` to check again")


@main.command()
@model_opt
@data_opt
@captions_opt
@click.option("--store", "store_path", required=True, type=click.Path(dir_okay=False),
              help="HDF5 store to create or add layers to.")
@layers_opt
@click.option("--top-k", default=MineConfig.top_k, show_default=True, type=click.IntRange(1, 1000))
@click.option("--batch-size", default=None, type=click.IntRange(1),
              help="Images per forward pass.  Default: what fits the machine: 64 on a CPU; with a GPU 256 from 24 GiB "
                   "of memory, 128 from 12 GiB, else 64.")
@click.option("--rank-by", type=click.Choice(["max", "mean"]), default=MineConfig.rank_by, show_default=True,
              help="Per-image score of a neuron: max or mean over its spatial map.")
@click.option("--max-images", type=click.IntRange(1), default=None)
@click.option("--no-pooled", is_flag=True, help="Do not store the images x units matrix of spatial means.")
@click.option("--map-size", default=MineConfig.map_size, show_default=True, type=click.IntRange(1, 64),
              help="Each top example's map is average-pooled to at most this many cells a side; 1 keeps only "
                   "(value, image, peak position) per example: units x top-k x 1 float, for wide SAE layers.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=MineConfig.precision, show_default=True,
              help="The image tower's arithmetic; auto: bfloat16 autocast on a CUDA GPU, float32 elsewhere.")
@click.option("--pixels", type=click.Choice(PIXELS), default=MineConfig.pixels, show_default=True,
              help="What the model sees of a file: exact (full decode + the model's own transform, byte for byte), "
                   "draft (JPEGs shrunk inside libjpeg first: faster, other pixels) or approx (torch's bicubic on "
                   "the device: less CPU, within ~1/255).")
@click.option("--resize", type=click.Choice(RESIZES + ("pil",)), default="auto", show_default=True,
              help="Where the exact resize runs: cpu (decoding processes; 'pil' is the same) or device; the "
                   "pixels are the same. auto: cpu (faster on mixed-size files; docs/benchmarks.md).")
@click.option("--checkpoint-seconds", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds between checkpoints (a killed run resumes from the last one).")
@device_opt
@workers_opt
@trust_opt
def mine(model_spec, data, captions, store_path, layers, top_k, batch_size, rank_by, max_images, no_pooled,
         map_size, precision, pixels, resize, checkpoint_seconds, device, workers, trust_checkpoint):
    """Stream images through a model; keep exact top-k examples and statistics per neuron."""
    from ..data import open_source
    from ..mining import mine as run_mine
    from ..mining.distributed import is_leader, local_device
    from ..mining.early import start_decoding
    from ..models import load_model
    from ..store import check_unlocked

    cfg = MineConfig(layers=split_list(layers), top_k=top_k, batch_size=batch_size, rank_by=rank_by,
                     max_images=max_images, keep_pooled=not no_pooled, map_size=map_size, precision=precision,
                     pixels=pixels)
    bars, where = Progress(), "cpu" if resize == "pil" else resize

    alone, device = os.environ.get("WORLD_SIZE", "1") in ("", "1"), local_device(device)  # torchrun: a GPU each

    def go():
        if is_leader():  # (under torchrun rank 0 takes the lock: the others would find it taken)
            check_unlocked(store_path)  # fail at once, not after loading the model
        source = open_source(data, captions)
        # the files' decoding starts now and runs while the model is built (atlas.mining.early); alone only, as
        # torchrun's ranks each decode a part
        early = start_decoding(model_spec, source, store_path, cfg, workers, device, where) if alone else None
        try:
            model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
            return run_mine(model, source, store_path, cfg, num_workers=workers, checkpoint_seconds=checkpoint_seconds,
                            progress=bars.step("mine"), log=lambda line: click.echo(line, err=True), resize=where,
                            early=early)
        finally:
            if early is not None:
                early.close()

    r = guarded(go)
    bars.close()
    if r.rank:
        resumed = f", resumed at image {r.resumed_from}" if r.resumed_from > r.part[0] else ""
        click.echo(f"rank {r.rank} of {r.world}: mined images [{r.part[0]}, {r.part[1]}) ({r.bad} bad files{resumed}); "
                   "rank 0 writes the store")
        return
    if r.skipped_layers and len(r.skipped_layers) == len(r.layers):
        click.echo(f"{store_path}: every layer was already mined with these settings; nothing to do")
        return
    resumed = f", resumed at image {r.resumed_from}" if r.resumed_from else ""
    started = process_started()  # whole command: from the process's start, imports and model load included
    first = f": first batch after {r.first_batch_at - started:.1f} s" if r.first_batch_at else ""
    steady = f", then {r.steady[0] / r.steady[1]:,.0f} images/s" if r.steady[0] and r.steady[1] > 0 else ""
    commit = sum(r.seconds.get(k, 0.0) for k in ("commit", "pooled", "thumbnails"))
    click.echo(f"{store_path}: mined {len(r.layers) - len(r.skipped_layers)} layers over {r.images} images "
               f"({r.bad} bad files skipped{resumed}) in {time.time() - started:.1f} s (whole command){first}"
               f"{steady}; commit {commit:.1f} s")
    click.echo("mine: seconds by phase: " + ", ".join(f"{k} {v:.1f}" for k, v in r.seconds.items()))
    for layer, n in r.nonfinite.items():
        if n:
            click.echo(f"warning: {layer}: the model produced inf or NaN in {n} image x unit maps; they are left out "
                       "of the top-k and statistics and counted in stats/nonfinite_maps (shown on the layer page)")


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", "layer", required=True, help="Layer to visualize.")
@click.option("--units", default=None, help="Units, e.g. 0-63,100 (default: all; --kind direction: one per "
              "direction in the file, default 0..K-1).")
@click.option("--kind", default="channel", show_default=True,
              help="What to maximize: channel, neuron (the centre position), direction (--direction-file), "
                   "diversity (several images per unit) or faceted (--facet); docs/featurevis.md.")
@click.option("--facet", default=None, help="--kind faceted: the facet (see `atlas facet train`).")
@click.option("--direction-file", default=None, type=click.Path(dir_okay=False),
              help="--kind direction: a .npy of shape [C] or [K, C] (C: the layer's units); row i is rendered for "
                   "the i-th unit of --units.")
@click.option("--name", default=None, help="--kind direction: the direction set's name (default: the file's stem).")
@click.option("--images", default=None, type=int, help=f"--kind diversity: images per unit (default {KindConfig.images}).")
@click.option("--weight", default=None, type=float,
              help=f"--kind diversity / faceted: the weight of the diversity term (default "
                   f"{KindConfig.diversity_weight}) or of the facet (default {KindConfig.facet_weight}).")
@click.option("--steps", default=FeatureVisConfig.steps, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=FeatureVisConfig.batch, show_default=True, type=click.IntRange(1),
              help="Images rendered together (one unit per batch element; diversity: --images per unit).")
@click.option("--size", default=FeatureVisConfig.size, show_default=True, type=click.IntRange(8, 1024))
@click.option("--lr", default=FeatureVisConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@device_opt
@trust_opt
def featurevis(store_path, layer, units, kind, facet, direction_file, name, images, weight, steps, batch, size, lr,
               device, trust_checkpoint):
    """Render feature visualizations of a mined layer into its store (default kind: channel)."""
    from ..featurevis import featurevis as run_fv
    from ..models import load_model
    from ..store import Store

    cfg = FeatureVisConfig(steps=steps, batch=batch, size=size, lr=lr)
    unit_list = parse_units(units)
    bars, t0 = Progress(), time.perf_counter()

    def go():
        kcfg, directions = kind_config(kind, facet, direction_file, name, images, weight)
        with Store(store_path) as st:
            spec = st.meta["model_spec"]
        model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
        return run_fv(model, store_path, layer, unit_list, cfg, progress=bars.step(f"featurevis {layer}"),
                      kind=kcfg, directions=directions)

    r = guarded(go)
    bars.close()
    click.echo(f"{store_path}: {layer}: rendered {r.rendered} neurons ({r.reused} already done) in "
               f"{time.perf_counter() - t0:.1f} s")


def kind_config(kind, facet, direction_file, name, images, weight):
    """--kind and its options -> (KindConfig, directions or None); ConfigError naming the option otherwise."""
    import numpy as np

    from ..errors import ConfigError

    if kind not in FEATUREVIS_KINDS:
        raise ConfigError(f"--kind: unknown kind {kind!r}; use one of {', '.join(FEATUREVIS_KINDS)}")
    if (facet is not None) != (kind == "faceted"):
        raise ConfigError("--facet NAME goes with --kind faceted (and --kind faceted needs it)")
    if (direction_file is not None) != (kind == "direction"):
        raise ConfigError("--direction-file goes with --kind direction (and --kind direction needs it)")
    if name is not None and kind != "direction":
        raise ConfigError("--name names a direction set: use it with --kind direction")
    directions = None
    if direction_file is not None:
        try:
            directions = np.load(direction_file, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"--direction-file {direction_file}: not a readable .npy array ({e}); save one with "
                              "numpy.save") from e
        name = name or Path(direction_file).stem
    extra = {}
    if weight is not None:
        if kind not in ("diversity", "faceted"):
            raise ConfigError(f"--weight weighs the diversity or facet term: use it with --kind diversity or faceted, "
                              f"not --kind {kind}")
        extra = {"diversity_weight": weight} if kind == "diversity" else {"facet_weight": weight}
    if images is not None:
        if kind != "diversity":
            raise ConfigError(f"--images goes with --kind diversity, not --kind {kind}")
        extra["images"] = images
    return KindConfig(kind=kind, name=facet or name or "", **extra), directions


@main.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="atlas-site", show_default=True, type=click.Path(file_okay=False))
@click.option("--examples", default=SiteConfig.examples, show_default=True, type=click.IntRange(1, 1000),
              help="Dataset examples per neuron page.")
@click.option("--title", default=SiteConfig.title, show_default=True)
def site(stores, out, examples, title):
    """Render one or more stores into a static site (open OUT/index.html from disk)."""
    from ..site import build_site

    bars = Progress()
    r = guarded(lambda: build_site(list(stores), out, SiteConfig(examples=examples, title=title),
                                progress=bars.step("site")))
    bars.close()
    click.echo(f"{Path(r.out) / 'index.html'}: {r.pages} pages, {r.images} images")


@main.command()
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--units", default=64, show_default=True, type=click.IntRange(1), help="Units checked per layer.")
@click.option("--images", default=64, show_default=True, type=click.IntRange(0),
              help="Random images checked besides the units' top-k examples.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the sample.")
@layers_opt
@click.option("--data", default=None, help="The images the store was mined from (default: as the store names them).")
@captions_opt
@device_opt
@trust_opt
def verify(store_path, units, images, seed, layers, data, captions, device, trust_checkpoint):
    """Recompute a sample of the store's numbers from the original images with an independent reference (plain
    PIL, open_clip's transform, eager float32 forward) and compare; exit code 1 outside the tolerance."""
    from ..config import VerifyConfig
    from ..verify import verify_store

    r = guarded(lambda: verify_store(store_path, data=data, captions=captions, layers=list(split_list(layers)) or None,
                                  config=VerifyConfig(units=units, images=images, seed=seed), device=device,
                                  trust_checkpoint=trust_checkpoint))
    for c in r.layers:
        click.echo(c.line())
    click.echo(f"{store_path}: {'verified' if r.ok else 'NOT verified'} in {r.seconds:.1f} s (recorded in the store)")
    if not r.ok:
        raise SystemExit(1)


@main.command()
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", required=True, help="The mined layer, e.g. visual.layer4.0/sae16k (mined with --map-size 1).")
@click.option("--units", default=None, help="Units, e.g. 0-99,512 (default: every unit of the layer).")
@click.option("--map-size", default=MineConfig.map_size, show_default=True, type=click.IntRange(1, 64),
              help="Side of the recomputed maps (at most the layer's grid).")
@click.option("--data", default=None, help="The images the store was mined from (default: as the store names them).")
@device_opt
@trust_opt
def maps(store_path, layer, units, map_size, data, device, trust_checkpoint):
    """Recompute the top examples' heatmaps of a layer mined with small maps (`atlas mine --map-size 1`, for wide SAE
    layers) from its stored top images, for the units asked, and add them to the store for the site and export."""
    from ..replay import fill_store_maps

    bars, t0 = Progress(), time.perf_counter()
    n = guarded(lambda: fill_store_maps(store_path, layer, parse_units(units), map_size, data=data, device=device,
                                        trust_checkpoint=trust_checkpoint, progress=bars.step("maps")))
    bars.close()
    click.echo(f"{store_path}: maps of {n} units of {layer} recomputed at up to {map_size} x {map_size} in "
               f"{time.perf_counter() - t0:.1f} s")


@main.command()
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
def info(store_path):
    """Summarize a store: model, data, layers, skipped images."""
    from ..store import Store

    def go():
        with Store(store_path) as st:
            for k, v in sorted(st.meta.items()):
                click.echo(f"{k}: {v}")
            for m in st.models():
                for ld in st.layers(m):
                    fv = int(ld.featurevis_done().sum())
                    others = [(k, n, int(ld.visualizations(k, n, images=False).done.sum()))
                              for k, n in ld.visualization_kinds() if k != "channel"]
                    more = "".join(f", {k}{':' + n if n else ''} {d}" for k, n, d in others)
                    click.echo(f"layer {m}/{ld.name}: {ld.kind}, {ld.units} units, feature vis {fv}/{ld.units}{more}")
                for name, f in sorted(st.facets(m).items()):
                    click.echo(f"facet {m}/{name}: on {f.layer}, validation accuracy "
                               f"{100 * f.figures.get('val_accuracy', float('nan')):.1f}%")
            click.echo(f"skipped images: {len(st.bad_images())}")

    guarded(go)


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(exists=True, dir_okay=False))
@click.argument("query")
@click.option("--layer", default=None, help="Search only this layer (default: every mined layer).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(1), help="How many units to print.")
@click.option("--model", "model_spec", default=None,
              help="Also rank by the text tower's similarity of the query to each unit's direction, where the layer "
                   "lives in the joint embedding space (docs/site.md); give the spec the store was mined from.")
@device_opt
@trust_opt
def search(store_path, query, layer, top, model_spec, device, trust_checkpoint):
    """Units whose labels, top words or id match QUERY (and, with --model, whose direction matches its text)."""
    from ..search import search as search_units

    def go():
        model = None
        if model_spec:
            from ..models import load_model

            model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        return search_units(store_path, query, layer, top, model)

    r = guarded(go)
    for note in r.notes:
        click.echo(f"note: {note}", err=True)
    if not r.hits:
        click.echo(f"no unit matches {r.query!r}")
    for h in r.hits:
        tower = "" if h.tower is None else f" tower {h.tower:+.3f}"
        best = "" if h.label_score is None else f" (label score {h.label_score:.2f})"
        click.echo(f"{h.id}  {h.score:.3f}  [match {h.label:.3f}{tower}]  {h.text or '(no labels or words)'}{best}")


@main.command()
@click.argument("store_path", metavar="STORE", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), default=ExportConfig.format, show_default=True,
              help="jsonl: gzip-compressed JSON lines in Neuronpedia's layout; parquet: the same records (needs "
                   "pyarrow).")
@click.option("--layer", "layers", multiple=True, help="A layer to export; repeat for more (default: every layer).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write: features/, activations/, explanations/ and manifest.json.")
@click.option("--batch-size", default=ExportConfig.batch_size, show_default=True, type=click.IntRange(1),
              help="Units per batch file.")
@click.option("--examples", default=None, type=click.IntRange(1),
              help="Top examples per unit (default: every one the store keeps).")
@click.option("--no-maps", is_flag=True, help="Leave out the stored heatmaps (the peak cell and grid stay).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier export in --out.")
def export(store_path, fmt, layers, out, batch_size, examples, no_maps, overwrite):
    """Export a store's units (statistics, top examples, heatmap peaks) as JSON lines in Neuronpedia's layout."""
    from ..export import export_store

    bars = Progress()
    r = guarded(lambda: export_store(store_path, out, ExportConfig(format=fmt, layers=layers, batch_size=batch_size,
                                                                   examples=examples, maps=not no_maps),
                                     overwrite=overwrite, progress=bars.step("export")))
    bars.close()
    nulls = sum(r.nulls.values())
    click.echo(f"{r.out}: {r.units} units, {r.records['activations']} examples in {len(r.files) - 1} files"
               + (f"; {nulls} non-finite numbers written as null (manifest.json)" if nulls else ""))
