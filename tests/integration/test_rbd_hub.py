"""RBD stores at an edge linked to a real appliance hub (separate daemon processes on loopback)
and the session's real Ceph cluster: hub-driven pins into an RBD default store, the edge's RBD
store as the hub sees it, glance-download into RBD, copy-image of an RBD-only image to central,
and the image cache kept in an RBD pool (fills, LRU eviction, serving, clones)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.ceph import POOL, CephCluster
from tests.conftest import Daemon, start_daemon, write_toml
from tests.integration.test_hub_link import (
    FAST,
    HUB_ADMIN_TOKEN,
    SITE_TOKENS,
    Cloud,
    _has,
    _size_at_least,
    glance,
    running_cloud,
)
from tests.integration.test_rbd_paths import replace_rbd_image
from tests.integration.test_rbd_store import image_data
from tests.waiting import eventually

MiB = 1 << 20


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as c:
        yield c


def start_rbd_edge(
    cloud: Cloud,
    ceph: CephCluster,
    name: str = "dcn0",
    token: str | None = None,
    cache: dict[str, Any] | None = None,
    scrubber: dict[str, Any] | None = None,
    **hub: Any,
) -> Daemon:
    """An edge whose default store is an RBD pool (a filesystem store beside it)."""
    config = write_toml(
        cloud.tmp / ("%s-rbd.toml" % name),
        {
            "site": {"name": name},
            "stores": {
                "default": "ceph",
                "ceph": ceph.store_config(description="Ceph pool images"),
                "local": {"path": "images", "min_free_bytes": 0},
            },
            "hub": {"url": cloud.hub.url, "token": token or SITE_TOKENS[name], **FAST, **hub},
            "cache": {"min_free_bytes": 0, **(cache or {})},
            "scrubber": scrubber or {"enabled": False},
        },
    )
    cloud.edges[name] = start_daemon(cloud.tmp / name, config)
    return cloud.edges[name]


def rbd_url(ceph: CephCluster, name: str) -> str:
    return "rbd://%s/%s/%s/snap" % (ceph.fsid, POOL, name)


async def registered(cloud: Cloud, name: str) -> dict[str, Any] | None:
    return (await cloud.sites()).get(name)


async def test_pins_go_into_an_rbd_default_store_and_the_hub_sees_the_pool(cloud: Cloud, ceph: CephCluster) -> None:
    edge = start_rbd_edge(cloud, ceph)
    site = await eventually(lambda: registered(cloud, "dcn0"), "registration", within=60)
    # The hub sees the site's stores with their kind and capacity: the RBD one's is its pool's.
    stores = {s["id"]: s for s in site["stores"]}
    assert stores["ceph"]["type"] == "rbd" and stores["local"]["type"] == "file", stores
    df = json.loads(ceph.run("ceph", "df", "--format", "json"))
    assert stores["ceph"]["total_bytes"] == df["stats"]["total_bytes"] > 0
    assert 0 < stores["ceph"]["free_bytes"] <= stores["ceph"]["total_bytes"]
    assert site["total_bytes"] >= stores["ceph"]["total_bytes"]

    data = image_data(8 * MiB)
    image_id = await cloud.upload(cloud.hub, data)
    await cloud.copy_image(image_id, stores=["dcn0"])
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn0"), "the hub to list dcn0", within=60)
    # The pin is an RBD image in Glance's layout, where Nova at the site clones it.
    assert await cloud.stores_of(edge, image_id) == {"central", "ceph"}
    assert [(s["name"], s["protected"]) for s in ceph.snaps(image_id)] == [("snap", "true")]
    locations = await cloud.call(edge, "GET", "/v2/images/%s/locations" % image_id)
    assert {"url": rbd_url(ceph, image_id), "metadata": {"store": "ceph"}} in locations, locations
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data
    assert (await cloud.call(edge, "GET", "/v2/edge/cache"))["entries"] == []  # served from the pin
    assert not list((edge.state_dir / "pulls").iterdir())  # the pull file went once written into RBD
    assert not (edge.state_dir / "images" / image_id).exists()
    # stores-delete at the hub: the site removes its RBD image on its next sync.
    await glance(cloud, cloud.hub)("stores-delete", "--store", "dcn0", image_id)

    async def unpinned() -> bool:
        return image_id not in ceph.images() and "ceph" not in await cloud.stores_of(edge, image_id)

    await eventually(unpinned, "dcn0 to drop its RBD copy", within=60)


async def test_a_pin_into_rbd_killed_mid_pull_resumes_with_range(cloud: Cloud, ceph: CephCluster) -> None:
    data = os.urandom(24 * MiB)
    image_id = await cloud.upload(cloud.hub, data)
    edge = start_rbd_edge(cloud, ceph, bandwidth_limit=4 * MiB)  # ~6 s for the pull
    await eventually(lambda: registered(cloud, "dcn0"), "registration", within=60)
    await cloud.copy_image(image_id, stores=["dcn0"])
    pull = edge.state_dir / "pulls" / image_id  # RBD keeps no partial data: the pull is a file here
    await eventually(lambda: _size_at_least(pull, 4 * MiB), "4 MiB pulled", within=60)
    edge.stop(signal.SIGKILL)
    kept = pull.stat().st_size
    assert 0 < kept < len(data) and image_id not in ceph.images()
    edge = start_rbd_edge(cloud, ceph, bandwidth_limit=0)
    await eventually(lambda: _has(cloud, cloud.hub, image_id, "dcn0"), "the hub to list dcn0", within=90)
    assert "resuming the transfer at byte" in edge.log.read_text()
    assert [(s["name"], s["protected"]) for s in ceph.snaps(image_id)] == [("snap", "true")]
    assert not pull.exists()
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data


async def test_glance_download_into_rbd_and_an_rbd_only_image_copied_to_central(
    cloud: Cloud, ceph: CephCluster
) -> None:
    # Copying to central creates an image at the hub: this edge is given a token that may.
    edge = start_rbd_edge(cloud, ceph, token=HUB_ADMIN_TOKEN)
    await eventually(lambda: registered(cloud, "dcn0"), "registration", within=60)
    golden = image_data(6 * MiB)
    hub_id = await cloud.upload(cloud.hub, golden, name="golden")
    local = await cloud.call(
        edge, "POST", "/v2/images", 201, json={"name": "golden-copy", "disk_format": "raw", "container_format": "bare"}
    )
    await cloud.call(
        edge,
        "POST",
        "/v2/images/%s/import" % local["id"],
        202,
        json={"method": {"name": "glance-download", "glance_image_id": hub_id}, "stores": ["ceph"]},
    )

    async def active(image_id: str) -> bool:
        return ((await cloud.image(edge, image_id)) or {}).get("status") == "active"

    await eventually(lambda: active(local["id"]), "the glance-download import", within=60)
    assert await cloud.stores_of(edge, local["id"]) == {"ceph"}
    assert [s["name"] for s in ceph.snaps(local["id"])] == ["snap"]
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % local["id"]) == golden

    # An image made here, held only in the RBD store, copied to central under its id.
    made = image_data(5 * MiB)
    image_id = await cloud.upload(edge, made, name="made-at-the-edge")
    assert await cloud.stores_of(edge, image_id) == {"ceph"}
    await glance(cloud, edge)("image-import", image_id, "--import-method", "copy-image", "--stores", "central")
    await eventually(lambda: _has(cloud, edge, image_id, "central"), "the edge to record central", within=60)
    at_hub = await cloud.image(cloud.hub, image_id)
    assert at_hub is not None and at_hub["status"] == "active" and at_hub["name"] == "made-at-the-edge"
    assert await cloud.call(cloud.hub, "GET", "/v2/images/%s/file" % image_id) == made
    assert image_id in ceph.images()  # the edge keeps its own copy


async def test_the_cache_keeps_its_entries_in_an_rbd_pool(cloud: Cloud, ceph: CephCluster) -> None:
    size = 4 * MiB
    # Room for two entries: the third fill evicts the least recently used one.
    edge = start_rbd_edge(
        cloud,
        ceph,
        cache={"store": "ceph", "max_size": 10 * MiB, "high_watermark": 90, "low_watermark": 80},
        scrubber={"enabled": True, "interval": 1, "rate_mib_per_s": 64},
    )
    blobs = [os.urandom(size) for _ in range(3)]
    ids = [await cloud.upload(cloud.hub, blob, name="cached-%d" % i) for i, blob in enumerate(blobs)]

    async def mirrored() -> bool:
        return all([await cloud.image(edge, image_id) is not None for image_id in ids])

    await eventually(mirrored, "the mirror", within=60)

    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[0]) == blobs[0]  # a fill from the hub
    assert "cache.%s" % ids[0] in ceph.images()
    assert [s["name"] for s in ceph.snaps("cache.%s" % ids[0])] == ["snap"]
    assert not list((edge.state_dir / "cache" / "data").iterdir())  # no file: the entry is in the pool
    assert not list((edge.state_dir / "cache" / "partial").iterdir())
    # Served from the pool: whole, and a range.
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[0]) == blobs[0]
    part = await cloud.call(
        edge, "GET", "/v2/images/%s/file" % ids[0], 206, headers={"Range": "bytes=%d-%d" % (MiB, 2 * MiB - 1)}
    )
    assert part == blobs[0][MiB : 2 * MiB]
    stats = await cloud.call(edge, "GET", "/v2/edge/cache")
    assert [e["image_id"] for e in stats["entries"]] == [ids[0]]
    assert stats["stats"]["hits"] == 2 and stats["stats"]["misses"] == 1, stats

    # A clone of the cached image (a disk booted from it) keeps that entry from eviction.
    child = "child-%s" % ids[0][:8]
    ceph.rbd("clone", "%s/cache.%s@snap" % (POOL, ids[0]), "%s/%s" % (POOL, child))
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[1]) == blobs[1]
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[2]) == blobs[2]

    async def cached() -> set[str]:
        return {e["image_id"] for e in (await cloud.call(edge, "GET", "/v2/edge/cache"))["entries"]}

    # ids[0] is the least recently used but in use: ids[1] went instead.
    assert await cached() == {ids[0], ids[2]}
    assert "cache.%s" % ids[1] not in ceph.images() and "cache.%s" % ids[0] in ceph.images()
    ceph.rbd("rm", "--no-progress", "%s/%s" % (POOL, child))

    # Without the clone, LRU applies: a fill of ids[1] again evicts ids[0].
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[1]) == blobs[1]
    assert await cached() == {ids[1], ids[2]}
    assert "cache.%s" % ids[0] not in ceph.images()
    assert {"cache.%s" % ids[1], "cache.%s" % ids[2]} <= set(ceph.images())

    # The scrubber re-reads the entries in the pool: one changed there is dropped, and the next
    # download fills it again from the hub.
    aside = replace_rbd_image(ceph, "cache.%s" % ids[2], bytes(reversed(blobs[2])), cloud.tmp)

    async def dropped() -> bool:
        return "cached image %s does not match" % ids[2] in edge.log.read_text() and ids[2] not in await cached()

    await eventually(dropped, "the scrubber to drop the changed entry", within=60)
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % ids[2]) == blobs[2]
    assert ids[2] in await cached()
    ceph.rbd("snap", "unprotect", "%s/%s@snap" % (POOL, aside))
    ceph.rbd("snap", "purge", "%s/%s" % (POOL, aside))
    ceph.rbd("rm", "--no-progress", "%s/%s" % (POOL, aside))


async def test_cached_images_are_relayed_from_the_hub_while_the_cache_pool_is_lost(
    cloud: Cloud, ceph: CephCluster
) -> None:
    edge = start_rbd_edge(cloud, ceph, cache={"store": "ceph"})
    data = os.urandom(3 * MiB)
    image_id = await cloud.upload(cloud.hub, data, name="cached-then-lost")
    await eventually(lambda: cloud.image(edge, image_id), "the mirror", within=60)
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data  # filled into the pool
    assert "cache.%s" % image_id in ceph.images()

    async def ceph_read_only() -> bool:
        stores = (await cloud.call(edge, "GET", "/v2/info/stores/detail"))["stores"]
        return any(s["id"] == "ceph" and s.get("read-only") == "true" for s in stores)

    ceph.stop()
    try:
        await eventually(ceph_read_only, "the edge to see its pool gone", within=30)
        # The entry cannot be read: the hub's copy is relayed (verified), whole and in part.
        assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data
        part = await cloud.call(
            edge, "GET", "/v2/images/%s/file" % image_id, 206, headers={"Range": "bytes=%d-%d" % (MiB, MiB + 99)}
        )
        assert part == data[MiB : MiB + 100]
        assert "relayed from the hub uncached: Ceph cluster" in edge.log.read_text()
    finally:
        await asyncio.to_thread(ceph.start)
    await eventually(lambda: _not(ceph_read_only), "the pool back", within=60)
    hits = (await cloud.call(edge, "GET", "/v2/edge/cache"))["stats"]["hits"]
    assert await cloud.call(edge, "GET", "/v2/images/%s/file" % image_id) == data
    assert (await cloud.call(edge, "GET", "/v2/edge/cache"))["stats"]["hits"] == hits + 1  # from the pool again


async def _not(check: Callable[[], Awaitable[bool]]) -> bool:
    return not await check()
