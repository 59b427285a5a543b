"""Hub-driven sync's copies at this site (pins): a hub image pulled into the default store
because the hub assigned it here, never evicted (unlike the cache), and removed when the hub
asks. Also the one resumable, verified pull of a hub image into a local file (glance-download
uses it too).

A pull lands in a file first (resumed with a Range request after a dropped link or a restart)
and is verified against the hub's record before it becomes a copy: a filesystem store takes the
file by rename; a store without files (Ceph RBD) has it streamed in, hashed again on the way, and
the file is removed. Those pulls live under the state directory's `pulls/` (RBD stores keep no
partial data), so a site pinning into RBD needs local room for the largest pin in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.catalog import Catalog
from appliance.clock import SYSTEM_CLOCK, Clock, timestamp
from appliance.config import Config
from appliance.digest import ChecksumMismatch, verify
from appliance.errors import Conflict, NotFound
from appliance.hub.client import HubClient
from appliance.hub.lookup import HubRecords
from appliance.hub.transfer import Transfer
from appliance.images import ImageService
from appliance.metrics import Metrics
from appliance.model import ACTIVE, Image, Location
from appliance.stores.base import ImageStore
from appliance.stores.files import file_chunks
from appliance.stores.filesystem import FilesystemStore

log = logging.getLogger(__name__)

# Under the state directory: pulls into stores without files (RBD).
PULLS_DIR = "pulls"


class Pins:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        stores: Mapping[str, ImageStore],
        images: ImageService,
        client: HubClient,
        records: HubRecords,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._stores = stores
        self._images = images
        self._client = client
        self._records = records
        self._metrics = metrics
        self._clock = clock
        self._pulls = config.path(PULLS_DIR)
        self.pulling: dict[str, tuple[int, int]] = {}  # image id -> (bytes done, size)
        images.work.add_cleaner(self._forget_pull)  # a deleted image's pull file goes with it

    def apply_config(self, config: Config) -> None:
        self._config = config

    def _pin_store(self) -> ImageStore:
        return self._stores[self._config.stores.default]

    def _pull_path(self, store: ImageStore, image_id: str) -> Path:
        if isinstance(store, FilesystemStore):
            return store.pull_path(image_id)  # same filesystem: adopted by rename
        return self._pulls / image_id

    async def _forget_pull(self, image_id: str) -> None:
        await asyncio.to_thread(_unlink, self._pulls / image_id)

    async def recover(self) -> None:
        """Remove pulls (for RBD stores) of images deleted while the daemon was down."""
        for name in await asyncio.to_thread(_names, self._pulls):
            if not await self._catalog.has_image(name):
                await self._forget_pull(name)
                log.warning("recovery: removed the pull of %s from %s: the image is gone", name, self._pulls)

    async def fetch(self, image_id: str, dest: Path, progress: Callable[[int, int], None] | None = None) -> Image:
        """A hub image's bytes into `dest`: resumable (a partial `dest` is continued with Range),
        verified against the hub's record. Returns the record."""
        image = await self._records.lookup(image_id)
        await self._fetch(image, dest, progress)
        return image

    async def _fetch(self, image: Image, dest: Path, progress: Callable[[int, int], None] | None) -> None:
        if image.status != ACTIVE or image.size is None:
            raise Conflict("image %s is %s at the hub; only active images can be pulled" % (image.id, image.status))
        await asyncio.to_thread(dest.parent.mkdir, parents=True, exist_ok=True)
        transfer = Transfer(
            self._client,
            image,
            dest,
            attempts=self._config.hub.resume_attempts,
            retry_max=self._config.hub.retry_max_seconds,
            on_bytes=self._metrics.hub_bytes.inc,
        )
        await transfer.open()
        watcher = asyncio.create_task(_watch(transfer, progress)) if progress is not None else None
        try:
            await transfer.run()
        except ChecksumMismatch:
            await asyncio.to_thread(_unlink, dest)  # never resume from bad bytes
            raise
        finally:
            if watcher is not None:
                watcher.cancel()
            transfer.retire()
        if transfer.range_requests:
            log.info(
                "hub link: image %s: the transfer resumed %d time(s) with a Range request",
                image.id,
                transfer.range_requests,
            )

    async def pin(self, image_id: str) -> str:
        """Pull a pinned copy into the default store (never evicted, unlike the cache)."""
        image = await self._records.lookup(image_id)
        store = self._pin_store()
        if store.name in image.stores:
            return "already held in store %s" % store.name
        partial = self._pull_path(store, image.id)
        with self._images.work.track(image.id, "pull") as job:  # a delete removes the pull file
            try:
                await self._fetch(image, partial, lambda done, total: self.pulling.__setitem__(image.id, (done, total)))
            finally:
                self.pulling.pop(image.id, None)
            job.check()
            await self._commit(store, image, partial)
            if job.deleted:  # deleted while the copy was moved into place
                await store.purge(image.id)
                job.check()
            location = Location.in_store(store.name, store.location_url(image.id))
            await self._catalog.add_location(image.id, location, timestamp(self._clock.now()))
        log.info("hub link: image %s pinned in store %s (%s bytes, verified)", image.id, store.name, image.size)
        return "pulled into store %s and verified" % store.name

    async def _commit(self, store: ImageStore, image: Image, partial: Path) -> None:
        """A verified pull becomes the store's copy."""
        if isinstance(store, FilesystemStore):
            await store.adopt(image.id, partial)
            return
        assert image.size is not None
        digest = await store.write(
            image.id, file_chunks(partial), max_size=image.size, background=True, expected_size=image.size
        )
        try:
            verify(digest, image)  # the bytes read back from the file, as written into the store
        except ChecksumMismatch:
            await store.delete(image.id)
            await asyncio.to_thread(_unlink, partial)
            raise
        await asyncio.to_thread(_unlink, partial)

    async def unpin(self, image_id: str) -> str:
        try:
            image = await self._catalog.get_image(image_id)
        except NotFound:
            return "not held here"
        removed = []
        for loc in image.locations:
            store = self._stores.get(loc.store)
            if store is None:
                continue
            reason = await store.in_use(image.id)  # RBD clones (Nova's disks): the copy stays, reported
            if reason:
                raise Conflict("The copy of image %s in store %s is in use: %s" % (image.id, loc.store, reason))
            await self._catalog.remove_location(image.id, loc.store, timestamp(self._clock.now()), keep_last=False)
            await store.delete(image.id)
            removed.append(loc.store)
        log.info(
            "hub link: image %s removed from store(s) %s as the hub asked", image.id, ", ".join(removed) or "(none)"
        )
        return "removed from %s" % (", ".join(removed) or "nothing (not held)")


async def _watch(transfer: Transfer, progress: Callable[[int, int], None]) -> None:
    while True:
        progress(transfer.durable, transfer.size)
        await asyncio.sleep(0.5)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _names(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []
