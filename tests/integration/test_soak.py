"""A soak with faults: a hub, two edges (dcn0, dcn1), each behind its own relay
(tests/hubproxy.py), and clients that upload, import (web-download of a gzip'd qcow2 through the
pipelined import), download through the edges' caches, copy hub images to the sites (copy-image
at the hub: the sites' assignments) and delete, for a bounded time, while faults come from
outside at random moments: a link slowed, cut, or broken mid-body, a web-download source that
drops mid-body, SIGKILL and restart of either edge and of the hub, and dcn1's store (a tmpfs of
its own) filling up past its min_free_bytes floor with a ballast file and emptied again.

At the end: every byte a client received with a 200 was right (or the request failed), no task
is stuck, no copy is stuck on its way to a site, every image an edge holds hashes to its
record, every hub image and every upload answered 204 (not deleted since) is still active, every
copy a site reported is a right file there, no orphan file in staging, stores, caches or pull
areas, and file descriptors and RSS of the three daemons stayed flat over the last part of the
run (no restarts there). The counts go to the test's output.

SOAK_SECONDS sets the length (default 120 s: `make test`; `make soak` runs 1800 s).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import random
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
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
SECONDS = float(os.environ.get("SOAK_SECONDS", "120"))
DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, the relay answers 502
STEADY = 0.35  # the last part of the run: link faults only, no restarts; fds and RSS sampled
FD_SLACK = 24
RSS_SLACK = 64 * MiB
SITES = ("dcn0", "dcn1")
FULL_SITE = "dcn1"  # its store is a tmpfs of its own, filled up as a fault
TMPFS = 192 * MiB
FLOOR = 32 * MiB  # the store's min_free_bytes
KEEP = 8  # images per site the clients keep (older ones are deleted)


def sha(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()


@dataclass
class Soak:
    tmp: Path
    source: Source
    hub: Daemon
    hub_config: Path
    session: aiohttp.ClientSession
    small_disk: Path
    edges: dict[str, Daemon] = field(default_factory=dict)
    proxies: dict[str, HubProxy] = field(default_factory=dict)
    edge_configs: dict[str, Path] = field(default_factory=dict)
    qcow: bytes = b""
    qcow_expected: dict[str, Any] = field(default_factory=dict)
    hub_images: dict[str, str] = field(default_factory=dict)  # id → sha512
    edge_images: dict[str, tuple[str, str]] = field(default_factory=dict)  # id → (site, sha512 expected)
    importing: set[str] = field(default_factory=set)  # edge images whose data comes by an import
    copies: set[tuple[str, str]] = field(default_factory=set)  # (hub image, site) asked for
    counts: Counter[str] = field(default_factory=Counter)
    restarting: int = 0

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

    def store(self, site: str) -> Path:
        return self.small_disk / "images" if site == FULL_SITE else self.edges[site].state_dir / "images"

    def daemons(self) -> dict[str, Daemon]:
        return {"hub": self.hub, **self.edges}

    async def restart(self, which: str) -> None:
        """SIGKILL and start again on the same port and state (blocking parts in threads,
        so the relays in this event loop keep running)."""
        old = self.daemons()[which]
        config = self.hub_config if which == "hub" else self.edge_configs[which]
        port = int(old.url.rsplit(":", 1)[1])
        self.restarting += 1
        try:
            await asyncio.to_thread(old.stop, signal.SIGKILL, 15)
            new = await asyncio.to_thread(start_daemon, old.state_dir, config, 60, None, port)
        finally:
            self.restarting -= 1
        if which == "hub":
            self.hub = new
        else:
            self.edges[which] = new
        self.counts["restart " + which] += 1


def fd_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def rss(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """dcn1's store's filesystem: a tmpfs of its own (the tests run as root; a failed mount
    fails the test)."""
    path = tmp_path / "small-disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % TMPFS, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
async def soak(tmp_path: Path, source: Source, small_disk: Path) -> AsyncIterator[Soak]:
    hub_config = write_toml(tmp_path / "hub.toml", {"site": {"name": "central", "role": "hub"}})
    hub = await asyncio.to_thread(start_daemon, tmp_path / "hub", hub_config)
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    s = Soak(tmp_path, source, hub, hub_config, session, small_disk)
    try:
        for name in SITES:
            proxy = s.proxies[name] = await HubProxy(hub.url).start()
            stores = (
                {"stores": {"default": "local", "local": {"path": str(small_disk / "images"), "min_free_bytes": FLOOR}}}
                if name == FULL_SITE
                else {}
            )
            s.edge_configs[name] = write_toml(
                tmp_path / ("%s.toml" % name),
                {
                    "site": {"name": name},
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
                    **stores,
                },
            )
            s.edges[name] = await asyncio.to_thread(start_daemon, tmp_path / name, s.edge_configs[name])
        yield s
    finally:
        await session.close()
        for proxy in s.proxies.values():
            await proxy.close()
        for d in s.daemons().values():
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


# -- the clients ----------------------------------------------------------------------------


async def uploads(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        site = random.choice(SITES)
        data = os.urandom(random.randint(1, 3) * MiB + random.randint(0, 4096))
        image_id = await s.create(s.edges[site], "up")
        status = await s.upload(s.edges[site], image_id, data)
        if status == 204:
            s.edge_images[image_id] = (site, sha(data))
            s.counts["upload ok"] += 1
        else:
            assert status >= 400, status
            s.counts["upload failed %d" % status] += 1  # 507 while the store is full
            await s.call(s.edges[site], "DELETE", "/v2/images/%s" % image_id)


async def imports(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        site = random.choice(SITES)
        route = random.choice(["fast", "fast", "fast", "drop"])  # drop: the source cuts mid-body
        image_id = await s.create(s.edges[site], "import-" + route, disk_format="qcow2")
        status, body = await s.call(
            s.edges[site],
            "POST",
            "/v2/images/%s/import" % image_id,
            json={"method": {"name": "web-download", "uri": s.source.url("%s/disk.qcow2.gz" % route)}},
        )
        assert status == 202, body
        s.importing.add(image_id)
        s.edge_images[image_id] = (site, s.qcow_expected["os_hash_value"])
        s.counts["import " + route] += 1
        await asyncio.sleep(1)


async def downloads(s: Soak, until: float) -> None:
    while time.monotonic() < until:
        site = random.choice(SITES)
        pool = list(s.hub_images.items()) + [(i, h) for i, (at, h) in s.edge_images.items() if at == site]
        image_id, expected = random.choice(pool)
        try:
            status, body = await s.call(
                s.edges[site], "GET", "/v2/images/%s/file" % image_id, headers={"Accept": "*/*"}
            )
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
            assert status >= 400, (status, body)
            s.counts["download %d" % status] += 1


async def copies(s: Soak, until: float) -> None:
    """copy-image at the hub of a hub image to one site: the site's assignment, pulled over its relay."""
    while time.monotonic() < until:
        await asyncio.sleep(random.uniform(2, 5))
        image_id, site = random.choice(list(s.hub_images)), random.choice(SITES)
        if (image_id, site) in s.copies:
            continue
        status, body = await s.call(
            s.hub, "POST", "/v2/images/%s/import" % image_id, json={"method": {"name": "copy-image"}, "stores": [site]}
        )
        if status == 202:
            s.copies.add((image_id, site))
            s.counts["copy asked"] += 1
        else:
            # 409: a copy of this image is still on its way (Glance's answer too)
            assert status == 409, (status, body)
            s.counts["copy 409"] += 1


