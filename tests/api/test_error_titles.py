"""An error's title is its status code's reason phrase (Glance's spelling), whatever class raised it."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web

from appliance.api.middleware import error_middleware
from appliance.digest import ChecksumMismatch
from appliance.errors import (
    ApplianceError,
    HubUnreachable,
    RangeNotSatisfiable,
    StorageFull,
    StoreReadOnly,
    TooLarge,
    UpstreamUnavailable,
)
from appliance.hub.client import HubRejected


@pytest.mark.parametrize(
    "error, status, title",
    [
        (HubRejected("the hub refused: 400"), 500, "Internal Server Error"),  # was "500 Bad Gateway"
        (ChecksumMismatch("size 3, expected 4"), 500, "Internal Server Error"),  # was "500 Checksum Mismatch"
        (StoreReadOnly("store local is read-only"), 409, "Conflict"),  # was "409 Store Read-Only"
        (TooLarge("too big"), 413, "Request Entity Too Large"),
        (RangeNotSatisfiable("bytes=9-"), 416, "Requested Range Not Satisfiable"),
        (UpstreamUnavailable("hub down"), 502, "Bad Gateway"),
        (HubUnreachable("hub down, not cached"), 503, "Service Unavailable"),
        (StorageFull("no room"), 507, "Insufficient Storage"),
    ],
)
@pytest.mark.parametrize("accept", ["application/json", "text/plain"])
async def test_the_title_comes_from_the_status(
    aiohttp_client: Any, error: ApplianceError, status: int, title: str, accept: str
) -> None:
    async def fail(request: web.Request) -> web.Response:
        raise error

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/v2/images/x", fail)
    client = await aiohttp_client(app)
    resp = await client.get("/v2/images/x", headers={"Accept": accept})
    assert resp.status == status
    if accept == "application/json":
        assert await resp.json() == {"code": "%d %s" % (status, title), "title": title, "message": str(error)}
    else:
        assert (await resp.text()).startswith("%d %s\n\n%s" % (status, title, error))
