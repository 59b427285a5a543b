"""The interoperable import workflow through the in-process API, with real loopback HTTP
servers as web-download sources, real archives and real qemu-img."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import subprocess
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import Api

TWO_STORES = {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}


@pytest.fixture
async def source() -> AsyncIterator[Callable[[str, bytes], str]]:
    """A real HTTP server on 127.0.0.1 serving registered byte strings."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()

    def add(name: str, data: bytes) -> str:
        files[name] = data
        return "http://127.0.0.1:%d/%s" % (server.port, name)

    add.port = server.port  # type: ignore[attr-defined]
    yield add
    await server.close()


def loopback_filter(port: int) -> dict[str, Any]:
    return {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [port]}}


async def wait_task(api: Api, image_id: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        resp = await api.client.get("/v2/images/%s/tasks" % image_id, headers=api.headers())
        assert resp.status == 200
        tasks = (await resp.json())["tasks"]
        if tasks and tasks[0]["status"] not in ("pending", "processing"):
            return tasks[0]
        assert asyncio.get_running_loop().time() < deadline, "import did not finish"
        await asyncio.sleep(0.05)


async def download(api: Api, image_id: str) -> bytes:
    resp = await api.client.get("/v2/images/%s/file" % image_id, headers=api.headers())
    assert resp.status == 200
    return await resp.read()


async def start_import(api: Api, image_id: str, body: dict[str, Any]) -> Any:
    return await api.client.post("/v2/images/%s/import" % image_id, json=body, headers=api.headers())


async def stage(api: Api, image_id: str, data: bytes) -> None:
    resp = await api.client.put(
        "/v2/images/%s/stage" % image_id,
        data=io.BytesIO(data),
        headers=api.headers(**{"Content-Type": "application/octet-stream"}),
    )
    assert resp.status == 204, await resp.text()


def store_files(api: Api, store: str) -> set[str]:
    path = api.services.stores[store].path
    return {p.name for p in path.iterdir() if p.is_file()}


async def test_info_import_lists_enabled_methods(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(**{"import": {"enabled_methods": ["glance-direct", "copy-image"]}})
    resp = await api.client.get("/v2/info/import", headers=api.headers())
    body = await resp.json()
    assert body["import-methods"]["value"] == ["glance-direct", "copy-image"]
    resp = await api.client.post("/v2/images", json={"name": "x"}, headers=api.headers())
    assert resp.headers["OpenStack-image-import-methods"] == "glance-direct,copy-image"
    image = await resp.json()
    resp = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": "http://example.org/x"}})
    assert resp.status == 400
    assert "not enabled" in (await resp.json())["message"]


async def test_glance_direct_to_two_stores(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    data = os.urandom(3 << 20)
    image = await api.create(name="direct")
    await stage(api, image["id"], data)
    assert (await api.show(image["id"]))["status"] == "uploading"
    resp = await start_import(
        api,
        image["id"],
        {"method": {"name": "glance-direct"}, "stores": ["local", "fast"], "all_stores_must_succeed": True},
    )
    assert resp.status == 202, await resp.text()
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    assert task["type"] == "api_image_import" and task["result"]["image_id"] == image["id"]
    # Where the time went, stage by stage (Glance's result is a free JSON object).
    stages = task["result"]["stage_seconds"]
    assert list(stages) == ["acquire", "inspection", "store:local", "store:fast", "total"], stages
    shown = await api.show(image["id"])
    assert shown["status"] == "active"
    assert set(shown["stores"].split(",")) == {"local", "fast"}
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert "os_glance_importing_to_stores" not in shown
    assert shown["os_glance_failed_import"] == ""
    assert await download(api, image["id"]) == data
    assert (api.services.stores["fast"].path / image["id"]).read_bytes() == data
    # staging is emptied once the import is done
    staged = api.services.config.path("staging") / "staged"
    assert not any(p.is_file() for p in staged.iterdir())


async def test_glance_direct_needs_staged_data(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api()
    image = await api.create(name="nothing-staged")
    resp = await start_import(api, image["id"], {"method": {"name": "glance-direct"}})
    assert resp.status == 409
    assert "stage" in (await resp.json())["message"]


async def test_web_download_from_loopback_server(open_api: Callable[..., Awaitable[Api]], source: Any) -> None:
    data = os.urandom(2 << 20)
    url = source("disk.raw", data)
    api = await open_api(**{"import": loopback_filter(source.port)})
    image = await api.create(name="web")
    resp = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})
    assert resp.status == 202, await resp.text()
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    assert task["bytes_done"] == len(data)
    assert await download(api, image["id"]) == data


async def test_web_download_uri_refused_synchronously(open_api: Callable[..., Awaitable[Api]], source: Any) -> None:
    url = source("disk.raw", b"x" * 1000)
    api = await open_api()  # default filter: loopback and port != 80/443 refused
    image = await api.create(name="refused")
    resp = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})
    assert resp.status == 400
    message = (await resp.json())["message"]
    assert message.startswith("URI refused:")
    shown = await api.show(image["id"])
    assert shown["status"] == "queued"
    resp = await api.client.get("/v2/images/%s/tasks" % image["id"], headers=api.headers())
    assert (await resp.json())["tasks"] == []
    # the admin check endpoint gives the same verdict without creating anything
    resp = await api.client.post("/v2/edge/check-uri", json={"uri": url}, headers=api.headers())
    verdict = await resp.json()
    assert verdict["allowed"] is False and verdict["reason"] in message


