"""The `/` filter line shared by the Images and Events panes."""

from __future__ import annotations

from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Input

FILTER_DELAY = 0.15  # typing settles this long before the rows are filtered


class FilterLine(Widget):
    """Mixin base, before the container class, for a pane with a hidden filter Input. The pane
    provides `filter_input`, `filter_text`, `apply_filter(text)` and `filter_returns_to` (what
    gets focus back)."""

    filter_text: str
    _filter_timer: Timer | None = None

    @property
    def filter_input(self) -> Input:
        raise NotImplementedError

    @property
    def filter_returns_to(self) -> Widget:
        raise NotImplementedError

    def apply_filter(self, text: str) -> None:
        raise NotImplementedError

    def show_match_count(self, shown: int, total: int, noun: str) -> None:
        """ "3 of 120 images" on the filter line's border while a filter narrows the rows."""
        self.filter_input.border_subtitle = "%d of %d %s" % (shown, total, noun) if self.filter_text else ""

    def open_filter(self) -> None:
        """Focus moves at once, not after the keys already queued (Widget.focus defers it):
        keys typed right after `/` go into the filter, not to the table's and app's bindings."""
        box = self.filter_input
        box.remove_class("-hidden")
        box.screen.set_focus(box)

    def close_filter(self, clear: bool) -> None:
        if clear:
            self.filter_input.value = ""
            self.apply_filter("")
        if not self.filter_text:
            self.filter_input.add_class("-hidden")
        self.filter_returns_to.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input is not self.filter_input:
            return
        if self._filter_timer is not None:
            self._filter_timer.stop()
        value = event.value
        self._filter_timer = self.set_timer(FILTER_DELAY, lambda: self._filter_settled(value))

    def _filter_settled(self, value: str) -> None:
        # The debounce timer may fire while the app is shutting down (screens already gone).
        if not self.app.screen_stack:
            return
        self.apply_filter(value)
        self.app.refresh_bindings()  # the highlighted row, which some keys need, may have changed

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input is not self.filter_input:
            return
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self.apply_filter(event.value)
        self.close_filter(clear=False)
