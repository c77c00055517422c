"""``tract-eval view``: a static HTML site of stored runs (overview, run pages, sample browser, comparison)."""
from .site import Site, SiteError, write_site

__all__ = ["Site", "SiteError", "write_site"]
