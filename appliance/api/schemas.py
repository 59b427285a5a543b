"""Wire shapes: domain records → Glance v2 JSON. The TUI may import this module."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from appliance.catalog import IMAGE_ROW_COLUMNS
from appliance.clock import timestamp
from appliance.model import MIRRORED_MEMBERS, Assignment, ChangePage, Image, Location, Member, Site, Task
from appliance.stores.base import StoreUsage

IMAGE_MEDIA = "application/json"
PATCH_MEDIA_TYPES = ("application/openstack-images-v2.1-json-patch", "application/openstack-images-v2.0-json-patch")


def image_to_json(image: Image, members: bool = False) -> dict[str, Any]:
    """Glance's image shape; with `members` (for edge sites, which mirror them), also the image's members."""
    body: dict[str, Any] = {
        "id": image.id,
        "name": image.name,
        "status": image.status,
        "visibility": image.visibility,
        "protected": image.protected,
        "os_hidden": image.os_hidden,
        "checksum": image.checksum,
        "os_hash_algo": image.os_hash_algo,
        "os_hash_value": image.os_hash_value,
        "owner": image.owner,
        "size": image.size,
        "virtual_size": image.virtual_size,
        "disk_format": image.disk_format,
        "container_format": image.container_format,
        "min_disk": image.min_disk,
        "min_ram": image.min_ram,
        "created_at": image.created_at,
        "updated_at": image.updated_at,
        "tags": list(image.tags),
        "self": "/v2/images/%s" % image.id,
        "file": "/v2/images/%s/file" % image.id,
        "schema": "/v2/schemas/image",
    }
    # Custom properties sit beside the base attributes, as in Glance; they never shadow them.
    for key, value in image.properties.items():
        body.setdefault(key, value)
    if image.stores:
        body["stores"] = ",".join(image.stores)
    if members:
        body[MIRRORED_MEMBERS] = [
            {"member_id": m.member_id, "status": m.status, "created_at": m.created_at, "updated_at": m.updated_at}
            for m in image.members
        ]
    return body


def images_page_to_json(images: list[Image], query: dict[str, str], next_marker: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "images": [image_to_json(i) for i in images],
        "first": "/v2/images",
        "schema": "/v2/schemas/images",
    }
    if next_marker is not None:
        params = {k: v for k, v in query.items() if k != "marker"}
        params["marker"] = next_marker
        body["next"] = "/v2/images?%s" % urlencode(params)
    return body


def images_page_frame(query: dict[str, str], next_marker: str | None) -> tuple[bytes, bytes]:
    """The page's JSON before and after the items of its "images" array, which the list handler
    streams in between: together the document images_page_to_json describes."""
    rest = images_page_to_json([], query, next_marker)
    del rest["images"]
    return b'{"images": [', ("], " + json.dumps(rest)[1:]).encode()


def image_rows_json(rows: list[tuple[Any, ...]], query: dict[str, str], next_marker: str | None) -> bytes:
    """/v2/edge/image-rows: {"columns": [...], "rows": [[...], ...], "next": <link>} (no "next"
    on the last page). Encoded ROWS_CHUNK rows at a time: the C encoder holds the GIL for a
    whole call (10,000 rows: ~30 ms), and the event loop's thread must get it back between."""
    parts = [b'{"columns": ', json.dumps(list(IMAGE_ROW_COLUMNS)).encode(), b', "rows": [']
    for start in range(0, len(rows), ROWS_CHUNK):
        chunk = [(*r[:_PROTECTED], bool(r[_PROTECTED]), *r[_PROTECTED + 1 :]) for r in rows[start : start + ROWS_CHUNK]]
        parts.append((", " if start else "").encode() + json.dumps(chunk)[1:-1].encode())
    parts.append(b"]")
    if next_marker is not None:
        link = "/v2/edge/image-rows?%s" % urlencode({**query, "marker": next_marker})
        parts.append(b', "next": ' + json.dumps(link).encode())
    parts.append(b"}")
    return b"".join(parts)


ROWS_CHUNK = 500
_PROTECTED = IMAGE_ROW_COLUMNS.index("protected")


def encode_images(images: list[Image], members: bool = False, extra: dict[str, dict[str, Any]] | None = None) -> bytes:
    """Array items of a page (comma-separated), for images_page_frame; `extra`: members to add
    to an image's body, by id (the locations its caller may see)."""
    extra = extra or {}
    # One dumps of the list (one call into the C encoder, not one per image), without its brackets.
    return json.dumps([{**image_to_json(i, members), **extra.get(i.id, {})} for i in images])[1:-1].encode()


