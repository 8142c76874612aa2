"""`atlas export`: a store as batches of JSON lines (or Parquet) in the layout of Neuronpedia's public exports,
extended with image paths and heatmap locations, for tools that do not read HDF5.

Layout (docs/store.md, "Export: JSONL in Neuronpedia's layout")::

    OUT/manifest.json                     what was exported, from which store, with which ExportConfig; file list;
                                          how many nulls stand for non-finite numbers, per field
    OUT/features/batch-<i>.jsonl.gz       one record per unit: id, statistics, histogram, feature-vis path, ranked
                                          labels with their scores (`atlas label`; [] in a layer never labelled)
    OUT/activations/batch-<i>.jsonl.gz    one record per (unit, top example), unit then rank order: image index,
                                          source id, thumbnail path, value, peak cell in the layer grid, heatmap
    OUT/explanations/batch-<i>.jsonl.gz   one record per (unit, label), unit then rank order, in Neuronpedia's
                                          explanation style (description = the label's text); labelled layers only

Batch i of features/, activations/ and (for a labelled layer) explanations/ holds the same units (``batch_size`` of
one layer; a batch never spans two layers); the manifest's ``layers`` say which layers had labels.  The store is
read through `atlas.store` one batch of units at a time (labels too: `LayerData.labels_rows`), never a whole layer.
JSON has no NaN or infinity: a non-finite number is written as null and counted in the manifest's ``nulls``;
`json.dumps` runs with ``allow_nan=False``, so one that slipped through would stop the export rather than write
invalid JSON.
Paths of images are relative to the root of the site `atlas site` makes from the same store (`atlas.site`).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import ExportConfig, to_dict
from .errors import ConfigError, StoreError
from .site import featurevis_parts, thumbnail_parts
from .store import LayerData, Store
from .version import __version__

FOLDERS = ("features", "activations", "explanations")
MANIFEST_FORMAT = "atlas-export"  # the manifest's "format": how --overwrite recognises an earlier export
LABEL_TYPE = "atlas-clip-dissect"  # explanations' typeName; "+words" where the labels used rendered-word evidence
LABEL_ATTRS = ("vocab_source", "vocab_size", "vocab_sha256", "images", "top", "word_evidence", "dead_units",
               "unchecked_units")  # of the labels/ group, repeated in the manifest's layer rows


@dataclass
class ExportResult:
    out: Path
    units: int
    records: dict[str, int]  # folder -> records written
    files: list[str]  # relative to out
    nulls: dict[str, int] = field(default_factory=dict)  # field -> non-finite numbers written as null


@dataclass(frozen=True)
class Images:
    """The store's image columns an export needs, read once ([N] each)."""

    source_id: np.ndarray
    caption: np.ndarray
    label: np.ndarray
    thumb_row: np.ndarray  # -1: no thumbnail


