"""Every string from the daemon is plain text in the TUI: markup in an image name shows as typed
(`[/x]` used to end edge-tui with a traceback and exit 0, `[b]..[/b]` to style the name), control
characters show as escapes (`\\x1b`), never reaching the terminal; a view that cannot show an
answer does not end the app; a crash exits non-zero; keys typed ahead cannot confirm a delete.

Names with brackets go in through the daemon's API. Control characters go straight into the
running daemon's catalog, as a catalog written before the daemon refused them (or mirrored from
a Glance hub that allows them) holds them: the TUI must not trust the daemon to have refused them."""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
import subprocess
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual import events
from textual.message import Message
from textual.notifications import Notify
from textual.widgets import Input, Static

from tests.conftest import VENV_BIN, Daemon
from tests.tui.conftest import HubAndEdge, MiB, SiteApi, confirm, open_images, socket_config, wait_until
from tui.app import ApplianceTui, make_app
from tui.dialogs import confirm as confirm_module
from tui.dialogs.confirm import ARM_SECONDS, ConfirmScreen
from tui.dialogs.detail import DetailScreen
from tui.display import plain, visible
from tui.messages import ImageDeleted, ImagesLoaded
from tui.panes.images import ImageTable
from tui.widgets.contained import NOTICE

CLOSE = "[/x]"  # an unmatched closing tag: MarkupError while drawing
BOLD = "[b]bold[/b]"  # would render as a bold "bold"
CLEAR = "\x1b[2J\x1b[31mred"  # clear the terminal, then red
MIXED = "\x9b31m\x7f\u202eexe.txt\x07"  # C1 CSI, DEL, a bidi override, BEL
PROP_KEY = "os_[/x]\x1b]0;pwned\x07"  # an OSC sequence: sets the terminal's title
PROP_VALUE = "\x1b[2J[b]v[/b]"
TASK_MESSAGE = "[/x] \x1b[31mfailed\x9b"


def catalog(daemon: Daemon) -> sqlite3.Connection:
    return sqlite3.connect(daemon.state_dir / "catalog.sqlite", timeout=10)


def write_catalog(daemon: Daemon, sql: str, *args: Any) -> None:
    with catalog(daemon) as db:
        assert db.execute(sql, args).rowcount == 1, sql


def controls(text: str) -> set[str]:
    """The characters in `text` that a terminal would act on or that hide what follows."""
    return {c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c != "\n"}


def screen_text(app: Any) -> str:
    """What the app draws now (the active screen, every line), as the driver would write it,
    without the styling sequences Textual adds around it."""
    update = app.screen._compositor.render_full_update()
    return "\n".join("".join(seg.text for strip in line for seg in strip if not seg.control) for line in update.strips)


async def on_screen(pilot: Any, *texts: str) -> None:
    """Wait until the screen shows each of `texts` (the next paint may still be pending), then
    check that no control character is drawn."""
    await wait_until(pilot, lambda: all(t in screen_text(pilot.app) for t in texts), what="%r on the screen" % (texts,))
    assert not controls(screen_text(pilot.app))


def text_of(app: Any, selector: str) -> str:
    content = app.screen.query_one(selector, Static).content
    return getattr(content, "plain", str(content))


def test_visible_escapes_every_control_character_and_nothing_else() -> None:
    assert visible("cirros-0.6.2 é 中 [b]x[/b] C:\\images") == "cirros-0.6.2 é 中 [b]x[/b] C:\\images"
    assert visible(CLEAR) == "\\x1b[2J\\x1b[31mred"
    assert visible(MIXED) == "\\x9b31m\\x7f\\u202eexe.txt\\x07"
    assert visible("a\nb\tc\x00\u2028\u00a0\U000e0001") == "a\\x0ab\\x09c\\x00\\u2028\\xa0\\U000e0001"
    assert visible(visible(CLEAR)) == visible(CLEAR)  # escapes are printable: applying twice is harmless
    assert visible(12) == "12"
    for text in (CLOSE, BOLD, CLEAR, MIXED, PROP_KEY):
        rendered = plain(text)
        assert rendered.plain == visible(text) and not rendered.spans  # no markup, no style from the text
        assert not controls(rendered.plain)


