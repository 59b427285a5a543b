"""The hub side of the hub link, against a real hub daemon process (`[site] role = "hub"`).

Edge sites are simulated by an aiohttp client in the test: they register, heartbeat, fetch their
assignments, pull the image bytes from the hub with their own service token, verify them and
report. Placement goes through the stock `glance` CLI on the hub, in Glance's own words:
copy-image to a site (or to all stores), stores-delete of a site's copy, image-list
--include-stores. Assertions are on what the CLI prints and on the sites API's answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.clients.test_glance_cli import Glance, as_dict, as_records
from tests.conftest import JSON_ERRORS, Daemon, write_toml
from tests.waiting import eventually

ADMIN_TOKEN = "hub-admin-token"
MEMBER_TOKEN = "member-token"
SITE_TOKENS = {"dcn0": "dcn0-service-token", "dcn1": "dcn1-service-token"}
HEARTBEAT_INTERVAL = 1  # seconds: a site is offline after two missed beats


def hub_config(tmp_path: Path, *, role: str = "hub", stores: dict[str, Any] | None = None) -> Path:
    tokens = [
        {"token_file": "admin-token", "user": "admin", "project": "admin", "roles": ["admin", "member", "reader"]},
        {"token": MEMBER_TOKEN, "user": "alice", "project": "demo", "roles": ["member", "reader"]},
    ] + [
        {"token": token, "user": name, "project": "edge-sites", "roles": ["edge-site", "reader"]}
        for name, token in SITE_TOKENS.items()
    ]
    return write_toml(
        tmp_path / ("%s.toml" % role),
        {
            "site": {"name": "central-hub", "role": role},
            "stores": stores or {"default": "central", "central": {"path": "images", "description": "Hub store"}},
            "hub": {"heartbeat_interval": HEARTBEAT_INTERVAL},
            "auth": {"tokens": tokens},
            "scrubber": {"enabled": False},
        },
    )


def start_hub(tmp_path: Path, daemon_factory: Callable[..., Daemon], name: str = "hub", **kw: Any) -> Daemon:
    state = tmp_path / name
    state.mkdir(exist_ok=True)
    (state / "admin-token").write_text(ADMIN_TOKEN + "\n")  # conftest's Daemon.token reads it
    return daemon_factory(name, hub_config(tmp_path, **kw))


class Reply:
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.body = status, body

    @property
    def message(self) -> str:
        return self.body.get("message", "") if isinstance(self.body, dict) else str(self.body)


class Site:
    """A simulated edge site: the calls an edge makes to its hub, with its own token."""

    def __init__(self, session: aiohttp.ClientSession, hub: Daemon, name: str, token: str | None = None) -> None:
        self.session, self.hub, self.name = session, hub, name
        self.token = token if token is not None else SITE_TOKENS.get(name, ADMIN_TOKEN)

    async def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Reply:
        headers = {**JSON_ERRORS, "X-Auth-Token": token if token is not None else self.token}
        async with self.session.request(method, self.hub.url + path, json=body, headers=headers) as resp:
            raw = await resp.read()
            return Reply(resp.status, json.loads(raw) if raw else None)

    async def register(self, **extra: Any) -> Reply:
        body = {
            "name": self.name,
            "stores": [{"id": "local", "description": "site store"}],
            "total_bytes": 10 << 30,
            "free_bytes": 8 << 30,
            "version": "0.1.0",
            "api_url": "http://%s.example:9292" % self.name,
            **extra,
        }
        return await self.call("POST", "/v2/edge/sites", body)

    async def heartbeat(self, **body: Any) -> Reply:
        return await self.call("POST", "/v2/edge/sites/%s/heartbeat" % self.name, body)

    async def assignments(self) -> list[dict[str, Any]]:
        reply = await self.call("GET", "/v2/edge/sites/%s/assignments" % self.name)
        assert reply.status == 200, reply.body
        return reply.body["assignments"]

    async def report(self, image_id: str, action: str, status: str, message: str = "") -> Reply:
        return await self.call(
            "POST",
            "/v2/edge/sites/%s/assignments/%s" % (self.name, image_id),
            {"action": action, "status": status, "message": message},
        )

    async def pull(self, image_id: str) -> str:
        """Fetch the image from the hub as an edge does, verify it, return 'success' or 'failure'."""
        async with self.session.get(
            "%s/v2/images/%s/file" % (self.hub.url, image_id), headers={"X-Auth-Token": self.token}
        ) as resp:
            if resp.status != 200:
                return "failure"
            data = await resp.read()
        shown = await self.call("GET", "/v2/images/%s" % image_id)
        return "success" if hashlib.sha512(data).hexdigest() == shown.body["os_hash_value"] else "failure"

    async def sync(self) -> list[tuple[str, str, int]]:
        """One sync round: do every assignment, report each; returns (image, action, report status)."""
        done = []
        for work in await self.assignments():
            status = await self.pull(work["image_id"]) if work["action"] == "copy" else "success"
            reply = await self.report(work["image_id"], work["action"], status)
            done.append((work["image_id"], work["action"], reply.status))
        return done


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def hub(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return start_hub(tmp_path, daemon_factory)


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(2 << 20) + b"edge")
    return path


async def glance(hub: Daemon, *args: str) -> str:
    """The stock CLI, off the event loop (the hub answers the simulated sites meanwhile)."""
    return await asyncio.to_thread(Glance(hub).ok, *args)


async def glance_fails(hub: Daemon, *args: str) -> str:
    return await asyncio.to_thread(Glance(hub).fails, *args)


async def show(hub: Daemon, image_id: str) -> dict[str, str]:
    return await asyncio.to_thread(Glance(hub).show, image_id)


async def create_image(hub: Daemon, image_file: Path, *extra: str) -> str:
    created = as_dict(
        await glance(
            hub,
            "image-create",
            "--name",
            "cirros",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--visibility",
            "public",
            "--file",
            str(image_file),
            *extra,
        )
    )
    assert created["status"] == "active"
    return created["id"]


def stores_of(shown: dict[str, str]) -> list[str]:
    return [s for s in shown.get("stores", "").split(",") if s]


async def registered(session: aiohttp.ClientSession, hub: Daemon, *names: str) -> list[Site]:
    sites = [Site(session, hub, name) for name in names]
    for site in sites:
        reply = await site.register()
        assert reply.status == 200, reply.body
    return sites


# -- registration, heartbeat, online state ------------------------------------------------------


async def test_register_heartbeat_and_offline_after_two_missed_beats(
    hub: Daemon, session: aiohttp.ClientSession
) -> None:
    dcn0 = Site(session, hub, "dcn0")
    reply = await dcn0.register()
    assert reply.status == 200, reply.body
    site = reply.body
    assert site["name"] == "dcn0" and site["online"] is True
    assert site["stores"] == [{"id": "local", "description": "site store"}]
    assert site["total_bytes"] == 10 << 30 and site["free_bytes"] == 8 << 30
    assert site["version"] == "0.1.0" and site["api_url"] == "http://dcn0.example:9292"
    assert site["last_seen"].endswith("Z") and site["registered_at"] == site["last_seen"]

    reply = await dcn0.heartbeat(free_bytes=7 << 30, cache={"entries": 3, "size": 12345})
    assert reply.status == 200 and reply.body["free_bytes"] == 7 << 30
    assert reply.body["cache"] == {"entries": 3, "size": 12345} and reply.body["total_bytes"] == 10 << 30

    admin = Site(session, hub, "dcn0", ADMIN_TOKEN)
    listed = (await admin.call("GET", "/v2/edge/sites")).body["sites"]
    assert [(s["name"], s["online"], s["free_bytes"]) for s in listed] == [("dcn0", True, 7 << 30)]

    # Two missed heartbeat intervals → offline; the record (and last_seen) stays.
    await asyncio.sleep(2 * HEARTBEAT_INTERVAL + 1.2)
    shown = (await admin.call("GET", "/v2/edge/sites/dcn0")).body
    assert shown["online"] is False and shown["free_bytes"] == 7 << 30
    # One beat and it is back.
    assert (await dcn0.heartbeat()).body["online"] is True

    # Re-registration updates the record but keeps the first registration time.
    await asyncio.sleep(1.1)
    again = (await dcn0.register(version="0.2.0", free_bytes=1)).body
    assert again["version"] == "0.2.0" and again["free_bytes"] == 1
    assert again["registered_at"] == site["registered_at"] and again["last_seen"] > site["last_seen"]
    assert again["cache"] == {"entries": 3, "size": 12345}
    assert (await dcn0.register(cache={"entries": 4})).body["cache"] == {"entries": 4}


async def test_sites_persist_across_a_hub_restart(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], session: aiohttp.ClientSession
) -> None:
    hub = start_hub(tmp_path, daemon_factory)
    await registered(session, hub, "dcn0")
    hub.stop()
    hub = start_hub(tmp_path, daemon_factory)
    stores = json.loads(as_dict(await glance(hub, "stores-info"))["stores"])
    assert [s["id"] for s in stores] == ["central", "dcn0"]
    assert (await Site(session, hub, "dcn0").heartbeat()).status == 200


async def test_heartbeat_of_an_unknown_site_is_404_so_the_edge_registers(
    hub: Daemon, session: aiohttp.ClientSession
) -> None:
    dcn0 = Site(session, hub, "dcn0")
    reply = await dcn0.heartbeat(free_bytes=1)
    assert reply.status == 404 and "register" in reply.message, reply.body
    reply = await dcn0.call("GET", "/v2/edge/sites/dcn0/assignments")
    assert reply.status == 404 and "dcn0" in reply.message
    assert (await dcn0.register()).status == 200
    assert (await dcn0.heartbeat(free_bytes=1)).status == 200


# -- placement through the stock glance CLI -------------------------------------------------------


async def test_copy_image_to_one_site_via_glance_cli(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    dcn0, dcn1 = await registered(session, hub, "dcn0", "dcn1")
    stores = json.loads(as_dict(await glance(hub, "stores-info"))["stores"])
    assert stores == [
        {"id": "central", "default": True, "description": "Hub store"},
        {"id": "dcn0", "description": "Edge site dcn0"},
        {"id": "dcn1", "description": "Edge site dcn1"},
    ]
    image_id = await create_image(hub, image_file)

    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    shown = await show(hub, image_id)
    assert shown["os_glance_importing_to_stores"] == "dcn0"
    assert stores_of(shown) == ["central"] and shown["status"] == "active"
    # The task records the hand-over: done here, the rest is the sites' (read from the image).
    [task] = as_records(await glance(hub, "--verbose", "image-tasks", image_id))
    assert task["Status"] == "success" and "handed to edge site(s) dcn0" in task["Message"], task

    # Only dcn0 has work; it pulls with its own token, verifies, reports.
    assert await dcn1.assignments() == []
    [work] = await dcn0.assignments()
    assert work["image_id"] == image_id and work["action"] == "copy" and work["created_at"].endswith("Z")
    assert await dcn0.sync() == [(image_id, "copy", 204)]
    assert await dcn0.assignments() == []

    shown = await show(hub, image_id)
    assert stores_of(shown) == ["central", "dcn0"]
    assert "os_glance_importing_to_stores" not in shown and shown.get("os_glance_failed_import", "") == ""
    listed = as_records(await glance(hub, "image-list", "--include-stores"))
    assert {"ID": image_id, "Name": "cirros", "Stores": "central,dcn0"} in listed
    reply = await dcn0.call("GET", "/v2/images/%s/locations" % image_id, token=ADMIN_TOKEN)
    assert {"url": "http://dcn0.example:9292/v2/images/%s/file" % image_id, "metadata": {"store": "dcn0"}} in reply.body

    # The site moves its API: the hub's location follows.
    assert (await dcn0.register(api_url="https://dcn0.example:443")).status == 200
    reply = await dcn0.call("GET", "/v2/images/%s/locations" % image_id, token=ADMIN_TOKEN)
    assert {"url": "https://dcn0.example:443/v2/images/%s/file" % image_id, "metadata": {"store": "dcn0"}} in reply.body

    # The site already holds it: refused as Glance refuses a store that has the data.
    err = await glance_fails(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    assert "already" in err and "dcn0" in err
    # A late report for work that is no longer pending: 409, the edge drops it.
    reply = await dcn0.report(image_id, "copy", "success")
    assert reply.status == 409 and "no pending copy assignment" in reply.message


async def test_all_stores_assigns_every_site_failure_then_retry(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], session: aiohttp.ClientSession, image_file: Path
) -> None:
    hub = start_hub(
        tmp_path,
        daemon_factory,
        stores={"default": "central", "central": {"path": "images"}, "spare": {"path": "spare"}},
    )
    dcn0, dcn1 = await registered(session, hub, "dcn0", "dcn1")
    image_id = await create_image(hub, image_file, "--store", "central")

    await glance(hub, "image-import", "--import-method", "copy-image", "--all-stores", "true", image_id)

    async def hub_stores_done() -> dict[str, str] | None:
        shown = await show(hub, image_id)
        return shown if "spare" in stores_of(shown) and "spare" not in shown["os_glance_importing_to_stores"] else None

    # The hub's own store is copied by the hub; the sites are waiting for their edges.
    shown = await eventually(hub_stores_done, "the hub's spare store to hold the copy")
    assert shown["os_glance_importing_to_stores"] == "dcn0,dcn1"
    assert stores_of(shown) == ["central", "spare"]
    assert [w["action"] for w in await dcn0.assignments()] == ["copy"]

    assert await dcn0.sync() == [(image_id, "copy", 204)]
    [work] = await dcn1.assignments()
    # However long the edge's reason, the result is taken (its start is kept).
    assert (await dcn1.report(work["image_id"], "copy", "failure", "disk full; " * 1000)).status == 204
    shown = await show(hub, image_id)
    assert stores_of(shown) == ["central", "spare", "dcn0"]
    assert shown["os_glance_failed_import"] == "dcn1"
    assert "os_glance_importing_to_stores" not in shown

    # Everything holds it but dcn1: --all-stores now means dcn1 only; it succeeds this time.
    await glance(hub, "image-import", "--import-method", "copy-image", "--all-stores", "true", image_id)
    shown = await show(hub, image_id)
    assert shown["os_glance_importing_to_stores"] == "dcn1" and shown["os_glance_failed_import"] == ""
    assert await dcn0.assignments() == []
    assert await dcn1.sync() == [(image_id, "copy", 204)]
    shown = await show(hub, image_id)
    assert stores_of(shown) == ["central", "spare", "dcn0", "dcn1"]
    err = await glance_fails(hub, "image-import", "--import-method", "copy-image", "--all-stores", "true", image_id)
    assert "already in every store" in err


async def test_stores_delete_of_a_site_copy_assigns_its_removal(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    [dcn0] = await registered(session, hub, "dcn0")
    image_id = await create_image(hub, image_file)
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    await dcn0.sync()
    assert stores_of(await show(hub, image_id)) == ["central", "dcn0"]

    # The hub's copy is what sites pull from: not removable while only sites hold others.
    err = await glance_fails(hub, "stores-delete", "--store", "central", image_id)
    assert "Unable to delete image '%s' from store 'central'" % image_id in err and "dcn0" in err

    await glance(hub, "stores-delete", "--store", "dcn0", image_id)
    assert stores_of(await show(hub, image_id)) == ["central"]  # gone from the hub's view at once
    assert [(w["image_id"], w["action"]) for w in await dcn0.assignments()] == [(image_id, "remove")]
    # A failed removal stays pending: the site tries again on its next sync.
    assert (await dcn0.report(image_id, "remove", "failure", "busy")).status == 204
    assert await dcn0.sync() == [(image_id, "remove", 204)]
    assert await dcn0.assignments() == []
    await glance_fails(hub, "stores-delete", "--store", "dcn0", image_id)  # Glance's 404: nothing there
    reply = await dcn0.call("DELETE", "/v2/stores/dcn0/%s" % image_id, token=ADMIN_TOKEN)
    assert reply.status == 404 and "has no data in store dcn0" in reply.message

    # A copy still pending is cancelled the same way.
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    await glance(hub, "stores-delete", "--store", "dcn0", image_id)
    shown = await show(hub, image_id)
    assert "os_glance_importing_to_stores" not in shown and stores_of(shown) == ["central"]
    assert [w["action"] for w in await dcn0.assignments()] == ["remove"]
    assert (await dcn0.report(image_id, "copy", "success")).status == 409


async def test_deleting_an_image_drops_its_assignments(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    dcn0, dcn1 = await registered(session, hub, "dcn0", "dcn1")
    image_id = await create_image(hub, image_file)
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0,dcn1", image_id)
    assert await dcn0.sync() == [(image_id, "copy", 204)]
    assert len(await dcn1.assignments()) == 1
    await glance(hub, "image-delete", image_id)
    assert await dcn1.assignments() == []
    assert (await dcn1.report(image_id, "copy", "success")).status == 409


async def test_deleting_a_site_forgets_its_copies(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    dcn0, _dcn1 = await registered(session, hub, "dcn0", "dcn1")
    image_id = await create_image(hub, image_file)
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0,dcn1", image_id)
    await dcn0.sync()
    shown = await show(hub, image_id)
    assert stores_of(shown) == ["central", "dcn0"] and shown["os_glance_importing_to_stores"] == "dcn1"

    admin = Site(session, hub, "dcn0", ADMIN_TOKEN)
    assert (await dcn0.call("DELETE", "/v2/edge/sites/dcn0")).status == 403  # admin only
    for name in ("dcn0", "dcn1"):
        assert (await admin.call("DELETE", "/v2/edge/sites/%s" % name)).status == 204
    shown = await show(hub, image_id)
    assert stores_of(shown) == ["central"] and "os_glance_importing_to_stores" not in shown
    stores = json.loads(as_dict(await glance(hub, "stores-info"))["stores"])
    assert [s["id"] for s in stores] == ["central"]
    assert (await admin.call("DELETE", "/v2/edge/sites/dcn0")).status == 404


async def test_stores_detail_shows_site_state(hub: Daemon, session: aiohttp.ClientSession) -> None:
    await registered(session, hub, "dcn0")
    detail = json.loads(as_dict(await glance(hub, "stores-info", "--detail"))["stores"])
    site = next(s for s in detail if s["id"] == "dcn0")
    assert site["type"] == "edge-site"
    props = site["properties"]
    assert props["online"] is True and props["free_bytes"] == 8 << 30 and props["api_url"] == "http://dcn0.example:9292"


# -- who may call ----------------------------------------------------------------------------------


async def test_per_site_token_limits(hub: Daemon, session: aiohttp.ClientSession, image_file: Path) -> None:
    dcn0, dcn1 = await registered(session, hub, "dcn0", "dcn1")
    image_id = await create_image(hub, image_file)
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn1", image_id)

    # dcn0's token works for dcn0 only.
    as_dcn0 = SITE_TOKENS["dcn0"]
    for method, path, body in (
        ("POST", "/v2/edge/sites", {"name": "dcn1"}),
        ("POST", "/v2/edge/sites/dcn1/heartbeat", {}),
        ("GET", "/v2/edge/sites/dcn1", None),
        ("GET", "/v2/edge/sites/dcn1/assignments", None),
        ("POST", "/v2/edge/sites/dcn1/assignments/%s" % image_id, {"action": "copy", "status": "success"}),
        ("GET", "/v2/edge/sites", None),
    ):
        reply = await dcn0.call(method, path, body, token=as_dcn0)
        assert reply.status == 403, (method, path, reply.body)
        assert "not authorized" in reply.message
    assert (await dcn0.call("GET", "/v2/edge/sites/dcn0", token=as_dcn0)).status == 200
    # A site token cannot copy images around either: placement is the admin's.
    reply = await dcn0.call(
        "POST", "/v2/images/%s/import" % image_id, {"method": {"name": "copy-image"}, "stores": ["dcn0"]}, token=as_dcn0
    )
    assert reply.status == 403

    # An ordinary project member is no site at all; no token is no caller.
    member = Site(session, hub, "dcn0", MEMBER_TOKEN)
    assert (await member.heartbeat()).status == 403
    assert (await member.call("GET", "/v2/edge/sites")).status == 403
    async with session.get(hub.url + "/v2/edge/sites") as resp:
        assert resp.status == 401

    # The work for dcn1 is still there, untouched by dcn0's attempts.
    assert [w["image_id"] for w in await dcn1.assignments()] == [image_id]


# -- bad input -------------------------------------------------------------------------------------


async def test_bad_input_is_refused_with_clear_messages(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    admin = Site(session, hub, "dcn0", ADMIN_TOKEN)
    cases: list[tuple[Any, int, str]] = [
        ([], 400, "JSON object"),
        ({}, 400, "'name' is required"),
        ({"name": "dcn 0"}, 400, "Invalid site name"),
        ({"name": "x" * 64}, 400, "Invalid site name"),
        ({"name": "central"}, 409, "clashes with a store"),
        ({"name": "dcn0", "free_bytes": -1}, 400, "'free_bytes' must be a non-negative integer"),
        ({"name": "dcn0", "total_bytes": "lots"}, 400, "'total_bytes'"),
        ({"name": "dcn0", "stores": "local"}, 400, "'stores' must be a list"),
        ({"name": "dcn0", "stores": [{"description": "no id"}]}, 400, "needs an 'id'"),
        ({"name": "dcn0", "api_url": "ftp://dcn0"}, 400, "'api_url'"),
        ({"name": "dcn0", "version": 3}, 400, "'version' must be a string"),
    ]
    for body, status, words in cases:
        reply = await admin.call("POST", "/v2/edge/sites", body)
        assert reply.status == status and words in reply.message, (body, reply.status, reply.body)
    async with session.post(
        hub.url + "/v2/edge/sites",
        data=b"{not json",
        headers={**JSON_ERRORS, "X-Auth-Token": ADMIN_TOKEN, "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 400 and "Malformed JSON" in (await resp.json())["message"]
    assert (await admin.call("GET", "/v2/edge/sites")).body == {"sites": []}  # nothing was registered

    [dcn0] = await registered(session, hub, "dcn0")
    reply = await dcn0.heartbeat(cache="full")
    assert reply.status == 400 and "'cache' must be a JSON object" in reply.message
    reply = await dcn0.heartbeat(cache={"blob": "x" * 5000})
    assert reply.status == 400 and "larger than" in reply.message
    image_id = await create_image(hub, image_file)
    for body, words in (
        ({"action": "move", "status": "success"}, "'action' must be one of copy, remove"),
        ({"action": "copy", "status": "done"}, "'status' must be one of success, failure"),
        ({"action": "copy", "status": "success", "message": 7}, "'message' must be a string"),
    ):
        reply = await dcn0.call("POST", "/v2/edge/sites/dcn0/assignments/%s" % image_id, body)
        assert reply.status == 400 and words in reply.message, reply.body
    reply = await dcn0.report("not-a-uuid", "copy", "success")
    assert reply.status == 400 and "not a valid image ID" in reply.message
    reply = await dcn0.report(image_id, "copy", "success")
    assert reply.status == 409 and "no pending copy assignment" in reply.message

    # Placement refusals, each with its reason.
    reply = await admin.call(
        "POST", "/v2/images/%s/import" % image_id, {"method": {"name": "copy-image"}, "stores": ["dcn9"]}
    )
    assert reply.status == 409 and "Unknown store(s) dcn9" in reply.message and "dcn0" in reply.message
    queued = (
        await admin.call("POST", "/v2/images", {"name": "empty", "disk_format": "raw", "container_format": "bare"})
    ).body
    reply = await admin.call(
        "POST",
        "/v2/images/%s/import" % queued["id"],
        {"method": {"name": "web-download", "uri": "http://example.org/x"}, "stores": ["dcn0"]},
    )
    assert reply.status == 400 and "copy-image only" in reply.message
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    err = await glance_fails(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    assert "already being copied to site(s) dcn0" in err


async def test_an_edge_has_no_sites_api(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], session: aiohttp.ClientSession
) -> None:
    edge = start_hub(tmp_path, daemon_factory, name="edge", role="edge")
    reply = await Site(session, edge, "dcn0", ADMIN_TOKEN).register()
    assert reply.status == 404 and "served by a hub" in reply.message and 'role = "edge"' in reply.message
    reply = await Site(session, edge, "dcn0").heartbeat()
    assert reply.status == 404 and "served by a hub" in reply.message
    stores = json.loads(as_dict(await glance(edge, "stores-info"))["stores"])
    assert [s["id"] for s in stores] == ["central"]


async def test_heartbeat_pulls_show_on_the_site_until_reported(
    hub: Daemon, session: aiohttp.ClientSession, image_file: Path
) -> None:
    """A site's heartbeat says how far its pulls have come; the hub shows them on the site (the
    TUI's Sites screen reads them) until the site reports the copy. Bad figures are refused."""
    [dcn0] = await registered(session, hub, "dcn0")
    admin = Site(session, hub, "dcn0", ADMIN_TOKEN)
    image_id = await create_image(hub, image_file)
    await glance(hub, "image-import", "--import-method", "copy-image", "--stores", "dcn0", image_id)
    pull = {"image_id": image_id, "bytes_done": 1024, "bytes_total": 4096}
    reply = await dcn0.heartbeat(free_bytes=1 << 30, pulls=[pull])
    assert reply.status == 200 and reply.body["pulls"] == [pull]
    [listed] = (await admin.call("GET", "/v2/edge/sites")).body["sites"]
    assert listed["pulls"] == [pull]
    assert (await admin.call("GET", "/v2/edge/sites/dcn0")).body["pulls"] == [pull]
    # A heartbeat without the key keeps them; the report of the copy ends them.
    assert (await dcn0.heartbeat(free_bytes=1 << 30)).body["pulls"] == [pull]
    assert await dcn0.sync() == [(image_id, "copy", 204)]
    assert (await admin.call("GET", "/v2/edge/sites/dcn0")).body["pulls"] == []
    for pulls, words in (
        ("half", "'pulls' must be a list"),
        ([7], "each of 'pulls' must be an object"),
        ([{"image_id": "x", "bytes_done": 1}], "pulls[].image_id"),
        ([{"image_id": image_id, "bytes_done": -1}], "'bytes_done' must be a non-negative integer"),
        ([pull] * 65, "at most 64"),
    ):
        reply = await dcn0.heartbeat(pulls=pulls)
        assert reply.status == 400 and words in reply.message, (pulls, reply.body)
