"""The `/` filter line shared by the Images and Events panes."""

from __future__ import annotations

from textual.widget import Widget
from textual.widgets import Input


class FilterLine:
    """Mixin for a pane with a hidden filter Input. The pane provides `filter_input`,
    `filter_text`, `apply_filter(text)` and `filter_returns_to` (what gets focus back)."""

    filter_text: str

    @property
    def filter_input(self) -> Input:
        raise NotImplementedError

    @property
    def filter_returns_to(self) -> Widget:
        raise NotImplementedError

    def apply_filter(self, text: str) -> None:
        raise NotImplementedError

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
