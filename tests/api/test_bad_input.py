"""Malformed, hostile and oversized requests: each gets Glance's status and error shape, leaves
nothing behind, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
from aiohttp import ClientResponse

from appliance.app import build_app
from appliance.services import open_services
from appliance.stores.filesystem import PARTIAL_DIR
from tests.conftest import JSON_ERRORS, Api

PATCH_CT = "application/openstack-images-v2.1-json-patch"
MiB = 1 << 20


async def error_of(resp: ClientResponse, status: int, *words: str) -> dict[str, Any]:
    """Assert Glance's error shape {"code", "title", "message"} and that the message names `words`."""
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"code", "title", "message"}
    assert body["code"] == "%d %s" % (status, body["title"])
    assert body["message"]
    for word in words:
        assert word in body["message"], body["message"]
    return body


async def still_serving(api: Api) -> None:
    resp = await api.client.get("/v2/images", headers=api.headers())
    assert resp.status == 200
    resp = await api.client.post("/v2/images", json={"name": "after"}, headers=api.headers())
    assert resp.status == 201


async def post_raw(api: Api, body: bytes | str, content_type: str = "application/json") -> ClientResponse:
    return await api.client.post("/v2/images", data=body, headers=api.headers(**{"Content-Type": content_type}))


async def patch_raw(api: Api, image_id: str, body: Any, content_type: str = PATCH_CT) -> ClientResponse:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return await api.client.patch("/v2/images/%s" % image_id, data=data,
                                  headers=api.headers(**{"Content-Type": content_type}))


async def show(api: Api, image_id: str) -> dict[str, Any]:
    resp = await api.client.get("/v2/images/%s" % image_id, headers=api.headers())
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def count_images(api: Api) -> int:
    return await api.services.catalog.count_images()


def assert_store_clean(api: Api, image_id: str) -> None:
    store = api.services.stores["local"]
    assert not (store.path / image_id).exists()
    assert store.image_files() == set()
    assert list((store.path / PARTIAL_DIR).iterdir()) == []


async def assert_queued_and_clean(api: Api, image_id: str) -> None:
    body = await show(api, image_id)
    assert body["status"] == "queued"
    assert body["size"] is None and body["checksum"] is None
    assert "stores" not in body
    assert_store_clean(api, image_id)


@pytest.fixture
async def small_api(make_config: Callable[..., Any], aiohttp_client: Any) -> AsyncIterator[Api]:
    """An API whose uploads are capped at 1 MiB and JSON bodies at 4 KiB."""
    config = make_config(api={"max_upload_bytes": MiB, "max_json_bytes": 4096})
    async with open_services(config) as services:
        client = await aiohttp_client(build_app(services), headers=JSON_ERRORS)
        token = (config.state_dir / "admin-token").read_text().strip()
        yield Api(client=client, token=token, services=services)
        await client.close()


# -- JSON bodies --------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{", b"{'name': 'x'}", b"", b"\xff\xfe", b'{"name": "x",}'])
async def test_malformed_json_is_400(api: Api, body: bytes) -> None:
    before = await count_images(api)
    await error_of(await post_raw(api, body), 400, "JSON")
    image = await api.create(name="target")
    await error_of(await patch_raw(api, image["id"], body), 400, "JSON")
    assert await count_images(api) == before + 1
    assert (await show(api, image["id"]))["name"] == "target"
    await still_serving(api)


@pytest.mark.parametrize("body", [[], ["name"], "name", 42, None, True])
async def test_create_body_not_an_object_is_400(api: Api, body: Any) -> None:
    await error_of(await post_raw(api, json.dumps(body)), 400)
    assert await count_images(api) == 0
    await still_serving(api)


async def test_json_body_too_large_is_413(small_api: Api) -> None:
    api = small_api
    body = json.dumps({"name": "x", "description": "d" * 8192})
    await error_of(await post_raw(api, body), 413)
    assert await count_images(api) == 0
    await still_serving(api)