async def deletes(s: Soak, until: float) -> None:
    """Keep about KEEP images per site, so that the store fills up by the fault, not by the uploads."""
    while time.monotonic() < until:
        per_site = Counter(site for site, _ in s.edge_images.values())
        site, held = max(per_site.items(), key=lambda item: item[1], default=("", 0))
        if held <= KEEP:
            await asyncio.sleep(0.3)
        else:
            image_id = random.choice([i for i, (at, _) in s.edge_images.items() if at == site])
            site, _ = s.edge_images.pop(image_id)  # gone or not: a restart may cut the answer off
            status, _ = await s.call(s.edges[site], "DELETE", "/v2/images/%s" % image_id)
            assert status == 204, status
            s.counts["delete ok"] += 1


async def fill_store(s: Soak) -> None:
    """dcn1's store fills up past its floor for a few seconds, then the space comes back."""
    ballast = s.small_disk / "ballast"  # beside the store, on its filesystem
    size = max(0, free_bytes(s.small_disk) - FLOOR + MiB)

    def fill() -> None:
        block = b"\1" * MiB
        with open(ballast, "wb") as fh:
            for _ in range(size // MiB + 1):
                fh.write(block)

    try:
        await asyncio.to_thread(fill)
        await asyncio.sleep(4)
    finally:
        ballast.unlink()


async def faults(s: Soak, until: float, steady_from: float) -> None:
    """Every few seconds a fault drawn at random: link faults on a random relay, a store filling
    up, SIGKILL of a daemon (restarts only before the steady part)."""
    kinds = ["slow", "cut", "mid-body", "full", "kill dcn0", "kill dcn1", "kill hub"]
    bag: list[str] = []
    while time.monotonic() < until:
        await asyncio.sleep(random.uniform(2, 4))
        if not bag:  # each kind once per round, in a random order
            bag = random.sample(kinds, len(kinds))
        fault = bag.pop()
        if fault.startswith("kill") and time.monotonic() >= steady_from:
            continue
        if fault == "kill hub" and s.counts["fault kill hub"] >= 2:
            continue
        proxy = random.choice(list(s.proxies.values()))
        s.counts["fault " + fault] += 1
        if fault == "slow":
            proxy.rate = 512 << 10
            await asyncio.sleep(3)
            proxy.rate = 0
        elif fault == "cut":
            proxy.target = DEAD
            await asyncio.sleep(3)
            proxy.target = s.hub.url
        elif fault == "mid-body":
            proxy.cut_after = proxy.body_bytes + 256 * 1024
        elif fault == "full":
            await fill_store(s)
        elif fault == "kill hub":
            await s.restart("hub")
            for p in s.proxies.values():
                p.target = s.hub.url
        else:
            await s.restart(fault.split()[1])


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


async def settle(s: Soak, d: Daemon) -> list[dict[str, Any]]:
    """Every import task finished (none stuck pending or processing)."""
    deadline = time.monotonic() + 180
    while True:
        status, body = await s.call(d, "GET", "/v2/tasks")
        assert status == 200, body
        running = [t for t in body["tasks"] if t["status"] in ("pending", "processing")]
        if not running:
            return list(body["tasks"])
        assert time.monotonic() < deadline, "tasks stuck: %s" % running
        await asyncio.sleep(1)


async def copies_settled(s: Soak) -> dict[str, dict[str, Any]]:
    """No copy stuck on its way: each asked copy is listed as a store of the hub image or as
    failed (a visible failure), none still importing."""
    deadline = time.monotonic() + 180
    while True:
        images: dict[str, dict[str, Any]] = {}
        for image_id in s.hub_images:
            status, image = await s.call(s.hub, "GET", "/v2/images/%s" % image_id)
            assert status == 200, image
            images[image_id] = image
        stuck = [i for i in images.values() if i.get("os_glance_importing_to_stores")]
        if not stuck:
            return images
        assert time.monotonic() < deadline, "copies stuck: %s" % stuck
        await asyncio.sleep(1)


def stores_of(image: dict[str, Any], key: str = "stores") -> set[str]:
    return set(str(image.get(key) or "").split(",")) - {""}


async def check_edge(s: Soak, site: str, hub_stores: dict[str, set[str]]) -> Counter[str]:
    edge = s.edges[site]
    tasks = await settle(s, edge)
    outcomes = Counter(t["status"] for t in tasks)
    for task in tasks:
        if task["status"] == "failure":
            assert task["message"] and "Internal" not in task["message"], task
    # Every image the edge holds hashes to its record and to what its client sent.
    status, listing = await s.call(edge, "GET", "/v2/images?limit=1000")
    assert status == 200
    expected = {**s.hub_images, **{i: h for i, (_, h) in s.edge_images.items()}}
    for image in listing["images"]:
        if image["status"] != "active":
            continue
        status, body = await s.call(edge, "GET", "/v2/images/%s/file" % image["id"], headers={"Accept": "*/*"})
        assert status == 200, (site, image, body)
        assert sha(body) == image["os_hash_value"], (site, image)
        assert sha(body) == expected.get(image["id"], sha(body)), (site, image)
    # No image lost: every hub image and every upload answered 204 (not deleted since) is active.
    active = {image["id"] for image in listing["images"] if image["status"] == "active"}
    assert set(s.hub_images) <= active, site
    assert {i for i, (at, _) in s.edge_images.items() if at == site and i not in s.importing} <= active, site
    # Copies the hub lists at this site are there, right, and the only hub images in its store.
    pinned = {i for i, stores in hub_stores.items() if site in stores}
    for image_id in pinned:
        assert sha((s.store(site) / image_id).read_bytes()) == s.hub_images[image_id], image_id
    # No orphan files: the store holds exactly the active local images and the copies.
    own = {i for i in active if i not in s.hub_images}
    assert files(s.store(site)) == own | pinned, site
    assert files(edge.state_dir / "staging") == set(), site
    status, cache = await s.call(edge, "GET", "/v2/cache")
    assert status == 200, cache
    cached = {entry["image_id"] for entry in cache.get("cached_images", [])}
    assert cached <= set(s.hub_images), cache
    leftover = {f for f in files(edge.state_dir / "cache") if not any(i in f for i in cached)}
    assert leftover == set(), (site, leftover)
    assert files(s.store(site) / PARTIAL_DIR) == set(), site
    assert files(s.store(site) / PULLS_DIR) == set(), site
    s.counts["%s copies held" % site] = len(pinned)
    return outcomes


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
    samples: list[tuple[float, dict[str, tuple[int, int]]]] = []

    async def sample() -> None:
        while time.monotonic() < until:
            await asyncio.sleep(2)
            if time.monotonic() > steady_from + 5 and not s.restarting:
                samples.append(
                    (time.monotonic(), {n: (fd_count(d.proc.pid), rss(d.proc.pid)) for n, d in s.daemons().items()})
                )

    clients = (("upload", uploads), ("import", imports), ("download", downloads), ("copy", copies), ("delete", deletes))
    async with asyncio.TaskGroup() as tg:
        for name, client in clients:
            tg.create_task(tolerant(s, name, client, until))
        tg.create_task(faults(s, until, steady_from))
        tg.create_task(sample())

    # The links are whole again; whatever was running finishes.
    for proxy in s.proxies.values():
        proxy.rate, proxy.cut_after, proxy.target = 0, None, s.hub.url
    hub_records = await copies_settled(s)
    hub_stores = {i: stores_of(image) for i, image in hub_records.items()}
    failed = {i: stores_of(image, "os_glance_failed_import") for i, image in hub_records.items()}
    for image_id, site in s.copies:
        # Asked for: it arrived, or it failed visibly.
        assert site in hub_stores[image_id] or site in failed[image_id], (image_id, site, hub_records[image_id])
        s.counts["copy " + ("landed" if site in hub_stores[image_id] else "failed")] += 1
    outcomes: Counter[str] = Counter()
    for site in SITES:
        outcomes += await check_edge(s, site, hub_stores)
    # The hub's store holds its images and nothing else.
    assert files(s.hub.state_dir / "images") == set(s.hub_images)
    assert files(s.hub.state_dir / "images" / PARTIAL_DIR) == set()
    # Flat over the steady part: no descriptor or memory growth once the restarts stopped.
    assert len(samples) >= 2, samples
    (t0, first), (t1, last) = samples[0], samples[-1]
    print(
        "\nsoak %.0f s (hub + %s): %s; edge tasks %s; over the last %.0f s: %s"
        % (
            SECONDS,
            " + ".join(SITES),
            dict(sorted(s.counts.items())),
            dict(outcomes),
            t1 - t0,
            "; ".join(
                "%s fds %d -> %d, RSS %.0f -> %.0f MiB"
                % (n, first[n][0], last[n][0], first[n][1] / MiB, last[n][1] / MiB)
                for n in first
            ),
        )
    )
    for n in first:
        assert last[n][0] <= first[n][0] + FD_SLACK, (n, samples)
        assert last[n][1] <= first[n][1] + RSS_SLACK, (n, samples)
    assert s.counts["download ok"] > 0 and s.counts["upload ok"] > 0 and outcomes["success"] > 0
    assert s.counts["copy landed"] > 0 and s.counts["fault full"] > 0