async def test_web_download_http_error_fails_task_with_reason(
    open_api: Callable[..., Awaitable[Api]], source: Any
) -> None:
    source("present", b"x")
    api = await open_api(**{"import": loopback_filter(source.port)})
    image = await api.create(name="missing")
    url = "http://127.0.0.1:%d/absent" % source.port
    assert (await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})).status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "failure"
    assert "404" in task["message"]
    shown = await api.show(image["id"])
    assert shown["status"] == "queued"
    assert "os_glance_importing_to_stores" not in shown


async def test_web_download_needs_queued_image(open_api: Callable[..., Awaitable[Api]], source: Any) -> None:
    url = source("d", b"data")
    api = await open_api(**{"import": loopback_filter(source.port)})
    image = await api.create(name="active")
    assert (await api.upload(image["id"], b"already here")).status == 204
    resp = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})
    assert resp.status == 409


async def test_unknown_store_is_409(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api()
    image = await api.create(name="x")
    resp = await start_import(api, image["id"], {"method": {"name": "glance-direct"}, "stores": ["nope"]})
    assert resp.status == 409
    assert "nope" in (await resp.json())["message"]


async def test_copy_image_to_second_store(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    data = os.urandom(1 << 20)
    image = await api.create(name="copy-me")
    assert (await api.upload(image["id"], data)).status == 204
    resp = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "stores": ["local"]})
    assert resp.status == 400  # already there
    assert "already" in (await resp.json())["message"]
    resp = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "stores": ["fast"]})
    assert resp.status == 202, await resp.text()
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    shown = await api.show(image["id"])
    assert shown["status"] == "active" and shown["stores"] == "local,fast"
    assert (api.services.stores["fast"].path / image["id"]).read_bytes() == data
    # all_stores skips the stores that already hold it, and with none left says so
    resp = await start_import(api, image["id"], {"method": {"name": "copy-image"}, "all_stores": True})
    assert resp.status == 400
    # now one copy can be removed, and it is the one named
    resp = await api.client.delete("/v2/stores/local/%s" % image["id"], headers=api.headers())
    assert resp.status == 204
    assert (await api.show(image["id"]))["stores"] == "fast"
    assert await download(api, image["id"]) == data