@pytest.mark.parametrize(
    ("ops", "words"),
    [
        ([{"op": "move", "from": "/name", "path": "/title"}], ("move",)),
        ([{"op": "test", "path": "/name", "value": "x"}], ("test",)),
        ([{"path": "/name", "value": "x"}], ()),
        ([{"op": "replace", "path": "/a/b", "value": "x"}], ("/a/b",)),
        ([{"op": "replace", "path": "", "value": "x"}], ()),
        ([{"op": "replace", "path": "/", "value": "x"}], ()),
        ([{"op": "replace", "path": "name", "value": "x"}], ("name",)),
        ([{"op": "replace", "value": "x"}], ()),
        ([{"op": "add", "path": "/foo"}], ("value",)),
        ([{"op": "replace", "path": "/name"}], ("value",)),
        ([{"op": "remove", "path": "/foo", "value": "x"}], ()),
        ([{"op": "replace", "path": "/name", "value": "x", "extra": 1}], ("extra",)),
        (["replace"], ()),
        ({"op": "replace", "path": "/name", "value": "x"}, ("array",)),
        ([{"op": "replace", "path": "/tags", "value": "not-a-list"}], ("tags",)),
        ([{"op": "replace", "path": "/protected", "value": "yes"}], ("protected",)),
        ([{"op": "replace", "path": "/visibility", "value": "everyone"}], ("everyone",)),
    ],
)
async def test_bad_json_patch_is_400(api: Api, ops: Any, words: tuple[str, ...]) -> None:
    image = await api.create(name="unchanged", foo="bar")
    await error_of(await patch_raw(api, image["id"], ops), 400, *words)
    after = await show(api, image["id"])
    assert after["name"] == "unchanged" and after["foo"] == "bar"
    assert after["updated_at"] == image["updated_at"]
    await still_serving(api)


@pytest.mark.parametrize("key", ["size", "status", "checksum", "os_hash_value", "virtual_size", "created_at",
                                 "updated_at", "self", "file", "schema", "stores"])
async def test_read_only_attribute_is_403(api: Api, key: str) -> None:
    await error_of(await post_raw(api, json.dumps({"name": "x", key: "1"})), 403, key, "read-only")
    assert await count_images(api) == 0
    image = await api.create(name="ro")
    for op in ("add", "replace"):
        await error_of(await patch_raw(api, image["id"], [{"op": op, "path": "/%s" % key, "value": "1"}]), 403, key)
    await error_of(await patch_raw(api, image["id"], [{"op": "remove", "path": "/%s" % key}]), 403, key)
    assert (await show(api, image["id"]))["status"] == "queued"
    await still_serving(api)


async def test_id_cannot_be_patched(api: Api) -> None:
    image = await api.create(name="id")
    resp = await patch_raw(api, image["id"], [{"op": "replace", "path": "/id", "value": str(uuid.uuid4())}])
    await error_of(resp, 403, "id")
    await show(api, image["id"])


@pytest.mark.parametrize("key", ["os_glance_foo", "os_glance_import_task", "locations", "location", "deleted",
                                 "deleted_at"])
async def test_reserved_attribute_is_403(api: Api, key: str) -> None:
    value: Any = [] if key == "locations" else "x"
    await error_of(await post_raw(api, json.dumps({"name": "x", key: value})), 403, key)
    assert await count_images(api) == 0
    image = await api.create(name="reserved")
    await error_of(await patch_raw(api, image["id"], [{"op": "add", "path": "/%s" % key, "value": value}]), 403, key)
    assert key not in await show(api, image["id"])
    await still_serving(api)


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
async def test_non_string_custom_property_is_400(api: Api, value: Any) -> None:
    await error_of(await post_raw(api, json.dumps({"name": "x", "foo": value})), 400, "foo")
    assert await count_images(api) == 0
    image = await api.create(name="props")
    await error_of(await patch_raw(api, image["id"], [{"op": "add", "path": "/foo", "value": value}]), 400, "foo")
    assert "foo" not in await show(api, image["id"])


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"disk_format": "floppy"}, ("floppy", "disk_format")),
        ({"container_format": "crate"}, ("crate", "container_format")),
        ({"visibility": "everyone"}, ("everyone",)),
        ({"min_ram": -5}, ("min_ram",)),
        ({"min_disk": "10"}, ("min_disk",)),
        ({"protected": "true"}, ("protected",)),
        ({"name": 5}, ("name",)),
        ({"name": "n" * 256}, ("name",)),
        ({"tags": "a,b"}, ("tags",)),
        ({"tags": [""]}, ()),
        ({"id": "not-a-uuid"}, ("not-a-uuid",)),
        ({"": "empty key"}, ()),
    ],
)
async def test_invalid_values_are_400(api: Api, body: dict[str, Any], words: tuple[str, ...]) -> None:
    await error_of(await post_raw(api, json.dumps(body)), 400, *words)
    assert await count_images(api) == 0
    await still_serving(api)


async def test_patch_invalid_disk_format_names_value(api: Api) -> None:
    image = await api.create(name="fmt")
    resp = await patch_raw(api, image["id"], [{"op": "replace", "path": "/disk_format", "value": "floppy"}])
    await error_of(resp, 400, "floppy")
    assert (await show(api, image["id"]))["disk_format"] == "raw"


# -- path parameters ----------------------------------------------------------------------


@pytest.mark.parametrize(("method", "suffix"), [("GET", ""), ("DELETE", ""), ("GET", "/file"), ("GET", "/locations")])
async def test_malformed_image_id_in_path_is_404(api: Api, method: str, suffix: str) -> None:
    # Glance looks the id up and finds nothing: 404, not 400 (clients such as openstacksdk's
    # find_image() depend on it to fall back to a search by name).
    resp = await api.client.request(method, "/v2/images/not-a-uuid%s" % suffix, headers=api.headers())
    await error_of(resp, 404)
    await still_serving(api)


