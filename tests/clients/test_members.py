"""Image sharing (Glance's image members) against a real daemon process: the HTTP contract, the
`glance` CLI and the `openstack` CLI, with two projects (static tokens with different projects)."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.model import MIRRORED_MEMBERS
from tests.clients.test_glance_cli import Glance, as_dict, as_records
from tests.clients.test_keystone_auth import PASSWORD, cli
from tests.clients.test_keystone_auth import site_config as keystone_site_config
from tests.conftest import JSON_ERRORS, Daemon, start_daemon, write_toml
from tests.keystone import Keystone

pytestmark = [
    pytest.mark.clients,
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),  # as in test_openstacksdk
]

ADMIN = "admin-secret"
# Two projects that share images, one that is shared nothing, and a read-only user of the owner.
TOKENS = {
    "alpha": ("alpha-secret", "alpha", ["member", "reader"]),
    "beta": ("beta-secret", "beta", ["member", "reader"]),
    "gamma": ("gamma-secret", "gamma", ["member", "reader"]),
    "alpha-reader": ("alpha-reader-secret", "alpha", ["reader"]),
    "site": ("site-secret", "sites", ["edge-site"]),  # an edge site's service token
}
QUOTA = 3
MEMBER_KEYS = {"created_at", "image_id", "member_id", "schema", "status", "updated_at"}


def sharing_config(state_dir: Path, **limits: Any) -> dict[str, Any]:
    """A daemon config with the static tokens of TOKENS (and ADMIN, in the state dir's admin-token)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "admin-token").write_text(ADMIN + "\n")  # Daemon.token reads it
    return {
        "limits": {"image_member_quota": QUOTA, **limits},
        "auth": {
            "tokens": [
                {"token_file": "admin-token", "user": "admin", "project": "admin", "roles": ["admin"]},
                *({"token": t, "user": name, "project": p, "roles": r} for name, (t, p, r) in TOKENS.items()),
            ]
        },
    }


@dataclass
class Http:
    daemon: Daemon
    session: aiohttp.ClientSession

    async def call(self, who: str, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        token = ADMIN if who == "admin" else TOKENS[who][0]
        headers = {"X-Auth-Token": token, **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, self.daemon.url + path, headers=headers, **kw) as resp:
            body = await resp.read()
            assert resp.status == expect, "%s %s as %s: %d %s" % (method, path, who, resp.status, body[:500])
            if resp.content_type == "application/json":
                return json.loads(body)
            return body

    async def image(self, who: str = "alpha", data: bytes | None = None, **body: Any) -> str:
        body = {"name": "shared", "disk_format": "raw", "container_format": "bare", "visibility": "shared", **body}
        image_id: str = (await self.call(who, "POST", "/v2/images", 201, json=body))["id"]
        if data is not None:
            await self.call(
                who,
                "PUT",
                "/v2/images/%s/file" % image_id,
                204,
                data=io.BytesIO(data),
                headers={"Content-Type": "application/octet-stream"},
            )
        return image_id

    async def listed(self, who: str, query: str = "") -> set[str]:
        return {i["id"] for i in (await self.call(who, "GET", "/v2/images" + query))["images"]}

    async def message(self, who: str, method: str, path: str, expect: int, **kw: Any) -> str:
        return str((await self.call(who, method, path, expect, **kw))["message"])


@pytest.fixture
def site(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory("site", write_toml(tmp_path / "sharing.toml", sharing_config(tmp_path / "site")))


@pytest.fixture
async def http(site: Daemon) -> AsyncIterator[Http]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Http(site, session)


def members_path(image_id: str, member: str | None = None) -> str:
    return "/v2/images/%s/members%s" % (image_id, "" if member is None else "/" + member)


# -- the HTTP contract --------------------------------------------------------------------------


async def test_member_routes_answer_glance_shapes_and_statuses(http: Http) -> None:
    image_id = await http.image()
    created = await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    assert set(created) == MEMBER_KEYS
    assert created["image_id"] == image_id and created["member_id"] == "beta"
    assert created["status"] == "pending" and created["schema"] == "/v2/schemas/member"
    assert created["created_at"] == created["updated_at"] and created["created_at"].endswith("Z")

    listing = await http.call("alpha", "GET", members_path(image_id))
    assert listing == {"members": [created], "schema": "/v2/schemas/members"}
    assert await http.call("alpha", "GET", members_path(image_id, "beta")) == created

    message = await http.message("alpha", "POST", members_path(image_id), 409, json={"member": "beta"})
    assert message == "Member beta is duplicated for image %s" % image_id

    accepted = await http.call("beta", "PUT", members_path(image_id, "beta"), json={"status": "accepted"})
    assert set(accepted) == MEMBER_KEYS and accepted["status"] == "accepted"
    assert accepted["created_at"] == created["created_at"]
    assert (await http.call("alpha", "GET", members_path(image_id, "beta")))["status"] == "accepted"

    message = await http.message("beta", "PUT", members_path(image_id, "beta"), 400, json={"status": "maybe"})
    assert message == 'Incorrect request: Status must be "pending", "accepted" or "rejected".'
    # The owner adds and removes members; only the member answers for itself.
    message = await http.message("alpha", "PUT", members_path(image_id, "beta"), 403, json={"status": "rejected"})
    assert "not authorized to complete modify_member action" in message
    message = await http.message("beta", "DELETE", members_path(image_id, "beta"), 403)
    assert "not authorized to complete delete_member action" in message
    message = await http.message("beta", "POST", members_path(image_id), 403, json={"member": "gamma"})
    assert "not authorized to complete add_member action" in message

    assert await http.call("alpha", "DELETE", members_path(image_id, "beta"), 204) == b""
    message = await http.message("alpha", "GET", members_path(image_id, "beta"), 404)
    assert message == "beta not found in the member list of the image %s." % image_id
    await http.call("alpha", "DELETE", members_path(image_id, "beta"), 404)
    assert (await http.call("alpha", "GET", members_path(image_id)))["members"] == []


async def test_bad_member_bodies_are_refused_in_glances_words(http: Http) -> None:
    image_id = await http.image()
    path = members_path(image_id)
    assert await http.message("alpha", "POST", path, 400, json={}) == "Member to be added not specified"
    assert await http.message("alpha", "POST", path, 400, json={"member": ""}) == "Member can't be empty"
    assert await http.message("alpha", "POST", path, 400, json=["beta"]) == (
        'Expected a member in the form: {"member": "image_id"}'
    )
    assert "the maximum is 255" in await http.message("alpha", "POST", path, 400, json={"member": "p" * 256})
    assert "control characters" in await http.message("alpha", "POST", path, 400, json={"member": "be\x1bta"})
    assert "project ID" in await http.message("alpha", "POST", path, 400, json={"member": 7})
    await http.call("alpha", "POST", path, 200, json={"member": "beta"})
    member = members_path(image_id, "beta")
    assert await http.message("beta", "PUT", member, 400, json={}) == "Status not specified"
    assert await http.message("beta", "PUT", member, 400, json="accepted") == (
        'Expected a status in the form: {"status": "status"}'
    )
    assert "Malformed JSON" in await http.message(
        "beta", "PUT", member, 400, data=b"{", headers={"Content-Type": "application/json"}
    )
    # Not a member of this image at all: its memberships are not there for it.
    await http.call("gamma", "PUT", member, 404, json={"status": "accepted"})


async def test_only_shared_images_have_members(http: Http) -> None:
    for visibility in ("private", "public", "community"):
        image_id = await http.image("admin" if visibility == "public" else "alpha", visibility=visibility)
        who = "admin" if visibility == "public" else "alpha"
        message = await http.message(who, "POST", members_path(image_id), 403, json={"member": "beta"})
        assert message == "Not allowed to create members for image %s. Only shared images have members." % image_id
        message = await http.message(who, "GET", members_path(image_id), 403)
        assert message == "Not allowed to list members for image %s: Only shared images have members." % image_id
        # Glance answers a refused show as missing.
        assert await http.message(who, "GET", members_path(image_id, "beta"), 404) == "Only shared images have members."


async def test_who_sees_a_shared_image(http: Http) -> None:
    data = os.urandom(4096)
    image_id = await http.image(data=data)
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "gamma"})

    # A pending member sees the image by its id, but not in lists unless it asks for pending.
    assert (await http.call("beta", "GET", "/v2/images/%s" % image_id))["visibility"] == "shared"
    assert image_id not in await http.listed("beta")
    assert image_id not in await http.listed("beta", "?visibility=shared")
    assert image_id in await http.listed("beta", "?member_status=pending")
    assert image_id in await http.listed("beta", "?visibility=shared&member_status=pending")
    assert image_id in await http.listed("beta", "?member_status=all")
    assert image_id not in await http.listed("beta", "?member_status=accepted")
    # Its members are its own business: a member sees its own membership only.
    own = await http.call("beta", "GET", members_path(image_id))
    assert [m["member_id"] for m in own["members"]] == ["beta"]
    assert await http.message("beta", "GET", members_path(image_id, "gamma"), 404) == (
        "gamma not found in the member list of the image %s." % image_id
    )
    await http.call("beta", "PUT", members_path(image_id, "gamma"), 404, json={"status": "accepted"})
    owner_view = await http.call("alpha", "GET", members_path(image_id))
    assert sorted(m["member_id"] for m in owner_view["members"]) == ["beta", "gamma"]
    assert len((await http.call("admin", "GET", members_path(image_id)))["members"]) == 2

    await http.call("beta", "PUT", members_path(image_id, "beta"), json={"status": "accepted"})
    assert image_id in await http.listed("beta")
    assert image_id in await http.listed("beta", "?visibility=shared")
    assert image_id in await http.listed("beta", "?visibility=all")
    assert image_id not in await http.listed("beta", "?member_status=pending")
    assert await http.call("beta", "GET", "/v2/images/%s/file" % image_id) == data

    await http.call("gamma", "PUT", members_path(image_id, "gamma"), json={"status": "rejected"})
    assert image_id not in await http.listed("gamma")
    assert image_id in await http.listed("gamma", "?member_status=rejected")
    assert (await http.call("gamma", "GET", "/v2/images/%s" % image_id))["id"] == image_id

    # The owner lists its shared images whatever the members say; strangers see nothing.
    assert image_id in await http.listed("alpha", "?visibility=shared")
    await http.call("alpha", "DELETE", members_path(image_id, "gamma"), 204)
    await http.call("gamma", "GET", "/v2/images/%s" % image_id, 404)
    await http.call("gamma", "GET", members_path(image_id), 404)
    assert image_id not in await http.listed("gamma", "?member_status=all")

    # Members see a shared image only while it is shared.
    patch = [{"op": "replace", "path": "/visibility", "value": "private"}]
    ct = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
    await http.call("alpha", "PATCH", "/v2/images/%s" % image_id, json=patch, headers=ct)
    await http.call("beta", "GET", "/v2/images/%s" % image_id, 404)
    assert image_id not in await http.listed("beta", "?member_status=all")
    patch[0]["value"] = "shared"
    await http.call("alpha", "PATCH", "/v2/images/%s" % image_id, json=patch, headers=ct)
    assert image_id in await http.listed("beta")

    assert await http.message("beta", "GET", "/v2/images?member_status=bogus", 400) == (
        "Invalid status: bogus (member_status is one of pending, accepted, rejected or all)"
    )


async def test_a_member_pages_through_the_images_shared_with_it(http: Http) -> None:
    shared = []
    for _ in range(3):
        image_id = await http.image()
        await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
        await http.call("beta", "PUT", members_path(image_id, "beta"), json={"status": "accepted"})
        shared.append(image_id)
    await http.image()  # not shared with beta
    seen: list[str] = []
    path: str | None = "/v2/images?limit=1"
    while path:  # the markers are shared images: the member may page from them
        page = await http.call("beta", "GET", path)
        seen.extend(i["id"] for i in page["images"])
        path = page.get("next")
    assert sorted(seen) == sorted(shared)  # each once (same-second images are in id order)


async def test_only_edge_sites_get_the_members_with_a_record(http: Http) -> None:
    image_id = await http.image()
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    record = await http.call("site", "GET", "/v2/images/%s" % image_id)
    assert [(m["member_id"], m["status"]) for m in record[MIRRORED_MEMBERS]] == [("beta", "pending")]
    listed = await http.call("site", "GET", "/v2/images")
    assert [i[MIRRORED_MEMBERS] for i in listed["images"] if i["id"] == image_id] == [record[MIRRORED_MEMBERS]]
    # Glance's image shape for everyone else, the administrator and the owner included
    for who in ("admin", "alpha", "beta"):
        assert MIRRORED_MEMBERS not in await http.call(who, "GET", "/v2/images/%s" % image_id)
    # and no client can forge it as a property
    patch = [{"op": "add", "path": "/" + MIRRORED_MEMBERS, "value": "[]"}]
    ct = {"Content-Type": "application/openstack-images-v2.1-json-patch"}
    await http.call("alpha", "PATCH", "/v2/images/%s" % image_id, 403, json=patch, headers=ct)


async def test_a_reader_of_the_owner_lists_members_but_does_not_share(http: Http) -> None:
    image_id = await http.image()
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    assert len((await http.call("alpha-reader", "GET", members_path(image_id)))["members"]) == 1
    message = await http.message("alpha-reader", "POST", members_path(image_id), 403, json={"member": "gamma"})
    assert "add_member" in message


async def test_image_member_quota(http: Http) -> None:
    image_id = await http.image()
    for i in range(QUOTA):
        await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "p%d" % i})
    message = await http.message("alpha", "POST", members_path(image_id), 413, json={"member": "one-too-many"})
    assert message == (
        "Image member limit exceeded for image %s: The limit has been exceeded on the number of allowed image "
        "members for this image. Attempted: %d, Maximum: %d:" % (image_id, QUOTA + 1, QUOTA)
    )
    await http.call("alpha", "DELETE", members_path(image_id, "p0"), 204)
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "now-there-is-room"})


