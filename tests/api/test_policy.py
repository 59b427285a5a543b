"""Who may see and do what: tokens, Glance's default policy, and the local Unix socket."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientResponse

from appliance.app import build_app
from appliance.services import open_services
from tests.conftest import JSON_ERRORS, Api, Daemon

ADMIN = "token-admin-0123456789"
ALICE = "token-alice-project-a"  # member of project A
BOB = "token-bob-project-b"  # member of project B
PATCH_CT = "application/openstack-images-v2.1-json-patch"

TOKENS = [
    {"token": ADMIN, "user": "root", "project": "admin", "roles": ["admin", "member", "reader"]},
    {"token": ALICE, "user": "alice", "project": "proj-a", "roles": ["member", "reader"]},
    {"token": BOB, "user": "bob", "project": "proj-b", "roles": ["member", "reader"]},
]


@pytest.fixture
async def api(make_config: Any, aiohttp_client: Any) -> AsyncIterator[Api]:
    async with open_services(make_config(auth={"tokens": TOKENS})) as services:
        client = await aiohttp_client(build_app(services), headers=JSON_ERRORS)
        yield Api(client=client, token=ADMIN, services=services)
        await client.close()


def h(token: str, **extra: str) -> dict[str, str]:
    return {"X-Auth-Token": token, **extra}


async def create(api: Api, token: str, **body: Any) -> dict[str, Any]:
    body.setdefault("disk_format", "raw")
    body.setdefault("container_format", "bare")
    resp = await api.client.post("/v2/images", json=body, headers=h(token))
    assert resp.status == 201, await resp.text()
    return await resp.json()


async def upload(api: Api, token: str, image_id: str, data: bytes = b"image data") -> ClientResponse:
    return await api.client.put(
        "/v2/images/%s/file" % image_id,
        data=io.BytesIO(data),
        headers=h(token, **{"Content-Type": "application/octet-stream"}),
    )


async def patch(api: Api, token: str, image_id: str, ops: list[dict[str, Any]]) -> ClientResponse:
    return await api.client.patch(
        "/v2/images/%s" % image_id, data=json.dumps(ops), headers=h(token, **{"Content-Type": PATCH_CT})
    )


async def listed(api: Api, token: str, params: Any = None) -> set[str]:
    resp = await api.client.get("/v2/images", params=params, headers=h(token))
    assert resp.status == 200, await resp.text()
    return {i["id"] for i in (await resp.json())["images"]}


async def status_of(resp: ClientResponse, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert body["code"].startswith("%d " % status)
    assert body["message"]
    return body


@pytest.fixture
async def images(api: Api) -> dict[str, dict[str, Any]]:
    """Project A's images of every visibility (the public one made by the admin for A)."""
    out = {
        "private": await create(api, ALICE, name="a-private", visibility="private"),
        "shared": await create(api, ALICE, name="a-shared"),
        "community": await create(api, ALICE, name="a-community", visibility="community"),
        "public": await create(api, ADMIN, name="a-public", visibility="public", owner="proj-a"),
        "b-own": await create(api, BOB, name="b-private", visibility="private"),
    }
    assert out["shared"]["visibility"] == "shared"
    assert out["public"]["owner"] == "proj-a"
    assert out["b-own"]["owner"] == "proj-b"
    for image in out.values():
        assert (await upload(api, ADMIN, image["id"])).status == 204
    return out


# -- authentication -----------------------------------------------------------------------


async def test_no_token_is_401_except_discovery(api: Api) -> None:
    resp = await api.client.get("/v2/images")
    body = await status_of(resp, 401)
    assert body["code"] == "401 Unauthorized"
    assert "WWW-Authenticate" in resp.headers
    for method, path in (
        ("POST", "/v2/images"),
        ("GET", "/v2/info/stores"),
        ("GET", "/v2/schemas/image"),
        ("GET", "/v2/images/%s" % uuid.uuid4()),
    ):
        resp = await api.client.request(method, path)
        await status_of(resp, 401)
    assert (await api.client.get("/versions")).status == 200
    assert (await api.client.get("/")).status == 300
    assert (await api.client.get("/healthcheck")).status == 200


async def test_bad_token_is_401(api: Api) -> None:
    resp = await api.client.get("/v2/images", headers=h("not-a-token"))
    body = await status_of(resp, 401)
    assert "not valid" in body["message"]
    resp = await api.client.get("/v2/images", headers={"Authorization": "Bearer not-a-token"})
    await status_of(resp, 401)
    resp = await api.client.get("/v2/images", headers={"Authorization": "Bearer %s" % ALICE})
    assert resp.status == 200  # bearer tokens work too
    # a prefix of a valid token is not valid
    resp = await api.client.get("/v2/images", headers=h(ALICE[:-1]))
    await status_of(resp, 401)


# -- visibility ---------------------------------------------------------------------------


