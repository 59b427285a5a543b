"""The hub's sites API under /v2/edge/sites: thin handlers over SiteService."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance.api import schemas
from appliance.api.images import read_json
from appliance.api.keys import SITES
from appliance.api.middleware import CONTEXT
from appliance.model import Site

routes = web.RouteTableDef()


def _site_response(request: web.Request, site: Site) -> web.Response:
    service = request.app[SITES]
    return web.json_response(schemas.site_to_json(site, service.online(site), service.pulls(site.name)))


async def _optional_json(request: web.Request) -> Any:
    # A heartbeat may carry no figures at all.
    return await read_json(request) if request.body_exists else None


@routes.get("/v2/edge/sites")
async def list_sites(request: web.Request) -> web.Response:
    service = request.app[SITES]
    sites = await service.list(request[CONTEXT])
    return web.json_response(
        {"sites": [schemas.site_to_json(s, service.online(s), service.pulls(s.name)) for s in sites]}
    )


@routes.post("/v2/edge/sites")
async def register_site(request: web.Request) -> web.Response:
    return _site_response(request, await request.app[SITES].register(request[CONTEXT], await read_json(request)))


@routes.get("/v2/edge/sites/{name}")
async def show_site(request: web.Request) -> web.Response:
    return _site_response(request, await request.app[SITES].get(request[CONTEXT], request.match_info["name"]))


@routes.delete("/v2/edge/sites/{name}")
async def delete_site(request: web.Request) -> web.Response:
    await request.app[SITES].delete(request[CONTEXT], request.match_info["name"])
    return web.Response(status=204)


@routes.post("/v2/edge/sites/{name}/heartbeat")
async def heartbeat(request: web.Request) -> web.Response:
    site = await request.app[SITES].heartbeat(
        request[CONTEXT], request.match_info["name"], await _optional_json(request)
    )
    return _site_response(request, site)


@routes.get("/v2/edge/sites/{name}/assignments")
async def assignments(request: web.Request) -> web.Response:
    found = await request.app[SITES].assignments(request[CONTEXT], request.match_info["name"])
    return web.json_response({"assignments": [schemas.assignment_to_json(a) for a in found]})


@routes.post("/v2/edge/sites/{name}/assignments/{image_id}")
async def report(request: web.Request) -> web.Response:
    await request.app[SITES].report(
        request[CONTEXT], request.match_info["name"], request.match_info["image_id"], await read_json(request)
    )
    return web.Response(status=204)


@routes.get("/v2/edge/changes")
async def changes(request: web.Request) -> web.Response:
    query = request.query
    page = await request.app[SITES].changes(request[CONTEXT], query.get("since"), query.get("limit"))
    return web.json_response(schemas.change_page_to_json(page))
