"""The hub link end to end: a hub and two edges as separate daemon processes on loopback, each
with its own state directory; placement through the stock `glance` CLI on the hub."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.test_glance_cli import Glance, as_dict
from tests.conftest import JSON_ERRORS, Daemon, start_daemon, write_toml
from tests.ondisk import flip_bit
from tests.waiting import eventually

MiB = 1 << 20
HUB_ADMIN_TOKEN = "hub-admin-token"
# Each edge talks to the hub with its own service token: role edge-site and nothing else.
SITE_TOKENS = {name: "%s-service-token" % name for name in ("dcn0", "dcn1")}
FAST = {
    "mirror_interval": 1,
    "reconcile_interval": 2,
    "heartbeat_interval": 1,
    "sync_interval": 1,
    "read_timeout": 5,
    "connect_timeout": 2,
    "retry_max_seconds": 1,
}


@dataclass
class Cloud:
    tmp: Path
    session: aiohttp.ClientSession
    hub: Daemon
    edges: dict[str, Daemon] = field(default_factory=dict)

    def hub_config(self, role: str = "hub") -> Path:
        return write_toml(
            self.tmp / "hub.toml",
            {
                "site": {"name": "central", "role": role},
                "stores": {"default": "central", "central": {"path": "images"}},
                "hub": {"heartbeat_interval": 1},
                "auth": {
                    "tokens": [
                        {
                            "token_file": "admin-token",
                            "user": "admin",
                            "project": "admin",
                            "roles": ["admin", "member", "reader"],
                        },
                        *(
                            {"token": token, "user": name, "project": "edge-sites", "roles": ["edge-site"]}
                            for name, token in SITE_TOKENS.items()
                        ),
                    ]
                },
                "scrubber": {"enabled": False},
            },
        )

    def edge_config(self, name: str, scrubber: dict[str, Any] | None = None, **hub: Any) -> Path:
        return write_toml(
            self.tmp / ("%s.toml" % name),
            {
                "site": {"name": name},
                "hub": {"url": self.hub.url, "token": SITE_TOKENS[name], **FAST, **hub},
                "cache": {"min_free_bytes": 0},
                "scrubber": scrubber or {"enabled": False},
            },
        )

    def start_edge(self, name: str, scrubber: dict[str, Any] | None = None, **hub: Any) -> Daemon:
        config = self.tmp / ("%s.toml" % name)
        if hub or scrubber or not config.exists():
            config = self.edge_config(name, scrubber, **hub)
        self.edges[name] = start_daemon(self.tmp / name, config)
        return self.edges[name]

    def restart_hub(self, role: str = "hub") -> None:
        port = int(self.hub.url.rsplit(":", 1)[1])  # the edges know the hub by this URL
        self.hub = start_daemon(self.hub.state_dir, self.hub_config(role), port=port)

    async def call(self, daemon: Daemon, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        headers = {"X-Auth-Token": daemon.token, **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, daemon.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "%s %s: %d %s" % (method, path, resp.status, body[:500])
            return await resp.json() if resp.content_type == "application/json" else body

    async def upload(self, daemon: Daemon, data: bytes, **body: Any) -> str:
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", "visibility": "public", **body}
        image_id = (await self.call(daemon, "POST", "/v2/images", 201, json=body))["id"]
        await self.call(
            daemon,
            "PUT",
            "/v2/images/%s/file" % image_id,
            204,
            data=io.BytesIO(data),
            headers={"Content-Type": "application/octet-stream"},
        )
        return image_id

    async def copy_image(self, image_id: str, **target: Any) -> None:
        """copy-image at the hub to `stores=[...]` or `all_stores=True` (sites are stores)."""
        await self.call(
            self.hub, "POST", "/v2/images/%s/import" % image_id, 202, json={"method": {"name": "copy-image"}, **target}
        )

    async def image(self, daemon: Daemon, image_id: str) -> dict[str, Any] | None:
        async with self.session.get(
            daemon.url + "/v2/images/%s" % image_id, headers={"X-Auth-Token": daemon.token, **JSON_ERRORS}
        ) as resp:
            return await resp.json() if resp.status == 200 else None

    async def stores_of(self, daemon: Daemon, image_id: str) -> set[str]:
        image = await self.image(daemon, image_id)
        return set((image or {}).get("stores", "").split(",")) - {""}

    async def sites(self) -> dict[str, dict[str, Any]]:
        return {s["name"]: s for s in (await self.call(self.hub, "GET", "/v2/edge/sites"))["sites"]}


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as c:
        yield c


@contextlib.asynccontextmanager
async def running_cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A hub daemon (edges are started by the test); every daemon is killed at the end."""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    c = Cloud(tmp_path, session, hub=None)  # type: ignore[arg-type]
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "admin-token").write_text(HUB_ADMIN_TOKEN + "\n")  # Daemon.token reads it
    c.hub = start_daemon(tmp_path / "hub", c.hub_config())
    try:
        yield c
    finally:
        await session.close()
        for d in (c.hub, *c.edges.values()):
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