async def test_other_project_cannot_see_private_or_shared(api: Api, images: dict[str, dict[str, Any]]) -> None:
    for kind in ("private", "shared"):
        image_id = images[kind]["id"]
        resp = await api.client.get("/v2/images/%s" % image_id, headers=h(BOB))
        await status_of(resp, 404)
        resp = await api.client.get("/v2/images/%s/file" % image_id, headers=h(BOB))
        await status_of(resp, 404)
        resp = await api.client.get("/v2/images/%s/locations" % image_id, headers=h(BOB))
        await status_of(resp, 404)
        resp = await patch(api, BOB, image_id, [{"op": "replace", "path": "/name", "value": "x"}])
        await status_of(resp, 404)
        resp = await api.client.delete("/v2/images/%s" % image_id, headers=h(BOB))
        await status_of(resp, 404)
        resp = await api.client.post("/v2/images/%s/actions/deactivate" % image_id, headers=h(BOB))
        await status_of(resp, 404)
    bob_sees = await listed(api, BOB)
    assert bob_sees == {images["public"]["id"], images["b-own"]["id"]}
    assert await listed(api, BOB, {"visibility": "private"}) == {images["b-own"]["id"]}
    assert await listed(api, BOB, {"visibility": "shared"}) == set()
    assert await listed(api, BOB, {"visibility": "all"}) == {
        images["public"]["id"],
        images["community"]["id"],
        images["b-own"]["id"],
    }


async def test_other_project_sees_public_and_community(api: Api, images: dict[str, dict[str, Any]]) -> None:
    for kind in ("public", "community"):
        image_id = images[kind]["id"]
        resp = await api.client.get("/v2/images/%s" % image_id, headers=h(BOB))
        assert resp.status == 200
        resp = await api.client.get("/v2/images/%s/file" % image_id, headers=h(BOB))
        assert resp.status == 200 and await resp.read() == b"image data"
    # community images are listed only when asked for
    assert images["community"]["id"] not in await listed(api, BOB)
    assert await listed(api, BOB, {"visibility": "community"}) == {images["community"]["id"]}
    assert await listed(api, BOB, {"visibility": "public"}) == {images["public"]["id"]}
    # the owner lists its own community image by default
    assert images["community"]["id"] in await listed(api, ALICE)


async def test_owner_sees_all_its_images(api: Api, images: dict[str, dict[str, Any]]) -> None:
    assert await listed(api, ALICE) == {images[k]["id"] for k in ("private", "shared", "community", "public")}
    for kind in ("private", "shared"):
        resp = await api.client.get("/v2/images/%s" % images[kind]["id"], headers=h(ALICE))
        assert resp.status == 200


async def test_admin_sees_everything(api: Api, images: dict[str, dict[str, Any]]) -> None:
    everything = {i["id"] for i in images.values()}
    assert await listed(api, ADMIN) == everything
    assert await listed(api, ADMIN, {"visibility": "private"}) == {images["private"]["id"], images["b-own"]["id"]}
    assert await listed(api, ADMIN, {"visibility": "shared"}) == {images["shared"]["id"]}
    for image_id in everything:
        resp = await api.client.get("/v2/images/%s" % image_id, headers=h(ADMIN))
        assert resp.status == 200
        resp = await api.client.get("/v2/images/%s/file" % image_id, headers=h(ADMIN))
        assert resp.status == 200
    # admin may modify another project's image
    resp = await patch(api, ADMIN, images["b-own"]["id"], [{"op": "add", "path": "/note", "value": "admin"}])
    assert resp.status == 200 and (await resp.json())["note"] == "admin"


# -- modification -------------------------------------------------------------------------


async def test_other_project_cannot_modify_public_image(api: Api, images: dict[str, dict[str, Any]]) -> None:
    image_id = images["public"]["id"]
    resp = await patch(api, BOB, image_id, [{"op": "replace", "path": "/name", "value": "mine"}])
    await status_of(resp, 403)
    resp = await api.client.delete("/v2/images/%s" % image_id, headers=h(BOB))
    await status_of(resp, 403)
    resp = await api.client.put("/v2/images/%s/tags/bob" % image_id, headers=h(BOB))
    await status_of(resp, 403)
    resp = await api.client.post("/v2/images/%s/actions/deactivate" % image_id, headers=h(BOB))
    await status_of(resp, 403)  # visible to Bob, but not his
    resp = await api.client.get("/v2/images/%s" % image_id, headers=h(ADMIN))
    body = await resp.json()
    assert body["name"] == "a-public" and body["status"] == "active" and body["tags"] == []
    # the community image likewise
    resp = await patch(api, BOB, images["community"]["id"], [{"op": "add", "path": "/x", "value": "y"}])
    await status_of(resp, 403)


