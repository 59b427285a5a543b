"""Glance's cache API (`/v2/cache`, python-glanceclient's cache-* commands) and the
appliance's cache view for operators (`/v2/edge/cache`). Admin only. With no cache (no hub, or
`[cache] enabled = false`) they answer as an empty cache that is off."""

from __future__ import annotations

from aiohttp import web

from appliance.api.keys import CACHE, IMAGES
from appliance.api.middleware import CONTEXT
from appliance.cache import CacheStats, ImageCache
from appliance.cacheadmin import CacheAdmin
from appliance.config import CacheConfig
from appliance.model import CacheEntry

routes = web.RouteTableDef()
CLEAR_TARGET_HEADER = "x-image-cache-clear-target"


def _admin(request: web.Request) -> CacheAdmin:
    return CacheAdmin(request.app[CACHE], request.app[IMAGES])


@routes.get("/v2/cache")
async def list_cache(request: web.Request) -> web.Response:
    entries, queued = await _admin(request).listing(request[CONTEXT])
    return web.json_response(
        {"cached_images": [_entry(e) for e in entries], "queued_images": [q.image_id for q in queued]}
    )


@routes.put("/v2/cache/{image_id}")
async def queue_image(request: web.Request) -> web.Response:
    await _admin(request).queue(request[CONTEXT], request.match_info["image_id"])
    return web.Response(status=202)


@routes.delete("/v2/cache/{image_id}")
async def delete_image(request: web.Request) -> web.Response:
    await _admin(request).remove(
        request[CONTEXT], request.match_info["image_id"], request.headers.get(CLEAR_TARGET_HEADER)
    )
    return web.Response(status=204)


@routes.delete("/v2/cache")
async def clear(request: web.Request) -> web.Response:
    await _admin(request).clear(request[CONTEXT], request.headers.get(CLEAR_TARGET_HEADER))
    return web.Response(status=204)


@routes.post("/v2/cache/clean")
async def clean(request: web.Request) -> web.Response:
    files, size = await _admin(request).clean(request[CONTEXT])
    return web.json_response({"total_files_cleaned": files, "total_bytes_cleaned": size})


@routes.post("/v2/cache/prune")
async def prune(request: web.Request) -> web.Response:
    files, size = await _admin(request).prune(request[CONTEXT])
    return web.json_response({"total_files_pruned": files, "total_bytes_pruned": size})


# Glance's legacy cache routes (cached_images.py's get/delete_cached_image(s) and
# get/queue/delete_queued_image(s)): answers in its shapes, `null` where it returns nothing.


@routes.get("/v2/cached_images")
async def legacy_cached(request: web.Request) -> web.Response:
    entries = await _admin(request).legacy_cached(request[CONTEXT])
    return web.json_response({"cached_images": [_entry(e) for e in entries]})


@routes.delete("/v2/cached_images/{image_id}")
async def legacy_uncache(request: web.Request) -> web.Response:
    await _admin(request).legacy_remove(request[CONTEXT], request.match_info["image_id"], "cache")
    return web.json_response(None)


@routes.delete("/v2/cached_images")
async def legacy_clear_cached(request: web.Request) -> web.Response:
    return web.json_response({"num_deleted": await _admin(request).legacy_clear(request[CONTEXT], "cache")})


@routes.get("/v2/queued_images")
async def legacy_queued(request: web.Request) -> web.Response:
    return web.json_response({"queued_images": await _admin(request).legacy_queued(request[CONTEXT])})


@routes.put("/v2/queued_images/{image_id}")
async def legacy_queue(request: web.Request) -> web.Response:
    await _admin(request).legacy_queue(request[CONTEXT], request.match_info["image_id"])
    return web.json_response(None)


@routes.delete("/v2/queued_images/{image_id}")
async def legacy_dequeue(request: web.Request) -> web.Response:
    await _admin(request).legacy_remove(request[CONTEXT], request.match_info["image_id"], "queue")
    return web.json_response(None)


@routes.delete("/v2/queued_images")
async def legacy_clear_queued(request: web.Request) -> web.Response:
    return web.json_response({"num_deleted": await _admin(request).legacy_clear(request[CONTEXT], "queue")})


@routes.get("/v2/edge/cache")
async def overview(request: web.Request) -> web.Response:
    """Everything an operator wants at once: figures, entries, the queue with its errors, fills."""
    cache = _admin(request).readable(request[CONTEXT])
    summary = cache_summary(cache, request.app[IMAGES].config.cache)  # the running config (reloads apply)
    if cache is None:
        return web.json_response({**summary, "entries": [], "queue": [], "fills": []})
    return web.json_response(
        {
            **summary,
            "entries": [_entry(e) for e in cache.entries()],
            "queue": [
                {
                    "image_id": q.image_id,
                    "queued_at": q.queued_at,
                    "attempts": q.attempts,
                    "last_error": q.last_error,
                    "next_attempt_at": q.next_attempt_at,
                }
                for q in await cache.queued()
            ],
            "fills": [
                {"image_id": i, "bytes_done": done, "bytes_total": total} for i, (done, total) in cache.fills().items()
            ],
        }
    )


def _entry(e: CacheEntry) -> dict[str, object]:
    # Glance's shape (last_modified: when it was cached), plus cached_at under its own name.
    return {
        "image_id": e.image_id,
        "hits": e.hits,
        "last_accessed": e.last_accessed,
        "last_modified": e.cached_at,
        "cached_at": e.cached_at,
        "size": e.size,
    }


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
