"""Writes at an edge to the hub's images with Keystone tokens: the edge makes them at the hub with
the caller's own token, answers what the hub answered and records the hub's word at once; with the
hub unreachable, 503 naming it and nothing changed. A hub and an edge as daemon processes, both
validating the session's real Keystone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Daemon, start_daemon, write_toml
from tests.hubproxy import HubProxy
from tests.integration.test_change_feed import HOURLY, leftovers
from tests.keystone import Keystone
from tests.waiting import eventually

SITE_TOKEN = "fw-dcn0-service-token"
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


@dataclass
class Pair:
    hub: Daemon
    edge: Daemon
    session: aiohttp.ClientSession
    owner: str  # a Keystone token of the images' owner
    other: str  # a Keystone token of a member of another project
    link: HubProxy  # the edge's way to the hub

    async def call(self, daemon: Daemon, token: str, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        headers = {"X-Auth-Token": token, "Accept": "application/json", **kw.pop("headers", {})}
        async with self.session.request(method, daemon.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "%s %s: %d %s" % (method, path, resp.status, body[:500])
            return await resp.json() if resp.content_type == "application/json" else body

    async def show(self, daemon: Daemon, image_id: str) -> dict[str, Any]:
        return dict(await self.call(daemon, self.owner, "GET", "/v2/images/%s" % image_id))


@contextlib.asynccontextmanager
async def keystone_sites(
    keystone: Keystone,
    tmp_path: Path,
    prefix: str,
    site_token: str,
    edge_hub: dict[str, Any],
    hub_extra: dict[str, Any] | None = None,
    **edge: Any,
) -> AsyncIterator[tuple[Daemon, HubProxy, Daemon]]:
    """A hub and an edge (daemon processes, service users PREFIX-hub and PREFIX-edge) validating
    `keystone`; the edge reaches the hub through a HubProxy, with `edge_hub` in its [hub] section
    and `edge`'s other sections; `hub_extra`: more sections of the hub's."""

    def section(user: str) -> dict[str, Any]:
        keystone.create_user(user, user + "-secret", "service", ["service"])
        return {
            "auth_url": keystone.auth_url,
            "username": user,
            "password": user + "-secret",
            "project_name": "service",
        }

    token = {"token": site_token, "user": "dcn0", "project": "sites", "roles": ["edge-site"]}
    started: list[Daemon] = []
    link: HubProxy | None = None
    try:
        hub = start_daemon(
            tmp_path / "hub",
            write_toml(
                tmp_path / "hub.toml",
                {
                    "site": {"name": "central", "role": "hub"},
                    "stores": {"default": "central", "central": {"path": "images"}},
                    "keystone": section(prefix + "-hub"),
                    "auth": {"tokens": [token]},
                    "scrubber": {"enabled": False},
                    **(hub_extra or {}),
                },
            ),
        )
        started.append(hub)
        link = await HubProxy(hub.url).start()
        edge_conf = {
            "site": {"name": "dcn0"},
            "keystone": section(prefix + "-edge"),
            "hub": {"url": link.url, "token": site_token, **edge_hub},
            "scrubber": {"enabled": False},
            **edge,
        }
        started.append(start_daemon(tmp_path / "dcn0", write_toml(tmp_path / "dcn0.toml", edge_conf)))
        yield hub, link, started[-1]
    finally:
        if link is not None:
            await link.close()
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


@pytest.fixture
async def pair(keystone: Keystone, tmp_path: Path) -> AsyncIterator[Pair]:
    keystone.create_user("fw-owner", "fw-owner-secret", "fw-alpha", ["member", "reader"])
    keystone.create_user("fw-other", "fw-other-secret", "fw-beta", ["member", "reader"])
    edge_hub = {"read_timeout": 5, "connect_timeout": 2, **HOURLY}
    async with (
        keystone_sites(keystone, tmp_path, "fw", SITE_TOKEN, edge_hub, cache={"min_free_bytes": 0}) as (
            hub,
            link,
            edge,
        ),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        yield Pair(
            hub,
            edge,
            session,
            keystone.token("fw-owner", "fw-owner-secret", "fw-alpha"),
            keystone.token("fw-other", "fw-other-secret", "fw-beta"),
            link,
        )


async def hub_image(pair: Pair, name: str, data: bytes) -> str:
    """An image the owner made at the hub, once the edge has its record."""
    body = {"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "community"}
    image_id = str((await pair.call(pair.hub, pair.owner, "POST", "/v2/images", 201, json=body))["id"])
    octets = {"Content-Type": "application/octet-stream"}
    await pair.call(pair.hub, pair.owner, "PUT", "/v2/images/%s/file" % image_id, 204, data=data, headers=octets)

    async def mirrored() -> bool:
        listed = await pair.call(pair.edge, pair.owner, "GET", "/v2/images")
        return image_id in [i["id"] for i in listed["images"]]

    await eventually(mirrored, "the edge to mirror %s" % name)
    return image_id


async def test_an_update_at_the_edge_is_made_at_the_hub_and_recorded_at_once(pair: Pair) -> None:
    image_id = await hub_image(pair, "golden", os.urandom(64 << 10))
    path = "/v2/images/%s" % image_id
    patch = [{"op": "replace", "path": "/name", "value": "golden-2"}, {"op": "add", "path": "/os_distro", "value": "x"}]
    answered = await pair.call(pair.edge, pair.owner, "PATCH", path, json=patch, headers=PATCH)
    assert answered["name"] == "golden-2" and answered["os_distro"] == "x"
    at_hub = await pair.show(pair.hub, image_id)
    assert at_hub["name"] == "golden-2" and at_hub["os_distro"] == "x"
    assert (await pair.show(pair.edge, image_id))["name"] == "golden-2"  # at once, not a round later
    # Tags and status the same way.
    await pair.call(pair.edge, pair.owner, "PUT", path + "/tags/gold", 204)
    await pair.call(pair.edge, pair.owner, "POST", path + "/actions/deactivate", 204)
    for daemon in (pair.hub, pair.edge):
        shown = await pair.show(daemon, image_id)
        assert shown["tags"] == ["gold"] and shown["status"] == "deactivated"
    await pair.call(pair.edge, pair.owner, "POST", path + "/actions/reactivate", 204)
    await pair.call(pair.edge, pair.owner, "DELETE", path + "/tags/gold", 204)
    for daemon in (pair.hub, pair.edge):
        shown = await pair.show(daemon, image_id)
        assert shown["tags"] == [] and shown["status"] == "active"
    # The hub's refusals are the caller's: a bad patch, a tag that is not there.
    bad = [{"op": "replace", "path": "/no_such_property", "value": "v"}]
    await pair.call(pair.edge, pair.owner, "PATCH", path, 409, json=bad, headers=PATCH)
    await pair.call(pair.edge, pair.owner, "DELETE", path + "/tags/none", 404)
    # Another project may not change it (its own token decides, not the site's).
    await pair.call(pair.edge, pair.other, "PATCH", path, 403, json=patch, headers=PATCH)
    assert (await pair.show(pair.hub, image_id))["name"] == "golden-2"


async def test_a_delete_at_the_edge_is_made_at_the_hub_and_leaves_no_byte_here(pair: Pair) -> None:
    data = os.urandom(256 << 10)
    image_id = await hub_image(pair, "doomed", data)
    path = "/v2/images/%s" % image_id
    assert await pair.call(pair.edge, pair.owner, "GET", path + "/file") == data  # cached at the edge
    assert leftovers(pair.edge, image_id)
    await pair.call(pair.edge, pair.owner, "DELETE", path, 204)
    await pair.call(pair.hub, pair.owner, "GET", path, 404)
    await pair.call(pair.edge, pair.owner, "GET", path, 404)
    assert not leftovers(pair.edge, image_id)


async def test_with_the_hub_down_an_edge_write_is_503_naming_it_and_changes_nothing(pair: Pair) -> None:
    image_id = await hub_image(pair, "steady", os.urandom(64 << 10))
    path = "/v2/images/%s" % image_id
    hub_url = pair.link.url  # the hub as the edge knows it
    pair.hub.stop()
    patch = [{"op": "replace", "path": "/name", "value": "never"}]
    for method, where, kw in (
        ("PATCH", path, {"json": patch, "headers": PATCH}),
        ("PUT", path + "/tags/t", {}),
        ("DELETE", path, {}),
    ):
        refused = await pair.call(pair.edge, pair.owner, method, where, 503, **kw)
        assert hub_url in refused["message"], refused
    shown = await pair.show(pair.edge, image_id)
    assert shown["name"] == "steady" and shown["tags"] == [] and shown["status"] == "active"


async def test_a_mirror_round_in_flight_does_not_undo_an_edge_write(pair: Pair) -> None:
    # The edge's link to the hub is slow: a mirror round that asked for a record before the
    # edge made a write at the hub gets its answer after it. That older answer must not bring a
    # deleted image back, nor an old name back, even for a round. Repeated.
    for i in range(3):
        image_id = await hub_image(pair, "race-%d" % i, os.urandom(1024))
        path = "/v2/images/%s" % image_id
        record_gets = pair.link.requests[("GET", path)]
        pair.link.rate = 1500  # bytes/s: a record takes about a second to come over the link
        await pair.call(
            pair.hub, pair.owner, "PATCH", path, json=[{"op": "add", "path": "/round", "value": str(i)}], headers=PATCH
        )

        async def fetching(before: int = record_gets, path: str = path) -> bool:
            return pair.link.requests[("GET", path)] > before

        await eventually(fetching, "the edge's feed round to ask for the record")
        if i % 2:  # a delete overtakes the round
            await pair.call(pair.edge, pair.owner, "DELETE", path, 204)
        else:  # an update overtakes it
            rename = [{"op": "replace", "path": "/name", "value": "renamed-%d" % i}]
            await pair.call(pair.edge, pair.owner, "PATCH", path, json=rename, headers=PATCH)
        deadline = time.monotonic() + 3  # the round's answer lands meanwhile, and a round or two more
        while time.monotonic() < deadline:
            listed = {
                i["id"]: i["name"] for i in (await pair.call(pair.edge, pair.owner, "GET", "/v2/images"))["images"]
            }
            if i % 2:
                assert image_id not in listed, "a deleted image came back at the edge"
            else:
                assert listed.get(image_id) == "renamed-%d" % i, "the edge showed %r" % listed.get(image_id)
            await asyncio.sleep(0.05)
        pair.link.rate = 0
