"""The Cache screen and the cache keys against a real edge with a cache and a real hub: what the
TUI sends (seen by a relay in front of the edge), what the edge's cache then holds (its API), and
what the screens show: entries, the queue with failed attempts, fills with progress, the hub line."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from textual.message import Message
from textual.widgets import OptionList, Static

from tests.tui.conftest import HubAndEdge, MiB, confirm, wait_until
from tui.app import make_app
from tui.dialogs.choose import StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.messages import CacheCleared, CacheQueued, CacheRemoved, StatusLoaded
from tui.panes.cache import CachePane
from tui.panes.images import ImageTable


def text_of(app: Any, selector: str) -> str:
    content = app.query_one(selector, Static).content
    return getattr(content, "plain", str(content))


def arrived(seen: list[Message], kind: type[Message]) -> Callable[[], list[Any]]:
    return lambda: [m for m in seen if isinstance(m, kind)]


async def test_queue_remove_and_clear_send_the_cache_api_calls(hub_and_edge: HubAndEdge) -> None:
    link = hub_and_edge
    alpha = await link.hub_image("alpha", MiB)
    beta = await link.hub_image("beta", MiB)
    seen: list[Message] = []
    app = make_app(link.edge_tui())
    async with app.run_test(size=(100, 30), message_hook=seen.append) as pilot:
        await wait_until(pilot, arrived(seen, StatusLoaded), what="status")
        hub_line = text_of(app, "#overview-hub")
        assert hub_line.startswith("Hub     up · %s · last sync" % link.link.url), hub_line
        assert "not configured" not in text_of(app, "#overview-cache")
        # Images: alpha is highlighted (name order); its detail says p caches it.
        await pilot.press("2")
        table = app.query_one(ImageTable)
        await wait_until(pilot, lambda: table.row_count == 2, what="two rows")
        await wait_until(
            pilot, lambda: "cache not cached · p caches it" in text_of(app, "#image-detail"), what="cache hint"
        )
        await pilot.press("p")
        await wait_until(pilot, arrived(seen, CacheQueued), what="CacheQueued")
        assert arrived(seen, CacheQueued)()[0].outcome in ("queued", "filling", "cached")
        assert link.relay.changes() == [("PUT", "/v2/cache/%s" % alpha["id"], None)]
        # The edge fetches it from the hub; the Cache screen lists it.
        await pilot.press("4")
        pane = app.query_one(CachePane)
        await wait_until(pilot, lambda: pane.entry_table.keys == [alpha["id"]], what="alpha cached")
        assert pane.entry_table.cell_text(alpha["id"], "image") == "alpha"
        assert pane.entry_table.cell_text(alpha["id"], "size") == "1.0 MiB"
        assert "1.0 MiB of 64.0 MiB" in text_of(app, "#cache-summary")
        assert [e["image_id"] for e in (await link.cache_view())["entries"]] == [alpha["id"]]
        # x on the cached copy: asked first, then DELETE with the clear target "cache".
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await wait_until(pilot, arrived(seen, CacheRemoved), what="CacheRemoved")
        assert link.relay.changes()[-1] == ("DELETE", "/v2/cache/%s" % alpha["id"], "cache")
        assert (await link.cache_view())["entries"] == []
        await wait_until(pilot, lambda: pane.entry_table.row_count == 0, what="entry row gone")

        # With the hub down, a queued image stays queued: attempts and the error show.
        link.hub.daemon.stop()
        await pilot.press("2", "j")
        await wait_until(
            pilot, lambda: (app.images_pane.selected_image() or {}).get("id") == beta["id"], what="beta highlighted"
        )
        await pilot.press("p")
        await wait_until(pilot, lambda: len(arrived(seen, CacheQueued)()) == 2, what="second CacheQueued")
        await pilot.press("4")
        queue = pane.queue_table
        await wait_until(
            pilot,
            lambda: beta["id"] in queue.keys and queue.cell_text(beta["id"], "state") == "retry",
            what="a failed attempt",
        )
        assert int(queue.cell_text(beta["id"], "tries")) >= 1
        assert queue.cell_text(beta["id"], "error")
        await wait_until(pilot, lambda: "down" in text_of(app, "#overview-hub"), what="hub down on Overview")
        # x on the queued image: DELETE with the clear target "queue".
        await pilot.press("tab")
        assert app.focused is queue
        await wait_until(pilot, lambda: "attempt(s)" in text_of(app, "#cache-detail"), what="queue row detail")
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await wait_until(pilot, lambda: len(arrived(seen, CacheRemoved)()) == 2, what="dequeued")
        assert link.relay.changes()[-1] == ("DELETE", "/v2/cache/%s" % beta["id"], "queue")
        assert (await link.cache_view())["queue"] == []
        # X: clear, choosing what: the queue, the cached copies, or both.
        await link.edge.call("PUT", "/v2/cache/%s" % beta["id"], 202)
        await wait_until(pilot, lambda: queue.row_count == 1, what="queued again")
        await pilot.press("X")
        assert isinstance(app.screen, StoreChoiceScreen)
        options = app.screen.query_one(OptionList)
        assert [options.get_option_at_index(i).id for i in range(options.option_count)] == ["cache", "queue", "both"]
        await pilot.press("j", "j", "enter")
        assert isinstance(app.screen, ConfirmScreen)
        await confirm(pilot)
        await wait_until(pilot, arrived(seen, CacheCleared), what="CacheCleared")
        assert link.relay.changes()[-1] == ("DELETE", "/v2/cache", "both")
        assert (await link.cache_view())["queue"] == []
        await wait_until(pilot, lambda: queue.row_count == 0, what="queue row gone")


async def test_fills_and_pinned_pulls_show_progress(hub_and_edge_factory: Callable[..., Any]) -> None:
    # A slow WAN (2 MiB/s) and images big enough to keep each transfer going for ~24 s: the TUI
    # sees it in progress however slowly a loaded machine runs its polls; once seen, the link is
    # opened up.
    slow = 2 * MiB
    link: HubAndEdge = await hub_and_edge_factory(rate=slow)
    cached = await link.hub_image("filled", 48 * MiB)
    pinned = await link.hub_image("pinned", 48 * MiB)
    app = make_app(link.edge_tui())
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("4")
        pane = app.query_one(CachePane)
        await link.edge.call("PUT", "/v2/cache/%s" % cached["id"], 202)
        queue = pane.queue_table
        await wait_until(
            pilot,
            lambda: cached["id"] in queue.keys and queue.cell_text(cached["id"], "state") == "filling",
            what="the fill",
        )
        await wait_until(
            pilot, lambda: not queue.cell_text(cached["id"], "progress").endswith("?"), what="fill progress"
        )
        # From successive polls: the fill's ETA in its row, its rate and ETA in the line below.
        await wait_until(pilot, lambda: queue.cell_text(cached["id"], "next").startswith("ETA "), what="the ETA")
        queue.focus()
        # Any unit: the relay runs in this test's event loop, beside the TUI, and on a loaded
        # machine it may move less than 1 MiB/s.
        shown = re.compile(r"\d (B|KiB|MiB|GiB)/s · ETA \d+[smhd]")
        await wait_until(pilot, lambda: shown.search(text_of(app, "#cache-detail")), what="rate and ETA")
        assert queue.cell_text(cached["id"], "image") == "filled"
        link.link.rate = 0
        await wait_until(pilot, lambda: pane.entry_table.keys == [cached["id"]], what="cached")
        assert queue.row_count == 0
        # A copy placed at this site by the hub: the Overview's hub line shows the pull.
        link.link.rate = slow
        await link.hub.copy(pinned["id"], "dcn0")
        await pilot.press("1")
        await wait_until(pilot, lambda: "pulling pinned" in text_of(app, "#overview-hub"), what="the pull")
        await wait_until(
            pilot, lambda: "%" in text_of(app, "#overview-hub").split("pulling pinned", 1)[1], what="pull progress"
        )
        link.link.rate = 0


async def test_read_only_offers_no_cache_action(hub_and_edge: HubAndEdge) -> None:
    link = hub_and_edge
    image = await link.hub_image("kept", 64 * 1024)
    await link.edge.call("PUT", "/v2/cache/%s" % image["id"], 202)
    app = make_app(link.edge_tui(read_only=True))
    async with app.run_test() as pilot:
        await pilot.press("2")
        await wait_until(pilot, lambda: app.query_one(ImageTable).row_count == 1, what="image row")
        await pilot.press("p")
        await pilot.press("4")
        pane = app.query_one(CachePane)
        await wait_until(pilot, lambda: pane.entry_table.row_count == 1, what="cached entry")
        shown = {b.binding.action for b in app.screen.active_bindings.values()}
        assert not shown & {"cache_image", "cache_remove", "cache_clear"}
        for key in ("x", "X"):
            await pilot.press(key)
            assert app.screen is app.screen_stack[0], key  # no dialog opened
        await app.workers.wait_for_complete()
    assert link.relay.changes() == []
    assert [e["image_id"] for e in (await link.cache_view())["entries"]] == [image["id"]]
