"""A soak with faults: a hub, an edge behind a relay (tests/hubproxy.py) and clients that
upload, import (web-download of a gzip'd qcow2 through the pipelined import), download through
the edge's cache and delete, for a bounded time, while faults come from outside: the link
slowed, cut, or broken mid-body, a web-download source that drops mid-body, SIGKILL and restart
of the edge and of the hub.

At the end: every byte a client received with a 200 was right (or the request failed), no task
is stuck, every image the edge holds hashes to its record, no orphan file in staging, stores,
the cache or the pull area, and the edge's file descriptors and RSS stayed flat over the last
part of the run (no restarts there). The counts go to the test's output.

SOAK_SECONDS sets the length (default 100 s: `make test`; `make soak` runs 1800 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.stores.filesystem import PARTIAL_DIR, PULLS_DIR
from tests.conftest import JSON_ERRORS, Daemon, start_daemon, write_toml
from tests.hubproxy import HubProxy
from tests.integration.conftest import Source
from tests.integration.test_pipelined_import import qcow2_gz

MiB = 1 << 20
SECONDS = float(os.environ.get("SOAK_SECONDS", "100"))
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, the relay answers 502
STEADY = 0.35  # the last part of the run: link faults only, no restarts; fds and RSS sampled
FD_SLACK = 24
RSS_SLACK = 64 * MiB


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


@dataclass
class Soak:
    tmp: Path
    source: Source
    hub: Daemon
    edge: Daemon
    proxy: HubProxy
    session: aiohttp.ClientSession
    edge_config: Path
    hub_config: Path
    qcow: bytes = b""
    qcow_expected: dict[str, Any] = field(default_factory=dict)
    hub_images: dict[str, str] = field(default_factory=dict)  # id → sha512
    edge_images: dict[str, str] = field(default_factory=dict)  # id → sha512 the client expects
    importing: set[str] = field(default_factory=set)  # edge images whose data comes by an import
    counts: Counter[str] = field(default_factory=Counter)
    restarting: bool = False

    async def call(self, d: Daemon, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": d.token, **JSON_ERRORS, **kwargs.pop("headers", {})}
        async with self.session.request(method, d.url + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            if resp.content_type == "application/json" and body:
                return resp.status, await resp.json()
            return resp.status, body

    async def create(self, d: Daemon, name: str, disk_format: str = "raw", **extra: Any) -> str:
        status, image = await self.call(
            d,
            "POST",
            "/v2/images",
            json={"name": name, "disk_format": disk_format, "container_format": "bare", **extra},
        )
        assert status == 201, image
        return str(image["id"])

    async def upload(self, d: Daemon, image_id: str, data: bytes) -> int:
        status, _ = await self.call(
            d,
            "PUT",
            "/v2/images/%s/file" % image_id,
            data=io.BytesIO(data),
            headers={"Content-Type": "application/octet-stream"},
        )
        return status

    async def restart(self, which: str) -> None:
        """SIGKILL and start again on the same port and state (blocking parts in threads,
        so the relay in this event loop keeps running)."""
        old = self.edge if which == "edge" else self.hub
        config = self.edge_config if which == "edge" else self.hub_config
        port = int(old.url.rsplit(":", 1)[1])
        self.restarting = True
        try:
            await asyncio.to_thread(old.stop, signal.SIGKILL, 15)
            new = await asyncio.to_thread(start_daemon, old.state_dir, config, 60, None, port)
        finally:
            self.restarting = False
        if which == "edge":
            self.edge = new
        else:
            self.hub = new
        self.counts["restart " + which] += 1


def fd_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def rss(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
async def soak(tmp_path: Path, source: Source) -> AsyncIterator[Soak]:
    hub_config = write_toml(tmp_path / "hub.toml", {"site": {"name": "central", "role": "hub"}})
    hub = await asyncio.to_thread(start_daemon, tmp_path / "hub", hub_config)
    proxy = await HubProxy(hub.url).start()
    edge_dir = tmp_path / "edge"
    edge_config = write_toml(
        tmp_path / "edge.toml",
        {
            "site": {"name": "dcn0"},
            "hub": {
                "url": proxy.url,
                "token_file": str(hub.state_dir / "admin-token"),
                "read_timeout": 5,
                "connect_timeout": 2,
                "resume_attempts": 4,
                "retry_max_seconds": 1,
            },
            "cache": {"max_size": 64 * MiB, "min_free_bytes": 0, "prefetch_interval": 3600},
            "import": {
                "plugins": ["image_decompression", "image_conversion"],
                "download_idle_timeout": 5,
                "uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]},
            },
        },
    )
    edge = await asyncio.to_thread(start_daemon, edge_dir, edge_config)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    s = Soak(tmp_path, source, hub, edge, proxy, session, edge_config, hub_config)
    try:
        yield s
    finally:
        await session.close()
        await proxy.close()
        for d in (s.edge, s.hub):
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


# -- the clients ----------------------------------------------------------------------------


async def uploads(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        data = os.urandom(random.randint(1, 3) * MiB + random.randint(0, 4096))
        image_id = await s.create(s.edge, "up")
        if await s.upload(s.edge, image_id, data) == 204:
            s.edge_images[image_id] = sha(data)
            s.counts["upload ok"] += 1
        else:
            s.counts["upload failed"] += 1
            await s.call(s.edge, "DELETE", "/v2/images/%s" % image_id)


async def imports(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        route = random.choice(["fast", "fast", "fast", "drop"])  # drop: the source cuts mid-body
        image_id = await s.create(s.edge, "import-" + route, disk_format="qcow2")
        status, body = await s.call(
            s.edge,
            "POST",
            "/v2/images/%s/import" % image_id,
            json={"method": {"name": "web-download", "uri": s.source.url("%s/disk.qcow2.gz" % route)}},
        )
        assert status == 202, body
        s.importing.add(image_id)
        s.edge_images[image_id] = s.qcow_expected["os_hash_value"]
        s.counts["import " + route] += 1
        await asyncio.sleep(1)


async def downloads(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        pool = list(s.hub_images.items()) + list(s.edge_images.items())
        image_id, expected = random.choice(pool)
        try:
            status, body = await s.call(s.edge, "GET", "/v2/images/%s/file" % image_id, headers={"Accept": "*/*"})
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
            s.counts["download cut"] += 1  # failed, visibly: never a short success
            continue
        if status == 200:
            assert sha(body) == expected, "a wrong body for %s (%d bytes) answered 200" % (image_id, len(body))
            s.counts["download ok"] += 1
        elif status == 204:
            # Glance's answer for an image without data: only an import not finished (or failed).
            assert image_id in s.importing, "204 for %s, which has data" % image_id
            s.counts["download 204 (import not done)"] += 1
        else:
            assert status != 204 and status >= 400, (status, body)
            s.counts["download %d" % status] += 1


async def deletes(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(3)
        if len(s.edge_images) > 4:
            image_id = random.choice(list(s.edge_images))
            del s.edge_images[image_id]  # gone or not: a restart may cut the answer off
            status, _ = await s.call(s.edge, "DELETE", "/v2/images/%s" % image_id)
            assert status == 204, status
            s.counts["delete ok"] += 1


FAULTS = ["slow", "kill edge", "cut", "mid-body", "kill hub"]


async def faults(s: Soak, until: float, steady_from: float) -> None:
    """Every few seconds the next fault of FAULTS in turn (the hub is killed once); restarts
    only before the steady part."""
    turn = 0
    while time.monotonic() < until:
        await asyncio.sleep(random.uniform(2, 4))
        fault = FAULTS[turn % len(FAULTS)]
        turn += 1
        if fault.startswith("kill") and time.monotonic() >= steady_from:
            continue
        if fault == "kill hub" and s.counts["fault kill hub"]:
            continue
        s.counts["fault " + fault] += 1
        if fault == "slow":
            s.proxy.rate = 512 << 10
            await asyncio.sleep(3)
            s.proxy.rate = 0
        elif fault == "cut":
            s.proxy.target = DEAD
            await asyncio.sleep(3)
            s.proxy.target = s.hub.url
        elif fault == "mid-body":
            s.proxy.cut_after = s.proxy.body_bytes + 256 * 1024
        elif fault == "kill hub":
            await s.restart("hub")
            s.proxy.target = s.hub.url
        else:
            await s.restart("edge")


async def tolerant(s: Soak, name: str, client: Any, until: float) -> None:
    """Run a client; a connection refused or reset while a daemon restarts fails that request
    only (the client goes on)."""
    while time.monotonic() < until:
        try:
            await client(s, until)
        except (aiohttp.ClientConnectionError, TimeoutError):
            s.counts[name + " refused"] += 1
            await asyncio.sleep(0.2)


# -- the end checks -------------------------------------------------------------------------


def files(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}


async def settle(s: Soak) -> list[dict[str, Any]]:
    """Every import task finished (none stuck pending or processing)."""
    deadline = time.monotonic() + 180
    while True:
        status, body = await s.call(s.edge, "GET", "/v2/tasks")
        assert status == 200, body
        running = [t for t in body["tasks"] if t["status"] in ("pending", "processing")]
        if not running:
            return list(body["tasks"])
        assert time.monotonic() < deadline, "tasks stuck: %s" % running
        await asyncio.sleep(1)


async def test_soak_with_faults(soak: Soak, tmp_path: Path) -> None:
    s = soak
    s.qcow, s.qcow_expected = await asyncio.to_thread(qcow2_gz, tmp_path, 32, 2)
    s.source.add("disk.qcow2.gz", s.qcow)
    for i in range(4):
        data = os.urandom((2 + i) * MiB + 77)
        image_id = await s.create(s.hub, "hub-%d" % i, visibility="public")
        assert await s.upload(s.hub, image_id, data) == 204
        s.hub_images[image_id] = sha(data)

    started = time.monotonic()
    until = started + SECONDS
    steady_from = started + SECONDS * (1 - STEADY)
    samples: list[tuple[float, int, int]] = []

    async def sample() -> None:
        while time.monotonic() < until:
            await asyncio.sleep(2)
            if time.monotonic() > steady_from + 5 and not s.restarting:
                samples.append((time.monotonic(), fd_count(s.edge.proc.pid), rss(s.edge.proc.pid)))

    async with asyncio.TaskGroup() as tg:
        for name, client in (("upload", uploads), ("import", imports), ("download", downloads), ("delete", deletes)):
            tg.create_task(tolerant(s, name, client, until))
        tg.create_task(faults(s, until, steady_from))
        tg.create_task(sample())

    # The link is whole again; whatever was running finishes.
    s.proxy.rate, s.proxy.cut_after, s.proxy.target = 0, None, s.hub.url
    tasks = await settle(s)
    outcomes = Counter(t["status"] for t in tasks)
    for task in tasks:
        if task["status"] == "failure":
            assert task["message"] and "Internal" not in task["message"], task
    # Every image the edge holds hashes to its record and to what its client sent.
    status, listing = await s.call(s.edge, "GET", "/v2/images?limit=1000")
    assert status == 200
    for image in listing["images"]:
        if image["status"] != "active":
            continue
        status, body = await s.call(s.edge, "GET", "/v2/images/%s/file" % image["id"], headers={"Accept": "*/*"})
        assert status == 200, (image, body)
        assert sha(body) == image["os_hash_value"], image
        assert sha(body) == {**s.hub_images, **s.edge_images}.get(image["id"], sha(body)), image
    # No image lost: every upload that was answered 204 (and not deleted since) is still active.
    active = {image["id"] for image in listing["images"] if image["status"] == "active"}
    assert set(s.hub_images) <= active
    assert {i for i in s.edge_images if i not in s.importing} <= active
    # No orphan files: the stores hold exactly the active images, nothing partial or staged.
    edge_state = s.edge.state_dir
    assert files(edge_state / "images") == active - set(s.hub_images)
    assert files(edge_state / "staging") == set()
    hub_active = {i for i in s.hub_images}
    assert files(s.hub.state_dir / "images") == hub_active
    status, cache = await s.call(s.edge, "GET", "/v2/cache")
    assert status == 200, cache
    cached = {entry["image_id"] for entry in cache.get("cached_images", [])}
    assert cached <= set(s.hub_images), cache
    leftover = {f for f in files(edge_state / "cache") if not any(i in f for i in cached)}
    assert leftover == set(), leftover
    for d in (s.edge, s.hub):
        assert files(d.state_dir / "images" / PARTIAL_DIR) == set()
        assert files(d.state_dir / "images" / PULLS_DIR) == set()
    # Flat over the steady part: no descriptor or memory growth once the restarts stopped.
    assert len(samples) >= 2, samples
    (_, fd0, rss0), (_, fd1, rss1) = samples[0], samples[-1]
    print(
        "\nsoak %.0f s: %s; tasks %s; edge fds %d -> %d, RSS %.0f -> %.0f MiB over the last %.0f s"
        % (
            SECONDS,
            dict(sorted(s.counts.items())),
            dict(outcomes),
            fd0,
            fd1,
            rss0 / MiB,
            rss1 / MiB,
            samples[-1][0] - samples[0][0],
        )
    )
    assert fd1 <= fd0 + FD_SLACK, samples
    assert rss1 <= rss0 + RSS_SLACK, samples
    assert s.counts["download ok"] > 0 and s.counts["upload ok"] > 0 and outcomes["success"] > 0
