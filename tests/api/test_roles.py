"""Every policy rule against every kind of caller, on a real hub daemon: allowed → the real success
status, refused → 403 naming the rule, invisible → 404. Then the leaks the roles close: markers,
locations and tasks of other projects' images, and a refused bundle's body."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance import policy
from tests.bundlekit import record, write_bundle
from tests.conftest import JSON_ERRORS, Daemon, write_toml
from tests.waiting import eventually

PATCH_CT = "application/openstack-images-v2.1-json-patch"
OCTET = {"Content-Type": "application/octet-stream"}

# role name → (token, user, project, roles)
CALLERS: dict[str, tuple[str, str, str, list[str]]] = {
    "admin": ("tok-admin", "root", "admin", ["admin"]),  # member and reader are implied, as in Keystone
    "member": ("tok-member", "mia", "p1", ["member", "reader"]),
    "reader": ("tok-reader", "rex", "p1", ["reader"]),
    "noroles": ("tok-noroles", "nob", "p1", []),
    "unknown": ("tok-unknown", "una", "p1", ["superuser"]),
    "site": ("tok-site", "dcn0", "edge-sites", [policy.SITE_ROLE]),
    "other": ("tok-other", "otto", "p2", ["member", "reader"]),
}


@dataclass
class Hub:
    daemon: Daemon
    session: aiohttp.ClientSession
    tmp: Path
    task_id: str = ""
    shared: dict[str, str] = field(default_factory=dict)

    async def call(self, role: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": CALLERS[role][0], **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, self.daemon.url + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            body = json.loads(raw) if resp.content_type == "application/json" and raw else raw
            return resp.status, body

    async def ok(self, role: str, method: str, path: str, expect: int, **kw: Any) -> Any:
        status, body = await self.call(role, method, path, **kw)
        assert status == expect, (method, path, status, body)
        return body

    async def image(self, role: str = "member", data: bytes | None = b"image bytes", **body: Any) -> str:
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", "visibility": "private", **body}
        image_id = (await self.ok(role, "POST", "/v2/images", 201, json=body))["id"]
        if data is not None:
            await self.ok(role, "PUT", "/v2/images/%s/file" % image_id, 204, data=io.BytesIO(data), headers=OCTET)
        return str(image_id)

    async def stores(self, image_id: str) -> set[str]:
        image = await self.ok("admin", "GET", "/v2/images/%s" % image_id, 200)
        return set(image["stores"].split(",")) - {""}

    async def staged_import(self, role: str, image_id: str) -> dict[str, Any]:
        await self.ok(
            role, "PUT", "/v2/images/%s/stage" % image_id, 204, data=io.BytesIO(b"staged bytes"), headers=OCTET
        )
        await self.ok(role, "POST", "/v2/images/%s/import" % image_id, 202, json={"method": {"name": "glance-direct"}})
        tasks = (await self.ok(role, "GET", "/v2/images/%s/tasks" % image_id, 200))["tasks"]
        assert len(tasks) == 1
        return dict(tasks[0])


def hub_config(tmp: Path) -> Path:
    return write_toml(
        tmp / "hub.toml",
        {
            "site": {"name": "central", "role": "hub"},
            "stores": {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}},
            "import": {"enabled_methods": ["glance-direct", "web-download", "copy-image"]},
            "auth": {"tokens": [{"token": t, "user": u, "project": p, "roles": r} for t, u, p, r in CALLERS.values()]},
            "scrubber": {"enabled": False},
            "api": {"show_multiple_locations": True},  # location-add/-delete need it on, as in Glance
        },
    )


@pytest.fixture
async def hub(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> AsyncIterator[Hub]:
    daemon = daemon_factory("hub", hub_config(tmp_path))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        h = Hub(daemon, session, tmp_path)
        await h.ok("site", "POST", "/v2/edge/sites", 200, json={"name": "dcn0"})
        h.shared["private"] = await h.image()  # p1's, active
        h.shared["p2"] = await h.image("other")
        h.task_id = (await h.staged_import("member", await h.image(data=None)))["id"]
        yield h


Request = tuple[str, str, dict[str, Any]]
Prepare = Callable[[Hub, str], Awaitable[Request]]

ALL = tuple(CALLERS)
READERS = ("admin", "member", "reader")
MEMBERS = ("admin", "member")
# Callers with no role this table knows (and the site, which reads records, not memberships).
NO_ROLE = ("noroles", "unknown", "site")


@dataclass(frozen=True)
class Case:
    rule: str
    prepare: Prepare
    ok: dict[str, int]  # role → success status; every other role is refused (403) or hidden (404)
    hidden: tuple[str, ...] = ()
    named: dict[str, str] = field(default_factory=dict)  # role → the rule its 403 names, if not `rule`


def allowed(status: int, *roles: str) -> dict[str, int]:
    return {r: status for r in roles}


def on_private(method: str, suffix: str = "", **kw: Any) -> Prepare:
    async def prepare(hub: Hub, role: str) -> Request:
        return method, "/v2/images/%s%s" % (hub.shared["private"], suffix), kw

    return prepare


def on_fresh(method: str, suffix: str = "", upload: bytes | None = b"fresh", before: str = "", **kw: Any) -> Prepare:
    """A new image of p1 for each caller (the request changes or removes it); `upload`: its data."""

    async def prepare(hub: Hub, role: str) -> Request:
        image_id = await hub.image(data=upload)
        if before:
            await hub.ok("admin", "POST", "/v2/images/%s/actions/%s" % (image_id, before), 204)
        return method, "/v2/images/%s%s" % (image_id, suffix), kw

    return prepare


def fixed(method: str, path: str, **kw: Any) -> Prepare:
    async def prepare(hub: Hub, role: str) -> Request:
        return method, path.format(private=hub.shared["private"], task=hub.task_id), kw

    return prepare


def shared_with_other(method: str, suffix: str = "", **kw: Any) -> Prepare:
    """A new shared image of p1 for each caller, with p2 (`other`) a pending member of it."""

    async def prepare(hub: Hub, role: str) -> Request:
        image_id = await hub.image(data=None, visibility="shared")
        await hub.ok("member", "POST", "/v2/images/%s/members" % image_id, 200, json={"member": "p2"})
        return method, "/v2/images/%s/members%s" % (image_id, suffix), kw

    return prepare


async def copied_to_fast(hub: Hub, role: str) -> Request:
    image_id = await hub.image()
    if role == "admin":  # only the admin gets past the rule; the others need no second copy
        await hub.ok(
            "admin",
            "POST",
            "/v2/images/%s/import" % image_id,
            202,
            json={"method": {"name": "copy-image"}, "stores": ["fast"]},
        )
        await eventually(lambda: _has_fast(hub, image_id), "the copy in store fast", within=20)
    return "DELETE", "/v2/stores/fast/%s" % image_id, {}


async def _has_fast(hub: Hub, image_id: str) -> bool:
    return "fast" in await hub.stores(image_id)


async def site_copy_to_report(hub: Hub, role: str) -> Request:
    image_id = await hub.image()
    await hub.ok(
        "admin",
        "POST",
        "/v2/images/%s/import" % image_id,
        202,
        json={"method": {"name": "copy-image"}, "stores": ["dcn0"]},
    )
    return "POST", "/v2/edge/sites/dcn0/assignments/%s" % image_id, {"json": {"action": "copy", "status": "success"}}


async def throwaway_site(hub: Hub, role: str) -> Request:
    name = "gone%s" % uuid.uuid4().hex[:6]
    await hub.ok("admin", "POST", "/v2/edge/sites", 200, json={"name": name})
    return "DELETE", "/v2/edge/sites/%s" % name, {}


async def bundle(hub: Hub, role: str) -> Request:
    data = b"bundled image"
    path = await write_bundle(hub.tmp / ("b-%s" % uuid.uuid4().hex), [(record(data), data)])
    return "POST", "/v2/edge/bundles", {"data": path.read_bytes(), "headers": OCTET}


PATCH_NAME = {
    "data": json.dumps([{"op": "replace", "path": "/name", "value": "renamed"}]),
    "headers": {"Content-Type": PATCH_CT},
}


ADD_LOCATION = {
    "data": json.dumps(
        # A port the URI filter refuses: past the rule, Glance's 400 for a location it cannot read.
        [{"op": "add", "path": "/locations/-", "value": {"url": "http://203.0.113.5:9/d", "metadata": {}}}]
    ),
    "headers": {"Content-Type": PATCH_CT},
}


def patch_visibility(value: str) -> dict[str, Any]:
    return {
        "data": json.dumps([{"op": "replace", "path": "/visibility", "value": value}]),
        "headers": {"Content-Type": PATCH_CT},
    }


CASES = [
    Case("get_images", fixed("GET", "/v2/images"), allowed(200, *READERS, "site", "other")),
    Case("get_image", on_private("GET"), allowed(200, *READERS, "site"), hidden=("other",)),
    Case("download_image", on_private("GET", "/file"), allowed(200, *MEMBERS, "site"), hidden=("other",)),
    Case("add_image", fixed("POST", "/v2/images", json={"name": "new"}), allowed(201, *MEMBERS, "other")),
    Case("modify_image", on_private("PATCH", **PATCH_NAME), allowed(200, *MEMBERS), hidden=("other",)),
    Case(
        "upload_image",
        on_fresh("PUT", "/file", upload=None, data=b"new bytes", headers=OCTET),
        allowed(204, *MEMBERS),
        hidden=("other",),
    ),
    Case("delete_image", on_fresh("DELETE"), allowed(204, *MEMBERS), hidden=("other",)),
    Case("deactivate", on_fresh("POST", "/actions/deactivate"), allowed(204, *MEMBERS), hidden=("other",)),
    Case(
        "reactivate",
        on_fresh("POST", "/actions/reactivate", before="deactivate"),
        allowed(204, *MEMBERS),
        hidden=("other",),
    ),
    Case(
        "publicize_image",
        on_fresh("PATCH", **patch_visibility("public")),
        allowed(200, "admin"),
        hidden=("other",),
        named={r: "modify_image" for r in ("reader", "noroles", "unknown", "site")},
    ),
    Case(
        "communitize_image",
        on_fresh("PATCH", **patch_visibility("community")),
        allowed(200, *MEMBERS),
        hidden=("other",),
        named={r: "modify_image" for r in ("reader", "noroles", "unknown", "site")},
    ),
    Case(
        "copy_image",
        on_fresh("POST", "/import", json={"method": {"name": "copy-image"}, "stores": ["fast"]}),
        allowed(202, "admin"),
        hidden=("other",),
    ),
    Case("get_image_location", on_private("GET", "/locations"), allowed(200, *READERS), hidden=("other",)),
    # GET /locations takes either rule (this table has no service caller): admin passes both.
    Case(
        "fetch_image_location",
        on_private("GET", "/locations"),
        allowed(200, *READERS),
        hidden=("other",),
        named=dict.fromkeys(NO_ROLE, "get_image_location"),  # the refusal names the rule it fell back to
    ),
    Case(
        # On a queued image, past the rule: the URI filter's 400.
        "add_image_location",
        on_fresh("POST", "/locations", upload=None, json={"url": "http://203.0.113.5:9/d"}),
        allowed(400, *MEMBERS),
        hidden=("other",),
    ),
    Case("delete_image_location", copied_to_fast, allowed(204, "admin"), hidden=("other",)),
    Case(
        # On a queued image: past the rule, the URL is read (as Glance does) and refused.
        "set_image_location",
        on_fresh("PATCH", upload=None, **ADD_LOCATION),
        allowed(400, *MEMBERS),
        hidden=("other",),
        named={r: "modify_image" for r in ("reader", "noroles", "unknown", "site")},
    ),
    Case("add_member", shared_with_other("POST", json={"member": "p3"}), allowed(200, *MEMBERS)),
    Case("get_members", shared_with_other("GET"), allowed(200, *READERS, "other")),
    # Glance answers a refused member lookup as missing.
    Case("get_member", shared_with_other("GET", "/p2"), allowed(200, *READERS, "other"), hidden=NO_ROLE),
    Case(
        "modify_member",
        shared_with_other("PUT", "/p2", json={"status": "accepted"}),
        allowed(200, "admin", "other"),  # the member itself: the owner does not answer for it
        named=dict.fromkeys(NO_ROLE, "get_member"),
    ),
    Case(
        "delete_member",
        shared_with_other("DELETE", "/p2"),
        allowed(204, *MEMBERS),
        named=dict.fromkeys(NO_ROLE, "get_member"),
    ),
    Case("get_tasks", fixed("GET", "/v2/tasks"), allowed(200, *READERS, "other")),
    Case("get_task", fixed("GET", "/v2/tasks/{task}"), allowed(200, *READERS), hidden=("other", "site")),
    Case("stores_info_detail", fixed("GET", "/v2/info/stores/detail"), allowed(200, "admin")),
    Case("cache_list", fixed("GET", "/v2/cache"), allowed(200, "admin")),
    Case("cache_image", fixed("PUT", "/v2/cache/{private}"), allowed(202, "admin")),
    Case("cache_delete", fixed("DELETE", "/v2/cache/{private}"), allowed(204, "admin")),
    Case("manage_image_cache", fixed("GET", "/v2/queued_images"), allowed(200, "admin")),
    Case("edge:site_register", fixed("POST", "/v2/edge/sites", json={"name": "dcn0"}), allowed(200, "admin", "site")),
    Case("edge:site_heartbeat", fixed("POST", "/v2/edge/sites/dcn0/heartbeat", json={}), allowed(200, "admin", "site")),
    Case("edge:site_get", fixed("GET", "/v2/edge/sites/dcn0"), allowed(200, "admin", "site")),
    Case("edge:site_assignments", fixed("GET", "/v2/edge/sites/dcn0/assignments"), allowed(200, "admin", "site")),
    Case("edge:site_report", site_copy_to_report, allowed(204, "admin", "site")),
    Case("edge:site_list", fixed("GET", "/v2/edge/sites"), allowed(200, "admin")),
    Case("edge:changes", fixed("GET", "/v2/edge/changes"), allowed(200, "admin", "site")),
    Case("edge:site_delete", throwaway_site, allowed(204, "admin")),
    Case("edge:bundle_import", bundle, allowed(200, "admin")),
    Case(
        "edge:check_uri",
        fixed("POST", "/v2/edge/check-uri", json={"uri": "https://example.com/disk.img"}),
        allowed(200, "admin"),
    ),
    Case("edge:status", fixed("GET", "/v2/edge/status"), allowed(200, "admin")),
    Case("edge:events", fixed("GET", "/v2/edge/events"), allowed(200, "admin")),
    Case("edge:whoami", fixed("GET", "/v2/edge/whoami"), allowed(200, *ALL)),
]


def test_every_rule_is_in_the_table_and_tested() -> None:
    assert {c.rule for c in CASES} == set(policy.RULES)
    for rule in policy.RULES:
        assert policy.check_string(rule)  # renders in oslo.policy's syntax


@pytest.mark.parametrize("case", CASES, ids=[c.rule for c in CASES])
async def test_rule_for_every_caller(hub: Hub, case: Case) -> None:
    for role in ALL:
        method, path, kw = await case.prepare(hub, role)
        status, body = await hub.call(role, method, path, **kw)
        where = (case.rule, role, method, path, status, body)
        if role in case.ok:
            assert status == case.ok[role], where
        elif role in case.hidden:
            assert status == 404, where
        else:
            assert status == 403, where
            rule = case.named.get(role, case.rule)
            assert "Policy doesn't allow %s to be performed" % rule in body["message"], where
            assert policy.check_string(rule) in body["message"], where


async def test_a_site_reads_every_project_but_writes_nothing(hub: Hub) -> None:
    listed = {i["id"] for i in (await hub.ok("site", "GET", "/v2/images", 200))["images"]}
    assert {hub.shared["private"], hub.shared["p2"]} <= listed  # it mirrors for the users of every project
    assert (await hub.call("site", "GET", "/v2/images/%s/file" % hub.shared["p2"]))[0] == 200
    status, body = await hub.call("site", "DELETE", "/v2/images/%s" % hub.shared["p2"])
    assert status == 403 and "delete_image" in body["message"]
    # nor another site's records
    status, body = await hub.call("site", "POST", "/v2/edge/sites/dcn1/heartbeat", json={})
    assert status == 403 and "edge:site_heartbeat" in body["message"]


async def test_whoami_answers_each_caller_with_its_roles_and_this_site(hub: Hub) -> None:
    site = {"name": "central", "role": "hub"}
    for role, (_token, user, project, roles) in CALLERS.items():
        found = await hub.ok(role, "GET", "/v2/edge/whoami", 200)
        implied = {r for held in roles for r in policy.IMPLIED.get(held, ())}
        expected = {"user_id": user, "project_id": project, "roles": sorted({*roles, *implied}), "site": site}
        assert found == {**expected, "is_admin": role == "admin"}, (role, found)
    assert (await hub.ok("member", "GET", "/v2/edge/whoami", 200))["roles"] == ["member", "reader"]
    assert (await hub.ok("admin", "GET", "/v2/edge/whoami", 200))["roles"] == ["admin", "member", "reader"]
    for headers in ({}, {"X-Auth-Token": "not-a-token"}):
        async with hub.session.get(hub.daemon.url + "/v2/edge/whoami", headers={**JSON_ERRORS, **headers}) as resp:
            assert resp.status == 401, await resp.text()
            assert "WWW-Authenticate" in resp.headers


# -- leaks ------------------------------------------------------------------------------------


async def test_a_marker_naming_an_invisible_image_is_an_unknown_marker(hub: Hub) -> None:
    for _ in range(3):
        await hub.image("other", data=None)
    unknown = str(uuid.uuid4())
    status, body = await hub.call("member", "GET", "/v2/images", params={"marker": unknown})
    assert status == 400
    status, hidden = await hub.call("member", "GET", "/v2/images", params={"marker": hub.shared["p2"]})
    assert status == 400, hidden  # not a page that tells where p2's private image sorts
    assert hidden["message"].replace(hub.shared["p2"], unknown) == body["message"]
    # a visible marker still pages, and the admin pages through everything
    assert (await hub.call("member", "GET", "/v2/images", params={"marker": hub.shared["private"]}))[0] == 200
    assert (await hub.call("admin", "GET", "/v2/images", params={"marker": hub.shared["p2"]}))[0] == 200


async def test_locations_are_for_the_owner_and_the_admin(hub: Hub) -> None:
    public = await hub.image("admin", visibility="public", owner="p1")
    assert (await hub.call("other", "GET", "/v2/images/%s" % public))[0] == 200  # visible to p2 ...
    status, body = await hub.call("other", "GET", "/v2/images/%s/locations" % public)
    assert status == 403 and "get_image_location" in body["message"]  # ... but not where its bytes are
    assert str(hub.daemon.state_dir) not in json.dumps(body)
    for role in ("member", "reader", "admin"):
        found = await hub.ok(role, "GET", "/v2/images/%s/locations" % public, 200)
        assert [loc["metadata"]["store"] for loc in found] == ["local"]


async def test_the_tasks_of_a_public_image_stay_with_their_project(hub: Hub) -> None:
    public = await hub.image("admin", data=None, visibility="public", owner="p1")
    task = await hub.staged_import("member", public)
    assert task["input"]["import_req"]["method"]["name"] == "glance-direct"  # the owner sees the input
    assert (await hub.ok("admin", "GET", "/v2/images/%s/tasks" % public, 200))["tasks"][0]["id"] == task["id"]
    for role in ("other", "site"):
        assert (await hub.ok(role, "GET", "/v2/images/%s/tasks" % public, 200))["tasks"] == []  # as Glance lists them
        assert (await hub.call(role, "GET", "/v2/tasks/%s" % task["id"]))[0] == 404
    assert task["id"] not in {t["id"] for t in (await hub.ok("other", "GET", "/v2/tasks", 200))["tasks"]}


BIG_BODY = 200 * (1 << 20)


def _post_bundle_raw(url: str, token: str, budget: float) -> tuple[bytes, int, float]:
    """POST a 200 MB bundle the way a careless client does (keeps sending while it reads):
    → (the answer's first bytes, bytes the server let us send, seconds to the answer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
    head = (
        "POST /v2/edge/bundles HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nAccept: application/json\r\n"
        "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (token, BIG_BODY)
    ).encode()
    sock.sendall(head)
    sock.setblocking(False)
    chunk = b"\0" * (1 << 16)
    sent, answer = 0, b""
    start = time.monotonic()
    answered_after = -1.0
    deadline = start + budget
    while time.monotonic() < deadline and sent < BIG_BODY:
        try:
            got = sock.recv(65536)
            if got:
                answer += got
                if answered_after < 0:
                    answered_after = time.monotonic() - start
            elif answer:
                break  # the server closed the connection
        except BlockingIOError:
            pass
        except ConnectionError:
            break
        try:
            sent += sock.send(chunk)
        except BlockingIOError:
            time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            break
    sock.close()
    return answer, sent, answered_after


async def test_a_refused_bundle_is_answered_before_its_body_is_read(hub: Hub) -> None:
    for role in ("member", "noroles"):
        answer, sent, after = await asyncio.to_thread(_post_bundle_raw, hub.daemon.url, CALLERS[role][0], 20)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        assert b"edge:bundle_import" in answer
        assert 0 <= after < 1.0, after  # at once, not after the body
        # The server took in its drain allowance (1 MiB) plus socket buffers, not the 200 MB
        # (measured: 1.1 to 1.4 MiB).
        assert sent < 16 * (1 << 20), sent
    # an unauthenticated caller likewise
    answer, sent, _ = await asyncio.to_thread(_post_bundle_raw, hub.daemon.url, "not-a-token", 20)
    assert answer.startswith(b"HTTP/1.1 401") and sent < 16 * (1 << 20), (answer[:100], sent)
    assert (await hub.call("admin", "GET", "/healthcheck"))[0] == 200
