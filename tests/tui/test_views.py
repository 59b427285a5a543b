"""Detail views of a site, a cache entry and an event (Enter, Esc back), the Events level filter
and cursor, the notifications history, the log after a daemon restart, stale marking while the
daemon does not answer, Home/End in tables, focus after a dialog, and the theme remembered.
Against real daemons (a hub and an edge where it takes both)."""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from textual.command import CommandList, CommandPalette

from tests.conftest import VENV_BIN, Daemon, start_daemon
from tests.hubproxy import HubProxy
from tests.tui.conftest import (
    REFRESH,
    HubAndEdge,
    MiB,
    SiteApi,
    open_images,
    site_config,
    socket_config,
    type_text,
    wait_until,
)
from tests.tui.test_connection import banner_text, dead_port
from tests.tui.test_detail import body_lines, shows
from tests.tui.test_hostile_text import Tmux, controls, edge_tui_env, screen_text
from tui.__main__ import config_from_args
from tui.app import make_app
from tui.config import TuiConfig
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.detail import DetailScreen
from tui.dialogs.help import HelpScreen
from tui.theme import DEFAULT_THEME


def line_with(app: Any, start: str) -> str:
    return next((line for line in body_lines(app) if line.startswith(start)), "")


async def registered(hub: SiteApi, name: str) -> None:
    deadline = time.monotonic() + 20
    while not any(s["name"] == name for s in (await hub.call("GET", "/v2/edge/sites"))["sites"]):
        assert time.monotonic() < deadline, "%s never registered" % name
        await asyncio.sleep(0.1)


# -- a site -------------------------------------------------------------------------------


async def test_enter_on_a_site_shows_heartbeat_stores_assignments_and_pulls(
    hub_and_edge_factory: Callable[..., Any],
) -> None:
    link: HubAndEdge = await hub_and_edge_factory(rate=256 * 1024)  # the pull takes seconds
    await registered(link.hub, "dcn0")
    image = await link.hub.create("pinned-at-dcn0", visibility="public")
    await link.hub.call(
        "PUT",
        "/v2/images/%s/file" % image["id"],
        204,
        data=io.BytesIO(os.urandom(2 * MiB)),
        headers={"Content-Type": "application/octet-stream"},
    )
    app = make_app(TuiConfig(url=link.hub.daemon.url, token=link.hub.daemon.token, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.session.sites is not None, what="the sites")
        await pilot.press("6")
        await wait_until(pilot, lambda: app.sites_pane.table.row_count == 1, what="the dcn0 row")
        await link.hub.copy(image["id"], "dcn0")  # copy-image to the site: an assignment it pulls
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await wait_until(pilot, lambda: shows(app, "Heartbeat", "pinned-at-dcn0"), what="the site's detail")
        assert "online" in body_lines(app)[0] and "dcn0" in body_lines(app)[0]
        assert " ago (at " in line_with(app, "Heartbeat")
        assert "free of" in line_with(app, "Disk")
        # The copy under way: assigned to the site, which has not reported yet.
        await wait_until(
            pilot,
            lambda: shows(app, "Stores (1)", "Copies under way (1)"),
            what="the copy: %s" % "\n".join(body_lines(app)),
        )
        assert "copy" in line_with(app, "copy") and image["id"] in line_with(app, "copy")
        assert all(len(line) <= 78 for line in body_lines(app))
        # Open, it is loaded again: the pull finishes, the image is held there, nothing is assigned.
        await wait_until(
            pilot,
            lambda: shows(app, "Images held here (1)", "Copies under way (0)", "none: the site has done all"),
            within=40,
            what="the pull done: %s" % "\n".join(body_lines(app)),
        )
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen) and app.active_pane == "sites"
        assert app.focused is app.sites_pane.table  # focus back where it was


# -- a cache entry ------------------------------------------------------------------------