async def test_concurrent_adds_never_overshoot_the_quota(http: Http) -> None:
    # The count and the insert are one transaction: of many adds at once, exactly QUOTA win.
    for _ in range(5):
        image_id = await http.image()

        async def add(i: int, image_id: str = image_id) -> int:
            async with http.session.post(
                http.daemon.url + members_path(image_id),
                json={"member": "racer-%d" % i},
                headers={"X-Auth-Token": TOKENS["alpha"][0], **JSON_ERRORS},
            ) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(add(i) for i in range(12)))
        assert sorted(statuses) == [200] * QUOTA + [413] * (12 - QUOTA)
        assert len((await http.call("alpha", "GET", members_path(image_id)))["members"]) == QUOTA


async def test_deleting_an_image_deletes_its_members(http: Http) -> None:
    image_id = await http.image()
    await http.call("alpha", "POST", members_path(image_id), 200, json={"member": "beta"})
    await http.call("alpha", "DELETE", "/v2/images/%s" % image_id, 204)
    await http.call("beta", "GET", members_path(image_id), 404)
    # The same id again is a new image: nobody is a member of it.
    await http.image(id=image_id)
    assert (await http.call("alpha", "GET", members_path(image_id)))["members"] == []
    await http.call("beta", "GET", "/v2/images/%s" % image_id, 404)


