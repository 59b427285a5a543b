"""Metadata definition changes made at an edge with Keystone tokens: the edge makes them at the hub
with the caller's own token (the hub's rules decide, its answer is the client's) and mirrors the
namespace at once. A hub and an edge as daemon processes validating the session's real Keystone;
the edge reaches the hub through a relay that can slow the link."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import VENV_BIN, Daemon
from tests.hubproxy import HubProxy
from tests.integration.test_edge_writes_keystone import keystone_sites
from tests.integration.test_hub_link import FAST
from tests.keystone import Keystone
from tests.waiting import eventually

SITE_TOKEN = "md-dcn0-service-token"
NS = "/v2/metadefs/namespaces"
ADMIN_PASSWORD = "md-admin-secret"


@dataclass
class Pair:
    hub: Daemon
    edge: Daemon
    session: aiohttp.ClientSession
    admin: str  # a Keystone token with the admin role
    member: str  # a Keystone token of a plain project member
    link: HubProxy  # the edge's way to the hub
    location: str | None = None  # the last answer's Location header

    async def call(self, daemon: Daemon, token: str, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        headers = {"X-Auth-Token": token, "Accept": "application/json", **kw.pop("headers", {})}
        async with self.session.request(method, daemon.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "%s %s: %d %s" % (method, path, resp.status, body[:500])
            self.location = resp.headers.get("Location")
            return await resp.json() if resp.content_type == "application/json" else body

    async def names(self, daemon: Daemon) -> set[str]:
        return {n["namespace"] for n in (await self.call(daemon, self.admin, "GET", NS))["namespaces"]}


@pytest.fixture
async def pair(keystone: Keystone, tmp_path: Path) -> AsyncIterator[Pair]:
    keystone.create_user("md-admin", ADMIN_PASSWORD, "md-admins", ["admin", "member", "reader"])
    keystone.create_user("md-member", "md-member-secret", "md-alpha", ["member", "reader"])
    async with (
        keystone_sites(keystone, tmp_path, "md", SITE_TOKEN, {"read_timeout": 30, **FAST}) as (hub, link, edge),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
    ):
        yield Pair(
            hub,
            edge,
            session,
            keystone.token("md-admin", ADMIN_PASSWORD, "md-admins"),
            keystone.token("md-member", "md-member-secret", "md-alpha"),
            link,
        )


async def test_changes_at_the_edge_are_made_at_the_hub_and_mirrored_at_once(pair: Pair) -> None:
    hub, edge, admin = pair.hub, pair.edge, pair.admin
    body = {"namespace": "OS::Edge::Made", "visibility": "public", "tags": [{"name": "one"}]}
    made = await pair.call(edge, admin, "POST", NS, 201, json=body)
    assert made["namespace"] == "OS::Edge::Made" and pair.location == NS + "/OS::Edge::Made"
    at_hub = await pair.call(hub, admin, "GET", NS + "/OS::Edge::Made")
    at_edge = await pair.call(edge, admin, "GET", NS + "/OS::Edge::Made")  # at once: no mirror round waited for
    assert at_edge["created_at"] == at_hub["created_at"] and at_edge["tags"] == [{"name": "one"}]

    # The hub's rules decide, and its refusals are the client's.
    refused = await pair.call(edge, pair.member, "POST", NS, 403, json={"namespace": "OS::Edge::Member"})
    assert "OS::Edge::Member" not in await pair.names(hub)
    assert refused["message"]
    await pair.call(edge, admin, "POST", NS, 409, json=body)

    # Contents: an object (its Location), appended tags (the client's X-Openstack-Append goes along),
    # a property, an association; each at the hub and here at once.
    ns = NS + "/OS::Edge::Made"
    obj = await pair.call(edge, admin, "POST", ns + "/objects", 201, json={"name": "Obj", "description": "o"})
    assert obj["self"] == pair.location == ns + "/objects/Obj"
    await pair.call(
        edge, admin, "POST", ns + "/tags", 201, json={"tags": [{"name": "two"}]}, headers={"X-Openstack-Append": "True"}
    )
    await pair.call(edge, admin, "POST", ns + "/properties", 201, json={"name": "p", "title": "P", "type": "string"})
    await pair.call(
        edge, admin, "POST", ns + "/resource_types", 201, json={"name": "OS::Glance::Image", "prefix": "x_"}
    )
    for daemon in (hub, edge):
        shown = await pair.call(daemon, admin, "GET", ns)
        assert sorted(t["name"] for t in shown["tags"]) == ["one", "two"], daemon.url
        assert [o["name"] for o in shown["objects"]] == ["Obj"] and list(shown["properties"]) == ["p"]
        assert (await pair.call(daemon, admin, "GET", ns + "/properties/x_p?resource_type=OS::Glance::Image"))[
            "name"
        ] == "p"

    # A rename moves the namespace here too; a delete removes it here too.
    renamed = await pair.call(edge, admin, "PUT", ns, json={"namespace": "OS::Edge::Renamed", "visibility": "public"})
    assert renamed["namespace"] == "OS::Edge::Renamed"
    assert {"OS::Edge::Renamed"} == await pair.names(edge) == await pair.names(hub)
    await pair.call(edge, admin, "DELETE", NS + "/OS::Edge::Renamed", 204)
    assert await pair.names(edge) == set() == await pair.names(hub)


async def test_the_glance_cli_at_the_edge_writes_at_the_hub(pair: Pair, keystone: Keystone) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(keystone.os_env("md-admin", ADMIN_PASSWORD, "md-admins"), OS_IMAGE_URL=pair.edge.url)

    async def glance(*args: str) -> str:
        done = await asyncio.to_thread(
            subprocess.run,
            [str(VENV_BIN / "glance"), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    await glance("md-namespace-create", "OS::Edge::CLI", "--visibility", "public")
    await glance("md-tag-create", "OS::Edge::CLI", "--name", "from-cli")
    assert "from-cli" in await glance("md-namespace-show", "OS::Edge::CLI")  # read at the edge: its mirror
    assert (await pair.call(pair.hub, pair.admin, "GET", NS + "/OS::Edge::CLI"))["tags"] == [{"name": "from-cli"}]
    await glance("md-namespace-delete", "OS::Edge::CLI")
    await pair.call(pair.hub, pair.admin, "GET", NS + "/OS::Edge::CLI", 404)
    await pair.call(pair.edge, pair.admin, "GET", NS + "/OS::Edge::CLI", 404)


async def test_a_mirror_round_in_flight_does_not_undo_an_edge_write(pair: Pair) -> None:
    # The edge's link to the hub is slow: a mirror round reads a namespace, then the others, and
    # puts them all in place at the end. A write made at the hub through the edge after the round
    # read that namespace must not be undone by the round's older copy, even for a round. Repeated.
    hub, edge, admin = pair.hub, pair.edge, pair.admin
    filler = {"description": "x" * 400, "visibility": "public"}
    for i in range(4):
        await pair.call(hub, admin, "POST", NS, 201, json={"namespace": "OS::Race::%d" % i, **filler})

    async def mirrored() -> bool:
        return len(await pair.names(edge)) == 4

    await eventually(mirrored, "the edge to mirror the hub's namespaces")
    target = "OS::Race::3"  # the newest: a round reads it first (Glance's order, created_at desc)
    for round_ in range(3):
        shows = pair.link.requests[("GET", NS + "/" + target)]
        pair.link.rate = 1500  # bytes/s: each namespace takes a fraction of a second to come over

        async def reading(before: int = shows) -> bool:
            return pair.link.requests[("GET", NS + "/" + target)] > before

        await eventually(reading, "a mirror round to read %s" % target)
        tag = "t%d" % round_
        await pair.call(edge, admin, "POST", "%s/%s/tags/%s" % (NS, target, tag), 201)
        deadline = time.monotonic() + 4  # the round ends meanwhile, and another one or two
        while time.monotonic() < deadline:
            shown = await pair.call(edge, admin, "GET", "%s/%s" % (NS, target))
            assert tag in [t["name"] for t in shown.get("tags", [])], "the edge lost %s: %r" % (tag, shown)
            await asyncio.sleep(0.05)
        pair.link.rate = 0
