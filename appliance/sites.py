"""SiteService (hub role): the edge sites registered with this hub and the work assigned to them.

Edges initiate everything (sites behind NAT work): they register, heartbeat, fetch their
assignments and report each result. Placement is Glance's own words on the hub: every site is a
store, `copy-image --stores dcn0` becomes a copy assignment (`os_glance_importing_to_stores` lists
dcn0 until the site reports), `stores-delete --store dcn0` drops the site's location at once and
becomes a remove assignment. A reported copy becomes the location
`{"url": "<site api_url or edge://name>/v2/images/<id>/file", "metadata": {"store": "dcn0"}}`.
"""

from __future__ import annotations

import builtins  # SiteService.list shadows list in the class body
import json
import logging
from collections.abc import Collection, Sequence
from typing import Any
from urllib.parse import urlsplit

from appliance import policy, wire
from appliance.auth import Context
from appliance.catalog import Catalog, ListEdit
from appliance.clock import SYSTEM_CLOCK, Clock, timestamp
from appliance.config import Config
from appliance.errors import BadRequest, Conflict, NotFound
from appliance.hub.records import HUB_STORE
from appliance.ids import parse_uuid
from appliance.model import COPY, FAILED_IMPORT, IMPORTING_TO, REMOVE, Assignment, ChangePage, Image, Location, Site

log = logging.getLogger(__name__)

NAME_MAX = 63
# Edges call the hub's copy "central": a site of that name would make their store lists ambiguous.
RESERVED_NAMES = frozenset({HUB_STORE})
MAX_SITE_STORES = 64
MAX_TEXT = 255
MAX_CACHE_JSON = 4096
MAX_PULLS = 64  # pulls in progress a heartbeat reports (a site runs two at a time)
MAX_MESSAGE = 4096
ACTIONS = (COPY, REMOVE)
RESULTS = ("success", "failure")
FEED_PAGE = 1000  # change feed entries per answer, at most (about 100 bytes of JSON each)


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The %s body must be a JSON object" % what)
    return body


