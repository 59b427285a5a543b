"""`?`: every key, in one place (tests check it against the app's bindings)."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.panes.image_actions import HELP as IMAGE_ACTION_HELP
from tui.widgets.scrolling import SCROLL_KEYS, scroll

# (keys, what they do, mutating?)
KEYS: list[tuple[str, str, bool]] = [
    ("1 2 3 4 5 6", "Overview Images Queues Cache Events Sites", False),
    ("?", "this help", False),
    ("/", "filter the Images table or the Events log", False),
    ("ctrl+p", "command palette: screens and actions by name", False),
    ("j k ↑ ↓", "move the cursor / scroll", False),
    ("pgup pgdn", "page up / down in tables, logs and details", False),
    ("home end g G", "first / last row, event or line", False),
    ("tab shift+tab", "move focus (Cache: cached images ↔ queue)", False),
    ("enter", "open the highlighted row or event in full (esc: back)", False),
    ("esc", "close a dialog or the filter, else go back", False),
    ("l", "least event level shown: all, warnings, errors (Events)", False),
    ("m", "the notifications shown so far, with their times", False),
    ("r", "refresh now (a detail view: reload it)", False),
    ("n", "import an image from a URL (Images)", True),
    ("c", "copy the highlighted image to a store (Images)", True),
    ("x", "Del copy: delete its copy in one store, the image stays (Images)", True),
    ("d", "delete the highlighted image (Images)", True),
    ("p", "queue the highlighted image for caching (Images)", True),
    ("x", "uncache / dequeue the highlighted row (Cache)", True),
    ("X", "clear the cache, the queue, or both (Cache)", True),
    *((keys, text, True) for keys, text in IMAGE_ACTION_HELP),
    ("ctrl+s", "save the edit dialog's name, tags and properties", True),
    ("y / n", "answer a confirmation", False),
    ("q ctrl+q", "quit", False),
    ("mouse", "click tabs, rows, buttons, footer keys; wheel", False),
]


def help_table(read_only: bool) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column()
    for keys, text, mutating in KEYS:
        if mutating and read_only:
            continue
        table.add_row(keys, text)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "Close"),
        *SCROLL_KEYS,
    ]

    def __init__(self, read_only: bool) -> None:
        super().__init__()
        self._read_only = read_only

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", classes="help"):
            yield Static(Text("Keys", style="bold"), id="dialog-title")
            yield Static(help_table(self._read_only), id="help-keys")
            if self._read_only:
                yield Static(Text("Read-only mode: actions that change the daemon are hidden.", style="yellow"))
            yield Static(Text("esc, q or ? closes this help", style="dim"))

    def action_scroll(self, direction: str) -> None:
        scroll(self.query_one("#dialog", VerticalScroll), direction)

    def action_close(self) -> None:
        self.dismiss(None)
