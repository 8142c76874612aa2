"""The `atlas` command line: each command parses options and calls one library function."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Callable

import click

from .version import __version__
from .config import PIXELS, PRECISIONS, RESIZES, AnalysesConfig, BuildConfig, FeatureVisConfig, MineConfig, SiteConfig
from .errors import AtlasError

# what a user can act on: atlas's own errors (atlas.errors), invalid values, missing files or names; anything else is a
# bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (AtlasError, ValueError, KeyError, FileNotFoundError)


class _Bars:
    """click progress bars, one per step label, driven by (label, done, total) callbacks."""

    def __init__(self) -> None:
        self.bar = None
        self.label = None
        self.done = 0

    def __call__(self, label: str, done: int, total: int) -> None:
        if label != self.label:
            self.close()
            self.label, self.done = label, 0
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
        self.bar, self.label = None, None

    def step(self, label: str) -> Callable[[int, int], None]:
        return lambda done, total: self(label, done, total)


def _run(fn: Callable[[], object]) -> object:
    """Call a library function; turn its errors (which say what to do) into clean CLI errors."""
    try:
        return fn()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise click.ClickException(str(msg)) from e


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip()) if value else ()


def _units(value: str | None) -> list[int] | None:
    """'0-63,100' -> [0..63, 100]"""
    if not value:
        return None
    out: list[int] = []
    for part in _split(value):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise click.BadParameter(f"{part!r} is not a unit or a range like 0-63", param_hint="--units")
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if b < a:
            raise click.BadParameter(f"range {part!r} runs backwards", param_hint="--units")
        out.extend(range(a, b + 1))
    return out


model_opt = click.option("--model", "model_spec", default="default", show_default=True,
                         help="Model spec FAMILY:ARCH[@WEIGHTS], e.g. open_clip:RN50@RN50.pt (see `atlas models`).")
data_opt = click.option("--data", default="default", show_default=True,
                        help="A folder of images (sub-folders are classes), or a generated set: "
                             "conceptworld[:N[:SEED]] (default: conceptworld:4096:1) or synthetic[:N].")
captions_opt = click.option("--captions", type=click.Path(dir_okay=False), default=None,
                            help="CSV with columns path,caption (default: DATA/captions.csv if present).")
device_opt = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
workers_opt = click.option("--workers", default=0, show_default=True, type=click.IntRange(0, 64),
                           help="Image-decoding worker processes (0: decode in the main process).")
trust_opt = click.option("--trust-checkpoint", is_flag=True,
                         help="Allow TorchScript checkpoints (e.g. OpenAI's .pt files). They contain code that "
                              "runs when loaded: use only files from a source you trust, or `atlas convert` them once.")
layers_opt = click.option("--layers", default=None,
                          help="Comma-separated layer names (default: the last block of each stage).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atlas")
def main() -> None:
    """atlas: neuron atlases of CLIP models.

    `atlas build` does everything: mines top dataset examples and statistics of every neuron into an
    HDF5 store, renders feature visualizations, and writes a static site you open from disk.
    """


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
@click.option("--audit-groups", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV of image,group to audit (paths relative to --audit-folder).")
@click.option("--audit-folder", default=None, type=click.Path(exists=True, file_okay=False))
@device_opt
@workers_opt
@trust_opt
def build(model_spec, data, captions, out, layers, featurevis_layers, max_images, top_k, steps, label_pattern,
          no_reports, audit_groups, audit_folder, device, workers, trust_checkpoint):
    """Mine, visualize, analyse and render a whole atlas (defaults: the shipped model on the built-in data)."""
    from .build import build as run_build

    if (audit_groups is None) != (audit_folder is None):
        raise click.UsageError("--audit-groups and --audit-folder go together")
    fv = None if featurevis_layers is None else (() if featurevis_layers == "none" else _split(featurevis_layers))
    on = not no_reports
    analyses = AnalysesConfig(probe=on, attacks=on, audit=on, label_pattern=label_pattern,
                              audit_groups=audit_groups, audit_folder=audit_folder)
    cfg = BuildConfig(model=model_spec, data=data,
                      mine=MineConfig(layers=_split(layers), top_k=top_k, max_images=max_images),
                      featurevis=FeatureVisConfig(steps=steps), site=SiteConfig(), featurevis_layers=fv,
                      analyses=analyses)
    bars = _Bars()
    r = _run(lambda: run_build(cfg, out, captions=captions, device=device, num_workers=workers, progress=bars,
                               trust_checkpoint=trust_checkpoint))
    bars.close()
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
@click.option("--batch-size", default=MineConfig.batch_size, show_default=True, type=click.IntRange(1))
@click.option("--rank-by", type=click.Choice(["max", "mean"]), default=MineConfig.rank_by, show_default=True,
              help="Per-image score of a neuron: max or mean over its spatial map.")
@click.option("--max-images", type=click.IntRange(1), default=None)
@click.option("--no-pooled", is_flag=True, help="Do not store the images x units matrix of spatial means.")
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
         precision, pixels, resize, checkpoint_seconds, device, workers, trust_checkpoint):
    """Stream images through a model; keep exact top-k examples and statistics per neuron."""
    from .data import open_source
    from .mining import mine as run_mine
    from .models import load_model
    from .store import check_unlocked

    cfg = MineConfig(layers=_split(layers), top_k=top_k, batch_size=batch_size, rank_by=rank_by,
                     max_images=max_images, keep_pooled=not no_pooled, precision=precision,
                     pixels=pixels)
    bars = _Bars()

    def go():
        check_unlocked(store_path)  # fail at once, not after loading the model
        model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        return run_mine(model, open_source(data, captions), store_path, cfg, num_workers=workers,
                        checkpoint_seconds=checkpoint_seconds, progress=bars.step("mine"),
                        resize="cpu" if resize == "pil" else resize)

    r = _run(go)
    bars.close()
    if r.skipped_layers and len(r.skipped_layers) == len(r.layers):
        click.echo(f"{store_path}: every layer was already mined with these settings; nothing to do")
        return
    resumed = f", resumed at image {r.resumed_from}" if r.resumed_from else ""
    click.echo(f"{store_path}: mined {len(r.layers) - len(r.skipped_layers)} layers over {r.images} images "
               f"({r.bad} bad files skipped{resumed})")
    for layer, n in r.nonfinite.items():
        if n:
            click.echo(f"warning: {layer}: the model produced inf or NaN in {n} image x unit maps; they are left out "
                       "of the top-k and statistics and counted in stats/nonfinite_maps (shown on the layer page)")


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", "layer", required=True, help="Layer to visualize.")
@click.option("--units", default=None, help="Units, e.g. 0-63,100 (default: all).")
@click.option("--steps", default=FeatureVisConfig.steps, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=FeatureVisConfig.batch, show_default=True, type=click.IntRange(1),
              help="Neurons rendered together, one per batch element.")
@click.option("--size", default=FeatureVisConfig.size, show_default=True, type=click.IntRange(8, 1024))
@click.option("--lr", default=FeatureVisConfig.lr, show_default=True, type=click.FloatRange(min=0, min_open=True))
@device_opt
@trust_opt
def featurevis(store_path, layer, units, steps, batch, size, lr, device, trust_checkpoint):
    """Render channel feature visualizations of a mined layer into its store."""
    from .featurevis import featurevis as run_fv
    from .models import load_model
    from .store import Store

    cfg = FeatureVisConfig(steps=steps, batch=batch, size=size, lr=lr)
    unit_list = _units(units)
    bars = _Bars()

    def go():
        with Store(store_path) as st:
            spec = st.meta["model_spec"]
        model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
        return run_fv(model, store_path, layer, unit_list, cfg, progress=bars.step(f"featurevis {layer}"))

    r = _run(go)
    bars.close()
    click.echo(f"{store_path}: {layer}: rendered {r.rendered} neurons ({r.reused} already done)")


@main.command()
@click.argument("stores", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="atlas-site", show_default=True, type=click.Path(file_okay=False))
@click.option("--examples", default=SiteConfig.examples, show_default=True, type=click.IntRange(1, 1000),
              help="Dataset examples per neuron page.")
@click.option("--title", default=SiteConfig.title, show_default=True)
def site(stores, out, examples, title):
    """Render one or more stores into a static site (open OUT/index.html from disk)."""
    from .site import build_site

    bars = _Bars()
    r = _run(lambda: build_site(list(stores), out, SiteConfig(examples=examples, title=title),
                                progress=bars.step("site")))
    bars.close()
    click.echo(f"{Path(r.out) / 'index.html'}: {r.pages} pages, {r.images} images")


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every open_clip architecture.")
def models(show_all):
    """List known model specs and which weights are on this machine."""
    from .models import DEFAULT_SPEC, model_status

    click.echo(f"default: {DEFAULT_SPEC}\n")
    for spec, status in _run(lambda: model_status(show_all)):
        click.echo(f"{spec:32s} {status}")
    click.echo("\nAppend @/path/to/weights (state dict or .safetensors) or @random:SEED to any spec; "
               "hf:/path/to/dir loads a Hugging Face CLIPModel directory.")


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@trust_opt
def convert(source, out, trust_checkpoint):
    """Convert a checkpoint (TorchScript archive or pickled state dict) to tensors-only safetensors."""
    from .checkpoints import convert as run_convert

    n = _run(lambda: run_convert(Path(source), Path(out), trust=trust_checkpoint))
    click.echo(f"{out}: {n} tensors; load it with openai:ARCH@{out} or open_clip:ARCH@{out}, no trust needed")


@main.command()
@click.argument("spec", default="default")
@trust_opt
def layers(spec, trust_checkpoint):
    """List a model's hookable layers with their kind, units and grid."""
    from .models import load_model

    model = _run(lambda: load_model(spec, trust_checkpoint=trust_checkpoint))
    default = set(model.default_layers)
    for info in model.layers.values():
        mark = "*" if info.name in default else " "
        click.echo(f"{mark} {info.name:40s} {info.kind:6s} {info.units:6d} units  grid {info.grid[0]}x{info.grid[1]}")
    click.echo("(* mined by default)")


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
    from .config import VerifyConfig
    from .verify import verify_store

    r = _run(lambda: verify_store(store_path, data=data, captions=captions, layers=list(_split(layers)) or None,
                                  config=VerifyConfig(units=units, images=images, seed=seed), device=device,
                                  trust_checkpoint=trust_checkpoint))
    for c in r.layers:
        click.echo(c.line())
    click.echo(f"{store_path}: {'verified' if r.ok else 'NOT verified'} in {r.seconds:.1f} s (recorded in the store)")
    if not r.ok:
        raise SystemExit(1)