async def test_enter_on_a_cache_fill_shows_rate_and_eta_then_the_cached_copy(
    hub_and_edge_factory: Callable[..., Any],
) -> None:
    link: HubAndEdge = await hub_and_edge_factory(rate=512 * 1024)
    image = await link.hub_image("slow-fill", 4 * MiB)
    app = make_app(link.edge_tui())
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.cache_pane.enabled, what="the status: a cache")
        await pilot.press("4")
        await link.edge.call("PUT", "/v2/cache/%s" % image["id"], 202)
        pane = app.cache_pane
        await wait_until(pilot, lambda: image["id"] in pane.queue, what="the queued image")
        await pilot.press("tab")
        assert app.focused is pane.queue_table
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await wait_until(pilot, lambda: shows(app, "slow-fill", "Fill in progress"), what="the detail")
        # Two samples of the fill give its rate and ETA.
        await wait_until(
            pilot, lambda: "/s · ETA " in line_with(app, "█") + line_with(app, "░"), within=20, what="rate and ETA"
        )
        fill = line_with(app, "█") or line_with(app, "░")
        assert "/4.0 MiB" in fill and "ETA —" not in fill, fill
        await wait_until(pilot, lambda: "4.0 MiB" in line_with(app, "Size"), within=40, what="the cached copy")
        assert shows(app, "Hits", "Last used")
        await pilot.press("escape")
        assert app.focused is pane.queue_table


# -- events -------------------------------------------------------------------------------


