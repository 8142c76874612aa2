"""`atlas export`: every record read back and checked against the HDF5 file read directly with h5py; non-finite
numbers become counted nulls; reads go one batch of units at a time; bad input gives errors that say what to do."""

from __future__ import annotations

import gzip
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import atlas
from atlas.cli import main
from atlas.config import ExportConfig
from atlas.errors import ConfigError, StoreError
from atlas.export import export_store
from atlas.store import LayerData, write_check

LAYERS = ("visual.layer3.0", "visual.layer4.0")


def no_constant(name: str) -> None:
    raise AssertionError(f"{name} written into JSON")


def read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line, parse_constant=no_constant) for line in f]


def read_export(out: Path, explanations: list | None = None) -> tuple[dict, list[dict], list[dict]]:
    """(manifest, feature records, activation records), every file read through the manifest's list; explanation
    records go into ``explanations`` when given (else there must be none)."""
    manifest = json.loads((out / "manifest.json").read_text(), parse_constant=no_constant)
    feats: list[dict] = []
    acts: list[dict] = []
    found = {"features": feats, "activations": acts, "explanations": [] if explanations is None else explanations}
    for f in manifest["files"]:
        recs = read_jsonl(out / f["path"])
        assert len(recs) == f["records"], f["path"]
        assert all(r["layer"] == f["layer"] and f["units"][0] <= r["index"] < f["units"][1] for r in recs)
        found[f["path"].split("/")[0]].extend(recs)
    assert explanations is not None or not found["explanations"]
    return manifest, feats, acts


def expected_nulls(path: Path) -> dict[str, int]:
    """Non-finite numbers the export must write as null, counted from the file itself."""
    n: dict[str, int] = defaultdict(int)
    with h5py.File(path, "r") as h:
        for layer in LAYERS:
            g = h[f"neurons/tiny/{layer}"]
            for name, ds in g["stats"].items():
                if ds.ndim == 1 and ds.dtype.kind == "f":
                    n[f"features.stats.{name}"] += int((~np.isfinite(ds[()])).sum())
            count, positive = g["stats/count"][()], g["stats/positive"][()]
            n["features.stats.frac_positive"] += int((count == 0).sum())
            used = g["topk/index"][()] >= 0
            n["activations.value"] += int((~np.isfinite(g["topk/values"][()]) & used).sum())
            n["activations.heatmap"] += int((~np.isfinite(g["topk/maps"][()]) & used[:, :, None, None]).sum())
    return {k: v for k, v in n.items() if v}


