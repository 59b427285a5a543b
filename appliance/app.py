"""build_app(services) → web.Application: routes, middleware, AppKeys. No background tasks."""

from __future__ import annotations

import time

from aiohttp import web

from appliance.api import bundles, cache, edge, images, imports, info, members, metadefs, openapi, sites
from appliance.api.keys import (
    BUNDLES,
    CACHE,
    CONFIG,
    EVENTS,
    HUB,
    IMAGES,
    IMPORTS,
    MEMBERS,
    METADEFS,
    METRICS,
    SITES,
    STARTED,
)
from appliance.api.middleware import auth_middleware, error_middleware
from appliance.services import Services

# Socket read buffer per request: big reads keep the per-chunk cost of uploads low.
READ_BUFSIZE = 1 << 22


def build_app(services: Services) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware(services.auth)],
        client_max_size=services.config.api.max_json_bytes,
        handler_args={"read_bufsize": READ_BUFSIZE},
    )
    services.metrics.install(app)
    app[CONFIG] = services.config
    app[IMAGES] = services.images
    app[MEMBERS] = services.members
    app[METADEFS] = services.metadefs
    app[CACHE] = services.cache
    app[HUB] = services.hub
    app[IMPORTS] = services.imports
    app[EVENTS] = services.events
    app[METRICS] = services.metrics
    app[SITES] = services.sites
    app[BUNDLES] = services.bundles
    app[STARTED] = time.monotonic()
    app.add_routes(info.routes)
    app.add_routes(images.routes)
    app.add_routes(members.routes)
    app.add_routes(metadefs.routes)
    app.add_routes(imports.routes)
    app.add_routes(edge.routes)
    app.add_routes(sites.routes)
    app.add_routes(cache.routes)
    app.add_routes(bundles.routes)
    app.add_routes(openapi.routes)
    return app
