"""Mixin of the app: `Enter` on a row of any screen opens its full-screen detail (`Esc` back):
an image, a task, a site, a cache entry (or queued image, or fill), an event; `m` the
notifications the operator may have missed. What each detail shows is in tui.details and
tui.dialogs.detail."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, cast

from textual.screen import ModalScreen
from textual.widgets import DataTable

from tui.details import CachePage, event_page, load_site_page
from tui.dialogs.detail import DetailScreen, load_image_detail, task_page
from tui.guard import while_running
from tui.panes.events import EventChosen

if TYPE_CHECKING:
    from tui.app import ApplianceTui


class DetailViews:
    def _tui(self) -> ApplianceTui:
        return cast("ApplianceTui", self)

    def open_detail(self, screen: DetailScreen) -> None:
        app = self._tui()
        if isinstance(app.screen, ModalScreen):
            return  # a dialog or another detail is open: Enter is its own
        app.push_screen(screen)
        app.mark_stale()  # opened while the daemon does not answer: says so at once

    @while_running
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        app = self._tui()
        key = str(event.row_key.value or "")
        table = event.data_table.id
        if table == "images":
            self.open_image_detail()
        elif table == "tasks":
            task = app.queues.tasks.get(key)
            if task is not None:
                self.open_detail(DetailScreen("Task", task_page(task, app.image_name(str(task.get("image_id") or "")))))
        elif table == "sites":
            images = lambda: app.images_pane.images.values()  # noqa: E731 (the list as it is at each load)
            load = partial(load_site_page, app.client, key, images, app.image_name, app.clock)
            self.open_detail(DetailScreen("Site", load=load, every=app.config.refresh_seconds))
        elif table in ("cache-entries", "cache-queue"):
            page = CachePage(app.client, key, app.image_name, app.clock)
            self.open_detail(DetailScreen("Cache", load=page.load, every=app.config.refresh_seconds))

    def open_image_detail(self) -> None:
        app = self._tui()
        image = app.images_pane.selected_image()
        if image is None:
            return
        image_id, note = str(image["id"]), app.images_pane.cache_note(image)
        self.open_detail(DetailScreen("Image", load=partial(load_image_detail, app.client, image_id, note)))

    @while_running
    def on_event_chosen(self, message: EventChosen) -> None:
        self.open_detail(DetailScreen("Event", event_page(message.event, self._tui().known_name)))

    def action_notices(self) -> None:
        self.open_detail(DetailScreen("Notifications", self._tui().notices.page()))
