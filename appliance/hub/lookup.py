"""HubRecords: the record of a hub image, asked of the hub when this site has none (or has one
mirrored before the hub had its data). Image reads, the hub link and the cache's prefetcher ask
here; the cache itself keeps bytes only. Writes to hub images are made here too: at the hub, with
the client's own token, and the hub's answer recorded at once.

* Single flight: one hub request per image however many clients ask at once.
* Bounded: random ids sent to an edge do not flood the WAN link (HubLookups).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from appliance.catalog import Catalog
from appliance.config import HubConfig
from appliance.errors import ApplianceError, Conflict, HubUnreachable, NotFound, TooManyRequests
from appliance.hub.client import HubClient
from appliance.hub.records import HUB_STORE, fetch_image_record, is_pending, is_servable, record_hub_image
from appliance.model import Image, ImageId

log = logging.getLogger(__name__)

JSON_PATCH = "application/openstack-images-v2.1-json-patch"
WRITE_MEMORY = 3600.0  # s: how long a write made at the hub through this site is remembered


class HubLookups:
    """Bounds on asking the hub about ids this site does not know, so that random ids sent
    to an edge do not flood the WAN link: a miss is remembered for `miss_ttl` seconds (the
    oldest forgotten past `miss_cache_size`), and each project has a token bucket of
    `lookup_burst` lookups refilled at `lookups_per_minute`."""

    def __init__(self, hub: HubConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._hub = hub
        self._clock = clock
        self._misses: OrderedDict[str, float] = OrderedDict()  # image id -> when the hub missed it
        self._buckets: dict[str, tuple[float, float]] = {}  # project -> (tokens, when counted)
        self.refused = 0  # lookups answered 429

    def apply_config(self, hub: HubConfig) -> None:
        self._hub = hub

    def missed(self, image_id: str) -> None:
        if self._hub.miss_ttl <= 0:
            return
        self._misses[image_id] = self._clock()
        self._misses.move_to_end(image_id)
        while len(self._misses) > self._hub.miss_cache_size:
            self._misses.popitem(last=False)

    def found(self, image_id: str) -> None:
        self._misses.pop(image_id, None)

    def admit(self, image_id: str, project: str) -> None:
        """Return if the hub may be asked about `image_id` for `project`; NotFound for a
        remembered miss, TooManyRequests once the project's lookups are spent."""
        now = self._clock()
        missed_at = self._misses.get(image_id)
        if missed_at is not None:
            if now - missed_at < self._hub.miss_ttl:
                raise NotFound(
                    "No image found with ID %s (not known at the hub %.0f s ago)" % (image_id, now - missed_at)
                )
            del self._misses[image_id]
        burst, rate = float(self._hub.lookup_burst), self._hub.lookups_per_minute / 60.0
        tokens, then = self._buckets.get(project, (burst, now))
        tokens = min(burst, tokens + (now - then) * rate)
        if tokens < 1:
            self.refused += 1
            raise TooManyRequests(
                "Too many lookups of image ids unknown at this site for project %s (at most %d at once, "
                "%d a minute); try again in %.0f s"
                % (project, self._hub.lookup_burst, self._hub.lookups_per_minute, (1 - tokens) / rate + 0.5)
            )
        self._buckets[project] = (tokens - 1, now)
        if len(self._buckets) > 4096:  # forget projects whose bucket has refilled
            self._buckets = {p: (t, w) for p, (t, w) in self._buckets.items() if t + (now - w) * rate < burst}


