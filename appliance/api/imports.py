"""Import workflow handlers: stage, import, tasks, import info, URI check."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from appliance import wire
from appliance.api import schemas
from appliance.api.images import body_chunks, read_json
from appliance.api.keys import IMPORTS
from appliance.api.middleware import CONTEXT
from appliance.errors import BadRequest, UnsupportedMediaType
from appliance.model import Task

routes = web.RouteTableDef()


@routes.get("/v2/info/import")
async def import_info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "import-methods": {
                "description": "Import methods available.",
                "type": "array",
                "value": list(request.app[IMPORTS].enabled_methods),
            }
        }
    )


@routes.put("/v2/images/{image_id}/stage")
async def stage(request: web.Request) -> web.Response:
    if request.content_type != "application/octet-stream":
        raise UnsupportedMediaType(
            "Unsupported Content-Type %r for staged data; send application/octet-stream" % request.content_type
        )
    size = request.headers.get("x-openstack-image-size")
    try:
        length = request.content_length if size is None else wire.parse_int(size.strip(), "x-openstack-image-size")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    await request.app[IMPORTS].stage(request[CONTEXT], request.match_info["image_id"], body_chunks(request), length)
    return web.Response(status=204)


@routes.post("/v2/images/{image_id}/import")
async def import_image(request: web.Request) -> web.Response:
    body = await read_json(request)
    header_store = request.headers.get("X-Image-Meta-Store")
    if header_store is not None:
        # python-glanceclient sends `--store` as this header (Glance accepts it for imports too).
        if isinstance(body, dict) and ("stores" in body or body.get("all_stores")):
            raise BadRequest("Give the target store either in X-Image-Meta-Store or in the body, not both")
        if isinstance(body, dict):
            body = {**body, "stores": [header_store]}
    await request.app[IMPORTS].start(request[CONTEXT], request.match_info["image_id"], body)
    return web.Response(status=202)


def _task_json(request: web.Request, task: Task) -> dict[str, Any]:
    body = schemas.task_to_json(task)
    live = request.app[IMPORTS].progress(task.id)
    if live is not None:
        body["bytes_done"], body["bytes_total"] = live
    else:
        body["bytes_done"], body["bytes_total"] = task.bytes_done, task.bytes_total
    return body


@routes.get("/v2/images/{image_id}/tasks")
async def image_tasks(request: web.Request) -> web.Response:
    service = request.app[IMPORTS]
    tasks = await service.image_tasks(request[CONTEXT], request.match_info["image_id"])
    return web.json_response({"tasks": [_task_json(request, t) for t in tasks]})


@routes.get("/v2/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    tasks = await request.app[IMPORTS].list_tasks(request[CONTEXT])
    return web.json_response(
        {"tasks": [_task_json(request, t) for t in tasks], "first": "/v2/tasks", "schema": "/v2/schemas/tasks"}
    )


@routes.get("/v2/tasks/{task_id}")
async def show_task(request: web.Request) -> web.Response:
    task = await request.app[IMPORTS].get_task(request[CONTEXT], request.match_info["task_id"])
    return web.json_response(_task_json(request, task))


@routes.post("/v2/edge/check-uri")
async def check_uri(request: web.Request) -> web.Response:
    """Admin: the web-download filter's verdict on a URL, without fetching anything."""
    check = request.app[IMPORTS].uri_checker(request[CONTEXT])
    body = await read_json(request)
    uri = body.get("uri") if isinstance(body, dict) else None
    decision = await check(uri if isinstance(uri, str) else "")
    return web.json_response({"uri": uri, "allowed": decision.allowed, "reason": decision.reason})
