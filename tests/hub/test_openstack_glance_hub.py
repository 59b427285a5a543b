"""An edge whose hub is a real OpenStack Glance (tests/glance_server.py): the catalog mirror
through Glance's pages, pull-through with one upstream transfer, resume and verification
against Glance's hashes, a hub that goes away, deletions found by the full reconcile, and the
appliance-only hub extras (sites, heartbeats, assignments, change feed) off after one probe.

Glance runs once per session; each test starts its own edge daemons and uses its own images.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest

from tests.clients.test_glance_cli import Glance, as_dict
from tests.clients.test_openstacksdk import connect
from tests.conftest import JSON_ERRORS, Daemon, start_daemon, write_toml
from tests.glance_server import API_LIMIT_MAX, GlanceServer, running_glance
from tests.integration.test_hub_link import FAST
from tests.ondisk import flip_bit
from tests.waiting import eventually

# openstacksdk's own deprecation warnings (see tests/clients/test_openstacksdk.py).
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")

MiB = 1 << 20


class Cloud:
    """The session's Glance as the hub, this test's edges, one HTTP session for both."""

    def __init__(self, glance: GlanceServer, tmp: Path, session: aiohttp.ClientSession) -> None:
        self.glance = glance
        self.tmp = tmp
        self.session = session
        self.edges: list[Daemon] = []

    def start_edge(self, name: str = "dcn0", **hub: Any) -> Daemon:
        config = write_toml(
            self.tmp / ("%s.toml" % name),
            {
                "site": {"name": name},
                "hub": {"url": self.glance.url, "token": self.glance.token, **FAST, **hub},
                "cache": {"min_free_bytes": 0},
                "scrubber": {"enabled": False},
            },
        )
        edge = start_daemon(self.tmp / name, config)
        self.edges.append(edge)
        return edge

    async def at_glance(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        headers = {**self.glance.headers(), **kw.pop("headers", {})}
        async with self.session.request(method, self.glance.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "glance %s %s: %d %s" % (method, path, resp.status, body[:500])
            return await resp.json() if resp.content_type == "application/json" else body

    async def glance_headers(self, path: str) -> dict[str, str]:
        async with self.session.get(self.glance.url + path, headers=self.glance.headers()) as resp:
            assert resp.status == 200, await resp.text()
            return dict(resp.headers)

    async def create_at_glance(self, data: bytes | None, **body: Any) -> str:
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", "visibility": "public", **body}
        image_id = str((await self.at_glance("POST", "/v2/images", 201, json=body))["id"])
        if data is not None:
            await self.at_glance(
                "PUT",
                "/v2/images/%s/file" % image_id,
                204,
                data=io.BytesIO(data),
                headers={"Content-Type": "application/octet-stream"},
            )
        return image_id

    async def at_edge(self, edge: Daemon, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        headers = {"X-Auth-Token": edge.token, **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, edge.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "edge %s %s: %d %s" % (method, path, resp.status, body[:500])
            return await resp.json() if resp.content_type == "application/json" else body

    async def shown(self, edge: Daemon, image_id: str) -> dict[str, Any] | None:
        async with self.session.get(
            edge.url + "/v2/images/%s" % image_id, headers={"X-Auth-Token": edge.token, **JSON_ERRORS}
        ) as resp:
            return dict(await resp.json()) if resp.status == 200 else None

    async def listed(self, edge: Daemon, **query: str) -> set[str]:
        """Every id the edge lists (following its own pages)."""
        ids: set[str] = set()
        path: str | None = "/v2/images?" + "&".join("%s=%s" % kv for kv in {"limit": "100", **query}.items())
        while path:
            body = await self.at_edge(edge, "GET", path)
            ids.update(i["id"] for i in body["images"])
            path = body.get("next")
        return ids


@pytest.fixture
def glance_hub(request: pytest.FixtureRequest) -> GlanceServer:
    """The session's Glance (identity from the token); with KEYSTONE_TOO, also its twin that
    validates Keystone tokens (the edge's hub token is then a Keystone token)."""
    kind = getattr(request, "param", "tokens")
    return cast(GlanceServer, request.getfixturevalue("keystone_glance" if kind == "keystone" else "openstack_glance"))


KEYSTONE_TOO = pytest.mark.parametrize("glance_hub", ["tokens", "keystone"], indirect=True)


@pytest.fixture
async def cloud(glance_hub: GlanceServer, tmp_path: Path) -> AsyncIterator[Cloud]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
    c = Cloud(glance_hub, tmp_path, session)
    try:
        yield c
    finally:
        await session.close()
        for edge in c.edges:
            if edge.proc.poll() is None:
                edge.proc.kill()
                edge.proc.wait(10)
        if not glance_hub.answers():  # a failed test must not leave the next without its hub
            await asyncio.to_thread(glance_hub.restart)


async def glance_logged(glance: GlanceServer, pattern: str) -> None:
    """Wait for a line in Glance's request log (uWSGI writes it once the response is sent)."""

    async def found() -> bool:
        return re.search(pattern, await asyncio.to_thread(glance.log_text)) is not None

    await eventually(found, "Glance's request log to show %s" % pattern)


async def data_gets(glance: GlanceServer, image_id: str, at_least: int = 1) -> int:
    """The GETs of the image's data in Glance's log, once `at_least` are there and a moment has
    passed for any later one to be logged too."""

    async def logged() -> bool:
        return await asyncio.to_thread(glance.data_gets, image_id) >= at_least

    await eventually(logged, "%d GET(s) of image %s in Glance's request log" % (at_least, image_id))
    await asyncio.sleep(0.5)
    return await asyncio.to_thread(glance.data_gets, image_id)


def glance_cli(target: Any) -> Glance:
    """The real `glance` CLI against Glance or an edge (both have .url and .token)."""
    return Glance(cast(Daemon, target))


@KEYSTONE_TOO
async def test_the_catalog_mirror_follows_glance_pages_hidden_images_and_renames(cloud: Cloud) -> None:
    # More images than Glance puts in a page (api_limit_max): the mirror goes through `next`.
    plain = [await cloud.create_at_glance(os.urandom(1024), name="page-%d" % n) for n in range(API_LIMIT_MAX + 2)]
    hidden = await cloud.create_at_glance(os.urandom(1024), name="hidden", os_hidden=True)
    queued = await cloud.create_at_glance(None, name="no-data-yet")
    edge = cloud.start_edge()

    async def mirrored() -> bool:
        return set(plain) | {queued} <= await cloud.listed(edge) and hidden in await cloud.listed(
            edge, os_hidden="true"
        )

    # Hidden at Glance, hidden at the edge: listed only when asked for.
    await eventually(mirrored, "every Glance image listed at the edge")
    assert hidden not in await cloud.listed(edge)
    shown = await cloud.shown(edge, plain[0])
    at_glance = await cloud.at_glance("GET", "/v2/images/%s" % plain[0])
    assert shown is not None and shown["stores"] == "central"
    for key in ("name", "size", "checksum", "os_hash_algo", "os_hash_value", "owner", "visibility", "created_at"):
        assert shown[key] == at_glance[key], key
    assert (await cloud.shown(edge, queued) or {}).get("status") == "queued"
    # A change at Glance arrives with the next incremental round (updated_at), not a reconcile only.
    await cloud.at_glance(
        "PATCH",
        "/v2/images/%s" % plain[1],
        200,
        json=[{"op": "replace", "path": "/name", "value": "renamed-at-glance"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )

    async def renamed() -> bool:
        return ((await cloud.shown(edge, plain[1])) or {}).get("name") == "renamed-at-glance"

    await eventually(renamed, "the rename to reach the edge")


@KEYSTONE_TOO
async def test_many_clients_one_transfer_from_glance(cloud: Cloud) -> None:
    data = os.urandom(8 * MiB)
    image_id = await cloud.create_at_glance(data, name="popular")
    edge = cloud.start_edge(bandwidth_limit=8 * MiB)  # ~1 s: the clients arrive while it runs
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    for _ in range(3):  # the race, repeated: all at once, then again while it may be in flight
        bodies = await asyncio.gather(*(cloud.at_edge(edge, "GET", "/v2/images/%s/file" % image_id) for _ in range(12)))
        assert all(body == data for body in bodies)
    # One GET of the data at Glance (its own request log), however many clients asked.
    assert await data_gets(cloud.glance, image_id) == 1
    cached = (await cloud.at_edge(edge, "GET", "/v2/edge/cache"))["entries"]
    assert image_id in {e["image_id"] for e in cached}


@KEYSTONE_TOO
async def test_upload_with_the_glance_cli_then_read_through_the_edge_with_cli_and_sdk(
    cloud: Cloud, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB) + b"tail"
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    created = as_dict(
        await asyncio.to_thread(
            glance_cli(cloud.glance).ok,
            "image-create",
            "--name",
            "via-cli",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--visibility",
            "public",
            "--file",
            str(source),
        )
    )
    image_id = created["id"]
    assert created["status"] == "active" and created["stores"] == "central"
    edge = cloud.start_edge()
    edge_cli = glance_cli(edge)
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    shown = as_dict(await asyncio.to_thread(edge_cli.ok, "image-show", "--max-column-width", "4096", image_id))
    assert shown["name"] == "via-cli" and shown["status"] == "active" and shown["stores"] == "central"
    assert shown["os_hash_value"].replace(" ", "") == hashlib.sha512(data).hexdigest()
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    listing = await asyncio.to_thread(edge_cli.ok, "image-list")
    assert image_id in listing
    target = tmp_path / "via-edge.raw"
    await asyncio.to_thread(edge_cli.ok, "image-download", "--file", str(target), image_id)
    assert target.read_bytes() == data
    # openstacksdk: the proxy layer and a streamed download, verified by the SDK against the MD5.
    conn = connect(edge)
    try:
        image = await asyncio.to_thread(conn.image.get_image, image_id)
        assert image.name == "via-cli" and image.size == len(data)
        downloaded = await asyncio.to_thread(conn.image.download_image, image)
        assert downloaded.content == data
    finally:
        conn.close()
    assert await data_gets(cloud.glance, image_id) == 1  # the CLI and the SDK read the edge's cached copy
    refused = await asyncio.to_thread(glance_cli(cloud.glance).run, "image-list", token="not-a-valid-token")
    assert refused.returncode != 0 and "Invalid OpenStack Identity credentials" in refused.stderr


async def test_a_fill_resumes_with_range_after_glance_restarts(cloud: Cloud) -> None:
    data = os.urandom(24 * MiB)
    image_id = await cloud.create_at_glance(data, name="big")
    edge = cloud.start_edge(bandwidth_limit=4 * MiB, resume_attempts=20)  # ~6 s for the transfer
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    reader = asyncio.create_task(cloud.at_edge(edge, "GET", "/v2/images/%s/file" % image_id))
    fill = edge.state_dir / "cache" / "partial" / image_id

    async def some_bytes() -> bool:
        return await asyncio.to_thread(lambda: fill.exists() and fill.stat().st_size >= 4 * MiB)

    await eventually(some_bytes, "4 MiB in the cache fill")
    with cloud.glance.stopped():
        await asyncio.sleep(1.5)  # the edge sees the link drop and backs off
    assert await reader == data  # the client's one response carries every byte, verified
    log = edge.log.read_text()
    assert "resuming the transfer at byte" in log
    # Glance answered the resumed request with a 206 (uWSGI's request log).
    await glance_logged(cloud.glance, r"GET /v2/images/%s/file => .*\(HTTP/1\.1 206\)" % image_id)


async def test_data_that_does_not_match_glances_hashes_is_not_served(cloud: Cloud) -> None:
    data = os.urandom(2 * MiB)
    image_id = await cloud.create_at_glance(data, name="rotten")
    # Glance serves what its store holds: a bit flipped there after the upload.
    await asyncio.to_thread(flip_bit, cloud.glance.root / "images" / image_id, 12345)
    edge = cloud.start_edge()
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    async with cloud.session.get(
        edge.url + "/v2/images/%s/file" % image_id, headers={"X-Auth-Token": edge.token, **JSON_ERRORS}
    ) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # cut off before its last byte: never a complete response for bad data

    async def logged() -> bool:
        return "failed verification" in await asyncio.to_thread(edge.log.read_text)

    await eventually(logged, "the cache to log the failed verification")
    cached = (await cloud.at_edge(edge, "GET", "/v2/edge/cache"))["entries"]
    assert image_id not in {e["image_id"] for e in cached}


async def test_a_glance_that_hashes_with_sha256_is_checked_with_sha256(tmp_path: Path) -> None:
    # Glance's `hashing_algorithm` is the operator's choice: the edge computes SHA-512 as it
    # streams, and checks another algorithm's os_hash_value by reading its copy back once.
    data = os.urandom(3 * MiB)
    with running_glance(tmp_path / "glance-sha256", hashing_algorithm="sha256") as glance:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            cloud = Cloud(glance, tmp_path, session)
            try:
                image_id = await cloud.create_at_glance(data, name="sha256")
                edge = cloud.start_edge()
                await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
                assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % image_id) == data
                shown = await cloud.shown(edge, image_id)
                assert shown is not None and shown["os_hash_algo"] == "sha256"
                assert shown["os_hash_value"] == hashlib.sha256(data).hexdigest()
                cached = (await cloud.at_edge(edge, "GET", "/v2/edge/cache"))["entries"]
                assert image_id in {e["image_id"] for e in cached}
                assert "failed verification" not in edge.log.read_text()
            finally:
                for e in cloud.edges:
                    e.stop()


async def test_glance_down_the_edge_serves_what_it_holds(cloud: Cloud) -> None:
    cached_data, other_data, local_data = os.urandom(MiB), os.urandom(MiB), os.urandom(MiB)
    cached_id = await cloud.create_at_glance(cached_data, name="cached")
    other_id = await cloud.create_at_glance(other_data, name="not-cached")
    edge = cloud.start_edge()
    local_id = (
        await cloud.at_edge(
            edge, "POST", "/v2/images", 201, json={"name": "local", "disk_format": "raw", "container_format": "bare"}
        )
    )["id"]
    await cloud.at_edge(
        edge,
        "PUT",
        "/v2/images/%s/file" % local_id,
        204,
        data=io.BytesIO(local_data),
        headers={"Content-Type": "application/octet-stream"},
    )
    await eventually(lambda: cloud.shown(edge, other_id), "the mirror")
    assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
    with cloud.glance.stopped():

        async def down() -> bool:
            return bool((await cloud.at_edge(edge, "GET", "/v2/edge/status"))["hub"]["state"] == "down")

        await eventually(down, "the edge to see Glance down")
        assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % cached_id) == cached_data
        assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % local_id) == local_data
        assert {cached_id, other_id, local_id} <= await cloud.listed(edge)
        message = (await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % other_id, 503))["message"]
        assert "hub is unreachable" in message
        await asyncio.sleep(3)  # several rounds of every hub loop against a dead hub
    log = edge.log.read_text()
    assert log.count("is unreachable; serving local and cached images") == 1

    async def up() -> bool:
        return bool((await cloud.at_edge(edge, "GET", "/v2/edge/status"))["hub"]["state"] == "up")

    await eventually(up, "the edge to see Glance back")
    assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % other_id) == other_data


