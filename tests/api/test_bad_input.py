"""Malformed, hostile and oversized requests: each gets Glance's status and error shape, leaves
nothing behind, and the daemon keeps serving."""

from __future__ import annotations

import asyncio
import http.client
import io
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse

from appliance.app import build_app
from appliance.services import open_services
from appliance.stores.filesystem import PARTIAL_DIR
from tests.conftest import JSON_ERRORS, Api, Daemon

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
    return await api.client.patch(
        "/v2/images/%s" % image_id, data=data, headers=api.headers(**{"Content-Type": content_type})
    )


async def count_images(api: Api) -> int:
    return await api.services.catalog.count_images()


def assert_store_clean(api: Api, image_id: str) -> None:
    store = api.services.stores["local"]
    assert not (store.path / image_id).exists()
    assert store.image_files() == set()
    assert list((store.path / PARTIAL_DIR).iterdir()) == []


async def assert_queued_and_clean(api: Api, image_id: str) -> None:
    body = await api.show(image_id)
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
    assert (await api.show(image["id"]))["name"] == "target"
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
    after = await api.show(image["id"])
    assert after["name"] == "unchanged" and after["foo"] == "bar"
    assert after["updated_at"] == image["updated_at"]
    await still_serving(api)


@pytest.mark.parametrize(
    "key",
    [
        "size",
        "status",
        "checksum",
        "os_hash_value",
        "virtual_size",
        "created_at",
        "updated_at",
        "self",
        "file",
        "schema",
        "stores",
    ],
)
async def test_read_only_attribute_is_403(api: Api, key: str) -> None:
    await error_of(await post_raw(api, json.dumps({"name": "x", key: "1"})), 403, key, "read-only")
    assert await count_images(api) == 0
    image = await api.create(name="ro")
    for op in ("add", "replace"):
        await error_of(await patch_raw(api, image["id"], [{"op": op, "path": "/%s" % key, "value": "1"}]), 403, key)
    await error_of(await patch_raw(api, image["id"], [{"op": "remove", "path": "/%s" % key}]), 403, key)
    assert (await api.show(image["id"]))["status"] == "queued"
    await still_serving(api)


async def test_id_cannot_be_patched(api: Api) -> None:
    image = await api.create(name="id")
    resp = await patch_raw(api, image["id"], [{"op": "replace", "path": "/id", "value": str(uuid.uuid4())}])
    await error_of(resp, 403, "id")
    await api.show(image["id"])


@pytest.mark.parametrize(
    "key", ["os_glance_foo", "os_glance_import_task", "locations", "location", "deleted", "deleted_at"]
)
async def test_reserved_attribute_is_403(api: Api, key: str) -> None:
    value: Any = [] if key == "locations" else "x"
    await error_of(await post_raw(api, json.dumps({"name": "x", key: value})), 403, key)
    assert await count_images(api) == 0
    image = await api.create(name="reserved")
    await error_of(await patch_raw(api, image["id"], [{"op": "add", "path": "/%s" % key, "value": value}]), 403, key)
    assert key not in await api.show(image["id"])
    await still_serving(api)


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["a"], {"a": "b"}])
async def test_non_string_custom_property_is_400(api: Api, value: Any) -> None:
    await error_of(await post_raw(api, json.dumps({"name": "x", "foo": value})), 400, "foo")
    assert await count_images(api) == 0
    image = await api.create(name="props")
    await error_of(await patch_raw(api, image["id"], [{"op": "add", "path": "/foo", "value": value}]), 400, "foo")
    assert "foo" not in await api.show(image["id"])


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
    assert (await api.show(image["id"]))["disk_format"] == "raw"


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
    assert (await api.show(image["id"]))["name"] == "keep"


async def test_patch_accepts_v2_0_patch_media_type(api: Api) -> None:
    image = await api.create(name="old")
    resp = await patch_raw(
        api,
        image["id"],
        [{"op": "replace", "path": "/name", "value": "new"}],
        "application/openstack-images-v2.0-json-patch",
    )
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
    assert (await api.show(image["id"]))["size"] == MiB


