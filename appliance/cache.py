"""The image cache: copies of hub images (`[hub] url`), never the site's own. Bytes only: the
records come from HubRecords; built only when `[cache] enabled` and a hub is configured.

Layout under `[cache] dir`: `data/<id>` (committed, verified entries; with `[cache] store`, RBD
images `cache.<id>` in that store's pool instead: appliance/cachefiles.py), `partial/<id>` (fills
in progress or interrupted: kept so the next fill resumes), `invalid/<id>` (fills whose hashes did
not match, kept for inspection until the cleaner runs).

The rules, all here:
* Single flight: one fill per image however many clients ask; they all follow the fill as bytes
  land, and a client leaving does not stop it (the fill is the cache's task, not the client's).
* A fill is committed only after size, MD5 and SHA-512 match the image record.
* Size is enforced when a fill starts: crossing the high watermark evicts least-recently-used
  entries (never one being read) down to the low watermark, and `min_free_bytes` stays free on
  the filesystem. An image that still does not fit is relayed from the hub uncached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.cachefiles import Entries, EntryFiles, clean, free_bytes, move, reconcile, size_of, unlink
from appliance.catalog import Catalog
from appliance.clock import timestamp
from appliance.config import CacheConfig, Config, HubConfig
from appliance.digest import ChecksumMismatch, DigestSink, verify
from appliance.download import HUB, Download, span
from appliance.errors import ApplianceError, BadRequest, Conflict, NotFound, RangeNotSatisfiable
from appliance.hub.client import HubClient
from appliance.hub.lookup import HubRecords
from appliance.hub.records import has_hub_data
from appliance.hub.transfer import Transfer, TransferBroken, backoff
from appliance.metrics import Metrics
from appliance.model import ACTIVE, CacheEntry, Image, QueuedImage

log = logging.getLogger(__name__)

CLEAR_TARGETS = ("cache", "queue", "both")


def check_queueable(image: Image) -> None:
    """BadRequest unless the image may be queued for caching (also asked with the cache off)."""
    if image.status != ACTIVE:
        raise BadRequest("Image %s is %s; only active images can be queued for caching" % (image.id, image.status))


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    bytes_from_cache: int = 0  # served to clients from committed entries
    bytes_from_upstream: int = 0  # fetched over the WAN (fills and relays)
    evictions: int = 0
    invalid: int = 0  # fills whose hashes did not match
    uncached: int = 0  # downloads relayed because the image did not fit

    def as_dict(self) -> dict[str, float | int]:
        asked = self.hits + self.misses
        return {**self.__dict__, "hit_ratio": round(self.hits / asked, 4) if asked else 0.0}


class ImageCache:
    def __init__(
        self,
        config: CacheConfig,
        hub_config: HubConfig,
        root: Path,
        catalog: Catalog,
        hub: HubClient,
        records: HubRecords,
        *,
        metrics: Metrics | None = None,
        entries: Entries | None = None,
    ) -> None:
        """entries: where committed entries live (files under data/ by default)."""
        self.config = config
        self._hub_config = hub_config
        self.root = root
        self._committed = entries or EntryFiles(root)
        self._partial = root / "partial"
        self._invalid = root / "invalid"
        self._catalog = catalog
        self._hub = hub
        self._records = records  # the prefetcher's lookups of queued images
        self._metrics = metrics or Metrics()
        self.stats = CacheStats()
        self._entries: dict[str, CacheEntry] = {}
        self._fills: dict[str, asyncio.Future[Transfer | None]] = {}  # image id -> the fill, once begun
        self._fill_tasks: dict[str, asyncio.Task[None]] = {}
        self._last_error: dict[str, str] = {}
        self._reserved: dict[str, int] = {}
        self._leases: Tally[str] = Tally()  # readers of committed entries (never evicted)
        self._space = asyncio.Lock()
        self._wake = asyncio.Event()
        self._prefetching: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    def apply_config(self, config: Config) -> None:
        """Reload: sizes, watermarks, intervals and retries apply to the next fill and round
        (dir, store and enabled need a restart)."""
        self.config = replace(config.cache, dir=self.config.dir, store=self.config.store, enabled=self.config.enabled)
        self._hub_config = config.hub
        self._wake.set()

    # -- start-up and shutdown ----------------------------------------------------------------

    async def start(self) -> None:
        self._entries = await reconcile(self.root, self._catalog, self._committed)
        log.info(
            "cache: %d entr(y/ies), %d of %d bytes used", len(self._entries), self.used_bytes(), self.config.max_size
        )

    async def close(self) -> None:
        tasks = [*self._fill_tasks.values(), *self._background]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- looking up --------------------------------------------------------------------------

    def serves(self, image: Image) -> bool:
        """Whether this image's data can come through the cache (it lives at the hub)."""
        return has_hub_data(image)

    def entries(self) -> list[CacheEntry]:
        return sorted(self._entries.values(), key=lambda e: e.last_accessed, reverse=True)

    def data_path(self, image_id: str) -> Path | None:
        """A committed entry's file; None when entries are RBD images (read() streams them)."""
        return self._committed.data_path(image_id)

    def read(self, image_id: str) -> AsyncIterator[bytes]:
        return self._committed.read(image_id)

    def used_bytes(self) -> int:
        return sum(e.size for e in self._entries.values()) + sum(self._reserved.values())

    def fills(self) -> dict[str, tuple[int, int]]:
        """Fills in progress: image id -> (bytes on disk, size)."""
        out = {}
        for image_id, fut in self._fills.items():
            if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result() is not None:
                t = fut.result()
                assert t is not None
                out[image_id] = (t.durable, t.size)
        return out

    # -- serving ----------------------------------------------------------------------------

    async def open(self, image: Image, byte_range: slice | None = None) -> Download:
        """Serve a hub image: a committed entry, a fill being written (joined or begun),
        or, for ranges, images that do not fit and entries in a pool that does not answer (a lost
        Ceph cluster), bytes relayed from the hub."""
        entry = self._entries.get(image.id)
        down = self._committed.unavailable()
        if down and (entry is not None or byte_range is None):
            log.warning("cache: image %s relayed from the hub uncached: %s", image.id, down)
            self.stats.uncached += 1
            entry = None  # neither read nor filled until its pool answers again
        if entry is not None:
            self._leases[image.id] += 1
            self.stats.hits += 1
            self._metrics.cache_hits.inc()
            start, stop = span(byte_range, entry.size)
            self.stats.bytes_from_cache += max(0, stop - start)
            accessed = time.time()
            self._entries[image.id] = replace(entry, last_accessed=accessed, hits=entry.hits + 1)
            await self._catalog.touch_cache_entry(image.id, accessed)
            return self._committed.download(image, entry.size, byte_range, lambda: self._release(image.id))
        self.stats.misses += 1
        self._metrics.cache_misses.inc()
        if byte_range is not None:
            return await self._relay_range(image, byte_range)
        transfer = None if down else await self._join_or_begin(image)
        if transfer is None:
            return Download(image=image, source=HUB, chunks=self._relay(image), length=image.size)
        return Download(image=image, source=HUB, chunks=transfer.follow(), length=image.size)

    def _release(self, image_id: str) -> None:
        self._leases[image_id] -= 1
        if self._leases[image_id] <= 0:
            del self._leases[image_id]

    async def _join_or_begin(self, image: Image) -> Transfer | None:
        fut = self._fills.get(image.id)
        if fut is None:
            # Registered before any await: concurrent first requests all find this one.
            fut = self._fills[image.id] = asyncio.ensure_future(self._begin(image))
        return await asyncio.shield(fut)

    async def _begin(self, image: Image) -> Transfer | None:
        try:
            if not await self._reserve(image):
                self._fills.pop(image.id, None)  # the next request tries again (space may have freed)
                return None
            transfer = Transfer(
                self._hub,
                image,
                self._partial / image.id,
                attempts=self._hub_config.resume_attempts,
                retry_max=self._hub_config.retry_max_seconds,
                on_bytes=self._fetched,
            )
            await transfer.open()
        except BaseException:
            self._reserved.pop(image.id, None)
            self._fills.pop(image.id, None)
            raise
        self._fill_tasks[image.id] = asyncio.create_task(self._fill(transfer), name="cache-fill-%s" % image.id)
        log.info("cache: filling image %s (%s bytes) from the hub", image.id, image.size)
        await asyncio.shield(transfer.connected)  # HubUnreachable etc. go to every waiting client
        return transfer

    def _fetched(self, n: int) -> None:
        self.stats.bytes_from_upstream += n
        self._metrics.hub_bytes.inc(n)

    async def _fill(self, transfer: Transfer) -> None:
        image = transfer.image
        try:
            await transfer.run()
            await self._committed.commit(image, transfer.partial)
            stamp = time.time()
            entry = CacheEntry(image.id, transfer.size, stamp, stamp, 0)
            await self._catalog.put_cache_entry(entry)
            self._entries[image.id] = entry
            self._last_error.pop(image.id, None)
            transfer.complete()
            log.info("cache: image %s cached (%d bytes, verified)", image.id, transfer.size)
        except BaseException as exc:
            try:
                await self._fill_failed(transfer, exc)
            finally:
                transfer.fail(exc)  # after the bookkeeping: a failed client sees the settled state
        finally:
            self._reserved.pop(image.id, None)
            self._fills.pop(image.id, None)
            self._fill_tasks.pop(image.id, None)
            transfer.retire()

    async def _fill_failed(self, transfer: Transfer, exc: BaseException) -> None:
        image = transfer.image
        if isinstance(exc, ChecksumMismatch):
            self.stats.invalid += 1
            self._last_error[image.id] = "data from the hub failed verification: %s" % exc
            await asyncio.to_thread(move, transfer.partial, self._invalid / image.id)
            log.error(
                "cache: image %s from the hub failed verification (%s); moved to invalid/, not served", image.id, exc
            )
        elif isinstance(exc, NotFound):
            self._last_error[image.id] = str(exc)
            await asyncio.to_thread(unlink, transfer.partial)
            log.warning("cache: image %s is gone from the hub: %s", image.id, exc)
        elif isinstance(exc, Exception):
            self._last_error[image.id] = str(exc)
            log.warning(
                "cache: filling image %s failed after %d of %d bytes (kept to resume): %s",
                image.id,
                transfer.durable,
                transfer.size,
                exc,
            )
        else:
            raise exc  # cancelled: the daemon is stopping

    async def _relay(self, image: Image) -> AsyncIterator[bytes]:
        """The whole image straight from the hub, verified on the way: the final chunk is held
        back until the hashes match, so a bad relay never looks complete to the client."""
        sink = DigestSink(background=True)
        held: bytes | None = None
        try:
            async with self._hub.open_data(image.id) as resp:
                async for chunk in resp.chunks:
                    self._fetched(len(chunk))
                    await sink.feed([chunk])
                    if held is not None:
                        yield held
                    held = chunk
            digest = await sink.close()
        except BaseException:
            await sink.abort()
            raise
        try:
            verify(digest, image)
        except ChecksumMismatch as exc:
            self.stats.invalid += 1
            raise TransferBroken("image %s relayed from the hub failed verification: %s" % (image.id, exc)) from None
        if held is not None:
            yield held

    async def _relay_range(self, image: Image, byte_range: slice) -> Download:
        assert image.size is not None
        start, stop = span(byte_range, image.size)
        if start >= stop:
            raise RangeNotSatisfiable("Requested range not satisfiable: the image has %d bytes" % image.size)
        stack = contextlib.AsyncExitStack()
        resp = await stack.enter_async_context(self._hub.open_data(image.id, offset=start, end=stop))
        return Download(
            image=image,
            source=HUB,
            chunks=_Relayed(resp.chunks, stack, self._fetched),
            length=stop - start,
            content_range="bytes %d-%d/%d" % (start, stop - 1, image.size),
        )

    # -- space ------------------------------------------------------------------------------

    async def _reserve(self, image: Image) -> bool:
        size = image.size or 0
        conf = self.config
        async with self._space:
            if size > conf.max_size:
                return self._does_not_fit(image, "it is larger than the cache (max_size %d bytes)" % conf.max_size)
            high = conf.max_size * conf.high_watermark // 100
            low = conf.max_size * conf.low_watermark // 100
            if self.used_bytes() + size > high:
                await self._evict_until(lambda: self.used_bytes() + size <= low)
            if self.used_bytes() + size > conf.max_size:
                return self._does_not_fit(
                    image,
                    "entries being read leave only %d of %d bytes" % (conf.max_size - self.used_bytes(), conf.max_size),
                )
            have = await asyncio.to_thread(size_of, self._partial / image.id)
            need = size - have

            def short() -> bool:
                return free_bytes(self.root) - need < conf.min_free_bytes

            if short():
                if self._committed.kind == "files":  # entries in an RBD pool free nothing here
                    await self._evict_until(lambda: not short())
                if short():
                    return self._does_not_fit(
                        image, "the filesystem would drop below min_free_bytes (%d)" % conf.min_free_bytes
                    )
            self._reserved[image.id] = size
            return True

    def _does_not_fit(self, image: Image, why: str) -> bool:
        self.stats.uncached += 1
        log.warning(
            "cache: image %s (%s bytes) does not fit in the cache: %s; serving it from the hub uncached",
            image.id,
            image.size,
            why,
        )
        return False

    async def _evict_until(self, enough: Callable[[], bool]) -> int:
        """Evict least-recently-used entries nobody is reading until `enough()`; returns bytes freed."""
        freed = 0
        for entry in sorted(self._entries.values(), key=lambda e: e.last_accessed):
            if enough():
                break
            if self._leases[entry.image_id] > 0:
                continue
            try:
                await self._drop(entry.image_id)
            except Conflict as exc:
                log.info("cache: not evicting image %s: %s", entry.image_id, exc)
                continue
            self.stats.evictions += 1
            self._metrics.cache_evictions.inc()
            freed += entry.size
            log.info(
                "cache: evicted image %s (%d bytes, last used %s)",
                entry.image_id,
                entry.size,
                timestamp(entry.last_accessed),
            )
        return freed

    async def _drop(self, image_id: str) -> None:
        reason = await self._committed.in_use(image_id) if image_id in self._entries else ""
        if reason:  # RBD clones of the entry (a disk booted from it): it stays
            raise Conflict("Cached image %s cannot be removed: %s" % (image_id, reason))
        entry = self._entries.pop(image_id, None)
        await self._catalog.delete_cache_entries([image_id])
        if entry is not None:
            await self._committed.remove(image_id)

    # -- operator actions (Glance's cache API) ---------------------------------------------

    async def queue(self, image: Image) -> None:
        check_queueable(image)
        if image.id in self._entries or not self.serves(image):
            log.info(
                "cache: image %s not queued: %s",
                image.id,
                "already cached" if image.id in self._entries else "its data is held in this site's stores",
            )
            return
        await self._catalog.queue_for_cache(image.id, time.time())
        self._wake.set()

    async def delete(self, image_id: str) -> None:
        """Forget a cached copy (readers already streaming keep their open file)."""
        await self._drop(image_id)

    async def purge(self, image_id: str) -> None:
        """The image was deleted: stop its fill (its readers fail) and remove every file of it."""
        fill = self._fills.get(image_id)
        if fill is not None and fill.done() and not fill.cancelled() and fill.exception() is None:
            transfer = fill.result()
            if transfer is not None:
                transfer.fail(NotFound("Image %s was deleted" % image_id))
        task = self._fill_tasks.get(image_id)
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        await self._drop(image_id)
        await asyncio.to_thread(unlink, self._partial / image_id)
        await asyncio.to_thread(unlink, self._invalid / image_id)

    async def dequeue(self, image_id: str) -> None:
        await self._catalog.dequeue_from_cache([image_id])

    async def clear(self, target: str) -> int:
        count = 0
        if target in ("cache", "both"):
            for image_id in list(self._entries):
                await self._drop(image_id)
                count += 1
        if target in ("queue", "both"):
            queued = [q.image_id for q in await self._catalog.queued_for_cache()]
            await self._catalog.dequeue_from_cache(queued)
            count += len(queued)
        return count

    async def prune(self) -> tuple[int, int]:
        """Evict least-recently-used entries down to the low watermark."""
        low = self.config.max_size * self.config.low_watermark // 100
        before = len(self._entries)
        freed = await self._evict_until(lambda: self.used_bytes() <= low)
        return before - len(self._entries), freed

    async def clean(self) -> tuple[int, int]:
        """Remove everything in invalid/ and partial files untouched for stall_time."""
        filling = set(self._fills)
        return await asyncio.to_thread(clean, self._invalid, self._partial, filling, self.config.stall_time)

    async def queued(self) -> list[QueuedImage]:
        return await self._catalog.queued_for_cache()

    def last_error(self, image_id: str) -> str:
        return self._last_error.get(image_id, "")

    # -- background -------------------------------------------------------------------------

    async def run_cleaner(self) -> None:
        while True:
            await asyncio.sleep(self.config.clean_interval)
            files, size = await self.clean()
            if files:
                log.info("cache: cleaner removed %d file(s), %d bytes", files, size)

    async def run_prefetcher(self) -> None:
        while True:
            await self.prefetch_due()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.prefetch_interval)
            self._wake.clear()

    async def prefetch_due(self) -> None:
        """Start fetching every queued image that is due, at most prefetch_workers at a time."""
        now = time.time()
        for item in await self._catalog.queued_for_cache():
            if len(self._prefetching) >= self.config.prefetch_workers:
                break
            if item.next_attempt_at > now or item.image_id in self._prefetching:
                continue
            self._prefetching.add(item.image_id)
            task = asyncio.create_task(self._prefetch(item), name="cache-prefetch-%s" % item.image_id)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _prefetch(self, item: QueuedImage) -> None:
        try:
            error = await self._prefetch_one(item.image_id)
            if error:
                delay = backoff(
                    item.attempts + 1,
                    float(self._hub_config.retry_max_seconds),
                    base=float(self.config.prefetch_interval) / 4,
                )
                await self._catalog.set_queue_failure(item.image_id, error, time.time() + delay)
                log.warning(
                    "cache: prefetching image %s failed (attempt %d; retry in %.0f s): %s",
                    item.image_id,
                    item.attempts + 1,
                    delay,
                    error,
                )
        finally:
            self._prefetching.discard(item.image_id)
            self._wake.set()  # a worker is free: look at the queue again

    async def _prefetch_one(self, image_id: str) -> str:
        """Fetch one queued image; returns the error, or "" when done (or nothing to do)."""
        try:
            image = await self._records.lookup(image_id)
        except ApplianceError as exc:
            return str(exc)
        if image.id in self._entries or not self.serves(image):
            await self._catalog.dequeue_from_cache([image.id])
            return ""
        try:
            transfer = await self._join_or_begin(image)
        except ApplianceError as exc:
            return str(exc)
        if transfer is None:
            return "the image does not fit in the cache"
        task = self._fill_tasks.get(image.id)
        if task is not None:
            await asyncio.shield(task)
        return "" if image.id in self._entries else (self._last_error.get(image.id) or "the fill did not complete")


class _Relayed:
    """Chunks of an open hub response; `aclose()` always releases the connection, even
    when iteration never started (an async generator's `finally` would not run then)."""

    def __init__(
        self, chunks: AsyncIterator[bytes], stack: contextlib.AsyncExitStack, count: Callable[[int], None]
    ) -> None:
        self._chunks = chunks
        self._stack = stack
        self._count = count

    def __aiter__(self) -> _Relayed:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._chunks.__anext__()
        self._count(len(chunk))
        return chunk

    async def aclose(self) -> None:
        await self._stack.aclose()