@pytest.fixture
async def hostile_site(site: Daemon, site_api: SiteApi) -> dict[str, str]:
    """Images named CLOSE, BOLD, CLEAR and MIXED; CLEAR's image has a hostile property and a
    copy task whose message is hostile. Returns name → image id."""
    ids = {}
    for name in (CLOSE, BOLD, "clear", "mixed"):
        ids[name] = (await site_api.create(name, os.urandom(1024)))["id"]
    await site_api.copy(ids["clear"], "fast")
    await site_api.wait_tasks_done(ids["clear"])
    write_catalog(site, "UPDATE images SET name = ? WHERE id = ?", CLEAR, ids["clear"])
    write_catalog(site, "UPDATE images SET name = ? WHERE id = ?", MIXED, ids["mixed"])
    write_catalog(
        site,
        "INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)",
        ids["clear"],
        PROP_KEY,
        PROP_VALUE,
    )
    write_catalog(site, "UPDATE tasks SET message = ? WHERE image_id = ?", TASK_MESSAGE, ids["clear"])
    shown = {i["name"]: i["id"] for i in await site_api.images()}  # the daemon serves them as stored
    assert shown == {CLOSE: ids[CLOSE], BOLD: ids[BOLD], CLEAR: ids["clear"], MIXED: ids["mixed"]}
    return shown


async def test_hostile_names_properties_and_messages_show_literally(
    site: Daemon, site_api: SiteApi, hostile_site: dict[str, str]
) -> None:
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(size=(120, 40), message_hook=seen.append, notifications=True) as pilot:
        table = await open_images(app, pilot, 4)
        for name, image_id in hostile_site.items():
            assert table.cell_text(image_id, "name") == visible(name)
        # The highlighted row is the first by name: CLEAR (ESC sorts before "[").
        detail = app.query_one("#image-detail", Static)
        await wait_until(pilot, lambda: "Locations\n  local" in detail.content.plain, what="CLEAR's detail")
        shown = detail.content.plain
        assert shown.startswith("\\x1b[2J\\x1b[31mred  %s" % hostile_site[CLEAR])
        assert "\\x1b]0;pwned\\x07 = \\x1b[2J[b]v[/b]" in shown and "os_[/x]" in shown
        await on_screen(pilot, CLOSE, BOLD, "\\x1b[2J\\x1b[31mred", "\\x9b31m\\x7f\\u202eexe")
        # Queues: the task's message in its row and in the detail.
        await pilot.press("3")
        tasks = app.queues.table
        await wait_until(pilot, lambda: tasks.row_count == 1, what="the copy task")
        assert tasks.cell_text(tasks.keys[0], "message") == "[/x] \\x1b[31mfailed\\x9b"
        await wait_until(pilot, lambda: "failed\\x9b" in text_of(app, "#task-detail"), what="task detail")
        await on_screen(pilot, "[/x] \\x1b[31mfailed\\x9b")
        # The delete confirmation and the toast after it.
        await pilot.press("2")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        question = text_of(app, "#dialog-question")
        assert question.startswith("Delete image \\x1b[2J\\x1b[31mred (%s)?" % hostile_site[CLEAR])
        await on_screen(pilot, "\\x1b[2J\\x1b[31mred")
        await pilot.press("n")
        await pilot.press("j")  # the next by name (code points): CLOSE
        target = app.images_pane.selected_image()
        assert target is not None and target["name"] == CLOSE
        await pilot.press("d")
        await confirm(pilot)
        await wait_until(pilot, lambda: any(isinstance(m, ImageDeleted) for m in seen), what="ImageDeleted")
        toasts = [m.notification for m in seen if isinstance(m, Notify)]
        said = "Deleted image %s." % visible(target["name"])
        assert any(t.message == said and not t.markup for t in toasts), [t.message for t in toasts]
        await on_screen(pilot, said)  # the toast, as typed
        await site_api.call("GET", "/v2/images/%s" % target["id"], 404)
        await wait_until(pilot, lambda: table.row_count == 3, what="row gone")
        await on_screen(pilot)
        assert app.is_running
    assert app.return_code in (None, 0)