@pytest.fixture(scope="module")
def exported(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "out"
    result = export_store(small_store, out, ExportConfig(batch_size=100))
    return result, out


def test_features_match_the_store(small_store, exported):
    result, out = exported
    manifest, feats, _ = read_export(out)
    assert result.units == manifest["units"] == len(feats) == 256 + 512
    ids = [r["id"] for r in feats]
    assert len(set(ids)) == len(ids)
    assert set(ids) == {f"tiny/{layer}/{u}" for layer, n in zip(LAYERS, (256, 512)) for u in range(n)}
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted(result.files) == sorted(["manifest.json"] + [f["path"] for f in manifest["files"]])
    assert len([f for f in manifest["files"] if f["path"].startswith("features/")]) == 3 + 6  # 100 units a batch
    assert (out / "explanations").is_dir() and not any((out / "explanations").iterdir())
    assert manifest["config"] == {"format": "jsonl", "layers": [], "batch_size": 100, "examples": None, "maps": True}
    assert manifest["store_meta"]["model_spec"] == "atlas:tiny@random:0" and manifest["nulls"] == {}
    by_id = {r["id"]: r for r in feats}
    with h5py.File(small_store, "r") as h:
        for layer in LAYERS:
            g = h[f"neurons/tiny/{layer}"]
            done = g["featurevis/done"][()] if "featurevis" in g else np.zeros(g.attrs["units"], bool)
            names = [n for n in g["stats"] if g["stats"][n].ndim == 1]
            assert {"count", "mean", "std", "min", "max", "positive", "nonfinite", "nonfinite_maps"} <= set(names)
            for u in range(int(g.attrs["units"])):
                r = by_id[f"tiny/{layer}/{u}"]
                assert (r["modelId"], r["layer"], r["index"], r["grid"]) == ("tiny", layer, u, list(g.attrs["grid"]))
                for n in names:
                    assert r["stats"][n] == g[f"stats/{n}"][u].item(), (layer, u, n)
                assert r["stats"]["frac_positive"] == g["stats/positive"][u] / g["stats/count"][u]
                assert r["histogram"]["counts"] == g["stats/hist"][u].tolist()
                assert r["histogram"]["range"] == g["stats/range"][u]
                assert r["featurevis"] == (f"tiny/{layer}/fv/{u}.png" if done[u] else None)
                assert r["labels"] == []
    assert [L["labels"] for L in manifest["layers"]] == [None, None]  # never labelled
    assert sum(r["featurevis"] is not None for r in feats) == 8  # the fixture renders 8 units


def test_activations_match_the_store(small_store, exported):
    _, out = exported
    manifest, feats, acts = read_export(out)
    per_unit = defaultdict(list)
    for r in acts:
        per_unit[r["feature"]].append(r)
    with h5py.File(small_store, "r") as h:
        source = h["images/source_id"].asstr()[()]
        thumb_row = h["images/thumb_row"][()]
        total = 0
        for layer in LAYERS:
            g = h[f"neurons/tiny/{layer}"]
            index, values = g["topk/index"][()], g["topk/values"][()]
            argmax, maps = g["topk/argmax"][()], g["topk/maps"][()]  # [U, k], [U, k, mh, mw]
            gh, gw = (int(x) for x in g.attrs["grid"])
            assert maps.shape[2:] == (gh, gw)  # grids of at most 8: the stored map is the whole map
            total += int((index >= 0).sum())
            for u in range(index.shape[0]):
                recs = per_unit[f"tiny/{layer}/{u}"]
                used = np.nonzero(index[u] >= 0)[0]
                assert [r["rank"] for r in recs] == [int(k) + 1 for k in used]
                for r, k in zip(recs, used):
                    i = int(index[u, k])
                    assert (r["modelId"], r["layer"], r["index"]) == ("tiny", layer, u)
                    assert r["image_index"] == i and r["source_id"] == source[i]
                    assert r["value"] == values[u, k].item()
                    assert r["thumbnail"] == (f"tiny/img/{i}.jpg" if thumb_row[i] >= 0 else None)
                    assert r["grid"] == [gh, gw] and r["heatmap"] == maps[u, k].tolist()
                    row, col = r["peak"]["row"], r["peak"]["col"]
                    assert row * gw + col == argmax[u, k]
                    # the peak, recomputed from the stored heatmap: the map's maximum sits there
                    peak = np.unravel_index(np.argmax(maps[u, k]), maps[u, k].shape)
                    assert maps[u, k][row, col] == maps[u, k][peak]
    assert len(acts) == total == manifest["records"]["activations"]
    assert {r["feature"] for r in acts} <= {r["id"] for r in feats}
    assert all(r["thumbnail"] is not None for r in acts)  # every top example has a thumbnail


def test_batches_pair_up_and_reads_stay_within_a_batch(small_store, tmp_path, monkeypatch):
    spans = []
    rows = LayerData.rows

    def spy(self, key, start, stop):
        spans.append((key, start, stop))
        return rows(self, key, start, stop)

    monkeypatch.setattr(LayerData, "rows", spy)
    monkeypatch.setattr(LayerData, "__getitem__", lambda self, key: pytest.fail(f"whole-layer read of {key}"))
    export_store(small_store, tmp_path / "x", ExportConfig(batch_size=64, layers=("visual.layer4.0",)))
    assert spans and max(stop - start for _, start, stop in spans) == 64
    maps_read = {(start, stop) for key, start, stop in spans if key == "topk/maps"}
    assert maps_read == {(s, s + 64) for s in range(0, 512, 64)}
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert [L["name"] for L in manifest["layers"]] == ["visual.layer4.0"] and manifest["units"] == 512
    feats = [f for f in manifest["files"] if f["path"].startswith("features/")]
    acts = [f for f in manifest["files"] if f["path"].startswith("activations/")]
    assert [f["units"] for f in feats] == [f["units"] for f in acts] == [[s, s + 64] for s in range(0, 512, 64)]


def test_nonfinite_numbers_become_counted_nulls(small_store, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(small_store, bad)
    with h5py.File(bad, "r+") as h:
        g = h["neurons/tiny/visual.layer3.0"]
        g["stats/mean"][3] = np.nan
        g["stats/max"][5] = np.inf
        g["stats/std"][5] = -np.inf
        g["stats/count"][11] = 0  # frac_positive 0/0
        g["topk/values"][7, 0] = np.nan
        g["topk/maps"][9, 1, 0, 0] = np.inf
        index = g["topk/index"][()]
    planted = {"features.stats.mean": 1, "features.stats.max": 1, "features.stats.std": 1,
               "features.stats.frac_positive": 1, "activations.value": 1, "activations.heatmap": 1}
    assert expected_nulls(bad) == planted  # the fixture's store has none of its own
    assert expected_nulls(small_store) == {}
    result = export_store(bad, tmp_path / "out")
    manifest, feats, acts = read_export(tmp_path / "out")  # parse_constant: no NaN/Infinity anywhere
    assert manifest["nulls"] == result.nulls == planted
    f = {r["id"]: r for r in feats}
    assert f["tiny/visual.layer3.0/3"]["stats"]["mean"] is None
    assert f["tiny/visual.layer3.0/5"]["stats"]["max"] is None and f["tiny/visual.layer3.0/5"]["stats"]["std"] is None
    assert f["tiny/visual.layer3.0/11"]["stats"]["frac_positive"] is None
    a = {(r["feature"], r["rank"]): r for r in acts}
    assert index[7, 0] >= 0 and a[("tiny/visual.layer3.0/7", 1)]["value"] is None
    assert a[("tiny/visual.layer3.0/9", 2)]["heatmap"][0][0] is None
    assert a[("tiny/visual.layer3.0/9", 2)]["heatmap"][0][1] is not None


def plant_labels(path: Path, layer: str, units: int, top: int = 3) -> None:
    """Known labels for every unit of ``layer``, written through the store's label writer as `atlas label` does:
    unit 0 dead (no label, NaN), unit 2 with one label only, a NaN combined score (unit 1, rank 2), word scores
    missing (NaN) on the last rank, unit 3's top label unchecked (NaN AUPRC, interval and base rate)."""
    rng = np.random.default_rng(7)
    concept = [[f"thing {u}-{j}" for j in range(top)] for u in range(units)]
    concept[0] = [""] * top
    concept[2] = ["ünïcode \"quoted\" label"] + [""] * (top - 1)
    score, match, word, auprc = (rng.normal(size=(units, top)).astype(np.float32) for _ in range(4))
    for x in (score, match, word, auprc):
        x[0] = np.nan
        x[2, 1:] = np.nan
    score[1, 1] = np.nan
    word[:, -1] = np.nan
    check_auprc, base = auprc[:, 0].copy(), rng.random(units).astype(np.float32)
    ci = np.stack([check_auprc - 0.1, check_auprc + 0.1], 1).astype(np.float32)
    check_auprc[3], ci[3], base[3] = np.nan, np.nan, np.nan
    auprc[3, 0] = np.nan
    base[0] = np.nan
    write_check(path, "tiny", layer, "labels", {
        "concept": concept, "score": score, "match": match, "word": word, "auprc": auprc,
        "check_auprc": check_auprc, "check_ci": ci, "check_base_rate": base},
        {"config": {"top": top}, "vocab_source": "planted", "vocab_size": units * top, "vocab_sha256": "0" * 64,
         "images": 200, "top": top, "left_out": [], "dead_units": 1, "unchecked_units": 1, "word_evidence": True})


def test_labels_become_features_labels_and_explanations(small_store, tmp_path, monkeypatch):
    path = tmp_path / "labelled.h5"
    shutil.copy(small_store, path)
    layer = "visual.layer4.0"
    plant_labels(path, layer, 512)
    spans = []
    labels_rows = LayerData.labels_rows

    def spy(self, start, stop):
        spans.append((self.name, start, stop))
        return labels_rows(self, start, stop)

    monkeypatch.setattr(LayerData, "labels_rows", spy)
    monkeypatch.setattr(LayerData, "labels", lambda self, unit=None: pytest.fail("whole-layer labels read"))
    result = export_store(path, tmp_path / "out", ExportConfig(batch_size=100))
    assert spans == [(layer, s, min(s + 100, 512)) for s in range(0, 512, 100)]  # one read per batch
    expl: list[dict] = []
    manifest, feats, _ = read_export(tmp_path / "out", expl)
    # the layer's rows say which had labels; explanations/ batches pair with features/ batches of that layer only
    rows = {L["name"]: L for L in manifest["layers"]}
    assert rows["visual.layer3.0"]["labels"] is None
    assert rows[layer]["labels"]["typeName"] == "atlas-clip-dissect+words"
    assert rows[layer]["labels"]["vocab_source"] == "planted" and rows[layer]["labels"]["top"] == 3
    by_folder = defaultdict(dict)
    for f in manifest["files"]:
        folder, name = f["path"].split("/")
        by_folder[folder][name.split(".")[0]] = (f["layer"], f["units"])
    assert by_folder["explanations"] == {b: v for b, v in by_folder["features"].items() if v[0] == layer}
    assert len(by_folder["explanations"]) == 6
    assert manifest["records"]["explanations"] == len(expl) == result.records["explanations"]
    # every record against the file read directly with h5py
    f = {r["id"]: r for r in feats}
    e = defaultdict(list)
    for r in expl:
        e[r["feature"]].append(r)
    num = lambda x: None if not np.isfinite(x) else x.item()
    nulls: dict[str, int] = defaultdict(int)
    with h5py.File(path, "r") as h:
        g = h[f"neurons/tiny/{layer}/labels"]
        concept = g["concept"].asstr()[()]
        cols = {k: g[k][()] for k in ("score", "match", "word", "auprc", "check_ci", "check_base_rate")}
        for u in range(512):
            uid = f"tiny/{layer}/{u}"
            want = []
            for j in range(3):
                if not concept[u, j]:
                    continue
                lab = {"rank": j + 1, "text": concept[u, j],
                       **{k: num(cols[k][u, j]) for k in ("score", "match", "word", "auprc")},
                       "auprc_ci": [num(x) for x in cols["check_ci"][u]] if j == 0 else None,
                       "base_rate": num(cols["check_base_rate"][u]) if j == 0 else None}
                for k in ("score", "match", "word", "auprc"):
                    nulls[k] += lab[k] is None
                if j == 0:
                    nulls["auprc_ci"] += lab["auprc_ci"].count(None)
                    nulls["base_rate"] += lab["base_rate"] is None
                want.append(lab)
            assert f[uid]["labels"] == want, u
            assert [(r["modelId"], r["layer"], r["index"], r["rank"], r["description"], r["score"]) for r in e[uid]] \
                == [("tiny", layer, u, x["rank"], x["text"], x["score"]) for x in want]
            assert all(r["typeName"] == "atlas-clip-dissect+words" for r in e[uid])
            assert [r["scores"] for r in e[uid]] == [{k: x[k] for k in ("match", "word", "auprc", "auprc_ci",
                                                                        "base_rate")} for x in want]
    assert f[f"tiny/{layer}/0"]["labels"] == [] and not e[f"tiny/{layer}/0"]  # the dead unit
    assert f[f"tiny/{layer}/2"]["labels"][0]["text"] == 'ünïcode "quoted" label'
    assert f[f"tiny/{layer}/1"]["labels"][1]["score"] is None  # the planted NaN score
    assert e[f"tiny/{layer}/1"][1]["score"] is None
    assert f[f"tiny/{layer}/3"]["labels"][0]["auprc_ci"] == [None, None]
    assert all(r["labels"] == [] for r in feats if r["layer"] == "visual.layer3.0")
    assert len(expl) == 3 * 512 - 3 - 2  # the dead unit's 3, unit 2's empty 2
    # the planted NaNs (and the word scores missing on the last rank) are the only nulls, each counted
    planted = {"score": 1, "word": 510, "auprc": 1, "auprc_ci": 2, "base_rate": 1}
    assert {k: v for k, v in nulls.items() if v} == planted
    assert manifest["nulls"] == result.nulls == {f"{where}.{k}": v for where in ("explanations", "features.labels")
                                                 for k, v in sorted(planted.items())}


def test_options_examples_maps_and_the_notebook(small_store, tmp_path):
    cfg = ExportConfig(layers=("visual.layer3.0",), examples=3, maps=False, batch_size=1000)
    with atlas.open(small_store) as a:
        r = a.export(tmp_path / "nb", cfg)
    assert r.units == 256 and r.records["activations"] <= 3 * 256
    _, feats, acts = read_export(tmp_path / "nb")
    assert len(feats) == 256 and max(x["rank"] for x in acts) == 3 and not any("heatmap" in x for x in acts)
    # the library function writes the same bytes (gzip headers carry no time)
    export_store(small_store, tmp_path / "lib", cfg)
    for name in ("features/batch-0.jsonl.gz", "activations/batch-0.jsonl.gz", "manifest.json"):
        assert (tmp_path / "nb" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()


def test_overwrite_replaces_only_an_earlier_export(small_store, tmp_path):
    out = tmp_path / "out"
    export_store(small_store, out, ExportConfig(batch_size=100, layers=("visual.layer4.0",)))
    assert (out / "features" / "batch-5.jsonl.gz").is_file()
    with pytest.raises(ConfigError, match=r"--out .* is not empty.*--overwrite"):
        export_store(small_store, out)
    export_store(small_store, out, ExportConfig(batch_size=1000, layers=("visual.layer4.0",)), overwrite=True)
    assert sorted(p.name for p in (out / "features").iterdir()) == ["batch-0.jsonl.gz"]  # no stale batches
    assert not list(tmp_path.glob(".out.*"))  # neither staging nor the old export is left behind
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an `atlas export`"):
        export_store(small_store, foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        export_store(small_store, tmp_path / "file")


def test_bad_store_layer_and_format(small_store, tmp_path):
    with pytest.raises(StoreError, match=r"missing\.h5 does not exist; run `atlas mine`"):
        export_store(tmp_path / "missing.h5", tmp_path / "a")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(StoreError, match="not a readable HDF5 store"):
        export_store(tmp_path / "text.h5", tmp_path / "a")
    h5py.File(tmp_path / "plain.h5", "w").close()
    with pytest.raises(StoreError, match="schema version -1"):
        export_store(tmp_path / "plain.h5", tmp_path / "a")
    with pytest.raises(StoreError, match=r"--layer visual\.layer9: .* has no such layer; it has "
                                         r"visual\.layer3\.0, visual\.layer4\.0"):
        export_store(small_store, tmp_path / "a", ExportConfig(layers=("visual.layer9",)))
    with pytest.raises(ConfigError, match=r"--format 'csv' is not an export format; use one of jsonl, parquet"):
        ExportConfig(format="csv")
    with pytest.raises(ConfigError, match=r"--batch-size must be >= 1"):
        ExportConfig(batch_size=0)
    assert not (tmp_path / "a").exists()  # nothing written on any error


def test_parquet_without_pyarrow_says_how_to_install_it(small_store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    with pytest.raises(ConfigError, match=r"--format parquet needs pyarrow.*pip install pyarrow"):
        export_store(small_store, tmp_path / "p", ExportConfig(format="parquet"))
    assert not (tmp_path / "p").exists()


def test_parquet_holds_the_same_records(small_store, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    export_store(small_store, tmp_path / "j", ExportConfig(layers=("visual.layer4.0",)))
    export_store(small_store, tmp_path / "p", ExportConfig(format="parquet", layers=("visual.layer4.0",)))
    for folder in ("features", "activations"):
        rows = pq.read_table(tmp_path / "p" / folder / "batch-0.parquet").to_pylist()
        assert rows == read_jsonl(tmp_path / "j" / folder / "batch-0.jsonl.gz")


def test_cli_export_and_its_errors(small_store, tmp_path):
    run = CliRunner().invoke
    r = run(main, ["export", str(small_store), "--out", str(tmp_path / "o"), "--layer", "visual.layer4.0",
                   "--batch-size", "200"])
    assert r.exit_code == 0, r.output
    assert "512 units" in r.output and "in 6 files" in r.output
    assert len(read_export(tmp_path / "o")[1]) == 512
    cases = [
        (["export", str(tmp_path / "nope.h5"), "--out", str(tmp_path / "x")], "does not exist"),
        (["export", str(small_store), "--out", str(tmp_path / "x"), "--layer", "fc9"],
         "--layer fc9: store"),
        (["export", str(small_store), "--out", str(tmp_path / "o")], "--overwrite"),
        (["export", str(small_store), "--out", str(tmp_path / "x"), "--format", "csv"], "'--format'"),
    ]
    for args, message in cases:
        r = run(main, args)
        assert r.exit_code != 0 and message in r.output, (args, r.output)
    r = run(main, ["export", str(small_store), "--out", str(tmp_path / "o"), "--overwrite", "--no-maps"])
    assert r.exit_code == 0, r.output
    assert "768 units" in r.output