async def test_copy_image_is_admin_only(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(
        token="admin-tok",
        stores=TWO_STORES,
        auth={
            "tokens": [
                {"token": "admin-tok", "user": "root", "project": "ops", "roles": ["admin"]},
                {"token": "member-tok", "user": "alice", "project": "p1", "roles": ["member"]},
            ]
        },
    )
    member = {"X-Auth-Token": "member-tok"}
    resp = await api.client.post(
        "/v2/images", json={"name": "mine", "disk_format": "raw", "container_format": "bare"}, headers=member
    )
    image = await resp.json()
    resp = await api.client.put(
        "/v2/images/%s/file" % image["id"],
        data=io.BytesIO(b"abc"),
        headers={**member, "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 204
    resp = await api.client.post(
        "/v2/images/%s/import" % image["id"],
        json={"method": {"name": "copy-image"}, "stores": ["fast"]},
        headers=member,
    )
    assert resp.status == 403


async def test_failed_store_with_allow_failure_keeps_image_active(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    # Break the second store for real: its partial-file directory becomes a plain file.
    partial = api.services.stores["fast"].path / ".partial"
    partial.rmdir()
    partial.write_text("not a directory")
    data = os.urandom(1 << 20)
    image = await api.create(name="half")
    await stage(api, image["id"], data)
    resp = await start_import(
        api,
        image["id"],
        {"method": {"name": "glance-direct"}, "stores": ["local", "fast"], "all_stores_must_succeed": False},
    )
    assert resp.status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    shown = await api.show(image["id"])
    assert shown["status"] == "active" and shown["stores"] == "local"
    assert shown["os_glance_failed_import"] == "fast"


async def test_failed_store_with_all_must_succeed_reverts(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    partial = api.services.stores["fast"].path / ".partial"
    partial.rmdir()
    partial.write_text("not a directory")
    image = await api.create(name="all-or-nothing")
    await stage(api, image["id"], os.urandom(1 << 20))
    resp = await start_import(
        api,
        image["id"],
        {"method": {"name": "glance-direct"}, "stores": ["local", "fast"], "all_stores_must_succeed": True},
    )
    assert resp.status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "failure"
    assert "fast" in task["message"] and "could not write" in task["message"]
    shown = await api.show(image["id"])
    assert shown["status"] == "queued" and "stores" not in shown
    assert store_files(api, "local") == set()


async def test_second_import_while_running_is_409(open_api: Callable[..., Awaitable[Api]]) -> None:
    gate = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"x" * 1000)
        await gate.wait()
        await resp.write(b"y" * 1000)
        return resp

    app = web.Application()
    app.router.add_get("/slow", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        api = await open_api(stores=TWO_STORES, **{"import": loopback_filter(server.port)})
        image = await api.create(name="busy")
        url = "http://127.0.0.1:%d/slow" % server.port
        assert (await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})).status == 202
        resp = await start_import(api, image["id"], {"method": {"name": "web-download", "uri": url}})
        assert resp.status == 409
        gate.set()
        task = await wait_task(api, image["id"])
        assert task["status"] == "success", task["message"]
        assert await download(api, image["id"]) == b"x" * 1000 + b"y" * 1000
    finally:
        gate.set()
        await server.close()


async def test_plugins_decompress_then_convert_qcow2_to_raw(
    open_api: Callable[..., Awaitable[Api]], tmp_path: Path, qemu_img: str
) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(1 << 20) + bytes(3 << 20))
    qcow = tmp_path / "disk.qcow2"
    await asyncio.to_thread(
        subprocess.run, [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True
    )
    api = await open_api(
        **{
            "import": {
                "plugins": ["image_decompression", "image_conversion", "inject_image_metadata"],
                "inject": {"site_policy": "edge"},
                "ignore_user_roles": [],
            }
        }
    )
    image = await api.create(name="packed", disk_format="qcow2")
    await stage(api, image["id"], gzip.compress(qcow.read_bytes()))
    assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    shown = await api.show(image["id"])
    assert shown["disk_format"] == "raw" and shown["container_format"] == "bare"
    assert shown["size"] == shown["virtual_size"] == raw.stat().st_size
    assert shown["site_policy"] == "edge"
    assert await download(api, image["id"]) == raw.read_bytes()


async def test_plugin_refusal_says_why(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(**{"import": {"plugins": ["image_decompression"]}})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a.raw", b"a" * 100)
        zf.writestr("b.raw", b"b" * 100)
    image = await api.create(name="two-members")
    await stage(api, image["id"], buf.getvalue())
    assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "failure"
    assert "member" in task["message"] and "Internal" not in task["message"]
    shown = await api.show(image["id"])
    assert shown["status"] == "queued"
    assert store_files(api, "local") == set()


async def test_import_inspects_claimed_format(
    open_api: Callable[..., Awaitable[Api]], tmp_path: Path, qemu_img: str
) -> None:
    qcow = tmp_path / "d.qcow2"
    await asyncio.to_thread(
        subprocess.run, [qemu_img, "create", "-f", "qcow2", str(qcow), "8M"], check=True, capture_output=True
    )
    api = await open_api()
    image = await api.create(name="liar", disk_format="raw")
    await stage(api, image["id"], qcow.read_bytes())
    assert (await start_import(api, image["id"], {"method": {"name": "glance-direct"}})).status == 202
    task = await wait_task(api, image["id"])
    assert task["status"] == "failure"
    assert "qcow2" in task["message"]
    assert (await api.show(image["id"]))["status"] == "queued"


async def test_store_header_targets_the_import(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    image = await api.create(name="by-header")
    await stage(api, image["id"], b"h" * 4096)
    resp = await api.client.post(
        "/v2/images/%s/import" % image["id"],
        json={"method": {"name": "glance-direct"}},
        headers=api.headers(**{"X-Image-Meta-Store": "fast"}),
    )
    assert resp.status == 202, await resp.text()
    task = await wait_task(api, image["id"])
    assert task["status"] == "success", task["message"]
    assert (await api.show(image["id"]))["stores"] == "fast"
    other = await api.create(name="both")
    await stage(api, other["id"], b"h" * 4096)
    resp = await api.client.post(
        "/v2/images/%s/import" % other["id"],
        json={"method": {"name": "glance-direct"}, "stores": ["local"]},
        headers=api.headers(**{"X-Image-Meta-Store": "fast"}),
    )
    assert resp.status == 400


async def test_upload_records_vmdk_introspection_and_enforces_virtual_size(
    open_api: Callable[..., Awaitable[Api]], tmp_path: Path, qemu_img: str
) -> None:
    vmdk = tmp_path / "d.vmdk"
    await asyncio.to_thread(
        subprocess.run,
        [qemu_img, "create", "-f", "vmdk", "-o", "subformat=streamOptimized", str(vmdk), "16M"],
        check=True,
        capture_output=True,
    )
    big = tmp_path / "big.qcow2"
    await asyncio.to_thread(
        subprocess.run, [qemu_img, "create", "-f", "qcow2", str(big), "64M"], check=True, capture_output=True
    )
    api = await open_api(formats={"max_virtual_size": 32 << 20})
    image = await api.create(name="vm", disk_format="vmdk", vmware_adaptertype="lsiLogic")
    resp = await api.upload(image["id"], vmdk.read_bytes())
    assert resp.status == 204, await resp.text()
    shown = await api.show(image["id"])
    assert shown["virtual_size"] == 16 << 20
    assert shown["vmware_disktype"] == "streamOptimized"
    assert shown["vmware_adaptertype"] == "lsiLogic"  # the user's value wins
    image = await api.create(name="huge", disk_format="qcow2")
    resp = await api.upload(image["id"], big.read_bytes())
    assert resp.status == 400
    assert "exceeds the limit" in (await resp.json())["message"]
