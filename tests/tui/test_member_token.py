"""A token without the admin role (a project member): the daemon refuses it its status, events,
cache and sites, not its project's images and tasks. The TUI shows those, marks the admin-only
screens as such with the daemon's refusal and who the token is (GET /v2/edge/whoami), says who in
the header, and raises no "not authorized" banner. At a hub, Sites is shown marked admin-only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from textual.widgets import Static

from tests.conftest import Daemon, write_toml
from tests.tui.conftest import REFRESH, TWO_STORES, wait_until
from tests.tui.test_connection import banner, banner_text
from tui.app import make_app
from tui.config import TuiConfig
from tui.panes.images import ImageTable

ADMIN = "tui-admin-token"
MEMBER = "tui-member-token"
TOKENS = [
    {"token": ADMIN, "user": "root", "project": "ops", "roles": ["admin"]},
    {"token": MEMBER, "user": "alice", "project": "proj-a", "roles": ["member", "reader"]},
]
WHO = "user alice · project proj-a · roles: member, reader"
HUB = {
    "site": {"name": "central", "role": "hub"},
    "stores": {"default": "central", "central": {"path": "images"}},
    "auth": {"tokens": TOKENS},
}


def text_of(app: Any, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return str(getattr(content, "plain", content))


async def create(daemon: Daemon, token: str, name: str) -> None:
    async with aiohttp.ClientSession() as session:
        body = {"name": name, "disk_format": "raw", "container_format": "bare"}
        async with session.post(daemon.url + "/v2/images", json=body, headers={"X-Auth-Token": token}) as resp:
            assert resp.status == 201, await resp.text()


async def test_a_member_token_sees_its_images_and_admin_only_screens_say_so(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    config = {"site": {"name": "edge-test"}, "stores": TWO_STORES, "auth": {"tokens": TOKENS}}
    daemon = daemon_factory("site", write_toml(tmp_path / "site.toml", config))
    await create(daemon, MEMBER, "alice-image")
    await create(daemon, ADMIN, "ops-private")

    app = make_app(TuiConfig(url=daemon.url, token=MEMBER, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 1, what="the member's image")
        assert table.cell_text(table.keys[0], "name") == "alice-image"  # not the other project's
        await pilot.press("1")
        await wait_until(pilot, lambda: "Admin only" in text_of(app, "#overview-site"), what="overview marked")
        said = text_of(app, "#overview-site")
        assert "need the admin role, which this token does not have" in said, said
        assert "edge:status" in said  # the daemon's refusal, naming its rule
        assert "This token: %s" % WHO in said, said
        assert app.sub_title == "edge-test (edge) · %s · %s" % (WHO, daemon.url), app.sub_title
        await pilot.press("4")
        assert "Admin only" in text_of(app, "#cache-summary")
        await pilot.press("5")
        assert app.query_one("#event-level", Static).display
        assert "Admin only" in text_of(app, "#event-level")
        await pilot.press("3")
        await wait_until(pilot, lambda: "No import tasks yet" in text_of(app, "#task-detail"), what="tasks")
        assert not app.query_one("#banner", Static).display  # nothing failed: the token is fine
        await pilot.press("6")  # an edge has no Sites screen
        assert app.active_pane == "queues"

    # The admin token on the same daemon: every image, the status, no admin-only marks.
    app = make_app(TuiConfig(url=daemon.url, token=ADMIN, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "edge-test" in text_of(app, "#overview-site"), what="overview")
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 2, what="both images")
        assert "Admin only" not in text_of(app, "#cache-summary")


async def test_at_a_hub_a_member_token_sees_sites_marked_admin_only(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory("hub", write_toml(tmp_path / "hub.toml", HUB))
    app = make_app(TuiConfig(url=daemon.url, token=MEMBER, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "This token" in text_of(app, "#overview-site"), what="overview marked")
        assert app.sub_title.startswith("central (hub) · %s · " % WHO), app.sub_title
        await pilot.press("6")
        assert app.active_pane == "sites"
        said = text_of(app, "#site-detail")
        assert said.startswith("Admin only: the edge sites registered with this hub need the admin role"), said
        assert "This token: %s" % WHO in said, said
        assert app.sites_pane.table.row_count == 0
        await pilot.pause(REFRESH * 3)  # rounds go on: the mark stays, nothing loads over it
        assert "Admin only" in text_of(app, "#site-detail")
        assert not banner(app).display


async def test_a_member_token_is_current_again_once_the_daemon_answers(
    daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    """The refusal of the status is an answer: the banner of an unreachable daemon goes, and
    nothing is marked stale, though no status ever loads."""
    config = write_toml(tmp_path / "site.toml", {"site": {"name": "edge-test"}, "auth": {"tokens": TOKENS}})
    sock = tmp_path / "site" / "appliance.sock"  # where the daemon will put it
    app = make_app(TuiConfig(socket=str(sock), token=MEMBER, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: banner(app).display, what="banner")
        assert "Cannot reach the daemon" in banner_text(app)
        daemon_factory("site", config)
        await wait_until(pilot, lambda: "This token" in text_of(app, "#overview-site"), what="overview marked")
        await wait_until(pilot, lambda: not banner(app).display, what="banner gone")
        assert "STALE" not in app.sub_title and WHO in app.sub_title, app.sub_title
