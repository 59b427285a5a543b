"""Widgets whose rendering failure stays inside them: the widget shows a one-line notice and the
app goes on (Textual ends the whole app on an exception while measuring or drawing a widget).
Every widget that shows the daemon's data is one of these: `PlainStatic`, the tables, the log."""

from __future__ import annotations

import logging
from typing import Any

from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region, Size
from textual.strip import Strip
from textual.widgets import Static

log = logging.getLogger(__name__)

NOTICE = "⚠ cannot show this (see the log)"
NOTICE_STYLE = Style(color="red", bold=True)


class Contained:
    """Mixin, before the widget class: measuring and drawing errors are logged (once per widget
    until it draws again) and drawn as NOTICE."""

    _render_failed = False

    def _failed(self, what: str) -> None:
        if not self._render_failed:
            self._render_failed = True
            log.exception("cannot %s %r", what, self)

    def render_lines(self, crop: Region) -> list[Strip]:
        try:
            strips: list[Strip] = super().render_lines(crop)  # type: ignore[misc]
        except Exception:
            self._failed("draw")
            notice = Strip([Segment(NOTICE, NOTICE_STYLE)]).crop_extend(0, crop.width, None)
            return [notice] + [Strip.blank(crop.width)] * max(0, crop.height - 1)
        self._render_failed = False
        return strips

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        try:
            return int(super().get_content_height(container, viewport, width))  # type: ignore[misc]
        except Exception:
            self._failed("measure")
            return 1

    def get_content_width(self, container: Size, viewport: Size) -> int:
        try:
            return int(super().get_content_width(container, viewport))  # type: ignore[misc]
        except Exception:
            self._failed("measure")
            return len(NOTICE)


class PlainStatic(Contained, Static):
    """A Static for the daemon's text: a str is never parsed as markup, errors are contained.
    Give it Text built with `tui.display.visible` / `plain`."""

    def __init__(self, content: Any = "", **kw: Any) -> None:
        kw.setdefault("markup", False)
        super().__init__(content, **kw)