@main.command()
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
def info(store_path):
    """Summarize a store: model, data, layers, skipped images."""
    from .store import Store

    def go():
        with Store(store_path) as st:
            for k, v in sorted(st.meta.items()):
                click.echo(f"{k}: {v}")
            for m in st.models():
                for ld in st.layers(m):
                    fv = int(ld.featurevis_done().sum())
                    click.echo(f"layer {m}/{ld.name}: {ld.kind}, {ld.units} units, feature vis {fv}/{ld.units}")
            click.echo(f"skipped images: {len(st.bad_images())}")

    _run(go)


@main.command()
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Weights file to write (.safetensors).")
@click.option("--arch", default="tiny", show_default=True, help="atlas architecture (see atlas/models.py).")
@click.option("--images", default=400_000, show_default=True, type=click.IntRange(1000))
@click.option("--steps", default=6000, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=512, show_default=True, type=click.IntRange(2))
@click.option("--seed", default=0, show_default=True)
@click.option("--cache", default=None, type=click.Path(file_okay=False), help="Folder to keep generated data in.")
@click.option("--generate-only", is_flag=True, help="Only generate the data into --cache.")
@click.option("--device", default="cuda", show_default=True)
@click.option("--workers", default=8, show_default=True, type=click.IntRange(0, 256))
@click.option("--max-minutes", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Shorten the run (and its schedule) to fit this many minutes of training.")
def train(out, arch, images, steps, batch, seed, cache, generate_only, device, workers, max_minutes):
    """Train atlas's own CLIP on Concept World (how the shipped default model was made; GPU advised)."""
    from .train import TrainConfig, cached_data, train as run_train

    cfg = TrainConfig(arch=arch, images=images, steps=steps, batch=batch, seed=seed)
    cache_dir = Path(cache) if cache else None
    if generate_only:
        if cache_dir is None:
            raise click.UsageError("--generate-only needs --cache")
        _run(lambda: cached_data(cfg, cache_dir, workers, click.echo))
        return
    _run(lambda: run_train(cfg, out, device=device, workers=workers, cache=cache_dir,
                           max_seconds=max_minutes * 60 if max_minutes else None, log=click.echo))


@main.group("eval")
def eval_group():
    """Measure a model against Concept World's ground truth."""


@eval_group.command("concepts")
@model_opt
@click.option("--per-concept", default=40, show_default=True, type=click.IntRange(5, 1000),
              help="Held-out pictogram and word images per concept.")
@layers_opt
@click.option("--threshold", default=0.9, show_default=True, type=click.FloatRange(0.5, 1.0),
              help="AUROC both as pictogram and as word for a neuron to count as multimodal.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the tables here (Markdown).")
@device_opt
@trust_opt
def eval_concepts(model_spec, per_concept, layers, threshold, out, device, trust_checkpoint):
    """Zero-shot accuracy and multimodal neurons per concept and layer (AUROC as pictogram and as word).

    Each concept's best neuron is picked and scored twice: held-out (picked on one half of the images, scored on
    the other) and in-sample (picked and scored on all of them)."""
    from .evaluate import evaluate_concepts
    from .models import load_model

    def go():
        model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        return evaluate_concepts(model, per_concept, _split(layers) or None, threshold)

    report = _run(go)
    click.echo(report.markdown)
    if out:
        Path(out).write_text(report.markdown)


@main.command()
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", required=True, help="A mined layer (its pooled activations are the features).")
@click.option("--name", default="probe", show_default=True, help="Report name: /probes/NAME in the store.")
@click.option("--labels", "labels_csv", default=None, type=click.Path(dir_okay=False),
              help="CSV with columns source_id (or path) and label; default: the store's labels (class folders).")
@click.option("--label-pattern", default=None,
              help=r"Regex whose group 1 is the class, e.g. 'picto:(\w+)'; labels that do not match are left out.")
@click.option("--device", default="cpu", show_default=True)
def probe(store_path, layer, name, labels_csv, label_pattern, device):
    """Fit a sparse (L1) probe: which neurons compose each class."""
    from .probes import composition, format_composition
    from .probes.report import probe_layer

    p = _run(lambda: probe_layer(store_path, layer, name, labels_csv, label_pattern, device=device))
    click.echo(f"{store_path}: /probes/{name}: {len(p.classes)} classes, validation accuracy "
               f"{100 * p.val_accuracy:.1f}%, {p.neurons_per_class():.1f} neurons per class")
    for what, n, why in p.left_out:
        click.echo(f"  left out: {what} ({n}): {why}")
    for c in p.classes[:5]:
        click.echo("  " + format_composition(c, composition(p, c, 3)))


@main.group()
def attack():
    """Typographic attacks, saved as /attacks/NAME reports in a store (shown on the site)."""


store_opt = click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False),
                         help="A mined store (atlas.h5); the report is written into it.")


