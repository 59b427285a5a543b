"""The Image API over HTTP (in-process app), checked against Glance v2's wire contract."""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientResponse

from appliance.model import Location
from tests.clock import ManualClock
from tests.conftest import Api

PATCH_CT = "application/openstack-images-v2.1-json-patch"
ADMIN = "tok-admin"
MEMBER_A = "tok-member-a"


async def chunks_of(data: bytes, size: int = 1 << 16) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def error_of(resp: ClientResponse, status: int) -> dict[str, Any]:
    """Assert Glance's error shape and return it."""
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["code"] == "%d %s" % (status, body["title"])
    assert isinstance(body["message"], str) and body["message"]
    return body


async def patch(api: Api, image_id: str, ops: list[dict[str, Any]], token: str | None = None) -> ClientResponse:
    return await api.client.patch(
        "/v2/images/%s" % image_id,
        data=json.dumps(ops),
        headers={"X-Auth-Token": token or api.token, "Content-Type": PATCH_CT},
    )


async def list_body(api: Api, params: Any = None) -> dict[str, Any]:
    resp = await api.client.get("/v2/images", params=params, headers=api.headers())
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def list_ids(api: Api, params: Any = None) -> set[str]:
    body = await list_body(api, params)
    return {i["id"] for i in body["images"]}


async def uploaded(api: Api, data: bytes, **body: Any) -> dict[str, Any]:
    image = await api.create(**body)
    resp = await api.upload(image["id"], data)
    assert resp.status == 204, await resp.text()
    return await api.show(image["id"])


def store_files(api: Api, store: str = "local") -> set[str]:
    return api.services.stores[store].image_files()


TWO_STORES = {"default": "local", "local": {"path": "images"}, "second": {"path": "images2", "description": "Second"}}


# -- create / show ------------------------------------------------------------------------


async def test_create_returns_201_with_location_and_store_headers(api: Api) -> None:
    resp = await api.client.post(
        "/v2/images",
        json={
            "name": "cirros",
            "disk_format": "qcow2",
            "container_format": "bare",
            "foo": "bar",
            "tags": ["a", "b", "a"],
            "min_ram": 64,
        },
        headers=api.headers(),
    )
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert resp.headers["Location"].endswith("/v2/images/%s" % body["id"])
    assert resp.headers["OpenStack-image-store-ids"] == "local"
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["status"] == "queued"
    assert body["name"] == "cirros"
    assert body["disk_format"] == "qcow2"
    assert body["visibility"] == "shared"  # Glance's default since v2.5
    assert body["protected"] is False and body["os_hidden"] is False
    assert body["size"] is None and body["checksum"] is None
    assert body["foo"] == "bar"
    assert body["tags"] == ["a", "b"]
    assert body["min_ram"] == 64 and body["min_disk"] == 0
    assert body["self"] == "/v2/images/%s" % body["id"]
    assert body["file"] == "/v2/images/%s/file" % body["id"]
    assert body["schema"] == "/v2/schemas/image"
    assert "stores" not in body  # no data yet
    assert await api.show(body["id"]) == body