def metadata_weight(images: list[Image]) -> int:
    """About the bytes of JSON the images' free-form parts encode to (properties, tags,
    locations, members): whether encoding them would hold the event loop for long."""
    weight = 0
    for image in images:
        weight += sum(len(k) + len(v) for k, v in image.properties.items()) + sum(len(t) for t in image.tags)
        weight += sum(len(loc.url) + 64 for loc in image.locations) + 128 * len(image.members)
    return weight


def member_to_json(member: Member) -> dict[str, Any]:
    return {
        "created_at": member.created_at,
        "image_id": member.image_id,
        "member_id": member.member_id,
        "schema": "/v2/schemas/member",
        "status": member.status,
        "updated_at": member.updated_at,
    }


def members_to_json(members: list[Member]) -> dict[str, Any]:
    return {"members": [member_to_json(m) for m in members], "schema": "/v2/schemas/members"}


def location_to_json(location: Location) -> dict[str, Any]:
    return {"url": location.url, "metadata": dict(location.metadata)}


def task_to_json(task: Task) -> dict[str, Any]:
    return {
        "id": task.id,
        "type": task.type,
        "status": task.status,
        "owner": task.owner,
        "input": task.input,
        "result": task.result,
        "message": task.message,
        "image_id": task.image_id,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "expires_at": task.expires_at,
        "self": "/v2/tasks/%s" % task.id,
        "schema": "/v2/schemas/task",
    }


def store_to_json(name: str, description: str, default: bool, usage: StoreUsage) -> dict[str, Any]:
    body: dict[str, Any] = {"id": name, "description": description}
    if default:
        body["default"] = True
    if usage.read_only:
        body["read-only"] = "true"
    return body


def store_detail_to_json(
    name: str, description: str, default: bool, usage: StoreUsage, kind: str, properties: dict[str, Any]
) -> dict[str, Any]:
    """Glance's detail of a store: `kind` and `properties` as its driver reports them (file:
    datadir; rbd: chunk_size, pool, thin_provisioning), plus this appliance's usage."""
    body = store_to_json(name, description, default, usage)
    body.update(
        {
            "type": kind,
            "weight": 0,
            "properties": {
                **properties,
                "total_bytes": usage.total_bytes,
                "free_bytes": usage.free_bytes,
                "used_bytes": usage.used_bytes,
                "read_only_reason": usage.reason,
            },
        }
    )
    return body


def store_usage_to_json(name: str, description: str, default: bool, usage: StoreUsage) -> dict[str, Any]:
    return {
        "id": name,
        "description": description,
        "default": default,
        "total_bytes": usage.total_bytes,
        "free_bytes": usage.free_bytes,
        "used_bytes": usage.used_bytes,
        "read_only": usage.read_only,
        "read_only_reason": usage.reason,
    }


def site_to_json(site: Site, online: bool, pulls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`pulls`: the copies it is pulling, as its last heartbeat reported them."""
    return {
        "name": site.name,
        "online": online,
        "last_seen": timestamp(site.last_seen),
        "registered_at": timestamp(site.registered_at),
        "free_bytes": site.free_bytes,
        "total_bytes": site.total_bytes,
        "version": site.version,
        "api_url": site.api_url,
        "stores": list(site.stores),
        "cache": site.cache,
        "pulls": pulls or [],
    }


def site_store_to_json(name: str) -> dict[str, Any]:
    """A registered site as one of the hub's stores (what copy-image --stores names)."""
    return {"id": name, "description": "Edge site %s" % name}


def site_store_detail_to_json(site: Site, online: bool) -> dict[str, Any]:
    body = site_store_to_json(site.name)
    body.update(
        {
            "type": "edge-site",
            "weight": 0,
            "properties": {
                "online": online,
                "last_seen": timestamp(site.last_seen),
                "total_bytes": site.total_bytes,
                "free_bytes": site.free_bytes,
                "api_url": site.api_url,
                "version": site.version,
            },
        }
    )
    return body


def assignment_to_json(assignment: Assignment) -> dict[str, Any]:
    return {"image_id": assignment.image_id, "action": assignment.action, "created_at": assignment.created_at}


def change_page_to_json(page: ChangePage) -> dict[str, Any]:
    return {
        "feed": page.feed,
        "pruned_through": page.pruned_through,
        "latest": page.latest,
        "changes": [
            {"serial": c.serial, "image_id": c.image_id, "kind": c.kind, "changed_at": c.changed_at}
            for c in page.changes
        ],
        "next": "/v2/edge/changes?since=%d" % page.changes[-1].serial if page.more and page.changes else None,
    }
