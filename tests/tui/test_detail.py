"""Enter opens the full-screen detail of an image or a task (Esc back), from a real daemon:
every property (long values wrapped), each store's copy with its state, the image's tasks
with their full messages."""

from __future__ import annotations

import io
import os
from typing import Any

from rich.console import Console

from tests.conftest import Daemon
from tests.tui.conftest import SiteApi, open_images, socket_config, wait_until
from tui.app import make_app
from tui.dialogs.detail import DetailScreen

LONG = "a long note " * 30  # 360 characters: several lines at 80 columns


def body_lines(app: Any, width: int = 78) -> list[str]:
    """The detail's content as drawn at `width` (all of it, not only what is scrolled into view)."""
    screen = app.screen
    assert isinstance(screen, DetailScreen), screen
    console = Console(file=io.StringIO(), width=width, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(screen.body.content)
    return [line.rstrip() for line in capture.get().split("\n")]


def shows(app: Any, *texts: str) -> bool:
    if not isinstance(app.screen, DetailScreen):
        return False
    joined = "\n".join(body_lines(app))
    return all(t in joined for t in texts)


async def test_enter_on_an_image_shows_everything_about_it_and_esc_goes_back(site: Daemon, site_api: SiteApi) -> None:
    image = await site_api.create("detailed", os.urandom(4096), note=LONG.strip())
    await site_api.copy(image["id"], "fast")
    (task,) = await site_api.wait_tasks_done(image["id"])
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await open_images(app, pilot, 1)
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        await wait_until(pilot, lambda: shows(app, "Stores and locations", task["id"]), what="the detail loaded")
        lines = body_lines(app)
        joined = "\n".join(lines)
        assert all(len(line) <= 78 for line in lines)
        # Every property, the long one whole (wrapped over several lines).
        assert " ".join(LONG.split()) in " ".join(joined.split())
        assert sum(1 for line in lines if "a long note" in line) >= 4
        for key in ("checksum", "container_format", "disk_format", "os_hash_value", "visibility", "created_at"):
            assert any(line.startswith(key) for line in lines), key
        # Each store's copy, its state and where it is.
        local = next(line for line in lines if line.startswith("local "))
        fast = next(line for line in lines if line.startswith("fast "))
        assert "active" in local and "active" in fast and "file://" in fast
        # The image's task with its method and state.
        assert "copy-image → fast" in joined and "success" in joined
        # Longer than the screen: it scrolls.
        scroll = app.screen.query_one("#detail-scroll")
        assert scroll.max_scroll_y > 0
        await pilot.press("j", "j", "j")
        assert scroll.scroll_y == 3
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailScreen)
        assert app.active_pane == "images"


async def test_enter_on_a_task_shows_its_full_message(site: Daemon, site_api: SiteApi) -> None:
    data = await site_api.create("copied", os.urandom(2048))
    await site_api.copy(data["id"], "fast")
    (task,) = await site_api.wait_tasks_done(data["id"])
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("3")
        await wait_until(pilot, lambda: app.queues.table.row_count == 1, what="the task row")
        await pilot.press("enter")
        assert isinstance(app.screen, DetailScreen)
        assert shows(app, "copy-image → fast", "copied", task["id"], "Properties", "input")
        await pilot.press("escape")
        assert app.active_pane == "queues" and not isinstance(app.screen, DetailScreen)