async def test_upload_over_cap_chunked_is_413(small_api: Api) -> None:
    api = small_api
    image = await api.create(name="big-chunked")
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(48):  # 3 MiB in 64 KiB pieces, no Content-Length
            sent += 64 << 10
            yield os.urandom(64 << 10)

    resp = await api.client.put(
        "/v2/images/%s/file" % image["id"],
        data=body(),
        headers=api.headers(**{"Content-Type": "application/octet-stream"}),
    )
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
        if (await api.show(image["id"]))["status"] == "saving" and list(partial.iterdir()):
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the upload never started")
    writer.close()  # the client goes away mid-upload
    await writer.wait_closed()
    for _ in range(100):
        body = await api.show(image["id"])
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
    subprocess.run(
        [qemu, "create", "-q", "-f", "qcow2", "-b", str(d / "base.raw"), "-F", "raw", str(d / "child.qcow2"), "4M"],
        check=True,
    )
    subprocess.run(
        [qemu, "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(d / "flat.vmdk"), "4M"], check=True
    )
    subprocess.run([qemu, "create", "-q", "-f", "qcow2", str(d / "clean.qcow2"), "4M"], check=True)
    descriptor = (
        b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType="monolithicFlat"\n\n'
        b'# Extent description\nRW 8192 FLAT "/etc/shadow" 0\n'
    )
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
async def test_hostile_or_mismatched_image_is_400(
    api: Api, hostile: dict[str, bytes], sample: str, claim: str, words: tuple[str, ...]
) -> None:
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
    body = await api.show(image["id"])
    assert body["status"] == "active"
    assert body["virtual_size"] == 4 * MiB
    assert body["size"] == len(hostile["qcow2-clean"])


async def test_hostile_upload_streamed_without_length(api: Api, hostile: dict[str, bytes]) -> None:
    data = hostile["qcow2-backing"] + bytes(2 * MiB)

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    image = await api.create(name="streamed", disk_format="qcow2")
    resp = await api.client.put(
        "/v2/images/%s/file" % image["id"],
        data=body(),
        headers=api.headers(**{"Content-Type": "application/octet-stream"}),
    )
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
    resp = await api.client.put(
        "/v2/images/%s/file" % image["id"], data=io.BytesIO(b"x"), headers=api.headers(**{"Content-Type": "text/plain"})
    )
    assert resp.status == 415
    assert (await api.show(image["id"]))["name"] == "survivor"
    await still_serving(api)


# -- on a real daemon: values that used to escape as 500s ---------------------------------


def call(
    daemon: Daemon,
    method: str,
    path: str,
    body: bytes | None = None,
    accept: str | None = "application/json",
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: (status, headers, body), errors included."""
    conn = http.client.HTTPConnection(daemon.url.removeprefix("http://"), timeout=30)
    hdrs = {"X-Auth-Token": daemon.token, **({"Accept": accept} if accept else {}), **headers}
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def refused(answer: tuple[int, dict[str, str], bytes], status: int, *words: str) -> None:
    code, headers, body = answer
    assert code == status, body
    assert headers["content-type"].startswith("application/json"), headers
    message = json.loads(body)["message"]
    for word in words:
        assert word in message, message


def new_image(daemon: Daemon, data: bytes | None = None) -> str:
    code, _, body = call(
        daemon, "POST", "/v2/images", json.dumps({"disk_format": "raw", "container_format": "bare"}).encode()
    )
    assert code == 201, body
    image_id = json.loads(body)["id"]
    if data is not None:
        code, _, body = call(
            daemon, "PUT", "/v2/images/%s/file" % image_id, data, **{"Content-Type": "application/octet-stream"}
        )
        assert code == 204, body
    return image_id


def assert_no_server_errors(daemon: Daemon) -> None:
    assert call(daemon, "GET", "/healthcheck")[0] == 200
    log = daemon.log.read_text(errors="replace")
    assert "Error handling request" not in log and "Traceback" not in log, log[-3000:]


def test_huge_and_odd_integers_are_400(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    image_id = new_image(daemon)
    huge = str(10**30)
    for query in (
        "size_min=" + huge,
        "size_max=" + huge,
        "limit=" + huge,
        "size_min=9223372036854775808",
        "limit=%C2%B2",
        "size_min=1_000",
        "size_min=%D9%A3",
    ):  # ², _ and an Arabic-Indic 3: int() takes them
        refused(call(daemon, "GET", "/v2/images?" + query), 400, query.split("=")[0])
    assert call(daemon, "GET", "/v2/images?size_min=9223372036854775807")[0] == 200
    refused(call(daemon, "GET", "/v2/edge/events?since=" + huge), 400, "since")
    for body in (
        '{"name": "x", "min_disk": %d}' % 2**70,
        '{"name": "x", "min_ram": -%d}' % 2**64,
        '{"name": "x", "min_disk": %s}' % ("9" * 5000),
    ):
        refused(call(daemon, "POST", "/v2/images", body.encode()), 400, "out of range")
    patch = '[{"op": "replace", "path": "/min_disk", "value": %d}]' % 2**70
    refused(
        call(
            daemon,
            "PATCH",
            "/v2/images/" + image_id,
            patch.encode(),
            **{"Content-Type": "application/openstack-images-v2.1-json-patch"},
        ),
        400,
        "out of range",
    )
    refused(call(daemon, "POST", "/v2/images", b'{"name": NaN}'), 400, "NaN")
    _, _, body = call(daemon, "GET", "/v2/images/" + image_id)
    assert json.loads(body)["min_disk"] == 0
    assert_no_server_errors(daemon)


def test_deeply_nested_json_is_400(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    image_id = new_image(daemon)
    deep = b"[" * 100_000 + b"]" * 100_000
    refused(call(daemon, "POST", "/v2/images", deep), 400, "nested deeper")
    refused(
        call(
            daemon,
            "PATCH",
            "/v2/images/" + image_id,
            deep,
            **{"Content-Type": "application/openstack-images-v2.1-json-patch"},
        ),
        400,
        "nested deeper",
    )
    # Below the interpreter's recursion limit the parser copes; the cap still answers first.
    middling = ('{"name": "x", "k": %s"v"%s}' % ("[" * 40, "]" * 40)).encode()
    refused(call(daemon, "POST", "/v2/images", middling), 400, "nested deeper")
    assert call(daemon, "POST", "/v2/images", b'{"name": "flat", "tags": ["a"]}')[0] == 201
    assert_no_server_errors(daemon)


def test_stage_size_header_must_be_ascii_digits(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    image_id = new_image(daemon)
    for value in ("\u00b2", "1_0", "-1", "12345678901234567890123"):
        refused(
            call(
                daemon,
                "PUT",
                "/v2/images/%s/stage" % image_id,
                b"abcd",
                **{
                    "Content-Type": "application/octet-stream",
                    "x-openstack-image-size": value.encode().decode("latin-1"),
                },
            ),
            400,
            "x-openstack-image-size",
        )
    code, _, body = call(
        daemon,
        "PUT",
        "/v2/images/%s/stage" % image_id,
        b"abcd",
        **{"Content-Type": "application/octet-stream", "x-openstack-image-size": "4"},
    )
    assert code == 204, body
    assert_no_server_errors(daemon)


def test_too_many_list_filters_is_400(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    new_image(daemon)
    many = "&".join("p%d=v" % i for i in range(1000))
    refused(call(daemon, "GET", "/v2/images?" + many), 400, "Too many filters", "1000", "64")
    tags = "&".join("tag=t%d" % i for i in range(65))
    refused(call(daemon, "GET", "/v2/images?" + tags), 400, "Too many filters")
    code, _, body = call(daemon, "GET", "/v2/images?" + "&".join("p%d=v" % i for i in range(64)))
    assert code == 200 and json.loads(body)["images"] == []
    assert_no_server_errors(daemon)


def test_empty_suffix_range_is_416(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    image_id = new_image(daemon, b"0123456789")
    path = "/v2/images/%s/file" % image_id
    for value in ("bytes=-0", "bytes=-000", "bytes=10-", "bytes=99-200"):
        refused(call(daemon, "GET", path, Range=value), 416, "10 bytes")  # Glance's error shape, not FileResponse's
    for value in ("bytes=5-3", "bytes=0-1,4-5", "items=0-1", "bytes=x"):  # FileResponse answered these as octet-stream
        refused(call(daemon, "GET", path, Range=value), 416, "Unsupported Range")
    code, headers, body = call(daemon, "GET", path, Range="bytes=-3")
    assert (code, body, headers["content-range"]) == (206, b"789", "bytes 7-9/10")
    code, _, body = call(daemon, "GET", path, Range="bytes=0-")
    assert (code, body) == (206, b"0123456789")
    assert_no_server_errors(daemon)


def test_unknown_routes_answer_json_but_glance_paths_keep_glance_negotiation(
    daemon_factory: Callable[..., Daemon],
) -> None:
    daemon = daemon_factory()
    for path in ("/nope", "/v3/images", "/v2/edge/nope", "/v2/nope"):
        for accept in (None, "*/*", "application/json", "text/*"):
            refused(call(daemon, "GET", path, accept=accept), 404, path)
        code, headers, body = call(daemon, "GET", path, accept="text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        assert code == 404 and headers["content-type"].startswith("text/html"), body
    refused(call(daemon, "POST", "/healthcheck", accept="*/*"), 405, "POST")
    # python-glanceclient sends */* and can read only webob's HTML there (member-list, md-* land here).
    for path in ("/v2/images/%s/members" % uuid.uuid4(), "/v2/metadefs/namespaces/%s" % uuid.uuid4()):
        code, headers, body = call(daemon, "GET", path, accept="*/*")
        assert code == 404 and headers["content-type"].startswith("text/html"), body
        refused(call(daemon, "GET", path), 404)


def test_head_sends_no_body_on_a_kept_alive_connection(daemon_factory: Callable[..., Daemon]) -> None:
    """The streamed image list wrote its body after HEAD's headers; the next response on the
    connection then began with that JSON (found by the fuzzer)."""
    daemon = daemon_factory()
    new_image(daemon)
    conn = http.client.HTTPConnection(daemon.url.removeprefix("http://"), timeout=10)
    headers = {"X-Auth-Token": daemon.token, "Accept": "application/json"}
    try:
        for _ in range(3):
            conn.request("HEAD", "/v2/images", headers=headers)
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == b""
            conn.request("GET", "/versions", headers=headers)
            resp = conn.getresponse()
            assert resp.status == 200 and "versions" in json.loads(resp.read())
    finally:
        conn.close()


def test_empty_sort_values_mean_the_defaults(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory()
    image_id = new_image(daemon)
    for query in ("sort_dir=", "sort_key=", "sort_key=,&sort_dir=,", "sort_key=name&sort_dir="):
        code, _, body = call(daemon, "GET", "/v2/images?" + query)
        assert code == 200, (query, body)
        assert [i["id"] for i in json.loads(body)["images"]] == [image_id]
    assert_no_server_errors(daemon)
