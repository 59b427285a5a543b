"""Events: the daemon's event log, newest at the bottom, levels coloured, `/` to filter; an
image id in a message is followed by the image's name.

A RichLog draws each line at the width it has when the line is written, and a hidden pane has
none: lines that arrive while another screen is shown are drawn when the log is shown again,
and every line again when its width or the names of the images it mentions change."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import Input, RichLog

from tui.display import level_style, plain, visible
from tui.widgets.contained import Contained
from tui.widgets.filtering import FilterLine

Json = dict[str, Any]
KEEP = 2000  # the daemon keeps as many
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
NameOf = Callable[[str], str | None]  # an image id's name, if known (`visible`)


def no_names(image_id: str) -> str | None:
    return None


def mentioned(event: Json) -> list[str]:
    return UUID.findall(str(event.get("message") or ""))


def with_names(message: str, name_of: NameOf) -> str:
    """`image 1a2b…: import finished` → `image 1a2b… (cirros): import finished`."""

    def named(match: re.Match[str]) -> str:
        name = name_of(match.group(0))
        return "%s (%s)" % (match.group(0), name) if name else match.group(0)

    return UUID.sub(named, message)


def event_line(event: Json, name_of: NameOf = no_names) -> Table:
    """time, level, source, then the message, wrapped under itself (a hanging indent)."""
    stamp = str(event.get("time") or "")
    clock = stamp[11:19] if len(stamp) >= 19 else stamp
    level = str(event.get("level") or "info")
    source = str(event.get("source") or "").rsplit(".", 1)[-1]
    line = Table.grid(padding=(0, 1), expand=True)
    line.add_column(width=8, style="dim", no_wrap=True)
    line.add_column(width=7, no_wrap=True)
    line.add_column(width=10, style="magenta", no_wrap=True, overflow="ellipsis")
    line.add_column(ratio=1, overflow="fold")  # a long path or URL folds: nothing is cut
    line.add_row(  # Text, not str: a str cell would be parsed as markup
        plain(clock),
        plain(level.upper(), style=level_style(level)),
        plain(source),
        plain(
            with_names(visible(event.get("message") or ""), name_of),
            style="bold red" if level in ("error", "critical") else "",
        ),
    )
    return line


def restart_line() -> Text:
    return Text("──── daemon restarted ────", style="bold yellow")


def event_matches(event: Json, needle: str, name_of: NameOf = no_names) -> bool:
    if not needle:
        return True
    message = with_names(visible(event.get("message") or ""), name_of)
    hay = visible("%s %s " % (event.get("level"), event.get("source"))) + message  # as shown
    return needle.lower() in hay.lower()


class EventLog(Contained, RichLog):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
    ]

    def __init__(self, resized: Callable[[], None], **kw: Any) -> None:
        super().__init__(**kw)
        self._resized = resized
        self.drawn_width = 0  # the width the lines were drawn at

    @property
    def width_now(self) -> int:
        return self.scrollable_content_region.width

    def on_resize(self, event: events.Resize) -> None:
        self._resized()


class EventsPane(FilterLine, Vertical):
    def __init__(self, name_of: NameOf = no_names, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: deque[Json | None] = deque(maxlen=KEEP)  # None marks a daemon restart
        self.filter_text = ""
        self._name_of = name_of
        self._known: dict[str, str] = {}  # every name seen: a deleted image's lines keep it
        self._names: dict[str, str | None] = {}  # the names the lines were drawn with
        self._pending: list[Json | None] = []  # arrived while the log had no width
        self._stale = False  # every line must be drawn again (a name became known)

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter by level, source or text (enter: keep, esc: clear)",
            id="event-filter",
            classes="-hidden",
        )
        yield EventLog(
            self._log_resized,
            id="events",
            max_lines=KEEP,
            min_width=20,
            wrap=True,
            auto_scroll=True,
            markup=False,
            highlight=False,
        )

    @property
    def log_widget(self) -> EventLog:
        return self.query_one(EventLog)

    @property
    def filter_input(self) -> Input:
        return self.query_one("#event-filter", Input)

    def add_events(self, events: list[Json], restarted: bool = False) -> None:
        fresh: list[Json | None] = [None] if restarted and self.events else []
        fresh += events
        self.events.extend(fresh)
        if self.log_widget.width_now:
            self._write(fresh)
        else:
            self._pending.extend(fresh)
            del self._pending[:-KEEP]

    def _write(self, events: list[Json | None]) -> None:
        log = self.log_widget
        log.drawn_width = log.width_now
        for event in events:
            if event is None:
                if not self.filter_text:
                    log.write(restart_line(), expand=True)
            elif event_matches(event, self.filter_text, self._name_for):
                for image_id in mentioned(event):
                    self._names[image_id] = self._name_for(image_id)
                log.write(event_line(event, self._name_for), expand=True)

    def _name_for(self, image_id: str) -> str | None:
        name = self._name_of(image_id)
        if name is not None:
            self._known[image_id] = name
        return name or self._known.get(image_id)

    def names_changed(self) -> None:
        """The image list changed: if an image a line mentions has a name now (or another one),
        every line is drawn again (now, or when the log is shown: it costs)."""
        if any(self._name_of(i) not in (None, drawn) for i, drawn in self._names.items()):
            self._stale = True
            if self.log_widget.width_now:
                self.redraw()

    def redraw(self) -> None:
        """Every kept line again, at the log's width now (later, if it has none yet)."""
        log = self.log_widget
        if not log.width_now:
            self._stale = True
            return
        self._stale, self._pending, self._names = False, [], {}
        log.clear()
        self._write(list(self.events))

    def _log_resized(self) -> None:
        """Shown again, or resized: draw what came meanwhile, or everything at a new width."""
        log = self.log_widget
        if not log.width_now:
            return
        if self._stale or log.width_now != log.drawn_width:
            self.redraw()
        elif self._pending:
            pending, self._pending = self._pending, []
            self._write(pending)

    def apply_filter(self, text: str) -> None:
        if text == self.filter_text:
            return
        self.filter_text = text
        self.redraw()

    @property
    def filter_returns_to(self) -> EventLog:
        return self.log_widget
