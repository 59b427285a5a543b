"""Image data on a real daemon: formats qemu opens that no disk_format names are refused under
the claims they do not match (raw included), references to host files in any format are refused
by upload and by import, and disk_format/container_format are set before data and fixed after."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Daemon, write_toml
from tests.unit.test_formats import make_bochs, make_cloop, make_dmg

PATCH_CT = "application/openstack-images-v2.1-json-patch"
MiB = 1 << 20


class Client:
    """One daemon, its admin token, JSON errors."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.url = daemon.url
        self.session = session
        self.headers = {"X-Auth-Token": daemon.token, "Accept": "application/json"}

    async def call(
        self, method: str, path: str, *, body: Any = None, data: Any = None, content_type: str | None = None
    ) -> tuple[int, Any]:
        headers = dict(self.headers)
        if content_type:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.url + path, json=body, data=data, headers=headers) as resp:
            text = await resp.read()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text.decode(errors="replace")

    async def create(self, **body: Any) -> str:
        status, answer = await self.call("POST", "/v2/images", body=body)
        assert status == 201, answer
        return str(answer["id"])

    async def show(self, image_id: str) -> dict[str, Any]:
        status, answer = await self.call("GET", "/v2/images/%s" % image_id)
        assert status == 200, answer
        return dict(answer)

    async def put(self, image_id: str, route: str, data: Any) -> tuple[int, Any]:
        payload = io.BytesIO(data) if isinstance(data, bytes) else data
        return await self.call(
            "PUT", "/v2/images/%s/%s" % (image_id, route), data=payload, content_type="application/octet-stream"
        )

    async def patch(self, image_id: str, key: str, value: Any) -> tuple[int, Any]:
        return await self.call(
            "PATCH",
            "/v2/images/%s" % image_id,
            content_type=PATCH_CT,
            data=json.dumps([{"op": "replace", "path": "/" + key, "value": value}]),
        )

    async def task_of(self, image_id: str) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            status, answer = await self.call("GET", "/v2/images/%s/tasks" % image_id)
            assert status == 200, answer
            tasks = answer["tasks"]
            if tasks and tasks[0]["status"] in ("success", "failure"):
                return dict(tasks[0])
            assert asyncio.get_running_loop().time() < deadline, "import did not finish: %s" % tasks
            await asyncio.sleep(0.1)


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Client(daemon, session)


def qemu_img_create(path: Path, *args: str) -> bytes:
    subprocess.run(["qemu-img", "create", "-q", *args[:-1], str(path), args[-1]], check=True, capture_output=True)
    return path.read_bytes()


# Formats qemu opens by their bytes and that no disk_format names: (builder, detected format).
OTHER: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "qed": (lambda p: qemu_img_create(p, "-f", "qed", "4M"), "qed"),
    "qcow": (lambda p: qemu_img_create(p, "-f", "qcow", "4M"), "qcow"),
    "parallels": (lambda p: qemu_img_create(p, "-f", "parallels", "4M"), "parallels"),
    "bochs": (lambda p: (make_bochs(p), p.read_bytes())[1], "bochs"),
    "cloop": (lambda p: (make_cloop(p), p.read_bytes())[1], "cloop"),
    "dmg": (lambda p: (make_dmg(p), p.read_bytes())[1], "dmg"),
}

SHADOW_QED = ("-f", "qed", "-u", "-b", "/etc/shadow", "-F", "raw", "4M")
SHADOW_REFUSAL = 'QED image has a backing file ("/etc/shadow"); images that reference host files are refused'


async def test_qed_on_etc_shadow_uploaded_as_raw_is_refused(client: Client, tmp_path: Path, qemu_img: str) -> None:
    data = qemu_img_create(tmp_path / "shadow.qed", *SHADOW_QED)
    image_id = await client.create(name="shadow", disk_format="raw", container_format="bare")
    status, answer = await client.put(image_id, "file", data)
    assert (status, answer["message"]) == (400, SHADOW_REFUSAL)
    assert (await client.show(image_id))["status"] == "queued"
    # The same route takes plain data.
    assert (await client.put(image_id, "file", bytes(MiB)))[0] == 204
    assert (await client.show(image_id))["status"] == "active"


@pytest.mark.parametrize("name", OTHER)
async def test_other_qemu_formats_uploaded_as_raw_are_refused(
    client: Client, tmp_path: Path, qemu_img: str, name: str
) -> None:
    build, detected = OTHER[name]
    image_id = await client.create(name=name, disk_format="raw", container_format="bare")
    status, answer = await client.put(image_id, "file", build(tmp_path / ("image." + name)))
    assert (status, answer["message"]) == (400, "image data is %s, not raw as claimed (disk_format)" % detected)
    assert (await client.show(image_id))["status"] == "queued"


async def test_qed_on_etc_shadow_imported_with_glance_direct_fails_the_task(
    client: Client, tmp_path: Path, qemu_img: str
) -> None:
    data = qemu_img_create(tmp_path / "shadow.qed", *SHADOW_QED)
    image_id = await client.create(name="shadow", disk_format="raw", container_format="bare")
    assert (await client.put(image_id, "stage", data))[0] == 204
    status, answer = await client.call(
        "POST", "/v2/images/%s/import" % image_id, body={"method": {"name": "glance-direct"}}
    )
    assert status == 202, answer
    task = await client.task_of(image_id)
    assert (task["status"], task["message"]) == ("failure", "Image data refused: " + SHADOW_REFUSAL)
    shown = await client.show(image_id)
    assert shown["status"] == "queued" and shown["size"] is None