async def test_events_level_cursor_and_detail(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    port = dead_port()
    site = daemon_factory(
        "site", site_config(tmp_path, uri_filter={"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [port]})
    )
    long_name = "a-rather-long-image-name-" + "x" * 60
    async with aiohttp.ClientSession() as session:
        api = SiteApi(site, session)
        image = await api.create(long_name)
        await api.call(
            "POST",
            "/v2/images/%s/import" % image["id"],
            202,
            json={"method": {"name": "web-download", "uri": "http://127.0.0.1:%d/disk.raw" % port}},
        )
        await api.wait_tasks_done(image["id"])
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        pane = app.events_pane
        await wait_until(pilot, lambda: " WARNING " in screen_text(app), what="the failure's event")
        assert " INFO " in screen_text(app)
        # l: warnings and errors only, then errors only, then every level again.
        await pilot.press("l")
        await wait_until(pilot, lambda: "warnings and errors only" in screen_text(app), what="the level line")
        assert " INFO " not in screen_text(app) and " WARNING " in screen_text(app)
        assert "· 1 of %d events" % sum(1 for e in pane.events if e) in screen_text(app)
        await pilot.press("l")
        await wait_until(pilot, lambda: "Level: errors only" in screen_text(app), what="errors only")
        assert " WARNING " not in screen_text(app) and " INFO " not in screen_text(app)
        await pilot.press("l")
        await wait_until(pilot, lambda: " INFO " in screen_text(app), what="every level")
        assert "Level:" not in screen_text(app)
        # The cursor: on the newest at first; k moves up, g to the oldest; enter opens it whole.
        await pilot.press("l")  # warnings: the failure is the newest shown
        await wait_until(pilot, lambda: pane.least == "warning", what="warnings")
        chosen = pane.chosen
        assert chosen is not None and "import failed" in chosen["message"]
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        lines = body_lines(app)
        joined = " ".join(" ".join(lines).split())
        assert all(len(line) <= 78 for line in lines)
        squeezed = "".join(joined.split())  # folded lines: compare without the breaks
        assert "image%s(%s):importfailed" % (image["id"], long_name) in squeezed
        assert line_with(app, "Level").split() == ["Level", "warning"]
        assert "Images it names" in joined and long_name in squeezed
        assert not controls(screen_text(app))
        await pilot.press("escape")
        assert app.focused is pane.log_widget
        # Palette: the level by name, on the Events screen only.
        await pilot.press("ctrl+p")
        await type_text(pilot, "events: show every")
        await wait_until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, what="palette hits")
        await pilot.press("enter")
        await wait_until(pilot, lambda: pane.least == "debug", what="every level via the palette")
        await pilot.press("g")
        assert pane.chosen is not None and pane.chosen is next(e for e in pane.events if e)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert line_with(app, "Seq").split() == ["Seq", str(pane.chosen["seq"])]
        await pilot.press("escape")
        # A filter says how many of the events kept it shows.
        kept = sum(1 for e in pane.events if e)
        await pilot.press("slash")
        await type_text(pilot, "import failed")
        await pilot.press("enter")
        await wait_until(
            pilot, lambda: "Filter: import failed · 1 of %d events" % kept in screen_text(app), what="the count"
        )


# -- a daemon restart, stale data, notifications --------------------------------------------


async def test_a_restart_reloads_the_log_and_stale_data_is_marked(
    tmp_path: Path, daemon_factory: Callable[..., Daemon]
) -> None:
    """The daemon goes away for longer than it had been up: its uptime, when it is back, is
    larger than the last one seen, and its event numbers start again at 1. The log is reloaded
    all the same; meanwhile the data on screen is marked stale, with its age."""
    config = site_config(tmp_path)
    site = daemon_factory("site", config)
    relay = await HubProxy(site.url).start()  # the TUI's way in; it can point nowhere for a while
    try:
        app = make_app(TuiConfig(url=relay.url, token=site.token, refresh_seconds=REFRESH))
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("5")
            await wait_until(pilot, lambda: "ready" in screen_text(app), what="the first daemon's log")
            first_port = site.url.rsplit(":", 1)[1]
            up = int(app.status["uptime_seconds"])
            relay.target = "http://127.0.0.1:%d" % dead_port()
            site.stop()
            await wait_until(pilot, lambda: app.banner.stale, what="stale")
            # Marked: the banner says how old the data is, the header too, the screens dim.
            await wait_until(pilot, lambda: banner_text(app).startswith("STALE, data from "), what="the stale note")
            assert "ago)" in banner_text(app)
            assert app.sub_title.startswith("STALE, data from ")
            assert app.query_one("#panes").has_class("-stale")
            # An event opened now says it is stale.
            await pilot.press("enter")
            assert isinstance(app.screen, DetailScreen)
            await wait_until(pilot, lambda: "STALE" in screen_text(app), what="the detail's stale mark")
            await pilot.press("escape")
            starting = time.monotonic()
            again = start_daemon(tmp_path / "site", config)
            try:
                while time.monotonic() - starting <= up + 2:  # up longer than the first one was
                    await pilot.pause(0.2)
                relay.target = again.url
                second_port = again.url.rsplit(":", 1)[1]
                await wait_until(pilot, lambda: not app.banner.stale, what="connected again")
                assert "STALE" not in app.sub_title and not app.query_one("#panes").has_class("-stale")
                await wait_until(
                    pilot,
                    lambda: "127.0.0.1:%s" % second_port in screen_text(app),
                    what="the new daemon's first events",
                )
                assert "daemon restarted" in screen_text(app)
                text = "\n".join((e or {}).get("message", "── restart") for e in app.events_pane.events)
                assert text.index("127.0.0.1:%s" % first_port) < text.index("── restart")
                assert text.index("── restart") < text.index("127.0.0.1:%s" % second_port)
                # The toast said so; it went after a few seconds, and m still lists it with its time.
                await wait_until(pilot, lambda: not app._notifications, within=10, what="the toast to expire")
                await pilot.press("m")
                assert shows(app, "Connected to the daemon again.")
                assert any(line[:8].count(":") == 2 and "info" in line for line in body_lines(app))
            finally:
                again.stop()
    finally:
        await relay.close()


# -- small things ----------------------------------------------------------------------------


async def test_home_end_in_tables_tab_and_focus_after_dialogs(site: Daemon, site_api: SiteApi) -> None:
    for name in ("a1", "b2", "c3", "d4"):
        await site_api.create(name, os.urandom(512), note="a long note " * 60)
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        table = await open_images(app, pilot, 4)
        await pilot.press("end")
        assert table.highlighted_key == table.keys[-1]
        await pilot.press("home")
        assert table.highlighted_key == table.keys[0]
        await pilot.press("G")
        assert table.highlighted_key == table.keys[-1]
        # Tab stays in the screen: not on the tab bar, where keys do nothing visible. It reaches
        # the detail below, which scrolls; the next row's detail starts at its top.
        await pilot.press("tab")
        detail = app.query_one("#image-detail-pane")
        assert app.focused is detail
        await wait_until(pilot, lambda: detail.max_scroll_y > 0, what="a detail longer than its pane")
        await pilot.press("end")
        assert detail.scroll_y > 0
        await pilot.press("shift+tab")
        assert app.focused is table
        await pilot.press("k")
        assert detail.scroll_y == 0
        # After a dialog, the focus is back on the table, its row still highlighted.
        await pilot.press("d")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="cancelled")
        assert app.focused is table and table.highlighted_key == table.keys[-2]
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        scroll = app.screen.query_one("#dialog")
        assert scroll.max_scroll_y > 0  # it scrolls at 80x24 ...
        await pilot.press("end")
        assert scroll.scroll_y == scroll.max_scroll_y  # ... to the last key
        await pilot.press("escape")
        assert app.focused is table


async def test_the_theme_is_16_colour_safe_and_remembered(
    site: Daemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state" / "edge-tui" / "state.json"
    monkeypatch.delenv("TEXTUAL_THEME", raising=False)
    app = make_app(socket_config(site, state_file=str(state)))
    async with app.run_test() as pilot:
        assert app.theme == DEFAULT_THEME == "ansi-dark" and app.current_theme.ansi
        assert not state.exists()  # nothing chosen yet
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await type_text(pilot, "theme")
        await wait_until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, what="the theme command")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, CommandPalette), what="the theme list")
        await type_text(pilot, "gruvbox")
        await wait_until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, what="gruvbox")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.theme == "gruvbox", what="gruvbox chosen")
    assert '"gruvbox"' in state.read_text()
    app = make_app(socket_config(site, state_file=str(state)))
    async with app.run_test():
        assert app.theme == "gruvbox"  # remembered
    monkeypatch.setenv("TEXTUAL_THEME", "nord")
    app = make_app(socket_config(site, state_file=str(state)))
    async with app.run_test():
        assert app.theme == "nord"  # TEXTUAL_THEME wins, for this run
    assert '"gruvbox"' in state.read_text()
    # edge-tui keeps it under XDG_STATE_HOME (else ~/.local/state).
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert config_from_args([]).state_file == str(tmp_path / "xdg" / "edge-tui" / "state.json")


