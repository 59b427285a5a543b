"""Queues: import tasks with live progress (bytes done/total, rate, ETA); failed ones show the
daemon's message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from tui.display import (
    EMPTY,
    human_duration,
    human_pair,
    human_rate,
    plain,
    progress_bar,
    short_id,
    status_text,
    visible,
)
from tui.rate import TransferRates, eta_seconds
from tui.widgets.contained import PlainStatic
from tui.widgets.keyed_table import KeyedTable, Values

Json = dict[str, Any]

# Message right after Status: at 80 columns a failed task's reason starts on its row (cut with
# "…"; the pane below wraps it whole), not 80 cells to the right.
COLUMNS = [
    ("image", "Image", 11),
    ("status", "Status", 10),
    ("message", "Message", 14),
    ("progress", "Progress", 13),
    ("bytes", "Transferred", 15),
    ("rate", "Rate", 10),
    ("eta", "ETA", 6),
    ("method", "Method", 20),
]
# The rest of a wide terminal: a little for image names, then all for messages.
GROW = [("image", 4), ("message", 200)]
ORDER = {"processing": 0, "pending": 1, "failure": 2, "success": 3}


def method_of(task: Json) -> str:
    """ "web-download → local" from the task's input (the import request)."""
    data = task.get("input") or {}
    request = data.get("import_req") or {}
    method = visible((request.get("method") or {}).get("name") or task.get("type") or "?")
    stores = data.get("backend") or request.get("stores") or []
    return "%s → %s" % (method, ",".join(visible(s) for s in stores)) if stores else method


def transferred(task: Json) -> str:
    return human_pair(task.get("bytes_done"), task.get("bytes_total"))


def task_row(task: Json, image_name: str, rate: float | None) -> Values:
    status = str(task.get("status") or "?")
    done, total = task.get("bytes_done"), task.get("bytes_total")
    running = status == "processing"
    if status == "success" and total:
        done = total
    return (
        image_name,
        status,
        str(task.get("message") or ""),
        progress_bar(done, total) if (running or total) else Text(EMPTY),
        transferred(task),
        human_rate(rate) if running else EMPTY,
        human_duration(eta_seconds(done, total, rate)) if running else EMPTY,
        method_of(task),
    )


def task_order(task: Json) -> tuple[int, str]:
    # Running first, then queued, failed, done; newest first within each (ISO stamps sort).
    stamp = str(task.get("created_at") or "")
    inverted = "".join(chr(0x10FFFF - ord(c)) for c in stamp)
    return (ORDER.get(str(task.get("status")), 4), inverted)


def task_detail(task: Json, image_name: str) -> Text:
    """The highlighted task, its message whole and wrapped right under its name and status (at
    80x24 the pane shows six lines), then its ids and times."""
    text = Text()
    text.append("%s " % visible(image_name), style="bold")
    text.append_text(status_text(str(task.get("status"))))
    text.append(" · %s" % method_of(task))
    if task.get("message"):
        style = "red" if task.get("status") == "failure" else ""
        text.append("\n%s" % visible(task["message"]), style=style)
    text.append("\nimage %s · task %s" % (visible(task.get("image_id")), visible(task.get("id"))), style="dim")
    text.append(
        "\ncreated %s · updated %s"
        % (visible(task.get("created_at") or EMPTY), visible(task.get("updated_at") or EMPTY)),
        style="dim",
    )
    return text


class TaskTable(KeyedTable):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(COLUMNS, grow=GROW, id=id)

    def render_value(self, column: str, value: Any) -> Any:
        if column == "status":
            return status_text(value)
        if column == "message" and value:
            return plain(value, style="red")
        return super().render_value(column, value)


class QueuesPane(Vertical):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.tasks: dict[str, Json] = {}
        self.rates = TransferRates()
        self.loaded = False

    def compose(self) -> ComposeResult:
        yield TaskTable(id="tasks")
        with VerticalScroll(id="task-detail-pane"):
            yield PlainStatic(Text("Loading import tasks…", style="dim"), id="task-detail")

    @property
    def table(self) -> TaskTable:
        return self.query_one(TaskTable)

    def show_tasks(self, tasks: list[Json], at: float, name_of: Callable[[str], str]) -> None:
        self.loaded = True
        self.tasks = {str(t["id"]): t for t in tasks}
        rows: list[tuple[str, Values]] = []
        for task in sorted(tasks, key=task_order):
            task_id = str(task["id"])
            rate = None
            if task.get("status") == "processing" and task.get("bytes_done") is not None:
                rate = self.rates.observe(task_id, int(task["bytes_done"]), at)
            rows.append((task_id, task_row(task, name_of(str(task.get("image_id") or "")), rate)))
        self.rates.keep_only({k for k, t in self.tasks.items() if t.get("status") == "processing"})
        self.table.sync_rows(rows)
        self.show_highlighted(name_of)

    def show_highlighted(self, name_of: Callable[[str], str]) -> None:
        detail = self.query_one("#task-detail", Static)
        key = self.table.highlighted_key
        task = self.tasks.get(key) if key else None
        if task is None:
            detail.update(Text("No import tasks yet." if self.loaded else "Loading import tasks…", style="dim"))
            return
        detail.update(task_detail(task, name_of(str(task.get("image_id") or ""))))


def default_name(image_id: str) -> str:
    return short_id(image_id) if image_id else EMPTY