@attack.command("table")
@model_opt
@store_opt
@click.option("--data", default="conceptworld-pictos", show_default=True,
              help="Labelled images to attack: a class folder, or conceptworld-pictos (held-out pictograms).")
@click.option("--label-pattern", default=None, help=r"Regex whose group 1 is the class, e.g. 'picto:(\w+)'.")
@click.option("--targets", default=None,
              help="TEXT=CLASS pairs, comma separated (default: the paper's: ipod=ipod, pizza=pizza, $$$=money, ...).")
@click.option("--probe", default=None, help="Also attack this stored probe (/probes/NAME).")
@click.option("--images", default=200, show_default=True, type=click.IntRange(2))
@click.option("--sizes", default="0.16,0.3", show_default=True, help="Text heights as fractions of the image.")
@click.option("--font", default="DejaVuSans-Bold.ttf", show_default=True,
              help="A font of data/fonts, e.g. Humor-Sans.ttf (handwriting).")
@click.option("--layer", default=None, help="Layer whose most-moved units are reported (default: the probe's).")
@click.option("--name", default="table", show_default=True)
@device_opt
@trust_opt
def attack_table_command(model_spec, store_path, data, label_pattern, targets, probe, images, sizes, font, layer, name,
                         device, trust_checkpoint):
    """The automated attack table: texts stamped at 8 positions; success rates for zero-shot and a probe."""
    from .attacks.experiments import PAPER_TARGETS, run_attack_table
    from .models import load_model

    pairs = PAPER_TARGETS
    if targets:
        bad = [t for t in _split(targets) if "=" not in t]
        if bad:
            raise click.BadParameter(f"{bad[0]!r} is not TEXT=CLASS", param_hint="--targets")
        pairs = tuple(tuple(x.strip() for x in t.split("=", 1)) for t in _split(targets))
    try:
        size_list = tuple(float(x) for x in _split(sizes))
    except ValueError as e:
        raise click.BadParameter(f"{sizes!r} is not a comma-separated list of numbers", param_hint="--sizes") from e
    r = _run(lambda: run_attack_table(load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint), data,
                                      store_path, name, label_pattern, pairs, probe, images, size_list, font,
                                      layer=layer))
    rows = r.rows
    for i in range(len(rows["text"])):
        click.echo(f"{rows['classifier'][i]:>14}  {rows['text'][i]!r:>10} -> {rows['target'][i]:<8} size "
                   f"{rows['size'][i]:.2f}: {100 * rows['success_rate'][i]:5.1f}% of {rows['attempts'][i]} "
                   f"(pixels changed {100 * rows['pixels_changed'][i]:.1f}%)")
    for what, n, why in r.left_out:
        click.echo(f"  left out: {what} ({n}): {why}")


