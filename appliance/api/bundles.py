"""Bundle handlers under /v2/edge (admin): `edge-appliance bundle import` streams a bundle here."""

from __future__ import annotations

import contextlib

from aiohttp import web

from appliance.api.images import BODY_BROKE, body_chunks
from appliance.api.keys import BUNDLES
from appliance.api.middleware import CONTEXT
from appliance.errors import ApplianceError, UnsupportedMediaType

routes = web.RouteTableDef()

BUNDLE_MEDIA_TYPES = ("application/octet-stream", "application/zstd")


@routes.post("/v2/edge/bundles")
async def import_bundle(request: web.Request) -> web.Response:
    """The body is the bundle; `?store=NAME` picks the store. Answers the import report (every
    image imported, skipped or failed, and why); a bundle refused as a whole (not a bundle,
    unsigned where signatures are required) is an error and imports nothing."""
    bundles = request.app[BUNDLES]
    bundles.authorize(request[CONTEXT])  # before a byte of the body is read, and nothing drained
    if request.content_type not in BUNDLE_MEDIA_TYPES:
        raise UnsupportedMediaType(
            "Unsupported Content-Type %r for a bundle; send application/octet-stream" % request.content_type
        )
    try:
        report = await bundles.import_stream(request[CONTEXT], body_chunks(request), request.query.get("store"))
    except ApplianceError:
        # The client is still sending: read the rest so it gets to see the answer.
        with contextlib.suppress(*BODY_BROKE):  # unless it has gone: the refusal stands
            async for _ in request.content.iter_chunked(1 << 20):
                pass
        raise
    return web.json_response(report.to_json())
