"""Static text that is replaced only when it changed: polls re-send the same text every 1.5 s,
and an update lays out an auto-height Static (and so its screen) again."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def show_text(static: Static, text: Text) -> None:
    if static.content != text:
        static.update(text)
