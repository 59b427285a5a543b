"""Events keep their text: lines that arrive while another screen is shown are drawn at the log's
width when it is shown again (they were drawn 20 cells wide: `23:0… WARN… cache`), and an image
id in a message is followed by the image's name. Against a real daemon."""

from __future__ import annotations

import os

from tests.conftest import Daemon
from tests.tui.conftest import SiteApi, socket_config, type_text, wait_until
from tests.tui.test_hostile_text import screen_text
from tui.app import make_app


async def test_events_that_arrive_on_another_screen_keep_their_message_and_name_the_image(
    site: Daemon, site_api: SiteApi
) -> None:
    app = make_app(socket_config(site))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("5")
        await wait_until(pilot, lambda: len(app.events_pane.events) > 0, what="the first events")
        await pilot.press("1")
        before = len(app.events_pane.events)
        image = await site_api.create("events-probe", os.urandom(1024))
        await site_api.copy(image["id"], "fast")
        await site_api.wait_tasks_done(image["id"])
        pane = app.events_pane
        await wait_until(
            pilot,
            lambda: any(e and image["id"] in str(e.get("message")) for e in list(pane.events)[before:]),
            what="an event naming the image",
        )
        await pilot.press("5")
        await wait_until(pilot, lambda: "(events-probe)" in screen_text(app), what="the image's name in the log")
        shown = screen_text(app)
        log = shown.split("\n")[3:-1]  # below the tabs, above the footer
        assert "(events-probe) created by admin/local-admin" in shown, shown
        assert "image %s" % image["id"] in shown, shown
        assert not any("…" in line for line in log), shown  # the time, the level, the message: whole
        # Deleted: its lines keep the name they were shown with.
        await site_api.call("DELETE", "/v2/images/%s" % image["id"], 204)
        await wait_until(pilot, lambda: "deleted" in screen_text(app), what="the deletion's event")
        await wait_until(pilot, lambda: image["id"] not in app.images_pane.images, what="the image list without it")
        # The filter draws every line again: found by the name, which they keep.
        await pilot.press("slash")
        await type_text(pilot, "(events-probe) created")
        await wait_until(pilot, lambda: app.events_pane.filter_text == "(events-probe) created", what="the filter")
        await pilot.pause(0.3)
        assert "image %s" % image["id"] in screen_text(app) and "created by" in screen_text(app), screen_text(app)
