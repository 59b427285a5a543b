"""The add-location API (POST /v2/images/ID/locations) at an edge for a hub image: made at the
hub with the caller's Keystone token, the hub's record (active, with the location's size) taken
at once. A hub and an edge validating the session's real Keystone, a real web server."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp

from tests.clients.test_glance_import import WebRoot, web  # noqa: F401  (the fixture)
from tests.integration.test_edge_writes_keystone import keystone_sites
from tests.integration.test_hub_link import FAST
from tests.keystone import Keystone
from tests.waiting import eventually

SITE_TOKEN = "loc-dcn0-service-token"


async def test_a_location_added_at_the_edge_is_added_at_the_hub(
    keystone: Keystone,
    tmp_path: Path,
    web: WebRoot,  # noqa: F811
) -> None:
    keystone.create_user("loc-owner", "loc-owner-secret", "loc-alpha", ["member", "reader"])
    owner = keystone.token("loc-owner", "loc-owner-secret", "loc-alpha")
    data = os.urandom(150_000)
    url = web.add("disk.raw", data)
    hub_extra = {"import": {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [web.port]}}}
    headers = {"X-Auth-Token": owner, "Accept": "application/json"}
    async with (
        keystone_sites(keystone, tmp_path, "loc", SITE_TOKEN, FAST, hub_extra=hub_extra) as (hub, _link, edge),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), headers=headers) as session,
    ):
        body = {"name": "by-url", "disk_format": "raw", "container_format": "bare", "visibility": "community"}
        async with session.post(hub.url + "/v2/images", json=body) as resp:
            assert resp.status == 201
            image_id = (await resp.json())["id"]
        path = "/v2/images/%s" % image_id

        async def mirrored() -> bool:
            async with session.get(edge.url + path) as resp:
                return resp.status == 200

        await eventually(mirrored, "the edge to know the queued hub image")
        async with session.post(edge.url + path + "/locations", json={"url": url}) as resp:
            assert resp.status == 202, await resp.text()
        async with session.get(edge.url + path) as resp:  # at once: the hub's record, taken
            at_edge = await resp.json()
        assert (at_edge["status"], at_edge["size"]) == ("active", len(data)), at_edge
        async with session.get(hub.url + path) as resp:
            assert (await resp.json())["status"] == "active"
        async with session.post(edge.url + path + "/locations", json={"url": url}) as resp:
            assert resp.status == 409, await resp.text()  # the hub's: no longer queued
        async with session.get(edge.url + path + "/file") as resp:
            assert resp.status == 200 and await resp.read() == data
