"""Locations that give a queued image its data, side by side with a real OpenStack Glance 33
(tests/glance_server.py, with an http backend and show_multiple_locations): the same requests by the
same callers against Glance and the daemon, the same statuses, and the images left in the same state
(status, size, checksums, locations)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.test_glance_import import WebRoot, web  # noqa: F401  (the fixture)
from tests.clients.test_metadefs_vs_glance import CALLERS, Server, token
from tests.conftest import Daemon, write_toml
from tests.glance_server import running_glance
from tests.waiting import eventually

pytestmark = pytest.mark.clients
PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


@pytest.fixture
async def servers(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> AsyncIterator[tuple[Server, Server]]:
    tokens = [{"token": token(who), "user": u, "project": p, "roles": r} for who, (u, p, r) in CALLERS.items()]
    conf = {
        "auth": {"tokens": tokens},
        "api": {"show_multiple_locations": True},
        "import": {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [web.port]}},
    }
    daemon = daemon_factory("site", write_toml(tmp_path / "site.toml", conf))
    glance_options = {
        "enabled_backends": "central:file,web:http",
        "show_multiple_locations": "true",
        "import_filtering_opts.allowed_hosts": "[127.0.0.1]",  # Glance refuses loopback unless listed
        "import_filtering_opts.allowed_ports": "[%d]" % web.port,
    }
    with running_glance(tmp_path / "glance", **glance_options) as glance:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            yield Server(glance.url, session), Server(daemon.url, session)


class Sides:
    def __init__(self, glance: Server, ours: Server) -> None:
        self.servers = {"glance": glance, "ours": ours}
        self.ids: dict[str, str] = {}

    async def queued(self, who: str = "alpha") -> dict[str, str]:
        body = {"name": "loc", "disk_format": "raw", "container_format": "bare"}
        made = {}
        for side, server in self.servers.items():
            status, doc = await server.call(who, "POST", "/v2/images", body)
            assert status == 201, (side, doc)
            made[side] = doc["id"]
        return made

    async def same(self, who: str, method: str, path: str, ids: dict[str, str], body: Any = None, **hdrs: str) -> None:
        """The same status from both (the path's {id}: each side's image)."""
        answers = {}
        for side, server in self.servers.items():
            answers[side] = await server.call(who, method, path.format(id=ids[side]), body, **hdrs)
        assert answers["ours"][0] == answers["glance"][0], (method, path, body, answers)

    async def state(self, ids: dict[str, str]) -> dict[str, Any]:
        """Each side's image as far as locations decide it."""
        shown = {}
        for side, server in self.servers.items():
            status, doc = await server.call("admin", "GET", "/v2/images/%s" % ids[side])
            assert status == 200, doc
            shown[side] = {
                "status": doc["status"],
                "size": doc["size"],
                "checksum": doc["checksum"],
                "os_hash_algo": doc["os_hash_algo"],
                "os_hash_value": doc["os_hash_value"],
                "urls": [loc["url"] for loc in doc["locations"]],
            }
        return shown


async def test_location_adds_leave_images_as_glance_leaves_them(
    servers: tuple[Server, Server],
    web: WebRoot,  # noqa: F811
) -> None:
    sides = Sides(*servers)
    data = b"RAWDISK\0" + os.urandom(300_000)
    url, second = web.add("disk.raw", data), web.add("copy.raw", data)
    md5, sha512 = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()

    def add(location: str, **validation: str) -> list[dict[str, Any]]:
        value: dict[str, Any] = {"url": location, "metadata": {}}
        if validation:
            value["validation_data"] = validation
        return [{"op": "add", "path": "/locations/-", "value": value}]

    # PATCH add on a queued image: its data, active, the URL's size, no checksums.
    image = await sides.queued()
    await sides.same("alpha", "PATCH", "/v2/images/{id}", image, add(url), **PATCH)
    await sides.same("alpha", "PATCH", "/v2/images/{id}", image, add(url), **PATCH)  # 400: already there
    await sides.same("admin", "PATCH", "/v2/images/{id}", image, add(second), **PATCH)  # a second http location
    state = await sides.state(image)
    assert state["ours"] == state["glance"] and state["ours"]["status"] == "active", state
    assert state["ours"]["urls"] == [url, second] and state["ours"]["size"] == len(data)

    # With validation data: the checksums given; Glance's refusals of them.
    checked = await sides.queued()
    for validation in (
        {"os_hash_algo": "sha256", "os_hash_value": "00"},  # 409: not sha512
        {"checksum": "abc", "os_hash_algo": "sha512", "os_hash_value": sha512},  # 400: the schema's length
        {"checksum": "x" * 32, "os_hash_algo": "sha512", "os_hash_value": sha512},  # 409: not hex
        {"os_hash_algo": "sha512", "os_hash_value": "ab"},  # 409: not a sha512's size
        {"checksum": md5},  # 400: the hash is required
        {"os_hash_algo": "sha512", "os_hash_value": sha512, "size": "1"},  # 400: not a validation field
    ):
        await sides.same("alpha", "PATCH", "/v2/images/{id}", checked, add(url, **validation), **PATCH)
    good = add(url, checksum=md5, os_hash_algo="sha512", os_hash_value=sha512)
    await sides.same("alpha", "PATCH", "/v2/images/{id}", checked, good, **PATCH)
    state = await sides.state(checked)
    assert state["ours"] == state["glance"] and state["ours"]["checksum"] == md5, state
    await sides.same("alpha", "PATCH", "/v2/images/{id}", checked, add(second, checksum="0" * 32), **PATCH)  # 409

    # POST /locations (2.17): 202, active, the checksums computed from the data.
    posted = await sides.queued()
    await sides.same("alpha", "POST", "/v2/images/{id}/locations", posted, {"url": url})

    async def hashed() -> bool:
        state = await sides.state(posted)
        return all(s["os_hash_value"] == sha512 for s in state.values())

    await eventually(hashed, "both to hash the location's data")
    state = await sides.state(posted)
    assert state["ours"] == state["glance"] and state["ours"]["checksum"] == md5, state
    await sides.same("alpha", "POST", "/v2/images/{id}/locations", posted, {"url": url})  # 409: not queued
    other = await sides.queued()
    await sides.same("alpha", "POST", "/v2/images/{id}/locations", other, {"url": "file:///etc/passwd"})  # 403
    bad = {"url": url, "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "00"}}
    await sides.same("alpha", "POST", "/v2/images/{id}/locations", other, bad)  # 400
    await sides.same("beta", "POST", "/v2/images/{id}/locations", other, {"url": url})  # 404: private to alpha
