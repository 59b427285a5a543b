"""Metadata definition handlers (Glance's /v2/metadefs): parse, one service call, shape.

Objects, properties and tags share their handlers (`_Items` says what differs: the catalog kind,
the policy rules, how a body is read and how an item is shown). At an edge every write goes to the
hub with the caller's token (`_write`): the hub's answer is the client's."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from appliance.api.images import read_json
from appliance.api.keys import CONFIG, METADEFS
from appliance.api.middleware import CONTEXT
from appliance.metadefschema import Json, check_association, check_object, check_property, check_tag
from appliance.metadefshape import (
    association_to_json,
    namespace_href,
    object_to_json,
    property_to_json,
    tag_to_json,
)
from appliance.model import MetadefItem

routes = web.RouteTableDef()

NS = "/v2/metadefs/namespaces/{namespace}"
Handler = Callable[[web.Request], Awaitable[web.Response]]
# Glance's metadefs API answers every create 201, every update 200 and every delete 204.
WRITE_STATUS = {"POST": 201, "PUT": 200, "DELETE": 204}


def _created(doc: Any, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(doc, status=201, headers=headers)


def _gone() -> web.Response:
    return web.Response(status=204)


def _ns(request: web.Request) -> str:
    return request.match_info["namespace"]


def _write(handler: Handler) -> Handler:
    """A write handler that, at an edge, is made at the hub instead (the caller's token, the hub's
    rules and answer); the edge's mirror of the namespace follows at once."""

    @functools.wraps(handler)
    async def write(request: web.Request) -> web.Response:
        service = request.app[METADEFS]
        if not service.mirrors_hub:
            return await handler(request)
        body = await read_json(request) if request.body_exists else None
        # python-glanceclient's md-tag-create-multiple --append sends X-Openstack-Append: True.
        append = request.headers.get("X-Openstack-Append")
        doc = await service.write_at_hub(
            request[CONTEXT],
            request.method,
            request.rel_url.raw_path_qs,
            body,
            namespace=request.match_info.get("namespace"),
            headers={"X-Openstack-Append": append} if append is not None else {},
        )
        status = WRITE_STATUS[request.method]
        if status == 204:
            return _gone()
        location = None
        if status == 201 and isinstance(doc, dict):
            location = doc.get("self") or (namespace_href(doc["namespace"]) if "namespace" in doc else None)
        return web.json_response(doc, status=status, headers={"Location": location} if location else None)

    return write


# -- namespaces -----------------------------------------------------------------------------------


@routes.get("/v2/metadefs/namespaces")
async def list_namespaces(request: web.Request) -> web.Response:
    api = request.app[CONFIG].api
    params = {k: request.query[k] for k in request.query}
    doc = await request.app[METADEFS].list_namespaces(
        request[CONTEXT], params, api.max_page_size, api.default_page_size
    )
    return web.json_response(doc)


@routes.post("/v2/metadefs/namespaces")
@_write
async def create_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].create_namespace(request[CONTEXT], await read_json(request))
    return _created(doc, namespace_href(doc["namespace"]))


@routes.get(NS)
async def show_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].show_namespace(request[CONTEXT], _ns(request), request.query.get("resource_type"))
    return web.json_response(doc)


@routes.put(NS)
@_write
async def update_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].update_namespace(request[CONTEXT], _ns(request), await read_json(request))
    return web.json_response(doc)


