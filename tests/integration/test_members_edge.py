"""Shared images reach edge sites with their members: a hub and an edge as separate daemon
processes, the same projects' tokens at both. A member sees, lists (once accepted) and pulls a
shared image at the edge; others do not; the members follow the hub's word."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.test_members import Http, members_path, sharing_config
from tests.clients.test_members_vs_glance import CALLERS
from tests.clients.test_members_vs_glance import token as glance_token
from tests.conftest import Daemon, start_daemon, write_toml
from tests.glance_server import GlanceServer
from tests.integration.test_hub_link import FAST
from tests.keystone import Keystone
from tests.waiting import eventually

SITE_TOKEN = "dcn0-service-token"


@pytest.fixture
async def hub_and_edge(tmp_path: Path) -> AsyncIterator[tuple[Http, Http]]:
    hub_conf = sharing_config(tmp_path / "hub")
    hub_conf["auth"]["tokens"].append({"token": SITE_TOKEN, "user": "dcn0", "project": "sites", "roles": ["edge-site"]})
    hub_conf["site"] = {"name": "central", "role": "hub"}
    hub_conf["stores"] = {"default": "central", "central": {"path": "images"}}
    hub_conf["scrubber"] = {"enabled": False}
    daemons: list[Daemon] = []
    try:
        hub = start_daemon(tmp_path / "hub", write_toml(tmp_path / "hub.toml", hub_conf))
        daemons.append(hub)
        edge_conf: dict[str, Any] = {
            **sharing_config(tmp_path / "dcn0"),
            "site": {"name": "dcn0"},
            "hub": {"url": hub.url, "token": SITE_TOKEN, **FAST},
            "cache": {"min_free_bytes": 0},
            "scrubber": {"enabled": False},
        }
        edge = start_daemon(tmp_path / "dcn0", write_toml(tmp_path / "dcn0.toml", edge_conf))
        daemons.append(edge)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            yield Http(hub, session), Http(edge, session)
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


async def status_of(http: Http, who: str, path: str) -> int:
    async with http.session.get(
        http.daemon.url + path, headers={"X-Auth-Token": "%s-secret" % who, "Accept": "application/json"}
    ) as resp:
        await resp.read()
        return resp.status


async def test_an_accepted_member_sees_and_pulls_a_shared_image_at_the_edge(hub_and_edge: tuple[Http, Http]) -> None:
    hub, edge = hub_and_edge
    data = os.urandom(256 << 10)
    image_id = await hub.image(data=data)
    await hub.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    image_path = "/v2/images/%s" % image_id

    # Pending at the hub: at the edge beta sees the image by its id, and in lists only when asked.
    async def beta_sees_it() -> bool:
        return await status_of(edge, "beta", image_path) == 200

    await eventually(beta_sees_it, "the edge to mirror the shared image with its member")
    assert image_id not in await edge.listed("beta")
    assert image_id in await edge.listed("beta", "?member_status=pending")
    assert await status_of(edge, "gamma", image_path) == 404
    assert await status_of(edge, "gamma", image_path + "/file") == 404
    assert image_id in await edge.listed("alpha")  # the owner's own, as at the hub

    await hub.call("beta", "PUT", members_path(image_id, "beta"), json={"status": "accepted"})

    async def beta_lists_it() -> bool:
        return image_id in await edge.listed("beta")

    await eventually(beta_lists_it, "the member's acceptance to reach the edge")
    assert image_id in await edge.listed("beta", "?visibility=shared")
    # The data comes through the edge from the hub (pull-through), for the member only.
    assert await edge.call("beta", "GET", image_path + "/file") == data
    assert await status_of(edge, "gamma", image_path + "/file") == 404
    mine = await edge.call("beta", "GET", members_path(image_id))
    assert [(m["member_id"], m["status"]) for m in mine["members"]] == [("beta", "accepted")]

    # The members of a hub image are the hub's: the edge refuses to change them, saying where to.
    message = await edge.message("alpha", "POST", members_path(image_id), 409, json={"member": "gamma"})
    assert "Make the change at the hub" in message
    await edge.call("beta", "PUT", members_path(image_id, "beta"), 409, json={"status": "rejected"})

    # Unshared at the hub: gone for beta at the edge too.
    await hub.call("alpha", "DELETE", members_path(image_id, "beta"), 204)

    async def beta_lost_it() -> bool:
        return await status_of(edge, "beta", image_path) == 404

    await eventually(beta_lost_it, "the removed membership to reach the edge")
    assert image_id not in await edge.listed("beta", "?member_status=all")


async def keystone_call(
    session: aiohttp.ClientSession, daemon: Daemon, token: str, method: str, path: str, expect: int = 200, **kw: Any
) -> Any:
    headers = {"X-Auth-Token": token, "Accept": "application/json", **kw.pop("headers", {})}
    async with session.request(method, daemon.url + path, headers=headers, **kw) as resp:
        body = await resp.read()
        assert resp.status == expect, "%s %s: %d %s" % (method, path, resp.status, body[:500])
        return await resp.json() if resp.content_type == "application/json" else body


async def test_member_changes_made_at_an_edge_are_made_at_the_hub(keystone: Keystone, tmp_path: Path) -> None:
    # With Keystone tokens the edge forwards a member change of a hub image to the hub with the
    # caller's own token: the hub decides, and the edge's record follows at once.
    keystone.create_user("members-hub", "hub-secret", "service", ["service"])
    keystone.create_user("members-edge", "edge-secret", "service", ["service"])
    keystone.create_user("sh-owner", "owner-secret", "sh-alpha", ["member", "reader"])
    keystone.create_user("sh-member", "member-secret", "sh-beta", ["member", "reader"])
    owner, member = (
        keystone.token("sh-owner", "owner-secret", "sh-alpha"),
        keystone.token("sh-member", "member-secret", "sh-beta"),
    )
    beta = keystone.project_id("sh-beta")

    def section(user: str, password: str) -> dict[str, Any]:
        return {"auth_url": keystone.auth_url, "username": user, "password": password, "project_name": "service"}

    site_token = {"token": SITE_TOKEN, "user": "dcn0", "project": "sites", "roles": ["edge-site"]}
    hub = start_daemon(
        tmp_path / "hub",
        write_toml(
            tmp_path / "hub.toml",
            {
                "site": {"name": "central", "role": "hub"},
                "stores": {"default": "central", "central": {"path": "images"}},
                "keystone": section("members-hub", "hub-secret"),
                "auth": {"tokens": [site_token]},
                "scrubber": {"enabled": False},
            },
        ),
    )
    edge: Daemon | None = None
    try:
        edge = start_daemon(
            tmp_path / "dcn0",
            write_toml(
                tmp_path / "dcn0.toml",
                {
                    "site": {"name": "dcn0"},
                    "keystone": section("members-edge", "edge-secret"),
                    "hub": {"url": hub.url, "token": SITE_TOKEN, **FAST},
                    "cache": {"min_free_bytes": 0},
                    "scrubber": {"enabled": False},
                },
            ),
        )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            body = {"name": "ks-shared", "disk_format": "raw", "container_format": "bare", "visibility": "shared"}
            image_id = (await keystone_call(session, hub, owner, "POST", "/v2/images", 201, json=body))["id"]
            data = os.urandom(100_000)
            octets = {"Content-Type": "application/octet-stream"}
            await keystone_call(
                session, hub, owner, "PUT", "/v2/images/%s/file" % image_id, 204, data=data, headers=octets
            )
            image, members = "/v2/images/%s" % image_id, members_path(image_id)

            async def mirrored() -> bool:
                async with session.get(edge.url + image, headers={"X-Auth-Token": owner}) as resp:
                    return resp.status == 200

            await eventually(mirrored, "the edge to mirror the image")
            await keystone_call(session, edge, member, "GET", image, 404)

            added = await keystone_call(session, edge, owner, "POST", members, json={"member": beta})
            assert (added["member_id"], added["status"]) == (beta, "pending")
            at_hub = await keystone_call(session, hub, owner, "GET", members)
            assert [(m["member_id"], m["status"]) for m in at_hub["members"]] == [(beta, "pending")]
            await keystone_call(session, edge, member, "GET", image)  # at once: the edge took the hub's record

            accepted = await keystone_call(
                session, edge, member, "PUT", members_path(image_id, beta), json={"status": "accepted"}
            )
            assert accepted["status"] == "accepted"
            assert (await keystone_call(session, hub, member, "GET", members_path(image_id, beta)))[
                "status"
            ] == "accepted"
            listed = await keystone_call(session, edge, member, "GET", "/v2/images")
            assert image_id in [i["id"] for i in listed["images"]]
            assert await keystone_call(session, edge, member, "GET", image + "/file") == data

            # The hub's rules decide: the owner does not answer for the member, even through the edge.
            await keystone_call(
                session, edge, owner, "PUT", members_path(image_id, beta), 403, json={"status": "rejected"}
            )
            await keystone_call(session, edge, owner, "DELETE", members_path(image_id, beta), 204)
            assert (await keystone_call(session, hub, owner, "GET", members))["members"] == []
            await keystone_call(session, edge, member, "GET", image, 404)
    finally:
        if edge is not None:
            edge.stop()
        hub.stop()


async def test_members_of_a_plain_glance_hub_reach_the_edge(openstack_glance: GlanceServer, tmp_path: Path) -> None:
    # OpenStack Glance sends no members with its records: the edge asks for those of its shared
    # images (its hub token is an admin's), so the members see them at the edge as at the hub.
    tokens = [{"token": glance_token(w), "user": u, "project": p, "roles": r} for w, (u, p, r) in CALLERS.items()]
    config = {
        "site": {"name": "dcn0"},
        "hub": {"url": openstack_glance.url, "token": openstack_glance.token, **FAST},
        "auth": {"tokens": tokens},
        "cache": {"min_free_bytes": 0},
        "scrubber": {"enabled": False},
    }
    edge = start_daemon(tmp_path / "dcn0", write_toml(tmp_path / "dcn0.toml", config))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def call(daemon_url: str, who: str, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
                headers = {"X-Auth-Token": glance_token(who), "Accept": "application/json", **kw.pop("headers", {})}
                async with session.request(method, daemon_url + path, headers=headers, **kw) as resp:
                    body = await resp.read()
                    assert resp.status == expect, "%s %s as %s: %d %s" % (method, path, who, resp.status, body[:300])
                    return await resp.json() if resp.content_type == "application/json" else body

            glance = openstack_glance.url
            body = {"name": "glance-shared", "disk_format": "raw", "container_format": "bare", "visibility": "shared"}
            image_id = (await call(glance, "alpha", "POST", "/v2/images", 201, json=body))["id"]
            data = os.urandom(100_000)
            octets = {"Content-Type": "application/octet-stream"}
            await call(glance, "alpha", "PUT", "/v2/images/%s/file" % image_id, 204, data=data, headers=octets)
            await call(glance, "alpha", "POST", members_path(image_id), json={"member": "beta"})
            await call(glance, "beta", "PUT", members_path(image_id, "beta"), json={"status": "accepted"})
            image = "/v2/images/%s" % image_id

            async def beta_lists_it() -> bool:
                listed = await call(edge.url, "beta", "GET", "/v2/images?limit=100")
                return image_id in [i["id"] for i in listed["images"]]

            await eventually(beta_lists_it, "the edge to mirror Glance's shared image with its members")
            assert await call(edge.url, "beta", "GET", image + "/file") == data
            await call(edge.url, "gamma", "GET", image, 404)
            mine = await call(edge.url, "beta", "GET", members_path(image_id))
            assert [(m["member_id"], m["status"]) for m in mine["members"]] == [("beta", "accepted")]

            # Glance does not date its image for a member change: the edge's full reconcile finds it.
            await call(glance, "alpha", "DELETE", members_path(image_id, "beta"), 204)

            async def beta_lost_it() -> bool:
                async with session.get(edge.url + image, headers={"X-Auth-Token": glance_token("beta")}) as resp:
                    return resp.status == 404

            await eventually(beta_lost_it, "the edge's reconcile to drop the membership")
    finally:
        edge.stop()