async def two_edges(cloud: Cloud) -> None:
    cloud.start_edge("dcn0")
    cloud.start_edge("dcn1")

    async def registered() -> bool:
        sites = await cloud.sites()
        return {"dcn0", "dcn1"} <= set(sites) and all(s["online"] for s in sites.values())

    await eventually(registered, "both edges registered and online")


def glance(cloud: Cloud, daemon: Daemon) -> Callable[..., Awaitable[str]]:
    cli = Glance(daemon)
    return lambda *args: asyncio.to_thread(cli.ok, *args)  # a thread: daemons answer while it runs


async def test_copy_image_to_one_site_then_all_sites_with_the_glance_cli(cloud: Cloud) -> None:
    await two_edges(cloud)
    data = os.urandom(2 * MiB)
    image_id = await cloud.upload(cloud.hub, data)
    hub_glance = glance(cloud, cloud.hub)
    # Every registered site is a store of the hub, in Glance's own listing.
    assert {"dcn0", "dcn1", "central"} <= {
        s["id"] for s in json.loads(as_dict(await hub_glance("stores-info"))["stores"])
    }
    await hub_glance("image-import", image_id, "--import-method", "copy-image", "--stores", "dcn0")
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn0"), "the hub to list dcn0")
    # dcn0 holds a pinned copy in its own store, byte-identical; dcn1 does not.
    assert await cloud.stores_of(cloud.edges["dcn0"], image_id) == {"central", "local"}
    assert (cloud.edges["dcn0"].state_dir / "images" / image_id).read_bytes() == data
    assert "local" not in await cloud.stores_of(cloud.edges["dcn1"], image_id)
    assert not as_dict(await hub_glance("image-show", image_id)).get("os_glance_importing_to_stores")
    await hub_glance("image-import", image_id, "--import-method", "copy-image", "--all-stores", "true")
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn1"), "the hub to list dcn1")
    assert await cloud.stores_of(cloud.hub, image_id) == {"central", "dcn0", "dcn1"}
    listing = await hub_glance("image-list", "--include-stores")
    row = next(line for line in listing.splitlines() if image_id in line)
    assert all(name in row for name in ("central", "dcn0", "dcn1"))
    # The edge serves its pinned copy (no cache fill).
    assert await cloud.call(cloud.edges["dcn1"], "GET", "/v2/images/%s/file" % image_id) == data
    assert (await cloud.call(cloud.edges["dcn1"], "GET", "/v2/edge/cache"))["entries"] == []
    # stores-delete on the hub removes the site's copy on its next sync.
    await hub_glance("stores-delete", "--store", "dcn0", image_id)
    pinned = cloud.edges["dcn0"].state_dir / "images" / image_id

    async def unpinned() -> bool:
        return not pinned.exists() and "local" not in await cloud.stores_of(cloud.edges["dcn0"], image_id)

    await eventually(unpinned, "dcn0 to drop its copy")
    assert await cloud.stores_of(cloud.hub, image_id) == {"central", "dcn1"}


async def _has(cloud: Cloud, daemon: Daemon, image_id: str, store: str) -> bool:
    return store in await cloud.stores_of(daemon, image_id)


async def test_a_hub_deletion_reaches_the_edges_and_their_pinned_copies(cloud: Cloud) -> None:
    await two_edges(cloud)
    image_id = await cloud.upload(cloud.hub, os.urandom(MiB))
    await cloud.call(
        cloud.hub,
        "POST",
        "/v2/images/%s/import" % image_id,
        202,
        json={"method": {"name": "copy-image"}, "all_stores": True},
    )
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn1"), "the copy at dcn1")
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn0"), "the copy at dcn0")
    await cloud.call(cloud.hub, "DELETE", "/v2/images/%s" % image_id, 204)

    async def gone() -> bool:
        return all(
            [
                await cloud.image(e, image_id) is None and not (e.state_dir / "images" / image_id).exists()
                for e in cloud.edges.values()
            ]
        )

    await eventually(gone, "the image to disappear from both edges")


