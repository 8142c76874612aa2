"""Crash safety of the store file: the work folder, the writer's lock, checkpoints, atomic transactions, and the
contents digest that says two stores hold the same thing."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..errors import StoreBusy
from .schema import SCHEMA_VERSION


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
