"""Hub image records in the site's catalog: the translation from Glance v2 JSON, and the
fetch-and-record of one record (HubRecords decides when to ask).

A mirrored image carries a location in the pseudo-store `central` (its data lives at the hub), so
its `stores` list `central`; copies the site keeps itself are ordinary store locations beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from appliance.catalog import Catalog
from appliance.errors import Forbidden, NotFound
from appliance.hub.client import HubClient, HubRejected
from appliance.model import (
    ACTIVE,
    DEACTIVATED,
    MEMBER_STATUSES,
    MIRRORED_MEMBERS,
    NOT_PROPERTIES,
    VISIBILITIES,
    Image,
    ImageId,
    Location,
    Member,
)

log = logging.getLogger(__name__)

# The pseudo-store of the hub's copy: the name clients see (Glance's `stores`), kept as it is.
HUB_STORE = "central"
PENDING = "pending"


def image_from_glance(doc: Mapping[str, Any], data_url: str) -> Image:
    """A hub image record as this site stores it. Raises HubRejected for a record
    that is not a Glance v2 image."""
    try:
        image_id = str(doc["id"])
        visibility = str(doc.get("visibility") or "shared")
        if visibility not in VISIBILITIES:
            visibility = "private"
        properties = {
            k: v if isinstance(v, str) else str(v)
            for k, v in doc.items()
            # os_glance_* are the hub's own bookkeeping (its import progress), not the image's.
            if k not in NOT_PROPERTIES and not k.startswith("os_glance_") and v is not None
        }
        return Image(
            id=ImageId(image_id),
            name=doc.get("name"),
            status=str(doc["status"]),
            visibility=visibility,
            protected=bool(doc.get("protected", False)),
            os_hidden=bool(doc.get("os_hidden", False)),
            owner=doc.get("owner"),
            disk_format=doc.get("disk_format"),
            container_format=doc.get("container_format"),
            min_disk=int(doc.get("min_disk") or 0),
            min_ram=int(doc.get("min_ram") or 0),
            size=doc.get("size"),
            virtual_size=doc.get("virtual_size"),
            checksum=doc.get("checksum"),
            os_hash_algo=doc.get("os_hash_algo"),
            os_hash_value=doc.get("os_hash_value"),
            created_at=str(doc["created_at"]),
            updated_at=str(doc["updated_at"]),
            properties=properties,
            tags=tuple(str(t) for t in doc.get("tags") or ()),
            members=_members(ImageId(image_id), doc.get(MIRRORED_MEMBERS) or ()),
            # A record mirrored before its data was there is marked `pending`: this site asks
            # the hub again before answering for it (not served, not in `stores`).
            locations=(
                Location.in_store(
                    HUB_STORE, data_url, "active" if doc.get("status") in ("active", "deactivated") else PENDING
                ),
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise HubRejected(
            "the hub sent an image record this site cannot read (%s: %s)" % (type(exc).__name__, exc)
        ) from None


def _members(image_id: ImageId, docs: Any) -> tuple[Member, ...]:
    """The members an appliance hub sends its sites with a record (a plain Glance sends none:
    there, its shared images are its owners' only)."""
    return tuple(member_from_glance(image_id, doc) for doc in docs)


def member_from_glance(image_id: ImageId, doc: Any) -> Member:
    """A membership as the hub wrote it (KeyError, TypeError or ValueError if it is not one)."""
    if doc["status"] not in MEMBER_STATUSES:
        raise ValueError("member status %r" % doc["status"])
    return Member(image_id, str(doc["member_id"]), doc["status"], str(doc["created_at"]), str(doc["updated_at"]))


async def fetch_image_record(hub: HubClient, catalog: Catalog, image_id: str) -> Image:
    """Look an image up at the hub and record it here (NotFound if the hub does not know it)."""
    image = await record_hub_image(hub, catalog, await hub.get_image(image_id))
    log.info("image %s (%s) recorded from the hub", image.id, image.name)
    return image


async def with_members(hub: HubClient, doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The record with its members: an appliance hub sends them to its sites; a plain Glance does
    not, so the members of its shared images are asked for (the site's hub token must see them,
    as an admin's does; otherwise the image stays its owner's only here)."""
    if doc.get("visibility") != "shared" or MIRRORED_MEMBERS in doc:
        return doc
    try:
        listing = await hub.request_json("GET", "/v2/images/%s/members" % doc.get("id"))
    except (NotFound, Forbidden, HubRejected) as exc:
        log.info("the members of hub image %s are not known here: %s", doc.get("id"), exc)
        return doc
    return {**doc, MIRRORED_MEMBERS: listing.get("members") or []}


async def record_hub_image(hub: HubClient, catalog: Catalog, doc: Mapping[str, Any]) -> Image:
    """Record (insert or refresh) the hub's answer for one image; returns the record as kept here."""
    doc = await with_members(hub, doc)
    image = image_from_glance(doc, hub.data_url(str(doc.get("id"))))
    await catalog.upsert_mirrored_images([image], HUB_STORE)
    return await catalog.get_image(image.id)


def is_hub_image(image: Image) -> bool:
    """A hub image: its record carries a location in the hub's pseudo-store."""
    return any(loc.store == HUB_STORE for loc in image.locations)


def has_hub_data(image: Image) -> bool:
    """The hub holds this image's data: it can be served through the cache or relayed."""
    return any(loc.store == HUB_STORE and loc.status == "active" for loc in image.locations)


def is_pending(image: Image) -> bool:
    """Mirrored before the hub had its data: the hub is asked again before answering for it."""
    return any(loc.store == HUB_STORE and loc.status == PENDING for loc in image.locations)


def is_servable(image: Image) -> bool:
    """A hub image whose data can be read now (active, sized, at the hub)."""
    return image.status in (ACTIVE, DEACTIVATED) and image.size is not None and has_hub_data(image)
