"""Prometheus metrics, on a registry of the daemon's own (no module globals)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from appliance.looplag import LoopLagMonitor

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "appliance_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "appliance_http_request_duration_seconds",
            "Time to the response headers, by route",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.bytes_served = Counter(
            "appliance_bytes_served_total", "Image bytes sent to clients, by source", ["source"], registry=r
        )
        self.bytes_received = Counter(
            "appliance_bytes_received_total", "Image bytes received, by kind", ["kind"], registry=r
        )
        for source in ("store", "cache", "upstream"):
            self.bytes_served.labels(source)
        self.cache_hits = Counter("appliance_cache_hits_total", "Downloads served from the cache", registry=r)
        self.cache_misses = Counter("appliance_cache_misses_total", "Downloads that missed the cache", registry=r)
        self.cache_evictions = Counter("appliance_cache_evictions_total", "Cache entries evicted", registry=r)
        self.hub_bytes = Counter("appliance_upstream_bytes_total", "Image bytes fetched from the hub", registry=r)
        self.cache_size = Gauge(
            "appliance_cache_size_bytes", "Bytes held by the cache (0: no cache on this site)", registry=r
        )
        self.tasks = Gauge("appliance_import_tasks", "Import tasks by state", ["state"], registry=r)
        self.images = Gauge("appliance_images", "Images by status", ["status"], registry=r)
        self.plugin_seconds = Histogram(
            "appliance_import_plugin_duration_seconds",
            "Import plugin run time",
            ["plugin"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.imports_running = Gauge("appliance_imports_running", "Imports in progress", registry=r)
        self.hub_up = Gauge(
            "appliance_hub_link_up", "1 if the hub answered the last sync (0: down or none)", registry=r
        )
        self.hub_last_sync = Gauge(
            "appliance_hub_last_sync_timestamp_seconds",
            "Unix time of the last successful hub sync (0: never)",
            registry=r,
        )
        self.store_total = Gauge(
            "appliance_store_capacity_bytes", "Filesystem size under each store", ["store"], registry=r
        )
        self.store_free = Gauge("appliance_store_free_bytes", "Free bytes under each store", ["store"], registry=r)
        self.store_used = Gauge(
            "appliance_store_used_bytes", "Bytes of image files in each store", ["store"], registry=r
        )
        self.store_read_only = Gauge(
            "appliance_store_read_only", "1 if the store refuses writes", ["store"], registry=r
        )
        self.scrub_checked = Counter(
            "appliance_scrub_checked_total", "Image copies re-hashed by the scrubber", registry=r
        )
        self.scrub_mismatches = Counter(
            "appliance_scrub_mismatches_total", "Copies quarantined after a hash mismatch", registry=r
        )
        self.loop_lag = LoopLagMonitor(r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def install(self, app: web.Application) -> None:
        """Count every response when its headers go out: FileResponse settles on 200 or 206
        only then, so a middleware would see the wrong status."""
        app.middlewares.insert(0, self._stamp)
        app.on_response_prepare.append(self._record)

    @web.middleware
    async def _stamp(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        request[STARTED] = time.perf_counter()
        return await handler(request)

    async def _record(self, request: web.Request, response: web.StreamResponse) -> None:
        # Label by route template, never by raw path: ids would explode the cardinality.
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        started = request.get(STARTED)
        if started is not None:
            self.latency.labels(route, request.method).observe(time.perf_counter() - started)
        self.requests.labels(route, request.method, str(response.status)).inc()


STARTED = web.RequestKey("metrics_started", float)
