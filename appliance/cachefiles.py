"""Where the image cache keeps its bytes: fills and invalid data are files under `[cache] dir`
(partial/, invalid/: a fill resumes from its file and clients follow it as it lands); committed
entries are files under data/ or, with `[cache] store` naming an RBD store, RBD images
`cache.ID` in that store's pool (laid out as its images are: a protected snapshot `snap`).

ImageCache (appliance/cache.py) keeps the rules (single flight, verification, LRU, space);
this module only moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.catalog import Catalog
from appliance.digest import ChecksumMismatch, verify
from appliance.download import CACHE, Download, span
from appliance.errors import ApplianceError, RangeNotSatisfiable
from appliance.hub.records import HUB_STORE
from appliance.model import CacheEntry, Image
from appliance.stores.files import file_chunks, replace_durably

if TYPE_CHECKING:  # Ceph's bindings are imported only when an RBD store is configured
    from appliance.stores.rbd import RbdStore

log = logging.getLogger(__name__)

# Name of a cached image's RBD image: never an image id, so the store's own recovery (which
# removes images no record names) and the site's copies of the same image leave it alone.
RBD_PREFIX = "cache."


class EntryFiles:
    """Committed entries as files under `data/`."""

    kind = "files"

    def __init__(self, root: Path) -> None:
        self._data = root / "data"

    def where(self) -> str:
        return str(self._data)

    def names(self) -> set[str]:
        """Blocking."""
        return names(self._data)

    def data_path(self, image_id: str) -> Path | None:
        return self._data / image_id

    def read(self, image_id: str) -> AsyncIterator[bytes]:
        return file_chunks(self._data / image_id)

    async def commit(self, image: Image, partial: Path) -> None:
        await asyncio.to_thread(replace_durably, partial, self._data / image.id)

    def unavailable(self) -> str:
        return ""  # a local directory: its failures are each operation's

    async def in_use(self, image_id: str) -> str:
        return ""

    async def remove(self, image_id: str) -> None:
        await asyncio.to_thread(unlink, self._data / image_id)

    def download(self, image: Image, size: int, byte_range: slice | None, release: Callable[[], None]) -> Download:
        return Download(image=image, source=CACHE, path=self._data / image.id, release=release)


class EntryPool:
    """Committed entries as RBD images `cache.ID` of an RBD store: written from the verified fill
    file (hashed again on the way), read back from their snapshot."""

    kind = "rbd"

    def __init__(self, store: RbdStore) -> None:
        self.store = store

    def where(self) -> str:
        return "store %s" % self.store.name

    def names(self) -> set[str]:
        """Blocking."""
        return {n[len(RBD_PREFIX) :] for n in self.store.names() if n.startswith(RBD_PREFIX)}

    def data_path(self, image_id: str) -> Path | None:
        return None

    def read(self, image_id: str) -> AsyncIterator[bytes]:
        return self.store.read(RBD_PREFIX + image_id)

    async def commit(self, image: Image, partial: Path) -> None:
        assert image.size is not None
        name = RBD_PREFIX + image.id
        digest = await self.store.write(
            name, file_chunks(partial), max_size=image.size, background=True, expected_size=image.size
        )
        try:
            verify(digest, image)
        except ChecksumMismatch:
            await self.store.delete(name)
            raise
        await asyncio.to_thread(unlink, partial)  # readers following the fill keep their open file

    def unavailable(self) -> str:
        """Why entries can be neither read nor written now ("" if they can): the store's
        health thread's last word on its cluster (never waits for it)."""
        return self.store.read_only_reason()

    async def in_use(self, image_id: str) -> str:
        """Why the entry cannot be removed ("" if it can): clones of its snapshot."""
        return await self.store.in_use(RBD_PREFIX + image_id)

    async def remove(self, image_id: str) -> None:
        try:
            await self.store.delete(RBD_PREFIX + image_id)
        except ApplianceError as exc:  # forgotten all the same: the next start's reconcile removes it
            log.warning("cache: RBD image %s%s not removed yet: %s", RBD_PREFIX, image_id, exc)

    def download(self, image: Image, size: int, byte_range: slice | None, release: Callable[[], None]) -> Download:
        start, stop = span(byte_range, size)
        if start >= stop and byte_range is not None:
            release()
            raise RangeNotSatisfiable("Requested range not satisfiable: the image has %d bytes" % size)
        return Download(
            image=image,
            source=CACHE,
            chunks=self.store.read(RBD_PREFIX + image.id, start, stop),
            length=stop - start,
            content_range="bytes %d-%d/%d" % (start, stop - 1, size) if byte_range is not None else None,
            release=release,
        )


Entries = EntryFiles | EntryPool


async def reconcile(root: Path, catalog: Catalog, entries: Entries | None = None) -> dict[str, CacheEntry]:
    """Create the layout under `root` and reconcile the committed entries (`entries`, the files
    under data/ by default) with the catalog: data it does not know is removed (never looped
    over), entries without data are forgotten. Also run with the cache off, so files of images
    deleted since it was on do not stay. Returns the entries kept."""
    committed = entries or EntryFiles(root)
    data, partial, invalid = root / "data", root / "partial", root / "invalid"
    for d in (data, partial, invalid):
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
    known = {e.image_id: e for e in await catalog.cache_entries()}
    known_images = set(await catalog.image_ids_with_location(HUB_STORE))
    try:
        held = await asyncio.to_thread(committed.names)
    except ApplianceError as exc:  # an RBD store whose cluster does not answer: nothing is forgotten
        log.warning("cache: cannot list the entries in %s (%s); reconciled at the next start", committed.where(), exc)
        return {i: e for i, e in known.items() if i in known_images}
    gone = [i for i in known if i not in held or i not in known_images]
    if gone:
        await catalog.delete_cache_entries(gone)
        log.warning("cache: forgot %d entr(y/ies) whose data or image is gone", len(gone))
    kept = {i: e for i, e in known.items() if i not in gone}
    for name in sorted(held - set(kept)):
        await committed.remove(name)
        log.warning("cache: removed %s from %s: no cache entry records it", name, committed.where())
    for directory in (partial, invalid):  # of images gone while the daemon was down
        for name in sorted(await asyncio.to_thread(names, directory) - known_images):
            await asyncio.to_thread(unlink, directory / name)
    return kept


# -- file helpers (blocking: called through asyncio.to_thread) ---------------------------------


def names(directory: Path) -> set[str]:
    try:
        with os.scandir(directory) as it:
            return {e.name for e in it if e.is_file(follow_symlinks=False)}
    except FileNotFoundError:
        return set()


def unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def move(src: Path, dest: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.replace(src, dest)


def clean(invalid: Path, partial: Path, filling: set[str], stall_time: float) -> tuple[int, int]:
    """Remove everything in invalid/ and partial files untouched for stall_time (not those being
    filled); returns (files, bytes) removed."""
    files = size = 0
    cutoff = time.time() - stall_time
    for directory, keep in (
        (invalid, lambda e: False),
        (partial, lambda e: e.name in filling or e.stat().st_mtime > cutoff),
    ):
        try:
            found = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for e in found:
            try:
                if not e.is_file(follow_symlinks=False) or keep(e):
                    continue
                n = e.stat().st_size
                os.unlink(e.path)
            except FileNotFoundError:
                continue
            files += 1
            size += n
    return files, size
