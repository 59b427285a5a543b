"""The notifications (toasts) the operator may have missed: every one the app showed, kept with
its time, newest first on a full screen (`m`). Toasts still expire after a few seconds."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from rich.console import Group
from rich.table import Table
from rich.text import Text

from tui.display import plain

KEEP = 200
SEVERITY_STYLES = {"information": "cyan", "warning": "yellow", "error": "bold red"}
SEVERITY_WORDS = {"information": "info", "warning": "warning", "error": "error"}


@dataclass(frozen=True)
class Notice:
    at: float  # wall time
    severity: str
    title: str  # already `visible`
    message: str  # already `visible`


class Notices:
    def __init__(self) -> None:
        self.kept: deque[Notice] = deque(maxlen=KEEP)

    def add(self, notice: Notice) -> None:
        self.kept.append(notice)

    def page(self) -> Group:
        if not self.kept:
            return Group(Text("No notifications yet.", style="dim"))
        table = Table.grid(padding=(0, 1), expand=True)
        table.add_column(no_wrap=True, width=8, style="dim")
        table.add_column(no_wrap=True, width=7)
        table.add_column(ratio=1, overflow="fold")
        for notice in reversed(self.kept):
            said = Text()
            if notice.title:
                said.append_text(plain(notice.title, style="bold"))
                said.append("\n")
            said.append_text(plain(notice.message))
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(notice.at)),
                Text(
                    SEVERITY_WORDS.get(notice.severity, notice.severity), style=SEVERITY_STYLES.get(notice.severity, "")
                ),
                said,
            )
        count = Text("%d notification(s), newest first; each toast also showed for a few seconds." % len(self.kept))
        return Group(count, table)