async def test_an_image_deleted_at_glance_leaves_the_edge_at_the_reconcile(cloud: Cloud) -> None:
    data = os.urandom(MiB)
    kept_id = await cloud.create_at_glance(os.urandom(1024), name="kept")
    gone_id = await cloud.create_at_glance(data, name="deleted-at-glance")
    edge = cloud.start_edge()
    await eventually(lambda: cloud.shown(edge, gone_id), "the mirror")
    assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % gone_id) == data  # cached too
    await cloud.at_glance("DELETE", "/v2/images/%s" % gone_id, 204)

    async def gone() -> bool:
        return await cloud.shown(edge, gone_id) is None

    await eventually(gone, "the deletion to reach the edge (full reconcile)")
    assert not (edge.state_dir / "cache" / "data" / gone_id).exists()
    assert await cloud.shown(edge, kept_id) is not None
    # The line is logged once the removal has finished, which may be just after the 404 shows.
    await eventually(
        lambda: asyncio.to_thread(lambda: "was deleted at the hub; removed here" in edge.log.read_text()),
        "the removal logged",
        within=10,
    )


@KEYSTONE_TOO
async def test_the_appliance_only_extras_are_off_after_one_probe_each(cloud: Cloud) -> None:
    before = len(cloud.glance.log_text())
    edge = cloud.start_edge()
    image_id = await cloud.create_at_glance(os.urandom(1024), name="with-extras-off")
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    await asyncio.sleep(4)  # four rounds of the mirror, heartbeat and sync loops at 1 s
    status = (await cloud.at_edge(edge, "GET", "/v2/edge/status"))["hub"]
    assert status["state"] == "up" and status["site_api"] is False and status["change_feed"] is False
    assert status["last_error"] is None
    log = edge.log.read_text()
    assert log.count("has no site API") == 1
    assert log.count("has no change feed") == 1
    warnings = [line for line in log.splitlines() if "WARNING" in line and "has no site API" not in line]
    assert warnings == []
    # Glance was asked once per extra (registration, change feed), not every round.
    asked = re.findall(r"(POST|GET) (/v2/edge/\w+)", cloud.glance.log_text()[before:])
    assert sorted(asked) == [("GET", "/v2/edge/changes"), ("POST", "/v2/edge/sites")], asked