@attack.command("stroop")
@model_opt
@store_opt
@click.option("--prompt", default="my favorite word, written in the color {}", show_default=True)
@click.option("--name", default="stroop", show_default=True)
@device_opt
@trust_opt
def attack_stroop_command(model_spec, store_path, prompt, name, device, trust_checkpoint):
    """Colour words written in other colours: does the model read the word or the ink?"""
    from .attacks.experiments import run_stroop
    from .models import load_model

    if "{}" not in prompt:
        raise click.BadParameter("the prompt needs '{}' where the colour goes", param_hint="--prompt")
    r = _run(lambda: run_stroop(load_model(model_spec, device=device,
                                           trust_checkpoint=trust_checkpoint), store_path, name, prompt))
    click.echo(f"incongruent: {r.incongruent}, said the word {r.incongruent_said_word}, the ink "
               f"{r.incongruent_said_ink}; controls right {r.controls_correct} of {r.controls}")


@attack.command("words")
@model_opt
@store_opt
@click.option("--layer", required=True, help="Layer whose units' favourite words are found.")
@click.option("--words", default=None, help="Comma-separated words (default: Concept World's words and the "
              "paper's attack texts).")
@click.option("--name", default="words", show_default=True)
@device_opt
@trust_opt
def attack_words_command(model_spec, store_path, layer, words, name, device, trust_checkpoint):
    """Per-neuron typographic sensitivity: which rendered words excite each unit most."""
    from .attacks.experiments import run_word_sensitivity
    from .models import load_model

    word_list = list(_split(words)) if words else None
    r = _run(lambda: run_word_sensitivity(load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint),
                                          store_path, layer, word_list, name))
    click.echo(f"{store_path}: /{r.report}: {r.responses.shape[0]} words x {r.responses.shape[1]} units")