@routes.delete(NS)
@_write
async def delete_namespace(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_namespace(request[CONTEXT], _ns(request))
    return _gone()


# -- objects, properties, tags -------------------------------------------------------------------


async def _read_object(request: web.Request) -> tuple[str, Json]:
    return check_object(await read_json(request))


async def _read_property(request: web.Request) -> tuple[str, Json]:
    name, body = check_property(await read_json(request), "property", named=True)
    assert name is not None  # named=True requires it
    return name, {"name": name, **body}  # Glance keeps a property's name in its body when it is made alone


async def _read_tag(request: web.Request) -> tuple[str, Json]:
    return check_tag(await read_json(request)), {}


@dataclass(frozen=True)
class _Items:
    """What differs between the objects, properties and tags of a namespace."""

    kind: str  # the catalog's kind
    plural: str  # the path segment
    read: Callable[[web.Request], Awaitable[tuple[str, Json]]]  # a create or update body
    shown: Callable[[MetadefItem], Json]  # GET of one item
    written: Callable[[MetadefItem], Json]  # the answer to a create or an update
    delete_verb: str = "delete"  # Glance's properties are removed (remove_metadef_property)

    def rule(self, verb: str) -> str:
        """Glance's policy rule for `verb` (get, add, modify, delete) on one item."""
        return "%s_metadef_%s" % (self.delete_verb if verb == "delete" else verb, self.kind)


OBJECTS = _Items("object", "objects", _read_object, object_to_json, functools.partial(object_to_json, written=True))
PROPERTIES = _Items("property", "properties", _read_property, property_to_json, property_to_json, "remove")
TAGS = _Items("tag", "tags", _read_tag, tag_to_json, tag_to_json)


def _item_routes(items: _Items) -> None:
    """POST (objects, properties) and DELETE of the collection; GET, PUT, DELETE of one item."""
    collection, one = "%s/%s" % (NS, items.plural), "%s/%s/{name}" % (NS, items.plural)

    async def create(request: web.Request) -> web.Response:
        name, body = await items.read(request)
        item = await request.app[METADEFS].add_item(
            request[CONTEXT], _ns(request), items.kind, name, body, items.rule("add")
        )
        doc = items.written(item)
        return _created(doc, doc.get("self"))

    async def delete_all(request: web.Request) -> web.Response:
        await request.app[METADEFS].delete_contents(request[CONTEXT], _ns(request), items.kind)
        return _gone()

    async def show(request: web.Request) -> web.Response:
        item = await request.app[METADEFS].get_item(
            request[CONTEXT],
            _ns(request),
            items.kind,
            request.match_info["name"],
            items.rule("get"),
            resource_type=request.query.get("resource_type") if items.kind == "property" else None,
        )
        return web.json_response(items.shown(item))

    async def update(request: web.Request) -> web.Response:
        name, body = await items.read(request)
        item = await request.app[METADEFS].update_item(
            request[CONTEXT], _ns(request), items.kind, request.match_info["name"], name, body, items.rule("modify")
        )
        return web.json_response(items.written(item))

    async def delete(request: web.Request) -> web.Response:
        await request.app[METADEFS].delete_item(
            request[CONTEXT], _ns(request), items.kind, request.match_info["name"], items.rule("delete")
        )
        return _gone()

    if items.kind != "tag":  # a tag is made by its name in the path, and tags by a list (below)
        routes.post(collection)(_write(create))
    routes.delete(collection)(_write(delete_all))
    routes.get(one)(show)
    routes.put(one)(_write(update))
    routes.delete(one)(_write(delete))


for _items in (OBJECTS, PROPERTIES, TAGS):
    _item_routes(_items)


@routes.get(NS + "/objects")
async def list_objects(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(request[CONTEXT], _ns(request), "object", "get_metadef_objects")
    return web.json_response({"objects": [object_to_json(i) for i in items], "schema": "v2/schemas/metadefs/objects"})


@routes.get(NS + "/properties")
async def list_properties(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(request[CONTEXT], _ns(request), "property", "get_metadef_properties")
    return web.json_response({"properties": {i.name: i.body for i in items}})


@routes.get(NS + "/tags")
async def list_tags(request: web.Request) -> web.Response:
    params = {k: request.query[k] for k in request.query}
    items = await request.app[METADEFS].list_tags(request[CONTEXT], _ns(request), params)
    return web.json_response({"tags": [{"name": i.name} for i in items]})  # names only, as Glance lists them


@routes.post(NS + "/tags")
@_write
async def create_tags(request: web.Request) -> web.Response:
    # python-glanceclient's md-tag-create-multiple --append sends X-Openstack-Append: True.
    append = request.headers.get("X-Openstack-Append", "").strip().lower() in ("true", "1", "yes")
    items = await request.app[METADEFS].create_tags(
        request[CONTEXT], _ns(request), await read_json(request), append=append
    )
    return _created({"tags": [{"name": i.name} for i in items]})


@routes.post(NS + "/tags/{name}")
@_write
async def create_tag(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    check_tag({"name": name})
    item = await request.app[METADEFS].add_item(request[CONTEXT], _ns(request), "tag", name, {}, "add_metadef_tag")
    return _created(tag_to_json(item))


# -- resource types ---------------------------------------------------------------------------------


@routes.get("/v2/metadefs/resource_types")
async def list_resource_types(request: web.Request) -> web.Response:
    types = await request.app[METADEFS].resource_types(request[CONTEXT])
    return web.json_response(
        {"resource_types": [{"name": t.name, "created_at": t.created_at, "updated_at": t.updated_at} for t in types]}
    )


@routes.get(NS + "/resource_types")
async def list_associations(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(
        request[CONTEXT], _ns(request), "resource_type", "get_metadef_resource_type"
    )
    return web.json_response({"resource_type_associations": [association_to_json(i) for i in items]})


@routes.post(NS + "/resource_types")
@_write
async def create_association(request: web.Request) -> web.Response:
    name, body = check_association(await read_json(request))
    item = await request.app[METADEFS].add_item(
        request[CONTEXT], _ns(request), "resource_type", name, body, "add_metadef_resource_type_association"
    )
    return _created(association_to_json(item))


@routes.delete(NS + "/resource_types/{name}")
@_write
async def delete_association(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_item(
        request[CONTEXT],
        _ns(request),
        "resource_type",
        request.match_info["name"],
        "remove_metadef_resource_type_association",
    )
    return _gone()
