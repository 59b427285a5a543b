"""The keys that scroll a full screen of text (a detail view, the help), one list for both."""

from __future__ import annotations

from textual.binding import Binding, BindingType
from textual.containers import ScrollableContainer

SCROLL_KEYS: list[BindingType] = [
    Binding("j,down", "scroll('down')", "Down", show=False),
    Binding("k,up", "scroll('up')", "Up", show=False),
    Binding("g,home", "scroll('home')", "Top", show=False),
    Binding("G,end", "scroll('end')", "End", show=False),
]


def scroll(container: ScrollableContainer, direction: str) -> None:
    """One line down or up, or to the top or the end (`direction` as SCROLL_KEYS name it)."""
    moves = {
        "down": container.scroll_down,
        "up": container.scroll_up,
        "home": container.scroll_home,
        "end": container.scroll_end,
    }
    moves[direction](animate=False)
