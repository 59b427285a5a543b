"""Events: the daemon's event log, newest at the bottom, levels coloured, `/` to filter."""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Input, RichLog

from tui.display import level_style, plain, visible
from tui.widgets.contained import Contained
from tui.widgets.filtering import FilterLine

Json = dict[str, Any]
KEEP = 2000  # the daemon keeps as many


def event_line(event: Json) -> Table:
    """time, level, source, then the message, wrapped under itself (a hanging indent)."""
    stamp = str(event.get("time") or "")
    clock = stamp[11:19] if len(stamp) >= 19 else stamp
    level = str(event.get("level") or "info")
    source = str(event.get("source") or "").rsplit(".", 1)[-1]
    line = Table.grid(padding=(0, 1), expand=True)
    line.add_column(width=8, style="dim", no_wrap=True)
    line.add_column(width=7, no_wrap=True)
    line.add_column(width=10, style="magenta", no_wrap=True, overflow="ellipsis")
    line.add_column(ratio=1)
    line.add_row(  # Text, not str: a str cell would be parsed as markup
        plain(clock),
        plain(level.upper(), style=level_style(level)),
        plain(source),
        plain(event.get("message") or "", style="bold red" if level in ("error", "critical") else ""),
    )
    return line


def restart_line() -> Text:
    return Text("──── daemon restarted ────", style="bold yellow")


def event_matches(event: Json, needle: str) -> bool:
    if not needle:
        return True
    hay = visible("%s %s %s" % (event.get("level"), event.get("source"), event.get("message")))  # as shown
    return needle.lower() in hay.lower()


class EventLog(Contained, RichLog):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
    ]


class EventsPane(FilterLine, Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: deque[Json | None] = deque(maxlen=KEEP)  # None marks a daemon restart
        self.filter_text = ""

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter by level, source or text (enter: keep, esc: clear)",
            id="event-filter",
            classes="-hidden",
        )
        yield EventLog(
            id="events", max_lines=KEEP, min_width=20, wrap=True, auto_scroll=True, markup=False, highlight=False
        )

    @property
    def log_widget(self) -> EventLog:
        return self.query_one(EventLog)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#event-filter", Input)

    def add_events(self, events: list[Json], restarted: bool = False) -> None:
        log = self.log_widget
        if restarted and self.events:
            self.events.append(None)
            log.write(restart_line(), expand=True)
        for event in events:
            self.events.append(event)
            if event_matches(event, self.filter_text):
                log.write(event_line(event), expand=True)

    def apply_filter(self, text: str) -> None:
        if text == self.filter_text:
            return
        self.filter_text = text
        log = self.log_widget
        log.clear()
        for event in self.events:
            if event is None:
                if not text:
                    log.write(restart_line(), expand=True)
            elif event_matches(event, text):
                log.write(event_line(event), expand=True)

    @property
    def filter_returns_to(self) -> EventLog:
        return self.log_widget
