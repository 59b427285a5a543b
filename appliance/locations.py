"""Image locations as Glance shows and edits them: `locations` and `direct_url` in the image body
(show_multiple_locations, show_image_direct_url; only for callers passing get_image_location),
PATCH add/remove on /locations (glance location-add / location-delete), and an image's bytes
read through an http location.

An http location is one more copy, kept in the pseudo-store `http` (`http.2`, `http.3`... for
more: an image may have several, as in Glance); it is read with web-download's downloader under the
same URI filter and limits, so an administrator cannot point an image at an address the filter
refuses. A copy in one of this site's stores can be listed again by its store URL once its data is
there. As in Glance, a queued image takes an http location as its data: its size is the URL's, its
checksums those given as `validation_data` (or none), and it turns active. POST /locations
(Glance's add-location API, appliance/locationadd.py) does the same and computes the checksums."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog
from appliance.config import Config
from appliance.download import Download, span
from appliance.errors import BadRequest, Conflict, Forbidden, NotFound, RangeNotSatisfiable
from appliance.model import ACTIVE, IMPORTING, QUEUED, Image, Location
from appliance.stores.base import ImageStore
from appliance.urifilter import FETCHABLE_SCHEMES, UriFilter, printable
from appliance.webdownload import FetchFailed, UriRefused, open_download

log = logging.getLogger(__name__)

HTTP_STORE = "http"
# Where an http location's bytes are counted (metrics' source label).
HTTP_SOURCE = "http"


def is_http(store: str) -> bool:
    """An http location's pseudo-store (`http`, `http.2`, ...: store names hold no dots)."""
    return store == HTTP_STORE or store.startswith(HTTP_STORE + ".")


HASHING_ALGORITHM = "sha512"  # Glance's [DEFAULT] hashing_algorithm, which this appliance uses


def hex_bytes(value: Any) -> bytes | None:
    try:
        return bytes.fromhex(value) if isinstance(value, str) else None
    except ValueError:
        return None


def validation_data(image: Image, value: Any) -> dict[str, Any]:
    """A PATCH location's `validation_data`, checked as Glance checks it: the values the image
    does not have yet (given ones must match those it has), which only a queued image may take;
    os_hash_algo must be sha512, the checksum an md5 and the hash the size of a sha512 (409s)."""
    # Glance's image schema first (400s): the hash is required, the checksum an md5's length.
    if not isinstance(value, dict) or set(value) - {"checksum", "os_hash_algo", "os_hash_value"}:
        raise BadRequest("validation_data is an object of checksum, os_hash_algo and os_hash_value")
    if value and not {"os_hash_algo", "os_hash_value"} <= set(value):
        raise BadRequest("validation_data: 'os_hash_algo' and 'os_hash_value' are required properties")
    for key, limits in (("checksum", (32, 32)), ("os_hash_algo", (0, 64)), ("os_hash_value", (0, 128))):
        if key in value and not (isinstance(value[key], str) and limits[0] <= len(value[key]) <= limits[1]):
            raise BadRequest("validation_data: %s must be a string of %d to %d characters" % (key, *limits))
    new = {}
    for key, given in value.items():
        current = getattr(image, key)
        if given == current:
            continue
        if current:
            raise Conflict("%s is already set with a different value" % key)
        new[key] = given
    if not new:
        return {}
    if image.status != QUEUED:
        raise Conflict("New value(s) for %s may only be provided when image status is 'queued'" % ", ".join(new))
    if "checksum" in new:
        checksum = hex_bytes(new["checksum"])
        if checksum is None:
            raise Conflict("checksum (%s) is not a valid hexadecimal value" % new["checksum"])
        if len(checksum) != 16:
            raise Conflict("checksum (%s) is not the correct size for md5 (should be 16 bytes)" % new["checksum"])
    if new.get("os_hash_algo") != HASHING_ALGORITHM:
        raise Conflict("os_hash_algo must be %s, not %s" % (HASHING_ALGORITHM, new.get("os_hash_algo")))
    digest = hex_bytes(new.get("os_hash_value"))
    if digest is None:
        raise Conflict("os_hash_value (%s) is not a valid hexadecimal value" % new.get("os_hash_value"))
    want = hashlib.new(HASHING_ALGORITHM).digest_size
    if len(digest) != want:
        raise Conflict(
            "os_hash_value (%s) is not the correct size for %s (should be %d bytes)"
            % (new["os_hash_value"], HASHING_ALGORITHM, want)
        )
    return new