async def test_glance_download_imports_a_glance_image_into_an_edge_store(cloud: Cloud) -> None:
    data = os.urandom(2 * MiB)
    hub_id = await cloud.create_at_glance(data, name="golden")
    edge = cloud.start_edge()
    local = await cloud.at_edge(
        edge, "POST", "/v2/images", 201, json={"name": "golden-copy", "disk_format": "raw", "container_format": "bare"}
    )
    await cloud.at_edge(
        edge,
        "POST",
        "/v2/images/%s/import" % local["id"],
        202,
        json={"method": {"name": "glance-download", "glance_image_id": hub_id}},
    )

    async def active() -> bool:
        return ((await cloud.shown(edge, local["id"])) or {}).get("status") == "active"

    await eventually(active, "the glance-download import")
    assert await cloud.at_edge(edge, "GET", "/v2/images/%s/file" % local["id"]) == data
    shown = await cloud.shown(edge, local["id"])
    assert shown is not None and shown["stores"] == "local"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()


@KEYSTONE_TOO
async def test_copy_image_to_central_creates_the_edge_image_at_glance_with_its_id(cloud: Cloud) -> None:
    edge = cloud.start_edge()
    data = os.urandom(2 * MiB)
    image_id = (
        await cloud.at_edge(
            edge,
            "POST",
            "/v2/images",
            201,
            json={"name": "made-at-the-edge", "disk_format": "raw", "container_format": "bare", "site": "dcn0"},
        )
    )["id"]
    await cloud.at_edge(
        edge,
        "PUT",
        "/v2/images/%s/file" % image_id,
        204,
        data=io.BytesIO(data),
        headers={"Content-Type": "application/octet-stream"},
    )
    await asyncio.to_thread(
        glance_cli(edge).ok, "image-import", image_id, "--import-method", "copy-image", "--stores", "central"
    )

    async def at_central() -> bool:
        return "central" in ((await cloud.shown(edge, image_id)) or {}).get("stores", "").split(",")

    await eventually(at_central, "the edge to record central")
    at_glance = await cloud.at_glance("GET", "/v2/images/%s" % image_id)
    assert at_glance["name"] == "made-at-the-edge" and at_glance["status"] == "active"
    assert at_glance["site"] == "dcn0"
    assert at_glance["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert not any(key.startswith("os_glance_") and at_glance[key] for key in at_glance)
    assert await cloud.at_glance("GET", "/v2/images/%s/file" % image_id) == data


async def test_a_range_of_an_image_not_cached_is_relayed_from_glance(cloud: Cloud) -> None:
    data = os.urandom(4 * MiB)
    image_id = await cloud.create_at_glance(data, name="ranged")
    edge = cloud.start_edge()
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")
    async with cloud.session.get(
        edge.url + "/v2/images/%s/file" % image_id,
        headers={"X-Auth-Token": edge.token, "Range": "bytes=1000000-1000999", **JSON_ERRORS},
    ) as resp:
        assert resp.status == 206, await resp.text()
        assert resp.headers["Content-Range"] == "bytes 1000000-1000999/%d" % len(data)
        assert await resp.read() == data[1000000:1001000]
    # Glance was asked for that range (206), not for the whole image.
    await glance_logged(cloud.glance, r"GET /v2/images/%s/file => .*\(HTTP/1\.1 206\)" % image_id)


async def test_the_incremental_mirror_goes_quiet_once_glances_newest_second_has_passed(cloud: Cloud) -> None:
    # Glance under uWSGI sends no Date (the edge settles on its own clock), and keeps microseconds
    # behind the seconds it shows (updated_at=gt:<second> still matches that second's records):
    # once settled, the edge asks from the next second on, and a quiet catalog costs no writes.
    assert "Date" not in await cloud.glance_headers("/v2/images?limit=1")
    edge = cloud.start_edge(reconcile_interval=3600)
    image_id = await cloud.create_at_glance(os.urandom(1024), name="settles")
    await eventually(lambda: cloud.shown(edge, image_id), "the mirror")

    def writes() -> int:
        return edge.log.read_text().count("hub link: mirrored 1 image record(s)\n")

    async def quiet() -> bool:
        before = await asyncio.to_thread(writes)
        await asyncio.sleep(3)  # three rounds
        return before == await asyncio.to_thread(writes)

    await eventually(quiet, "the incremental rounds to stop rewriting the newest record", within=40)
    # A change after that still arrives.
    await cloud.at_glance(
        "PATCH",
        "/v2/images/%s" % image_id,
        200,
        json=[{"op": "add", "path": "/edge_note", "value": "later"}],
        headers={"Content-Type": "application/openstack-images-v2.1-json-patch"},
    )

    async def arrived() -> bool:
        return ((await cloud.shown(edge, image_id)) or {}).get("edge_note") == "later"

    await eventually(arrived, "the later change at the edge")


async def test_keystone_on_both_sides(keystone_glance: GlanceServer, keystone: Any, tmp_path: Path) -> None:
    # The edge finds Glance in the Keystone catalog and talks to it with its own service user's
    # token ([hub] keystone); a client at the edge comes with a Keystone token, validated there.
    # Glance's default policies let a reader list and show but not download (download_image
    # needs member): the edge passes Glance's refusal on in Glance's words.
    keystone.register_image_endpoint(keystone_glance.url, region="GlanceHub")
    keystone.create_user("dcn0-edge", "dcn0-edge-secret", "service", ["service", "reader"])
    data = os.urandom(2 * MiB)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        cloud = Cloud(keystone_glance, tmp_path, session)
        image_id = await cloud.create_at_glance(data, name="keystone-both-sides")
        config = write_toml(
            tmp_path / "dcn0-keystone.toml",
            {
                "site": {"name": "dcn0"},
                "hub": {"url": "", "keystone": True, "region_name": "GlanceHub", **FAST},
                "keystone": {
                    "auth_url": keystone.auth_url,
                    "username": "dcn0-edge",
                    "password": "dcn0-edge-secret",
                    "project_name": "service",
                    "interface": "public",
                },
                "cache": {"min_free_bytes": 0},
                "scrubber": {"enabled": False},
            },
        )
        edge = start_daemon(tmp_path / "dcn0", config)
        try:

            async def mirrored() -> bool:
                status = (await cloud.at_edge(edge, "GET", "/v2/edge/status"))["hub"]
                return bool(status["state"] == "up" and status["url"] == keystone_glance.url)

            await eventually(mirrored, "the mirror, with the edge's own Keystone token")
            assert image_id in await cloud.listed(edge)
            client = Glance(cast(Daemon, SimpleNamespace(url=edge.url, token=keystone.admin_token())))
            shown = as_dict(await asyncio.to_thread(client.ok, "image-show", image_id))
            assert shown["name"] == "keystone-both-sides" and shown["stores"] == "central"
            target = tmp_path / "download.raw"
            refused = await asyncio.to_thread(client.run, "image-download", "--file", str(target), image_id)
            assert refused.returncode != 0
            assert "You are not authorized to complete download_image action." in refused.stderr, refused.stderr
            assert "<html>" not in refused.stderr and "&lt;" not in refused.stderr
            # Roles are in the token: the edge, restarted, gets one with member.
            keystone.create_user("dcn0-edge", "dcn0-edge-secret", "service", ["member"])
            edge.stop()
            edge = start_daemon(tmp_path / "dcn0", config)
            client = Glance(cast(Daemon, SimpleNamespace(url=edge.url, token=keystone.admin_token())))
            refused_gets = await data_gets(keystone_glance, image_id)
            await asyncio.to_thread(client.ok, "image-download", "--file", str(target), image_id)
            assert target.read_bytes() == data
            assert await data_gets(keystone_glance, image_id, at_least=refused_gets + 1) == refused_gets + 1
            refused = await asyncio.to_thread(client.run, "image-list", token="not-a-keystone-token")
            assert refused.returncode != 0
        finally:
            edge.stop()
