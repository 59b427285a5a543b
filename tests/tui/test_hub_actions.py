"""The actions that depend on where the operator is, against a real hub and edge: at the edge,
`h` pins a local copy of a hub image (glance-download into this site's store) and a hub image's
change goes to the hub (a static token's is refused there, in the daemon's words); on the hub,
`s` copies an image to edge sites, and Sites shows the copy on its way (with the pull's progress
as the site's heartbeat reports it), then placed."""

from __future__ import annotations

import os
import re
from typing import Any

from textual.message import Message
from textual.notifications import Notify
from textual.widgets import OptionList, SelectionList, Static

from tests.tui.conftest import HubAndEdge, MiB, open_images, socket_config, wait_until
from tui.app import make_app
from tui.dialogs.choose import ManyChoiceScreen, StoreChoiceScreen
from tui.messages import ActionFailed, SitesLoaded


def toasts(seen: list[Message], severity: str | None = None) -> list[str]:
    return [
        str(m.notification.message)
        for m in seen
        if isinstance(m, Notify) and (severity is None or m.notification.severity == severity)
    ]


def text_of(app: Any, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return getattr(content, "plain", str(content))


async def test_at_an_edge_h_pins_a_hub_image_and_hub_image_changes_go_to_the_hub(hub_and_edge: HubAndEdge) -> None:
    env = hub_and_edge
    hub_image = await env.hub_image("golden", 1 * MiB)
    own = await env.edge.create("made-here", os.urandom(2048))
    seen: list[Message] = []
    app = make_app(env.edge_tui())  # with the edge's (static) admin token, through the relay
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        table = await open_images(app, pilot, 2)
        await wait_until(pilot, lambda: app.session.hub_url() is not None, what="the edge's status")
        # h on an image made here: not a hub image, nothing asked.
        table.move_cursor(row=table.get_row_index(own["id"]))
        await pilot.pause()
        await pilot.press("h")
        await pilot.pause()
        assert not isinstance(app.screen, StoreChoiceScreen)
        assert "made-here is not a hub image" in toasts(seen, "warning")[-1]
        # P on the hub image: the daemon takes it to the hub, which refuses a static token's change.
        table.move_cursor(row=table.get_row_index(hub_image["id"]))
        await pilot.pause()
        await pilot.press("P")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any(isinstance(m, ActionFailed) for m in seen), what="the refusal")
        refused = next(m for m in seen if isinstance(m, ActionFailed))
        assert "hub" in refused.message and refused.message in toasts(seen, "error")
        assert (await env.hub.image(hub_image["id"]))["protected"] is False
        # h: this site's stores, then a new image of this site with the hub image's data.
        await pilot.press("h")
        screen = app.screen
        assert isinstance(screen, StoreChoiceScreen)
        listed = screen.query_one(OptionList)
        assert [listed.get_option_at_index(i).id for i in range(listed.option_count)] == app.session.own_stores()
        await pilot.press("enter")
        await app.workers.wait_for_complete()
        await wait_until(pilot, lambda: any("Pinning golden" in t for t in toasts(seen)), what="the note")
        assert ("POST", "/v2/images", None) in env.relay.changes()
    pinned = [i for i in await env.edge.images() if i["name"] == "golden" and i["id"] != hub_image["id"]]
    assert len(pinned) == 1
    (task,) = await env.edge.wait_tasks_done(pinned[0]["id"])
    assert task["status"] == "success", task["message"]
    done = await env.edge.image(pinned[0]["id"])
    assert done["status"] == "active" and done["stores"] == app.session.own_stores()[0]
    assert done["os_hash_value"] == (await env.hub.image(hub_image["id"]))["os_hash_value"]


async def test_on_a_hub_s_copies_to_sites_and_sites_shows_the_copy_on_its_way(hub_and_edge_factory: Any) -> None:
    env: HubAndEdge = await hub_and_edge_factory(rate=2 * MiB)  # a slow WAN: the pull takes ~4 s
    image = await env.hub_image("fleet", 8 * MiB)
    queued = await env.hub.create("no-data")
    seen: list[Message] = []
    app = make_app(socket_config(env.hub.daemon))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await wait_until(pilot, lambda: any(isinstance(m, SitesLoaded) and m.sites for m in seen), what="sites")
        table = await open_images(app, pilot, 2)
        # An image without data: edge sites pull from a copy here, so s is not offered.
        table.move_cursor(row=table.get_row_index(queued["id"]))
        await pilot.pause()
        await pilot.press("s")
        await pilot.pause()
        assert not isinstance(app.screen, ManyChoiceScreen)
        assert "no-data is queued" in toasts(seen, "warning")[-1]
        table.move_cursor(row=table.get_row_index(image["id"]))
        await pilot.pause()
        await pilot.press("s")
        screen = app.screen
        assert isinstance(screen, ManyChoiceScreen)
        choices = screen.query_one(SelectionList)
        assert [choices.get_option_at_index(i).value for i in range(choices.option_count)] == ["dcn0"]
        await pilot.press("enter")  # nothing picked: nothing sent
        assert app.screen is screen
        await pilot.press("space", "enter")
        await wait_until(pilot, lambda: any("handed to dcn0" in t for t in toasts(seen)), what="the note")
        # Sites: on its way (dcn0 pulls on its next sync, over the slow link), then placed.
        await pilot.press("6")
        sites = app.sites_pane.table
        await wait_until(pilot, lambda: sites.cell_text("dcn0", "images") == "0 +1", what="the copy on its way")
        assert "Copies on the way (1)" in text_of(app, "#site-detail")
        # How far dcn0's pull has come, as its heartbeat reports it to the hub.
        await wait_until(
            pilot, lambda: re.search(r"pulling .*\d+% [\d.]+/8\.0 MiB", text_of(app, "#site-detail")), what="pull"
        )
        await wait_until(pilot, lambda: sites.cell_text("dcn0", "images") == "1", within=40, what="placed")
        assert "Copies on the way" not in text_of(app, "#site-detail")
        # Every site has it now: s says so.
        await pilot.press("2")
        await pilot.press("s")
        await pilot.pause()
        assert not isinstance(app.screen, ManyChoiceScreen)
        assert "in every edge site already" in toasts(seen, "warning")[-1]
    assert "dcn0" in (await env.hub.image(image["id"]))["stores"].split(",")
    edge_copy = await env.edge.image(image["id"])
    assert set(edge_copy["stores"].split(",")) >= {"central"} and len(edge_copy["stores"].split(",")) == 2
