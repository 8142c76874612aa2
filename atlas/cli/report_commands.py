"""Commands that add reports to a store: probe, attack table/stroop/words, audit, label."""

from __future__ import annotations

import time

import click

from .progress import Progress
from .common import device_opt, guarded, main, model_opt, split_list, trust_opt


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
    from ..probes import composition, format_composition
    from ..probes.report import probe_layer

    bars, t0 = Progress(), time.perf_counter()
    p = guarded(lambda: probe_layer(store_path, layer, name, labels_csv, label_pattern, device=device,
                                    progress=bars.step("probe")))
    bars.close()
    click.echo(f"{store_path}: /probes/{name}: {len(p.classes)} classes, validation accuracy "
               f"{100 * p.val_accuracy:.1f}%, {p.neurons_per_class():.1f} neurons per class "
               f"({time.perf_counter() - t0:.1f} s)")
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
    from ..attacks.experiments import PAPER_TARGETS, run_attack_table
    from ..models import load_model

    pairs = PAPER_TARGETS
    if targets:
        bad = [t for t in split_list(targets) if "=" not in t]
        if bad:
            raise click.BadParameter(f"{bad[0]!r} is not TEXT=CLASS", param_hint="--targets")
        pairs = tuple(tuple(x.strip() for x in t.split("=", 1)) for t in split_list(targets))
    try:
        size_list = tuple(float(x) for x in split_list(sizes))
    except ValueError as e:
        raise click.BadParameter(f"{sizes!r} is not a comma-separated list of numbers", param_hint="--sizes") from e
    r = guarded(lambda: run_attack_table(load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint), data,
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
    from ..attacks.experiments import run_stroop
    from ..models import load_model

    if "{}" not in prompt:
        raise click.BadParameter("the prompt needs '{}' where the colour goes", param_hint="--prompt")
    r = guarded(lambda: run_stroop(load_model(model_spec, device=device,
                                           trust_checkpoint=trust_checkpoint), store_path, name, prompt))
    click.echo(f"incongruent: {r.incongruent}, said the word {r.incongruent_said_word}, the ink "
               f"{r.incongruent_said_ink}; controls right {r.controls_correct} of {r.controls}")


@attack.command("words")
@model_opt
@store_opt
@click.option("--layer", required=True, help="Layer whose units' favourite words are found.")
@click.option("--words", default=None, help="Comma-separated words (default: Concept World's words and the "
              "paper's attack texts).")
@click.option("--words-file", default=None, type=click.Path(dir_okay=False),
              help="Instead of --words: a file with one word or phrase per line.")
@click.option("--name", default="words", show_default=True)
@device_opt
@trust_opt
def attack_words_command(model_spec, store_path, layer, words, words_file, name, device, trust_checkpoint):
    """Per-neuron typographic sensitivity: which rendered words excite each unit most."""
    from ..attacks.experiments import run_word_sensitivity
    from ..config import read_word_file
    from ..models import load_model

    if words and words_file:
        raise click.UsageError("give --words or --words-file, not both")
    word_list = list(split_list(words)) if words else guarded(lambda: read_word_file(words_file, "--words-file")) \
        if words_file else None
    r = guarded(lambda: run_word_sensitivity(load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint),
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
@click.option("--concepts", "concepts_file", default=None, type=click.Path(dir_okay=False),
              help="Concepts to audit, one per line: a word, or 'name: word, word' (default: Concept World's 40).")
@click.option("--sensitive", default=None,
              help="Comma-separated concepts of --concepts that are the negative ones (default: Concept World's "
              "danger, trash, sad where present).")
@click.option("--name", default="audit", show_default=True)
@device_opt
@trust_opt
def audit(model_spec, store_path, groups_csv, folder, cw_folder, layer, context, fdr, min_group, concepts_file,
          sensitive, name, device, trust_checkpoint):
    """Bias audit: neurons, zero-shot classes and concepts that tie two groups of images differently."""
    from ..audit import SENSITIVE, AuditConfig, audit_images, conceptworld_group_set, read_concepts
    from ..models import load_model

    if bool(groups_csv) == bool(cw_folder):
        raise click.UsageError("give either --groups (with --folder) or --conceptworld FOLDER")
    if groups_csv and not folder:
        raise click.UsageError("--groups needs --folder, the folder its image paths are relative to")

    def go():
        concepts = read_concepts(concepts_file) if concepts_file else None  # bad files fail before the model loads
        negative = tuple(split_list(sensitive)) if sensitive else SENSITIVE
        model = load_model(model_spec, device=device, trust_checkpoint=trust_checkpoint)
        csv_path, root = (groups_csv, folder) if groups_csv else (conceptworld_group_set(cw_folder), cw_folder)
        return audit_images(model, store_path, layer, csv_path, root, context,
                            AuditConfig(fdr=fdr, min_group=min_group), name, concepts, negative,
                            f"--concepts {concepts_file}")

    r = guarded(go)
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


@main.command()
@click.argument("store_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", "layers", default=None, help="Comma-separated layers to label (default: every mined layer).")
@click.option("--vocab", default=None, type=click.Path(dir_okay=False),
              help="Vocabulary file, one word or phrase a line (default: common English words + the data's classes).")
@click.option("--probe-data", default=None,
              help="Probing images as a data spec (e.g. conceptworld:16384:2), run through the model (default: the "
                   "store's own mined images).")
@click.option("--summary", type=click.Choice(["mean", "max"]), default="mean", show_default=True,
              help="A unit's value on an image: the spatial mean (on the store's images: its pooled matrix) or max.")
@click.option("--model", "model_spec", default=None, help="Model spec (default: the one the store was mined from).")
@device_opt
@trust_opt
def label(store_path, layers, vocab, probe_data, summary, model_spec, device, trust_checkpoint):
    """Automatic labels for every unit: image-text matching and rendered words, each with an AUPRC check."""
    from ..config import LabelConfig
    from ..labels import label_units
    from ..models import load_model
    from ..store import Store

    def go():
        spec = model_spec or Store(store_path).meta["model_spec"]
        model = load_model(spec, device=device, trust_checkpoint=trust_checkpoint)
        config = LabelConfig(vocab=str(vocab) if vocab else "default", probe_data=probe_data, summary=summary)
        return label_units(model, store_path, split_list(layers) or None, vocab, config,
                           progress=lambda line: click.echo(line, err=True))

    r = guarded(go)
    click.echo(f"{store_path}: {len(r.vocab)} entries ({r.vocab_source}), {r.images} probing images")
    for lab in r.layers:
        top = lab.top1()
        shown = ", ".join(f"{u}: {top[u]}" for u in range(min(5, len(top))))
        click.echo(f"  {lab.layer}: {len(top)} units labelled ({lab.attrs['dead_units']} constant, none); {shown}, ...")
    for what, n, why in r.left_out:
        click.echo(f"  left out: {what} ({n}): {why}")


@main.group()
def facet():
    """Facets for faceted feature visualization (`atlas featurevis --kind faceted --facet NAME`)."""


@facet.command("train")
@click.option("--store", "store_path", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--layer", required=True, help="A mined layer below the one to visualize (its pooled activations).")
@click.option("--name", required=True, help="The facet's name: /facets/<model>/NAME in the store.")
@click.option("--positive", required=True, help=r"Regex over each image's label (or caption) marking the facet's "
              r"images, e.g. '^word:' on Concept World (written words).")
@click.option("--negative", default="", help="Regex for the negatives (default: every other image).")
@click.option("--field", type=click.Choice(["label", "caption"]), default="label", show_default=True)
@click.option("--l2", default=1e-2, show_default=True, type=click.FloatRange(0))
def facet_train(store_path, layer, name, positive, negative, field, l2):
    """Train a facet: a logistic probe on a layer's pooled activations (no model needed)."""
    from ..config import FacetConfig
    from ..featurevis.facets import train_facet

    t0 = time.perf_counter()
    r = guarded(lambda: train_facet(store_path, FacetConfig(name=name, layer=layer, positive=positive,
                                                            negative=negative, field=field, l2=l2)))
    click.echo(f"{store_path}: facet {r.name} on {r.layer}: {r.positives} positives, {r.negatives} negatives, "
               f"balanced accuracy {100 * r.train_accuracy:.1f}% (train), {100 * r.val_accuracy:.1f}% (validation) "
               f"in {time.perf_counter() - t0:.1f} s")
