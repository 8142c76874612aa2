"""Commands about sparse autoencoders: sae train, sae eval (docs/sae.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import SaeConfig
from .common import device_opt, guarded, main, trust_opt

store_opt = click.option("--store", "store_path", required=True, type=click.Path(dir_okay=False),
                         help="The mined store (the SAE is written beside it, in STORE.sae/).")


@main.group()
def sae() -> None:
    """Sparse autoencoders: their features become units (the virtual layer LAYER/saeN)."""


@sae.command("train")
@store_opt
@click.option("--layer", required=True, help="The mined layer to encode, e.g. visual.layer4.0.")
@click.option("--width", default=SaeConfig.width, show_default=True,
              help="Features: a multiple of the layer's units ('16x') or a number ('4096').")
@click.option("--k", default=SaeConfig.k, show_default=True, type=int, help="Features kept per input (TopK).")
@click.option("--steps", default=SaeConfig.steps, show_default=True, type=int)
@click.option("--batch", default=SaeConfig.batch, show_default=True, type=int, help="Inputs per step.")
@click.option("--lr", default=SaeConfig.lr, show_default=True, type=float)
@click.option("--matryoshka", default=SaeConfig.matryoshka, show_default=True, type=int,
              help="Nested prefixes (Matryoshka SAE): the loss averages the reconstructions of the first F/2^(N-1), "
                   "..., F/2, F features; 1: the plain loss.")
@click.option("--max-images", default=None, type=int, help="Use only the first N images.")
@click.option("--buffer", default=None, type=click.Path(dir_okay=False),
              help="Train on a saved activation buffer (.npy [n, units]) instead of streaming images.")
@click.option("--data", default=None, help="Train on another image source than the store's (same syntax as mine).")
@click.option("--buffer-rows", default=SaeConfig.buffer_rows, show_default=True, type=int,
              help="Activations held at once: batches are drawn from a shuffle buffer of this many rows, refilled "
                   "from the stream (memory: rows x units x 4 bytes).")
@click.option("--workers", default=None, type=int,
              help="Decoding processes for image files (default: what fits the machine, as `atlas mine`).")
@click.option("--no-eval", is_flag=True, help="Skip the zero-shot accuracy through the reconstruction.")
@click.option("--seed", default=SaeConfig.seed, show_default=True, type=int)
@device_opt
@trust_opt
def sae_train(store_path, layer, width, k, steps, batch, lr, matryoshka, max_images, buffer, data, buffer_rows, workers,
              no_eval, seed, device, trust_checkpoint):
    """Train a TopK sparse autoencoder on a mined layer's activations (every position of its map)."""
    from ..sae.run import train_from_store

    def go():
        cfg = SaeConfig(layer=layer, width=width, k=k, steps=steps, batch=batch, lr=lr, matryoshka=matryoshka,
                        max_images=max_images, seed=seed, buffer_rows=buffer_rows)
        return train_from_store(store_path, cfg, device=device, trust_checkpoint=trust_checkpoint, buffer=buffer,
                                data=data, workers=workers, evaluate=not no_eval,
                                log=lambda line: click.echo(line, err=True))

    r = guarded(go)
    m = r.metrics
    click.echo(f"{r.layer}: {r.width} features on {r.d} units -> {r.path}")
    click.echo(f"held-out ({m['inputs']} inputs): fraction of variance explained {m['fve']:.4f}, L0 {m['l0']:.2f}, "
               f"dead {m['dead_fraction']:.2%} (dead at the end of training {m['dead_training']:.2%})")
    for key, (plain, through) in r.zero_shot.items():
        click.echo(f"zero-shot {key}: {100 * plain:.1f}% -> {100 * through:.1f}% through the SAE")
    s = r.seconds
    click.echo(f"time: first buffer fill {s['activations']:.1f}s, training {s['training']:.1f}s "
               f"({r.inputs_per_s:,.0f} inputs/s, refills from the stream included; {r.streamed:,} rows read), "
               f"total {s['total']:.1f}s")
    click.echo(f"mine its features: atlas mine --store {store_path} --layers {r.layer}")


@sae.command("eval")
@store_opt
@click.option("--layer", required=True, help="The SAE's layer, e.g. visual.layer4.0/sae16k.")
@click.option("--per-concept", default=40, show_default=True, type=click.IntRange(2))
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Also write the tables here.")
@device_opt
def sae_eval(store_path, layer, per_concept, out, device):
    """Concept World fidelity: zero-shot through the SAE, multimodal features against neurons, polysemanticity."""
    from ..sae.fidelity import fidelity_report

    text = guarded(lambda: fidelity_report(store_path, layer, device, per_concept))
    click.echo(text)
    if out:
        Path(out).write_text(text)