def export_store(store: str | os.PathLike, out: str | os.PathLike, config: ExportConfig = ExportConfig(), *,
                 overwrite: bool = False, progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """Export the store at ``store`` into the folder ``out`` (which must not exist, be empty, or, with
    ``overwrite``, hold an earlier export, which is replaced once the new one is complete)."""
    writer_for(config.format)  # an absent pyarrow fails before the store is opened
    with Store(store) as st:
        return export_open(st, out, config, overwrite=overwrite, progress=progress)


def export_open(st: Store, out: str | os.PathLike, config: ExportConfig = ExportConfig(), *, overwrite: bool = False,
                progress: Callable[[int, int], None] | None = None) -> ExportResult:
    """`export_store` on an open store (the notebook's `Atlas.export`)."""
    write = writer_for(config.format)
    out = Path(out)
    check_out(out, overwrite)
    layers = chosen_layers(st, config.layers)
    images = Images(*(st.image_column(c) for c in ("source_id", "caption", "label")), st.thumb_rows())
    ext = "jsonl.gz" if config.format == "jsonl" else "parquet"
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    for folder in FOLDERS:
        (staging / folder).mkdir(parents=True)
    nulls: Counter[str] = Counter()
    records = dict.fromkeys(FOLDERS, 0)
    files: list[dict[str, Any]] = []
    layer_rows: list[dict[str, Any]] = []
    total, done, batch = sum(ld.units for ld in layers), 0, 0
    if progress:
        progress(0, total)
    try:
        for ld in layers:
            k = ld.top_k if config.examples is None else min(config.examples, ld.top_k)
            checked = ld.check("labels")  # None: never labelled
            type_name = None if checked is None else LABEL_TYPE + ("+words" if checked.get("word_evidence") else "")
            layer_rows.append({"model": ld.model, "name": ld.name, "kind": ld.kind, "units": ld.units,
                               "grid": list(ld.grid), "examples": k, "first_batch": batch,
                               "labels": None if checked is None else
                               {"typeName": type_name, **{a: checked[a] for a in LABEL_ATTRS if a in checked}}})
            fv_done = ld.featurevis_done()  # [U] bool
            for start in range(0, ld.units, config.batch_size):
                stop = min(start + config.batch_size, ld.units)
                labels = None if checked is None else label_lists(ld, start, stop, nulls)
                parts = {"features": list(feature_records(ld, start, stop, fv_done, labels, nulls)),
                         "activations": list(activation_records(ld, start, stop, k, images, config.maps, nulls))}
                if labels is not None:
                    parts["explanations"] = list(explanation_records(ld, start, labels, type_name or LABEL_TYPE, nulls))
                for folder, recs in parts.items():
                    name = f"{folder}/batch-{batch}.{ext}"
                    write(staging / name, recs)
                    files.append({"path": name, "layer": ld.name, "units": [start, stop], "records": len(recs)})
                    records[folder] += len(recs)
                batch += 1
                done += stop - start
                if progress:
                    progress(done, total)
            layer_rows[-1]["batches"] = batch - layer_rows[-1]["first_batch"]
        manifest = manifest_of(st, config, layer_rows, total, files, records, nulls)
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, allow_nan=False) + "\n")
        swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(out, total, records, ["manifest.json"] + [f["path"] for f in files], dict(nulls))


def chosen_layers(st: Store, names: tuple[str, ...]) -> list[LayerData]:
    """The store's layers named in ``names`` (every mined layer when empty), in the store's order."""
    have = [ld for m in st.models() for ld in st.layers(m)]
    if not have:
        raise StoreError(f"store {st.path} holds no mined layers yet; run `atlas mine` on it first")
    missing = [n for n in names if n not in {ld.name for ld in have}]
    if missing:
        raise StoreError(f"--layer {', '.join(missing)}: store {st.path} has no such layer; it has "
                         f"{', '.join(ld.name for ld in have)}")
    return [ld for ld in have if not names or ld.name in names]


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file or a folder with files in it, unless ``overwrite`` and it holds an earlier
    export (nothing else is ever deleted)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder; choose another path")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; choose another folder, or pass --overwrite to "
                          "replace the earlier export in it")
    try:
        earlier = json.loads((out / "manifest.json").read_text()).get("format") == MANIFEST_FORMAT
    except (OSError, ValueError, AttributeError):
        earlier = False
    if not earlier:
        raise ConfigError(f"--out {out} holds files that are not an `atlas export` (no manifest.json of one); "
                          "--overwrite replaces only an earlier export: choose another folder")


def swap_in(staging: Path, out: Path) -> None:
    """Move the finished export to ``out``; an earlier export there is removed only after the new one is in place."""
    old = None
    if out.is_dir():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old)


def finite_list(values: np.ndarray, name: str, nulls: Counter[str]) -> list:
    """``values`` as nested Python lists, each non-finite number replaced by None and counted under ``name``."""
    a = np.asarray(values)
    if not np.issubdtype(a.dtype, np.floating):
        return a.tolist()
    bad = ~np.isfinite(a)
    if not bad.any():
        return a.tolist()
    nulls[name] += int(bad.sum())
    obj = a.astype(object)
    obj[bad] = None
    return obj.tolist()


