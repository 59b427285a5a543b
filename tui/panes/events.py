"""Events: the daemon's event log, newest at the bottom, levels coloured, `/` to filter, `l` for
the least level shown; an image id in a message is followed by the image's name. A cursor
(j/k, home/end) marks one event, `enter` opens it in full; at the newest, it follows new events.

A RichLog draws each line at the width it has when the line is written, and a hidden pane has
none: lines that arrive while another screen is shown are drawn when the log is shown again,
and every line again when its width or the names of the images it mentions change."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.style import Style
from rich.table import Table
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.strip import Strip
from textual.widgets import Input, RichLog, Static

from tui.display import level_style, plain, visible
from tui.widgets.contained import Contained
from tui.widgets.filtering import FilterLine
from tui.widgets.steady import show_text

Json = dict[str, Any]
KEEP = 2000  # the daemon keeps as many
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
NameOf = Callable[[str], str | None]  # an image id's name, if known (`visible`)
LEVELS = ("debug", "info", "warning", "error", "critical")
# `l` steps through the least level shown: (level, what the line above the log says).
LEVEL_STEPS = {
    "debug": "",
    "warning": "warnings and errors only",
    "error": "errors only",
}
CURSOR = Style(reverse=True)


def level_rank(level: object) -> int:
    return LEVELS.index(str(level)) if str(level) in LEVELS else LEVELS.index("info")


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


def event_matches(event: Json, needle: str, name_of: NameOf = no_names, least: str = "debug") -> bool:
    if level_rank(event.get("level")) < level_rank(least):
        return False
    if not needle:
        return True
    message = with_names(visible(event.get("message") or ""), name_of)
    hay = visible("%s %s " % (event.get("level"), event.get("source"))) + message  # as shown
    return needle.lower() in hay.lower()


class EventChosen(Message):
    """Enter on an event: the app opens its detail."""

    def __init__(self, event: Json) -> None:
        super().__init__()
        self.event = event


class EventLog(Contained, RichLog):
    """The log with a cursor on one event: `marked` is its lines (absolute: RichLog counts the
    lines it dropped at the top in `_start_line`), drawn reversed."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j,down", "move(1)", "Down", show=False),
        Binding("k,up", "move(-1)", "Up", show=False),
        Binding("g,home", "move_to(0)", "First", show=False),
        Binding("G,end", "move_to(-1)", "Last", show=False),
        Binding("enter", "choose", "Open", show=False),
    ]

    def __init__(
        self,
        resized: Callable[[], None],
        moved: Callable[[int, int | None], None],
        chose: Callable[[], None],
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._resized = resized
        self._moved = moved
        self._chose = chose
        self.drawn_width = 0  # the width the lines were drawn at
        self.marked: range = range(0)

    @property
    def width_now(self) -> int:
        return self.scrollable_content_region.width

    @property
    def first_line(self) -> int:
        return self._start_line

    def on_resize(self, event: events.Resize) -> None:
        self._resized()

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        if self.scroll_offset.y + y + self._start_line in self.marked:
            return strip.apply_style(CURSOR)
        return strip

    def mark(self, lines: range) -> None:
        """Put the cursor on these (absolute) lines and scroll them into view."""
        if lines == self.marked:
            return
        self.marked = lines
        self.refresh()
        if lines:
            top, bottom = lines.start - self._start_line, lines.stop - self._start_line
            height = self.scrollable_content_region.height
            if top < self.scroll_offset.y:
                self.scroll_to(y=top, animate=False)
            elif height and bottom > self.scroll_offset.y + height:
                self.scroll_to(y=max(top, bottom - height), animate=False)

    def action_move(self, step: int) -> None:
        self._moved(step, None)

    def action_move_to(self, index: int) -> None:
        self._moved(0, index)

    def action_choose(self) -> None:
        self._chose()


class EventsPane(FilterLine, Vertical):
    def __init__(self, name_of: NameOf = no_names, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.events: deque[Json | None] = deque(maxlen=KEEP)  # None marks a daemon restart
        self.filter_text = ""
        self.least = "debug"  # the least level shown
        self._name_of = name_of
        self._known: dict[str, str] = {}  # every name seen: a deleted image's lines keep it
        self._names: dict[str, str | None] = {}  # the names the lines were drawn with
        self._pending: list[Json | None] = []  # arrived while the log had no width
        self._stale = False  # every line must be drawn again (a name became known)
        # The events drawn, with their (absolute) lines; the cursor is an index in it, None: the
        # newest, following new events.
        self._drawn: deque[tuple[range, Json]] = deque()
        self._cursor: int | None = None

    def compose(self) -> ComposeResult:
        yield Input(
            placeholder="filter by level, source or text (enter: keep, esc: clear)",
            id="event-filter",
            classes="-hidden",
        )
        yield Static(id="event-level", classes="-hidden")
        yield EventLog(
            self._log_resized,
            self.move_cursor,
            self._chose,
            id="events",
            max_lines=KEEP * 4,
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
                if not self.filter_text and self.least == "debug":
                    log.write(restart_line(), expand=True)
            elif event_matches(event, self.filter_text, self._name_for, self.least):
                for image_id in mentioned(event):
                    self._names[image_id] = self._name_for(image_id)
                start = log.first_line + len(log.lines)
                log.write(event_line(event, self._name_for), expand=True)
                self._drawn.append((range(start, log.first_line + len(log.lines)), event))
        while self._drawn and self._drawn[0][0].start < log.first_line:  # the log dropped them
            self._drawn.popleft()
            if self._cursor is not None:
                self._cursor = max(0, self._cursor - 1)
        self._show_cursor()
        self._say_narrowing()

    def _say_narrowing(self) -> None:
        """The line above the log while a level or a filter narrows it: which, and how many of
        the events kept it shows."""
        level = LEVEL_STEPS.get(self.least, "%s and above" % self.least)
        line = self.query_one("#event-level", Static)
        line.set_class(not level and not self.filter_text, "-hidden")
        if not level and not self.filter_text:
            return
        kept = [e for e in self.events if e is not None]
        shown = sum(1 for e in kept if event_matches(e, self.filter_text, self._name_for, self.least))
        text = Text()
        if level:
            text.append("Level: ", style="bold")
            text.append(level + " · ")
        if self.filter_text:
            text.append("Filter: ", style="bold")
            text.append_text(plain(self.filter_text))
            text.append(" · ")
        text.append("%d of %d events" % (shown, len(kept)))
        text.append("  (l: level, esc: clear the filter)" if self.filter_text else "  (l: change)", style="dim")
        show_text(line, text)

    # -- the cursor ---------------------------------------------------------------------------

    @property
    def chosen(self) -> Json | None:
        """The event under the cursor (the newest drawn when it follows)."""
        if not self._drawn:
            return None
        index = len(self._drawn) - 1 if self._cursor is None else min(self._cursor, len(self._drawn) - 1)
        return self._drawn[index][1]

    def move_cursor(self, step: int, to: int | None = None) -> None:
        """`step` events down (up if negative), or `to` an index (-1: the newest, following)."""
        if not self._drawn:
            return
        last = len(self._drawn) - 1
        if to is not None:
            index = last if to < 0 else min(to, last)
        else:
            index = max(0, min(last, (last if self._cursor is None else self._cursor) + step))
        self._cursor = None if index == last else index
        self.log_widget.auto_scroll = self._cursor is None  # reading back: new events do not scroll
        self._show_cursor()

    def _show_cursor(self) -> None:
        if not self._drawn:
            self.log_widget.mark(range(0))
            return
        index = len(self._drawn) - 1 if self._cursor is None else min(self._cursor, len(self._drawn) - 1)
        self.log_widget.mark(self._drawn[index][0])

    def _chose(self) -> None:
        event = self.chosen
        if event is not None:
            self.post_message(EventChosen(event))

    # -- the least level ----------------------------------------------------------------------

    def set_level(self, least: str | None = None) -> None:
        """Show events of `least` level and above; None: the next step (all, warnings, errors)."""
        steps = list(LEVEL_STEPS)
        if least is None:
            least = steps[(steps.index(self.least) + 1) % len(steps)] if self.least in steps else "debug"
        if least == self.least:
            return
        self.least = least
        self.redraw()

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
        chosen = self.chosen if self._cursor is not None else None
        self._drawn.clear()
        log.clear()
        self._write(list(self.events))
        if chosen is not None:  # the cursor stays on its event if it is still shown
            found = [i for i, (_, event) in enumerate(self._drawn) if event is chosen]
            self._cursor = found[0] if found and found[0] < len(self._drawn) - 1 else None
            log.auto_scroll = self._cursor is None
            self._show_cursor()

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
