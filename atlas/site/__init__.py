"""The static site: renders stores (never models) into pages that open from the file system."""

from .render import SiteError, SiteResult, build_site, featurevis_parts, thumbnail_parts

__all__ = ["SiteError", "SiteResult", "build_site", "featurevis_parts", "thumbnail_parts"]
