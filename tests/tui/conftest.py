"""Fixtures for the operator UI: a real daemon with two stores, a small HTTP client to put data
into it, TuiConfigs for the socket and for --url + token, and a `wait_until` for live data; a
hub and an edge with a cache, with a recording relay between the TUI and the edge."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from tests.conftest import JSON_ERRORS, Daemon, write_toml
from tests.hubproxy import HubProxy
from tests.tui.relay import RecordingRelay
from tui.config import TuiConfig
from tui.dialogs.confirm import ConfirmScreen
from tui.panes.images import ImageTable

TWO_STORES = {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}
REFRESH = 0.25  # fast polling keeps the tests short


class SiteApi:
    """The daemon's HTTP API with the admin token, for arranging and checking state."""

    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.session = session

    def _headers(self, **extra: str) -> dict[str, str]:
        return {"X-Auth-Token": self.daemon.token, **JSON_ERRORS, **extra}

    async def call(self, method: str, path: str, expect: int = 200, **kw: Any) -> Any:
        async with self.session.request(
            method, self.daemon.url + path, headers=self._headers(**kw.pop("headers", {})), **kw
        ) as resp:
            body = await resp.read()
            assert resp.status == expect, (resp.status, body)
            return await resp.json() if body and resp.content_type == "application/json" else None

    async def create(self, name: str, data: bytes | None = None, **props: Any) -> dict[str, Any]:
        body = {"name": name, "disk_format": "raw", "container_format": "bare", **props}
        image = await self.call("POST", "/v2/images", 201, json=body)
        if data is not None:
            await self.call(
                "PUT",
                "/v2/images/%s/file" % image["id"],
                204,
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            image = await self.image(image["id"])
        return image

    async def image(self, image_id: str) -> dict[str, Any]:
        return await self.call("GET", "/v2/images/%s" % image_id)

    async def images(self) -> list[dict[str, Any]]:
        return (await self.call("GET", "/v2/images?limit=1000"))["images"]

    async def copy(self, image_id: str, store: str) -> None:
        await self.call(
            "POST", "/v2/images/%s/import" % image_id, 202, json={"method": {"name": "copy-image"}, "stores": [store]}
        )

    async def wait_tasks_done(self, image_id: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 60
        while True:
            tasks = (await self.call("GET", "/v2/images/%s/tasks" % image_id))["tasks"]
            if tasks and all(t["status"] not in ("pending", "processing") for t in tasks):
                return tasks
            assert time.monotonic() < deadline, tasks
            await asyncio.sleep(0.05)


def site_config(tmp_path: Path, **imports: Any) -> Path:
    data: dict[str, Any] = {"site": {"name": "edge-test"}, "stores": TWO_STORES}
    if imports:
        data["import"] = imports
    return write_toml(tmp_path / "site.toml", data)


@pytest.fixture
def site(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    """A real daemon (edge-appliance serve) with two stores: local (default) and fast."""
    return daemon_factory("site", site_config(tmp_path))


@pytest.fixture
async def site_api(site: Daemon) -> AsyncIterator[SiteApi]:
    async with aiohttp.ClientSession() as session:
        yield SiteApi(site, session)


def socket_config(daemon: Daemon, **kw: Any) -> TuiConfig:
    """The default way in: the daemon's Unix socket, no token (tests run as root)."""
    return TuiConfig(socket=str(daemon.state_dir / "appliance.sock"), refresh_seconds=REFRESH, **kw)


def url_config(daemon: Daemon, **kw: Any) -> TuiConfig:
    return TuiConfig(url=daemon.url, token=daemon.token, refresh_seconds=REFRESH, **kw)


async def type_text(pilot: Pilot[Any], text: str) -> None:
    """Type into the focused Input in one go (pressing each key costs ~0.1 s in run_test), once a
    dialog just opened has focused it (on a loaded machine, after the keys that opened it)."""
    await wait_until(pilot, lambda: isinstance(pilot.app.focused, Input), what="an input focused")
    focused = pilot.app.focused
    assert isinstance(focused, Input), focused
    focused.insert_text_at_cursor(text)
    await pilot.pause()


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], Any], within: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for %s" % (what or predicate))
        await pilot.pause(0.05)


async def open_images(app: Any, pilot: Pilot[Any], count: int) -> ImageTable:
    """Switch to Images and wait for `count` rows."""
    await pilot.press("2")
    table = app.query_one(ImageTable)
    await wait_until(pilot, lambda: table.row_count == count, what="%d rows" % count)
    return table


async def confirm(pilot: Pilot[Any]) -> None:
    """Answer the open confirmation "yes" as an operator does: after reading it (a "y" typed
    before the dialog is armed is ignored on purpose)."""
    screen = pilot.app.screen
    assert isinstance(screen, ConfirmScreen), screen
    await wait_until(pilot, lambda: screen.armed, what="the confirmation armed")
    await pilot.press("y")


# -- a hub and an edge site ----------------------------------------------------------------

MiB = 1 << 20
FAST_HUB = {
    "mirror_interval": 1,
    "reconcile_interval": 2,
    "heartbeat_interval": 1,
    "sync_interval": 1,
    "read_timeout": 5,
    "connect_timeout": 2,
    "retry_max_seconds": 1,
}


@dataclass
class HubAndEdge:
    """A hub (role "hub") and an edge `dcn0` with a cache, as daemon processes. The edge reaches
    the hub through `link` (which can slow the WAN down); the TUI reaches the edge through
    `relay`, which records what it sends."""

    hub: SiteApi
    edge: SiteApi
    link: HubProxy
    relay: RecordingRelay

    def edge_tui(self, **kw: Any) -> TuiConfig:
        return TuiConfig(url=self.relay.url, token=self.edge.daemon.token, refresh_seconds=REFRESH, **kw)

    async def hub_image(self, name: str, size: int) -> dict[str, Any]:
        """An image uploaded at the hub, once the edge's catalog mirror lists it."""
        image = await self.hub.create(name, visibility="public")
        await self.hub.call(
            "PUT",
            "/v2/images/%s/file" % image["id"],
            204,
            data=io.BytesIO(os.urandom(size)),
            headers={"Content-Type": "application/octet-stream"},
        )
        deadline = time.monotonic() + 60
        while not any(i["id"] == image["id"] for i in await self.edge.images()):
            assert time.monotonic() < deadline, "the edge never mirrored %s" % name
            await asyncio.sleep(0.1)
        return image

    async def cache_view(self) -> dict[str, Any]:
        return await self.edge.call("GET", "/v2/edge/cache")


@pytest.fixture
async def hub_and_edge_factory(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[aiohttp.ClientSession, HubProxy, RecordingRelay]] = []

    async def make(rate: int = 0) -> HubAndEdge:
        hub = daemon_factory(
            "hub",
            write_toml(
                tmp_path / "hub.toml",
                {
                    "site": {"name": "central", "role": "hub"},
                    "stores": {"default": "central", "central": {"path": "images"}},
                    "hub": {"heartbeat_interval": 1},
                },
            ),
        )
        link = await HubProxy(hub.url, rate=rate).start()
        edge = daemon_factory(
            "dcn0",
            write_toml(
                tmp_path / "dcn0.toml",
                {
                    "site": {"name": "dcn0"},
                    "hub": {"url": link.url, "token_file": str(hub.state_dir / "admin-token"), **FAST_HUB},
                    "cache": {"min_free_bytes": 0, "max_size": 64 * MiB},
                },
            ),
        )
        relay = await RecordingRelay(edge.url).start()
        session = aiohttp.ClientSession()
        made.append((session, link, relay))
        return HubAndEdge(SiteApi(hub, session), SiteApi(edge, session), link, relay)

    yield make
    for session, link, relay in made:
        await session.close()
        await relay.close()
        await link.close()


@pytest.fixture
async def hub_and_edge(hub_and_edge_factory: Callable[..., Any]) -> HubAndEdge:
    return await hub_and_edge_factory()