async def test_malformed_image_id_in_patch_is_404(api: Api) -> None:
    resp = await patch_raw(api, "not-a-uuid", [{"op": "replace", "path": "/name", "value": "x"}])
    await error_of(resp, 404)


async def test_unknown_path_is_404_json(api: Api) -> None:
    resp = await api.client.get("/v2/nothing-here", headers=api.headers())
    await error_of(resp, 404, "/v2/nothing-here")


# -- media types --------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", PATCH_CT])
async def test_create_with_wrong_content_type_is_415(api: Api, content_type: str) -> None:
    resp = await post_raw(api, json.dumps({"name": "x"}), content_type)
    await error_of(resp, 415, content_type)
    assert await count_images(api) == 0
    await still_serving(api)


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "application/json-patch+json"])
async def test_patch_with_wrong_content_type_is_415(api: Api, content_type: str) -> None:
    image = await api.create(name="keep")
    resp = await patch_raw(api, image["id"], [{"op": "replace", "path": "/name", "value": "x"}], content_type)
    await error_of(resp, 415, content_type)
    assert (await show(api, image["id"]))["name"] == "keep"


async def test_patch_accepts_v2_0_patch_media_type(api: Api) -> None:
    image = await api.create(name="old")
    resp = await patch_raw(api, image["id"], [{"op": "replace", "path": "/name", "value": "new"}],
                           "application/openstack-images-v2.0-json-patch")
    assert resp.status == 200
    assert (await resp.json())["name"] == "new"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "image/png"])
async def test_upload_with_wrong_content_type_is_415(api: Api, content_type: str) -> None:
    image = await api.create(name="data")
    resp = await api.upload(image["id"], b"0123456789", **{"Content-Type": content_type})
    await error_of(resp, 415, "application/octet-stream")
    await assert_queued_and_clean(api, image["id"])
    assert (await api.upload(image["id"], b"0123456789")).status == 204


# -- oversized uploads --------------------------------------------------------------------


async def test_upload_over_cap_with_content_length_is_413(small_api: Api) -> None:
    api = small_api
    image = await api.create(name="big")
    resp = await api.upload(image["id"], os.urandom(MiB + 1))
    await error_of(resp, 413, str(MiB))
    await assert_queued_and_clean(api, image["id"])
    await still_serving(api)
    # exactly at the cap is fine
    resp = await api.upload(image["id"], os.urandom(MiB))
    assert resp.status == 204, await resp.text()
    assert (await show(api, image["id"]))["size"] == MiB


async def test_upload_over_cap_chunked_is_413(small_api: Api) -> None:
    api = small_api
    image = await api.create(name="big-chunked")
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(48):  # 3 MiB in 64 KiB pieces, no Content-Length
            sent += 64 << 10
            yield os.urandom(64 << 10)

    resp = await api.client.put("/v2/images/%s/file" % image["id"], data=body(),
                                headers=api.headers(**{"Content-Type": "application/octet-stream"}))
    assert "Content-Length" not in resp.request_info.headers
    await error_of(resp, 413, str(MiB))
    await assert_queued_and_clean(api, image["id"])
    await still_serving(api)


async def test_upload_shorter_than_content_length_leaves_nothing(api: Api) -> None:
    image = await api.create(name="short")
    _reader, writer = await asyncio.open_connection(api.client.host, api.client.port)
    head = (
        "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (image["id"], api.token, 4 * MiB)
    )
    writer.write(head.encode() + os.urandom(MiB))
    await writer.drain()
    partial = api.services.stores["local"].path / PARTIAL_DIR
    for _ in range(200):  # wait until the upload is under way
        if (await show(api, image["id"]))["status"] == "saving" and list(partial.iterdir()):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the upload never started")
    writer.close()  # the client goes away mid-upload
    await writer.wait_closed()
    for _ in range(100):
        body = await show(api, image["id"])
        if body["status"] == "queued" and not list((api.services.stores["local"].path / PARTIAL_DIR).iterdir()):
            break
        await asyncio.sleep(0.05)
    await assert_queued_and_clean(api, image["id"])
    await still_serving(api)