def label_lists(ld: LayerData, start: int, stop: int, nulls: Counter[str]) -> list[list[dict[str, Any]]]:
    """Per unit of ``start:stop``, its labels best first as the features records hold them (`LayerData.labels_rows`,
    one slice of the labels/ group): rank, text, score, match, word, auprc; the top label also its bootstrap
    interval ``auprc_ci`` [low, high] and ``base_rate`` (stored for it alone; null on the others).  A non-finite
    stored number (the reader's None) is counted under ``features.labels.<key>``."""
    rows = ld.labels_rows(start, stop)
    assert rows is not None
    out = []
    for row in rows:
        labels = []
        for r, lab in enumerate(row["labels"], 1):
            rec = {"rank": r, "text": lab["concept"], "score": lab["score"], "match": lab["match"],
                   "word": lab["word"], "auprc": lab["auprc"],
                   "auprc_ci": row["ci"] if r == 1 else None, "base_rate": row["base_rate"] if r == 1 else None}
            count_label_nulls(rec, "features.labels.", nulls)
            labels.append(rec)
        out.append(labels)
    return out


def count_label_nulls(lab: dict[str, Any], prefix: str, nulls: Counter[str]) -> None:
    """Count the nulls of one label (`label_lists`) that stand for stored non-finite numbers: ``auprc_ci`` and
    ``base_rate`` of a label below the top one are not stored at all, so their nulls are not counted."""
    for key in ("score", "match", "word", "auprc"):
        if lab[key] is None:
            nulls[prefix + key] += 1
    if lab["rank"] == 1:
        if lab["base_rate"] is None:
            nulls[prefix + "base_rate"] += 1
        if None in lab["auprc_ci"]:
            nulls[prefix + "auprc_ci"] += sum(x is None for x in lab["auprc_ci"])


def explanation_records(ld: LayerData, start: int, labels: list[list[dict[str, Any]]], type_name: str,
                        nulls: Counter[str]) -> Iterator[dict[str, Any]]:
    """One record per (unit, label) of the batch starting at unit ``start``, unit then rank order, in Neuronpedia's
    explanation style: the label's text as ``description``, its combined score as ``score``, the other numbers of
    the label in ``scores``; nulls counted under ``explanations.<key>``."""
    for j, unit_labels in enumerate(labels):
        u = start + j
        uid = ld.neuron_id(u)
        for lab in unit_labels:
            count_label_nulls(lab, "explanations.", nulls)
            yield {"feature": uid, "modelId": ld.model, "layer": ld.name, "index": u, "rank": lab["rank"],
                   "description": lab["text"], "typeName": type_name, "score": lab["score"],
                   "scores": {k: lab[k] for k in ("match", "word", "auprc", "auprc_ci", "base_rate")}}


def feature_records(ld: LayerData, start: int, stop: int, fv_done: np.ndarray,
                    labels: list[list[dict[str, Any]]] | None, nulls: Counter[str]) -> Iterator[dict[str, Any]]:
    """One record per unit of ``start:stop``: its id, statistics, histogram, feature-vis path and labels
    (`label_lists`; [] for every unit of a layer never labelled)."""
    raw = {n: ld.rows(f"stats/{n}", start, stop) for n in ld.stat_names()}  # each [B]
    stats = {n: finite_list(v, f"features.stats.{n}", nulls) for n, v in raw.items()}
    if "positive" in raw and "count" in raw:
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = raw["positive"] / raw["count"].astype(np.float64)  # [B]; 0/0 = NaN -> null
        stats["frac_positive"] = finite_list(frac, "features.stats.frac_positive", nulls)
    hist = ld.rows("stats/hist", start, stop).tolist() if ld.has("stats/hist") else None  # [B, bins]
    kind, grid = ld.kind, list(ld.grid)
    for j, u in enumerate(range(start, stop)):
        yield {"id": ld.neuron_id(u), "modelId": ld.model, "layer": ld.name, "index": u, "kind": kind,
               "grid": grid, "stats": {n: v[j] for n, v in stats.items()},
               "histogram": None if hist is None or "range" not in stats else
               {"range": stats["range"][j], "counts": hist[j]},
               "featurevis": "/".join(featurevis_parts(ld.model, ld.name, u)) if fv_done[u] else None,
               "labels": [] if labels is None else labels[j]}


