"""Mixin of the app: switching screens (number keys, tabs, the palette), `esc` back through the
screens visited (after closing a filter), `/` for the screen's filter, and where the focus lands
on each screen."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from textual.css.query import NoMatches
from textual.widgets import Input, TabbedContent

if TYPE_CHECKING:
    from tui.app import ApplianceTui
    from tui.panes.events import EventsPane
    from tui.panes.images import ImagesPane

FILTERABLE = frozenset({"images", "events"})
HISTORY = 20  # screens remembered for esc


class Navigation:
    def _tui(self) -> ApplianceTui:
        return cast("ApplianceTui", self)

    def action_show_pane(self, pane: str) -> None:
        self._tui().query_one(TabbedContent).active = pane

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        app = self._tui()
        pane = event.pane.id or "overview"
        if pane == app._active:
            return
        if not app._going_back:
            app._history.append(app._active)
            del app._history[:-HISTORY]
        app._going_back = False
        app._active = pane
        try:
            self._focus_pane(pane)
        except NoMatches:  # a tab change handled while the app closes: its panes are gone
            return
        app.refresh_bindings()
        app.poll(soon=True)

    def _focus_pane(self, pane: str) -> None:
        app = self._tui()
        if pane == "images":
            app.images_pane.table.focus()
        elif pane == "queues":
            app.queues.table.focus()
        elif pane == "events":
            app.events_pane.log_widget.focus()
        elif pane == "overview":
            app.overview.focus()
        elif pane == "sites":
            app.sites_pane.table.focus()
        else:
            app.cache_pane.focus_table()

    async def action_back(self) -> None:  # async as App.action_back, which this replaces
        app = self._tui()
        focused = app.focused
        if isinstance(focused, Input) and focused.id in ("image-filter", "event-filter"):
            self._filter_owner(focused).close_filter(clear=True)
            return
        if app._active in FILTERABLE:
            owner = app.images_pane if app._active == "images" else app.events_pane
            if owner.filter_text:
                owner.close_filter(clear=True)
                return
        while app._history and app._history[-1] == app._active:
            app._history.pop()
        if app._history:
            app._going_back = True  # the switch must not push the pane we are leaving
            self.action_show_pane(app._history.pop())

    def _filter_owner(self, widget: Input) -> ImagesPane | EventsPane:
        app = self._tui()
        return app.images_pane if widget.id == "image-filter" else app.events_pane

    def action_filter(self) -> None:
        app = self._tui()
        if app._active == "images":
            app.images_pane.open_filter()
        elif app._active == "events":
            app.events_pane.open_filter()