class HubRecords:
    def __init__(
        self, hub: HubClient, catalog: Catalog, config: HubConfig, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._hub = hub
        self._catalog = catalog
        self._clock = clock
        self._lookups: dict[str, asyncio.Future[Image]] = {}  # image id -> the record fetch in flight
        # image id -> when a write to it, made at the hub through this site, was answered: a hub
        # record asked for before then would undo that write here until the next mirror round.
        self._written: dict[str, float] = {}
        self.bounds = HubLookups(config)

    def apply_config(self, config: HubConfig) -> None:
        self.bounds.apply_config(config)

    async def lookup(self, image_id: str, asker: str | None = None) -> Image:
        """The image record, fetched from the hub and recorded when this site has none (one
        hub request however many clients ask at once). `asker`, the project of a client
        request: its lookups of unknown ids are bounded, and a recent hub miss is answered
        from memory (the daemon's own lookups, for the hub's assignments, always ask)."""
        pending = self._lookups.get(image_id)
        if pending is not None:  # the record is being fetched and written: wait for it
            return await asyncio.shield(pending)
        try:
            image = await self._catalog.get_image(image_id)
        except NotFound:
            if asker is not None:
                self.bounds.admit(image_id, asker)
            return await self._fetch_record(image_id)
        return await self.refresh(image)

    async def _fetch_record(self, image_id: str) -> Image:
        """Fetch and record the hub's record, one request however many clients ask at once."""
        fut = self._lookups.get(image_id)
        if fut is None:
            fut = self._lookups[image_id] = asyncio.ensure_future(self._fetch_and_remember(image_id))
            fut.add_done_callback(lambda _: self._lookups.pop(image_id, None))
        return await asyncio.shield(fut)

    async def _fetch_and_remember(self, image_id: str) -> Image:
        asked = self.now()
        try:
            doc = await self._hub.get_image(image_id)
            if self.written_since(image_id, asked):
                image = await self._catalog.get_image(image_id)  # as the write left it (NotFound: deleted)
            else:
                image = await record_hub_image(self._hub, self._catalog, doc)
                log.info("image %s (%s) recorded from the hub", image.id, image.name)
        except NotFound:
            self.bounds.missed(image_id)
            raise
        self.bounds.found(image_id)
        return image

    def now(self) -> float:
        """The time to pass to `written_since` and `record` for a hub answer asked for now."""
        return self._clock()

    def written_since(self, image_id: str, asked: float) -> bool:
        """A write to the image was made at the hub through this site after `asked`."""
        return self._written.get(image_id, float("-inf")) >= asked

    async def record(self, images: Sequence[Image], asked: float) -> None:
        """Record the hub's records asked for at `asked` (HubRecords.now), except those a write
        made here through the hub has overtaken since: the next round brings them as they are."""
        await self._catalog.upsert_mirrored_images(
            [i for i in images if not self.written_since(i.id, asked)], HUB_STORE
        )

    def _wrote(self, image_id: str) -> None:
        now = self._clock()
        self._written[image_id] = now
        # A mirror round is far shorter than WRITE_MEMORY: older marks can no longer matter.
        self._written = {i: t for i, t in self._written.items() if now - t < WRITE_MEMORY}

    async def refresh(self, image: Image) -> Image:
        """A newer record of an image without data here, if the hub has one (an image mirrored
        while it was still being uploaded at the hub); the record as it is otherwise."""
        if not is_pending(image):
            return image
        try:
            return await self._fetch_record(image.id)
        except ApplianceError:
            return image  # not a hub image, or the hub is away: answer from what is known

    async def servable(self, image: Image) -> Image:
        """The hub's current record of a hub image that has no data to serve here yet (mirrored
        or looked up while the hub was still writing it): the image is served once the hub has
        it, and until then the client gets an error, never an empty success."""
        try:
            fresh = await self._fetch_record(image.id)
        except NotFound:
            raise NotFound("Image %s is no longer at the hub" % image.id) from None
        except HubUnreachable as exc:
            raise HubUnreachable(
                "Image %s has no data at this site yet and the hub is unreachable: %s" % (image.id, exc)
            ) from None
        if not is_servable(fresh):
            raise Conflict(
                "Image %s is not active yet at the hub (status %s); try again once its upload has finished"
                % (image.id, fresh.status)
            )
        return fresh

    # -- writes to hub images, made at the hub ------------------------------------------------

    @property
    def hub_url(self) -> str:
        return self._hub.url

    async def update(self, token: str, image_id: ImageId, patch: Any) -> Image:
        """A JSON patch made at the hub; returns the hub's record, recorded here."""
        doc = await self._forward(image_id, "PATCH", "/v2/images/%s" % image_id, token, json=patch)
        self._wrote(image_id)
        return await record_hub_image(self._hub, self._catalog, doc)

    async def act(self, token: str, image_id: ImageId, method: str, path: str) -> Image:
        """A write that the hub answers 204 (tags, deactivate, reactivate), made at the hub; then the
        hub's record of the image, recorded here."""
        await self._forward(image_id, method, path, token, expect=(204,))
        self._wrote(image_id)
        return await fetch_image_record(self._hub, self._catalog, image_id)

    async def change_members(self, token: str, image_id: ImageId, method: str, path: str, body: Any = None) -> Any:
        """A member write (add, status, remove) to a hub image, made at the hub; then the hub's
        record, which carries the members, recorded here. Returns the hub's answer (None for 204)."""
        doc = await self._forward(
            image_id, method, path, token, json=body, expect=(204,) if method == "DELETE" else (200,)
        )
        self._wrote(image_id)
        await fetch_image_record(self._hub, self._catalog, image_id)
        return doc

    async def add_location(self, token: str, image_id: ImageId, body: Any) -> Image:
        """POST /locations (the add-location API) made at the hub, which answers 202; then the hub's
        record, recorded here."""
        await self._forward(image_id, "POST", "/v2/images/%s/locations" % image_id, token, json=body, expect=(202,))
        self._wrote(image_id)
        return await fetch_image_record(self._hub, self._catalog, image_id)

    async def delete(self, token: str, image_id: ImageId) -> None:
        """The image deleted at the hub (the caller removes it here)."""
        await self._forward(image_id, "DELETE", "/v2/images/%s" % image_id, token, expect=(204,))
        self._wrote(image_id)

    async def _forward(
        self, image_id: str, method: str, path: str, token: str, *, json: Any = None, expect: tuple[int, ...] = (200,)
    ) -> Any:
        try:
            return await self._hub.forward(
                method, path, token, json=json, content_type=JSON_PATCH if method == "PATCH" else None, expect=expect
            )
        except HubUnreachable as exc:
            raise HubUnreachable(
                "Image %s belongs to the hub %s, which could not be reached, so the change was not made here; "
                "try again when the hub is back (%s)" % (image_id, self._hub.url, exc)
            ) from None
