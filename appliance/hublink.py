"""The edge's side of the hub link. Everything is edge-initiated (sites behind NAT work):

* catalog mirror: every `mirror_interval` (or `sync_interval`, if shorter, when the hub has a
  feed), the hub's change feed after the last serial applied
  (an appliance hub: records created, updated and deleted, fetched one by one, so a round costs
  what changed, not the catalog); against a hub without a feed (plain Glance), the records
  changed since the newest seen (`updated_at=gte:`). A full listing, which also finds
  deletions, every `reconcile_interval`, at the first round, and whenever the feed cannot be
  followed (pruned past this site's serial, or a new feed);
* registration and heartbeats (`/v2/edge/sites`, appliance hubs only);
* hub-driven sync: the site's assignments are carried out (a pinned copy pulled into the default
  store, resumable and verified, or a copy removed) and reported back.

Against a plain Glance v2 hub (no `/v2/edge/sites`), registration, heartbeats and assignments are
off (logged once); mirror and pull-through work as with an appliance hub. Every hub error is
caught per round: with the hub unreachable the site keeps serving, and the next round retries.

A service, not part of the hub client layer (`appliance/hub/`): it drives ImageService (removal
of images gone at the hub, pull tracking), the stores and the cache's figures.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

from appliance import __version__
from appliance.cache import ImageCache
from appliance.catalog import Catalog
from appliance.clock import SYSTEM_CLOCK, Clock, parse_timestamp, timestamp
from appliance.config import Config
from appliance.digest import ChecksumMismatch
from appliance.errors import ApplianceError, Conflict, HubUnreachable, NotFound
from appliance.hub.client import HubClient
from appliance.hub.lookup import HubRecords
from appliance.hub.records import HUB_STORE, image_from_glance, is_hub_image, with_members
from appliance.images import ImageService
from appliance.metrics import Metrics
from appliance.model import REMOVED, ChangePage, Image, ImageChange, Location
from appliance.pins import Pins
from appliance.stores.base import ImageStore

log = logging.getLogger(__name__)

PAGE = 1000
FEED_PAGE = 1000  # change feed entries asked per request (the hub's most)
FEED_PAGES_PER_ROUND = 20  # a longer backlog continues in the next round
FEED_FETCHES = 4  # image records fetched at once while applying the feed
SETTLE_SECONDS = 2
# The same against a hub that sends no Date header (Glance under uWSGI): this site's clock stands
# in for the hub's, with room for a skew of several seconds between the two (NTP keeps it less).
LOCAL_SETTLE_SECONDS = 10
# A hub that answered 404 for an appliance-only API (a plain Glance) is asked again this seldom,
# and after the link comes back from down (the hub may have been replaced): never every round.
EXTRAS_RETRY_SECONDS = 3600
PULL_WORKERS = 2


class HubLink:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        stores: dict[str, ImageStore],
        cache: ImageCache | None,
        images: ImageService,
        client: HubClient,
        records: HubRecords,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self._clock = clock
        self._catalog = catalog
        self._stores = stores
        self._cache = cache  # None: [cache] enabled = false (reported as an empty cache)
        self._images = images
        self.client = client
        self._records = records
        self._metrics = metrics
        self._state_file = config.path("hub-mirror.json")
        self.state = "unknown"  # up | down | unknown
        self.extras: bool | None = None  # the hub offers /v2/edge/sites (None: not asked yet)
        self._extras_retry_at = 0.0  # monotonic time from which a 404'd extra is asked again
        self._registering = asyncio.Lock()  # the heartbeat and sync loops start together: one probe
        self.registered = False
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self._since: str | None = None  # updated_at of the newest record mirrored
        self.feed_api: bool | None = None  # the hub offers /v2/edge/changes (None: not asked yet)
        self._feed: str | None = None  # the hub's change feed this site follows, and its serial applied
        self._serial: int | None = None
        self._settled = False  # the hub's clock is past that second: ask for newer (gt) only
        self.pins = Pins(config, catalog, stores, images, client, records, metrics, clock)

    @property
    def site(self) -> str:
        return self._config.site.name

    def apply_config(self, config: Config) -> None:
        self._config = config
        self.pins.apply_config(config)
        self.client.set_bandwidth_limit(config.hub.bandwidth_limit)

    def status(self) -> dict[str, Any]:
        return {
            "configured": True,
            "url": self.client.url,
            "state": self.state,
            "site_api": self.extras,
            "change_feed": self.feed_api,
            "serial": self._serial,
            "registered": self.registered,
            "last_sync": self.last_sync,
            "last_error": self.last_error,
            "pulls": self._pull_figures(),
        }

    def _up(self) -> None:
        if self.state != "up":
            log.info("hub %s is reachable", self.client.url)
        self.state, self.last_error = "up", None
        self.last_sync = self._clock.now()
        self._metrics.hub_up.set(1)
        self._metrics.hub_last_sync.set(self.last_sync)

    def _down(self, exc: BaseException) -> None:
        if self.state != "down":
            log.warning(
                "hub %s is unreachable; serving local and cached images until it returns: %s", self.client.url, exc
            )
        self.state, self.last_error = "down", str(exc)
        self._metrics.hub_up.set(0)
        self._extras_retry_at = 0.0  # whatever answers when the link is back is asked afresh

    def _ask_extra(self, offered: bool | None) -> bool:
        """Whether to ask the hub for an appliance-only API: yes unless it answered 404 lately."""
        return offered is not False or self._clock.monotonic() >= self._extras_retry_at

    def _no_extra(self) -> None:
        self._extras_retry_at = self._clock.monotonic() + EXTRAS_RETRY_SECONDS

    async def _round(self, what: str, step: Any) -> None:
        try:
            await step()
        except HubUnreachable as exc:
            self._down(exc)
        except ApplianceError as exc:
            self.last_error = "%s: %s" % (what, exc)
            log.warning("hub link: %s failed: %s", what, exc)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            # An answer of an unexpected shape (the hub is outside input): report, retry next round.
            self.last_error = "%s: the hub's answer could not be read: %s: %s" % (what, type(exc).__name__, exc)
            log.warning("hub link: %s", self.last_error)

    # -- loops (Services.background_loops) -----------------------------------------------------

    async def run_mirror(self) -> None:
        await asyncio.to_thread(self._load_since)
        if self._serial is not None and not await self._catalog.image_ids_with_location(HUB_STORE):
            self._feed, self._serial = None, None  # a new or emptied catalog: the feed's past is not in it
        # A site that knows its place in the hub's feed catches up from there; others reconcile first.
        next_full = 0.0 if self._serial is None else self._clock.monotonic() + self._config.hub.reconcile_interval
        while True:
            full = self._clock.monotonic() >= next_full
            await self._round("catalog mirror", functools.partial(self.follow_once, full=full))
            if full and self.state == "up":
                next_full = self._clock.monotonic() + self._config.hub.reconcile_interval
            await self._clock.sleep(self.mirror_pause())

    def mirror_pause(self) -> float:
        """Seconds between mirror rounds. A feed round costs what changed, so an appliance hub's
        feed is also followed at the sync interval: a hub deletion (perhaps an image withdrawn
        for a vulnerability) stops being served here within one sync interval."""
        hub = self._config.hub
        return min(hub.mirror_interval, hub.sync_interval) if self.feed_api else hub.mirror_interval

    async def run_heartbeat(self) -> None:
        while True:
            await self._round("heartbeat", self.heartbeat_once)
            await self._clock.sleep(self._config.hub.heartbeat_interval)

    async def run_sync(self) -> None:
        await self.pins.recover()
        while True:
            await self._round("sync", self.sync_once)
            await self._clock.sleep(self._config.hub.sync_interval)

    # -- catalog mirror ----------------------------------------------------------------------------

    async def follow_once(self, full: bool = False) -> int:
        """One round of the catalog mirror: the hub's changes since this site's serial, or a full
        reconcile (when `full`, or when the feed cannot be followed from here). Against a hub
        without a change feed, mirror_once. Returns the number of records written or removed."""
        if not self._ask_extra(self.feed_api):
            return await self.mirror_once(full=full)
        try:
            page = await self.client.changes(self._serial or 0, FEED_PAGE)
        except NotFound:
            self._no_extra()
            if self.feed_api is not False:
                log.info(
                    "hub %s has no change feed (a plain Glance v2?): changes are mirrored by updated_at, and "
                    "deletions found by the full reconcile every %d s",
                    self.client.url,
                    self._config.hub.reconcile_interval,
                )
            self.feed_api = False
            if self._serial is not None:  # deletions from here on are in no feed: start from a full listing
                full, self._feed, self._serial = True, None, None
            return await self.mirror_once(full=full)
        self.feed_api = True
        gap = self._feed_gap(page)
        if full or gap:
            if gap and self._serial is not None:
                log.warning("hub link: %s; reconciling the whole catalog", gap)
            # Changes from here on are followed: the reconcile below sees at least these.
            latest = page.latest
            written = await self.mirror_once(full=True)
            self._feed, self._serial = page.feed, latest
            await asyncio.to_thread(self._save_since)
            return written
        done = 0
        for _ in range(FEED_PAGES_PER_ROUND):  # a long backlog continues next round
            done += await self._apply_changes(page.changes)
            if page.changes:
                self._serial = page.changes[-1].serial
                await asyncio.to_thread(self._save_since)
            if not page.more:
                break
            page = await self.client.changes(self._serial or 0, FEED_PAGE)
            if self._feed_gap(page):
                break  # the next round reconciles
        self._up()
        if done:
            log.info("hub link: applied %d change(s) from the hub's feed (serial %s)", done, self._serial)
        return done

    def _feed_gap(self, page: ChangePage) -> str | None:
        """Why this site cannot follow the feed from its serial, if it cannot."""
        if self._serial is None:
            return "no serial yet"
        if page.feed != self._feed:
            return "the hub's change feed is new (%s, was %s)" % (page.feed, self._feed)
        if self._serial < page.pruned_through:
            return "the hub pruned its change feed past this site's serial %d (to %d)" % (
                self._serial,
                page.pruned_through,
            )
        if self._serial > page.latest:
            return "this site's serial %d is ahead of the hub's feed (%d)" % (self._serial, page.latest)
        return None

    async def _apply_changes(self, changes: Sequence[ImageChange]) -> int:
        """Apply a page of the feed: the newest change of each image wins. A deleted image goes
        with its pinned and cached copies; a created or updated one is fetched (one record each,
        a few at once); one the hub no longer shows is gone too."""
        last: dict[str, str] = {}
        for change in changes:
            last.pop(change.image_id, None)
            last[change.image_id] = change.kind
        fetching = asyncio.Semaphore(FEED_FETCHES)

        async def apply(image_id: str, kind: str) -> None:
            if kind != REMOVED:
                async with fetching:
                    asked = self._records.now()
                    try:
                        doc = await with_members(self.client, await self.client.get_image(image_id))
                    except NotFound:
                        doc = None
                if doc is not None:
                    await self._records.record([image_from_glance(doc, self.client.data_url(image_id))], asked)
                    return
            await self._forget(image_id)

        try:
            async with asyncio.TaskGroup() as tg:
                for image_id, kind in last.items():
                    tg.create_task(apply(image_id, kind))
        except ExceptionGroup as group:  # the round reports the first (the hub went away, mostly)
            raise group.exceptions[0] from None
        return len(last)

    async def mirror_once(self, full: bool = False) -> int:
        """Mirror what changed since the last round (everything when `full`, which also removes
        images the hub no longer has). Returns the number of records written."""
        asked = self._records.now()  # the listing's records are no newer than this
        since = None if full or self._since is None else self._since
        # Timestamps have one-second resolution: changes later in the marker's own second may
        # still come, so it is asked again (gte) until the hub's clock has moved well past it;
        # then from the next second on (not gt: Glance keeps microseconds behind the second it
        # shows, so gt: the marker still matches the records of that second, every round).
        marker = _next_second(self._since) if self._settled and self._since else self._since
        newest = self._since
        seen: set[str] = set()
        written = 0
        hub_now: float | None = None
        for hidden in ("false", "true"):  # Glance lists hidden images only when asked
            params = {
                "limit": str(PAGE),
                "sort_key": "updated_at",
                "sort_dir": "asc",
                "visibility": "all",
                "os_hidden": hidden,
            }
            if since:
                params["updated_at"] = "gte:%s" % marker
            async for page in self._pages(params):
                if hub_now is None:
                    hub_now = self.client.server_time
                docs = [await with_members(self.client, doc) for doc in page]  # a plain Glance's
                images = [image_from_glance(doc, self.client.data_url(str(doc["id"]))) for doc in docs]
                await self._records.record(images, asked)
                written += len(images)
                for image in images:
                    seen.add(image.id)
                    if newest is None or image.updated_at > newest:
                        newest = image.updated_at
        if full:
            known = set(await self._catalog.image_ids_with_location(HUB_STORE))
            for image_id in sorted(known - seen):
                await self._forget(image_id)
        margin = SETTLE_SECONDS
        if hub_now is None:  # no Date from the hub: without this, the newest second is asked for every round
            hub_now, margin = self._clock.now(), LOCAL_SETTLE_SECONDS
        settled = newest is not None and _epoch(newest) < hub_now - margin
        if newest != self._since or settled != self._settled:
            self._since, self._settled = newest, settled
            await asyncio.to_thread(self._save_since)
        self._up()
        if written or full:
            log.info("hub link: mirrored %d image record(s)%s", written, " (full reconcile)" if full else "")
        return written

    async def _pages(self, params: dict[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
        body = await self.client.request_json("GET", "/v2/images", params=params)
        while True:
            yield list(body.get("images") or [])
            nxt = body.get("next")
            if not nxt:
                return
            body = await self.client.request_json("GET", nxt if nxt.startswith("/v2/") else "/v2/" + nxt.lstrip("/"))

    async def _forget(self, image_id: str) -> None:
        """The hub deleted this image: drop the record, the pinned copies and the cached copy.
        An image created here (and copied to the hub) stays this site's: only its hub copy goes."""
        try:
            image = await self._catalog.get_image(image_id)
            mirrored = await self._catalog.is_mirrored(image_id)
        except NotFound:
            return
        if not mirrored:
            if is_hub_image(image):
                await self._catalog.remove_location(image.id, HUB_STORE, timestamp(self._clock.now()), keep_last=False)
                log.info("hub link: image %s (%s), created here, is no longer at the hub", image_id, image.name)
            return
        await self._images.remove(image)
        log.info("hub link: image %s (%s) was deleted at the hub; removed here", image_id, image.name)

    def _load_since(self) -> None:
        try:
            state = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        if state.get("hub") == self.client.url:  # another hub: start over
            self._since, self._settled = state.get("since"), bool(state.get("settled"))
            serial = state.get("serial")
            self._feed, self._serial = state.get("feed"), serial if isinstance(serial, int) else None

    def _save_since(self) -> None:
        # Durable (fsync before the rename): a serial that went back after a power cut would
        # only repeat changes, but one saved before the changes were applied would skip them.
        state = {
            "since": self._since,
            "settled": self._settled,
            "feed": self._feed,
            "serial": self._serial,
            "hub": self.client.url,
        }
        tmp = self._state_file.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(json.dumps(state))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._state_file)

    # -- registration and heartbeat -------------------------------------------------------------

    async def _site_body(self) -> dict[str, Any]:
        # Store usage scans the store directories: in a thread, not on the event loop. An RBD
        # store's figures are its pool's (the health thread's last answer).
        usages = await asyncio.to_thread(lambda: [s.usage() for s in self._stores.values()])
        return {
            "name": self.site,
            "stores": [
                {
                    "id": s.name,
                    "description": s.description,
                    "type": s.kind,
                    "total_bytes": u.total_bytes,
                    "free_bytes": u.free_bytes,
                }
                for s, u in zip(self._stores.values(), usages, strict=True)
            ],
            "total_bytes": sum(u.total_bytes for u in usages),
            "free_bytes": sum(u.free_bytes for u in usages),
            "version": __version__,
            "api_url": self._config.hub.api_url,
            "cache": self._cache_figures(),
            # So that the hub's Sites screen shows how far each copy it assigned has come.
            "pulls": self._pull_figures(),
        }

    def _pull_figures(self) -> list[dict[str, Any]]:
        return [{"image_id": i, "bytes_done": d, "bytes_total": t} for i, (d, t) in self.pins.pulling.items()]

    def _cache_figures(self) -> dict[str, Any]:
        if self._cache is None:
            return {"used_bytes": 0, "entries": 0, "hit_ratio": 0.0}
        return {
            "used_bytes": self._cache.used_bytes(),
            "entries": len(self._cache.entries()),
            "hit_ratio": self._cache.stats.as_dict()["hit_ratio"],
        }

    async def register(self) -> bool:
        """Register this site; False if the hub has no site API (a plain Glance): logged once,
        and not asked again every round (see EXTRAS_RETRY_SECONDS)."""
        async with self._registering:
            if self.registered:  # by the other loop, while this one waited
                return True
            if not self._ask_extra(self.extras):
                return False
            try:
                await self.client.request_json("POST", "/v2/edge/sites", json=await self._site_body())
            except NotFound:
                if self.extras is not False:
                    log.warning(
                        "hub %s has no site API (a plain Glance v2?): registration, heartbeats and hub-driven sync "
                        "are off; the catalog mirror and pull-through cache work as usual",
                        self.client.url,
                    )
                self.extras = False
                self._no_extra()
                return False
            self.extras = True
            log.info("hub link: site %s registered with %s", self.site, self.client.url)
            self.registered = True
            return True

    async def heartbeat_once(self) -> None:
        if not self.registered and not await self.register():
            return
        body = await self._site_body()
        try:
            await self.client.request_json(
                "POST",
                "/v2/edge/sites/%s/heartbeat" % self.site,
                json={k: body[k] for k in ("free_bytes", "total_bytes", "cache", "pulls")},
            )
        except NotFound:
            self.registered = False  # the hub forgot us (e.g. a new hub): register again
            await self.register()
        self._up()

    # -- hub-driven sync ----------------------------------------------------------------------------

    async def sync_once(self) -> int:
        """Carry out the pending assignments; returns how many were reported."""
        if not self.registered and not await self.register():
            return 0
        doc = await self.client.request_json("GET", "/v2/edge/sites/%s/assignments" % self.site)
        self._up()
        assignments = list(doc.get("assignments") or [])
        workers = asyncio.Semaphore(PULL_WORKERS)

        async def one(a: dict[str, Any]) -> int:
            async with workers:
                return await self._carry_out(str(a["image_id"]), str(a["action"]))

        return sum(await asyncio.gather(*(one(a) for a in assignments)))

    async def _carry_out(self, image_id: str, action: str) -> int:
        try:
            message = await (self.pins.pin(image_id) if action == "copy" else self.pins.unpin(image_id))
            status = "success"
        except HubUnreachable:
            raise  # nothing to report to: the assignment stays pending, and resumes next round
        except ApplianceError as exc:
            status, message = "failure", str(exc)
            log.warning("hub link: %s of image %s failed: %s", action, image_id, exc)
        try:
            await self.client.request_json(
                "POST",
                "/v2/edge/sites/%s/assignments/%s" % (self.site, image_id),
                json={"action": action, "status": status, "message": message},
                expect=(200, 204),
            )
        except Conflict:
            return 0  # the hub dropped the assignment meanwhile
        return 1

    # -- edge-created images to the hub --------------------------------------------------------

    async def push(self, image: Image, store: ImageStore) -> None:
        """Copy an image created here (its copy in `store`, a file or an RBD image) to the hub
        under the same id (the rule: an image exists at the hub before it goes to other edges),
        then record its `central` location."""
        body: dict[str, Any] = {
            "id": image.id,
            "name": image.name,
            "disk_format": image.disk_format,
            "container_format": image.container_format,
            "visibility": image.visibility,
            "min_disk": image.min_disk,
            "min_ram": image.min_ram,
            "protected": image.protected,
            "tags": list(image.tags),
            **image.properties,
        }
        try:
            await self.client.request_json("POST", "/v2/images", json=body, expect=(201,))
        except Conflict:
            pass  # created by an earlier attempt: upload to it
        await self.client.upload(image.id, store.read(image.id), image.size or 0)
        doc = await self.client.get_image(image.id)
        if doc.get("os_hash_value") != image.os_hash_value or doc.get("checksum") != image.checksum:
            raise ChecksumMismatch("the hub recorded different hashes for image %s than this site" % image.id)
        location = Location.in_store(HUB_STORE, self.client.data_url(image.id))
        await self._catalog.add_location(image.id, location, timestamp(self._clock.now()))
        log.info("hub link: image %s copied to the hub (central) with the same id", image.id)


def _next_second(stamp: str) -> str:
    """The second after a record's timestamp, in Glance's shape (an unreadable one as it is)."""
    try:
        return timestamp(parse_timestamp(stamp).timestamp() + 1)
    except ValueError:
        return stamp


def _epoch(stamp: str) -> float:
    """A record's timestamp in seconds; an unreadable one never counts as settled."""
    try:
        return parse_timestamp(stamp).timestamp()
    except ValueError:
        return float("inf")
