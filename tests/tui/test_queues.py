"""Import from URL through the TUI and follow it on Queues: live progress with a rate while a
(deliberately slow) loopback server sends the data, then success; a failing import shows the
daemon's message. (The daemon reports the source's Content-Length as bytes_total while
downloading, so progress and ETA show from the start; tests/tui/test_units.py covers the ETA
arithmetic.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from textual.message import Message
from textual.widgets import DataTable, Static

from tests.conftest import Daemon
from tests.tui.conftest import SiteApi, site_config, socket_config, type_text, wait_until
from tests.tui.test_hostile_text import screen_text
from tui.app import make_app
from tui.messages import ImportStarted, TasksLoaded

CHUNK = 128 * 1024
CHUNKS = 32  # 4 MiB
MiB = 1 << 20


class Pace:
    """How much of its body the source may send so far: the test lets it go on once the TUI has
    shown what it must (on a loaded machine a timed trickle can end before the TUI's polls see it)."""

    def __init__(self) -> None:
        self.limit = MiB
        self._moved = asyncio.Event()

    def allow(self, limit: int) -> None:
        self.limit = limit
        self._moved.set()

    async def until(self, sent: int) -> None:
        while sent > self.limit:
            self._moved.clear()
            await self._moved.wait()


PACE = web.AppKey("pace", Pace)


@pytest.fixture
async def source() -> AsyncIterator[TestServer]:
    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(CHUNK * CHUNKS)}
        )
        await resp.prepare(request)
        for i in range(CHUNKS):
            await request.app[PACE].until((i + 1) * CHUNK)
            await resp.write(bytes([i % 251]) * CHUNK)
            await asyncio.sleep(0.08)
        return resp

    app = web.Application()
    app[PACE] = Pace()
    app.router.add_get("/slow.raw", slow)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


@pytest.fixture
async def open_site(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, source: TestServer
) -> AsyncIterator[SiteApi]:
    config = site_config(tmp_path, uri_filter={"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]})
    daemon = daemon_factory("site", config)
    async with aiohttp.ClientSession() as session:
        yield SiteApi(daemon, session)


async def test_import_from_url_shows_live_progress_then_success_and_failures(
    open_site: SiteApi, source: TestServer
) -> None:
    site = open_site.daemon
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(size=(120, 30), message_hook=seen.append) as pilot:
        await pilot.press("2", "n")
        await type_text(pilot, "http://127.0.0.1:%d/slow.raw" % source.port)
        await pilot.press("tab")  # the name field
        await type_text(pilot, "slow-image")
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(isinstance(m, ImportStarted) for m in seen), what="ImportStarted")
        started = next(m for m in seen if isinstance(m, ImportStarted))
        assert started.name == "slow-image"
        await pilot.press("3")
        table = app.queues.table
        await wait_until(pilot, lambda: table.row_count == 1, what="task row")
        key = table.keys[0]
        # The source sends 1 MiB, then a second once the TUI has shown the first: two polls with
        # progress between them, whatever the load (the rate comes from successive polls).
        pace = source.app[PACE]
        await wait_until(pilot, lambda: table.cell_text(key, "bytes") == "1.0/4.0 MiB", what="the first MiB")
        pace.allow(2 * MiB)

        def moving() -> bool:
            return (
                table.cell_text(key, "status") == "processing"
                and table.cell_text(key, "bytes") == "2.0/4.0 MiB"
                and table.cell_text(key, "rate").endswith("/s")
            )

        await wait_until(pilot, moving, what="live progress with a rate")
        assert table.cell_text(key, "image") == "slow-image"
        # While downloading, the daemon knows the total (the source's Content-Length): a
        # percentage and an ETA show.
        assert table.cell_text(key, "progress").endswith("%")
        assert table.cell_text(key, "eta") != "—"
        assert table.cell_text(key, "method") == "web-download → local"
        pace.allow(CHUNK * CHUNKS)
        await wait_until(pilot, lambda: table.cell_text(key, "status") == "success", what="success")
        assert table.cell_text(key, "progress").endswith("100%")
        assert table.cell_text(key, "bytes") == "4.0/4.0 MiB"
        image = await open_site.image(started.image_id)
        assert image["status"] == "active" and image["size"] == CHUNK * CHUNKS
        assert sum(isinstance(m, TasksLoaded) for m in seen) >= 3

        # A URL the filter allows but that fails: the task fails with the daemon's message.
        await pilot.press("2", "n")
        await type_text(pilot, "http://127.0.0.1:%d/missing.raw" % source.port)
        await pilot.press("enter")
        await wait_until(pilot, lambda: sum(isinstance(m, ImportStarted) for m in seen) == 2, what="second import")
        await pilot.press("3")
        await wait_until(pilot, lambda: table.row_count == 2, what="second task row")
        failed = next(k for k in table.keys if k != key)
        await wait_until(pilot, lambda: table.cell_text(failed, "status") == "failure", what="failure")
        message = table.cell_text(failed, "message")
        assert "404" in message
        tasks = (await open_site.call("GET", "/v2/tasks"))["tasks"]
        assert message == next(t for t in tasks if t["id"] == failed)["message"]
        # Running first, then failed, then done: the failed task sorts before the success.
        assert table.keys == [failed, key]
        table.move_cursor(row=0)
        await wait_until(pilot, lambda: "404" in str(app.query_one("#task-detail").content), what="detail")


async def test_a_failed_import_is_readable_at_80x24(open_site: SiteApi, source: TestServer) -> None:
    """Without a detail view: the message starts on the failed row, right after its status (cut
    with "…"), and the pane below shows it whole, wrapped, inside the 80x24 screen."""
    image = await open_site.create("broken-one")
    url = "http://127.0.0.1:%d/missing/%s.raw" % (source.port, "a-rather-long-path-name" * 3)
    body = {"method": {"name": "web-download", "uri": url}}
    await open_site.call("POST", "/v2/images/%s/import" % image["id"], expect=202, json=body)
    app = make_app(socket_config(open_site.daemon))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        table = app.query_one("#tasks", DataTable)
        await wait_until(pilot, lambda: table.row_count == 1 and "404" in shown_text(app), what="failure")
        message = (await open_site.call("GET", "/v2/tasks"))["tasks"][0]["message"]
        assert url in message
        screen = screen_text(app).split("\n")
        assert len(screen) == 24
        row = next(line for line in screen if "broken-one" in line)
        assert "failure" in row and row.split("failure", 1)[1].strip().startswith(message[:8])
        assert "…" in row  # the long message is cut with an ellipsis, not silently
        # The whole message is on the screen below the table, wrapped over a few lines.
        below = screen[screen.index(row) + 1 :]
        assert message.replace(" ", "") in "".join(below).replace(" ", ""), below


def shown_text(app: Any) -> str:
    return str(app.query_one("#task-detail", Static).content)
