"""Image sources (folders, the built-in synthetic set) and robust decoding."""

from .catalog import DEFAULT_DATA, open_source
from .decode import BadImage, decode_image
from .sources import DataError, Entry, FolderSource, ImageSource, Sample

__all__ = ["BadImage", "DataError", "Entry", "FolderSource", "ImageSource", "Sample", "decode_image",
           "DEFAULT_DATA", "open_source"]
