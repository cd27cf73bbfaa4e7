"""Multipart parsing of uploads, in memory only: an uploaded file must never touch the disk.

May import: starlette only.
"""

from __future__ import annotations

from starlette.formparsers import MultiPartParser


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with file parts kept in memory (its default spools any
    part over 1 MB to a temporary file on disk: an upload must never touch the disk)."""

    spool_max_size = 2**62
