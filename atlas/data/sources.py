"""Image sources: a deterministic, indexed list of images with captions and labels.

Every source lists its entries up front (index, source id, caption, label) in a fixed order, and loads
image ``i`` on demand.  Iterating yields `Sample`s; a file that cannot be decoded yields a sample with
``image=None`` and the reason, so a miner can skip it and record why.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from .decode import BadImage, decode_image
from ..errors import AtlasError


class DataError(AtlasError, ValueError):
    """A data argument that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class Entry:
    index: int
    source_id: str  # path relative to the folder, or the synthetic item's id
    caption: str = ""
    label: str = ""


@dataclass
class Sample:
    index: int
    source_id: str
    caption: str
    label: str
    image: Image.Image | None  # RGB; None when the file was bad
    sha256: str = ""  # of the file's bytes ("" for generated images)
    error: str = ""  # BadImage reason code when image is None
    message: str = ""


class ImageSource:
    """Base class.  Subclasses set ``entries`` and ``description`` and implement `_load`."""

    entries: list[Entry]
    description: str

    def __len__(self) -> int:
        return len(self.entries)

    def _load(self, index: int, draft_size: int | None) -> tuple[Image.Image, str]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A digest of what the source lists (ids, captions, labels and, for files, sizes)."""
        raise NotImplementedError

    def sample(self, index: int, draft_size: int | None = None) -> Sample:
        e = self.entries[index]
        try:
            image, sha = self._load(index, draft_size)
        except BadImage as err:
            return Sample(e.index, e.source_id, e.caption, e.label, None, "", err.reason, str(err))
        return Sample(e.index, e.source_id, e.caption, e.label, image, sha)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self.sample(i)


def hash_entries(h: "hashlib._Hash", entries: list[Entry]) -> None:
    for e in entries:
        h.update(f"{e.source_id}\x1f{e.caption}\x1f{e.label}\x1e".encode())


class FileSource(ImageSource):
    """A source whose images are files' bytes: ``path(i)`` is an object with ``read_bytes()`` (a `Path`, or a tar
    member, `atlas.data.shards.Member`), which mining's decoding processes read (`atlas.data.loader.JpegLoader`).
    Subclasses set ``max_pixels`` too."""

    max_pixels: int | None = None

    def path(self, index: int):  # -> Path | Member
        raise NotImplementedError


class FolderSource(FileSource):
    """Every regular, non-hidden file under ``root`` (recursively, sorted by relative path).

    Labels: the first sub-folder of a file (the class-folder convention); files at the top have none.
    Captions: an optional CSV with a header naming columns ``path`` and ``caption`` (paths relative
    to root); by default ``root/captions.csv`` when it exists.  Files that are not images are listed
    too: they fail to decode and are recorded with their reason.
    """

    def __init__(self, root: str | os.PathLike, captions: str | os.PathLike | None = None,
                 max_pixels: int | None = None):
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise DataError(f"data folder {root} does not exist or is not a folder; "
                            "give a folder of images, or 'default' for the built-in synthetic set")
        default_csv = self.root / "captions.csv"
        csv_path = Path(captions).expanduser().resolve() if captions else (
            default_csv if default_csv.is_file() else None)
        self.captions_path = csv_path
        caps = _read_captions(csv_path) if csv_path else {}
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                p = Path(dirpath) / fn
                if fn.startswith(".") or p == csv_path or not p.is_file():
                    continue
                files.append(p.relative_to(self.root).as_posix())
        files.sort()
        # a file name that is not valid UTF-8 is kept (its bytes are escaped in its source id)
        self._paths = {_display(f): f for f in files}
        files = [_display(f) for f in files]
        if not files:
            raise DataError(f"data folder {self.root} holds no files; put images in it (sub-folders "
                            "name classes) or choose another folder")
        self.entries = [Entry(i, rel, caps.get(rel, ""), rel.split("/")[0] if "/" in rel else "")
                        for i, rel in enumerate(files)]
        self.unmatched_captions = sorted(set(caps) - set(files))
        self.max_pixels = max_pixels
        self.description = f"folder:{self.root}"

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"folder\0")
        hash_entries(h, self.entries)
        for e in self.entries:
            h.update(str((self.root / self._paths[e.source_id]).stat().st_size).encode() + b"\0")
        return h.hexdigest()

    def path(self, index: int) -> Path:
        """The file of entry ``index`` (its source id may escape bytes of an undecodable name)."""
        return self.root / self._paths[self.entries[index].source_id]

    def _load(self, index: int, draft_size: int | None) -> tuple[Image.Image, str]:
        rel = self.entries[index].source_id
        try:
            data = (self.root / self._paths[rel]).read_bytes()
        except OSError as e:
            raise BadImage("unreadable", f"{rel}: cannot read file ({e.strerror or e})") from e
        kwargs = {"max_pixels": self.max_pixels} if self.max_pixels else {}
        image = decode_image(data, draft_size=draft_size, name=rel, **kwargs)
        return image, hashlib.sha256(data).hexdigest()


def _display(name: str) -> str:
    """A file name as text: undecodable bytes (kept by Python as surrogates) become \\xNN escapes."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_table(path: str | os.PathLike, keys: tuple[str, ...], value: str, what: str) -> list[tuple[str, str]]:
    """(key, value) rows of a CSV whose header names one of ``keys`` and ``value`` (both stripped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} does not exist; give a CSV with columns {keys[0]},{value}")
    with open(p, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        key = next((k for k in keys if k in cols), None)
        if key is None or value not in cols:
            raise DataError(f"{what} file {p} needs a header with columns {' or '.join(repr(k) for k in keys)} and "
                            f"{value!r} (found: {', '.join(sorted(cols)) or 'none'})")
        return [((r[key] or "").strip(), (r[value] or "").strip()) for r in reader]


def _read_captions(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"captions file {path} does not exist; give a CSV with columns path,caption")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if not {"path", "caption"} <= cols:
            raise DataError(f"captions file {path} must have a header with columns 'path' and 'caption' "
                            f"(found: {', '.join(sorted(cols)) or 'none'})")
        out: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            rel = (row["path"] or "").strip().replace("\\", "/").removeprefix("./")
            if not rel:
                raise DataError(f"captions file {path}, line {line}: empty 'path'")
            out[rel] = row["caption"] or ""
    return out
