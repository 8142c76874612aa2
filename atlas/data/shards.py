"""Webdataset-style tar shards as an image source, read in place (no unpacking).

``ShardSource("shards/{00000..00099}.tar")`` expands the braces (``{a..b}`` ranges keep the width of their
zero-padded ends, ``{x,y}`` lists; ``*`` and ``?`` glob), reads every shard's member headers (seeking past the
data) and groups members by key, webdataset's convention: the key is the member's path up to the first dot of its
file name, the rest its extension (``000123.jpg``, ``000123.txt``, ``000123.cls``, ``000123.json``).  One entry
per key, in shard order, then the shard's member order:

- the image is the member with an image extension (jpg, jpeg, png, webp, ppm, bmp, gif, tif, tiff); a key
  without one is listed with its first member as the "image", so that decoding records it as not an image;
- the caption is ``key.txt``, else the ``caption`` (or ``text``) field of ``key.json``; the label is ``key.cls``,
  else the ``label`` (or ``cls``) field of ``key.json``.

``source_id`` is ``<shard file name>/<key>``.  Mining reads an image's bytes at its offset in the shard
(`Member.read_bytes`): the decoding processes of `atlas.data.loader.JpegLoader` open shards themselves, so batches
and workers split the shards without a second copy.  Bad members (corrupt bytes, a truncated shard) are recorded
as bad files are: a shard that ends inside a member lists what it could, then one bad entry naming the shard.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .decode import BadImage, decode_image
from .sources import DataError, Entry, FileSource, hash_entries

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "gif", "tif", "tiff")


@dataclass(frozen=True)
class Member:
    """The bytes of one tar member: ``size`` bytes at ``offset`` of ``shard`` (picklable: decoding processes read
    it).  ``size < 0``: a member that could not be listed (``why`` says why); reading it raises OSError."""

    shard: Path
    offset: int
    size: int
    why: str = ""

    def read_bytes(self) -> bytes:
        if self.size < 0:
            raise OSError(self.why)
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"shard {self.shard} ends {self.size - len(data)} bytes inside the member")
        return data


def expand_braces(pattern: str) -> list[str]:
    """``a{00..02}b{x,y}`` -> a00bx, a00by, a01bx, ... (webdataset's brace notation, first group outermost)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise DataError(f"shard pattern {pattern!r}: range {{{body}}} runs backwards; write {{low..high}}")
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        parts = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif "," in body:
        parts = body.split(",")
    else:
        raise DataError(f"shard pattern {pattern!r}: {{{body}}} is neither a range {{00000..00099}} nor a list "
                        "{a,b}")
    return [head + p + t for p in parts for t in expand_braces(tail)]


def shard_paths(pattern: str) -> list[Path]:
    """The shard files of ``pattern`` (braces expanded, then ``*``/``?`` globbed), in the pattern's order; every
    expanded name must exist."""
    names: list[str] = []
    for p in expand_braces(os.path.expanduser(pattern)):
        names += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    missing = [n for n in names if not os.path.isfile(n)]
    if not names or len(missing) == len(names):
        raise DataError(f"no shards match --data {pattern!r} (looked for {len(names)} files, e.g. "
                        f"{(missing or [pattern])[0]}); give tar files, e.g. 'shards/{{00000..00099}}.tar'")
    if missing:
        raise DataError(f"--data {pattern!r}: {len(missing)} of {len(names)} shards do not exist (first: "
                        f"{missing[0]}); fix the pattern or the files")
    return [Path(n).resolve() for n in names]


def is_shard_pattern(data: str) -> bool:
    """Whether a --data argument names tar shards (ends in .tar, braces and globs allowed)."""
    return str(data).endswith(".tar")


def _split(name: str) -> tuple[str, str]:
    """member path -> (key, extension): the extension is everything after the first dot of the file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _text(f: tarfile.TarFile, info: tarfile.TarInfo) -> str:
    fh = f.extractfile(info)
    return fh.read().decode("utf-8", "replace").strip() if fh is not None else ""


def _list_shard(path: Path) -> tuple[list[tuple[str, Member, str, str]], str]:
    """(key, image member, caption, label) of every key of one shard in member order, and the error that stopped
    the listing ("" if none)."""
    keys: dict[str, dict[str, tarfile.TarInfo]] = {}
    error = ""
    try:
        with tarfile.open(path, "r:") as f:
            try:
                for info in f:
                    if info.isfile():
                        key, ext = _split(info.name)
                        keys.setdefault(key, {})[ext] = info
                texts = {}
                for key, members in keys.items():
                    meta = {}
                    if "json" in members:
                        try:
                            meta = json.loads(_text(f, members["json"]) or "{}")
                        except ValueError:
                            meta = {}
                        meta = meta if isinstance(meta, dict) else {}
                    caption = _text(f, members["txt"]) if "txt" in members else str(
                        meta.get("caption", meta.get("text", "")))
                    label = _text(f, members["cls"]) if "cls" in members else str(meta.get("label", meta.get("cls", "")))
                    texts[key] = (caption, label)
            except (tarfile.TarError, OSError, EOFError) as e:
                error = f"shard {path.name} is damaged after {sum(len(m) for m in keys.values())} members ({e})"
                texts = {k: ("", "") for k in keys}
    except (tarfile.TarError, OSError) as e:
        return [], f"shard {path} cannot be read as a tar file ({e})"
    out = []
    for key, members in keys.items():
        image = next((members[e] for e in IMAGE_EXTS if e in members), next(iter(members.values())))
        out.append((key, Member(path, image.offset_data, image.size), *texts[key]))
    return out, error


class ShardSource(FileSource):
    """The images of webdataset-style tar shards (module docstring); ``max_pixels`` as `FolderSource`'s."""

    def __init__(self, pattern: str, max_pixels: int | None = None):
        self.shards = shard_paths(pattern)
        self.pattern = pattern
        self.members: list[Member] = []
        self.entries = []
        self.damaged: list[str] = []  # why a shard's listing stopped early
        for path in self.shards:
            listed, error = _list_shard(path)
            for key, member, caption, label in listed:
                self.entries.append(Entry(len(self.entries), f"{path.name}/{key}", caption, label))
                self.members.append(member)
            if error:  # recorded like an unreadable file: one entry for the rest of the shard
                self.damaged.append(error)
                self.entries.append(Entry(len(self.entries), f"{path.name}/<rest of shard>"))
                self.members.append(Member(path, 0, -1, error))
        if not self.entries:
            raise DataError(f"the shards of {pattern!r} hold no members; give tar files of key.jpg (+ key.txt, "
                            "key.cls) members")
        self.max_pixels = max_pixels
        self.description = f"shards:{os.path.abspath(os.path.expanduser(pattern))}"

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"shards\0")
        hash_entries(h, self.entries)
        for m in self.members:
            h.update(f"{m.shard.name}:{m.offset}:{m.size}\0".encode())
        return h.hexdigest()

    def path(self, index: int) -> Member:
        return self.members[index]

    def _load(self, index: int, draft_size: int | None) -> tuple[Image.Image, str]:
        rel = self.entries[index].source_id
        try:
            data = self.members[index].read_bytes()
        except OSError as e:
            raise BadImage("unreadable", f"{rel}: cannot read member ({e.strerror or e})") from e
        kwargs = {"max_pixels": self.max_pixels} if self.max_pixels else {}
        image = decode_image(data, draft_size=draft_size, name=rel, **kwargs)
        return image, hashlib.sha256(data).hexdigest()