def activation_records(ld: LayerData, start: int, stop: int, k: int, images: Images, maps: bool,
                       nulls: Counter[str]) -> Iterator[dict[str, Any]]:
    """One record per (unit, top example) of units ``start:stop``, unit then rank order; empty slots left out."""
    index = ld.rows("topk/index", start, stop)[:, :k]  # [B, k] int64, -1: empty slot
    used = index >= 0
    values = np.where(used, ld.rows("topk/values", start, stop)[:, :k], 0.0)  # [B, k]; empty slots are not written
    argmax = ld.rows("topk/argmax", start, stop)[:, :k]  # [B, k] flat row * w + col in the layer grid
    vals = finite_list(values.astype(np.float32), "activations.value", nulls)
    heat = None
    if maps:
        # per unit [k, mh, mw]: the maps `atlas maps` recomputed where it did, else mining's
        heat = [finite_list(np.where(used[j][:, None, None], m[:k], np.float32(0)), "activations.heatmap", nulls)
                for j, m in enumerate(ld.example_maps(start, stop))]
    gh, gw = ld.grid
    for j, u in enumerate(range(start, stop)):
        uid = ld.neuron_id(u)
        for r in np.nonzero(used[j])[0]:
            i, a = int(index[j, r]), int(argmax[j, r])
            row = int(images.thumb_row[i]) if i < len(images.thumb_row) else -1
            rec = {"feature": uid, "modelId": ld.model, "layer": ld.name, "index": u, "rank": int(r) + 1,
                   "image_index": i, "source_id": str(images.source_id[i]), "caption": str(images.caption[i]),
                   "label": str(images.label[i]),
                   "thumbnail": "/".join(thumbnail_parts(ld.model, i)) if row >= 0 else None,
                   "value": vals[j][r], "peak": {"row": a // gw, "col": a % gw}, "grid": [gh, gw]}
            if heat is not None:
                rec["heatmap"] = heat[j][r]  # [mh][mw]: the stored map, average-pooled to at most map_size per side
            yield rec


def manifest_of(st: Store, config: ExportConfig, layers: list[dict[str, Any]], units: int,
                files: list[dict[str, Any]], records: dict[str, int], nulls: Counter[str]) -> dict[str, Any]:
    meta = st.meta
    keys = ("model_spec", "model_name", "weights_sha256", "data_source", "data_fingerprint", "n_images",
            "schema_version", "atlas_version")
    return {"format": MANIFEST_FORMAT, "atlas_version": __version__, "store": str(st.path.resolve()),
            "store_meta": {k: meta[k] for k in keys if k in meta},
            "models": sorted({row["model"] for row in layers}), "layers": layers, "units": units,
            "batch_size": config.batch_size, "records": records, "files": files,
            "nulls": {k: nulls[k] for k in sorted(nulls)},
            "explanations": "one record per (unit, label) of the layers whose labels is not null (`atlas label`); "
                            "explanations/batch-<i> covers the units of features/batch-<i>; layers never labelled "
                            "write none",
            "paths": "featurevis and thumbnail paths are relative to the root of the site `atlas site` writes from "
                     "this store; source_id is relative to store_meta.data_source",
            "config": to_dict(config)}


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """gzip-compressed JSON lines; mtime 0 in the gzip header, so the same export gives the same bytes.  Level 1:
    on float-heavy records it takes half of level 6's time for files about 9% larger (docs/store.md)."""
    text = "".join(json.dumps(rec, allow_nan=False, separators=(",", ":")) + "\n" for rec in records)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=1) as gz:
        gz.write(text.encode("utf-8"))


def write_parquet(path: Path, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)


def writer_for(fmt: str) -> Callable[[Path, list[dict[str, Any]]], None]:
    if fmt == "jsonl":
        return write_jsonl
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ConfigError("--format parquet needs pyarrow, an optional dependency: `pip install pyarrow`, or use "
                          "--format jsonl") from None
    return write_parquet
