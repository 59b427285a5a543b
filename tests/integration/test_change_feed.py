"""The hub's change feed and the edges that follow it, and writes at an edge to the hub's images:
a hub and edges as daemon processes on loopback. The edges reconcile in full only hourly here,
so whatever reaches them within seconds came through the feed."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_glance_cli import Glance
from tests.conftest import JSON_ERRORS, Daemon, start_daemon
from tests.glance_server import GlanceServer
from tests.hubproxy import HubProxy
from tests.integration.test_hub_link import HUB_ADMIN_TOKEN, SITE_TOKENS, Cloud, _has, _site_known, running_cloud
from tests.waiting import eventually

MiB = 1 << 20
MIRROR_INTERVAL = 1
HOURLY = {"reconcile_interval": 3600, "mirror_interval": MIRROR_INTERVAL}
# Generous for 2 shared cores; the benchmark measures the real figure.
WITHIN = 15
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


@pytest.fixture
async def feed_cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path) as cloud:
        yield cloud


async def record(cloud: Cloud, daemon: Daemon, **body: Any) -> str:
    """An image record without data (a queued image): a cheap catalog entry."""
    body = {"name": "rec", "disk_format": "raw", "container_format": "bare", "visibility": "public", **body}
    return str((await cloud.call(daemon, "POST", "/v2/images", 201, json=body))["id"])


async def knows(cloud: Cloud, edge: Daemon, *ids: str) -> bool:
    listed = {i["id"] for i in (await cloud.call(edge, "GET", "/v2/images?limit=1000"))["images"]}
    return set(ids) <= listed


async def status_of(cloud: Cloud, daemon: Daemon, path: str) -> int:
    async with cloud.session.get(daemon.url + path, headers={"X-Auth-Token": daemon.token, **JSON_ERRORS}) as resp:
        await resp.read()
        return resp.status


def leftovers(edge: Daemon, image_id: str) -> list[Path]:
    """Every file at the site named after the image (store copies, pulls, cache entries)."""
    return [p for p in edge.state_dir.rglob("*") if image_id in p.name]


async def gone_from(cloud: Cloud, edge: Daemon, image_id: str) -> bool:
    if await status_of(cloud, edge, "/v2/images/%s" % image_id) != 404:
        return False
    if await status_of(cloud, edge, "/v2/images/%s/file" % image_id) != 404:
        return False
    cache = await cloud.call(edge, "GET", "/v2/edge/cache")
    cached = {e["image_id"] for e in cache["entries"]}
    return image_id not in cached and not await asyncio.to_thread(leftovers, edge, image_id)


async def forgotten(cloud: Cloud, edge: Daemon, image_id: str) -> bool:
    """Gone from the edge's listing, cache and disk: asked without making the edge ask the hub
    (a show of an unknown id is a lookup at the hub)."""
    if not await knows(cloud, edge) or await knows(cloud, edge, image_id):
        return False
    cache = await cloud.call(edge, "GET", "/v2/edge/cache")
    cached = {e["image_id"] for e in cache["entries"]}
    return image_id not in cached and not await asyncio.to_thread(leftovers, edge, image_id)


def mirror_state(edge: Daemon) -> dict[str, Any]:
    return dict(json.loads((edge.state_dir / "hub-mirror.json").read_text()))


async def feed(cloud: Cloud, **params: Any) -> dict[str, Any]:
    query = "&".join("%s=%s" % kv for kv in params.items())
    return dict(await cloud.call(cloud.hub, "GET", "/v2/edge/changes?" + query))


# -- the feed at the hub ----------------------------------------------------------------------------


async def test_the_hub_feed_lists_creations_updates_and_deletions_in_order(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    start = (await feed(cloud, limit=0))["latest"]
    kept = await record(cloud, cloud.hub, name="kept")
    dropped = await record(cloud, cloud.hub, name="dropped")
    await cloud.call(
        cloud.hub,
        "PATCH",
        "/v2/images/%s" % kept,
        200,
        json=[{"op": "replace", "path": "/name", "value": "k2"}],
        headers=PATCH,
    )
    await cloud.call(cloud.hub, "DELETE", "/v2/images/%s" % dropped, 204)
    page = await feed(cloud, since=start)
    seen = [(c["image_id"], c["kind"]) for c in page["changes"]]
    assert seen == [(kept, "created"), (dropped, "created"), (kept, "updated"), (dropped, "deleted")]
    serials = [c["serial"] for c in page["changes"]]
    assert serials == sorted(serials) and page["latest"] == serials[-1] and page["next"] is None
    assert page["pruned_through"] == 0 and page["feed"]
    # Paged: `next` continues after the last serial given.
    first = await feed(cloud, since=start, limit=3)
    assert len(first["changes"]) == 3 and first["next"] == "/v2/edge/changes?since=%d" % serials[2]
    rest = dict(await cloud.call(cloud.hub, "GET", first["next"]))
    assert [c["serial"] for c in rest["changes"]] == serials[3:]
    # An edge site's own token may read it; bad input is named.
    async with cloud.session.get(
        cloud.hub.url + "/v2/edge/changes", headers={"X-Auth-Token": SITE_TOKENS["dcn0"], **JSON_ERRORS}
    ) as resp:
        assert resp.status == 200
    for query, word in (("since=-1", "since"), ("limit=5000", "limit"), ("since=abc", "since")):
        async with cloud.session.get(
            cloud.hub.url + "/v2/edge/changes?" + query, headers={"X-Auth-Token": cloud.hub.token, **JSON_ERRORS}
        ) as resp:
            body = await resp.json()
            assert resp.status == 400 and word in body["message"], body
    # The feed survives a restart of the hub, under the same id.
    cloud.hub.stop()
    cloud.restart_hub()
    again = await feed(cloud, since=start)
    assert again["feed"] == page["feed"] and again["changes"] == page["changes"]


async def test_an_edge_keeps_no_feed(feed_cloud: Cloud) -> None:
    edge = feed_cloud.start_edge("dcn0", **HOURLY)
    assert await status_of(feed_cloud, edge, "/v2/edge/changes") == 404


# -- edges following the feed -------------------------------------------------------------------------


async def test_a_hub_deletion_reaches_two_edges_with_their_pinned_and_cached_copies(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    edges = [cloud.start_edge(name, **HOURLY) for name in ("dcn0", "dcn1")]

    async def registered() -> bool:
        sites = await cloud.sites()
        return {"dcn0", "dcn1"} <= set(sites)

    await eventually(registered, "both edges registered")
    pinned = await cloud.upload(cloud.hub, os.urandom(MiB), name="pinned")
    cached_data = os.urandom(MiB)
    cached = await cloud.upload(cloud.hub, cached_data, name="cached")
    await cloud.copy_image(pinned, all_stores=True)
    for edge in edges:
        await eventually(lambda edge=edge: knows(cloud, edge, pinned, cached), "the edge to mirror both images")
        assert await cloud.call(edge, "GET", "/v2/images/%s/file" % cached) == cached_data  # fills the cache
        await eventually(lambda edge=edge: _stored(edge, pinned), "the pinned copy")
        assert await asyncio.to_thread(leftovers, edge, cached)  # the cache holds it
    # The real CLI at the hub deletes both.
    await asyncio.to_thread(Glance(cloud.hub).ok, "image-delete", pinned, cached)
    for edge in edges:
        for image_id in (pinned, cached):
            await eventually(
                lambda edge=edge, image_id=image_id: gone_from(cloud, edge, image_id),
                "image %s to leave %s with every copy" % (image_id, edge.state_dir.name),
                within=WITHIN,
            )


async def test_an_edge_follows_the_feed_at_its_sync_interval_when_that_is_shorter(feed_cloud: Cloud) -> None:
    """The issue's bound is one sync interval: a slow catalog mirror must not delay deletions."""
    cloud = feed_cloud
    edge = cloud.start_edge("dcn0", reconcile_interval=3600, mirror_interval=3600, sync_interval=1)
    image_id = await record(cloud, cloud.hub, name="withdrawn")
    await eventually(lambda: knows(cloud, edge, image_id), "the edge to mirror the image", within=WITHIN)
    await cloud.call(cloud.hub, "DELETE", "/v2/images/%s" % image_id, 204)
    await eventually(lambda: forgotten(cloud, edge, image_id), "the deletion at the edge", within=WITHIN)


