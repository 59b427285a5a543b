"""Metadata definition handlers (Glance's /v2/metadefs): parse, one service call, shape."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.api.images import read_json
from appliance.api.keys import CONFIG, METADEFS
from appliance.api.middleware import CONTEXT
from appliance.metadefs import (
    association_to_json,
    check_association,
    check_object,
    check_property,
    check_tag,
    namespace_href,
    object_to_json,
    property_to_json,
    tag_to_json,
)

routes = web.RouteTableDef()

NS = "/v2/metadefs/namespaces/{namespace}"


def _created(doc: Any, location: str | None = None) -> web.Response:
    headers = {"Location": location} if location else None
    return web.json_response(doc, status=201, headers=headers)


def _gone() -> web.Response:
    return web.Response(status=204)


def _ns(request: web.Request) -> str:
    return request.match_info["namespace"]


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
async def create_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].create_namespace(request[CONTEXT], await read_json(request))
    return _created(doc, namespace_href(doc["namespace"]))


@routes.get(NS)
async def show_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].show_namespace(request[CONTEXT], _ns(request), request.query.get("resource_type"))
    return web.json_response(doc)


@routes.put(NS)
async def update_namespace(request: web.Request) -> web.Response:
    doc = await request.app[METADEFS].update_namespace(request[CONTEXT], _ns(request), await read_json(request))
    return web.json_response(doc)


@routes.delete(NS)
async def delete_namespace(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_namespace(request[CONTEXT], _ns(request))
    return _gone()


# -- objects ----------------------------------------------------------------------------------------


@routes.get(NS + "/objects")
async def list_objects(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(request[CONTEXT], _ns(request), "object", "get_metadef_objects")
    return web.json_response({"objects": [object_to_json(i) for i in items], "schema": "v2/schemas/metadefs/objects"})


@routes.post(NS + "/objects")
async def create_object(request: web.Request) -> web.Response:
    name, body = check_object(await read_json(request))
    item = await request.app[METADEFS].add_item(
        request[CONTEXT], _ns(request), "object", name, body, "add_metadef_object"
    )
    doc = object_to_json(item, written=True)
    return _created(doc, doc["self"])


@routes.delete(NS + "/objects")
async def delete_objects(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_contents(request[CONTEXT], _ns(request), "object")
    return _gone()


@routes.get(NS + "/objects/{name}")
async def show_object(request: web.Request) -> web.Response:
    item = await request.app[METADEFS].get_item(
        request[CONTEXT], _ns(request), "object", request.match_info["name"], "get_metadef_object"
    )
    return web.json_response(object_to_json(item))


@routes.put(NS + "/objects/{name}")
async def update_object(request: web.Request) -> web.Response:
    name, body = check_object(await read_json(request))
    item = await request.app[METADEFS].update_item(
        request[CONTEXT], _ns(request), "object", request.match_info["name"], name, body, "modify_metadef_object"
    )
    return web.json_response(object_to_json(item, written=True))


@routes.delete(NS + "/objects/{name}")
async def delete_object(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_item(
        request[CONTEXT], _ns(request), "object", request.match_info["name"], "delete_metadef_object"
    )
    return _gone()


# -- properties -------------------------------------------------------------------------------------


@routes.get(NS + "/properties")
async def list_properties(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(request[CONTEXT], _ns(request), "property", "get_metadef_properties")
    return web.json_response({"properties": {i.name: i.body for i in items}})


@routes.post(NS + "/properties")
async def create_property(request: web.Request) -> web.Response:
    name, body = check_property(await read_json(request), "property", named=True)
    assert name is not None  # named=True requires it
    body = {"name": name, **body}  # Glance keeps a property's name in its body when it is made alone
    item = await request.app[METADEFS].add_item(
        request[CONTEXT], _ns(request), "property", name, body, "add_metadef_property"
    )
    return _created(property_to_json(item))


@routes.delete(NS + "/properties")
async def delete_properties(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_contents(request[CONTEXT], _ns(request), "property")
    return _gone()


@routes.get(NS + "/properties/{name}")
async def show_property(request: web.Request) -> web.Response:
    item = await request.app[METADEFS].get_item(
        request[CONTEXT], _ns(request), "property", request.match_info["name"], "get_metadef_property"
    )
    return web.json_response(property_to_json(item))


@routes.put(NS + "/properties/{name}")
async def update_property(request: web.Request) -> web.Response:
    name, body = check_property(await read_json(request), "property", named=True)
    assert name is not None
    body = {"name": name, **body}
    item = await request.app[METADEFS].update_item(
        request[CONTEXT], _ns(request), "property", request.match_info["name"], name, body, "modify_metadef_property"
    )
    return web.json_response(property_to_json(item))


@routes.delete(NS + "/properties/{name}")
async def delete_property(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_item(
        request[CONTEXT], _ns(request), "property", request.match_info["name"], "remove_metadef_property"
    )
    return _gone()


# -- tags -------------------------------------------------------------------------------------------


@routes.get(NS + "/tags")
async def list_tags(request: web.Request) -> web.Response:
    items = await request.app[METADEFS].list_items(request[CONTEXT], _ns(request), "tag", "get_metadef_tags")
    return web.json_response({"tags": [{"name": i.name} for i in items]})  # names only, as Glance lists them


@routes.post(NS + "/tags")
async def create_tags(request: web.Request) -> web.Response:
    # python-glanceclient's md-tag-create-multiple --append sends X-Openstack-Append: True.
    append = request.headers.get("X-Openstack-Append", "").strip().lower() in ("true", "1", "yes")
    items = await request.app[METADEFS].create_tags(
        request[CONTEXT], _ns(request), await read_json(request), append=append
    )
    return _created({"tags": [{"name": i.name} for i in items]})


@routes.delete(NS + "/tags")
async def delete_tags(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_contents(request[CONTEXT], _ns(request), "tag")
    return _gone()


@routes.post(NS + "/tags/{name}")
async def create_tag(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    check_tag({"name": name})
    item = await request.app[METADEFS].add_item(request[CONTEXT], _ns(request), "tag", name, {}, "add_metadef_tag")
    return _created(tag_to_json(item))


@routes.get(NS + "/tags/{name}")
async def show_tag(request: web.Request) -> web.Response:
    item = await request.app[METADEFS].get_item(
        request[CONTEXT], _ns(request), "tag", request.match_info["name"], "get_metadef_tag"
    )
    return web.json_response(tag_to_json(item))


@routes.put(NS + "/tags/{name}")
async def update_tag(request: web.Request) -> web.Response:
    name = check_tag(await read_json(request))
    item = await request.app[METADEFS].update_item(
        request[CONTEXT], _ns(request), "tag", request.match_info["name"], name, {}, "modify_metadef_tag"
    )
    return web.json_response(tag_to_json(item))


@routes.delete(NS + "/tags/{name}")
async def delete_tag(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_item(
        request[CONTEXT], _ns(request), "tag", request.match_info["name"], "delete_metadef_tag"
    )
    return _gone()


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
async def create_association(request: web.Request) -> web.Response:
    name, body = check_association(await read_json(request))
    item = await request.app[METADEFS].add_item(
        request[CONTEXT], _ns(request), "resource_type", name, body, "add_metadef_resource_type_association"
    )
    return _created(association_to_json(item))


@routes.delete(NS + "/resource_types/{name}")
async def delete_association(request: web.Request) -> web.Response:
    await request.app[METADEFS].delete_item(
        request[CONTEXT],
        _ns(request),
        "resource_type",
        request.match_info["name"],
        "remove_metadef_resource_type_association",
    )
    return _gone()
