"""Image sources (folders, the built-in synthetic set) and robust decoding."""

from .decode import BadImage, decode_image
from .sources import DataError, Entry, FolderSource, ImageSource, Sample, open_source

__all__ = ["BadImage", "DataError", "Entry", "FolderSource", "ImageSource", "Sample", "decode_image",
           "open_source"]