@main.command()
@model_opt
@store_opt
@click.option("--groups", "groups_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV with columns image (or path) and group; exactly two groups.")
@click.option("--folder", default=None, type=click.Path(exists=True, file_okay=False),
              help="Folder the CSV's image paths are relative to.")
@click.option("--conceptworld", "cw_folder", default=None, type=click.Path(file_okay=False),
              help="Instead of --groups: draw Concept World persons of both groups into this folder and audit them.")
@click.option("--layer", required=True, help="Layer whose neurons are compared.")
@click.option("--context", default="{}", show_default=True,
              help="Template that puts class names and concept words in the subject's context, e.g. 'person, {}'.")
@click.option("--fdr", default=0.05, show_default=True, type=click.FloatRange(0, 1, min_open=True))
@click.option("--min-group", default=20, show_default=True, type=click.IntRange(2))
@click.option("--name", default="audit", show_default=True)
@device_opt
@trust_opt
def audit(model_spec, store_path, groups_csv, folder, cw_folder, layer, context, fdr, min_group, name, device,
          trust_checkpoint):
    """Bias audit: neurons, zero-shot classes and concepts that tie two groups of images differently."""
    from .audit import AuditConfig, audit_images, conceptworld_group_set
    from .models import load_model

    if bool(groups_csv) == bool(cw_folder):
        raise click.UsageError("give either --groups (with --folder) or --conceptworld FOLDER")
    if groups_csv and not folder:
        raise click.UsageError("--groups needs --folder, the folder its image paths are relative to")

    def go():
        model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        csv_path, root = (groups_csv, folder) if groups_csv else (conceptworld_group_set(cw_folder), cw_folder)
        return audit_images(model, store_path, layer, csv_path, root, context,
                            AuditConfig(fdr=fdr, min_group=min_group), name)

    r = _run(go)
    k, c = r.concepts, r.classes
    click.echo(f"{store_path}: /{r.report}: groups {r.groups[0]} ({r.counts[0]}) vs {r.groups[1]} ({r.counts[1]})")
    click.echo(f"  neurons significant at FDR {fdr}: {int(r.neurons['significant'].sum())} of {len(r.neurons['g'])}")
    for i in range(len(c["name"])):
        if c["significant"][i]:
            click.echo(f"  class {c['name'][i]}: {r.groups[0]} - {r.groups[1]} = {c['diff'][i]:+.3f} "
                       f"[{c['ci'][i][0]:+.3f}, {c['ci'][i][1]:+.3f}], p {c['p'][i]:.4f}")
    for i in range(len(k["name"])):
        if k["significant"][i]:
            click.echo(f"  concept {k['name'][i]}: difference {k['d'][i]:+.3f} vs {k['null_centre'][i]:+.3f} for "
                       f"other concepts, p {k['p'][i]:.4f}")
    for what, n, why in r.left_out:
        click.echo(f"  left out: {what} ({n}): {why}")
