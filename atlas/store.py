"""The HDF5 store: the one module that knows the schema (docs/store.md), crash-safe writes, the read API.

Layout (schema version 2)::

    /                         attrs: schema_version, atlas_version, model_spec, model_name, weights_sha256,
                                     image_size, data_source, data_fingerprint, n_images
    /images/                  source_id, caption, label, sha256, status (0 ok, else BadImage reason code),
                              reason, thumb_row (row in thumbs or -1), thumbs [M, T, T, 3] uint8
    /neurons/<model>/<layer>/ attrs: kind, units, grid, config (JSON of MineConfig)
        topk/values [U, k] float32, topk/index [U, k] int64 (-1: empty), topk/argmax [U, k] int32
                    (flat index into the layer's h x w grid), topk/maps [U, k, mh, mw] float32
        stats/mean, std, min, max [U] float64/float32, stats/count, positive, nonfinite, nonfinite_maps [U]
              int64, hist [U, bins] int64 over [-range, range], stats/range [U] float64
        pooled [N, U] float32 (optional): spatial mean per image and unit (NaN rows: skipped images)
        verify/ (optional): `atlas verify`'s last check of the layer against an independent recomputation
        featurevis/images [U, S, S, 3] uint8, objective [U] float32, done [U] bool; attrs config

The neuron ``model/layer/unit`` lives in group ``/neurons/model/layer``, row ``unit``.

Writes never modify the live file: `transaction` copies it, writes the copy and swaps it in with an
atomic rename, so a crash leaves either the old or the new store.  `lock` makes a second writer fail at
once.  This module imports no torch and knows no model, site or CLI.
"""

from __future__ import annotations

import collections
import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np

from .errors import StoreBusy, StoreError  # noqa: F401 (re-exported: store.StoreError)
from .names import unit_id

SCHEMA_VERSION = 2  # 2: exact pixels, float32 pooled and maps, nonfinite_maps, verify/
REASON_CODES = ("", "empty", "not_an_image", "truncated", "corrupt", "too_large", "unreadable")




def work_dir(path: str | os.PathLike) -> Path:
    """Where resumable steps keep their checkpoints until they commit (removed after)."""
    p = Path(path)
    return p.with_name(p.name + ".work")


def remove_work(step_work: str | os.PathLike) -> None:
    """Delete one step's checkpoint folder (``work_dir(store) / name``) after it committed, and the
    store's work folder too once no other step keeps checkpoints there."""
    w = Path(step_work)
    shutil.rmtree(w, ignore_errors=True)
    try:
        w.parent.rmdir()
    except OSError:  # missing, or still holding another step's checkpoints
        pass


# ------------------------------------------------------------------------------------------------
# writing


@contextmanager
def lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the store's writer lock for the block; a second writer fails at once with StoreBusy.

    The lock is an flock on ``<store>.lock``: the kernel drops it when the holder dies, even by kill -9.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    lock_path = p.with_name(p.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StoreBusy(f"store {p} is being written by {holder}; wait for it to finish, "
                            "or write to another store path") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)


def check_unlocked(path: str | os.PathLike) -> None:
    """Fail early (StoreBusy) when another process writes the store, before slow set-up such as loading
    a model.  The real guard is `lock`, taken by the step itself."""
    with lock(path):
        pass


