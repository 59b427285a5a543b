"""The image cache between two real daemons: a hub (the appliance in role "hub") and an edge whose
`[hub] url` points at a counting relay in front of the hub (tests/hubproxy.py)."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter as Tally
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JSON_ERRORS, VENV_BIN, Daemon, start_daemon, write_toml
from tests.hubproxy import HubProxy
from tests.waiting import eventually

MiB = 1 << 20


@dataclass
class Link:
    hub: Daemon
    edge: Daemon
    proxy: HubProxy
    session: aiohttp.ClientSession
    tmp: Path

    def edge_headers(self, **extra: str) -> dict[str, str]:
        return {"X-Auth-Token": self.edge.token, **JSON_ERRORS, **extra}

    async def hub_image(self, data: bytes, **body: Any) -> str:
        """Create and upload an image on the hub; returns its id."""
        headers = {"X-Auth-Token": self.hub.token, **JSON_ERRORS}
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", "visibility": "public", **body}
        async with self.session.post(self.hub.url + "/v2/images", json=body, headers=headers) as resp:
            assert resp.status == 201, await resp.text()
            image_id = (await resp.json())["id"]
        async with self.session.put(
            self.hub.url + "/v2/images/%s/file" % image_id,
            data=io.BytesIO(data),
            headers={**headers, "Content-Type": "application/octet-stream"},
        ) as resp:
            assert resp.status == 204, await resp.text()
        return image_id

    async def download(self, image_id: str, **headers: str) -> tuple[int, bytes]:
        async with self.session.get(
            self.edge.url + "/v2/images/%s/file" % image_id, headers=self.edge_headers(**headers)
        ) as resp:
            return resp.status, await resp.read()

    async def edge_json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self.session.request(method, self.edge.url + path, headers=self.edge_headers(), **kwargs) as resp:
            assert resp.status < 300, "%s %s: %d %s" % (method, path, resp.status, await resp.text())
            return await resp.json() if resp.content_type == "application/json" else None

    async def cache_view(self) -> dict[str, Any]:
        return await self.edge_json("GET", "/v2/edge/cache")

    def restart_edge(self) -> None:
        self.edge.stop()
        self.edge = start_daemon(self.edge.state_dir, self.edge.state_dir / "edge.toml")


def _edge_config(
    path: Path, proxy: HubProxy, hub: Daemon, cache: dict[str, Any] | None, hub_link: dict[str, Any] | None = None
) -> Path:
    return write_toml(
        path,
        {
            "site": {"name": "dcn0"},
            "hub": {
                "url": proxy.url,
                "token_file": str(hub.state_dir / "admin-token"),
                "read_timeout": 5,
                "connect_timeout": 2,
                "resume_attempts": 8,
                "retry_max_seconds": 1,
                **(hub_link or {}),
            },
            "cache": {"max_size": 256 * MiB, "min_free_bytes": 0, "prefetch_interval": 3600, **(cache or {})},
        },
    )


@pytest.fixture
async def link_factory(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Link] = []

    async def make(cache: dict[str, Any] | None = None, rate: int = 0, hub_link: dict[str, Any] | None = None) -> Link:
        hub = start_daemon(
            tmp_path / "hub", write_toml(tmp_path / "hub.toml", {"site": {"name": "central", "role": "hub"}})
        )
        proxy = await HubProxy(hub.url, rate=rate).start()
        edge_dir = tmp_path / "edge"
        edge_dir.mkdir()
        edge = start_daemon(edge_dir, _edge_config(edge_dir / "edge.toml", proxy, hub, cache, hub_link))
        link = Link(hub, edge, proxy, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)), tmp_path)
        made.append(link)
        return link

    yield make
    for link in made:
        await link.session.close()
        await link.proxy.close()
        for d in (link.edge, link.hub):
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)


async def test_twenty_concurrent_first_downloads_make_one_upstream_transfer(link_factory: Any) -> None:
    link = await link_factory(rate=16 * MiB)  # ~1 s for the image: clients overlap the fill
    data = os.urandom(16 * MiB)
    image_id = await link.hub_image(data)
    first_byte: list[float] = []
    started = time.monotonic()

    async def client() -> bytes:
        async with link.session.get(
            link.edge.url + "/v2/images/%s/file" % image_id, headers=link.edge_headers()
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Length"] == str(len(data))
            parts = [await resp.content.readany()]
            first_byte.append(time.monotonic() - started)
            parts.append(await resp.read())
            return b"".join(parts)

    results = await asyncio.gather(*(client() for _ in range(20)))
    total = time.monotonic() - started
    assert all(r == data for r in results)
    assert link.proxy.file_requests(image_id) == 1
    assert link.proxy.body_bytes == len(data)
    # Clients stream as bytes arrive, not after the fill finished.
    assert max(first_byte) < total * 0.6, (first_byte, total)
    view = await link.cache_view()
    assert [e["image_id"] for e in view["entries"]] == [image_id]
    # A later download is a hit: no more upstream traffic.
    assert (await link.download(image_id)) == (200, data)
    assert link.proxy.file_requests(image_id) == 1
    stats = (await link.cache_view())["stats"]
    assert stats["hits"] == 1 and stats["misses"] == 20 and stats["bytes_from_upstream"] == len(data)


async def test_first_pulls_right_after_the_hub_upload_never_answer_empty(link_factory: Any) -> None:
    # The race of issue 12: 20 clients ask the edge for an image within a second of the hub's
    # upload ending, while the mirror (every second) rewrites fresh records. Each client gets the
    # whole image or an error status, never a 204 or an empty 200; the hub sends the data once.
    link = await link_factory(hub_link={"mirror_interval": 1})
    for round_ in range(6):
        data = os.urandom(8 * MiB)
        image_id = await link.hub_image(data, name="race-%d" % round_)
        uploaded = time.monotonic()

        async def client(image_id: str, delay: float) -> tuple[int, bytes]:
            await asyncio.sleep(delay)  # arrivals spread as separate clients' are
            async with link.session.get(
                link.edge.url + "/v2/images/%s/file" % image_id, headers=link.edge_headers()
            ) as resp:
                return resp.status, await resp.read()

        tasks = [asyncio.create_task(client(image_id, i * 0.003)) for i in range(20)]
        started = time.monotonic() - uploaded
        results = await asyncio.gather(*tasks)
        assert started < 1.0, started
        for status, body in results:
            assert (status == 200 and body == data) or status >= 400, (round_, status, len(body), body[:200])
        assert sum(1 for status, _ in results if status == 200) >= 1, [s for s, _ in results]
        assert link.proxy.file_requests(image_id) == 1, round_


async def test_a_hub_image_without_data_yet_is_an_error_at_the_edge_never_204(link_factory: Any) -> None:
    link = await link_factory()
    headers = {"X-Auth-Token": link.hub.token, **JSON_ERRORS}
    body = {"name": "later", "disk_format": "raw", "container_format": "bare", "visibility": "public"}
    async with link.session.post(link.hub.url + "/v2/images", json=body, headers=headers) as resp:
        image_id = (await resp.json())["id"]
    await link.edge_json("GET", "/v2/images/%s" % image_id)  # recorded at the edge while queued at the hub
    status, answer = await link.download(image_id)
    assert status == 409, (status, answer)
    assert "not active yet at the hub" in json.loads(answer)["message"]
    data = os.urandom(MiB)
    async with link.session.put(
        link.hub.url + "/v2/images/%s/file" % image_id,
        data=data,
        headers={**headers, "Content-Type": "application/octet-stream"},
    ) as resp:
        assert resp.status == 204
    assert (await link.download(image_id)) == (200, data)
    # The hub unreachable while the edge's record is still the queued one: 503, not 204.
    async with link.session.post(link.hub.url + "/v2/images", json=body, headers=headers) as resp:
        other = (await resp.json())["id"]
    await link.edge_json("GET", "/v2/images/%s" % other)
    link.proxy.target = "http://127.0.0.1:9"
    status, answer = await link.download(other)
    assert status == 503 and "hub is unreachable" in json.loads(answer)["message"], (status, answer)


async def test_lookups_of_unknown_ids_are_remembered_and_bounded_per_project(link_factory: Any) -> None:
    # Issue 12: any member could make the edge ask the hub about every UUID it is sent.
    link = await link_factory(hub_link={"miss_ttl": 3, "lookup_burst": 10, "lookups_per_minute": 60})

    def hub_lookups() -> int:
        return sum(
            n
            for (method, path), n in link.proxy.requests.items()
            if method == "GET" and re.fullmatch(r"/v2/images/[0-9a-f-]{36}", path)
        )

    async def show(image_id: str) -> int:
        async with link.session.get(link.edge.url + "/v2/images/%s" % image_id, headers=link.edge_headers()) as resp:
            await resp.read()
            return resp.status

    started = time.monotonic()
    ids = [str(uuid.uuid4()) for _ in range(200)]
    statuses = [await show(i) for i in ids]
    elapsed = time.monotonic() - started
    assert set(statuses) <= {404, 429}, Tally(statuses)
    assert statuses.count(429) > 0
    asked = hub_lookups()
    assert asked <= 10 + elapsed * 1 + 1, (asked, elapsed)  # the burst, plus one a second
    # A miss asked again within the TTL is answered from memory: no hub request.
    missed = [i for i, s in zip(ids, statuses, strict=True) if s == 404]
    before = hub_lookups()
    assert [await show(i) for i in missed] == [404] * len(missed)
    assert hub_lookups() == before
    # An image created at the hub after a miss becomes visible once the TTL has passed.
    async with link.session.post(
        link.hub.url + "/v2/images",
        json={"id": missed[0], "name": "late", "visibility": "public"},
        headers={"X-Auth-Token": link.hub.token, **JSON_ERRORS},
    ) as resp:
        assert resp.status == 201, await resp.text()
    assert await show(missed[0]) == 404
    await asyncio.sleep(3.2)
    assert await show(missed[0]) == 200


async def test_deleting_an_image_mid_fill_stops_the_fill_and_leaves_no_byte(link_factory: Any) -> None:
    # ~4 s for the image: the hub's deletion reaches the edge through the change feed mid-fill.
    link = await link_factory(rate=4 * MiB, hub_link={"mirror_interval": 1})
    data = os.urandom(16 * MiB)
    image_id = await link.hub_image(data)
    reader = asyncio.create_task(link.download(image_id))
    await eventually(lambda: _filled_at_least(link, image_id, MiB), "1 MiB filled")
    async with link.session.delete(
        link.hub.url + "/v2/images/%s" % image_id, headers={"X-Auth-Token": link.hub.token}
    ) as resp:
        assert resp.status == 204, await resp.text()
    try:  # the client following the fill fails: never a complete download of a deleted image
        status, body = await reader
        assert status >= 400 or body != data, status
    except aiohttp.ClientPayloadError:
        pass
    needle = data[:4096]

    async def nothing_left() -> bool:
        # The edge learns of the deletion through the feed; its readers fail at once, and the
        # purge removes the files right after, so wait for it rather than race it.
        if (await link.cache_view())["fills"]:
            return False
        for path in link.edge.state_dir.rglob("*"):
            if path.is_file() and not path.name.startswith("catalog.sqlite") and path.suffix != ".log":
                if image_id in path.name or needle in path.read_bytes():
                    return False
        return True

    await eventually(nothing_left, "no fill and no file or byte of the deleted image at the edge", within=10)
    assert "Traceback" not in link.edge.log.read_text(errors="replace")


async def test_a_client_leaving_mid_fill_does_not_stop_it(link_factory: Any) -> None:
    link = await link_factory(rate=8 * MiB)
    data = os.urandom(8 * MiB)
    image_id = await link.hub_image(data)

    async def leaver() -> None:
        async with link.session.get(
            link.edge.url + "/v2/images/%s/file" % image_id, headers=link.edge_headers()
        ) as resp:
            await resp.content.readexactly(MiB)
            resp.close()  # drop the connection mid-body

    stayer = asyncio.create_task(link.download(image_id))
    await leaver()
    assert (await stayer) == (200, data)
    await eventually(lambda: _cached(link, image_id), "the entry")
    assert link.proxy.file_requests(image_id) == 1


async def _cached(link: Link, image_id: str) -> bool:
    listing = await link.edge_json("GET", "/v2/cache")
    return image_id in [e["image_id"] for e in listing["cached_images"]]


async def test_hub_killed_mid_fill_resumes_with_range(link_factory: Any) -> None:
    link = await link_factory(rate=8 * MiB)
    data = os.urandom(24 * MiB)
    image_id = await link.hub_image(data)
    download = asyncio.create_task(link.download(image_id))
    await eventually(lambda: _filled_at_least(link, image_id, 4 * MiB), "4 MiB filled")
    link.hub.stop(signal.SIGKILL)
    await asyncio.sleep(0.5)
    link.hub = start_daemon(link.hub.state_dir, link.tmp / "hub.toml")
    link.proxy.target = link.hub.url
    status, body = await download
    assert status == 200 and body == data
    assert link.proxy.file_requests(image_id) >= 2
    assert link.proxy.ranges and link.proxy.ranges[-1][1].startswith("bytes=")
    resumed_at = int(link.proxy.ranges[-1][1][len("bytes=") :].rstrip("-"))
    assert 0 < resumed_at < len(data)
    # The hub itself answered the resumed request with a 206.
    async with link.session.get(link.hub.url + "/metrics") as resp:
        metrics = await resp.text()
    assert 'route="/v2/images/{image_id}/file",status="206"' in metrics
    assert await _cached(link, image_id)


async def _filled_at_least(link: Link, image_id: str, n: int) -> bool:
    fills = {f["image_id"]: f["bytes_done"] for f in (await link.cache_view())["fills"]}
    return fills.get(image_id, 0) >= n


async def test_a_corrupted_byte_makes_the_entry_invalid_and_unserved(link_factory: Any) -> None:
    link = await link_factory()
    data = os.urandom(4 * MiB)
    image_id = await link.hub_image(data)
    link.proxy.corrupt_offset = 3 * MiB + 17
    with pytest.raises(aiohttp.ClientPayloadError):
        await link.download(image_id)  # cut short of Content-Length: never a complete bad image
    view = await link.cache_view()
    assert view["entries"] == [] and view["stats"]["invalid"] == 1
    assert (link.edge.state_dir / "cache" / "invalid" / image_id).exists()
    assert not (link.edge.state_dir / "cache" / "data" / image_id).exists()
    link.proxy.corrupt_offset = None
    assert (await link.download(image_id)) == (200, data)
    assert await _cached(link, image_id)
    # The cleaner empties invalid/.
    cleaned = await link.edge_json("POST", "/v2/cache/clean")
    assert cleaned["total_files_cleaned"] == 1
    assert not (link.edge.state_dir / "cache" / "invalid" / image_id).exists()


async def test_eviction_follows_lru_and_the_watermarks(link_factory: Any) -> None:
    # max 10 MiB; high mark 9 MiB; low mark 6 MiB. Images of 3 MiB.
    link = await link_factory(cache={"max_size": 10 * MiB, "high_watermark": 90, "low_watermark": 60})
    blobs = {name: os.urandom(3 * MiB) for name in "ABCD"}
    ids = {name: await link.hub_image(blob, name=name) for name, blob in blobs.items()}
    for name in "ABC":
        assert (await link.download(ids[name])) == (200, blobs[name])
        await asyncio.sleep(0.05)  # distinct access times
    assert (await link.download(ids["A"]))[0] == 200  # A is now the most recent
    # D crosses the high mark: evict least recently used (B, then C) until D fits under the low mark.
    assert (await link.download(ids["D"])) == (200, blobs["D"])
    cached = {e["image_id"] for e in (await link.cache_view())["entries"]}
    assert cached == {ids["A"], ids["D"]}
    view = await link.cache_view()
    assert view["stats"]["evictions"] == 2 and view["used_bytes"] == 6 * MiB
    # Eviction removed the files, and only the cache's own files.
    data_dir = link.edge.state_dir / "cache" / "data"
    assert sorted(os.listdir(data_dir)) == sorted([ids["A"], ids["D"]])


async def test_an_image_larger_than_the_cache_is_served_uncached(link_factory: Any) -> None:
    link = await link_factory(cache={"max_size": 4 * MiB})
    data = os.urandom(6 * MiB)
    image_id = await link.hub_image(data)
    assert (await link.download(image_id)) == (200, data)
    view = await link.cache_view()
    assert view["entries"] == [] and view["stats"]["uncached"] == 1
    events = await link.edge_json("GET", "/v2/edge/events")
    assert any("does not fit in the cache" in e["message"] and image_id in e["message"] for e in events["events"])
    assert os.listdir(link.edge.state_dir / "cache" / "partial") == []


async def test_ranges_relay_upstream_until_cached_then_come_from_the_entry(link_factory: Any) -> None:
    link = await link_factory()
    data = os.urandom(2 * MiB)
    image_id = await link.hub_image(data)
    async with link.session.get(
        link.edge.url + "/v2/images/%s/file" % image_id, headers=link.edge_headers(Range="bytes=100-199")
    ) as resp:
        assert resp.status == 206 and await resp.read() == data[100:200]
        assert resp.headers["Content-Range"] == "bytes 100-199/%d" % len(data)
    assert link.proxy.ranges[-1][1] == "bytes=100-199"
    assert (await link.cache_view())["entries"] == []  # a range does not start a fill
    assert (await link.download(image_id)) == (200, data)
    before = sum(link.proxy.requests.values())
    async with link.session.get(
        link.edge.url + "/v2/images/%s/file" % image_id, headers=link.edge_headers(Range="bytes=-10")
    ) as resp:
        assert resp.status == 206 and await resp.read() == data[-10:]
    assert sum(link.proxy.requests.values()) == before


async def test_prefetch_of_a_queued_image(link_factory: Any) -> None:
    link = await link_factory()
    data = os.urandom(MiB)
    image_id = await link.hub_image(data)
    await link.edge_json("PUT", "/v2/cache/%s" % image_id)
    await eventually(lambda: _cached(link, image_id), "the prefetcher")
    listing = await link.edge_json("GET", "/v2/cache")
    assert listing["queued_images"] == []
    assert link.proxy.file_requests(image_id) == 1
    entry = listing["cached_images"][0]
    assert entry["size"] == len(data) and entry["hits"] == 0
    assert (await link.download(image_id)) == (200, data)
    assert link.proxy.file_requests(image_id) == 1


async def test_a_failed_prefetch_stays_queued_with_its_error(link_factory: Any) -> None:
    link = await link_factory()
    image_id = await link.hub_image(os.urandom(MiB))
    await link.edge_json("GET", "/v2/images/%s" % image_id)  # recorded at the edge
    link.proxy.target = "http://127.0.0.1:9"  # the hub is unreachable from now on
    await link.edge_json("PUT", "/v2/cache/%s" % image_id)
    await eventually(lambda: _queue_error(link, image_id), "a recorded failure")
    queue = (await link.cache_view())["queue"]
    assert queue[0]["attempts"] >= 1 and queue[0]["next_attempt_at"] > time.time()
    assert "hub" in queue[0]["last_error"]


async def _queue_error(link: Link, image_id: str) -> bool:
    queue = (await link.cache_view())["queue"]
    return bool(queue) and queue[0]["image_id"] == image_id and bool(queue[0]["last_error"])


async def test_offline_hub_cached_images_still_served_uncached_answer_503(link_factory: Any) -> None:
    link = await link_factory()
    cached_data, other_data = os.urandom(MiB), os.urandom(MiB)
    cached_id = await link.hub_image(cached_data)
    other_id = await link.hub_image(other_data)
    assert (await link.download(cached_id)) == (200, cached_data)
    await link.edge_json("GET", "/v2/images/%s" % other_id)
    link.hub.stop(signal.SIGKILL)
    assert (await link.download(cached_id)) == (200, cached_data)
    status, body = await link.download(other_id)
    assert status == 503
    message = json.loads(body)["message"] if body.startswith(b"{") else body.decode()
    assert "not cached" in message and "hub is unreachable" in message


async def test_restart_removes_files_the_catalog_does_not_know(link_factory: Any) -> None:
    link = await link_factory()
    data = os.urandom(MiB)
    image_id = await link.hub_image(data)
    assert (await link.download(image_id)) == (200, data)
    stray = link.edge.state_dir / "cache" / "data" / "not-an-entry"
    stray.write_bytes(b"x" * 1000)
    link.restart_edge()
    assert not stray.exists()
    assert (await link.download(image_id)) == (200, data)
    assert link.proxy.file_requests(image_id) == 1  # the entry survived the restart


async def test_the_glance_cache_commands(link_factory: Any) -> None:
    from tests.clients.test_glance_cli import Glance

    link = await link_factory()
    data = os.urandom(MiB)
    cached_id = await link.hub_image(data, name="cached")
    queued_id = await link.hub_image(os.urandom(MiB), name="queued")
    # In a thread: the relay to the hub runs on this test's event loop.
    glance = Glance(link.edge)
    assert (await link.download(cached_id)) == (200, data)
    row = next(line for line in (await asyncio.to_thread(glance.ok, "cache-list")).splitlines() if cached_id in line)
    assert "cached" in row and str(len(data)) in row
    # Record the second image, then cut the hub off so a queued image stays queued.
    await link.edge_json("GET", "/v2/images/%s" % queued_id)
    link.proxy.target = "http://127.0.0.1:9"
    await asyncio.to_thread(glance.ok, "cache-queue", queued_id)
    await eventually(lambda: _queue_error(link, queued_id), "the failed prefetch")
    row = next(line for line in (await asyncio.to_thread(glance.ok, "cache-list")).splitlines() if queued_id in line)
    assert "queued" in row
    assert (await asyncio.to_thread(glance.ok, "cache-prune")).strip() == "Pruned 0 file(s), 0 byte(s)."
    await asyncio.to_thread(glance.ok, "cache-clean")
    await asyncio.to_thread(glance.ok, "cache-delete", queued_id)
    assert queued_id not in await asyncio.to_thread(glance.ok, "cache-list")
    await asyncio.to_thread(glance.ok, "cache-clear", "--target", "cache")
    assert cached_id not in await asyncio.to_thread(glance.ok, "cache-list")
    # An id neither site knows: the client's own message with the 404.
    link.proxy.target = link.hub.url
    unknown = await asyncio.to_thread(glance.run, "cache-queue", "00000000-0000-4000-8000-000000000000")
    assert "Unable to queue image" in unknown.stderr and "404" in unknown.stderr


async def test_glance_legacy_cache_routes(link_factory: Any) -> None:
    """/v2/cached_images and /v2/queued_images, as older glance-cache-manage tools call them."""
    link = await link_factory()
    data = os.urandom(MiB)
    cached_id = await link.hub_image(data, name="cached")
    queued_id = await link.hub_image(os.urandom(MiB), name="queued")
    assert (await link.download(cached_id)) == (200, data)
    listed = (await link.edge_json("GET", "/v2/cached_images"))["cached_images"]
    assert [(e["image_id"], e["size"], e["hits"]) for e in listed] == [(cached_id, len(data), 0)]
    assert set(listed[0]) >= {"image_id", "hits", "last_accessed", "last_modified", "size"}
    await link.edge_json("GET", "/v2/images/%s" % queued_id)  # recorded at the edge
    link.proxy.target = "http://127.0.0.1:9"  # so the queued image stays queued
    assert await link.edge_json("PUT", "/v2/queued_images/%s" % queued_id) is None
    assert (await link.edge_json("GET", "/v2/queued_images")) == {"queued_images": [queued_id]}
    assert await link.edge_json("DELETE", "/v2/queued_images/%s" % queued_id) is None
    assert (await link.edge_json("GET", "/v2/queued_images")) == {"queued_images": []}
    await link.edge_json("PUT", "/v2/queued_images/%s" % queued_id)
    assert (await link.edge_json("DELETE", "/v2/queued_images")) == {"num_deleted": 1}
    assert (await link.edge_json("DELETE", "/v2/cached_images")) == {"num_deleted": 1}
    assert (await link.edge_json("GET", "/v2/cached_images")) == {"cached_images": []}
    await link.edge_json("DELETE", "/v2/cached_images/%s" % cached_id)  # gone already: a no-op, as in Glance


async def test_the_cache_cli(link_factory: Any) -> None:
    link = await link_factory()
    data = os.urandom(MiB)
    image_id = await link.hub_image(data)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "edge-appliance"), "cache", *args, "--state-dir", str(link.edge.state_dir)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    queued = await asyncio.to_thread(cli, "queue-image", image_id)
    assert queued.returncode == 0, queued.stderr
    await eventually(lambda: _cached(link, image_id), "the prefetcher")
    listed = await asyncio.to_thread(cli, "list-cached")
    assert image_id in listed.stdout and "1.0 MiB" in listed.stdout
    assert (await link.download(image_id)) == (200, data)
    stats = (await asyncio.to_thread(cli, "stats")).stdout
    assert re.search(r"hits\s+1\n", stats) and re.search(r"hit ratio\s+100.0%", stats), stats
    assert re.search(r"bytes fetched from upstream\s+1.0 MiB", stats), stats
    deleted = await asyncio.to_thread(cli, "delete-cached-image", image_id)
    assert deleted.returncode == 0 and not await _cached(link, image_id)
    missing = await asyncio.to_thread(cli, "queue-image")
    assert missing.returncode == 2 and "image ID is required" in missing.stderr
    unknown = await asyncio.to_thread(cli, "queue-image", "00000000-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and "404" in unknown.stderr


async def test_an_entry_being_read_is_never_evicted(link_factory: Any) -> None:
    # max 40 MiB, high mark 36 MiB, low mark 20 MiB; images of 16 MiB.
    link = await link_factory(cache={"max_size": 40 * MiB, "high_watermark": 90, "low_watermark": 50})
    blobs = {name: os.urandom(16 * MiB) for name in "ABC"}
    ids = {name: await link.hub_image(blob, name=name) for name, blob in blobs.items()}
    for name in "AB":
        assert (await link.download(ids[name])) == (200, blobs[name])
        await asyncio.sleep(0.05)
    # A reader of A that stalls after the first bytes, with a tiny receive buffer so the
    # daemon cannot finish sending: A is the least recently used entry, but in use.
    host, port = link.edge.url.rsplit("/", 1)[1].split(":")
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        await asyncio.to_thread(reader.connect, (host, int(port)))
        reader.sendall(
            (
                "GET /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\n\r\n" % (ids["A"], link.edge.token)
            ).encode()
        )
        assert (await asyncio.to_thread(reader.recv, 4096)).startswith(b"HTTP/1.1 200")
        await asyncio.sleep(0.3)
        assert (await link.download(ids["C"])) == (200, blobs["C"])
        cached = {e["image_id"] for e in (await link.cache_view())["entries"]}
        assert cached == {ids["A"], ids["C"]}  # B went instead of A
    finally:
        reader.close()


async def test_the_cleaner_removes_stalled_partials_only(link_factory: Any) -> None:
    link = await link_factory(cache={"stall_time": 3600})
    image_id = await link.hub_image(os.urandom(MiB))
    partial_dir = link.edge.state_dir / "cache" / "partial"
    stale, fresh = partial_dir / "stale-fill", partial_dir / "fresh-fill"
    stale.write_bytes(b"s" * 1000)
    fresh.write_bytes(b"f" * 10)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    cleaned = await link.edge_json("POST", "/v2/cache/clean")
    assert cleaned == {"total_files_cleaned": 1, "total_bytes_cleaned": 1000}
    assert not stale.exists() and fresh.exists()
    assert (await link.download(image_id))[0] == 200


async def test_the_free_space_floor_is_respected(link_factory: Any) -> None:
    # A floor above the filesystem's size: nothing can be cached, everything is still served.
    link = await link_factory(cache={"min_free_bytes": 1 << 60})
    data = os.urandom(MiB)
    image_id = await link.hub_image(data)
    assert (await link.download(image_id)) == (200, data)
    view = await link.cache_view()
    assert view["entries"] == [] and view["stats"]["uncached"] == 1
    events = await link.edge_json("GET", "/v2/edge/events")
    assert any("min_free_bytes" in e["message"] for e in events["events"])


async def test_reload_applies_cache_sizes_and_reports_what_needs_a_restart(make_config: Any) -> None:
    from appliance.services import open_services, reload_services

    async with open_services(make_config(hub={"url": "http://127.0.0.1:9"})) as services:
        pending = reload_services(
            services, make_config(hub={"url": "http://127.0.0.1:9"}, cache={"max_size": 5 * MiB, "low_watermark": 40})
        )
        assert services.cache.config.max_size == 5 * MiB and services.cache.config.low_watermark == 40
        assert pending == []
        pending = reload_services(services, make_config(hub={"url": "http://127.0.0.1:10"}, cache={"dir": "elsewhere"}))
        assert "hub.url" in pending and "cache.dir/enabled" in pending
        assert services.cache.config.dir == "cache"


async def test_no_cache_is_built_when_it_is_off_or_there_is_no_hub(make_config: Any) -> None:
    # Issue 15: hub records are HubRecords' business, so the byte cache exists only to hold bytes.
    from appliance.services import open_services

    async with open_services(make_config(hub={"url": "http://127.0.0.1:9"}, cache={"enabled": False})) as services:
        assert services.cache is None and services.hub_records is not None
        assert not [name for name, _ in services.background_loops() if name.startswith("cache-")]
    async with open_services(make_config()) as services:
        assert services.cache is None and services.hub_records is None


async def test_with_the_cache_off_hub_records_are_looked_up_and_the_cache_api_answers_off(link_factory: Any) -> None:
    link = await link_factory(cache={"enabled": False}, hub_link={"mirror_interval": 3600})
    image_id = await link.hub_image(os.urandom(MiB))
    # An id the edge has not mirrored yet: its record comes from the hub, with no cache built.
    image = await link.edge_json("GET", "/v2/images/%s" % image_id)
    assert image["id"] == image_id and image["stores"] == "central"
    assert ("GET", "/v2/images/%s" % image_id) in link.proxy.requests
    assert (await link.edge_json("GET", "/v2/edge/status"))["cache"] is None
    view = await link.cache_view()
    assert view["enabled"] is False and view["entries"] == view["queue"] == view["fills"] == []
    assert view["stats"]["hits"] == view["stats"]["misses"] == 0
    assert await link.edge_json("PUT", "/v2/cache/%s" % image_id) is None
    assert await link.edge_json("GET", "/v2/cache") == {"cached_images": [], "queued_images": []}
    assert not list((link.edge.state_dir / "cache" / "data").iterdir())
