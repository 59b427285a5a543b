"""Glance's add-location API (POST /v2/images/{id}/locations, image API 2.17) and the validation
data a new location may carry.

POST /locations gives a queued image its data by URL: `add_image_location` (a service user, or a
member of the owning project) names an http(s) URL (a service user may name others, but here only
http(s) locations are read), optionally with `validation_data` {os_hash_algo, os_hash_value}. As in
Glance (do_secure_hash, its default) the answer is 202 and the rest goes on in the background:
with validation data the image is `importing` while the data is hashed, and turns active only if
the hash matches (queued again, without the location, otherwise); without it the image turns
active at once and its checksum and sha512 are computed and recorded afterwards."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

from appliance import policy
from appliance.auth import Context
from appliance.errors import ApplianceError, BadRequest, Conflict, Forbidden
from appliance.locations import HASHING_ALGORITHM, Locations, hex_bytes
from appliance.model import ACTIVE, IMPORTING, QUEUED, Image, Location
from appliance.urifilter import printable

log = logging.getLogger(__name__)

ADD_HASH_ALGOS = ("sha1", "sha256", "sha512", "md5")  # what POST /locations accepts (Glance's schema)
HASH_BATCH = 1 << 20  # bytes hashed per worker-thread hop


def _check_body(body: Any) -> tuple[str, dict[str, str]]:
    """POST /locations' body: the URL and the validation data (checked as Glance's schema and
    _validate_hashing_data check them)."""
    if not isinstance(body, dict) or set(body) - {"url", "validation_data"}:
        raise BadRequest("The body is an object of 'url' and optional 'validation_data'")
    url = body.get("url")
    if not isinstance(url, str) or not url:
        raise BadRequest("'url' must be the URL of the image's data")
    checks = body.get("validation_data") or {}
    if not isinstance(checks, dict) or set(checks) - {"os_hash_algo", "os_hash_value"}:
        raise BadRequest("validation_data is an object of os_hash_algo and os_hash_value (nothing else)")
    if ("os_hash_algo" in checks) != ("os_hash_value" in checks):
        raise BadRequest("validation_data: os_hash_algo and os_hash_value go together")
    if not checks:
        return url, {}
    algo, value = checks["os_hash_algo"], checks["os_hash_value"]
    if algo not in ADD_HASH_ALGOS:
        raise BadRequest("validation_data: os_hash_algo %r is not one of %s" % (algo, ", ".join(ADD_HASH_ALGOS)))
    digest = hex_bytes(value)
    if not isinstance(value, str) or len(value) > 128 or digest is None:
        raise BadRequest("os_hash_value (%s) is not a valid hexadecimal value" % value)
    want = hashlib.new(algo).digest_size
    if len(digest) != want:
        raise BadRequest(
            "os_hash_value: (%s) is not the correct size for (%s) (should be (%d) bytes)" % (value, algo, want)
        )
    return url, {"os_hash_algo": algo, "os_hash_value": value.lower()}


class LocationImports:
    """POST /v2/images/{id}/locations: checks in the request, hashing in the background."""

    def __init__(self, locations: Locations) -> None:
        self._locations = locations
        self._running: set[asyncio.Task[None]] = set()

    async def add(self, ctx: Context, image: Image, body: Any) -> None:
        url, checks = _check_body(body)
        if image.status != QUEUED:
            raise Conflict("It's not allowed to add locations if image status is %s." % image.status)
        policy.enforce(ctx, "add_image_location", policy.image_target(image))
        if not url.lower().startswith(("http://", "https://")):
            # Glance: without the service role only http(s); here no other store is read by URL.
            what = "" if "service" in policy.roles_of(ctx) else " by normal user"
            raise Forbidden("http store must be enabled to use location API%s." % what)
        if not self._locations.allowed_url(url):
            raise BadRequest("URI for add location does not pass filtering: %s" % printable(url))
        location, size = await self._locations.http_location(image, url, {})
        if checks:  # hashed and compared before the image turns active
            await self._locations.claim(image, location)
        else:
            await self._locations.take_data(image, location, {"size": size})
        task = asyncio.create_task(self._hash(image.id, location, size, checks))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        log.info("image %s: location %s added by %s/%s (POST)", image.id, location.store, ctx.project, ctx.user)

    async def _hash(self, image_id: str, location: Location, size: int, checks: dict[str, str]) -> None:
        algo = checks.get("os_hash_algo", HASHING_ALGORITHM)
        try:
            checksum, digest = await self._digests(location.url, algo)
        except ApplianceError as exc:
            log.warning("image %s: the data at %s could not be hashed: %s", image_id, printable(location.url), exc)
            if checks:
                await self._locations.give_back(image_id, location.store)
            return
        columns = {"checksum": checksum, "os_hash_algo": algo, "os_hash_value": digest}
        if checks and digest != checks["os_hash_value"]:
            log.warning(
                "image %s: os_hash_value: (%s) not matched with actual os_hash_value: (%s); queued again",
                image_id,
                checks["os_hash_value"],
                digest,
            )
            await self._locations.give_back(image_id, location.store)
            return
        try:
            await self._locations.record(
                image_id, IMPORTING if checks else ACTIVE, {**columns, "size": size, "status": ACTIVE}
            )
        except ApplianceError as exc:  # deleted meanwhile, or changed state
            log.info("image %s: hashes of its location not recorded: %s", image_id, exc)
            return
        log.info("image %s: location data hashed (%s), active", image_id, algo)

    async def _digests(self, url: str, algo: str) -> tuple[str, str]:
        md5, other = hashlib.md5(usedforsecurity=False), hashlib.new(algo)
        pending = bytearray()

        def update(data: bytes) -> None:
            md5.update(data)
            other.update(data)

        async with self._locations.open_url(url) as (_response, chunks):
            async for chunk in chunks:
                pending += chunk
                if len(pending) >= HASH_BATCH:
                    await asyncio.to_thread(update, bytes(pending))
                    pending.clear()
        await asyncio.to_thread(update, bytes(pending))
        return md5.hexdigest(), other.hexdigest()