async def test_mirror_lists_hub_images_with_central_among_their_stores(cloud: Cloud) -> None:
    hub_id = await cloud.upload(cloud.hub, os.urandom(MiB), name="from-hub")
    edge = cloud.start_edge("dcn0")
    local_id = await cloud.upload(edge, os.urandom(MiB), name="edge-only")

    async def mirrored() -> bool:
        listed = (await cloud.call(edge, "GET", "/v2/images"))["images"]
        return hub_id in [i["id"] for i in listed]

    await eventually(mirrored, "the mirror")
    listed = {i["id"]: i for i in (await cloud.call(edge, "GET", "/v2/images"))["images"]}
    assert listed[hub_id]["stores"] == "central" and listed[hub_id]["name"] == "from-hub"
    assert listed[local_id]["stores"] == "local"
    # An incremental change at the hub arrives.
    await cloud.call(
        cloud.hub,
        "PATCH",
        "/v2/images/%s" % hub_id,
        200,
        json=[{"op": "replace", "path": "/name", "value": "renamed"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )

    async def renamed() -> bool:
        return ((await cloud.image(edge, hub_id)) or {}).get("name") == "renamed"

    await eventually(renamed, "the rename to reach the edge")


async def test_offline_hub_edges_keep_serving_and_everything_converges(cloud: Cloud) -> None:
    await two_edges(cloud)
    edge = cloud.edges["dcn0"]
    cached_data, other_data, local_data = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    cached_id = await cloud.upload(cloud.hub, cached_data)
    other_id = await cloud.upload(cloud.hub, other_data)
    local_id = await cloud.upload(edge, local_data)
    await eventually(lambda: _known(cloud, edge, other_id), "the mirror")
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
    cloud.hub.stop(signal.SIGKILL)
    await asyncio.sleep(3)  # more than two heartbeat intervals
    # The edge keeps serving and listing its local, cached and mirrored images.
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % local_id) == local_data
    listed = {i["id"] for i in (await cloud.call(edge, "GET", "/v2/images"))["images"]}
    assert {cached_id, other_id, local_id} <= listed
    message = (await cloud.call(edge, "GET", "/v2/images/%s/file" % other_id, 503))["message"]
    assert "hub is unreachable" in message and "not cached" in message
    await eventually(lambda: _hub_state(cloud, edge, "down"), "the edge to see its hub link down")
    # The hub returns: it first sees the sites as offline (two missed beats), then they converge.
    # The edges are paused while it starts: one retrying its heartbeat could reach the new hub
    # before the sites are listed, and the hub's first view would no longer be observable.
    paused = list(cloud.edges.values())
    for d in paused:
        d.proc.send_signal(signal.SIGSTOP)
    try:
        cloud.restart_hub()
        sites = await cloud.sites()
    finally:
        for d in paused:
            d.proc.send_signal(signal.SIGCONT)
    assert not sites["dcn0"]["online"] and not sites["dcn1"]["online"]

    async def converged() -> bool:
        sites = await cloud.sites()
        return all(s["online"] for s in sites.values()) and await _hub_state(cloud, edge, "up")

    await eventually(converged, "sites online again and the edge's link up", within=60)
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % other_id) == other_data


async def _hub_state(cloud: Cloud, edge: Daemon, state: str) -> bool:
    return bool((await cloud.call(edge, "GET", "/v2/edge/status"))["hub"]["state"] == state)


async def _known(cloud: Cloud, daemon: Daemon, image_id: str) -> bool:
    return await cloud.image(daemon, image_id) is not None


async def test_an_edge_killed_mid_pull_resumes_with_range(cloud: Cloud) -> None:
    data = os.urandom(24 * MiB)
    image_id = await cloud.upload(cloud.hub, data)
    edge = cloud.start_edge("dcn0", bandwidth_limit=4 * MiB)  # ~6 s for the pull
    await eventually(lambda: _site_known(cloud, "dcn0"), "registration")
    await cloud.call(
        cloud.hub,
        "POST",
        "/v2/images/%s/import" % image_id,
        202,
        json={"method": {"name": "copy-image"}, "stores": ["dcn0"]},
    )
    pulls = edge.state_dir / "images" / ".pulls" / image_id
    await eventually(lambda: _size_at_least(pulls, 4 * MiB), "4 MiB pulled")
    edge.stop(signal.SIGKILL)
    kept = pulls.stat().st_size
    assert 0 < kept < len(data)
    cloud.start_edge("dcn0", bandwidth_limit=0)
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn0"), "the hub to list dcn0", within=60)
    assert (edge.state_dir / "images" / image_id).read_bytes() == data
    log = edge.log.read_text()
    assert "resuming the transfer at byte" in log
    metrics = (await cloud.call(cloud.hub, "GET", "/metrics")).decode()
    assert 'route="/v2/images/{image_id}/file",status="206"' in metrics