async def test_member_cannot_publicize(api: Api, images: dict[str, dict[str, Any]]) -> None:
    resp = await api.client.post("/v2/images", json={"name": "pub", "visibility": "public"}, headers=h(ALICE))
    await status_of(resp, 403)
    assert await listed(api, ADMIN, {"name": "pub"}) == set()
    resp = await patch(
        api, ALICE, images["private"]["id"], [{"op": "replace", "path": "/visibility", "value": "public"}]
    )
    await status_of(resp, 403)
    resp = await api.client.get("/v2/images/%s" % images["private"]["id"], headers=h(ALICE))
    assert (await resp.json())["visibility"] == "private"
    # other visibilities are the owner's choice
    resp = await patch(
        api, ALICE, images["private"]["id"], [{"op": "replace", "path": "/visibility", "value": "community"}]
    )
    assert resp.status == 200 and (await resp.json())["visibility"] == "community"
    resp = await patch(
        api, ADMIN, images["private"]["id"], [{"op": "replace", "path": "/visibility", "value": "public"}]
    )
    assert resp.status == 200 and (await resp.json())["visibility"] == "public"


async def test_member_cannot_change_owner(api: Api, images: dict[str, dict[str, Any]]) -> None:
    resp = await api.client.post("/v2/images", json={"name": "x", "owner": "proj-b"}, headers=h(ALICE))
    await status_of(resp, 403)
    resp = await patch(api, ALICE, images["private"]["id"], [{"op": "replace", "path": "/owner", "value": "proj-b"}])
    await status_of(resp, 403)
    resp = await api.client.get("/v2/images/%s" % images["private"]["id"], headers=h(ALICE))
    assert (await resp.json())["owner"] == "proj-a"
    # naming oneself as owner is no change
    resp = await api.client.post("/v2/images", json={"name": "x", "owner": "proj-a"}, headers=h(ALICE))
    assert resp.status == 201
    resp = await patch(api, ADMIN, images["private"]["id"], [{"op": "replace", "path": "/owner", "value": "proj-b"}])
    assert resp.status == 200
    resp = await api.client.get("/v2/images/%s" % images["private"]["id"], headers=h(BOB))
    assert resp.status == 200  # now Bob's


async def test_member_cannot_deactivate_others_image(api: Api, images: dict[str, dict[str, Any]]) -> None:
    # Bob's private image is invisible to Alice: 404, as if it did not exist
    resp = await api.client.post("/v2/images/%s/actions/deactivate" % images["b-own"]["id"], headers=h(ALICE))
    await status_of(resp, 404)
    resp = await api.client.post("/v2/images/%s/actions/reactivate" % images["b-own"]["id"], headers=h(ALICE))
    await status_of(resp, 404)
    resp = await api.client.get("/v2/images/%s" % images["b-own"]["id"], headers=h(BOB))
    assert (await resp.json())["status"] == "active"


async def test_member_cannot_upload_to_others_image(api: Api) -> None:
    public = await create(api, ADMIN, name="empty", visibility="public")
    resp = await upload(api, BOB, public["id"])
    await status_of(resp, 403)
    resp = await api.client.get("/v2/images/%s" % public["id"], headers=h(ADMIN))
    assert (await resp.json())["status"] == "queued"


async def test_stores_admin_endpoints(api: Api, images: dict[str, dict[str, Any]]) -> None:
    resp = await api.client.get("/v2/info/stores", headers=h(ALICE))
    assert resp.status == 200
    resp = await api.client.get("/v2/info/stores/detail", headers=h(ALICE))
    await status_of(resp, 403)
    resp = await api.client.get("/v2/info/stores/detail", headers=h(ADMIN))
    assert resp.status == 200
    resp = await api.client.delete("/v2/stores/local/%s" % images["private"]["id"], headers=h(ALICE))
    await status_of(resp, 403)
    resp = await api.client.get("/v2/images/%s" % images["private"]["id"], headers=h(ALICE))
    assert (await resp.json())["stores"] == "local"


# -- the local Unix socket ----------------------------------------------------------------


async def test_unix_socket_root_is_admin_without_token(daemon: Daemon) -> None:
    sock = daemon.state_dir / "appliance.sock"
    assert sock.is_socket()
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as session:
        async with session.get("http://localhost/v2/images") as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["images"] == []
        async with session.post("http://localhost/v2/images", json={"name": "via-socket"}) as resp:
            assert resp.status == 201, await resp.text()
            created = await resp.json()
        async with session.get("http://localhost/v2/info/stores/detail") as resp:
            assert resp.status == 200  # an administrator
        # a token that is sent must be valid, even on the socket
        async with session.get("http://localhost/v2/images", headers=h("bogus")) as resp:
            assert resp.status == 401
    # over TCP the same request needs a token
    async with aiohttp.ClientSession() as session:
        async with session.get(daemon.url + "/v2/images") as resp:
            assert resp.status == 401
        async with session.get(daemon.url + "/v2/images", headers=h(daemon.token)) as resp:
            assert resp.status == 200
            assert [i["id"] for i in (await resp.json())["images"]] == [created["id"]]