# -- hostile disk images ------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    qemu = shutil.which("qemu-img")
    if qemu is None:
        pytest.fail("qemu-img is required (make test installs qemu-utils)")
    d: Path = tmp_path_factory.mktemp("hostile")
    subprocess.run([qemu, "create", "-q", "-f", "raw", str(d / "base.raw"), "4M"], check=True)
    subprocess.run([qemu, "create", "-q", "-f", "qcow2", "-b", str(d / "base.raw"), "-F", "raw",
                    str(d / "child.qcow2"), "4M"], check=True)
    subprocess.run([qemu, "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
                    str(d / "flat.vmdk"), "4M"], check=True)
    subprocess.run([qemu, "create", "-q", "-f", "qcow2", str(d / "clean.qcow2"), "4M"], check=True)
    descriptor = (
        '# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        '# Extent description\nRW 8192 FLAT "/etc/shadow" 0\n'
    ).encode()
    return {
        "qcow2-backing": (d / "child.qcow2").read_bytes(),
        "vmdk-flat": (d / "flat.vmdk").read_bytes(),
        "vmdk-descriptor": descriptor,
        "qcow2-clean": (d / "clean.qcow2").read_bytes(),
    }


@pytest.mark.parametrize(
    ("sample", "claim", "words"),
    [
        ("qcow2-backing", "qcow2", ("backing file",)),
        ("qcow2-backing", "raw", ("qcow2", "raw")),
        ("qcow2-backing", "vmdk", ()),
        ("vmdk-flat", "vmdk", ("descriptor",)),
        ("vmdk-descriptor", "vmdk", ("descriptor",)),
        ("vmdk-descriptor", "raw", ()),
        ("qcow2-clean", "raw", ("qcow2", "raw")),
        ("qcow2-clean", "vmdk", ("qcow2", "vmdk")),
    ],
)
async def test_hostile_or_mismatched_image_is_400(api: Api, hostile: dict[str, bytes], sample: str, claim: str,
                                                 words: tuple[str, ...]) -> None:
    image = await api.create(name=sample, disk_format=claim)
    resp = await api.upload(image["id"], hostile[sample])
    await error_of(resp, 400, *words)
    await assert_queued_and_clean(api, image["id"])
    await still_serving(api)


async def test_clean_qcow2_is_accepted_after_a_refusal(api: Api, hostile: dict[str, bytes]) -> None:
    image = await api.create(name="retry", disk_format="qcow2")
    await error_of(await api.upload(image["id"], hostile["qcow2-backing"]), 400, "backing file")
    await assert_queued_and_clean(api, image["id"])
    resp = await api.upload(image["id"], hostile["qcow2-clean"])
    assert resp.status == 204, await resp.text()
    body = await show(api, image["id"])
    assert body["status"] == "active"
    assert body["virtual_size"] == 4 * MiB
    assert body["size"] == len(hostile["qcow2-clean"])


async def test_hostile_upload_streamed_without_length(api: Api, hostile: dict[str, bytes]) -> None:
    data = hostile["qcow2-backing"] + bytes(2 * MiB)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i:i + 4096]

    image = await api.create(name="streamed", disk_format="qcow2")
    resp = await api.client.put("/v2/images/%s/file" % image["id"], data=body(),
                                headers=api.headers(**{"Content-Type": "application/octet-stream"}))
    await error_of(resp, 400, "backing file")
    await assert_queued_and_clean(api, image["id"])
    await still_serving(api)


# -- methods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v2/images", {"GET", "POST"}),
        ("DELETE", "/v2/images", {"GET", "POST"}),
        ("POST", "/v2/images/{id}", {"GET", "PATCH", "DELETE"}),
        ("PUT", "/v2/images/{id}", {"GET", "PATCH", "DELETE"}),
        ("POST", "/v2/images/{id}/file", {"GET", "PUT"}),
        ("GET", "/v2/images/{id}/actions/deactivate", {"POST"}),
        ("POST", "/versions", {"GET"}),
    ],
)
async def test_wrong_method_is_405_with_allow(api: Api, method: str, path: str, allowed: set[str]) -> None:
    image = await api.create(name="m")
    resp = await api.client.request(method, path.format(id=image["id"]), headers=api.headers())
    await error_of(resp, 405, method)
    allow = {m.strip() for m in resp.headers["Allow"].split(",")}
    assert allowed <= allow
    assert method not in allow
    await still_serving(api)


# -- many bad requests in a row -----------------------------------------------------------


async def test_daemon_serves_after_a_barrage(api: Api) -> None:
    image = await api.create(name="survivor")
    for body in (b"{", b"[]", b"null", json.dumps({"size": 1}).encode(), json.dumps({"disk_format": "x"}).encode()):
        resp = await post_raw(api, body)
        assert 400 <= resp.status < 500
    for ops in ([{"op": "bogus"}], "[", [{"op": "add", "path": "/os_glance_x", "value": "1"}]):
        resp = await patch_raw(api, image["id"], ops)
        assert 400 <= resp.status < 500
    resp = await api.client.put("/v2/images/%s/file" % image["id"], data=io.BytesIO(b"x"),
                                headers=api.headers(**{"Content-Type": "text/plain"}))
    assert resp.status == 415
    assert (await show(api, image["id"]))["name"] == "survivor"
    await still_serving(api)
