"""Each screen shows the real daemon's data: a daemon process, the TUI on its socket or on
--url + token, and assertions on the widgets' contents."""

from __future__ import annotations

import os
import re
from typing import Any

from textual.message import Message
from textual.widgets import Input, Static

from tests.conftest import Daemon
from tests.tui.conftest import SiteApi, socket_config, url_config, wait_until
from tui.app import make_app
from tui.messages import ImagesLoaded, StatusLoaded
from tui.panes.images import ImageTable


def text_of(app: Any, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return getattr(content, "plain", str(content))


async def test_overview_shows_site_stores_cache_and_counts(site: Daemon, site_api: SiteApi) -> None:
    await site_api.create("with-data", os.urandom(4096))
    await site_api.create("no-data")
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: any(isinstance(m, StatusLoaded) for m in seen), what="status")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert app.active_pane == "overview"
        assert "edge-test (edge)" in text_of(app, "#overview-site")
        assert "version 0.1.0" in text_of(app, "#overview-site")
        assert "not configured" in text_of(app, "#overview-hub")
        stores = text_of(app, "#overview-stores")
        assert "local" in stores and "fast" in stores and "default" in stores
        assert "images 4.0 KiB" in stores  # local holds the 4 KiB image
        assert "READ-ONLY" not in stores
        assert "not configured on this site" in text_of(app, "#overview-cache")
        counts = text_of(app, "#overview-counts")
        assert "Images  2: 1 active · 1 queued" in counts
        assert "0 failed" in counts
        # The daemon's event-loop lag (its status answers it; a daemon that does not shows no line).
        assert re.search(r"\nLoop +lag \d+ ms · max \d+ ms over 1m00s$", counts), counts
        await pilot.press("4")
        assert app.active_pane == "cache"
        assert "Cache not configured on this site." in text_of(app, "#cache-summary")


async def test_images_screen_lists_images_with_detail_over_url_and_token(site: Daemon, site_api: SiteApi) -> None:
    alpha = await site_api.create("alpha", os.urandom(8192), os_distro="debian")
    beta = await site_api.create("beta", disk_format="qcow2")
    app = make_app(url_config(site))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 2, what="two rows")
        assert table.keys == [alpha["id"], beta["id"]]  # sorted by name
        row = [table.cell_text(alpha["id"], c) for c in ("name", "id", "status", "disk", "size", "virtual", "stores")]
        assert row == ["alpha", alpha["id"][:8], "active", "raw", "8.0 KiB", "8.0 KiB", "local"]
        assert table.cell_text(beta["id"], "status") == "queued"
        assert table.cell_text(beta["id"], "stores") == "—"
        # The detail pane: properties from the list, locations from /locations.
        await wait_until(pilot, lambda: "file://" in text_of(app, "#image-detail"), what="locations")
        detail = text_of(app, "#image-detail")
        assert alpha["id"] in detail and "os_distro = debian" in detail
        assert "local file://%s" % (site.state_dir / "images" / alpha["id"]) in detail
        await pilot.press("j")
        await wait_until(pilot, lambda: beta["id"] in text_of(app, "#image-detail"), what="beta's detail")
        await wait_until(pilot, lambda: "none (no data yet)" in text_of(app, "#image-detail"), what="no locations")
        await pilot.press("k")
        await wait_until(pilot, lambda: alpha["id"] in text_of(app, "#image-detail"), what="alpha again")


async def test_filter_narrows_the_table_and_escape_clears_it(site: Daemon, site_api: SiteApi) -> None:
    for name in ("debian-12", "debian-13", "cirros"):
        await site_api.create(name)
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 3)
        await pilot.press("slash", *"debian")  # (not hex: ids match filters too)
        await wait_until(
            pilot, lambda: app.images_pane.filter_text == "debian" and table.row_count == 2, what="filtered rows"
        )
        assert sorted(table.cell_text(k, "name") for k in table.keys) == ["debian-12", "debian-13"]
        box = app.query_one("#image-filter", Input)
        assert box.border_subtitle == "2 of 3 images"  # how many of all the filter kept
        await site_api.create("debian-14")  # the count follows the daemon's list
        await wait_until(pilot, lambda: box.border_subtitle == "3 of 4 images", what="count after a poll")
        await pilot.press("enter")  # keep the filter, back to the table
        assert app.focused is table
        await pilot.press("j")
        assert table.cursor_row == 1
        await pilot.press("escape")  # clears the filter
        await wait_until(pilot, lambda: table.row_count == 4, what="all rows back")
        assert app.images_pane.filter_text == "" and box.border_subtitle == ""


async def test_live_refresh_updates_rows_in_place(site: Daemon, site_api: SiteApi) -> None:
    first = await site_api.create("first")
    second = await site_api.create("second", os.urandom(1024))
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(message_hook=seen.append) as pilot:
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 2)
        rebuilds = 0
        original = table.replace_rows

        def counting(rows: Any) -> None:
            nonlocal rebuilds
            rebuilds += 1
            original(rows)

        table.replace_rows = counting  # type: ignore[method-assign]
        # A status change, a new image and a deletion, all made through the daemon's API.
        await site_api.call(
            "PUT",
            "/v2/images/%s/file" % first["id"],
            204,
            data=b"x" * 2048,
            headers={"Content-Type": "application/octet-stream"},
        )
        await wait_until(pilot, lambda: table.cell_text(first["id"], "status") == "active", what="status cell")
        assert table.cell_text(first["id"], "size") == "2.0 KiB"
        third = await site_api.create("third")
        await wait_until(pilot, lambda: third["id"] in table.keys, what="new row")
        await site_api.call("DELETE", "/v2/images/%s" % second["id"], 204)
        await wait_until(pilot, lambda: second["id"] not in table.keys, what="row removed")
        assert table.keys == [first["id"], third["id"]]
        assert rebuilds == 0  # update_cell / add / remove by key, never clear-and-refill
        assert sum(isinstance(m, ImagesLoaded) for m in seen) >= 4


async def test_events_screen_shows_the_daemon_log(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("eventful")
    app = make_app(socket_config(site))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("5")
        pane = app.events_pane
        await wait_until(pilot, lambda: any(e and image["id"] in e["message"] for e in pane.events), what="event")
        await pilot.pause()
        lines = [strip.text for strip in pane.log_widget.lines]
        assert any("site edge-test (edge) ready" in line for line in lines)
        assert any(image["id"] in line and "INFO" in line for line in lines)
        # Newest at the bottom: the creation comes after the start-up lines.
        ready = next(i for i, line in enumerate(lines) if "ready" in line)
        created = next(i for i, line in enumerate(lines) if image["id"] in line)
        assert ready < created
        # New events are appended while the screen is open.
        later = await site_api.create("later")
        await wait_until(pilot, lambda: any(later["id"] in s.text for s in pane.log_widget.lines), what="new event")
        await pilot.press("slash", *"later")
        await wait_until(
            pilot,
            lambda: all(
                "later" in s.text or not s.text.strip() or s.text.startswith(" " * 20) for s in pane.log_widget.lines
            ),
            what="filtered log",
        )
