"""`GET /openapi.json`: an OpenAPI 3.1 description of every route this daemon serves.

Hand-written data, so it says what a client may rely on (every status an operation answers,
with its media types), not what a framework guessed; the image and task shapes are the ones
`/v2/schemas/*` serves (schema_docs.py), so the two never disagree. tests/api/test_openapi.py
checks it against the app's router in both directions, and tests/api/test_fuzz.py drives a
live daemon from it. HEAD operations are derived from the GETs (aiohttp answers HEAD for
every GET route)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from appliance import __version__
from appliance.api import schema_docs
from appliance.api.keys import IMAGES
from appliance.api.schemas import PATCH_MEDIA_TYPES
from appliance.config.sections import ROLES
from appliance.model import MEMBER_STATUSES, VISIBILITIES
from appliance.wire import INT64_MAX

routes = web.RouteTableDef()

Json = dict[str, Any]

_UUID = {"type": "string", "format": "uuid"}
_INT64 = {"type": "integer", "minimum": 0, "maximum": INT64_MAX}
_NAME = {"type": "string", "minLength": 1, "maxLength": 255}
_OCTETS = {"type": "string", "format": "binary"}
# Why an operation may fail, in the words of the domain (the middleware's table); a route lists
# the ones it can answer.
_ERRORS = {
    400: "The request is malformed or names invalid values",
    401: "No valid token (send X-Auth-Token or Authorization: Bearer)",
    403: "The caller's roles do not allow this (the message names the rule)",
    404: "No such resource, or not visible to the caller (and the sites API at an edge: a hub serves it)",
    408: "The request body arrived too slowly (api.min_body_rate) or not within api.body_timeout",
    409: "The request clashes with the resource's current state",
    413: "The body is larger than a configured limit, or a quota would be exceeded",
    415: "Unsupported Content-Type",
    416: "The requested byte range is not satisfiable",
    429: "Too many lookups of ids this edge does not know (hub.lookup_burst, hub.lookups_per_minute)",
    502: "The hub or an upstream server failed",
    503: "The hub is unreachable, or the identity service (Keystone) is and the token was not validated before",
    507: "No space left in the store",
}
_AUTH = (401, 403, 503)  # 503: Keystone unreachable for a token not validated before


def _ref(name: str) -> Json:
    return {"$ref": "#/components/schemas/%s" % name}


def _json(schema: Json, description: str) -> Json:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _empty(description: str) -> Json:
    return {"description": description}


def _query(name: str, schema: Json, description: str, **extra: Any) -> Json:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description, **extra}


def _path(name: str, schema: Json | None = None, description: str = "") -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema or {"type": "string"},
        "description": description or name,
    }


def _header(name: str, schema: Json, description: str) -> Json:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


def _body(media_types: Sequence[str], schema: Json, required: bool = True) -> Json:
    return {"required": required, "content": {m: {"schema": schema} for m in media_types}}


def _op(
    op_id: str,
    summary: str,
    ok: dict[int, Json],
    errors: Iterable[int] = (),
    *,
    tag: str,
    params: Sequence[Json] = (),
    body: Json | None = None,
    public: bool = False,
) -> Json:
    codes = set(errors) | (set() if public else set(_AUTH))
    if body is not None:
        codes |= {400, 408, 413, 415}
    responses: Json = {str(status): response for status, response in sorted(ok.items())}
    for status in sorted(codes):
        responses[str(status)] = {"$ref": "#/components/responses/E%d" % status}
    op: Json = {"operationId": op_id, "summary": summary, "tags": [tag], "responses": responses}
    if params:
        op["parameters"] = list(params)
    if body is not None:
        op["requestBody"] = body
    if public:
        op["security"] = []
    return op


IMAGE_ID = _path("image_id", {"type": "string"}, "The image's id (a UUID; anything else is an unknown image)")
JSON_BODY = ("application/json",)


def _image_paths() -> Json:
    ok_image = {200: _json(_ref("Image"), "The image")}
    list_params = [
        _query("limit", _INT64, "Page size (capped at api.max_page_size)"),
        _query("marker", {"type": "string"}, "The last image id of the previous page"),
        _query("sort_key", {"type": "string"}, "Comma-separated sort keys"),
        _query("sort_dir", {"type": "string"}, "Comma-separated asc|desc"),
        _query("sort", {"type": "string"}, "key:dir,... (not with sort_key/sort_dir)"),
        _query("name", {"type": "string"}, "Equality filter"),
        _query("status", {"type": "string"}, "Equality filter"),
        _query("visibility", {"enum": [*VISIBILITIES, "all"]}, "Visibility filter"),
        _query("owner", {"type": "string"}, "Equality filter"),
        _query("disk_format", {"type": "string"}, "Equality filter"),
        _query("container_format", {"type": "string"}, "Equality filter"),
        _query("id", {"type": "string"}, "An id, or in:id1,id2,..."),
        _query("protected", {"type": "string"}, "true or false"),
        _query("os_hidden", {"type": "string"}, "true or false"),
        _query(
            "member_status",
            {"enum": [*MEMBER_STATUSES, "all"]},
            "Shared images listed to a member: those it has accepted (default), pending, rejected, or all",
        ),
        _query("size_min", _INT64, "Smallest size in bytes"),
        _query("size_max", _INT64, "Largest size in bytes"),
        _query("created_at", {"type": "string"}, "OPERATOR:TIMESTAMP (gt, gte, eq, neq, lt, lte)"),
        _query("updated_at", {"type": "string"}, "OPERATOR:TIMESTAMP (gt, gte, eq, neq, lt, lte)"),
        _query(
            "tag",
            {"type": "array", "items": {"type": "string"}},
            "Images carrying every tag given",
            style="form",
            explode=True,
        ),
        _query(
            "property_filters",
            {"type": "object", "additionalProperties": {"type": "string"}},
            "Any other key filters on a custom property of that name (at most 64 filters in all)",
            style="form",
            explode=True,
        ),
    ]
    no_content = (204, _empty("Done"))
    return {
        "/v2/images": {
            "get": _op(
                "listImages",
                "Images the caller sees, one page",
                {200: _json(_ref("ImageList"), "A page")},
                (400,),
                tag="images",
                params=list_params,
            ),
            "post": _op(
                "createImage",
                "Create an image record (queued)",
                {201: _json(_ref("Image"), "Created")},
                (409,),
                tag="images",
                body=_body(JSON_BODY, _ref("ImageCreate")),
            ),
        },
        "/v2/edge/image-rows": {
            "get": _op(
                "listImageRows",
                "The operator's table of images: the list's filters, sort and marker, the caller's visibility, "
                "a few columns per image as arrays, up to 10,000 a page",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["columns", "rows"],
                            "properties": {
                                "columns": {"type": "array", "items": {"type": "string"}},
                                "rows": {"type": "array", "items": {"type": "array"}},
                                "next": {"type": "string"},
                            },
                        },
                        "A page of rows",
                    )
                },
                (400,),
                tag="edge",
                params=list_params,
            )
        },
        "/v2/images/{image_id}": {
            "parameters": [IMAGE_ID],
            "get": _op("showImage", "One image", ok_image, (404, 429, 502, 503), tag="images"),
            "patch": _op(
                "updateImage",
                "Change an image with a JSON patch; add /locations/- {url, metadata} and remove /locations/N "
                "(glance location-add / location-delete) need [api] show_multiple_locations",
                ok_image,
                (404, 409, 429, 502, 503),
                tag="images",
                body=_body(PATCH_MEDIA_TYPES, _ref("JsonPatch")),
            ),
            "delete": _op(
                "deleteImage",
                "Delete an image and its data",
                dict([no_content]),
                (404, 409, 429, 502, 503),
                tag="images",
            ),
        },
        "/v2/images/{image_id}/tags/{tag}": {
            "parameters": [IMAGE_ID, _path("tag", _NAME)],
            "put": _op("addTag", "Tag an image", dict([no_content]), (400, 404, 409, 413, 429, 502, 503), tag="images"),
            "delete": _op(
                "removeTag", "Untag an image", dict([no_content]), (400, 404, 409, 429, 502, 503), tag="images"
            ),
        },
        "/v2/images/{image_id}/actions/deactivate": {
            "parameters": [IMAGE_ID],
            "post": _op(
                "deactivateImage",
                "Deactivate an active image",
                dict([no_content]),
                (404, 409, 429, 502, 503),
                tag="images",
            ),
        },
        "/v2/images/{image_id}/actions/reactivate": {
            "parameters": [IMAGE_ID],
            "post": _op(
                "reactivateImage",
                "Reactivate a deactivated image",
                dict([no_content]),
                (404, 409, 429, 502, 503),
                tag="images",
            ),
        },
        "/v2/images/{image_id}/file": {
            "parameters": [IMAGE_ID],
            "put": _op(
                "uploadImage",
                "Upload the image's data (queued → active)",
                dict([no_content]),
                (404, 409, 429, 502, 503, 507),
                tag="images",
                params=[_header("X-Image-Meta-Store", {"type": "string"}, "Target store")],
                body=_body(("application/octet-stream",), _OCTETS),
            ),
            "get": _op(
                "downloadImage",
                "The image's data, or a byte range of it",
                {
                    200: {"description": "The data", "content": {"application/octet-stream": {"schema": _OCTETS}}},
                    204: _empty("The image has no data yet"),
                    206: {
                        "description": "The range asked for",
                        "content": {"application/octet-stream": {"schema": _OCTETS}},
                    },
                },
                (404, 416, 429, 502, 503),
                tag="images",
                params=[_header("Range", {"type": "string"}, "bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX")],
            ),
        },
        "/v2/images/{image_id}/locations": {
            "parameters": [IMAGE_ID],
            "get": _op(
                "imageLocations",
                "Where the image's data is (fetch_image_location: service users; or get_image_location)",
                {200: _json({"type": "array", "items": _ref("Location")}, "Locations")},
                (404, 429, 502, 503),
                tag="images",
            ),
            "post": _op(
                "addImageLocation",
                "A queued image's data by URL (add_image_location; API 2.17): 202, hashed in the background",
                {202: _empty("Accepted")},
                (400, 404, 409, 429, 502, 503),
                tag="images",
                body=_body(
                    JSON_BODY,
                    {
                        "type": "object",
                        "required": ["url"],
                        "properties": {
                            "url": {"type": "string"},
                            "validation_data": {
                                "type": "object",
                                "properties": {
                                    "os_hash_algo": {"type": "string", "enum": ["sha1", "sha256", "sha512", "md5"]},
                                    "os_hash_value": {"type": "string", "maxLength": 128},
                                },
                            },
                        },
                    },
                ),
            ),
        },
        "/v2/images/{image_id}/stage": {
            "parameters": [IMAGE_ID],
            "put": _op(
                "stageImage",
                "Stage data for the glance-direct import method",
                dict([no_content]),
                (404, 409, 429, 502, 503, 507),
                tag="imports",
                params=[
                    _header(
                        "x-openstack-image-size",
                        {"type": "string", "pattern": "^[0-9]{1,19}$"},
                        "The size to expect, in bytes",
                    )
                ],
                body=_body(("application/octet-stream",), _OCTETS),
            ),
        },
        "/v2/images/{image_id}/import": {
            "parameters": [IMAGE_ID],
            "post": _op(
                "importImage",
                "Start an import (glance-direct, web-download, copy-image)",
                {202: _empty("Started; follow the image's tasks")},
                (404, 409, 429, 502, 503, 507),
                tag="imports",
                params=[_header("X-Image-Meta-Store", {"type": "string"}, "Target store")],
                body=_body(JSON_BODY, _ref("ImportRequest")),
            ),
        },
        "/v2/images/{image_id}/tasks": {
            "parameters": [IMAGE_ID],
            "get": _op(
                "imageTasks",
                "The image's import tasks",
                {200: _json(_ref("TaskList"), "Tasks")},
                (404, 429, 502, 503),
                tag="imports",
            ),
        },
    }


def _member_paths() -> Json:
    member_id = _path("member_id", {"type": "string"}, "The member's project id")
    ok_member = {200: _json(_ref("Member"), "The membership")}
    refused = (400, 403, 404, 409, 413, 429, 502, 503)
    return {
        "/v2/images/{image_id}/members": {
            "parameters": [IMAGE_ID],
            "get": _op(
                "listMembers",
                "The projects a shared image is shared with (a member sees only itself)",
                {200: _json(_ref("MemberList"), "Members")},
                (403, 404, 429, 502, 503),
                tag="images",
            ),
            "post": _op(
                "createMember",
                "Share a shared image with a project (owner; image_member_quota)",
                ok_member,
                refused,
                tag="images",
                body=_body(JSON_BODY, _ref("MemberCreate")),
            ),
        },
        "/v2/images/{image_id}/members/{member_id}": {
            "parameters": [IMAGE_ID, member_id],
            "get": _op("showMember", "One membership", ok_member, (404, 429, 502, 503), tag="images"),
            "put": _op(
                "updateMember",
                "Accept, reject or reset a membership (the member itself)",
                ok_member,
                refused,
                tag="images",
                body=_body(JSON_BODY, _ref("MemberUpdate")),
            ),
            "delete": _op(
                "deleteMember",
                "Stop sharing an image with a project (owner)",
                {204: _empty("Done")},
                (403, 404, 409, 429, 502, 503),
                tag="images",
            ),
        },
    }


def _info_paths() -> Json:
    versions = _json(
        {
            "type": "object",
            "required": ["versions"],
            "properties": {"versions": {"type": "array", "items": {"type": "object"}}},
        },
        "API versions",
    )
    return {
        "/": {
            "get": _op(
                "rootVersions",
                "Version discovery (300 Multiple Choices, as Glance)",
                {300: versions},
                tag="info",
                public=True,
            )
        },
        "/versions": {"get": _op("versions", "Version discovery", {200: versions}, tag="info", public=True)},
        "/healthcheck": {
            "get": _op(
                "healthcheck",
                "Liveness: OK while the event loop answers",
                {200: {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                tag="info",
                public=True,
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi", "This description", {200: _json({"type": "object"}, "OpenAPI 3.1")}, tag="info", public=True
            )
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "Prometheus metrics (text exposition format 0.0.4)",
                {200: {"description": "Metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
                tag="info",
                public=True,
            )
        },
        "/v2/schemas/{name}": {
            "parameters": [_path("name", {"type": "string"}, "image, images, task, tasks, member(s), metadefs/...")],
            "get": _op(
                "schema",
                "A JSON schema as Glance serves it",
                {200: _json({"type": "object"}, "The schema")},
                (404,),
                tag="info",
            ),
        },
        "/v2/info/stores": {
            "get": _op(
                "stores",
                "The stores an image can go to",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["stores"],
                            "properties": {"stores": {"type": "array", "items": _ref("Store")}},
                        },
                        "Stores",
                    )
                },
                tag="info",
            )
        },
        "/v2/info/stores/detail": {
            "get": _op(
                "storesDetail",
                "Stores with their figures (admin)",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["stores"],
                            "properties": {"stores": {"type": "array", "items": _ref("Store")}},
                        },
                        "Stores",
                    )
                },
                tag="info",
            )
        },
        "/v2/info/import": {
            "get": _op(
                "importInfo",
                "The import methods enabled here",
                {200: _json({"type": "object", "required": ["import-methods"]}, "Import methods")},
                tag="info",
            )
        },
        "/v2/stores/{store}/{image_id}": {
            "parameters": [_path("store", {"type": "string"}, "A store name"), IMAGE_ID],
            "delete": _op(
                "deleteFromStore",
                "Remove an image's data from one store (admin)",
                {204: _empty("Done")},
                (400, 404, 409, 429, 502, 503),
                tag="images",
            ),
        },
        "/v2/tasks": {
            "get": _op(
                "listTasks",
                "The caller's tasks (all for an admin)",
                {200: _json(_ref("TaskList"), "Tasks")},
                tag="imports",
            )
        },
        "/v2/tasks/{task_id}": {
            "parameters": [_path("task_id", {"type": "string"}, "A task id")],
            "get": _op("showTask", "One task", {200: _json(_ref("Task"), "The task")}, (404,), tag="imports"),
        },
    }


_WHOAMI: Json = {
    "type": "object",
    "required": ["user_id", "project_id", "roles", "is_admin", "site"],
    "properties": {
        "user_id": {"type": "string"},
        "project_id": {"type": "string"},
        "roles": {"type": "array", "items": {"type": "string"}},
        "is_admin": {"type": "boolean"},
        "site": {
            "type": "object",
            "required": ["name", "role"],
            "properties": {"name": {"type": "string"}, "role": {"enum": list(ROLES)}},
        },
    },
}


def _edge_paths() -> Json:
    site_name = _path("name", {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,63}$"}, "A site's name")
    obj = {"type": "object"}
    return {
        "/v2/edge/check-uri": {
            "post": _op(
                "checkUri",
                "The web-download filter's verdict on a URL (admin)",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["allowed", "reason"],
                            "properties": {"allowed": {"type": "boolean"}, "reason": {"type": "string"}},
                        },
                        "Verdict",
                    )
                },
                tag="edge",
                body=_body(JSON_BODY, {"type": "object", "properties": {"uri": {"type": "string"}}}),
            )
        },
        "/v2/edge/status": {"get": _op("edgeStatus", "Site summary (admin)", {200: _json(obj, "Summary")}, tag="edge")},
        "/v2/edge/events": {
            "get": _op(
                "edgeEvents",
                "The event log (admin)",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["events"],
                            "properties": {"events": {"type": "array", "items": obj}},
                        },
                        "Events",
                    )
                },
                (400,),
                tag="edge",
                params=[
                    _query("since", _INT64, "Events after this sequence number"),
                    _query("limit", _INT64, "At most this many (1 to 2000)"),
                ],
            )
        },
        "/v2/edge/whoami": {
            "get": _op(
                "edgeWhoami",
                "Who the daemon takes the caller for: user, project, roles (with the implied ones), "
                "whether it is an administrator, and this site",
                {200: _json(_WHOAMI, "The caller")},
                tag="edge",
            )
        },
        "/v2/edge/cache": {
            "get": _op(
                "edgeCache", "Cache figures, entries, queue, fills (admin)", {200: _json(obj, "Cache")}, tag="cache"
            )
        },
        "/v2/edge/bundles": {
            "post": _op(
                "importBundle",
                "Import a bundle (admin)",
                {200: _json(obj, "The import report")},
                (409, 502, 507),
                tag="edge",
                params=[_query("store", {"type": "string"}, "Target store")],
                body=_body(("application/octet-stream", "application/zstd"), _OCTETS),
            )
        },
        "/v2/edge/sites": {
            "get": _op(
                "listSites",
                "Registered edge sites (hub)",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["sites"],
                            "properties": {"sites": {"type": "array", "items": _ref("Site")}},
                        },
                        "Sites",
                    )
                },
                (404,),
                tag="sites",
            ),
            "post": _op(
                "registerSite",
                "Register or re-register a site (hub)",
                {200: _json(_ref("Site"), "The site")},
                (404, 409),
                tag="sites",
                body=_body(JSON_BODY, _ref("SiteRegistration")),
            ),
        },
        "/v2/edge/sites/{name}": {
            "parameters": [site_name],
            "get": _op("showSite", "One site", {200: _json(_ref("Site"), "The site")}, (400, 404), tag="sites"),
            "delete": _op("deleteSite", "Forget a site", {204: _empty("Done")}, (400, 404), tag="sites"),
        },
        "/v2/edge/sites/{name}/heartbeat": {
            "parameters": [site_name],
            "post": _op(
                "heartbeat",
                "A site's periodic report (figures optional)",
                {200: _json(_ref("Site"), "The site")},
                (404,),
                tag="sites",
                body=_body(JSON_BODY, _ref("Heartbeat"), required=False),
            ),
        },
        "/v2/edge/sites/{name}/assignments": {
            "parameters": [site_name],
            "get": _op(
                "assignments",
                "Images the hub wants at the site",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["assignments"],
                            "properties": {"assignments": {"type": "array", "items": obj}},
                        },
                        "Assignments",
                    )
                },
                (400, 404),
                tag="sites",
            ),
        },
        "/v2/edge/changes": {
            "get": _op(
                "changes",
                "The hub's change feed: images created, updated or deleted after a serial (hub; admin or site)",
                {
                    200: _json(
                        {
                            "type": "object",
                            "required": ["feed", "pruned_through", "latest", "changes", "next"],
                            "properties": {
                                "feed": {"type": "string", "description": "Names the feed; a new one restarts serials"},
                                "pruned_through": {**_INT64, "description": "Serials up to this one are gone"},
                                "latest": {**_INT64, "description": "The newest serial written"},
                                "changes": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["serial", "image_id", "kind", "changed_at"],
                                        "properties": {
                                            "serial": _INT64,
                                            "image_id": {"type": "string"},
                                            "kind": {"type": "string", "enum": ["created", "updated", "deleted"]},
                                            "changed_at": {"type": "string", "format": "date-time"},
                                        },
                                    },
                                },
                                "next": {"type": ["string", "null"], "description": "The next page, if cut"},
                            },
                        },
                        "Changes, oldest first",
                    )
                },
                (400, 404),
                tag="sites",
                params=[
                    _query("since", _INT64, "Changes after this serial (default 0)"),
                    _query("limit", _INT64, "At most this many (0 to 1000, default 1000)"),
                ],
            )
        },
        "/v2/edge/sites/{name}/assignments/{image_id}": {
            "parameters": [site_name, IMAGE_ID],
            "post": _op(
                "reportAssignment",
                "The site reports an assignment's outcome",
                {204: _empty("Recorded")},
                (404, 409),
                tag="sites",
                body=_body(JSON_BODY, _ref("AssignmentReport")),
            ),
        },
    }


def _cache_paths() -> Json:
    target = _header("x-image-cache-clear-target", {"enum": ["cache", "queue", "both"]}, "What to clear (default both)")
    cleaned = {"type": "object"}
    deleted = {"type": "object", "required": ["num_deleted"], "properties": {"num_deleted": _INT64}}
    return {
        "/v2/cache": {
            "get": _op(
                "listCache",
                "Cached and queued images (admin)",
                {200: _json({"type": "object", "required": ["cached_images", "queued_images"]}, "Cache")},
                tag="cache",
            ),
            "delete": _op(
                "clearCache",
                "Empty the cache and/or its queue (admin)",
                {204: _empty("Done")},
                (400,),
                tag="cache",
                params=[target],
            ),
        },
        "/v2/cache/{image_id}": {
            "parameters": [IMAGE_ID],
            "put": _op(
                "queueImage",
                "Queue an image for caching (admin)",
                {202: _empty("Queued")},
                (400, 404, 409, 429, 502, 503),
                tag="cache",
            ),
            "delete": _op(
                "uncacheImage",
                "Drop an image from the cache and/or queue (admin)",
                {204: _empty("Done")},
                (400, 404, 429, 502, 503),
                tag="cache",
                params=[target],
            ),
        },
        "/v2/cache/clean": {
            "post": _op(
                "cleanCache",
                "Remove invalid and stalled entries (admin)",
                {200: _json(cleaned, "What was cleaned")},
                tag="cache",
            )
        },
        "/v2/cache/prune": {
            "post": _op(
                "pruneCache",
                "Prune down to the low watermark (admin)",
                {200: _json(cleaned, "What was pruned")},
                tag="cache",
            )
        },
        # Glance's legacy cache routes (older glance-cache-manage), under manage_image_cache.
        "/v2/cached_images": {
            "get": _op(
                "legacyListCached",
                "Cached images, Glance's legacy route (admin)",
                {200: _json({"type": "object", "required": ["cached_images"]}, "Cached images")},
                tag="cache",
            ),
            "delete": _op(
                "legacyClearCached",
                "Empty the cache, Glance's legacy route (admin)",
                {200: _json(deleted, "How many went")},
                tag="cache",
            ),
        },
        "/v2/cached_images/{image_id}": {
            "parameters": [IMAGE_ID],
            "delete": _op(
                "legacyUncache",
                "Drop an image from the cache, Glance's legacy route (admin)",
                {200: _json({"type": "null"}, "Done (null)")},
                tag="cache",
            ),
        },
        "/v2/queued_images": {
            "get": _op(
                "legacyListQueued",
                "Queued image ids, Glance's legacy route (admin)",
                {200: _json({"type": "object", "required": ["queued_images"]}, "Queued images")},
                tag="cache",
            ),
            "delete": _op(
                "legacyClearQueued",
                "Empty the cache queue, Glance's legacy route (admin)",
                {200: _json(deleted, "How many went")},
                tag="cache",
            ),
        },
        "/v2/queued_images/{image_id}": {
            "parameters": [IMAGE_ID],
            "put": _op(
                "legacyQueue",
                "Queue an image for caching, Glance's legacy route (admin)",
                {200: _json({"type": "null"}, "Queued (null)")},
                (400, 404, 409, 429, 502, 503),
                tag="cache",
            ),
            "delete": _op(
                "legacyDequeue",
                "Drop an image from the cache queue, Glance's legacy route (admin)",
                {200: _json({"type": "null"}, "Done (null)")},
                tag="cache",
            ),
        },
    }


def _schemas(disk_formats: Sequence[str], container_formats: Sequence[str]) -> Json:
    image = schema_docs.image_schema(disk_formats, container_formats)
    image = {"type": "object", "properties": image["properties"], "additionalProperties": image["additionalProperties"]}
    member = schema_docs.member_schema()["properties"]
    task = schema_docs.task_schema()
    task = {
        "type": "object",
        "properties": {
            **task["properties"],
            # Null where Glance's minimal schema says string: no message yet, or no image.
            "message": {"type": ["string", "null"]},
            "image_id": {"type": ["string", "null"]},
            "bytes_done": {"type": ["integer", "null"]},
            "bytes_total": {"type": ["integer", "null"]},
        },
    }
    size = {"type": ["integer", "null"], "minimum": 0, "maximum": INT64_MAX}
    pulls = {
        "type": "array",
        "description": "Pulls in progress (copies assigned by the hub), as of the last heartbeat",
        "items": {
            "type": "object",
            "required": ["image_id", "bytes_done"],
            "properties": {"image_id": {"type": "string"}, "bytes_done": size, "bytes_total": size},
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["code", "title", "message"],
            "properties": {
                "code": {"type": "string", "description": "Status and reason, e.g. '404 Not Found'"},
                "title": {"type": "string"},
                "message": {"type": "string"},
            },
        },
        "Image": image,
        "Member": {"type": "object", "properties": member},
        "MemberList": {
            "type": "object",
            "required": ["members", "schema"],
            "properties": {"members": {"type": "array", "items": _ref("Member")}, "schema": {"type": "string"}},
        },
        "MemberCreate": {
            "type": "object",
            "required": ["member"],
            "properties": {"member": {"type": "string", "minLength": 1, "maxLength": 255}},
        },
        "MemberUpdate": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"enum": list(MEMBER_STATUSES)}},
        },
        "ImageList": {
            "type": "object",
            "required": ["images", "first", "schema"],
            "properties": {
                "images": {"type": "array", "items": _ref("Image")},
                "first": {"type": "string"},
                "next": {"type": "string"},
                "schema": {"type": "string"},
            },
        },
        "ImageCreate": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "name": {"type": ["string", "null"], "maxLength": 255},
                "visibility": {"enum": list(VISIBILITIES)},
                "protected": {"type": "boolean"},
                "os_hidden": {"type": "boolean"},
                "disk_format": {"enum": [*disk_formats, None]},
                "container_format": {"enum": [*container_formats, None]},
                "min_disk": _INT64,
                "min_ram": _INT64,
                "tags": {"type": "array", "maxItems": 128, "items": _NAME},
            },
            "additionalProperties": {"type": "string", "maxLength": 255},
            "description": "Base attributes, and custom properties as strings (Glance's image-create body)",
        },
        "JsonPatch": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["op", "path"],
                "properties": {
                    "op": {"enum": ["add", "replace", "remove"]},
                    "path": {"type": "string", "pattern": "^/[^/]+$"},
                    "value": {},
                },
            },
        },
        "Location": {
            "type": "object",
            "required": ["url", "metadata"],
            "properties": {"url": {"type": "string"}, "metadata": {"type": "object"}},
        },
        "Store": {
            "type": "object",
            "required": ["id"],
            "properties": {"id": {"type": "string"}, "description": {"type": "string"}},
        },
        "ImportRequest": {
            "type": "object",
            "required": ["method"],
            "properties": {
                "method": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"enum": ["glance-direct", "web-download", "copy-image"]},
                        "uri": {"type": "string"},
                    },
                },
                "stores": {"type": "array", "items": {"type": "string"}},
                "all_stores": {"type": "boolean"},
                "all_stores_must_succeed": {"type": "boolean"},
            },
        },
        "Task": task,
        "TaskList": {
            "type": "object",
            "required": ["tasks"],
            "properties": {"tasks": {"type": "array", "items": _ref("Task")}},
        },
        "Site": {
            "type": "object",
            "required": ["name", "online"],
            "properties": {
                "name": {"type": "string"},
                "online": {"type": "boolean"},
                "last_seen": {"type": "string"},
                "registered_at": {"type": "string"},
                "free_bytes": size,
                "total_bytes": size,
                "version": {"type": "string"},
                "api_url": {"type": "string"},
                "stores": {"type": "array", "items": {"type": "object"}},
                "cache": {"type": "object"},
                "pulls": pulls,
            },
        },
        "SiteRegistration": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,63}$"},
                "free_bytes": size,
                "total_bytes": size,
                "version": {"type": "string"},
                "api_url": {"type": "string", "format": "uri"},
                "stores": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["id"],
                        "properties": {
                            "id": {"type": "string"},
                            "description": {"type": "string"},
                            "type": {"type": "string", "enum": ["file", "rbd"]},
                            "total_bytes": size,
                            "free_bytes": size,
                        },
                    },
                },
                "cache": {"type": "object"},
            },
        },
        "Heartbeat": {
            "type": "object",
            "properties": {
                "free_bytes": size,
                "total_bytes": size,
                "cache": {"type": "object"},
                "pulls": pulls,
            },
        },
        "AssignmentReport": {
            "type": "object",
            "required": ["action", "status"],
            "properties": {"action": {"type": "string"}, "status": {"type": "string"}, "message": {"type": "string"}},
        },
    }


def _error_responses() -> Json:
    # Glance's error shape, negotiated as webob does on Glance's paths (HTML for `*/*`, which
    # python-glanceclient relies on); JSON elsewhere unless the client prefers text/html.
    content = {
        "application/json": {"schema": _ref("Error")},
        "text/html": {"schema": {"type": "string"}},
        "text/plain": {"schema": {"type": "string"}},
    }
    return {"E%d" % status: {"description": text, "content": content} for status, text in _ERRORS.items()}


def _with_head(paths: Json) -> Json:
    """aiohttp answers HEAD on every GET route: the same statuses, no body."""
    for item in paths.values():
        if "get" in item:
            head = copy.deepcopy(item["get"])
            head["operationId"] += "Head"
            head["responses"] = {
                status: {"description": resp.get("description", "")} if "$ref" not in resp else resp
                for status, resp in head["responses"].items()
            }
            item["head"] = head
    return paths


def _metadef_paths() -> Json:
    """Glance's metadata definitions (/v2/metadefs); the bodies are those of /v2/schemas/metadefs/*."""
    obj: Json = {"type": "object"}
    ns_param = _path("namespace", {"type": "string"}, "The namespace's name")
    name_param = _path("name", {"type": "string"}, "The item's name")
    read = (404, 429)
    write = (400, 403, 404, 409, 429)
    gone = {204: _empty("Done")}

    def one(what: str, required: Sequence[str] = ("name",)) -> dict[int, Json]:
        return {200: _json({"type": "object", "required": list(required)}, what)}

    def made(what: str, required: Sequence[str] = ("name",)) -> dict[int, Json]:
        return {201: _json({"type": "object", "required": list(required)}, what)}

    def listing(key: str, what: str) -> dict[int, Json]:
        kind = "object" if key == "properties" else "array"  # properties are keyed by name
        return {200: _json({"type": "object", "required": [key], "properties": {key: {"type": kind}}}, what)}

    def crud(plural: str, label: str) -> Json:
        cap = label.capitalize()
        return {
            "/v2/metadefs/namespaces/{namespace}/%s" % plural: {
                "parameters": [ns_param],
                "get": _op(
                    "listMetadef%ss" % cap,
                    "A namespace's %ss" % label,
                    listing(plural, cap + "s"),
                    read,
                    tag="metadefs",
                ),
                "post": _op(
                    "createMetadef%s" % cap,
                    "Add a %s to a namespace (metadef rules: administrators)" % label,
                    made(cap),
                    write,
                    tag="metadefs",
                    body=_body(JSON_BODY, obj),
                ),
                "delete": _op(
                    "deleteMetadef%ss" % cap,
                    "Delete every %s of a namespace" % label,
                    gone,
                    (403, 404, 409, 429),
                    tag="metadefs",
                ),
            },
            "/v2/metadefs/namespaces/{namespace}/%s/{name}" % plural: {
                "parameters": [ns_param, name_param],
                "get": _op("showMetadef%s" % cap, "One %s" % label, one(cap), read, tag="metadefs"),
                "put": _op(
                    "updateMetadef%s" % cap,
                    "Replace (or rename) a %s" % label,
                    one(cap),
                    write,
                    tag="metadefs",
                    body=_body(JSON_BODY, obj),
                ),
                "delete": _op(
                    "deleteMetadef%s" % cap, "Delete a %s" % label, gone, (403, 404, 409, 429), tag="metadefs"
                ),
            },
        }

    paths: Json = {
        "/v2/metadefs/namespaces": {
            "get": _op(
                "listMetadefNamespaces",
                "Namespaces the caller may read (public ones and its project's)",
                {200: _json({"type": "object", "required": ["namespaces", "first", "schema"]}, "Namespaces")},
                (400, 404, 429),
                tag="metadefs",
                params=[
                    _query("limit", _INT64, "Page size (capped at api.max_page_size)"),
                    _query("marker", {"type": "string"}, "The last namespace of the previous page"),
                    _query("sort_key", {"type": "string"}, "namespace, created_at, updated_at, ..."),
                    _query("sort_dir", {"type": "string"}, "asc or desc"),
                    _query("visibility", {"type": "string"}, "public or private"),
                    _query("resource_types", {"type": "string"}, "Comma-separated resource type names"),
                ],
            ),
            "post": _op(
                "createMetadefNamespace",
                "Create a namespace with its contents (metadef rules: administrators)",
                made("Namespace", ("namespace",)),
                write,
                tag="metadefs",
                body=_body(JSON_BODY, obj),
            ),
        },
        "/v2/metadefs/namespaces/{namespace}": {
            "parameters": [ns_param],
            "get": _op(
                "showMetadefNamespace",
                "A namespace with its objects, properties, tags and resource type associations",
                one("Namespace", ("namespace",)),
                read,
                tag="metadefs",
                params=[_query("resource_type", {"type": "string"}, "Prefix property names as this association does")],
            ),
            "put": _op(
                "updateMetadefNamespace",
                "Replace a namespace's own fields (or rename it)",
                one("Namespace", ("namespace",)),
                write,
                tag="metadefs",
                body=_body(JSON_BODY, obj),
            ),
            "delete": _op(
                "deleteMetadefNamespace",
                "Delete a namespace and its contents",
                gone,
                (403, 404, 409, 429),
                tag="metadefs",
            ),
        },
        "/v2/metadefs/resource_types": {
            "get": _op(
                "listMetadefResourceTypes",
                "Every resource type",
                listing("resource_types", "Resource types"),
                (429,),
                tag="metadefs",
            ),
        },
        "/v2/metadefs/namespaces/{namespace}/resource_types": {
            "parameters": [ns_param],
            "get": _op(
                "listMetadefResourceTypeAssociations",
                "A namespace's resource type associations",
                listing("resource_type_associations", "Associations"),
                read,
                tag="metadefs",
            ),
            "post": _op(
                "createMetadefResourceTypeAssociation",
                "Associate a resource type with a namespace",
                made("Association"),
                write,
                tag="metadefs",
                body=_body(JSON_BODY, obj),
            ),
        },
        "/v2/metadefs/namespaces/{namespace}/resource_types/{name}": {
            "parameters": [ns_param, name_param],
            "delete": _op(
                "deleteMetadefResourceTypeAssociation",
                "Remove a resource type association",
                gone,
                (403, 404, 409, 429),
                tag="metadefs",
            ),
        },
        **crud("objects", "object"),
        **crud("properties", "property"),
        **crud("tags", "tag"),
    }
    tags = paths["/v2/metadefs/namespaces/{namespace}/tags"]
    tags["post"] = _op(
        "createMetadefTags",
        "Replace a namespace's tags (X-Openstack-Append: True adds to them)",
        made("Tags", ("tags",)),
        write,
        tag="metadefs",
        params=[_header("X-Openstack-Append", {"type": "string"}, "True: add to the tags instead of replacing them")],
        body=_body(JSON_BODY, obj),
    )
    one_tag = paths["/v2/metadefs/namespaces/{namespace}/tags/{name}"]
    one_tag["post"] = _op("createMetadefTag", "Add one tag", made("Tag"), write, tag="metadefs")
    tags["get"]["parameters"] = [
        _query("limit", {"type": "integer", "minimum": 0}, "At most this many tags (default: all)"),
        _query("marker", {"type": "string"}, "The tags after this one, by name"),
        _query("sort_key", {"type": "string", "enum": ["name", "created_at", "updated_at"]}, "Default created_at"),
        _query("sort_dir", {"type": "string", "enum": ["asc", "desc"]}, "Default desc (the newest first)"),
    ]
    tags["get"]["responses"]["400"] = {"$ref": "#/components/responses/E400"}  # a bad paging parameter
    paths["/v2/metadefs/namespaces/{namespace}/properties/{name}"]["get"]["parameters"] = [
        _query(
            "resource_type",
            {"type": "string"},
            "Name the property as this resource type's association shows it (with its prefix), as Glance does",
        )
    ]
    return paths


def document(disk_formats: Sequence[str], container_formats: Sequence[str]) -> Json:
    """The whole description (a new object each call)."""
    paths = {
        **_info_paths(),
        **_image_paths(),
        **_member_paths(),
        **_edge_paths(),
        **_cache_paths(),
        **_metadef_paths(),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Edge image appliance",
            "version": __version__,
            "description": "Glance v2-compatible image API (2.0 to 2.18) plus the appliance's /v2/edge operator "
            "routes. Errors carry Glance's shape {code, title, message}.",
        },
        "security": [{"token": []}, {"bearer": []}],
        "tags": [{"name": n} for n in ("images", "imports", "info", "cache", "edge", "sites", "metadefs")],
        "paths": _with_head(paths),
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-Auth-Token"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
            "schemas": _schemas(disk_formats, container_formats),
            "responses": _error_responses(),
        },
    }


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    formats = request.app[IMAGES].config.formats  # reloadable, as for /v2/schemas
    return web.json_response(document(formats.disk_formats, formats.container_formats))
