"""Glance's cache API (`/v2/cache`, python-glanceclient's cache-* commands) and the
appliance's cache view for operators (`/v2/edge/cache`). Admin only."""

from __future__ import annotations

from aiohttp import web

from appliance import policy
from appliance.api.keys import CACHE, IMAGES
from appliance.api.middleware import CONTEXT
from appliance.cache import CLEAR_TARGETS, ImageCache
from appliance.errors import BadRequest
from appliance.model import CacheEntry

routes = web.RouteTableDef()


def _check(request: web.Request, action: str) -> None:
    policy.enforce(request[CONTEXT], action)


@routes.get("/v2/cache")
async def list_cache(request: web.Request) -> web.Response:
    _check(request, "cache_list")
    cache = request.app[CACHE]
    return web.json_response({
        "cached_images": [_entry(e) for e in cache.entries()],
        "queued_images": [q.image_id for q in await cache.queued()],
    })


@routes.put("/v2/cache/{image_id}")
async def queue_image(request: web.Request) -> web.Response:
    _check(request, "cache_image")
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    await request.app[CACHE].queue(image)
    return web.Response(status=202)


@routes.delete("/v2/cache/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    cache = request.app[CACHE]
    # Glance removes the image from both; the clear-target header narrows it, as for DELETE /v2/cache.
    target = _clear_target(request)
    if target in ("cache", "both"):
        await cache.delete(image.id)
    if target in ("queue", "both"):
        await cache.dequeue(image.id)
    return web.Response(status=204)


def _clear_target(request: web.Request) -> str:
    target = request.headers.get("x-image-cache-clear-target", "both").strip().lower() or "both"
    if target not in CLEAR_TARGETS:
        raise BadRequest("x-image-cache-clear-target must be one of %s, got %r" % (", ".join(CLEAR_TARGETS), target))
    return target


@routes.delete("/v2/cache")
async def clear(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    # Absent means both; `both` is accepted too (Glance documents it but rejects it).
    await request.app[CACHE].clear(_clear_target(request))
    return web.Response(status=204)


@routes.post("/v2/cache/clean")
async def clean(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    files, size = await request.app[CACHE].clean()
    return web.json_response({"total_files_cleaned": files, "total_bytes_cleaned": size})


@routes.post("/v2/cache/prune")
async def prune(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    files, size = await request.app[CACHE].prune()
    return web.json_response({"total_files_pruned": files, "total_bytes_pruned": size})


@routes.get("/v2/edge/cache")
async def overview(request: web.Request) -> web.Response:
    """Everything an operator wants at once: figures, entries, the queue with its errors, fills."""
    _check(request, "cache_list")
    cache = request.app[CACHE]
    return web.json_response({
        **cache_summary(cache),
        "entries": [_entry(e) for e in cache.entries()],
        "queue": [
            {"image_id": q.image_id, "queued_at": q.queued_at, "attempts": q.attempts, "last_error": q.last_error,
             "next_attempt_at": q.next_attempt_at}
            for q in await cache.queued()
        ],
        "fills": [{"image_id": i, "bytes_done": done, "bytes_total": total} for i, (done, total) in cache.fills().items()],
    })


def _entry(e: CacheEntry) -> dict[str, object]:
    # Glance's shape (last_modified: when it was cached), plus cached_at under its own name.
    return {"image_id": e.image_id, "hits": e.hits, "last_accessed": e.last_accessed, "last_modified": e.cached_at,
            "cached_at": e.cached_at, "size": e.size}


def cache_summary(cache: ImageCache) -> dict[str, object]:
    conf = cache.config
    return {
        "enabled": cache.enabled,
        "max_size": conf.max_size,
        "used_bytes": cache.used_bytes(),
        "high_watermark": conf.high_watermark,
        "low_watermark": conf.low_watermark,
        "entries_count": len(cache.entries()),
        "fills_count": len(cache.fills()),
        "stats": cache.stats.as_dict(),
    }