async def test_member_schemas_are_glances(http: Http) -> None:
    member = await http.call("beta", "GET", "/v2/schemas/member")
    assert member["name"] == "member"
    assert set(member["properties"]) == MEMBER_KEYS
    assert member["properties"]["status"]["enum"] == ["pending", "accepted", "rejected"]
    members = await http.call("beta", "GET", "/v2/schemas/members")
    assert members["name"] == "members"
    assert members["properties"]["members"]["items"]["name"] == "member"
    assert members["properties"]["schema"] == {"type": "string"}


# -- the glance CLI ------------------------------------------------------------------------------


def glance_as(glance: Glance, who: str, *args: str) -> str:
    result = glance.run(*args, token=TOKENS[who][0])
    assert result.returncode == 0, "glance %s as %s failed:\n%s%s" % (" ".join(args), who, result.stdout, result.stderr)
    return result.stdout


def glance_create(glance: Glance, visibility: str, disk: Path) -> dict[str, str]:
    """An image of project alpha with `disk` as its data, uploaded by the CLI."""
    args = ("--visibility", visibility, "--disk-format", "raw", "--container-format", "bare", "--file", str(disk))
    created = as_dict(glance_as(glance, "alpha", "image-create", "--name", "by-cli", *args))
    assert created["visibility"] == visibility
    return created


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(64 << 10))
    return path