async def test_events_and_a_hub_with_hostile_site_text(daemon_factory: Any, tmp_path: Path) -> None:
    """A hub: an edge registers with markup in its version (a log line, so an event, carries
    it), and its catalog record gets control characters; Sites, Overview and Events show them."""
    import aiohttp

    from tests.conftest import write_toml

    hub = daemon_factory(
        "hub",
        write_toml(
            tmp_path / "hub.toml",
            {
                "site": {"name": "central", "role": "hub"},
                "stores": {"default": "central", "central": {"path": "images"}},
            },
        ),
    )
    async with aiohttp.ClientSession() as session:
        api = SiteApi(hub, session)
        await api.call(
            "POST",
            "/v2/edge/sites",
            200,
            json={"name": "dcn9", "version": "[/x] [b]9.9[/b]", "free_bytes": 1 << 30, "total_bytes": 2 << 30},
        )
    write_catalog(hub, "UPDATE sites SET api_url = ? WHERE name = ?", "http://x/\x1b[2J\x1b]0;t\x07", "dcn9")
    app = make_app(socket_config(hub))
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_until(pilot, lambda: (app.status.get("site") or {}).get("role") == "hub", what="the hub's status")
        await pilot.press("6")  # Sites: a hub's screen, offered once the status says hub
        assert app.active_pane == "sites"
        sites = app.sites_pane.table
        await wait_until(pilot, lambda: sites.row_count == 1, what="the site")
        assert sites.cell_text("dcn9", "version") == "[/x] [b]9.9[/b]"
        await wait_until(
            pilot, lambda: "api http://x/\\x1b[2J\\x1b]0;t\\x07" in text_of(app, "#site-detail"), what="detail"
        )
        await on_screen(pilot, "[/x] [b]9.9[/b]")
        await pilot.press("5")
        log = app.events_pane.log_widget
        await wait_until(
            pilot,
            lambda: any("registered (version [/x] [b]9.9[/b]" in line.text for line in log.lines),
            what="the registration event",
        )
        await on_screen(pilot, "registered (version [/x] [b]9.9[/b]")
        assert app.is_running


async def test_an_edge_mirroring_a_hostile_hub_image(hub_and_edge: HubAndEdge) -> None:
    """The issue's case: an image named with markup at the hub ended edge-tui on every edge that
    mirrored it. The edge's Images and Cache screens show it as typed."""
    name = "[/x] [b]hub[/b]"
    image = await hub_and_edge.hub_image(name, MiB)
    app = make_app(hub_and_edge.edge_tui())
    async with app.run_test(size=(120, 40)) as pilot:
        table = await open_images(app, pilot, 1)
        assert table.cell_text(image["id"], "name") == name
        await on_screen(pilot, name)
        await pilot.press("p")  # cache it: the Cache screen names it
        await pilot.press("4")
        entries = app.cache_pane.entry_table
        await wait_until(pilot, lambda: image["id"] in entries.keys, what="the cached copy")
        assert entries.cell_text(image["id"], "image") == name
        await on_screen(pilot, name)
        assert app.is_running


