"""A token without the admin role (a project member): the daemon refuses it its status, events,
cache and sites, not its project's images and tasks. The TUI shows those, marks the admin-only
screens as such with the daemon's refusal, and raises no "not authorized" banner."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from textual.widgets import Static

from tests.conftest import Daemon, write_toml
from tests.tui.conftest import REFRESH, TWO_STORES, wait_until
from tui.app import make_app
from tui.config import TuiConfig
from tui.panes.images import ImageTable

ADMIN = "tui-admin-token"
MEMBER = "tui-member-token"
TOKENS = [
    {"token": ADMIN, "user": "root", "project": "ops", "roles": ["admin"]},
    {"token": MEMBER, "user": "alice", "project": "proj-a", "roles": ["member", "reader"]},
]


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
        await pilot.press("4")
        assert "Admin only" in text_of(app, "#cache-summary")
        await pilot.press("5")
        assert app.query_one("#event-level", Static).display
        assert "Admin only" in text_of(app, "#event-level")
        await pilot.press("3")
        await wait_until(pilot, lambda: "No import tasks yet" in text_of(app, "#task-detail"), what="tasks")
        assert not app.query_one("#banner", Static).display  # nothing failed: the token is fine

    # The admin token on the same daemon: every image, the status, no admin-only marks.
    app = make_app(TuiConfig(url=daemon.url, token=ADMIN, refresh_seconds=REFRESH))
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: "edge-test" in text_of(app, "#overview-site"), what="overview")
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 2, what="both images")
        assert "Admin only" not in text_of(app, "#cache-summary")
