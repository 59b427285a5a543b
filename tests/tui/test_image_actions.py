"""The Images screen's second set of actions against a real daemon: each changes the daemon's state
(checked through its API) or shows the daemon's own words, and is offered only where the daemon
does it. Upload, protect, deactivate, edit, retry (this file); pin at an edge and copy to sites
on a hub: test_hub_actions.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input, TextArea

from tests.conftest import VENV_BIN, Daemon
from tests.tui.conftest import SiteApi, confirm, open_images, site_config, socket_config, type_text, wait_until
from tests.tui.relay import RecordingRelay
from tests.tui.test_hostile_text import Tmux, controls
from tui.app import make_app
from tui.config import TuiConfig
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.edit_image import EditImageScreen
from tui.dialogs.upload import UploadProgressScreen, UploadScreen
from tui.widgets.contained import PlainStatic

MiB = 1 << 20


def notes(seen: list[Message], severity: str | None = None) -> list[str]:
    return [
        str(m.notification.message)
        for m in seen
        if isinstance(m, Notify) and (severity is None or m.notification.severity == severity)
    ]


async def test_protect_and_unprotect_change_the_image_in_the_catalog(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("guarded", os.urandom(1024))
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("P")
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["protected"] is True
        await wait_until(pilot, lambda: any("Protected guarded" in n for n in notes(seen)), what="the note")
        # The list catches up, and P now unprotects.
        await wait_until(pilot, lambda: app.images_pane.selected_image()["protected"] is True, what="the poll")
        await pilot.press("P")
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["protected"] is False
        await site_api.call("DELETE", "/v2/images/%s" % image["id"], 204)  # deletable again


async def test_deactivate_asks_then_reactivate_turns_it_back(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("paused", os.urandom(1024))
    queued = await site_api.create("no-data")
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        table = await open_images(app, pilot, 2)
        table.move_cursor(row=table.get_row_index(queued["id"]))
        await pilot.pause()
        await pilot.press("a")  # a queued image: the daemon would refuse; nothing is asked or sent
        assert not isinstance(app.screen, ConfirmScreen)
        assert any("no-data is queued" in n for n in notes(seen, "warning"))
        table.move_cursor(row=table.get_row_index(image["id"]))
        await pilot.pause()
        await pilot.press("a")
        await confirm(pilot)
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["status"] == "deactivated"
        await wait_until(pilot, lambda: app.images_pane.selected_image()["status"] == "deactivated", what="poll")
        await pilot.press("a")  # reactivating asks nothing
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["status"] == "active"


async def test_edit_saves_name_tags_and_properties_and_shows_the_daemons_refusal(
    site: Daemon, site_api: SiteApi
) -> None:
    image = await site_api.create("before", os.urandom(1024), os_distro="ubuntu", hw_gone="x", tags=["keep", "drop"])
    app = make_app(socket_config(site))
    async with app.run_test(size=(100, 40)) as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("e")
        screen = app.screen
        assert isinstance(screen, EditImageScreen)
        assert screen.query_one("#edit-properties", TextArea).text == "hw_gone = x\nos_distro = ubuntu"
        # A reserved property: the daemon refuses, the dialog shows its words and stays open.
        screen.query_one("#edit-properties", TextArea).text = "os_glance_\x1b[31mx = 1\nos_distro = ubuntu"
        await pilot.press("ctrl+s")
        error = screen.query_one("#edit-error", PlainStatic)
        await wait_until(pilot, lambda: "refused" in str(error.content), what="the refusal")
        shown = str(error.content)
        assert "os_glance_\\x1b[31mx" in shown and "\x1b" not in shown, shown
        assert app.screen is screen
        assert (await site_api.image(image["id"]))["os_distro"] == "ubuntu"
        # Fixed: every change goes in one patch.
        screen.query_one("#edit-name", Input).value = "after"
        screen.query_one("#edit-tags", Input).value = "keep, new"
        screen.query_one("#edit-properties", TextArea).text = "os_distro = debian\nhw_added = 2"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: app.screen is not screen, what="the dialog closes")
    after = await site_api.image(image["id"])
    assert after["name"] == "after"
    assert sorted(after["tags"]) == ["keep", "new"]
    assert after["os_distro"] == "debian" and after["hw_added"] == "2" and "hw_gone" not in after


@pytest.fixture
async def slow_relay(site: Daemon) -> AsyncIterator[RecordingRelay]:
    relay = await RecordingRelay(site.url, upload_rate=4 * MiB).start()
    yield relay
    await relay.close()


async def test_upload_shows_progress_and_cancel_leaves_nothing(
    site: Daemon, site_api: SiteApi, slow_relay: RecordingRelay, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(data)
    seen: list[Message] = []
    app = make_app(TuiConfig(url=slow_relay.url, token=site.token, refresh_seconds=0.25))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await open_images(app, pilot, 0)
        # A path that is not a file is refused in the dialog.
        await pilot.press("u")
        assert isinstance(app.screen, UploadScreen)
        await type_text(pilot, str(tmp_path))
        await pilot.press("enter")
        assert "is not a regular file" in str(app.screen.query_one("#upload-error", PlainStatic).content)
        app.screen.query_one("#upload-path", Input).value = str(disk)
        await pilot.press("enter")
        progress = app.screen
        assert isinstance(progress, UploadProgressScreen)
        line = progress.query_one("#upload-progress", PlainStatic)
        await wait_until(pilot, lambda: "MiB/s" in str(line.content) and "ETA" in str(line.content), what="a rate")
        assert "of 12.0 MiB" in str(line.content)
        # Cancel mid-way: the image the upload created is deleted again.
        assert slow_relay.uploaded < len(data)
        await pilot.press("escape")
        await wait_until(pilot, lambda: app.screen is not progress, what="the progress closes")
        await wait_until(pilot, lambda: any("cancelled" in n for n in notes(seen)), what="the note")
        assert await site_api.images() == []
        # Again, to the end: the image is active with the file's data.
        slow_relay.upload_rate = 64 * MiB
        await pilot.press("u")
        await type_text(pilot, str(disk))
        app.screen.query_one("#upload-name", Input).value = "uploaded"
        await pilot.press("enter")
        await wait_until(pilot, lambda: any("Uploaded uploaded" in n for n in notes(seen)), within=60, what="done")
    (image,) = await site_api.images()
    assert image["name"] == "uploaded" and image["status"] == "active" and image["disk_format"] == "raw"
    assert image["checksum"] == hashlib.md5(data).hexdigest()


@pytest.fixture
async def flaky_source() -> AsyncIterator[tuple[TestServer, list[bytes]]]:
    """Serves /disk.raw: 404 until the test puts data in the list."""
    served: list[bytes] = []

    async def disk(request: web.Request) -> web.Response:
        if not served:
            return web.Response(status=404, text="not yet")
        return web.Response(body=served[0], content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/disk.raw", disk)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, served
    await server.close()


async def test_retry_runs_a_failed_web_download_again_from_the_same_url(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, flaky_source: tuple[TestServer, list[bytes]]
) -> None:
    server, served = flaky_source
    config = site_config(tmp_path, uri_filter={"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [server.port]})
    daemon = daemon_factory("site", config)
    async with aiohttp.ClientSession() as session:
        api = SiteApi(daemon, session)
        image = await api.create("flaky")
        uri = "http://127.0.0.1:%d/disk.raw" % server.port
        body = {"method": {"name": "web-download", "uri": uri}}
        await api.call("POST", "/v2/images/%s/import" % image["id"], 202, json=body)
        (task,) = await api.wait_tasks_done(image["id"])
        assert task["status"] == "failure"
        other = await api.create("never-imported")
        seen: list[Message] = []
        app = make_app(socket_config(daemon))
        async with app.run_test(message_hook=seen.append) as pilot:
            table = await open_images(app, pilot, 2)
            table.move_cursor(row=table.get_row_index(other["id"]))
            await pilot.pause()
            await pilot.press("R")  # no import to retry: said, nothing sent
            await app.workers.wait_for_complete()
            await wait_until(pilot, lambda: any("no import task" in n for n in notes(seen, "warning")), what="why")
            table.move_cursor(row=table.get_row_index(image["id"]))
            await pilot.pause()
            served.append(os.urandom(256 * 1024))
            await pilot.press("R")
            await app.workers.wait_for_complete()
            await wait_until(pilot, lambda: any("Retrying flaky: web-download" in n for n in notes(seen)), what="note")
        tasks = await api.wait_tasks_done(image["id"])
        assert sorted(t["status"] for t in tasks) == ["failure", "success"]
        done = await api.image(image["id"])
        assert done["status"] == "active" and done["checksum"] == hashlib.md5(served[0]).hexdigest()
        await asyncio.sleep(0)


async def screen_shows(tmux: Tmux, text: str, within: float = 30) -> str:
    """tmux's screen once it shows `text` (the relay serves in this loop meanwhile)."""
    deadline = time.monotonic() + within
    while True:
        screen = tmux.screen()
        if text in screen:
            return screen
        assert time.monotonic() < deadline, "%r not on the screen:\n%s" % (text, screen)
        await asyncio.sleep(0.1)