class Locations:
    def __init__(
        self, config: Config, catalog: Catalog, stores: Mapping[str, ImageStore], now: Callable[[], str]
    ) -> None:
        self._now = now
        self._catalog = catalog
        self._stores = stores
        self.apply_config(config)

    def apply_config(self, config: Config) -> None:
        self._config = config
        self._filter = UriFilter(config.imports.uri_filter)

    # -- the image body -------------------------------------------------------------------

    def shown(self, ctx: Context, image: Image) -> dict[str, Any]:
        """The `locations` / `direct_url` members of the image body for this caller (Glance shows
        `locations: []` to a caller who may not read them, and no direct_url)."""
        api = self._config.api
        if not (api.show_multiple_locations or api.show_image_direct_url):
            return {}
        active = [loc for loc in image.locations if loc.status == ACTIVE]
        if not policy.allows(ctx, "get_image_location", policy.image_target(image)):
            active = []
        body: dict[str, Any] = {}
        if api.show_multiple_locations:
            body["locations"] = [{"url": loc.url, "metadata": dict(loc.metadata)} for loc in active]
        if api.show_image_direct_url and active:
            body["direct_url"] = active[0].url
        return body

    def listed(self, ctx: Context, image: Image) -> list[Location]:
        """GET /v2/images/ID/locations: Glance's `fetch_image_location` (service users), or
        `get_image_location` (the owner's readers and administrators, who see them in the body
        too: the TUI's detail view). A quarantined copy is not listed."""
        target = policy.image_target(image)
        if not policy.allows(ctx, "fetch_image_location", target):
            policy.enforce(ctx, "get_image_location", target)
        return [loc for loc in image.locations if loc.status == ACTIVE]

    # -- PATCH /locations -----------------------------------------------------------------

    @staticmethod
    def is_location_op(op: Any) -> bool:
        path = op.get("path") if isinstance(op, dict) else None
        return isinstance(path, str) and (path == "/locations" or path.startswith("/locations/"))

    async def edit(self, ctx: Context, image: Image, ops: list[dict[str, Any]]) -> None:
        for op in ops:
            name, path = op.get("op"), op["path"]
            if not self._config.api.show_multiple_locations:
                # Glance refuses any change to locations it does not show before reading the change.
                verb = name if name in ("add", "remove") else "update"
                raise Forbidden("It's not allowed to %s locations if locations are invisible." % verb)
            position = path[len("/locations/") :] if path.startswith("/locations/") else None
            if name == "add" and position is not None:
                await self._add(ctx, image, position, op.get("value"))
            elif name == "remove" and position is not None:
                await self._remove(ctx, image, position)
            else:
                raise BadRequest(
                    "Unsupported location change %r on %s: add /locations/- {url, metadata} or remove "
                    "/locations/N" % (name, path)
                )
            image = await self._catalog.get_image(image.id)

    async def _add(self, ctx: Context, image: Image, position: str, value: Any) -> None:
        if not self._config.api.show_multiple_locations:
            raise Forbidden("It's not allowed to add locations if locations are invisible.")
        policy.enforce(ctx, "set_image_location", policy.image_target(image))
        if image.status not in (ACTIVE, QUEUED):
            raise Conflict("It's not allowed to add locations if image status is %s." % image.status)
        if not isinstance(value, dict) or not isinstance(value.get("url"), str) or not value["url"]:
            raise BadRequest("A location is an object with a 'url' string and optional 'metadata' object")
        url, metadata = value["url"], value.get("metadata", {})
        if not isinstance(metadata, dict):
            raise BadRequest("Location metadata must be a JSON object")
        checks = validation_data(image, value.get("validation_data", {}))
        active = [loc for loc in image.locations if loc.status == ACTIVE]
        if position != "-" and not (position.isdigit() and int(position) <= len(active)):
            raise BadRequest(
                "Invalid position for adding a location: use /locations/- or an index up to %d" % len(active)
            )
        if any(loc.url == url for loc in active):
            raise BadRequest("The location %s already exists" % url)
        if image.status == QUEUED:
            # Glance: a queued image's first location is its data; it turns active at once.
            location, size = await self.http_location(image, url, metadata)
            await self.take_data(image, location, {"size": size, **checks})
        else:
            location = (await self._store_location(image, url)) or (await self.http_location(image, url, metadata))[0]
            await self._catalog.add_location(image.id, location, self._now())
        log.info("image %s: location %s added by %s/%s", image.id, location.store, ctx.project, ctx.user)

    async def take_data(self, image: Image, location: Location, columns: dict[str, Any]) -> None:
        """A queued image's first location, with `columns` (size, checksums) and status active;
        claimed from queued first (importing), so that of two at once one wins and the other
        answers 409, and put back to queued if the location cannot be recorded."""
        await self.claim(image, location)
        try:
            await self.record(image.id, IMPORTING, {"status": ACTIVE, **columns})
        except BaseException:
            await self.give_back(image.id, location.store)
            raise

    async def claim(self, image: Image, location: Location) -> None:
        """A queued image's first location, the image importing until `record` makes it active."""
        await self._catalog.update_image(
            image.id, expect_status=[QUEUED], columns={"status": IMPORTING}, updated_at=self._now()
        )
        try:
            await self._catalog.add_location(image.id, location, self._now())
        except BaseException:
            await self.give_back(image.id, location.store)
            raise

    async def record(self, image_id: str, from_status: str, columns: dict[str, Any]) -> None:
        await self._catalog.update_image(image_id, expect_status=[from_status], columns=columns, updated_at=self._now())

    def allowed_url(self, url: str) -> bool:
        """The URI filter's syntax rules (its address rules are applied when the URL is read)."""
        return self._filter.check_syntax(url).allowed

    async def give_back(self, image_id: str, store: str) -> None:
        """An image whose location did not become its data: queued again, without it."""
        with contextlib.suppress(NotFound):
            await self._catalog.remove_location(image_id, store, self._now(), keep_last=False)
        with contextlib.suppress(NotFound, Conflict):
            await self._catalog.update_image(
                image_id,
                expect_status=[IMPORTING],
                columns={"status": QUEUED, "size": None, "checksum": None, "os_hash_algo": None, "os_hash_value": None},
                updated_at=self._now(),
            )

    async def _store_location(self, image: Image, url: str) -> Location | None:
        """The URL of this image's copy in one of this site's stores, if it names one."""
        for name, store in self._stores.items():
            if store.location_url(image.id) == url:
                if name in image.stores:
                    raise BadRequest("Store %s already lists image %s" % (name, image.id))
                if not await asyncio.to_thread(store.holds, image.id):
                    raise BadRequest("Store %s holds no data of image %s at %s" % (name, image.id, url))
                return Location.in_store(name, url)
        return None

    async def http_location(self, image: Image, url: str, metadata: dict[str, Any]) -> tuple[Location, int]:
        """An http location of `image` at `url` and the size the URL serves (the image's, if it has one)."""
        scheme = url.split(":", 1)[0].lower()
        if scheme not in FETCHABLE_SCHEMES:
            raise BadRequest(
                "No store can serve %s: a location is an http(s) URL or a URL of this site's stores (%s)"
                % (url[:200], ", ".join(store.location_url(image.id) for store in self._stores.values()))
            )
        try:
            async with self.open_url(url) as (response, _chunks):
                length = response.content_length
        except UriRefused as exc:
            raise BadRequest("Location %s refused ([import.uri_filter]): %s" % (printable(url), exc.reason)) from None
        except FetchFailed as exc:
            raise BadRequest("Location %s cannot be read: %s" % (printable(url), exc)) from None
        if image.size is None and not length:
            # Glance's answer when the store cannot tell the size (it reads Content-Length too).
            raise BadRequest("Invalid location: %s serves no Content-Length" % printable(url))
        if image.size is not None and length != image.size:
            raise BadRequest(
                "Location %s serves %s bytes, but image %s has %d"
                % (url[:200], "an unknown number of" if length is None else length, image.id, image.size)
            )
        taken = {loc.store for loc in image.locations}
        store = next(
            name for name in (HTTP_STORE, *("%s.%d" % (HTTP_STORE, n) for n in range(2, 10_000))) if name not in taken
        )
        assert length is not None
        return Location(store=store, url=url, metadata={**metadata, "store": HTTP_STORE}), length

    async def _remove(self, ctx: Context, image: Image, position: str) -> None:
        if not self._config.api.show_multiple_locations:
            raise Forbidden("It's not allowed to remove locations if locations are invisible.")
        policy.enforce(ctx, "delete_image_location", policy.image_target(image))
        if image.status != ACTIVE:
            raise Conflict("It's not allowed to remove locations if image status is %s." % image.status)
        active = [loc for loc in image.locations if loc.status == ACTIVE]
        if not position.isdigit() or int(position) >= len(active):
            raise BadRequest("Invalid location position %r: image %s has %d" % (position, image.id, len(active)))
        if len(active) == 1:
            raise Forbidden("Cannot remove last location in the image.")
        location = active[int(position)]
        await self._catalog.remove_location(image.id, location.store, self._now())
        store = self._stores.get(location.store)
        if store is not None:  # Glance deletes a store location's data with it
            await store.delete(image.id)
        log.info("image %s: location %s removed by %s/%s", image.id, location.store, ctx.project, ctx.user)

    # -- reading through an http location ------------------------------------------------

    def http_url(self, image: Image) -> str | None:
        return next((loc.url for loc in image.locations if is_http(loc.store) and loc.status == ACTIVE), None)

    async def read_through(self, image: Image, url: str, byte_range: slice | None) -> Download:
        """The image's bytes streamed from its http location (a range is cut from the stream)."""
        assert image.size is not None
        start, stop = span(byte_range, image.size)
        if start >= stop and byte_range is not None:
            raise RangeNotSatisfiable("Requested range not satisfiable: the image has %d bytes" % image.size)
        stack = contextlib.AsyncExitStack()
        response, chunks = await stack.enter_async_context(self.open_url(url))
        if response.content_length not in (None, image.size):
            await stack.aclose()
            raise Conflict(
                "Image %s's location %s now serves %d bytes, not %d"
                % (image.id, url, response.content_length or 0, image.size)
            )
        return Download(
            image=image,
            source=HTTP_SOURCE,
            chunks=_Relay(_cut(chunks, start, stop), stack),
            length=stop - start,
            content_range="bytes %d-%d/%d" % (start, stop - 1, image.size) if byte_range is not None else None,
        )

    def open_url(self, url: str) -> contextlib.AbstractAsyncContextManager[Any]:
        imp = self._config.imports
        return open_download(
            url,
            self._filter,
            max_bytes=imp.max_download_bytes,
            idle_timeout=float(imp.download_idle_timeout),
            total_timeout=float(imp.download_timeout) or None,
        )


class _Relay:
    """The relayed bytes; closing it releases the connection even if no byte was read (an
    async generator that never started would skip its cleanup)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], stack: contextlib.AsyncExitStack) -> None:
        self._chunks = chunks
        self._stack = stack

    def __aiter__(self) -> _Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        await self._chunks.aclose()
        await self._stack.aclose()


async def _cut(chunks: AsyncIterator[bytes], start: int, stop: int) -> AsyncGenerator[bytes, None]:
    """Bytes [start, stop) of the stream."""
    offset = 0
    async for chunk in chunks:
        end = offset + len(chunk)
        if end > start and offset < stop:
            yield chunk[max(0, start - offset) : min(len(chunk), stop - offset)]
        offset = end
        if offset >= stop:
            break
