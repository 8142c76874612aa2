"""Commands about models: models, convert, layers, train, eval concepts, eval labels."""

from __future__ import annotations

from pathlib import Path

import click

from .common import device_opt, guarded, layers_opt, main, model_opt, split_list, trust_opt


@main.command()
@click.option("--all", "show_all", is_flag=True, help="Also list every open_clip architecture.")
def models(show_all):
    """List known model specs and which weights are on this machine."""
    from ..models import DEFAULT_SPEC, model_status

    click.echo(f"default: {DEFAULT_SPEC}\n")
    for spec, status in guarded(lambda: model_status(show_all)):
        click.echo(f"{spec:32s} {status}")
    click.echo("\nAppend @/path/to/weights (state dict or .safetensors) or @random:SEED to any spec; "
               "hf:/path/to/dir loads a Hugging Face CLIPModel directory.")


@main.command()
@click.argument("source", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@trust_opt
def convert(source, out, trust_checkpoint):
    """Convert a checkpoint (TorchScript archive or pickled state dict) to tensors-only safetensors."""
    from ..checkpoints import convert as run_convert

    n = guarded(lambda: run_convert(Path(source), Path(out), trust=trust_checkpoint))
    click.echo(f"{out}: {n} tensors; load it with openai:ARCH@{out} or open_clip:ARCH@{out}, no trust needed")


@main.command()
@click.argument("spec", default="default")
@trust_opt
def layers(spec, trust_checkpoint):
    """List a model's hookable layers with their kind, units and grid."""
    from ..models import load_model

    model = guarded(lambda: load_model(spec, trust_checkpoint=trust_checkpoint))
    default = set(model.default_layers)
    for info in model.layers.values():
        mark = "*" if info.name in default else " "
        click.echo(f"{mark} {info.name:40s} {info.kind:6s} {info.units:6d} units  grid {info.grid[0]}x{info.grid[1]}")
    click.echo("(* mined by default)")


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
    from ..train import TrainConfig, cached_data, train as run_train

    cfg = TrainConfig(arch=arch, images=images, steps=steps, batch=batch, seed=seed)
    cache_dir = Path(cache) if cache else None
    if generate_only:
        if cache_dir is None:
            raise click.UsageError("--generate-only needs --cache")
        guarded(lambda: cached_data(cfg, cache_dir, workers, click.echo))
        return
    guarded(lambda: run_train(cfg, out, device=device, workers=workers, cache=cache_dir,
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
    from ..evaluate import evaluate_concepts
    from ..models import load_model

    def go():
        model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        return evaluate_concepts(model, per_concept, split_list(layers) or None, threshold)

    report = guarded(go)
    click.echo(report.markdown)
    if out:
        Path(out).write_text(report.markdown)




@eval_group.command("labels")
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", default=None, help="Layer whose labels are scored (default: the store's last mined layer).")
@click.option("--model", "model_spec", default=None, help="Model spec (default: the one the store was mined from).")
@click.option("--causal-units", default=64, show_default=True, type=click.IntRange(0),
              help="Labelled units to ablate for the causal check.")
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the table here (Markdown).")
@device_opt
@trust_opt
def eval_labels(store_path, layer, model_spec, causal_units, out, device, trust_checkpoint):
    """Score a store's automatic labels against Concept World's planted concepts, beside two baselines, with a
    causal (ablation) check."""
    from ..label_eval import evaluate_labels
    from ..models import load_model
    from ..store import Store

    def go():
        spec = model_spec or Store(store_path).meta["model_spec"]
        model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
        return evaluate_labels(model, store_path, layer, causal_units=causal_units)

    report = guarded(go)
    click.echo(report.markdown)
    if out:
        Path(out).write_text(report.markdown)