def save_checkpoint(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write arrays to an .npz file atomically (temporary file, fsync, rename): a resumable step's
    checkpoint is either the previous one or the new one, never half written."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def transaction(path: str | os.PathLike) -> Iterator[h5py.File]:
    """A writable copy of the store; on success it atomically replaces the store.  Hold `lock` first."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    if tmp.exists():
        tmp.unlink()  # left by a writer that died; we hold the lock, so nobody else uses it
    if p.exists():
        shutil.copyfile(p, tmp)
    f = h5py.File(tmp, "a")
    try:
        if "schema_version" not in f.attrs:
            f.attrs["schema_version"] = SCHEMA_VERSION
        yield f
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise
    f.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, p)
    _fsync_dir(p.parent)


def put(group: h5py.Group, name: str, data: Any, **kwargs: Any) -> h5py.Dataset:
    """(Re)create a dataset: chunked and fletcher32-checksummed when not scalar, gzip when large.  A numeric array
    of 8 MB or more has its chunks compressed by ``threads`` threads (keyword; `_threads`), as `put_rows` does."""
    if name in group:
        del group[name]
    if isinstance(data, list):  # strings: fixed-length UTF-8 (variable-length data cannot be checksummed)
        encoded = [str(s).encode("utf-8") for s in data]
        width = max([len(b) for b in encoded] + [1])
        arr = np.array(encoded, dtype=h5py.string_dtype("utf-8", width))
    else:
        arr = np.asarray(data)
    if arr.ndim == 0 or arr.size == 0:
        return group.create_dataset(name, data=arr)
    if arr.nbytes > 1 << 16:
        kwargs.setdefault("compression", "gzip")
        kwargs.setdefault("compression_opts", 4)
    if arr.ndim >= 2 and "chunks" not in kwargs and arr[0].nbytes <= 1 << 20:
        # whole rows (a unit's maps, an image's thumbnail) of about 1 MB: one row is read by reading one chunk
        kwargs["chunks"] = (max(1, min(len(arr), (1 << 20) // max(1, arr[0].nbytes))), *arr.shape[1:])
    kwargs.setdefault("chunks", True)
    threads = _threads(kwargs.pop("threads", None))
    if threads and arr.nbytes >= 8 << 20 and arr.dtype.kind in "biuf" and kwargs.get("compression") == "gzip" \
            and set(kwargs) <= {"chunks", "compression", "compression_opts"}:
        ds = group.create_dataset(name, shape=arr.shape, dtype=arr.dtype, fletcher32=True, **kwargs)
        with ThreadPoolExecutor(threads) as pool:
            _write_chunks(ds, arr, 0, pool, threads)
        return ds
    return group.create_dataset(name, data=arr, fletcher32=True, **kwargs)


def _threads(threads: int | None) -> int:
    """Threads that compress chunks (0: HDF5's own one-core pipeline).  Default: one per CPU where there are
    several; one thread alone is 8% slower than HDF5's pipeline (bench/store_write.py)."""
    if threads is None:
        threads = os.cpu_count() or 1
        return threads if threads > 1 else 0
    return max(0, threads)


def _write_chunks(ds: h5py.Dataset, part: np.ndarray, row: int, pool: ThreadPoolExecutor, threads: int) -> None:
    """Write ``part`` into ``ds`` at rows [row, row + len(part)) (``row`` a multiple of the chunk's rows), every
    chunk compressed and checksummed by ``pool`` and written raw (`_filtered_chunk`)."""
    chunks, level = ds.chunks, ds.compression_opts
    window = 4 * max(1, threads)  # chunks in flight: compressed bytes are written and dropped in order
    pending: collections.deque = collections.deque()
    try:
        for at in itertools.product(*(range(0, n, c) for n, c in zip(part.shape, chunks))):
            tile = part[tuple(slice(a, a + c) for a, c in zip(at, chunks))]
            pending.append(((row + at[0], *at[1:]), pool.submit(_filtered_chunk, tile, chunks, level)))
            if len(pending) >= window:
                at_done, future = pending.popleft()
                ds.id.write_direct_chunk(at_done, future.result())
        while pending:
            at_done, future = pending.popleft()
            ds.id.write_direct_chunk(at_done, future.result())
    except BaseException:
        for _, future in pending:
            future.cancel()  # an error or Ctrl-C stops the queued compressions
        raise


def put_rows(group: h5py.Group, name: str, rows: np.ndarray, bad: np.ndarray, block_bytes: int = 64 << 20,
             threads: int | None = None) -> h5py.Dataset:
    """(Re)create a [N, U] float dataset from ``rows`` (e.g. a memmap) in blocks of about ``block_bytes`` (whole
    chunks), never holding it all in memory; rows where ``bad`` is true become NaN.  gzip level 1: these matrices
    are large and compress little.  HDF5 runs its filters on one core, so the chunks are compressed and
    checksummed here by ``threads`` threads (`_threads`; zlib releases the GIL) and written as they are
    (`_filtered_chunk`: the bytes HDF5's own deflate + fletcher32 pipeline would store); ``threads=0`` lets HDF5
    filter them, one at a time."""
    if name in group:
        del group[name]
    n = rows.shape[0]
    ds = group.create_dataset(name, shape=rows.shape, dtype=rows.dtype, chunks=True, fletcher32=True,
                              compression="gzip", compression_opts=1)
    if n == 0:
        return ds
    chunk = ds.chunks[0]
    block = max(1, block_bytes // max(1, rows[:1].nbytes * chunk)) * chunk
    threads = _threads(threads)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for i in range(0, n, block):
            part = np.array(rows[i:i + block])
            part[bad[i:i + block]] = np.nan
            if threads == 0:
                ds[i:i + block] = part
            else:
                _write_chunks(ds, part, i, pool, threads)
    return ds


def _filtered_chunk(tile: np.ndarray, chunks: tuple[int, ...], level: int = 1) -> bytes:
    """A tile of at most the chunk's shape as HDF5 stores a chunk of a dataset filtered by deflate then fletcher32:
    the tile padded with zeros to the chunk shape (edge chunks are stored whole), zlib-compressed at ``level``, then
    its Fletcher-32 checksum little-endian (HDF5 checks it on every read; tests/test_mine.py compares with HDF5's own
    chunks)."""
    if tile.shape != tuple(chunks):
        padded = np.zeros(chunks, tile.dtype)
        padded[tuple(slice(0, s) for s in tile.shape)] = tile
        tile = padded
    body = zlib.compress(np.ascontiguousarray(tile).tobytes(), level)
    return body + fletcher32(body).to_bytes(4, "little")


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (H5_checksum_fletcher32): over big-endian 16-bit words (an odd last byte is the high
    byte of a last word), both sums folded modulo 65535 with 0xffff, not 0, for a non-zero multiple, as HDF5's
    end-around carries leave it.  In closed form: sum1 = sum of the words, sum2 = sum of the running sums."""
    b = np.frombuffer(data, np.uint8)
    if len(b) % 2:
        b = np.concatenate([b, np.zeros(1, np.uint8)])
    w = (b[0::2].astype(np.int64) << 8) | b[1::2]  # [n] words
    s1 = int(w.sum())
    s2 = int((w * np.arange(len(w), 0, -1, dtype=np.int64)).sum())  # word i is in n - i running sums
    fold = lambda x: 0 if x == 0 else (x - 1) % 65535 + 1
    return (fold(s2) << 16) | fold(s1)


def set_json(obj: h5py.HLObject, name: str, value: Any) -> None:
    obj.attrs[name] = json.dumps(value, sort_keys=True, separators=(",", ":"))


REPORTS = ("probes", "attacks", "audits")


def write_report(path: str | os.PathLike, kind: str, name: str, arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Replace the report group ``/<kind>/<name>`` (docs/store.md) in one locked transaction.

    ``arrays`` maps dataset paths inside the group to arrays or lists of strings; ``attrs`` values that are
    not plain numbers or strings are stored as JSON."""
    if kind not in REPORTS:
        raise StoreError(f"unknown report kind {kind!r}; one of {', '.join(REPORTS)}")
    if not name or "/" in name:
        raise StoreError(f"report name {name!r} must be non-empty and hold no '/'")
    with lock(path), transaction(path) as f:
        key = f"{kind}/{name}"
        if key in f:
            del f[key]
        g = f.require_group(kind).create_group(name)
        for k, v in arrays.items():
            put(g, k, v)
        for k, v in attrs.items():
            g.attrs[k] = v if isinstance(v, (int, float, str, np.integer, np.floating)) else \
                json.dumps(v, sort_keys=True)


File = h5py.File  # what `transaction` yields: the writing functions below take it


def write_run(f: File, meta: dict[str, Any], n_images: int) -> None:
    """The root attributes of a mining run (docs/store.md: model, weights, data, image count)."""
    for k, v in meta.items():
        f.attrs[k] = v
    f.attrs["n_images"] = n_images


def write_images(f: File, columns: dict[str, Any]) -> None:
    """/images: one column per image (source_id, caption, label, sha256, status, reason), written once: a store's
    image index never changes after its first mining run."""
    img = f.require_group("images")
    if "source_id" not in img:
        for name in ("source_id", "caption", "label", "sha256", "status", "reason"):
            put(img, name, columns[name])


def write_layer(f: File, model: str, layer: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> h5py.Group:
    """A new mined layer group /neurons/<model>/<layer> with its attributes (``order`` is set to the number of
    layers of the model before it) and datasets (topk/*, stats/*)."""
    group = f.require_group(f"neurons/{model}")
    g = group.create_group(layer_path(model, layer).rsplit("/", 1)[1])
    g.attrs.update({**attrs, "order": len(group) - 1})
    for name, value in arrays.items():
        put(g, name, value)
    return g


def write_thumbnails(f: File, thumbs: np.ndarray, rows: np.ndarray) -> None:
    """/images/thumbs [M, T, T, 3] uint8 and /images/thumb_row [N] (row of each image, -1: none)."""
    img = f.require_group("images")
    put(img, "thumbs", thumbs)
    put(img, "thumb_row", rows)


def thumbnail_table(f: File, n_images: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(thumb_row [N] int64, thumbs [M, T, T, 3] uint8) of a store being written (empty if it has none)."""
    img = f["images"]
    rows = img["thumb_row"][()] if "thumb_row" in img else np.full(n_images, -1, np.int64)
    thumbs = img["thumbs"][()] if "thumbs" in img else np.zeros((0, size, size, 3), np.uint8)
    return rows, thumbs


def image_column_of(f: File, name: str) -> np.ndarray | None:
    """/images/<name> of a store being written (bytes for text), or None if it has none."""
    key = f"images/{name}"
    return f[key][()] if key in f else None


def write_featurevis(path: str | os.PathLike, model: str, layer: str, config_json: str, images: np.ndarray,
                     objective: np.ndarray, done: np.ndarray) -> None:
    """Replace the layer's featurevis/ group (images [U, S, S, 3] uint8, objective [U], done [U]) in one
    transaction (the caller holds the store's `lock`)."""
    with transaction(path) as f:
        g = f[layer_path(model, layer)]
        if "featurevis" in g:
            del g["featurevis"]
        fv = g.create_group("featurevis")
        fv.attrs["config"] = config_json
        put(fv, "images", images)
        put(fv, "objective", objective)
        put(fv, "done", done)


CHECKS = ("verify",)


def write_check(path: str | os.PathLike, model: str, layer: str, kind: str, arrays: dict[str, Any],
                attrs: dict[str, Any]) -> None:
    """Replace the check group ``/neurons/<model>/<layer>/<kind>`` (e.g. `atlas verify`'s result) in one locked
    transaction; attribute values that are not plain numbers or strings are stored as JSON."""
    if kind not in CHECKS:
        raise StoreError(f"unknown check kind {kind!r}; one of {', '.join(CHECKS)}")
    with lock(path), transaction(path) as f:
        key = f"{layer_path(model, layer)}/{kind}"
        if layer_path(model, layer) not in f:
            raise StoreError(f"store {path} has no layer {model}/{layer} to record a {kind} check on")
        if key in f:
            del f[key]
        g = f.create_group(key)
        for k, v in arrays.items():
            put(g, k, v)
        for k, v in attrs.items():
            g.attrs[k] = v if isinstance(v, (int, float, str, np.integer, np.floating)) else \
                json.dumps(v, sort_keys=True)


def read_report(st: "Store", kind: str, name: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, attrs) of ``/<kind>/<name>``; text datasets come back as arrays of str."""
    key = f"{kind}/{name}"
    if key not in st.file:
        have = list(st.file[kind]) if kind in st.file else []
        raise StoreError(f"store {st.path} has no {kind[:-1]} report {name!r}"
                         + (f"; it has {', '.join(have)}" if have else ""))
    g = st.file[key]
    arrays: dict[str, np.ndarray] = {}

    def visit(n: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Dataset):
            arrays[n] = obj.asstr()[()] if _is_text(obj) else obj[()]

    g.visititems(visit)
    return arrays, _decoded_attrs(g)


def _decoded_attrs(g: h5py.Group) -> dict[str, Any]:
    """A group's attributes as Python values, the JSON ones (lists, dicts) decoded."""
    attrs = {}
    for k, v in g.attrs.items():
        v = v.item() if isinstance(v, np.generic) else v
        if isinstance(v, str) and v[:1] in "[{":
            try:
                v = json.loads(v)
            except ValueError:
                pass
        attrs[k] = v
    return attrs


def layer_path(model: str, layer: str) -> str:
    if "/" in model or "/" in layer or not model or not layer:
        raise StoreError(f"model name {model!r} and layer name {layer!r} must be non-empty and hold no '/'")
    return f"neurons/{model}/{layer}"


def check_compatible(path: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Raise if an existing store was made from another model or other data than ``meta`` says."""
    p = Path(path)
    if not p.exists():
        return
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise StoreError(f"{p} is not a readable HDF5 store ({e}); move it away or choose another path") from e
    with f:
        _check_schema(f, p)
        for key in ("weights_sha256", "data_fingerprint", "model_name"):
            if key in f.attrs and key in meta and str(f.attrs[key]) != str(meta[key]):
                raise StoreError(f"store {p} was built with {key}={f.attrs[key]!r}, not {meta[key]!r}: "
                                 "each store holds one model on one image set; write to another store path")


def _check_schema(f: h5py.File, p: Path) -> None:
    v = int(f.attrs.get("schema_version", -1))
    if v != SCHEMA_VERSION:
        raise StoreError(f"store {p} has schema version {v}, this atlas reads version {SCHEMA_VERSION}; "
                         "rebuild it with this atlas version (version 1 stores were mined from drafted JPEGs with "
                         "another crop and kept float16 activations: mine them again)")


# ------------------------------------------------------------------------------------------------
# reading


@dataclass(frozen=True)
class LayerData:
    """Read access to one layer group (arrays are loaded lazily from the open file)."""

    model: str
    name: str
    group: h5py.Group

    @property
    def units(self) -> int:
        return int(self.group.attrs["units"])

    @property
    def kind(self) -> str:
        return str(self.group.attrs["kind"])

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(int(x) for x in self.group.attrs["grid"])  # type: ignore[return-value]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.group.attrs["config"])

    def neuron_id(self, unit: int) -> str:
        return unit_id(self.model, self.name, unit)

    def __getitem__(self, key: str) -> np.ndarray:
        return self.group[key][()]

    def has(self, key: str) -> bool:
        return key in self.group

    def check(self, kind: str = "verify") -> dict[str, Any] | None:
        """The attributes of the layer's last ``kind`` check (`write_check`), JSON decoded; None if never run."""
        return _decoded_attrs(self.group[kind]) if kind in self.group else None

    def featurevis(self) -> tuple[str, np.ndarray, np.ndarray, np.ndarray] | None:
        """(config JSON, images [U, S, S, 3], objective [U], done [U]) of the layer's feature visualizations, or
        None."""
        if "featurevis" not in self.group:
            return None
        fv = self.group["featurevis"]
        return str(fv.attrs["config"]), fv["images"][()], fv["objective"][()], fv["done"][()]

    def featurevis_done(self) -> np.ndarray:
        if "featurevis/done" not in self.group:
            return np.zeros(self.units, bool)
        return self.group["featurevis/done"][()]


class Store:
    """A read-only view of a store file.  Use as a context manager or call close()."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise StoreError(f"store {self.path} does not exist; run `atlas mine` or `atlas build` first")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path} is not a readable HDF5 store ({e})") from e
        _check_schema(self.file, self.path)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def meta(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}

    def reports(self, kind: str) -> list[str]:
        return sorted(self.file[kind]) if kind in self.file else []

    def models(self) -> list[str]:
        return list(self.file["neurons"]) if "neurons" in self.file else []

    def layers(self, model: str) -> list[LayerData]:
        g = self.file[f"neurons/{model}"]
        names = sorted(g, key=lambda n: int(g[n].attrs.get("order", 0)))
        return [LayerData(model, n, g[n]) for n in names]

    def has_layer(self, model: str, layer: str) -> bool:
        return layer_path(model, layer) in self.file

    def layer(self, model: str, layer: str) -> LayerData:
        key = f"neurons/{model}/{layer}"
        if key not in self.file:
            known = [f"{m}/{ld.name}" for m in self.models() for ld in self.layers(m)]
            raise StoreError(f"store {self.path} has no layer {model}/{layer}; it has: {', '.join(known)}")
        return LayerData(model, layer, self.file[key])

    # images
    @property
    def n_images(self) -> int:
        return int(self.file["images/source_id"].shape[0]) if "images/source_id" in self.file else 0

    def image_column(self, name: str) -> np.ndarray:
        col = self.file[f"images/{name}"]
        return col.asstr()[()] if _is_text(col) else col[()]

    def thumb_rows(self) -> np.ndarray:
        """[N] int64: each image's row in /images/thumbs, -1 for none (all -1 in a store without thumbnails)."""
        return self.file["images/thumb_row"][()] if "images/thumb_row" in self.file else np.zeros(0, np.int64)

    def thumbs(self) -> h5py.Dataset:
        """/images/thumbs [M, T, T, 3] uint8, read lazily (index it)."""
        return self.file["images/thumbs"]

    def thumbnail(self, index: int) -> np.ndarray | None:
        """[T, T, 3] uint8 crop of image ``index`` as the model saw it, or None if not stored."""
        row = int(self.file["images/thumb_row"][index])
        return None if row < 0 else self.file["images/thumbs"][row]

    def bad_images(self) -> list[tuple[int, str, str]]:
        """(index, source id, reason) of every image that was skipped."""
        status = self.file["images/status"][()]
        idx = np.nonzero(status)[0]
        ids = self.file["images/source_id"].asstr()
        reasons = self.file["images/reason"].asstr()
        return [(int(i), ids[i], reasons[i]) for i in idx]


def _is_text(ds: h5py.Dataset) -> bool:
    return h5py.check_string_dtype(ds.dtype) is not None


def contents_digest(path: str | os.PathLike, skip: tuple[str, ...] = ()) -> str:
    """sha256 over every group, dataset (values, dtype, shape) and attribute, in sorted order; objects and
    attributes whose names start with a prefix in ``skip`` are left out.

    Two stores with the same digest hold the same contents, whatever HDF5's byte layout."""
    h = hashlib.sha256()

    def visit(name: str, obj: h5py.HLObject) -> None:
        h.update(name.encode() + b"\0")
        for k in sorted(obj.attrs):
            if not k.startswith(skip) or not skip:
                h.update(k.encode() + b"=" + repr(obj.attrs[k]).encode() + b"\0")
        if isinstance(obj, h5py.Dataset):
            h.update(f"{obj.dtype}{obj.shape}".encode())
            h.update(np.asarray(obj[()]).tobytes())

    with h5py.File(path, "r") as f:
        visit("/", f)
        names: list[str] = []
        f.visit(names.append)
        for n in sorted(names):
            if not skip or not n.startswith(skip):
                visit(n, f[n])
    return h.hexdigest()
