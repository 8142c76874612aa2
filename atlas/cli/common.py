"""The `main` click group, the options commands share, and `guarded` (a library call whose errors become clean CLI
errors)."""

from __future__ import annotations

import re
from typing import Callable

import click

from ..version import __version__
from ..errors import AtlasError

# what a user can act on: atlas's own errors (atlas.errors), invalid values, missing files or names; anything else is a
# bug and keeps its traceback
USER_ERRORS: tuple[type[BaseException], ...] = (AtlasError, ValueError, KeyError, FileNotFoundError)


def guarded(fn: Callable[[], object]) -> object:
    """Call a library function; turn its errors (which say what to do) into clean CLI errors."""
    try:
        return fn()
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise click.ClickException(str(msg)) from e


def split_list(value: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.split(",") if x.strip()) if value else ()


def parse_units(value: str | None) -> list[int] | None:
    """'0-63,100' -> [0..63, 100]"""
    if not value:
        return None
    out: list[int] = []
    for part in split_list(value):
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
workers_opt = click.option("--workers", default=None, type=click.IntRange(0, 64),
                           help="Image-decoding worker processes (0: decode in the main process).  Default: what fits "
                                "the machine: 0 on a CPU; with a GPU every core but two, at most 14.")
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
