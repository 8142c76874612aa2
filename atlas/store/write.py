"""Every write of the schema: datasets (compressed in threads), reports, the run's attributes, image columns,
layers, thumbnails, feature visualizations and checks.  Each writer takes an open `File` from `transaction`
or takes the store path and opens its own locked transaction."""

from __future__ import annotations

import collections
import itertools
import json
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import h5py
import numpy as np

from ..errors import StoreError
from .files import lock, transaction
from .schema import CHECKS, REPORTS, layer_groups, layer_path


def put(group: h5py.Group, name: str, data: Any, **kwargs: Any) -> h5py.Dataset:
    """(Re)create a dataset: chunked and fletcher32-checksummed when not scalar, gzip when large.  A numeric array
    of 8 MB or more has its chunks compressed by ``threads`` threads (keyword; `_threads`), as `put_rows` does."""
    if name in group:
        del group[name]
    if isinstance(data, list):  # strings (nested lists: [rows, cols]): fixed-length UTF-8 (variable-length data
        shape = np.array(data, dtype=object).shape  # cannot be checksummed)
        encoded = [str(s).encode("utf-8") for s in np.array(data, dtype=object).ravel()]
        width = max([len(b) for b in encoded] + [1])
        arr = np.array(encoded, dtype=h5py.string_dtype("utf-8", width)).reshape(shape)
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
    order = len(layer_groups(group))
    g = f.require_group(layer_path(model, layer))  # a layer's group may exist already, holding its SAEs' layers
    if "kind" in g.attrs:
        raise StoreError(f"layer {model}/{layer} is in the store already; write to another store path")
    g.attrs.update({**attrs, "order": order})
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
    """Replace the layer's channel visualizations, featurevis/ (images [U, S, S, 3] uint8, objective [U], done [U]),
    in one transaction (the caller holds the store's `lock`).  Other kinds: `featurevis.write_visualizations`."""
    from .featurevis import Visualizations, write_visualizations  # featurevis.py imports this module

    write_visualizations(path, model, layer, Visualizations("channel", "", config_json, "", images, objective, done))


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


def write_replayed_maps(path: str | os.PathLike, model: str, layer: str, units: np.ndarray, maps: np.ndarray,
                        attrs: dict[str, Any]) -> None:
    """Add maps recomputed for some units' top examples (`atlas maps`) to ``topk/replayed/``: ``maps`` [U, k, mh, mw]
    float32 (chunked one unit a chunk, so units never written take no space; unwritten rows read as NaN), ``done``
    [U] bool; ``attrs`` (map_size, precision, ...) on the group.  Maps of another size replace the group whole."""
    units = np.asarray(units, np.int64)
    maps = np.asarray(maps, np.float32)
    with lock(path), transaction(path) as f:
        key = layer_path(model, layer)
        if key not in f or "kind" not in f[key].attrs:
            raise StoreError(f"store {path} has no mined layer {model}/{layer} to add maps to; mine it first")
        g = f[key]
        n_units, k = g["topk/index"].shape
        if maps.shape[:2] != (len(units), k) or maps.ndim != 4 or (len(units) and (units.min() < 0 or
                                                                                   units.max() >= n_units)):
            raise StoreError(f"maps {maps.shape} for units {units.min() if len(units) else ''}.. do not fit layer "
                             f"{layer}'s {n_units} units x top {k}")
        r = g.require_group("topk/replayed")
        if "maps" in r and r["maps"].shape[2:] != maps.shape[2:]:
            del r["maps"], r["done"]
        if "maps" not in r:
            r.create_dataset("maps", shape=(n_units, k, *maps.shape[2:]), dtype=np.float32, fillvalue=np.nan,
                             chunks=(1, k, *maps.shape[2:]), compression="gzip", compression_opts=4, fletcher32=True)
            r.create_dataset("done", data=np.zeros(n_units, bool))
        order = np.argsort(units)
        for u, m in zip(units[order], maps[order]):
            r["maps"][int(u)] = m
        done = r["done"][()]
        done[units] = True
        r["done"][...] = done
        for name, value in attrs.items():
            r.attrs[name] = value if isinstance(value, (int, float, str, np.integer, np.floating)) else \
                json.dumps(value, sort_keys=True)