async def _stored(edge: Daemon, image_id: str) -> bool:
    return await asyncio.to_thread((edge.state_dir / "images" / image_id).exists)


async def test_an_edge_restarted_after_deletions_catches_up_from_its_serial(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    proxy = await HubProxy(cloud.hub.url).start()
    try:
        edge = cloud.start_edge("dcn0", url=proxy.url, **HOURLY)
        pinned = await cloud.upload(cloud.hub, os.urandom(MiB), name="pinned")
        records = [await record(cloud, cloud.hub, name="r%d" % i) for i in range(4)]
        await eventually(lambda: _site_known(cloud, "dcn0"), "dcn0 registered")
        await cloud.copy_image(pinned, stores=["dcn0"])
        await eventually(lambda: knows(cloud, edge, pinned, *records), "the mirror")
        await eventually(lambda: _stored(edge, pinned), "the pinned copy")
        await eventually(lambda: _serial_reached(cloud, edge), "the edge to apply the whole feed")
        serial = mirror_state(edge)["serial"]
        assert edge.stop() == 0
        # While the edge is down: two deletions (one of them pinned there), one rename.
        await asyncio.to_thread(Glance(cloud.hub).ok, "image-delete", pinned, records[0])
        await cloud.call(
            cloud.hub,
            "PATCH",
            "/v2/images/%s" % records[1],
            200,
            json=[{"op": "replace", "path": "/name", "value": "renamed"}],
            headers=PATCH,
        )
        proxy.requests.clear()
        edge = cloud.edges["dcn0"] = start_daemon(edge.state_dir, cloud.tmp / "dcn0.toml")

        async def caught_up() -> bool:
            renamed = ((await cloud.image(edge, records[1])) or {}).get("name") == "renamed"
            return renamed and await forgotten(cloud, edge, pinned) and await forgotten(cloud, edge, records[0])

        await eventually(caught_up, "the edge to catch up", within=WITHIN)
        await eventually(lambda: _serial_reached(cloud, edge), "the serial saved after the changes")
        assert mirror_state(edge)["serial"] > serial
        # From its serial: no listing of the catalog, one record fetched for the rename, none for
        # the deletions or the untouched images.
        assert proxy.requests[("GET", "/v2/images")] == 0, proxy.requests
        fetched = {i: proxy.requests[("GET", "/v2/images/%s" % i)] for i in (pinned, *records)}
        assert fetched[records[1]] >= 1, proxy.requests
        assert fetched[pinned] == fetched[records[0]] == fetched[records[2]] == fetched[records[3]] == 0, (
            fetched,
            records,
        )
        assert await gone_from(cloud, edge, pinned) and await gone_from(cloud, edge, records[0])
    finally:
        await proxy.close()


async def _serial_reached(cloud: Cloud, edge: Daemon) -> bool:
    try:
        return int(mirror_state(edge).get("serial") or 0) >= (await feed(cloud, limit=0))["latest"]
    except FileNotFoundError:
        return False


async def test_an_edge_whose_catalog_was_emptied_reconciles_instead_of_following(feed_cloud: Cloud) -> None:
    # The serial is kept beside the catalog: a catalog started afresh (an operator removed it) has
    # none of the records before that serial, so the edge lists the hub's catalog again.
    cloud = feed_cloud
    ids = [await record(cloud, cloud.hub, name="e%d" % i) for i in range(3)]
    edge = cloud.start_edge("dcn0", **HOURLY)
    await eventually(lambda: knows(cloud, edge, *ids), "the mirror")
    await eventually(lambda: _serial_reached(cloud, edge), "the edge to apply the whole feed")
    assert edge.stop() == 0
    for name in ("catalog.sqlite", "catalog.sqlite-wal", "catalog.sqlite-shm"):
        (edge.state_dir / name).unlink(missing_ok=True)
    edge = cloud.edges["dcn0"] = start_daemon(edge.state_dir, cloud.tmp / "dcn0.toml")
    await eventually(lambda: knows(cloud, edge, *ids), "the hub's catalog again", within=WITHIN)


async def test_records_fetched_per_deletion_do_not_grow_with_the_catalog(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    proxy = await HubProxy(cloud.hub.url).start()
    try:
        ids = [await record(cloud, cloud.hub, name="c%02d" % i) for i in range(40)]
        edge = cloud.start_edge("dcn0", url=proxy.url, **HOURLY)
        await eventually(lambda: knows(cloud, edge, *ids), "the mirror of 40 records")
        await eventually(lambda: _serial_reached(cloud, edge), "the edge to apply the whole feed")
        proxy.requests.clear()
        deleted = ids[:3]
        for image_id in deleted:
            await cloud.call(cloud.hub, "DELETE", "/v2/images/%s" % image_id, 204)
        for image_id in deleted:
            await eventually(lambda image_id=image_id: forgotten(cloud, edge, image_id), "the deletion", within=WITHIN)
        assert proxy.requests[("GET", "/v2/images")] == 0, proxy.requests  # no listing
        assert not [k for k in proxy.requests if k[1].startswith("/v2/images/")], proxy.requests  # no record fetched
        assert proxy.requests[("GET", "/v2/edge/changes")] >= 1
        assert await knows(cloud, edge, *ids[3:])
        assert all([await gone_from(cloud, edge, image_id) for image_id in deleted])
    finally:
        await proxy.close()


async def test_a_new_hub_feed_makes_the_edge_reconcile_and_find_deletions(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    kept = await record(cloud, cloud.hub, name="kept")
    dropped = await record(cloud, cloud.hub, name="dropped")
    edge = cloud.start_edge("dcn0", **HOURLY)
    await eventually(lambda: knows(cloud, edge, kept, dropped), "the mirror")
    await eventually(lambda: _serial_reached(cloud, edge), "the edge to apply the whole feed")
    old_feed = mirror_state(edge)["feed"]
    assert edge.stop() == 0
    # While the edge is down, the hub runs a while without its feed (as a plain Glance would):
    # a deletion then is in no feed, and the hub's next feed is a new one.
    cloud.hub.stop()
    cloud.restart_hub(role="edge")
    await cloud.call(cloud.hub, "DELETE", "/v2/images/%s" % dropped, 204)
    cloud.hub.stop()
    cloud.restart_hub()
    edge = cloud.edges["dcn0"] = start_daemon(edge.state_dir, cloud.tmp / "dcn0.toml")
    await eventually(lambda: gone_from(cloud, edge, dropped), "the reconcile to find the deletion", within=WITHIN)
    assert await knows(cloud, edge, kept)
    assert mirror_state(edge)["feed"] != old_feed
    assert "the hub's change feed is new" in edge.log.read_text()


# -- writes at an edge to the hub's images -------------------------------------------------------------


async def test_edge_writes_to_hub_images_with_a_static_token_are_refused_and_change_nothing(
    feed_cloud: Cloud,
) -> None:
    cloud = feed_cloud
    hub_id = await cloud.upload(cloud.hub, os.urandom(MiB), name="golden")
    edge = cloud.start_edge("dcn0", **HOURLY)
    await eventually(lambda: knows(cloud, edge, hub_id), "the mirror")
    before = await cloud.image(edge, hub_id)
    path = "/v2/images/%s" % hub_id
    writes: list[tuple[str, str, dict[str, Any]]] = [
        ("PATCH", path, {"json": [{"op": "replace", "path": "/name", "value": "edited"}], "headers": PATCH}),
        ("PUT", path + "/tags/edge-tag", {}),
        ("DELETE", path + "/tags/none", {}),
        ("POST", path + "/actions/deactivate", {}),
        ("DELETE", path, {}),
    ]
    for method, where, kw in writes:
        refused = await cloud.call(edge, method, where, 409, **kw)
        message = refused["message"] if isinstance(refused, dict) else refused.decode()
        assert cloud.hub.url in message and "Keystone" in message and "at the hub" in message, message
    # The stock CLI at the edge says the same, and fails.
    err = await asyncio.to_thread(Glance(edge).fails, "image-update", "--name", "edited", hub_id)
    assert cloud.hub.url in err
    # (image-delete prints its own words for a 409, "in use"; the API's message names the hub.)
    await asyncio.to_thread(Glance(edge).fails, "image-delete", hub_id)
    # Nothing changed, here or at the hub, now or after a few mirror rounds.
    assert await cloud.image(edge, hub_id) == before
    await asyncio.sleep(3 * MIRROR_INTERVAL)
    after = await cloud.image(edge, hub_id)
    assert after is not None and after["name"] == "golden" and after["tags"] == [] and after["status"] == "active"
    at_hub = await cloud.image(cloud.hub, hub_id)
    assert at_hub is not None and at_hub["name"] == "golden" and at_hub["status"] == "active"
    # With the hub down: refused all the same, never a success.
    cloud.hub.stop()
    await cloud.call(edge, "PATCH", path, 409, json=[{"op": "add", "path": "/k", "value": "v"}], headers=PATCH)
    await cloud.call(edge, "DELETE", path, 409)
    assert ((await cloud.image(edge, hub_id)) or {}).get("name") == "golden"


async def test_images_created_at_the_edge_stay_the_edges(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    edge = cloud.start_edge("dcn0", **HOURLY)
    local_id = await cloud.upload(edge, os.urandom(MiB), name="local")
    path = "/v2/images/%s" % local_id
    await cloud.call(
        edge, "PATCH", path, 200, json=[{"op": "replace", "path": "/name", "value": "renamed"}], headers=PATCH
    )
    await cloud.call(edge, "PUT", path + "/tags/mine", 204)
    await cloud.call(edge, "POST", path + "/actions/deactivate", 204)
    shown = await cloud.image(edge, local_id)
    assert shown is not None and shown["name"] == "renamed" and shown["tags"] == ["mine"]
    assert shown["status"] == "deactivated"
    await cloud.call(edge, "DELETE", path, 204)
    assert await cloud.image(edge, local_id) is None


async def test_an_edge_image_copied_to_central_stays_the_edges(feed_cloud: Cloud) -> None:
    cloud = feed_cloud
    # Copying to central creates the image at the hub: an edge that does is given a token that may.
    edge = cloud.start_edge("dcn0", token=HUB_ADMIN_TOKEN, **HOURLY)
    data = os.urandom(MiB)
    image_id = await cloud.upload(edge, data, name="made-here")
    copy = {"method": {"name": "copy-image"}, "stores": ["central"]}
    await cloud.call(edge, "POST", "/v2/images/%s/import" % image_id, 202, json=copy)
    await eventually(lambda: _has(cloud, edge, image_id, "central"), "the copy at central")
    path = "/v2/images/%s" % image_id
    # Changes here stay, whatever the hub's record says; the hub's changes do not overwrite them.
    await cloud.call(
        edge, "PATCH", path, 200, json=[{"op": "replace", "path": "/name", "value": "mine"}], headers=PATCH
    )
    await cloud.call(
        cloud.hub, "PATCH", path, 200, json=[{"op": "replace", "path": "/name", "value": "theirs"}], headers=PATCH
    )
    await eventually(lambda: _serial_reached(cloud, edge), "the edge to apply the feed")
    assert ((await cloud.image(edge, image_id)) or {}).get("name") == "mine"
    # Deleted at the hub: only the copy there goes.
    await cloud.call(cloud.hub, "DELETE", path, 204)
    await eventually(lambda: _lost_central(cloud, edge, image_id), "the edge to drop central", within=WITHIN)
    assert await cloud.call(edge, "GET", path + "/file") == data


async def _lost_central(cloud: Cloud, edge: Daemon, image_id: str) -> bool:
    return await cloud.stores_of(edge, image_id) == {"local"}


async def test_a_hub_without_the_feed_is_reconciled_in_full_at_once(
    openstack_glance: GlanceServer, feed_cloud: Cloud
) -> None:
    # An edge followed an appliance hub's feed; at the same URL there is now a plain OpenStack
    # Glance (404 for the feed): the edge lists the whole catalog at once, finding what is gone,
    # rather than waiting an hour for its reconcile.
    cloud = feed_cloud
    cloud.hub.stop()
    (cloud.hub.state_dir / "admin-token").write_text(openstack_glance.token + "\n")  # one token for both hubs
    cloud.restart_hub()
    proxy = await HubProxy(cloud.hub.url).start()
    glance_id = ""
    try:
        only_at_hub = await record(cloud, cloud.hub, name="only-at-the-appliance-hub")
        body = {"name": "only-at-glance", "disk_format": "raw", "container_format": "bare"}
        async with cloud.session.post(
            openstack_glance.url + "/v2/images", json=body, headers=openstack_glance.headers()
        ) as resp:
            assert resp.status == 201, await resp.text()
            glance_id = (await resp.json())["id"]
        edge = cloud.start_edge("dcn0", url=proxy.url, token=openstack_glance.token, **HOURLY)
        await eventually(lambda: knows(cloud, edge, only_at_hub), "the mirror")
        await eventually(lambda: _serial_reached(cloud, edge), "the edge to follow the feed")
        proxy.target = openstack_glance.url

        async def switched() -> bool:
            return await knows(cloud, edge, glance_id) and await forgotten(cloud, edge, only_at_hub)

        await eventually(switched, "the full reconcile against Glance", within=WITHIN)
        status = (await cloud.call(edge, "GET", "/v2/edge/status"))["hub"]
        assert status["change_feed"] is False and status["serial"] is None
        assert "has no change feed" in edge.log.read_text()
    finally:
        await proxy.close()
        if glance_id:
            async with cloud.session.delete(
                openstack_glance.url + "/v2/images/%s" % glance_id, headers=openstack_glance.headers()
            ) as resp:
                assert resp.status == 204
