"""Scrubber: a periodic, rate-limited job that re-hashes every stored copy (a file, or an RBD
image's snapshot read back from the pool) against the SHA-512 recorded for its image. A mismatch
quarantines the copy: it is moved aside (a file to `.quarantine/`, an RBD image renamed), its
location is marked `quarantined` and it is never served again."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.cache import ImageCache
from appliance.catalog import Catalog
from appliance.clock import SYSTEM_CLOCK, Clock, timestamp
from appliance.errors import ApplianceError, NotFound
from appliance.hub.records import HUB_STORE
from appliance.stores.base import ImageStore

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ScrubReport:
    checked: int
    quarantined: list[tuple[str, str]]  # (image id, store)


def hash_file(path: Path, rate_bytes_per_s: float) -> tuple[int, str]:
    """(size, sha512 hex) of a file, reading no faster than the given rate (runs in a thread)."""
    digest = hashlib.sha512()
    size = 0
    started = time.monotonic()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            ahead = size / rate_bytes_per_s - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    return size, digest.hexdigest()


async def hash_stream(chunks: AsyncIterator[bytes], rate_bytes_per_s: float) -> tuple[int, str]:
    """(size, sha512 hex) of a store's stream (an RBD image), hashed on a worker thread, read no
    faster than the given rate."""
    digest = hashlib.sha512()
    size = 0
    started = time.monotonic()
    async for chunk in chunks:
        await asyncio.to_thread(digest.update, chunk)
        size += len(chunk)
        ahead = size / rate_bytes_per_s - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
    return size, digest.hexdigest()


class Scrubber:
    def __init__(
        self,
        catalog: Catalog,
        stores: Mapping[str, ImageStore],
        *,
        interval: float,
        rate_bytes_per_s: float,
        on_checked: Callable[[], None] = lambda: None,
        on_mismatch: Callable[[], None] = lambda: None,
        cache: ImageCache | None = None,
        repair: Callable[[str], Awaitable[object]] | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """cache: its entries are scrubbed too (a bad one is dropped: the next download fills it
        again from the hub). repair(image_id): pull a fresh copy of a quarantined image whose
        data also lives at the hub (the hub link's re-pin)."""
        self._cache = cache
        self._repair = repair
        self._catalog = catalog
        self._stores = stores
        self._interval = interval
        self._rate = rate_bytes_per_s
        self._on_checked = on_checked
        self._on_mismatch = on_mismatch
        self._clock = clock

    async def tick(self) -> ScrubReport:
        """One full pass over every servable copy."""
        checked = 0
        bad: list[tuple[str, str]] = []
        for image_id, store_name, size, expected in await self._catalog.servable_copies():
            store = self._stores.get(store_name)
            if store is None or not expected:
                continue
            try:
                hashed = await self._hash_copy(store, image_id)
            except (OSError, ApplianceError) as exc:  # e.g. an RBD cluster that does not answer: next pass
                log.error("scrubber: cannot read image %s in store %s: %s", image_id, store_name, exc)
                continue
            if hashed is None:
                continue  # deleted meanwhile
            actual_size, actual = hashed
            checked += 1
            self._on_checked()
            if actual == expected and (size is None or actual_size == size):
                continue
            try:
                moved = await asyncio.to_thread(store.quarantine, image_id)
            except ApplianceError as exc:  # not moved (cluster gone): never served all the same
                moved = "nowhere (%s)" % exc
            await self._catalog.set_location_status(image_id, store_name, "quarantined", timestamp(self._clock.now()))
            self._on_mismatch()
            bad.append((image_id, store_name))
            log.error(
                "scrubber: image %s in store %s does not match its recorded SHA-512 (%d bytes read); "
                "copy quarantined to %s and no longer served",
                image_id,
                store_name,
                actual_size,
                moved,
            )
            if self._repair is not None and HUB_STORE in (await self._catalog.get_image(image_id)).stores:
                await self._repull(image_id)
        checked += await self._scrub_cache(bad)
        if checked:
            log.info("scrubber: checked %d cop%s, %d quarantined", checked, "y" if checked == 1 else "ies", len(bad))
        return ScrubReport(checked=checked, quarantined=bad)

    async def _hash_copy(self, store: ImageStore, image_id: str) -> tuple[int, str] | None:
        """(size, sha512) of a store's copy, read at the rate limit; None if it is gone."""
        path = store.data_path(image_id)
        if path is None:  # a store without files (RBD): its committed snapshot, streamed
            if not await asyncio.to_thread(store.holds, image_id):
                return None
            return await hash_stream(store.read(image_id), self._rate)
        try:
            return await asyncio.to_thread(hash_file, path, self._rate)
        except FileNotFoundError:
            return None

    async def _repull(self, image_id: str) -> None:
        assert self._repair is not None
        try:
            await self._repair(image_id)
            log.info("scrubber: image %s pulled again from the hub after the mismatch", image_id)
        except ApplianceError as exc:
            log.warning(
                "scrubber: image %s could not be pulled again from the hub (%s); it stays quarantined here",
                image_id,
                exc,
            )

    async def _scrub_cache(self, bad: list[tuple[str, str]]) -> int:
        if self._cache is None:
            return 0
        checked = 0
        for entry in self._cache.entries():
            path = self._cache.data_path(entry.image_id)
            try:
                image = await self._catalog.get_image(entry.image_id)
                if path is None:  # entries in an RBD pool
                    actual_size, actual = await hash_stream(self._cache.read(entry.image_id), self._rate)
                else:
                    actual_size, actual = await asyncio.to_thread(hash_file, path, self._rate)
            except (NotFound, FileNotFoundError):
                continue
            except (OSError, ApplianceError) as exc:
                log.error("scrubber: cannot read cached image %s: %s", entry.image_id, exc)
                continue
            checked += 1
            self._on_checked()
            if actual == image.os_hash_value and actual_size == entry.size:
                continue
            await self._cache.delete(entry.image_id)
            self._on_mismatch()
            bad.append((entry.image_id, "cache"))
            log.error(
                "scrubber: cached image %s does not match its recorded SHA-512; dropped from the cache (the next "
                "download fills it again from the hub)",
                entry.image_id,
            )
        return checked

    def apply_settings(self, *, interval: float, rate_bytes_per_s: float) -> None:
        """Config reload: the next pause and pass use the new values."""
        self._interval = interval
        self._rate = rate_bytes_per_s

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            await self.tick()