async def test_formats_are_fixed_once_data_arrives(client: Client) -> None:
    image_id = await client.create(name="fixed", disk_format="raw", container_format="bare")
    # Queued: both may still change.
    assert (await client.patch(image_id, "disk_format", "iso"))[0] == 200
    assert (await client.patch(image_id, "disk_format", "raw"))[0] == 200
    assert (await client.patch(image_id, "container_format", "ovf"))[0] == 200
    assert (await client.put(image_id, "file", bytes(MiB)))[0] == 204
    for key, value in (("disk_format", "qcow2"), ("container_format", "bare"), ("disk_format", "raw")):
        status, answer = await client.patch(image_id, key, value)
        assert (status, answer["message"]) == (403, "Attribute %s can be only replaced for a queued image." % key)
    shown = await client.show(image_id)
    assert (shown["disk_format"], shown["container_format"]) == ("raw", "ovf")
    # Other attributes of an active image still change.
    assert (await client.patch(image_id, "name", "renamed"))[0] == 200


@pytest.mark.parametrize(
    ("formats", "message"),
    [
        ({}, "Properties disk_format, container_format must be set prior to saving data."),
        ({"disk_format": "raw"}, "Property container_format must be set prior to saving data."),
        ({"container_format": "bare"}, "Property disk_format must be set prior to saving data."),
    ],
)
async def test_data_needs_disk_and_container_format(client: Client, formats: dict[str, str], message: str) -> None:
    image_id = await client.create(name="formatless", **formats)
    for route in ("file", "stage"):
        status, answer = await client.put(image_id, route, bytes(MiB))
        assert (status, answer["message"]) == (400, message), route
    status, answer = await client.call(
        "POST",
        "/v2/images/%s/import" % image_id,
        body={"method": {"name": "web-download", "uri": "http://127.0.0.1:1/x"}},
    )
    assert (status, answer["message"]) == (400, message)
    shown = await client.show(image_id)
    assert shown["status"] == "queued" and shown["size"] is None


async def test_patch_racing_an_upload_never_leaves_data_under_a_claim_it_was_not_checked_against(
    client: Client, tmp_path: Path, qemu_img: str
) -> None:
    # qcow2 data claimed as qcow2, and a PATCH to raw at some point of the upload: either the
    # PATCH comes first (the upload is then checked against raw and refused) or it is refused.
    data = qemu_img_create(tmp_path / "disk.qcow2", "-f", "qcow2", "-o", "preallocation=metadata", "8M")
    outcomes: set[tuple[int, int]] = set()
    for round_ in range(24):
        image_id = await client.create(name="race", disk_format="qcow2", container_format="bare")
        # From before the upload's request arrives to well into its body.
        patch_delay = 0.0005 * (round_ % 12) + 0.02 * (round_ >= 12)

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 256 << 10):
                yield data[i : i + (256 << 10)]
                await asyncio.sleep(0.01)

        async def patch_later(image_id: str, delay: float) -> int:
            await asyncio.sleep(delay)
            return (await client.patch(image_id, "disk_format", "raw"))[0]

        (uploaded, _), patched = await asyncio.gather(
            client.put(image_id, "file", body()), patch_later(image_id, patch_delay)
        )
        outcomes.add((uploaded, patched))
        shown = await client.show(image_id)
        if shown["status"] == "active":
            assert shown["disk_format"] == "qcow2", (uploaded, patched)
            assert patched in (403, 409)
        else:
            assert (shown["status"], uploaded) == ("queued", 400)
    assert outcomes <= {(204, 403), (204, 409), (400, 200)}, outcomes


async def test_patch_racing_a_web_download_import_never_leaves_data_under_a_claim_it_was_not_checked_against(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, qemu_img: str
) -> None:
    # The import reads the image, checks the URI (DNS, quotas), then moves it to importing; a
    # PATCH to raw anywhere in there must either be seen by the import or refused.
    data = qemu_img_create(tmp_path / "disk.qcow2", "-f", "qcow2", "4M")

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data)

    app = web.Application()
    app.router.add_get("/disk", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    config = write_toml(
        tmp_path / "appliance.toml",
        {"import": {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [server.port]}}},
    )
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            client = Client(daemon_factory(config=config), session)
            outcomes: set[tuple[int, int, str]] = set()
            for round_ in range(24):
                image_id = await client.create(name="race", disk_format="qcow2", container_format="bare")

                # From before the request arrives to well after the import has started.
                async def patch_later(
                    image_id: str, delay: float = 0.0005 * (round_ % 12) + 0.01 * (round_ >= 12)
                ) -> int:
                    await asyncio.sleep(delay)
                    return (await client.patch(image_id, "disk_format", "raw"))[0]

                (started, _), patched = await asyncio.gather(
                    client.call(
                        "POST",
                        "/v2/images/%s/import" % image_id,
                        body={"method": {"name": "web-download", "uri": "http://127.0.0.1:%d/disk" % server.port}},
                    ),
                    patch_later(image_id),
                )
                task = await client.task_of(image_id) if started == 202 else {"status": "none"}
                outcomes.add((started, patched, task["status"]))
                shown = await client.show(image_id)
                if shown["status"] == "active":
                    assert (shown["disk_format"], task["status"]) == ("qcow2", "success")
                    assert patched in (403, 409)
                else:
                    assert shown["status"] == "queued" and patched == 200
                    assert task["status"] in ("failure", "none"), task
            assert outcomes <= {(202, 403, "success"), (202, 409, "success"), (202, 200, "failure")}, outcomes
    finally:
        await server.close()