# -- the real edge-tui in a terminal ---------------------------------------------------------


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Tmux]:
    term = Tmux(tmp_path)
    yield term
    term.close()


async def test_edge_tui_in_a_terminal_site_and_event_details_then_stale(
    hub_and_edge: HubAndEdge, terminal: Tmux
) -> None:
    """At 80x24, as over SSH: the hub's Sites screen, a site's detail, an event's detail; then the
    hub stops and what is on screen, and the detail opened then, say they are stale."""
    hub = hub_and_edge.hub.daemon
    await registered(hub_and_edge.hub, "dcn0")

    async def wait_for(text: str) -> str:  # the relay between edge and hub runs in this loop
        return await asyncio.to_thread(terminal.wait_for, text)

    terminal.start(
        [str(VENV_BIN / "edge-tui"), "--refresh", "0.5"], edge_tui_env(hub) | {"XDG_STATE_HOME": terminal.cwd}
    )
    await wait_for("central (hub)")
    terminal.keys("6")
    await wait_for("dcn0")
    terminal.keys("Enter")
    screen = await wait_for("Heartbeat")
    assert "Site  esc: back" in screen and "dcn0  online" in screen
    assert "Stores (1)" in screen and "Assignments" in screen and "free of" in screen
    assert not controls(screen)
    terminal.keys("Escape")
    await wait_for("Quit")
    terminal.keys("5")
    await wait_for("serving the Image API")
    terminal.keys("Enter")
    screen = await wait_for("Message")
    assert "Event  esc: back" in screen and "Seq" in screen and "Level" in screen
    terminal.keys("Escape")
    await wait_for("Quit")
    hub.stop()
    screen = await wait_for("STALE, data from")
    assert "Cannot reach the daemon" in screen and not controls(screen)
    terminal.keys("Enter")
    screen = await wait_for("⚠ STALE, the daemon does not answer: data from")
    assert "Event  esc: back" in screen
    terminal.keys("Escape")
    await wait_for("Quit")
    terminal.keys("q")
    assert await asyncio.to_thread(terminal.exit_status) == 0
