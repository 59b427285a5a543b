"""At an edge, the TUI offers only what the daemon will do: a hub image's delete is not offered
over the Unix socket (the daemon forwards it to the hub with a Keystone token only) and says
what happens with a token; `x` never offers the hub's copy (`central`); `c` offers `central`
only for an image with a copy in this site's stores. Against a real hub and edge."""

from __future__ import annotations

import os

from textual.message import Message
from textual.notifications import Notify
from textual.widgets import OptionList

from tests.tui.conftest import HubAndEdge, confirm, open_images, socket_config, wait_until
from tui.app import make_app
from tui.dialogs.choose import StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.messages import ActionFailed


def toasts(seen: list[Message]) -> list[str]:
    return [str(m.notification.message) for m in seen if isinstance(m, Notify)]


def options(app: object) -> dict[str, bool]:
    """The store choice's options: id → enabled."""
    screen = app.screen  # type: ignore[attr-defined]
    assert isinstance(screen, StoreChoiceScreen), screen
    listed = screen.query_one(OptionList)
    return {str(o.id): not o.disabled for o in (listed.get_option_at_index(i) for i in range(listed.option_count))}


async def test_hub_image_at_an_edge_offers_only_what_the_daemon_does(hub_and_edge: HubAndEdge) -> None:
    env = hub_and_edge
    hub_image = await env.hub_image("from-hub", 4096)
    own = await env.edge.create("made-here", os.urandom(2048))
    seen: list[Message] = []
    app = make_app(socket_config(env.edge.daemon))
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        table = await open_images(app, pilot, 2)
        await wait_until(pilot, lambda: app.session.hub_url() is not None, what="the edge's status")
        table.move_cursor(row=table.get_row_index(hub_image["id"]))
        await pilot.pause()
        # d: not offered over the socket, and says why.
        await pilot.press("d")
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen)
        said = toasts(seen)[-1]
        assert "belongs to the hub %s" % env.link.url in said, said
        assert "Keystone token" in said
        # x: its only copy is the hub's, which the daemon refuses to drop here.
        await pilot.press("x")
        await pilot.pause()
        assert not isinstance(app.screen, StoreChoiceScreen)
        assert "no copy in a store of this site" in toasts(seen)[-1]
        # c: copy-image reads a copy in this site's stores, and it has none (the daemon's task
        # would fail: "No readable copy of image ... on this site to copy from").
        await pilot.press("c")
        await pilot.pause()
        assert not isinstance(app.screen, StoreChoiceScreen)
        assert "no copy in a store of this site for the daemon to copy from" in toasts(seen)[-1]
        # An image made here: c offers the hub.
        table.move_cursor(row=table.get_row_index(own["id"]))
        await pilot.pause()
        await pilot.press("c")
        await pilot.pause()
        assert options(app) == {"central": True}  # (it is in this site's only store)
        await pilot.press("escape")
        # Sent to the hub: x offers this site's copy and shows the hub's as refused.
        (store,) = app.session.own_stores()
        await env.edge.copy(own["id"], "central")
        done = await env.edge.wait_tasks_done(own["id"])
        assert [t["status"] for t in done] == ["success"], done[0]["message"]
        await wait_until(pilot, lambda: "central" in str(app.images_pane.images[own["id"]].get("stores")))
        await pilot.press("x")
        await pilot.pause()
        assert options(app) == {store: True, "central": False}
        await pilot.press("escape")
    # The daemon agrees: a static token's delete of the hub image is refused, naming the hub.
    await env.edge.call("DELETE", "/v2/images/%s" % hub_image["id"], 409)


async def test_with_a_token_the_delete_of_a_hub_image_says_what_the_daemon_will_do(hub_and_edge: HubAndEdge) -> None:
    env = hub_and_edge
    hub_image = await env.hub_image("from-hub", 4096)
    seen: list[Message] = []
    app = make_app(env.edge_tui())
    async with app.run_test(size=(80, 24), message_hook=seen.append) as pilot:
        await open_images(app, pilot, 1)
        await wait_until(pilot, lambda: app.session.hub_url() is not None, what="the edge's status")
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        question = str(app.screen.query_one("#dialog-question").content)
        assert "belongs to the hub" in question and "static token the daemon refuses (409)" in question
        assert "data goes from every store" not in question
        await confirm(pilot)
        # The relay's token is the edge's static admin token: refused, in the daemon's words.
        await wait_until(pilot, lambda: any(isinstance(m, ActionFailed) for m in seen), what="ActionFailed")
        failed = next(m for m in seen if isinstance(m, ActionFailed))
        assert "belongs to the hub" in failed.message and "Keystone token" in failed.message
    await env.edge.image(hub_image["id"])  # still there