async def _site_known(cloud: Cloud, name: str) -> bool:
    return name in await cloud.sites()


async def _size_at_least(path: Path, n: int) -> bool:
    return await asyncio.to_thread(lambda: path.exists() and path.stat().st_size >= n)


async def test_an_edge_created_image_copied_to_central_keeps_its_id(cloud: Cloud) -> None:
    # Copying to central creates (here a public) image at the hub: a site's service token may not
    # (add_image, publicize_image); an edge that copies to central is given a token that may.
    edge = cloud.start_edge("dcn0", token=HUB_ADMIN_TOKEN)
    data = os.urandom(MiB)
    image_id = await cloud.upload(edge, data, name="made-at-the-edge")
    await glance(cloud, edge)("image-import", image_id, "--import-method", "copy-image", "--stores", "central")
    await eventually(lambda: _has(cloud, edge, image_id, "central"), "the edge to record central")
    at_hub = await cloud.image(cloud.hub, image_id)
    assert at_hub is not None and at_hub["name"] == "made-at-the-edge" and at_hub["status"] == "active"
    assert await cloud.call(cloud.hub, "GET", "/v2/images/%s/file" % image_id) == data
    at_edge = await cloud.image(edge, image_id)
    assert at_edge is not None and at_hub["os_hash_value"] == at_edge["os_hash_value"]


async def test_glance_download_imports_a_hub_image_into_local_stores(cloud: Cloud) -> None:
    edge = cloud.start_edge("dcn0")
    data = os.urandom(MiB)
    hub_id = await cloud.upload(cloud.hub, data, name="golden")
    local = await cloud.call(
        edge, "POST", "/v2/images", 201, json={"name": "golden-copy", "disk_format": "raw", "container_format": "bare"}
    )
    await cloud.call(
        edge,
        "POST",
        "/v2/images/%s/import" % local["id"],
        202,
        json={"method": {"name": "glance-download", "glance_image_id": hub_id}, "stores": ["local"]},
    )

    async def active() -> bool:
        return ((await cloud.image(edge, local["id"])) or {}).get("status") == "active"

    await eventually(active, "the glance-download import")
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % local["id"]) == data
    assert await cloud.stores_of(edge, local["id"]) == {"local"}


async def test_an_edge_pointed_at_a_plain_glance_mirrors_and_pulls_through(cloud: Cloud) -> None:
    # The appliance in role "edge" has no site API: to its client it is a plain Glance v2.
    cloud.hub.stop()
    cloud.restart_hub(role="edge")
    data = os.urandom(MiB)
    image_id = await cloud.upload(cloud.hub, data)
    edge = cloud.start_edge("dcn0")
    await eventually(lambda: _known(cloud, edge, image_id), "the mirror")
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data
    status = (await cloud.call(edge, "GET", "/v2/edge/status"))["hub"]
    assert status["state"] == "up" and status["site_api"] is False
    assert "has no site API" in edge.log.read_text()


async def test_the_scrubber_repairs_pinned_and_cached_copies_from_the_hub(cloud: Cloud) -> None:
    edge = cloud.start_edge("dcn0", scrubber={"enabled": True, "interval": 1, "rate_mib_per_s": 100})
    await eventually(lambda: _site_known(cloud, "dcn0"), "registration")
    pinned_data, cached_data = os.urandom(MiB), os.urandom(MiB)
    pinned_id = await cloud.upload(cloud.hub, pinned_data)
    cached_id = await cloud.upload(cloud.hub, cached_data)
    await cloud.call(
        cloud.hub,
        "POST",
        "/v2/images/%s/import" % pinned_id,
        202,
        json={"method": {"name": "copy-image"}, "stores": ["dcn0"]},
    )
    await eventually(lambda: _has(cloud, cloud.hub, pinned_id, "dcn0"), "the pinned copy")
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
    for path in (edge.state_dir / "images" / pinned_id, edge.state_dir / "cache" / "data" / cached_id):
        await asyncio.to_thread(flip_bit, path, 1000)

    async def repaired() -> bool:
        log = edge.log.read_text()
        return "pulled again from the hub" in log and "dropped from the cache" in log

    await eventually(repaired, "the scrubber to repair both copies")
    assert (edge.state_dir / "images" / pinned_id).read_bytes() == pinned_data
    assert "local" in await cloud.stores_of(edge, pinned_id)
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
