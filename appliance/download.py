"""What a download hands to the API handler: a complete file, or a stream of bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.model import Image

# Where the bytes come from, as metrics and stats count them (the hub's label value, "upstream",
# is what dashboards already query).
STORE, CACHE, HUB = "store", "cache", "upstream"


@dataclass
class Download:
    image: Image
    source: str = STORE
    # A complete local file: served with sendfile, ranges included.
    path: Path | None = None
    # Or a stream (a cache fill being followed, or bytes relayed from the hub); it must be
    # exhausted or closed with `aclose()`.
    chunks: AsyncIterator[bytes] | None = None
    length: int | None = None
    # For a relayed range request: the hub's "bytes a-b/total" (the answer is 206).
    content_range: str | None = None
    # Called once the response is finished (a cache entry stays un-evictable until then).
    release: Callable[[], None] | None = None


def span(byte_range: slice | None, size: int) -> tuple[int, int]:
    """A request's Range (aiohttp's slice; a negative start is a suffix) as [start, stop)
    within the image; start >= stop when it is not satisfiable."""
    if byte_range is None:
        return 0, size
    start, stop = byte_range.start, byte_range.stop
    if start is not None and start < 0:  # suffix: the last -start bytes
        return max(0, size + start), size
    return start or 0, size if stop is None else min(stop, size)
