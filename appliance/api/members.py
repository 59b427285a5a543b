"""Image member handlers (Glance's /v2/images/{image_id}/members): parse, one service call, shape."""

from __future__ import annotations

from aiohttp import web

from appliance.api import schemas
from appliance.api.images import read_json
from appliance.api.keys import MEMBERS
from appliance.api.middleware import CONTEXT

routes = web.RouteTableDef()


@routes.get("/v2/images/{image_id}/members")
async def list_members(request: web.Request) -> web.Response:
    members = await request.app[MEMBERS].list(request[CONTEXT], request.match_info["image_id"])
    return web.json_response(schemas.members_to_json(members))


@routes.post("/v2/images/{image_id}/members")
async def create_member(request: web.Request) -> web.Response:
    body = await read_json(request)
    member = await request.app[MEMBERS].add(request[CONTEXT], request.match_info["image_id"], body)
    return web.json_response(schemas.member_to_json(member))  # 200, as Glance


@routes.get("/v2/images/{image_id}/members/{member_id}")
async def show_member(request: web.Request) -> web.Response:
    info = request.match_info
    member = await request.app[MEMBERS].get(request[CONTEXT], info["image_id"], info["member_id"])
    return web.json_response(schemas.member_to_json(member))


@routes.put("/v2/images/{image_id}/members/{member_id}")
async def update_member(request: web.Request) -> web.Response:
    info = request.match_info
    body = await read_json(request)
    member = await request.app[MEMBERS].update(request[CONTEXT], info["image_id"], info["member_id"], body)
    return web.json_response(schemas.member_to_json(member))


@routes.delete("/v2/images/{image_id}/members/{member_id}")
async def delete_member(request: web.Request) -> web.Response:
    info = request.match_info
    await request.app[MEMBERS].delete(request[CONTEXT], info["image_id"], info["member_id"])
    return web.Response(status=204)