async def test_create_store_ids_header_lists_every_store(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    resp = await api.client.post("/v2/images", json={"name": "x"}, headers=api.headers())
    assert resp.status == 201
    assert sorted(resp.headers["OpenStack-image-store-ids"].split(",")) == ["local", "second"]


async def test_create_honours_given_id_and_refuses_duplicate(api: Api) -> None:
    image_id = str(uuid.uuid4())
    image = await api.create(id=image_id, name="first")
    assert image["id"] == image_id
    resp = await api.client.post("/v2/images", json={"id": image_id, "name": "second"}, headers=api.headers())
    body = await error_of(resp, 409)
    assert body["code"] == "409 Conflict"
    assert image_id in body["message"]
    assert (await api.show(image_id))["name"] == "first"


async def test_show_unknown_image_is_404(api: Api) -> None:
    resp = await api.client.get("/v2/images/%s" % uuid.uuid4(), headers=api.headers())
    body = await error_of(resp, 404)
    assert body["code"] == "404 Not Found"


# -- list filters -------------------------------------------------------------------------


async def test_list_filters_by_name_status_and_visibility(api: Api) -> None:
    a = await api.create(name="alpha", visibility="private")
    b = await api.create(name="beta", visibility="public")
    c = await uploaded(api, b"0123456789", name="alpha", visibility="public")
    assert await list_ids(api, {"name": "alpha"}) == {a["id"], c["id"]}
    assert await list_ids(api, {"name": "nothing"}) == set()
    assert await list_ids(api, {"status": "active"}) == {c["id"]}
    assert await list_ids(api, {"status": "queued"}) == {a["id"], b["id"]}
    assert await list_ids(api, {"visibility": "private"}) == {a["id"]}
    assert await list_ids(api, {"visibility": "public"}) == {b["id"], c["id"]}
    assert await list_ids(api, {"visibility": "public", "name": "alpha"}) == {c["id"]}
    resp = await api.client.get("/v2/images", params={"visibility": "bogus"}, headers=api.headers())
    await error_of(resp, 400)


async def test_list_body_shape(api: Api) -> None:
    image = await api.create(name="one")
    body = await list_body(api)
    assert body["first"] == "/v2/images"
    assert body["schema"] == "/v2/schemas/images"
    assert "next" not in body
    assert body["images"] == [await api.show(image["id"])]


async def test_list_repeated_tags_are_anded(api: Api) -> None:
    ab = await api.create(name="ab", tags=["a", "b"])
    a = await api.create(name="a", tags=["a"])
    await api.create(name="b", tags=["b"])
    await api.create(name="none")
    assert await list_ids(api, [("tag", "a")]) == {ab["id"], a["id"]}
    assert await list_ids(api, [("tag", "a"), ("tag", "b")]) == {ab["id"]}
    assert await list_ids(api, [("tag", "a"), ("tag", "c")]) == set()


async def test_list_os_hidden(api: Api) -> None:
    shown = await api.create(name="shown")
    hidden = await api.create(name="hidden", os_hidden=True)
    assert await list_ids(api) == {shown["id"]}
    assert await list_ids(api, {"os_hidden": "false"}) == {shown["id"]}
    # Glance: os_hidden=true lists only the hidden images.
    assert await list_ids(api, {"os_hidden": "true"}) == {hidden["id"]}
    # Hidden images stay reachable by id.
    assert (await api.show(hidden["id"]))["os_hidden"] is True
    resp = await api.client.get("/v2/images", params={"os_hidden": "maybe"}, headers=api.headers())
    await error_of(resp, 400)


async def test_list_property_filter(api: Api) -> None:
    bar = await api.create(name="x", foo="bar", hw_arch="x86_64")
    await api.create(name="y", foo="baz", hw_arch="x86_64")
    await api.create(name="z")
    assert await list_ids(api, {"foo": "bar"}) == {bar["id"]}
    assert await list_ids(api, {"foo": "bar", "hw_arch": "x86_64"}) == {bar["id"]}
    assert await list_ids(api, {"foo": "bar", "hw_arch": "aarch64"}) == set()
    assert len(await list_ids(api, {"hw_arch": "x86_64"})) == 2


async def test_list_id_in_operator(api: Api) -> None:
    images = [await api.create(name="n%d" % i) for i in range(4)]
    wanted = {images[0]["id"], images[2]["id"]}
    assert await list_ids(api, {"id": "in:%s,%s" % (images[0]["id"], images[2]["id"])}) == wanted
    assert await list_ids(api, {"id": images[3]["id"]}) == {images[3]["id"]}


async def test_list_size_min_and_max(api: Api) -> None:
    small = await uploaded(api, b"s" * 10)
    medium = await uploaded(api, b"m" * 100)
    large = await uploaded(api, b"l" * 1000)
    await api.create(name="no data")  # size null: outside every size range
    assert await list_ids(api, {"size_min": "100"}) == {medium["id"], large["id"]}
    assert await list_ids(api, {"size_max": "100"}) == {small["id"], medium["id"]}
    assert await list_ids(api, {"size_min": "11", "size_max": "999"}) == {medium["id"]}
    assert await list_ids(api, {"size_min": "1001"}) == set()
    resp = await api.client.get("/v2/images", params={"size_min": "ten"}, headers=api.headers())
    await error_of(resp, 400)


# -- pagination ---------------------------------------------------------------------------


async def walk(api: Api, params: dict[str, str]) -> tuple[list[str], int]:
    """Follow `next` links from the first page; returns every id in order and the page count."""
    body = await list_body(api, params)
    ids = [i["id"] for i in body["images"]]
    pages = 1
    while "next" in body:
        assert body["next"].startswith("/v2/images?")
        resp = await api.client.get(body["next"], headers=api.headers())
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        ids.extend(i["id"] for i in body["images"])
        pages += 1
        assert pages < 100
    return ids, pages


@pytest.fixture
async def thirty(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """30 images that all share one created_at: only the id can order them."""
    monkeypatch.setattr(api.services.images, "clock", ManualClock("2024-05-01T12:00:00Z"))
    images = [await api.create(name="img-%d" % (i % 4), min_ram=i % 3) for i in range(30)]
    assert {i["created_at"] for i in images} == {"2024-05-01T12:00:00Z"}
    return images


async def test_pagination_default_sort_breaks_ties_by_id(api: Api, thirty: list[dict[str, Any]]) -> None:
    ids, pages = await walk(api, {"limit": "7"})
    assert pages == 5  # 7+7+7+7+2
    assert len(ids) == len(set(ids)) == 30
    # created_at desc, then id desc (Glance appends id in the default direction)
    assert ids == sorted((i["id"] for i in thirty), reverse=True)


async def test_pagination_sort_key_and_dir(api: Api, thirty: list[dict[str, Any]]) -> None:
    ids, _ = await walk(api, {"limit": "4", "sort_key": "name", "sort_dir": "asc"})
    assert len(ids) == len(set(ids)) == 30
    expected = [i["id"] for i in sorted(thirty, key=lambda i: (i["name"], i["id"]))]
    assert ids == expected


async def test_pagination_sort_parameter_mixed_directions(api: Api, thirty: list[dict[str, Any]]) -> None:
    ids, _ = await walk(api, {"limit": "6", "sort": "name:asc,created_at:desc"})
    assert len(ids) == len(set(ids)) == 30
    by_name: dict[str, list[str]] = {}
    for i in thirty:
        by_name.setdefault(i["name"], []).append(i["id"])
    expected = [iid for name in sorted(by_name) for iid in sorted(by_name[name], reverse=True)]
    assert ids == expected


async def test_pagination_multiple_sort_keys_desc(api: Api, thirty: list[dict[str, Any]]) -> None:
    ids, _ = await walk(api, {"limit": "5", "sort_key": "min_ram,name", "sort_dir": "desc"})
    assert len(ids) == len(set(ids)) == 30
    expected = [i["id"] for i in sorted(thirty, key=lambda i: (i["min_ram"], i["name"], i["id"]), reverse=True)]
    assert ids == expected


async def test_pagination_limit_and_marker(api: Api, thirty: list[dict[str, Any]]) -> None:
    everything = sorted((i["id"] for i in thirty), reverse=True)
    body = await list_body(api, {"limit": "3"})
    assert [i["id"] for i in body["images"]] == everything[:3]
    assert "marker=%s" % everything[2] in body["next"]
    assert "limit=3" in body["next"]
    body = await list_body(api, {"limit": "3", "marker": everything[10]})
    assert [i["id"] for i in body["images"]] == everything[11:14]
    body = await list_body(api, {"marker": everything[-1]})
    assert body["images"] == [] and "next" not in body
    # limit larger than what is left: no next link
    body = await list_body(api, {"limit": "30"})
    assert len(body["images"]) == 30 and "next" not in body
    body = await list_body(api, {"limit": "29"})
    assert len(body["images"]) == 29 and "next" in body
    # default page size is 25 (api.default_page_size)
    body = await list_body(api)
    assert len(body["images"]) == 25 and "next" in body


async def test_pagination_filters_carry_into_next_link(api: Api, thirty: list[dict[str, Any]]) -> None:
    body = await list_body(api, {"limit": "2", "name": "img-1"})
    assert "name=img-1" in body["next"]
    ids, pages = await walk(api, {"limit": "2", "name": "img-1"})
    expected = sorted((i["id"] for i in thirty if i["name"] == "img-1"), reverse=True)
    assert len(expected) == 8
    assert ids == expected
    assert pages == 4  # the daemon looks one image ahead, so a full last page has no `next`


async def test_pagination_bad_parameters(api: Api) -> None:
    for params in (
        {"limit": "-1"},
        {"limit": "x"},
        {"sort_key": "nope"},
        {"sort_dir": "up"},
        {"sort": "name:sideways"},
        {"sort": "name:asc", "sort_key": "name"},
        {"marker": "not-a-uuid"},
    ):
        resp = await api.client.get("/v2/images", params=params, headers=api.headers())
        await error_of(resp, 400)


async def test_pagination_unknown_marker_is_400(api: Api) -> None:
    await api.create(name="x")
    # Glance answers 400 Bad Request for a marker that names no image.
    resp = await api.client.get("/v2/images", params={"marker": str(uuid.uuid4())}, headers=api.headers())
    await error_of(resp, 400)


# -- PATCH --------------------------------------------------------------------------------


async def test_patch_custom_properties(api: Api) -> None:
    image = await api.create(name="p", keep="me")
    resp = await patch(api, image["id"], [{"op": "add", "path": "/foo", "value": "1"}])
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["foo"] == "1" and body["keep"] == "me"
    assert body["updated_at"] >= image["updated_at"]
    resp = await patch(api, image["id"], [{"op": "replace", "path": "/foo", "value": "2"}])
    assert (await resp.json())["foo"] == "2"
    # add on an existing property replaces it (JSON patch semantics, as in Glance)
    resp = await patch(api, image["id"], [{"op": "add", "path": "/foo", "value": "3"}])
    assert (await resp.json())["foo"] == "3"
    resp = await patch(api, image["id"], [{"op": "remove", "path": "/foo"}])
    assert resp.status == 200
    body = await resp.json()
    assert "foo" not in body and body["keep"] == "me"
    assert "foo" not in await api.show(image["id"])
    # replace / remove of a missing property: 409 as in Glance
    resp = await patch(api, image["id"], [{"op": "replace", "path": "/foo", "value": "x"}])
    await error_of(resp, 409)
    resp = await patch(api, image["id"], [{"op": "remove", "path": "/foo"}])
    await error_of(resp, 409)


async def test_patch_base_attributes_and_tags(api: Api) -> None:
    image = await api.create(name="old", tags=["x", "y"])
    resp = await patch(
        api,
        image["id"],
        [
            {"op": "replace", "path": "/name", "value": "new"},
            {"op": "replace", "path": "/tags", "value": ["p", "q"]},
            {"op": "replace", "path": "/min_ram", "value": 512},
            {"op": "replace", "path": "/min_disk", "value": 2},
            {"op": "replace", "path": "/protected", "value": True},
            {"op": "replace", "path": "/disk_format", "value": "qcow2"},
        ],
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "new"
    assert sorted(body["tags"]) == ["p", "q"]
    assert body["min_ram"] == 512 and body["min_disk"] == 2
    assert body["protected"] is True
    assert body["disk_format"] == "qcow2"
    assert await api.show(image["id"]) == body
    # removing a base attribute is forbidden
    resp = await patch(api, image["id"], [{"op": "remove", "path": "/name"}])
    await error_of(resp, 403)
    resp = await patch(api, image["id"], [{"op": "replace", "path": "/min_ram", "value": -1}])
    await error_of(resp, 400)
    assert (await api.show(image["id"]))["min_ram"] == 512


async def test_patch_is_atomic(api: Api) -> None:
    image = await api.create(name="atomic")
    resp = await patch(
        api,
        image["id"],
        [
            {"op": "replace", "path": "/name", "value": "changed"},
            {"op": "add", "path": "/size", "value": 5},
        ],
    )
    await error_of(resp, 403)
    assert (await api.show(image["id"]))["name"] == "atomic"


async def test_patch_unknown_image_is_404(api: Api) -> None:
    resp = await patch(api, str(uuid.uuid4()), [{"op": "replace", "path": "/name", "value": "x"}])
    await error_of(resp, 404)


# -- tags ---------------------------------------------------------------------------------


async def test_tags_put_and_delete(api: Api) -> None:
    image = await api.create(name="t")
    url = "/v2/images/%s/tags/%s"
    resp = await api.client.put(url % (image["id"], "blue"), headers=api.headers())
    assert resp.status == 204
    resp = await api.client.put(url % (image["id"], "blue"), headers=api.headers())  # idempotent
    assert resp.status == 204
    resp = await api.client.put(url % (image["id"], "green"), headers=api.headers())
    assert resp.status == 204
    assert sorted((await api.show(image["id"]))["tags"]) == ["blue", "green"]
    resp = await api.client.delete(url % (image["id"], "blue"), headers=api.headers())
    assert resp.status == 204
    assert (await api.show(image["id"]))["tags"] == ["green"]
    resp = await api.client.delete(url % (image["id"], "blue"), headers=api.headers())
    await error_of(resp, 404)
    resp = await api.client.put(url % (uuid.uuid4(), "blue"), headers=api.headers())
    await error_of(resp, 404)


# -- deactivate / reactivate --------------------------------------------------------------


async def test_deactivate_and_reactivate(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(
        token=ADMIN,
        auth={
            "tokens": [
                {"token": ADMIN, "user": "root", "project": "admin", "roles": ["admin"]},
                {"token": MEMBER_A, "user": "alice", "project": "proj-a", "roles": ["member", "reader"]},
            ]
        },
    )
    member = {"X-Auth-Token": MEMBER_A}
    resp = await api.client.post(
        "/v2/images", json={"name": "d", "disk_format": "raw", "container_format": "bare"}, headers=member
    )
    assert resp.status == 201
    image_id = (await resp.json())["id"]
    # only an active image can be deactivated
    resp = await api.client.post("/v2/images/%s/actions/deactivate" % image_id, headers=api.headers())
    await error_of(resp, 403)
    resp = await api.client.put(
        "/v2/images/%s/file" % image_id,
        data=io.BytesIO(b"payload"),
        headers={**member, "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 204
    resp = await api.client.post("/v2/images/%s/actions/deactivate" % image_id, headers=api.headers())
    assert resp.status == 204
    assert (await api.show(image_id))["status"] == "deactivated"
    resp = await api.client.post("/v2/images/%s/actions/deactivate" % image_id, headers=api.headers())
    assert resp.status == 204  # idempotent
    resp = await api.client.get("/v2/images/%s/file" % image_id, headers=member)
    body = await error_of(resp, 403)
    assert "deactivated" in body["message"]
    resp = await api.client.get("/v2/images/%s/file" % image_id, headers=api.headers())
    assert resp.status == 200 and await resp.read() == b"payload"  # admins still may
    resp = await api.client.post("/v2/images/%s/actions/reactivate" % image_id, headers=api.headers())
    assert resp.status == 204
    assert (await api.show(image_id))["status"] == "active"
    resp = await api.client.get("/v2/images/%s/file" % image_id, headers=member)
    assert resp.status == 200 and await resp.read() == b"payload"


# -- delete -------------------------------------------------------------------------------


async def test_delete_protected_then_unprotected(api: Api) -> None:
    image = await uploaded(api, b"protected bytes", name="keep", protected=True)
    path = api.services.stores["local"].path / image["id"]
    assert path.is_file()
    resp = await api.client.delete("/v2/images/%s" % image["id"], headers=api.headers())
    body = await error_of(resp, 403)
    assert "protected" in body["message"]
    assert path.is_file()
    resp = await patch(api, image["id"], [{"op": "replace", "path": "/protected", "value": False}])
    assert resp.status == 200
    resp = await api.client.delete("/v2/images/%s" % image["id"], headers=api.headers())
    assert resp.status == 204
    assert not path.exists()
    assert store_files(api) == set()
    resp = await api.client.get("/v2/images/%s" % image["id"], headers=api.headers())
    await error_of(resp, 404)
    resp = await api.client.delete("/v2/images/%s" % image["id"], headers=api.headers())
    await error_of(resp, 404)


# -- upload / download --------------------------------------------------------------------


async def test_upload_to_active_image_is_409(api: Api) -> None:
    image = await uploaded(api, b"first")
    resp = await api.upload(image["id"], b"second")
    await error_of(resp, 409)
    after = await api.show(image["id"])
    assert after["status"] == "active"
    assert after["checksum"] == hashlib.md5(b"first").hexdigest()
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers())
    assert await resp.read() == b"first"


async def test_upload_to_named_store(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    image = await api.create(name="elsewhere")
    resp = await api.upload(image["id"], b"second store data", **{"X-Image-Meta-Store": "second"})
    assert resp.status == 204, await resp.text()
    body = await api.show(image["id"])
    assert body["stores"] == "second"
    assert store_files(api, "second") == {image["id"]}
    assert store_files(api, "local") == set()
    assert (api.services.stores["second"].path / image["id"]).read_bytes() == b"second store data"
    # no header: the default store
    other = await api.create(name="default")
    assert (await api.upload(other["id"], b"x")).status == 204
    assert (await api.show(other["id"]))["stores"] == "local"


async def test_upload_to_unknown_store_is_400(api: Api) -> None:
    image = await api.create(name="nowhere")
    resp = await api.upload(image["id"], b"data", **{"X-Image-Meta-Store": "atlantis"})
    body = await error_of(resp, 400)
    assert "atlantis" in body["message"]
    assert (await api.show(image["id"]))["status"] == "queued"
    assert store_files(api) == set()


async def test_upload_of_unknown_image_is_404(api: Api) -> None:
    resp = await api.upload(str(uuid.uuid4()), b"data")
    await error_of(resp, 404)


async def test_download_of_queued_image_is_204(api: Api) -> None:
    image = await api.create(name="empty")
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers())
    assert resp.status == 204
    assert await resp.read() == b""


async def test_download_range(api: Api) -> None:
    data = bytes(range(256)) * 4
    image = await uploaded(api, data)
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers(Range="bytes=10-19"))
    assert resp.status == 206
    assert await resp.read() == data[10:20]
    assert resp.headers["Content-Range"] == "bytes 10-19/%d" % len(data)
    assert "Content-MD5" not in resp.headers  # the checksum is of the whole image
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers())
    assert resp.status == 200
    assert resp.headers["Content-MD5"] == hashlib.md5(data).hexdigest()
    assert resp.headers["Content-Type"] == "application/octet-stream"
    assert await resp.read() == data


async def test_upload_streamed_without_length(api: Api) -> None:
    data = os.urandom(3 << 20) + b"end"
    image = await api.create(name="chunked")
    resp = await api.client.put(
        "/v2/images/%s/file" % image["id"],
        data=chunks_of(data),
        headers=api.headers(**{"Content-Type": "application/octet-stream"}),
    )
    assert resp.status == 204, await resp.text()
    body = await api.show(image["id"])
    assert body["size"] == len(data)
    assert body["os_hash_algo"] == "sha512"
    assert body["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert body["virtual_size"] == len(data)


# -- locations and stores -----------------------------------------------------------------


async def test_locations_shape(api: Api) -> None:
    queued = await api.create(name="q")
    resp = await api.client.get("/v2/images/%s/locations" % queued["id"], headers=api.headers())
    assert resp.status == 200 and await resp.json() == []
    image = await uploaded(api, b"located")
    resp = await api.client.get("/v2/images/%s/locations" % image["id"], headers=api.headers())
    assert resp.status == 200
    path = (api.services.stores["local"].path / image["id"]).absolute()
    assert await resp.json() == [{"url": "file://%s" % path, "metadata": {"store": "local"}}]


async def test_info_stores(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    resp = await api.client.get("/v2/info/stores", headers=api.headers())
    assert resp.status == 200
    stores = {s["id"]: s for s in (await resp.json())["stores"]}
    assert stores == {
        "local": {"id": "local", "description": "", "default": True},
        "second": {"id": "second", "description": "Second"},
    }
    resp = await api.client.get("/v2/info/stores/detail", headers=api.headers())
    assert resp.status == 200
    detail = {s["id"]: s for s in (await resp.json())["stores"]}
    assert set(detail) == {"local", "second"}
    local = detail["local"]
    assert local["default"] is True and local["type"] == "file"
    assert isinstance(local["weight"], int)
    props = local["properties"]
    assert props["datadir"] == str(api.services.stores["local"].path)
    assert props["total_bytes"] > 0 and 0 < props["free_bytes"] <= props["total_bytes"]
    assert props["used_bytes"] == 0
    assert props["read_only_reason"] == ""
    assert "read-only" not in local
    await uploaded(api, b"u" * 10000)
    resp = await api.client.get("/v2/info/stores/detail", headers=api.headers())
    detail = {s["id"]: s for s in (await resp.json())["stores"]}
    assert detail["local"]["properties"]["used_bytes"] >= 10000
    assert detail["second"]["properties"]["used_bytes"] == 0


async def test_info_stores_marks_read_only_store(open_api: Callable[..., Awaitable[Api]]) -> None:
    stores = {"default": "local", "local": {"path": "images"}, "ro": {"path": "/proc/edge-appliance-no/such"}}
    api = await open_api(stores=stores)
    resp = await api.client.get("/v2/info/stores", headers=api.headers())
    listed = {s["id"]: s for s in (await resp.json())["stores"]}
    assert listed["ro"]["read-only"] == "true"
    assert "read-only" not in listed["local"]
    resp = await api.client.get("/v2/info/stores/detail", headers=api.headers())
    detail = {s["id"]: s for s in (await resp.json())["stores"]}
    assert "/proc/edge-appliance-no/such" in detail["ro"]["properties"]["read_only_reason"]
    image = await api.create(name="ro")
    resp = await api.upload(image["id"], b"data", **{"X-Image-Meta-Store": "ro"})
    assert resp.status == 409, await resp.text()
    assert (await api.show(image["id"]))["status"] == "queued"


async def test_delete_from_store(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    data = b"two copies of me"
    image = await uploaded(api, data)
    image_id = image["id"]
    resp = await api.client.delete("/v2/stores/local/%s" % image_id, headers=api.headers())
    body = await error_of(resp, 403)  # as Glance
    assert "only copy" in body["message"]
    assert store_files(api, "local") == {image_id}
    # a second copy, made in-process
    second = api.services.stores["second"]
    await second.write(image_id, chunks_of(data), max_size=1 << 20)
    await api.services.catalog.add_location(
        image_id,
        Location(store="second", url=second.location_url(image_id), metadata={"store": "second"}),
        "2030-01-01T00:00:00Z",
    )
    assert (await api.show(image_id))["stores"] == "local,second"
    resp = await api.client.delete("/v2/stores/second/%s" % image_id, headers=api.headers())
    assert resp.status == 204, await resp.text()
    body = await api.show(image_id)
    assert body["stores"] == "local"
    assert store_files(api, "second") == set()
    resp = await api.client.get("/v2/images/%s/locations" % image_id, headers=api.headers())
    assert [loc["metadata"]["store"] for loc in await resp.json()] == ["local"]
    # the store no longer holds it; unknown store; unknown image
    resp = await api.client.delete("/v2/stores/second/%s" % image_id, headers=api.headers())
    await error_of(resp, 404)
    resp = await api.client.delete("/v2/stores/atlantis/%s" % image_id, headers=api.headers())
    await error_of(resp, 409)  # Glance: an unknown store is a conflict, not a missing resource
    resp = await api.client.delete("/v2/stores/second/%s" % uuid.uuid4(), headers=api.headers())
    await error_of(resp, 404)
    resp = await api.client.get("/v2/images/%s/file" % image_id, headers=api.headers())
    assert await resp.read() == data


async def test_delete_from_store_of_queued_image_is_409(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(stores=TWO_STORES)
    image = await api.create(name="q")
    resp = await api.client.delete("/v2/stores/local/%s" % image["id"], headers=api.headers())
    await error_of(resp, 409)


# -- discovery ----------------------------------------------------------------------------


async def test_versions_documents(api: Api) -> None:
    for path, status in (("/versions", 200), ("/", 300)):
        resp = await api.client.get(path)
        assert resp.status == status
        versions = (await resp.json())["versions"]
        current = [v for v in versions if v["status"] == "CURRENT"]
        assert [v["id"] for v in current] == ["v2.18"]
        ids = [v["id"] for v in versions]
        assert "v2.0" in ids and "v2.10" in ids
        assert len(ids) == len(set(ids))
        assert {v["status"] for v in versions} == {"CURRENT", "SUPPORTED"}
        for v in versions:
            assert v["links"][0]["rel"] == "self"
            assert v["links"][0]["href"].endswith("/v2/")


async def test_healthcheck(api: Api) -> None:
    resp = await api.client.get("/healthcheck")
    assert resp.status == 200
    assert await resp.text() == "OK"


async def test_schemas(api: Api) -> None:
    resp = await api.client.get("/v2/schemas/image", headers=api.headers())
    assert resp.status == 200
    schema = await resp.json()
    assert schema["name"] == "image"
    assert {"id", "name", "status", "visibility", "disk_format"} <= set(schema["properties"])
    assert "raw" in schema["properties"]["disk_format"]["enum"]
    resp = await api.client.get("/v2/schemas/images", headers=api.headers())
    assert resp.status == 200
    assert (await resp.json())["name"] == "images"
    resp = await api.client.get("/v2/schemas/nonsense", headers=api.headers())
    await error_of(resp, 404)


async def test_schema_lists_only_enabled_formats(open_api: Callable[..., Awaitable[Api]]) -> None:
    api = await open_api(formats={"disk_formats": ["raw", "qcow2"]})
    resp = await api.client.get("/v2/schemas/image", headers=api.headers())
    enum = [f for f in (await resp.json())["properties"]["disk_format"]["enum"] if f is not None]
    assert sorted(enum) == ["qcow2", "raw"]
    resp = await api.client.post("/v2/images", json={"disk_format": "vmdk"}, headers=api.headers())
    body = await error_of(resp, 400)
    assert "vmdk" in body["message"]


async def test_time_filters_select_by_updated_at(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    monkeypatch.setattr(api.services.images, "clock", clock)
    old = await api.create(name="old")
    clock.advance(1.1)  # timestamps have one-second resolution
    new = await api.create(name="new")
    since = new["updated_at"]
    resp = await api.client.get(
        "/v2/images",
        params={"updated_at": "gte:" + since, "sort_key": "updated_at", "sort_dir": "asc"},
        headers=api.headers(),
    )
    assert [i["id"] for i in (await resp.json())["images"]] == [new["id"]]
    resp = await api.client.get("/v2/images", params={"updated_at": "lt:" + since}, headers=api.headers())
    assert [i["id"] for i in (await resp.json())["images"]] == [old["id"]]
    for bad in ("2026-01-01", "gte:yesterday", "after:2026-01-01T00:00:00Z"):
        resp = await api.client.get("/v2/images", params={"updated_at": bad}, headers=api.headers())
        assert resp.status == 400 and "updated_at" in (await resp.json())["message"]