def test_glance_cli_shares_an_image(site: Daemon, disk: Path) -> None:
    glance = Glance(site)
    created = glance_create(glance, "shared", disk)
    image_id = created["id"]
    assert created["visibility"] == "shared"

    rows = as_records(glance_as(glance, "alpha", "member-create", image_id, "beta"))
    assert rows == [{"Image ID": image_id, "Member ID": "beta", "Status": "pending"}]
    rows = as_records(glance_as(glance, "alpha", "member-list", "--image-id", image_id))
    assert rows == [{"Image ID": image_id, "Member ID": "beta", "Status": "pending"}]
    assert image_id not in glance_as(glance, "beta", "image-list")
    assert image_id in glance_as(glance, "beta", "image-list", "--member-status", "pending")

    rows = as_records(glance_as(glance, "beta", "member-update", image_id, "beta", "accepted"))
    assert rows == [{"Image ID": image_id, "Member ID": "beta", "Status": "accepted"}]
    assert image_id in glance_as(glance, "beta", "image-list")
    assert as_dict(glance_as(glance, "beta", "image-show", image_id))["id"] == image_id

    refused = glance.run("member-create", image_id, "gamma", token=TOKENS["beta"][0])
    assert refused.returncode != 0 and "403" in refused.stderr and "add_member" in refused.stderr

    glance_as(glance, "alpha", "member-delete", image_id, "beta")
    assert as_records(glance_as(glance, "alpha", "member-list", "--image-id", image_id)) == []
    gone = glance.run("image-show", image_id, token=TOKENS["beta"][0])
    assert gone.returncode != 0 and "404" in gone.stderr