def _size(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise BadRequest("'%s' must be a non-negative integer (bytes), got %r" % (key, value))
    return value


def _text(body: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value = body.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit:
        raise BadRequest("'%s' must be a string of at most %d characters" % (key, limit))
    return value


def check_site_name(name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise BadRequest("'name' is required: the site's name (letters, digits, '-' and '_')")
    if len(name) > NAME_MAX or not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
        raise BadRequest("Invalid site name %r: 1 to %d letters, digits, '-' and '_'" % (name, NAME_MAX))
    return name


STORE_TYPES = ("file", "rbd")  # Glance's store types an edge reports (filesystem, Ceph RBD)


def _site_stores(value: Any) -> tuple[dict[str, Any], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_SITE_STORES:
        raise BadRequest(
            '\'stores\' must be a list of at most %d objects like {"id": "local", "description": "..."}'
            % MAX_SITE_STORES
        )
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
            raise BadRequest("Each entry of 'stores' needs an 'id' string, got %r" % (item,))
        store: dict[str, Any] = {"id": _text(item, "id"), "description": _text(item, "description")}
        kind = item.get("type")
        if kind is not None:  # older edges send id and description only
            if kind not in STORE_TYPES:
                raise BadRequest(
                    "Store %r: 'type' must be one of %s, got %r" % (store["id"], ", ".join(STORE_TYPES), kind)
                )
            store["type"] = kind
        for key in ("total_bytes", "free_bytes"):  # the store's own capacity (an RBD store: its pool's)
            size = _size(item, key)
            if size is not None:
                store[key] = size
        out.append(store)
    return tuple(out)


def _api_url(body: dict[str, Any]) -> str:
    url = _text(body, "api_url", 2048).rstrip("/")
    if url:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise BadRequest(
                "'api_url' must be the site's http(s) API URL like https://dcn0.example.org:9292, got %r" % url
            )
    return url


def _cache(body: dict[str, Any]) -> dict[str, Any]:
    value = body["cache"]
    if not isinstance(value, dict):
        raise BadRequest("'cache' must be a JSON object of cache figures")
    if len(json.dumps(value)) > MAX_CACHE_JSON:
        raise BadRequest("'cache' is larger than %d bytes of JSON; send the figures only" % MAX_CACHE_JSON)
    return value


def _pulls(body: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """A heartbeat's pulls in progress: [{image_id, bytes_done, bytes_total}]."""
    value = body["pulls"]
    if not isinstance(value, list) or len(value) > MAX_PULLS:
        raise BadRequest("'pulls' must be a list of at most %d pulls in progress" % MAX_PULLS)
    pulls = []
    for item in value:
        if not isinstance(item, dict):
            raise BadRequest("each of 'pulls' must be an object with image_id, bytes_done and bytes_total")
        pulls.append(
            {
                "image_id": parse_uuid(str(item.get("image_id") or ""), "pulls[].image_id"),
                "bytes_done": _size(item, "bytes_done") or 0,
                "bytes_total": _size(item, "bytes_total"),
            }
        )
    return tuple(pulls)


class SiteService:
    def __init__(
        self, config: Config, catalog: Catalog, local_stores: Collection[str], clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._local = frozenset(local_stores)
        self._clock = clock
        # Registered site names, kept in step with the catalog: import requests check them
        # synchronously, and GET /v2/info/stores lists them on every client command.
        self._names: set[str] = set()
        # Each site's pulls in progress as its last heartbeat said (kept in memory: progress).
        self._pulls: dict[str, tuple[dict[str, Any], ...]] = {}

    @property
    def enabled(self) -> bool:
        return self._config.site.role == "hub"

    def _now(self) -> str:
        return timestamp(self._clock.now())

    def apply_config(self, config: Config) -> None:
        """Reload: the heartbeat interval (and so the online window) changes live."""
        self._config = config

    async def load(self) -> None:
        if not self.enabled:
            return
        for site in await self._catalog.list_sites():
            if site.name in self._local:
                log.warning(
                    "sites: site %s has the name of a store of this hub; the store wins, the site is ignored", site.name
                )
            else:
                self._names.add(site.name)

    def whoami(self, ctx: Context) -> dict[str, object]:
        """The caller as the rules in force see it (`edge:whoami`, at an edge as at a hub), and this
        site's name and role: what an operator's tool shows beside what the token may see."""
        site = self._config.site
        return {**policy.caller(ctx), "site": {"name": site.name, "role": site.role}}

    # -- what the rest of the hub asks --------------------------------------------------------

    def is_site(self, name: str) -> bool:
        return self.enabled and name in self._names

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._names)) if self.enabled else ()

    def online(self, site: Site) -> bool:
        """Online: heard from within two heartbeat intervals (one missed beat is tolerated)."""
        return self._clock.now() - site.last_seen <= 2 * self._config.hub.heartbeat_interval

    async def sites(self) -> list[Site]:
        """Every registered site (as stores for /v2/info/stores); none on an edge."""
        if not self.enabled:
            return []
        return [s for s in await self._catalog.list_sites() if s.name in self._names]

    async def pending(self, image_id: str) -> dict[str, str]:
        """Site → pending action for one image."""
        if not self.enabled:
            return {}
        return {a.site: a.action for a in await self._catalog.image_assignments(image_id)}

    async def assign_copies(self, image: Image, sites: Sequence[str]) -> None:
        """copy-image to sites: each pulls the image on its next sync and reports back."""
        await self._catalog.assign(
            image.id,
            sites,
            COPY,
            self._now(),
            [ListEdit(IMPORTING_TO, add=tuple(sites)), ListEdit(FAILED_IMPORT, remove=tuple(sites))],
        )
        log.info("image %s assigned to site(s) %s", image.id, ", ".join(sites))

    async def remove_copy(self, image: Image, site: str) -> None:
        """stores-delete for a site: the location goes now (the hub stops listing the copy), the
        site drops its copy on its next sync. A copy still pending is cancelled the same way."""
        if site not in image.stores and (await self.pending(image.id)).get(site) != COPY:
            raise NotFound("Image %s has no data in store %s" % (image.id, site))
        await self._catalog.assign(
            image.id,
            [site],
            REMOVE,
            self._now(),
            [ListEdit(IMPORTING_TO, remove=(site,), drop_empty=True)],
            remove_locations=True,
        )
        log.info("image %s: removal of the copy at site %s assigned", image.id, site)

    # -- the sites API ------------------------------------------------------------------------

    def _check_enabled(self) -> None:
        if not self.enabled:
            raise NotFound(
                'The sites API is served by a hub; this appliance runs with [site] role = "%s"' % self._config.site.role
            )

    async def register(self, ctx: Context, body: Any) -> Site:
        self._check_enabled()
        body = _object(body, "registration")
        name = body.get("name")
        policy.enforce(ctx, "edge:site_register", {"site": name if isinstance(name, str) else ""})
        name = check_site_name(name)
        if name in self._local or name in RESERVED_NAMES:
            raise Conflict(
                "Site name %s clashes with a store of this hub (%s); register the site under another name"
                % (name, ", ".join(sorted(self._local | RESERVED_NAMES)))
            )
        stamp = self._clock.now()
        previous = await self._catalog.get_site(name) if name in self._names else None
        site = await self._catalog.register_site(
            Site(
                name=name,
                registered_at=stamp,
                last_seen=stamp,
                free_bytes=_size(body, "free_bytes"),
                total_bytes=_size(body, "total_bytes"),
                version=_text(body, "version"),
                api_url=_api_url(body),
                stores=_site_stores(body.get("stores")),
                cache=_cache(body) if "cache" in body else {},
            ),
            keep_cache="cache" not in body,
        )
        if name not in self._names:
            self._names.add(name)
            log.info(
                "site %s registered (version %s, api %s)", name, site.version or "?", site.api_url or "not advertised"
            )
        elif previous is not None and previous.api_url != site.api_url:
            held = await self._catalog.image_ids_in_store(name)
            await self._catalog.set_location_urls(name, {i: self._location_url(site, i) for i in held})
            log.info(
                "site %s moved its API to %s; %d location(s) follow",
                name,
                site.api_url or "(not advertised)",
                len(held),
            )
        return site

    @staticmethod
    def _location_url(site: Site, image_id: str) -> str:
        return "%s/v2/images/%s/file" % (site.api_url or "edge://%s" % site.name, image_id)

    async def heartbeat(self, ctx: Context, name: str, body: Any) -> Site:
        self._check_enabled()
        policy.enforce(ctx, "edge:site_heartbeat", {"site": name})
        body = _object({} if body is None else body, "heartbeat")
        changes: dict[str, Any] = {k: _size(body, k) for k in ("free_bytes", "total_bytes") if body.get(k) is not None}
        if "cache" in body:
            changes["cache"] = _cache(body)
        pulls = _pulls(body) if "pulls" in body else None
        await self._catalog.site_heartbeat(name, self._clock.now(), changes)
        if pulls is not None:
            self._pulls[name] = pulls
        return await self._catalog.get_site(name)

    def pulls(self, name: str) -> builtins.list[dict[str, Any]]:
        """The site's pulls in progress as of its last heartbeat (none once it reported them)."""
        return list(self._pulls.get(name, ()))

    def _pulled(self, name: str, image_id: str) -> None:
        self._pulls[name] = tuple(p for p in self._pulls.get(name, ()) if p["image_id"] != image_id)

    async def list(self, ctx: Context) -> list[Site]:
        self._check_enabled()
        policy.enforce(ctx, "edge:site_list")
        return await self.sites()

    async def get(self, ctx: Context, name: str) -> Site:
        self._check_enabled()
        policy.enforce(ctx, "edge:site_get", {"site": name})
        return await self._catalog.get_site(name)

    async def delete(self, ctx: Context, name: str) -> None:
        """Forget a decommissioned site: its locations, assignments and progress entries go."""
        self._check_enabled()
        policy.enforce(ctx, "edge:site_delete")
        await self._catalog.delete_site(name, [IMPORTING_TO, FAILED_IMPORT], self._now())
        self._names.discard(name)
        self._pulls.pop(name, None)
        log.info("site %s deleted by %s/%s", name, ctx.project, ctx.user)

    async def assignments(self, ctx: Context, name: str) -> builtins.list[Assignment]:
        self._check_enabled()
        policy.enforce(ctx, "edge:site_assignments", {"site": name})
        await self._catalog.get_site(name)  # 404 tells an edge the hub forgot it: it registers again
        return await self._catalog.site_assignments(name)

    async def changes(self, ctx: Context, since: str | None, limit: str | None) -> ChangePage:
        """The hub's change feed after serial `since` (query text; default 0), at most `limit`
        entries (default and most FEED_PAGE): what edges follow to learn of changes and deletions."""
        self._check_enabled()
        policy.enforce(ctx, "edge:changes")
        try:
            after = wire.parse_int(since, "since") if since is not None else 0
            count = wire.parse_int(limit, "limit", 0, FEED_PAGE) if limit is not None else FEED_PAGE
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return await self._catalog.changes(after, count)

    async def report(self, ctx: Context, name: str, image_id: str, body: Any) -> None:
        """A site's result for one assignment; a report for work no longer pending → Conflict."""
        self._check_enabled()
        policy.enforce(ctx, "edge:site_report", {"site": name})
        image_id = parse_uuid(image_id)
        body = _object(body, "report")
        action, status = body.get("action"), body.get("status")
        if action not in ACTIONS:
            raise BadRequest("'action' must be one of %s, got %r" % (", ".join(ACTIONS), action))
        if status not in RESULTS:
            raise BadRequest("'status' must be one of %s, got %r" % (", ".join(RESULTS), status))
        message = body.get("message") or ""
        if not isinstance(message, str):
            raise BadRequest("'message' must be a string, got %r" % (message,))
        message = message[:MAX_MESSAGE]  # a long error is still a result: keep its start
        site = await self._catalog.get_site(name)
        if (await self.pending(image_id)).get(name) != action:
            raise Conflict(
                "Site %s has no pending %s assignment for image %s: it was replaced, cancelled or already "
                "reported, or the image was deleted" % (name, action, image_id)
            )
        if action == COPY:
            self._pulled(name, image_id)  # its result is in: no longer in progress
        if action == REMOVE:
            if status == "failure":
                # Kept: a site must not hold a copy the hub no longer lists; it tries again next sync.
                log.warning("site %s could not remove image %s (will retry): %s", name, image_id, message)
                return
            await self._catalog.finish_assignment(name, image_id, REMOVE, [], self._now())
            log.info("site %s removed its copy of image %s", name, image_id)
        elif status == "success":
            await self._catalog.finish_assignment(
                name,
                image_id,
                COPY,
                [ListEdit(IMPORTING_TO, remove=(name,), drop_empty=True), ListEdit(FAILED_IMPORT, remove=(name,))],
                self._now(),
                location=Location.in_store(name, self._location_url(site, image_id)),
            )
            log.info("site %s holds a verified copy of image %s", name, image_id)
        else:
            await self._catalog.finish_assignment(
                name,
                image_id,
                COPY,
                [ListEdit(IMPORTING_TO, remove=(name,), drop_empty=True), ListEdit(FAILED_IMPORT, add=(name,))],
                self._now(),
            )
            log.warning("site %s failed to copy image %s: %s", name, image_id, message or "no reason given")
