"""Keys and navigation against a real daemon: number keys, the command palette, esc, help,
j/k, --read-only, and edge-tui itself in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time
from typing import Any

from textual.command import CommandList, CommandPalette
from textual.widgets import Static, TabbedContent

from tests.conftest import VENV_BIN, Daemon
from tests.tui.conftest import HubAndEdge, SiteApi, socket_config, wait_until
from tests.tui.test_hostile_text import screen_text
from tui.app import ApplianceTui, make_app
from tui.dialogs.choose import ManyChoiceScreen, StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.dialogs.detail import DetailScreen
from tui.dialogs.edit_image import EditImageScreen
from tui.dialogs.help import KEYS, HelpScreen
from tui.panes.events import EventLog
from tui.panes.images import ImageTable
from tui.session import cache_enabled
from tui.widgets.keyed_table import KeyedTable

KEY_NAMES = {"question_mark": "?", "slash": "/", "escape": "esc", "down": "↓", "up": "↑"}


def help_text(app: Any) -> str:
    table = app.screen.query_one("#help-keys", Static).content
    return "\n".join("%s %s" % (k, t) for k, t in zip(table.columns[0].cells, table.columns[1].cells, strict=True))


async def test_number_keys_palette_escape_and_jk(site: Daemon, site_api: SiteApi) -> None:
    for name in ("a", "b", "c"):
        await site_api.create(name)
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        for key, pane in (("2", "images"), ("3", "queues"), ("4", "cache"), ("5", "events"), ("1", "overview")):
            await pilot.press(key)
            assert app.active_pane == pane
        # Sites (6) is a hub's screen: not on this edge, nor its tab.
        await pilot.press("6")
        assert app.active_pane == "overview"
        assert app.query_one(TabbedContent).get_tab("sites").display is False
        # The command palette switches screens by name.
        await pilot.press("ctrl+p")
        assert isinstance(app.screen, CommandPalette)
        await pilot.press(*"queues")
        await wait_until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0, what="palette hits")
        await pilot.press("enter")
        await wait_until(pilot, lambda: app.active_pane == "queues", what="queues via palette")
        # esc goes back to where we came from, step by step.
        await pilot.press("4", "2")
        await pilot.press("escape")
        assert app.active_pane == "cache"
        await pilot.press("escape")
        assert app.active_pane == "queues"
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 3)
        assert app.focused is table
        await pilot.press("j", "j")
        assert table.cursor_row == 2
        await pilot.press("k")
        assert table.cursor_row == 1
        await pilot.press("down")
        assert table.cursor_row == 2
        # Mouse: click the Events tab.
        await pilot.click("#--content-tab-events")
        assert app.active_pane == "events"


async def test_help_lists_every_key(site: Daemon) -> None:
    app = make_app(socket_config(site))
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        text = help_text(app)
        bindings = [b for b in ApplianceTui.BINDINGS] + list(KeyedTable.BINDINGS)
        # and the keys of the screens and dialogs it opens
        for screen in (DetailScreen, EditImageScreen, StoreChoiceScreen, ManyChoiceScreen, ConfirmScreen):
            bindings += list(screen.BINDINGS)
        bindings += list(EventLog.BINDINGS)
        for binding in bindings:
            for key in binding.key.split(","):  # type: ignore[union-attr]
                shown = KEY_NAMES.get(key, key)
                assert any(shown in keys.split() for keys, _, _ in KEYS), key
        for words in ("ctrl+p", "ctrl+q", "y / n", "mouse"):
            assert words in text
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_read_only_hides_every_action(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("untouchable", os.urandom(1024))
    app = make_app(socket_config(site, read_only=True))
    async with app.run_test() as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1)
        shown = {b.binding.action for b in app.screen.active_bindings.values()}
        assert {"filter", "help"} <= shown
        assert not shown & {"import_url", "copy_to_store", "delete_from_store", "delete_image"}
        for key in ("d", "x", "c", "n"):
            await pilot.press(key)
            assert app.screen is app.screen_stack[0], key  # no dialog opened
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["stores"] == "local"
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Show Images" in titles and "Delete image" not in titles and "Import image from URL" not in titles
        await pilot.press("question_mark")
        assert "delete" not in help_text(app).lower()
        assert "read-only" in app.sub_title
    # Without --read-only the same keys are there.
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1)
        shown = {b.binding.action for b in app.screen.active_bindings.values()}
        assert {"import_url", "copy_to_store", "delete_from_store", "delete_image"} <= shown
        assert "cache_image" not in shown  # this site has no cache
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")


def test_edge_tui_runs_in_a_terminal_and_quits_with_q(site: Daemon) -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "EDGE_APPLIANCE_SOCKET": str(site.state_dir / "appliance.sock")}
    proc = subprocess.Popen(
        [str(VENV_BIN / "edge-tui")], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 20
        while b"edge-test" not in screen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                screen += os.read(master, 65536)
        assert b"edge-test" in screen  # the status arrived over the socket and was drawn
        os.write(master, b"q")
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


async def palette_titles(pilot: Any, typed: str) -> list[str]:
    """Open the command palette, type `typed`, and read the commands it offers; then close it."""
    app = pilot.app
    await pilot.press("ctrl+p")
    assert isinstance(app.screen, CommandPalette)
    await pilot.press(*typed)
    listed = app.screen.query_one(CommandList)
    await wait_until(pilot, lambda: listed.option_count > 0, what="palette hits for %r" % typed)
    await pilot.pause(0.3)  # every provider has answered
    titles = [str(listed.get_option_at_index(i).prompt) for i in range(listed.option_count)]
    await pilot.press("escape")
    return titles


async def test_the_palette_offers_the_shown_screens_actions_and_navigation(site: Daemon, site_api: SiteApi) -> None:
    """From Overview, "Delete image" would delete a row that is not on screen: not offered there."""
    await site_api.create("only")
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.images_pane.loaded, what="the images")
        overview = await palette_titles(pilot, "image")
        assert any("Show Images" in t for t in overview), overview
        assert not any("Delete image" in t or "Copy image" in t or "Import image" in t for t in overview), overview
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1)
        images = await palette_titles(pilot, "image")
        assert any("Delete image" in t for t in images) and any("Import image" in t for t in images), images
        assert not any("cach" in t.lower() for t in images)  # no cache on this site
        await pilot.press("4")
        cache = await palette_titles(pilot, "image")
        assert not any("Delete image" in t for t in cache), cache


async def test_the_images_footer_at_80x24_names_every_image_key(hub_and_edge: HubAndEdge) -> None:
    """At an edge with a cache: p (queue for caching) is in the footer, x says what it deletes,
    and q Quit still fits."""
    await hub_and_edge.edge.create("footer-probe")
    app = make_app(hub_and_edge.edge_tui())
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1)
        await wait_until(pilot, lambda: cache_enabled(app.session.status), what="the site's cache")
        await pilot.pause()
        footer = screen_text(app).split("\n")[-1]
        for words in ("? Help", "/ Filter", "n Import", "c Copy", "x Del copy", "d Delete", "p Cache", "q Quit"):
            assert words in footer, (words, footer)
        assert "Drop" not in footer
