"""Reaching the daemon: the banner when it cannot be reached (or refuses us), automatic
reconnection, and the edge-tui command line."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from textual.message import Message
from textual.widgets import Static

from tests.conftest import Daemon
from tests.tui.conftest import REFRESH, SiteApi, site_config, wait_until
from tui.__main__ import config_from_args
from tui.app import make_app
from tui.config import SYSTEM_SOCKET, TuiConfig, default_socket
from tui.messages import ConnectionFailed, StatusLoaded


def banner(app: object) -> Static:
    return app.query_one("#banner", Static)  # type: ignore[attr-defined]


def banner_text(app: object) -> str:
    content = banner(app).content
    return getattr(content, "plain", str(content))


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_banner_while_the_daemon_is_down_then_reconnects(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    sock = tmp_path / "site" / "appliance.sock"  # where the daemon will put it
    seen: list[Message] = []
    app = make_app(TuiConfig(socket=str(sock), refresh_seconds=REFRESH))
    async with app.run_test(message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert "Cannot reach the daemon at unix:%s" % sock in banner_text(app)
        assert "retrying every 0.25 s" in banner_text(app)
        assert any(isinstance(m, ConnectionFailed) and not m.reachable for m in seen)
        daemon_factory("site", site_config(tmp_path))
        await wait_until(pilot, lambda: not banner(app).display, within=20, what="banner gone")
        await wait_until(
            pilot, lambda: "edge-test" in str(app.query_one("#overview-site", Static).content), what="overview"
        )
        assert any(isinstance(m, StatusLoaded) for m in seen)


async def test_banner_for_a_dead_port_and_for_a_refused_token(site: Daemon, site_api: SiteApi) -> None:
    app = make_app(TuiConfig(url="http://127.0.0.1:%d" % dead_port(), refresh_seconds=REFRESH))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert "Cannot reach the daemon at http://127.0.0.1:" in banner_text(app)
    # Reachable, but without a token over TCP the daemon says no: its message is shown.
    app = make_app(TuiConfig(url=site.url, refresh_seconds=REFRESH))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert (
            "Not authorized by the daemon at %s: Authentication required: send an X-Auth-Token header" % site.url
            in (banner_text(app))
        )
    app = make_app(TuiConfig(url=site.url, token="wrong", refresh_seconds=REFRESH))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert "The token is not valid" in banner_text(app)


async def test_the_banner_returns_when_the_daemon_stops(site: Daemon) -> None:
    app = make_app(TuiConfig(socket=str(site.state_dir / "appliance.sock"), refresh_seconds=REFRESH))
    async with app.run_test() as pilot:
        await wait_until(
            pilot, lambda: "edge-test" in str(app.query_one("#overview-site", Static).content), what="overview"
        )
        assert not banner(app).display
        site.stop()
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert "Cannot reach the daemon" in banner_text(app)


def test_command_line(tmp_path: Path, monkeypatch: object) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    config = config_from_args(["--url", "http://10.0.0.5:9292", "--token-file", str(token_file), "--read-only"])
    assert (config.url, config.socket, config.token, config.read_only) == ("http://10.0.0.5:9292", None, "s3cret", True)
    assert config_from_args(["--url", "unix:/run/x.sock"]).socket == "/run/x.sock"
    assert config_from_args(["--socket", "/run/y.sock", "--token", "t"]).token == "t"
    assert config_from_args(["--refresh", "3"]).refresh_seconds == 3


def test_default_socket(tmp_path: Path) -> None:
    assert default_socket({"EDGE_APPLIANCE_SOCKET": "/x/y.sock"}, tmp_path) == "/x/y.sock"
    assert default_socket({}, tmp_path) == str(SYSTEM_SOCKET)
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "appliance.sock").touch()
    assert default_socket({}, tmp_path) == str(tmp_path / "var" / "appliance.sock")


async def test_a_wrong_token_says_not_authorized_at_once(site: Daemon) -> None:
    """Not "Loading images…" for ever: every screen waiting for data says the token is refused."""
    seen: list[Message] = []
    app = make_app(TuiConfig(url=site.url, token="wrong", refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        failed = next(m for m in seen if isinstance(m, ConnectionFailed))
        assert failed.status == 401
        assert banner_text(app).startswith("⛔ Not authorized by the daemon at %s: " % site.url), banner_text(app)
        assert "The token is not valid" in banner_text(app)
        await pilot.press("2")
        detail = app.query_one("#image-detail", Static).content
        assert "Not authorized (401): the daemon refuses this token" in getattr(detail, "plain", str(detail))
        await pilot.press("3")
        tasks = app.query_one("#task-detail", Static).content
        assert "Not authorized (401)" in getattr(tasks, "plain", str(tasks))
