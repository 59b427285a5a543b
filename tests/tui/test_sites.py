"""The TUI on a hub: the Sites screen (6) lists the real edge that registered, places an image
there with copy-image (c), shows which images each site holds, and sees the site go offline."""

from __future__ import annotations

from typing import Any

from textual.message import Message
from textual.widgets import OptionList, Static

from tests.tui.conftest import HubAndEdge, socket_config, wait_until
from tui.app import make_app
from tui.dialogs.choose import StoreChoiceScreen
from tui.messages import CopyStarted, SitesLoaded
from tui.panes.images import ImageTable


def text_of(app: Any, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return getattr(content, "plain", str(content))


async def test_sites_screen_on_a_hub(hub_and_edge: HubAndEdge) -> None:
    link = hub_and_edge
    image = await link.hub_image("placed", 64 * 1024)
    seen: list[Message] = []
    app = make_app(socket_config(link.hub.daemon))
    async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: any(isinstance(m, SitesLoaded) and m.sites for m in seen), what="sites")
        await pilot.pause()
        assert text_of(app, "#overview-hub").startswith("Sites   1 online · 0 offline")
        await pilot.press("6")
        assert app.active_pane == "sites"
        table = app.sites_pane.table
        await wait_until(pilot, lambda: table.keys == ["dcn0"], what="dcn0 row")
        assert table.cell_text("dcn0", "state") == "online"
        assert table.cell_text("dcn0", "version") == "0.1.0"
        assert table.cell_text("dcn0", "seen").endswith("ago")
        assert "%" in table.cell_text("dcn0", "free")
        assert table.cell_text("dcn0", "images") == "0"
        # c on Images offers the edge site as a store (the image is already in central).
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1, what="image row")
        await pilot.press("c")
        assert isinstance(app.screen, StoreChoiceScreen)
        options = app.screen.query_one(OptionList)
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == ["dcn0"]
        await pilot.press("enter")
        await wait_until(pilot, lambda: any(isinstance(m, CopyStarted) for m in seen), what="CopyStarted")
        await pilot.press("6")
        await wait_until(pilot, lambda: table.cell_text("dcn0", "images") == "1", within=30, what="placed at dcn0")
        assert "Images placed here (1)" in text_of(app, "#site-detail")
        assert "placed  %s" % image["id"] in text_of(app, "#site-detail")
        assert "dcn0" in (await link.hub.image(image["id"]))["stores"].split(",")
        # The edge stops: it goes offline after two missed heartbeats.
        link.edge.daemon.stop()
        await wait_until(pilot, lambda: table.cell_text("dcn0", "state") == "offline", within=20, what="offline")
        await pilot.press("1")
        await wait_until(
            pilot, lambda: "0 online · 1 offline: dcn0 (seen" in text_of(app, "#overview-hub"), what="overview"
        )
