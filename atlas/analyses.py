"""The reports `atlas build` adds after mining: probe, attacks, audit (each one library call, saved in the store).

`run_analyses` runs, in order, each analysis that `AnalysesConfig` turns on and that the data allows:

- ``/probes/probe``: a sparse probe of the last mined layer on the store's labels (``label_pattern``);
- ``/attacks/table``: the typographic attack table (paper targets, 8 positions) for the zero-shot classifier
  and that probe, on labelled images (Concept World: held-out pictograms);
- ``/attacks/stroop`` and ``/attacks/words`` (which rendered words excite each unit of the probed layer);
- ``/audits/audit``: the bias audit of two groups (Concept World: the planted colour family, persons drawn
  for the purpose; else only with ``audit_groups``);
- the layer's automatic labels (``labels/`` of the probed layer, `atlas.labels.label_units` with the default
  vocabulary; after the words report, whose responses are the labels' rendered-word evidence), so that the site's
  neuron pages and search box show them.

An analysis that cannot run (no labels, a class set without the targets, too few group images) is recorded as
skipped with the reason; the others still run.  Each report is written to the store when it finishes, and a
rerun with the same configuration skips the reports already there (``<store>.analyses.json`` keeps which).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import store
from .config import AnalysesConfig, to_json
from .data.conceptworld import HELD_OUT_PICTOGRAMS, PICTOGRAM_LABELS
from .data.sources import ImageSource
from .models import LoadedModel


@dataclass
class AnalysesResult:
    done: list[str] = field(default_factory=list)  # report paths written (or found from an earlier run)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (analysis, why)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each report run now


def run_analyses(model: LoadedModel, source: ImageSource, store_path: str | os.PathLike, layer: str,
                 config: AnalysesConfig = AnalysesConfig(), work: str | os.PathLike | None = None,
                 progress: Callable[[str], None] | None = None) -> AnalysesResult:
    """Run the analyses of the module doc on ``layer`` of the mined store ``store_path``."""
    from .attacks.experiments import run_attack_table, run_stroop, run_word_sensitivity
    from .labels import label_units
    from .probes.report import probe_layer

    store_path = Path(store_path)
    work = Path(work) if work else store_path.parent
    ledger_path = store_path.with_name(store_path.name + ".analyses.json")
    ledger = json.loads(ledger_path.read_text()) if ledger_path.is_file() else {}
    stamp = to_json(config) + f"|{model.name}|{model.weights_sha256}|{layer}|{source.fingerprint()}"
    result = AnalysesResult()
    cw = source.description.startswith("conceptworld:")
    pattern = config.label_pattern if config.label_pattern is not None else (PICTOGRAM_LABELS if cw else None)

    def step(key: str, fn: Callable[[], object], written: Callable[[store.Store], bool] | None = None) -> bool:
        """Run ``fn`` unless ``written`` (default: the report ``key`` is in the store) and the ledger says it ran
        with this configuration."""
        kind, name = key.split("/", 1)
        with store.Store(store_path) as st:
            have = written(st) if written else name in st.reports(kind)
        if have and ledger.get(key) == stamp:
            result.done.append(key)
            return True
        if progress:
            progress(key)
        t = time.perf_counter()
        try:
            fn()
        except (ValueError, store.StoreError) as e:  # LabelError is a ValueError  # each says what is missing; record it, go on
            result.skipped.append((key, str(e)))
            return False
        finally:
            result.seconds[key] = time.perf_counter() - t
        ledger[key] = stamp
        ledger_path.write_text(json.dumps(ledger, indent=1))
        result.done.append(key)
        return True

    probed = False
    if config.probe:
        probed = step("probes/probe", lambda: probe_layer(store_path, layer, "probe", label_pattern=pattern))
    if config.attacks:
        step("attacks/table", lambda: run_attack_table(
            model, HELD_OUT_PICTOGRAMS if cw else source, store_path, "table", label_pattern=pattern,
            probe="probe" if probed else None, images=config.attack_images, sizes=config.attack_sizes,
            layer=layer))
        step("attacks/stroop", lambda: run_stroop(model, store_path, "stroop"))
        step("attacks/words", lambda: run_word_sensitivity(model, store_path, layer, None, "words"))
    if config.labels:
        step(f"labels/{layer}", lambda: label_units(model, store_path, [layer]),  # a layer's group, not a report
             lambda st: model.name in st.models() and st.layer(model.name, layer).has("labels"))
    if config.audit:
        if config.audit_groups or cw:
            step("audits/audit", lambda: _audit(model, store_path, layer, config, work))
        else:
            result.skipped.append(("audits/audit", "no group labels: give audit_groups (a CSV of image,group)"))
    return result


def _audit(model: LoadedModel, store_path: Path, layer: str, config: AnalysesConfig, work: Path) -> None:
    from .audit import audit_images, conceptworld_group_set

    if config.audit_groups:
        csv_path, folder = Path(config.audit_groups), Path(config.audit_folder or ".")
    else:
        folder = work / "audit-set"
        csv_path = conceptworld_group_set(folder, per_group=config.audit_per_group)
    audit_images(model, store_path, layer, csv_path, folder, config.audit_context)