async def test_edge_tui_in_a_terminal_uploads_with_progress_then_protects(
    site: Daemon, site_api: SiteApi, tmp_path: Path
) -> None:
    """The real `edge-tui` at 80x24 under tmux, through a relay that reads uploads at 4 MiB/s."""
    data = os.urandom(24 * MiB)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(data)
    relay = await RecordingRelay(site.url, upload_rate=4 * MiB).start()
    term = Tmux(tmp_path)
    try:
        term.start(
            [str(VENV_BIN / "edge-tui"), "--url", relay.url, "--token=" + site.token, "--refresh", "0.5"],
            {"TERM": "xterm-256color"},
        )
        await screen_shows(term, "edge-test")
        term.keys("2")
        await screen_shows(term, "No images on this site yet")
        term.keys("u")
        await screen_shows(term, "Upload a local file")
        term.keys("-l", str(disk))
        term.keys("Enter")
        screen = await screen_shows(term, "MiB/s")
        assert "Uploading disk.raw" in screen and "of 24.0 MiB" in screen and "ETA" in screen, screen
        assert not controls(screen)
        await screen_shows(term, "Uploaded disk.raw", within=60)
        (image,) = await site_api.images()
        assert image["status"] == "active" and image["checksum"] == hashlib.md5(data).hexdigest()
        screen = await screen_shows(term, "active")
        assert "protected" not in screen
        term.keys("P")
        await screen_shows(term, "Protected disk.raw")
        assert (await site_api.image(image["id"]))["protected"] is True
        await screen_shows(term, "· protected")  # the detail pane, after the next poll
        term.keys("q")
        assert term.exit_status() == 0
    finally:
        term.close()
        await relay.close()
