"""Appliance-only operator endpoints under /v2/edge: status summary and events (admin), and who
the caller is (anyone the daemon knows)."""

from __future__ import annotations

import time

from aiohttp import web

from appliance import __version__, wire
from appliance.api import schemas
from appliance.api.cache import cache_summary
from appliance.api.keys import CACHE, CONFIG, EVENTS, HUB, IMAGES, IMPORTS, METRICS, SITES, STARTED
from appliance.api.middleware import CONTEXT
from appliance.errors import BadRequest
from appliance.looplag import LoopLag

routes = web.RouteTableDef()


@routes.get("/v2/edge/status")
async def status(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    images = request.app[IMAGES]
    catalog_counts = await images.site_counts(request[CONTEXT])
    hub = request.app[HUB]
    return web.json_response(
        {
            "site": {"name": config.site.name, "role": config.site.role},
            "version": __version__,
            "uptime_seconds": int(time.monotonic() - request.app[STARTED]),
            "hub": hub.status()
            if hub is not None
            else {"configured": False, "state": "none", "last_sync": None, "last_error": None},
            "cache": cache_summary(request.app[CACHE], config.cache) if request.app[CACHE] is not None else None,
            "stores": [
                schemas.store_usage_to_json(store.name, store.description, store.name == images.default_store, usage)
                for store, usage in await images.stores_info()
            ],
            "images": catalog_counts["images"],
            "tasks": catalog_counts["tasks"],
            "imports_running": request.app[IMPORTS].running_count(),
            "event_loop_lag": _loop_lag(request.app[METRICS].loop_lag.current()),
        }
    )


def _loop_lag(lag: LoopLag) -> dict[str, float]:
    return {"latest_seconds": round(lag.latest, 4), "max_seconds": round(lag.max, 4), "window_seconds": lag.window}


@routes.get("/v2/edge/events")
async def events(request: web.Request) -> web.Response:
    event_log = request.app[EVENTS].for_operator(request[CONTEXT])
    try:
        since = wire.parse_int(request.query.get("since", "0"), "since")
        limit = wire.parse_int(request.query.get("limit", "500"), "limit")
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    found = event_log.since(since, max(1, min(limit, 2000)))
    return web.json_response(
        {
            "events": [
                {"seq": e.seq, "time": e.time, "level": e.level, "source": e.source, "message": e.message}
                for e in found
            ]
        }
    )


@routes.get("/v2/edge/whoami")
async def whoami(request: web.Request) -> web.Response:
    return web.json_response(request.app[SITES].whoami(request[CONTEXT]))


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Gauges that mirror state are refreshed at scrape time."""
    m = request.app[METRICS]
    counts = await request.app[IMAGES].counts()
    for state in ("pending", "processing", "success", "failure"):
        m.tasks.labels(state).set(counts["tasks"].get(state, 0))
    for status, n in counts["images"].items():
        m.images.labels(status).set(n)
    m.imports_running.set(request.app[IMPORTS].running_count())
    cache = request.app[CACHE]
    m.cache_size.set(cache.used_bytes() if cache is not None else 0)
    for store, usage in await request.app[IMAGES].stores_info():
        m.store_total.labels(store.name).set(usage.total_bytes)
        m.store_free.labels(store.name).set(usage.free_bytes)
        m.store_used.labels(store.name).set(usage.used_bytes)
        m.store_read_only.labels(store.name).set(1 if usage.read_only else 0)
    return web.Response(body=m.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})