def test_glance_cli_reports_a_private_image_has_no_members(site: Daemon, disk: Path) -> None:
    glance = Glance(site)
    image_id = glance_create(glance, "private", disk)["id"]
    refused = glance.run("member-create", image_id, "beta", token=TOKENS["alpha"][0])
    assert refused.returncode != 0
    assert "Only shared images have members" in refused.stderr, refused.stderr


# -- the openstack CLI, with Keystone -----------------------------------------------------------
# `openstack image add project` and `image set --accept` resolve projects through Keystone's
# identity API, so these run with the session's real Keystone and a daemon that validates its tokens.


def test_openstack_cli_adds_a_project_and_the_member_accepts(keystone: Keystone, tmp_path: Path, disk: Path) -> None:
    daemon = start_daemon(tmp_path / "ks-site", keystone_site_config(tmp_path / "ks-site.toml", keystone))
    try:
        keystone.register_image_endpoint(daemon.url)
        keystone.create_user("share-owner", PASSWORD, "share-alpha", ["member", "reader"])
        keystone.create_user("share-member", PASSWORD, "share-beta", ["member", "reader"])
        owner = {"name": "share-owner", "project": "share-alpha"}
        member = {"name": "share-member", "project": "share-beta"}
        beta = keystone.project_id("share-beta")

        args = ("--shared", "--disk-format", "raw", "--container-format", "bare", "--file", str(disk))
        created = json.loads(cli(keystone, "openstack", "image", "create", *args, "-f", "json", "osc-shared", **owner))
        image_id = created["id"]
        assert created["visibility"] == "shared"

        added = json.loads(cli(keystone, "openstack", "image", "add", "project", "-f", "json", image_id, beta, **owner))
        assert (added["image_id"], added["member_id"], added["status"]) == (image_id, beta, "pending")
        listed = json.loads(cli(keystone, "openstack", "image", "list", "-f", "json", **member))
        assert image_id not in [row["ID"] for row in listed]

        cli(keystone, "openstack", "image", "set", "--accept", image_id, **member)  # its own project, from its token
        members = json.loads(cli(keystone, "openstack", "image", "member", "list", "-f", "json", image_id, **owner))
        assert [(m["Member ID"], m["Status"]) for m in members] == [(beta, "accepted")]
        listed = json.loads(cli(keystone, "openstack", "image", "list", "-f", "json", **member))
        assert image_id in [row["ID"] for row in listed]

        cli(keystone, "openstack", "image", "set", "--reject", image_id, **member)
        listed = json.loads(cli(keystone, "openstack", "image", "list", "-f", "json", **member))
        assert image_id not in [row["ID"] for row in listed]

        cli(keystone, "openstack", "image", "remove", "project", image_id, beta, **owner)
        assert json.loads(cli(keystone, "openstack", "image", "member", "list", "-f", "json", image_id, **owner)) == []
    finally:
        daemon.stop()
