"""Glance's cache API (`/v2/cache`, python-glanceclient's cache-* commands) and the
appliance's cache view for operators (`/v2/edge/cache`). Admin only. With no cache (no hub, or
`[cache] enabled = false`) they answer as an empty cache that is off."""

from __future__ import annotations

from aiohttp import web

from appliance import policy
from appliance.api.keys import CACHE, IMAGES
from appliance.api.middleware import CONTEXT
from appliance.cache import CLEAR_TARGETS, CacheStats, ImageCache, check_queueable
from appliance.config import CacheConfig
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
        "cached_images": [_entry(e) for e in cache.entries()] if cache is not None else [],
        "queued_images": [q.image_id for q in await cache.queued()] if cache is not None else [],
    })


@routes.put("/v2/cache/{image_id}")
async def queue_image(request: web.Request) -> web.Response:
    _check(request, "cache_image")
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    cache = request.app[CACHE]
    if cache is not None:
        await cache.queue(image)
    else:
        check_queueable(image)
    return web.Response(status=202)


@routes.delete("/v2/cache/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    image = await request.app[IMAGES].get(request[CONTEXT], request.match_info["image_id"])
    cache = request.app[CACHE]
    # Glance removes the image from both; the clear-target header narrows it, as for DELETE /v2/cache.
    target = _clear_target(request)
    if cache is not None and target in ("cache", "both"):
        await cache.delete(image.id)
    if cache is not None and target in ("queue", "both"):
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
    target = _clear_target(request)
    cache = request.app[CACHE]
    if cache is not None:
        await cache.clear(target)
    return web.Response(status=204)


@routes.post("/v2/cache/clean")
async def clean(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    cache = request.app[CACHE]
    files, size = await cache.clean() if cache is not None else (0, 0)
    return web.json_response({"total_files_cleaned": files, "total_bytes_cleaned": size})


@routes.post("/v2/cache/prune")
async def prune(request: web.Request) -> web.Response:
    _check(request, "cache_delete")
    cache = request.app[CACHE]
    files, size = await cache.prune() if cache is not None else (0, 0)
    return web.json_response({"total_files_pruned": files, "total_bytes_pruned": size})


@routes.get("/v2/edge/cache")
async def overview(request: web.Request) -> web.Response:
    """Everything an operator wants at once: figures, entries, the queue with its errors, fills."""
    _check(request, "cache_list")
    cache = request.app[CACHE]
    summary = cache_summary(cache, request.app[IMAGES].config.cache)  # the running config (reloads apply)
    if cache is None:
        return web.json_response({**summary, "entries": [], "queue": [], "fills": []})
    return web.json_response({
        **summary,
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


def cache_summary(cache: ImageCache | None, config: CacheConfig) -> dict[str, object]:
    """The figures; `config` (the running [cache] section) stands in when there is no cache."""
    conf = cache.config if cache is not None else config
    return {
        "enabled": cache is not None,
        "max_size": conf.max_size,
        "used_bytes": cache.used_bytes() if cache is not None else 0,
        "high_watermark": conf.high_watermark,
        "low_watermark": conf.low_watermark,
        "entries_count": len(cache.entries()) if cache is not None else 0,
        "fills_count": len(cache.fills()) if cache is not None else 0,
        "stats": (cache.stats if cache is not None else CacheStats()).as_dict(),
    }