async def test_a_view_that_cannot_show_an_answer_does_not_end_the_app(
    site: Daemon, site_api: SiteApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rendering error (here a cell renderable that raises while drawing, and a detail that
    raises while being built) stays in its widget; the app goes on and says so once."""
    image = await site_api.create("fine", os.urandom(1024))

    class Broken:
        def __rich_console__(self, console: Any, options: Any) -> Any:
            raise RuntimeError("cannot draw")

    monkeypatch.setattr(ImageTable, "render_value", lambda self, column, value: Broken() if column == "size" else value)
    monkeypatch.setattr("tui.panes.images.detail_text", lambda *a: (_ for _ in ()).throw(RuntimeError("no detail")))
    seen: list[Message] = []
    app = make_app(socket_config(site))
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await open_images(app, pilot, 1)
        await wait_until(pilot, lambda: NOTICE in screen_text(app), what="the table's notice")
        await wait_until(pilot, lambda: any(isinstance(m, ImagesLoaded) for m in seen))
        for _ in range(3):  # later polls fail the same way: one toast, no exit
            await pilot.press("r")
            await pilot.pause(0.3)
        errors = [m.notification for m in seen if isinstance(m, Notify) and m.notification.severity == "error"]
        assert len(errors) == 1 and "no detail" in errors[0].message, [e.message for e in errors]
        await pilot.press("1")  # the other screens still work
        assert "edge-test" in text_of(app, "#overview-site")
        assert app.is_running
        await site_api.image(image["id"])
    assert app.return_code in (None, 0)


# -- type-ahead ---------------------------------------------------------------------------------


def burst(app: Any, *keys: tuple[str, str]) -> None:
    """Keys as a terminal delivers a quick typist's burst: all queued before the first is handled
    (Pilot.press waits for the app to go idle between keys, which hides the race)."""
    for key, char in keys:
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)


@pytest.fixture
async def image(site_api: SiteApi) -> dict[str, Any]:
    return await site_api.create("precious", os.urandom(1024))


async def test_keys_typed_after_slash_go_to_the_filter_not_to_delete(
    site: Daemon, site_api: SiteApi, image: dict[str, Any]
) -> None:
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await open_images(app, pilot, 1)
        burst(app, ("slash", "/"), ("d", "d"), ("y", "y"), ("slash", "/"))
        await pilot.pause(ARM_SECONDS + 0.5)
        await app.workers.wait_for_complete()
        assert (await site_api.image(image["id"]))["status"] == "active"  # (was: 404, deleted)
        assert not isinstance(app.screen, ConfirmScreen)
        box = app.query_one("#image-filter", Input)
        assert app.focused is box and box.value == "dy/"  # in the filter, "/" is typed too


async def test_a_confirmation_ignores_yes_typed_ahead(site: Daemon, site_api: SiteApi, image: dict[str, Any]) -> None:
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await open_images(app, pilot, 1)
        burst(app, ("d", "d"), ("y", "y"), ("enter", "\r"), ("y", "y"))
        # However late a loaded machine handles the burst, its keys arrived before the question.
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the confirmation")
        await pilot.pause(ARM_SECONDS + 0.3)
        await app.workers.wait_for_complete()
        assert isinstance(app.screen, ConfirmScreen)  # still asking: Cancel has focus, y is not armed
        assert (await site_api.image(image["id"]))["status"] == "active"
        await confirm(pilot)  # a "y" once the question was there to read does delete
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await app.workers.wait_for_complete()
    await site_api.call("GET", "/v2/images/%s" % image["id"], 404)


async def test_enter_typed_ahead_is_ignored_once_the_dialog_has_focus(
    site: Daemon, site_api: SiteApi, image: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order of the same burst: the dialog mounted (Cancel focused) before enter arrived.
    The outcome must not depend on which won the race."""
    # The keys must arrive within the arming window of the dialog being drawn; this test's own
    # turn on a loaded machine can come later than 0.5 s after that, so the window is widened.
    monkeypatch.setattr(confirm_module, "ARM_SECONDS", 60.0)
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("d")

        def cancel_focused() -> bool:
            return isinstance(app.screen, ConfirmScreen) and app.focused is not None and app.focused.id == "no"

        await wait_until(pilot, cancel_focused, what="the confirmation, Cancel focused")
        burst(app, ("enter", "\r"), ("y", "y"))
        await pilot.pause(0.2)
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
    assert (await site_api.image(image["id"]))["status"] == "active"


# -- the real edge-tui in a terminal -------------------------------------------------------------


class Tmux:
    """One tmux server of our own (its own socket), one 80x24 window running a command; the
    window stays after the command ends (its last screen can be read) and the shell around the
    command writes its exit status to a file."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g status off\n")
        self.conf = str(conf)
        self.status_file = tmp_path / "exit-status"
        self.cwd = str(tmp_path)

    def tmux(self, *args: str) -> str:
        tool = shutil.which("tmux")
        assert tool, "tmux is required (make test installs it)"
        return subprocess.run(
            [tool, "-S", self.socket, "-f", self.conf, *args], check=True, capture_output=True, text=True, timeout=10
        ).stdout

    def start(self, command: list[str], env: dict[str, str]) -> None:
        settings = [arg for key, value in env.items() for arg in ("-e", "%s=%s" % (key, value))]
        line = "%s; echo $? > %s" % (
            " ".join(shlex.quote(part) for part in command),
            shlex.quote(str(self.status_file)),
        )
        self.tmux("new-session", "-d", "-x", "80", "-y", "24", "-c", self.cwd, *settings, line)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "0")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "0", *keys)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if text in screen:
                return screen
            assert time.monotonic() < deadline, "%r not on the screen:\n%s" % (text, screen)
            time.sleep(0.1)

    def exit_status(self, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while not self.status_file.exists() or not self.status_file.read_text().strip():
            assert time.monotonic() < deadline, "the command did not end:\n%s" % self.screen()
            time.sleep(0.1)
        return int(self.status_file.read_text())

    def close(self) -> None:
        subprocess.run(
            [shutil.which("tmux") or "tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=10
        )


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    term = Tmux(tmp_path)
    yield term
    term.close()


def edge_tui_env(daemon: Daemon) -> dict[str, str]:
    return {"EDGE_APPLIANCE_SOCKET": str(daemon.state_dir / "appliance.sock"), "TERM": "xterm-256color"}


async def test_edge_tui_in_a_terminal_shows_hostile_names_and_keeps_the_screen(
    site: Daemon, tmux: Tmux, hostile_site: dict[str, str]
) -> None:
    tmux.start([str(VENV_BIN / "edge-tui")], edge_tui_env(site))
    tmux.wait_for("edge-test")
    tmux.keys("2")
    screen = tmux.wait_for("[b]bold[/b]")
    lines = screen.split("\n")
    assert "Edge Image Appliance" in lines[0]  # the header is still at the top: nothing cleared the screen
    assert "[/x]" in screen and "\\x9b31m\\x7f\\u2…" in screen  # (the Name column cuts it at 15 cells, with "…")
    assert "\\x1b[2J\\x1b[31mred  %s" % hostile_site[CLEAR] in screen  # the highlighted image's detail
    assert not controls(screen)
    assert len(lines) >= 24 and "Quit" in lines[23]  # and the footer at the bottom
    # Enter: the highlighted image's full-screen detail, its property key escaped, its task's message too.
    tmux.keys("Enter")
    screen = tmux.wait_for("os_glance_failed_import")
    assert "os_[/x]\\x1b]0;pwned\\x07" in screen and "Edge Image Appliance" not in screen
    assert not controls(screen)
    tmux.keys("G")
    screen = tmux.wait_for("[/x] \\x1b[31mfailed\\x9b")  # the task, at the end
    assert "Stores and locations" in screen and not controls(screen)
    tmux.keys("Escape")
    screen = tmux.wait_for("Quit")
    assert "os_glance_failed_import" not in screen and "[b]bold[/b]" in screen
    tmux.keys("q")
    assert tmux.exit_status() == 0


def test_edge_tui_that_crashes_exits_non_zero(site: Daemon, tmux: Tmux) -> None:
    """A crash while running (here: a fault injected into the help key's action) prints
    Textual's traceback and the process exits 1, not 0 (as it did after the `[/x]` traceback), so
    systemd, scripts and operators see it failed."""
    crash = (
        "import sys; import tui.app as a; "
        "a.ApplianceTui.action_help = lambda self: 1 / 0; "
        "from tui.__main__ import main; sys.exit(main())"
    )
    tmux.start([str(VENV_BIN / "python"), "-c", crash], edge_tui_env(site))
    tmux.wait_for("edge-test")
    tmux.keys("?")
    assert tmux.exit_status(timeout=20) == 1
    assert "ZeroDivisionError" in tmux.screen()


async def test_a_key_that_arrives_while_the_app_shuts_down_is_dropped(site: Daemon) -> None:
    """Keys typed as the operator quits can reach the app after its screens are gone; Textual's
    own handler would end the app on a ScreenStackError (seen as a flaky teardown)."""

    class ShutDown:  # the app as it is once its screens are gone
        def __init__(self) -> None:
            self._screen_stack: list[Any] = []

    late = events.Key("y", "y")
    await ApplianceTui._on_key(ShutDown(), late)  # type: ignore[arg-type]
    assert late._no_default_action  # App._on_key is not reached
    app = make_app(socket_config(site))
    async with app.run_test() as pilot:
        await pilot.pause()
        pressed = events.Key("y", "y")
        await app._on_key(pressed)  # with screens, the key goes on to Textual's bindings
        assert not pressed._no_default_action


async def test_an_event_naming_a_hostile_image_shows_literally_in_its_detail(
    site: Daemon, hostile_site: dict[str, str]
) -> None:
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await open_images(app, pilot, 4)  # the names the events' image ids get
        await pilot.press("5")
        pane = app.events_pane
        clear_id = hostile_site[CLEAR]
        await wait_until(pilot, lambda: any(e and clear_id in e["message"] for e in pane.events), what="its event")
        for _ in range(len(pane.events)):  # the cursor up to the newest event naming it
            if pane.chosen is not None and clear_id in pane.chosen["message"]:
                break
            await pilot.press("k")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await on_screen(pilot, "Images it names", "%s (%s)" % (clear_id, visible(CLEAR)))
