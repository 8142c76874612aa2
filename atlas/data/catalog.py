"""`open_source`: a data argument (a folder, ``conceptworld[:N[:SEED]]``, ``synthetic[:N]`` or "default") -> an image
source.  Apart from `atlas.data.sources` (the source classes), so that the generated sources, which build on those
classes, are imported here without a cycle."""

from __future__ import annotations

import os

from .shards import ShardSource, is_shard_pattern
from .conceptworld import ConceptWorldSource, WorldConfig
from .sources import DataError, FolderSource, ImageSource
from .synthetic import ShapesSource

DEFAULT_DATA = "conceptworld:4096:1"


def _numbers(text: str, names: str) -> list[int]:
    parts = text.split(":")[1:]
    if not all(p.isdigit() for p in parts) or len(parts) > len(names.split(":")):
        raise DataError(f"data {text!r} is not of the form {text.split(':')[0]}:{names} (whole numbers), "
                        f"e.g. '{DEFAULT_DATA}'")
    return [int(p) for p in parts]


def open_source(data: str | os.PathLike = "default", captions: str | os.PathLike | None = None) -> ImageSource:
    """A folder of images, or a generated set: ``conceptworld[:N[:SEED]]`` (Concept World, the default:
    4096 images of seed 1, which the shipped model never saw; it trained on seed 0) or ``synthetic[:N]``
    (coloured shapes); a pattern ending in ``.tar`` names webdataset-style tar shards (`atlas.data.shards`)."""
    text = str(data)
    if text == "default":
        text = DEFAULT_DATA
    if text.split(":")[0] == "conceptworld":
        nums = _numbers(text, "N:SEED")
        return ConceptWorldSource(nums[0] if nums else 4096, WorldConfig(seed=nums[1] if len(nums) > 1 else 1))
    if text.split(":")[0] == "synthetic":
        nums = _numbers(text, "N")
        return ShapesSource(nums[0] if nums else ShapesSource.DEFAULT_COUNT)
    if is_shard_pattern(text):
        if captions:
            raise DataError(f"--captions does not apply to tar shards ({text}): their captions are the key.txt "
                            "(or key.json) members; leave --captions out")
        return ShardSource(text)
    return FolderSource(text, captions)
