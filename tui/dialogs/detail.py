"""`Enter`: everything about one image or task on a full screen, scrollable, `Esc` back.

The image's view is loaded when it opens (the image, its locations and its tasks); every value
is the daemon's text, shown through `visible` / `plain` and never as markup."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from tui.client import DaemonApi, DaemonError, DaemonUnavailable
from tui.display import EMPTY, human_bytes, plain, status_text, visible
from tui.panes.queues import method_of, task_detail, transferred
from tui.widgets.contained import PlainStatic
from tui.widgets.scrolling import SCROLL_KEYS, scroll

Json = dict[str, Any]
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
SIZES = frozenset({"size", "virtual_size"})


def _stores(value: object) -> list[str]:
    return [s for s in str(value or "").split(",") if s]


def properties_table(record: Json) -> Table:
    """Every key and value, sorted; long values wrap under themselves."""
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="cyan", no_wrap=True, max_width=32, overflow="ellipsis")
    table.add_column(ratio=1, overflow="fold")
    for key in sorted(record, key=str):
        value = record[key]
        if isinstance(value, list):
            shown = ", ".join(visible(v) for v in value) or EMPTY
        elif value is None or value == "":
            shown = EMPTY
        else:
            shown = visible(value)
        if key in SIZES and isinstance(value, int):
            shown = "%s (%d bytes)" % (human_bytes(value), value)
        table.add_row(plain(key), plain(shown))
    return table


def copies_table(image: Json, locations: list[Json] | None, error: str) -> RenderableType:
    """Each store's copy and its state: active (a location), importing, or failed to import."""
    if error:
        return plain(error, style="red")
    found: dict[str, list[str]] = {}
    for location in locations or ():
        store = str((location.get("metadata") or {}).get("store") or "?")
        found.setdefault(store, []).append(str(location.get("url") or ""))
    states: dict[str, str] = {s: "active" for s in _stores(image.get("stores"))}
    states.update({s: "active" for s in found})
    states.update({s: "importing" for s in _stores(image.get(IMPORTING_TO))})
    states.update({s: "failed" for s in _stores(image.get(FAILED_IMPORT))})
    if not states:
        return Text("no copy in any store (no data yet)", style="dim")
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(style="bold", no_wrap=True, max_width=20, overflow="ellipsis")
    table.add_column(no_wrap=True, width=9)
    table.add_column(ratio=1, overflow="fold")
    style = {"active": "green", "importing": "cyan", "failed": "bold red"}
    for store in sorted(states):
        urls = found.get(store) or ([] if locations is not None else ["(locations not loaded)"])
        where = Text("\n").join(plain(url) for url in urls)
        table.add_row(plain(store), plain(states[store], style=style[states[store]]), where)
    return table


def tasks_table(tasks: list[Json] | None, error: str) -> RenderableType:
    """The image's tasks, newest first, each with its full message."""
    if error:
        return plain(error, style="red")
    if not tasks:
        return Text("none", style="dim")
    table = Table.grid(padding=(0, 1), expand=True)
    table.add_column(no_wrap=True, width=10)
    table.add_column(ratio=1, overflow="fold")
    for task in sorted(tasks, key=lambda t: str(t.get("created_at") or ""), reverse=True):
        body = Text()
        body.append_text(plain(method_of(task), style="bold"))
        body.append_text(plain(" · %s · %s" % (visible(task.get("created_at") or EMPTY), transferred(task))))
        body.append("\n")  # ours: the daemon's text never brings a line break (`plain` escapes it)
        body.append_text(plain(task.get("id") or "?", style="dim"))
        if task.get("message"):
            body.append("\n")
            body.append_text(plain(task["message"], style="red" if task.get("status") == "failure" else ""))
        table.add_row(status_text(str(task.get("status") or "?")), body)
    return table


def heading(text: str) -> Text:
    return Text("\n" + text, style="bold underline")


def image_detail(
    image: Json,
    locations: list[Json] | None,
    tasks: list[Json] | None,
    locations_error: str = "",
    tasks_error: str = "",
    cache: str = "",
) -> Group:
    title = plain(image.get("name") or "(no name)", style="bold")
    title.append_text(plain("  %s" % visible(image.get("id") or "?"), style="dim"))
    parts: list[RenderableType] = [title, heading("Properties"), properties_table(image)]
    parts += [heading("Stores and locations"), copies_table(image, locations, locations_error)]
    if cache:
        parts.append(Text.assemble(("cache ", "bold"), cache))
    parts += [heading("Tasks"), tasks_table(tasks, tasks_error)]
    return Group(*parts)


def task_page(task: Json, image_name: str) -> Group:
    """The task's summary and full message (as on Queues), then every field of it."""
    return Group(task_detail(task, image_name), heading("Properties"), properties_table(task))


async def load_image_detail(client: DaemonApi, image_id: str, cache: str = "") -> Group:
    """The image, its locations and its tasks; a refusal of the locations or tasks (not every
    caller may see them) is said in their place. The image's own refusal is raised."""
    image = await client.image(image_id)
    locations: list[Json] | None = None
    tasks: list[Json] | None = None
    locations_error = tasks_error = ""
    try:
        locations = await client.locations(image_id)
    except DaemonError as exc:
        locations_error = str(exc)
    try:
        tasks = await client.image_tasks(image_id)
    except DaemonError as exc:
        tasks_error = str(exc)
    return image_detail(image, locations, tasks, locations_error, tasks_error, cache)


class DetailScreen(ModalScreen[None]):
    """A full screen over the app; `load` (if given) fetches the content, else `content` shows.
    `every`: load again every so many seconds (a fill in progress, a site's heartbeat); a load
    that fails after one succeeded keeps what is shown, which the app marks stale."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Back"),
        *SCROLL_KEYS,
        Binding("r", "reload", "Reload", show=False),
    ]

    def __init__(
        self,
        title: str,
        content: RenderableType | None = None,
        load: Callable[[], Awaitable[RenderableType]] | None = None,
        every: float | None = None,
    ) -> None:
        super().__init__(classes="detail")
        self._title = title
        self._content = content
        self._load = load
        self._every = every
        self._stale = ""

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="detail-scroll"):
            yield Static(self._title_text(), id="detail-title")
            yield PlainStatic(self._content or Text("Loading…", style="dim"), id="detail-body")

    def _title_text(self) -> Text:
        title = Text.assemble((visible(self._title), "bold reverse"), ("  esc: back", "dim"))
        if self._stale:
            title.append("\n⚠ STALE, the daemon does not answer: %s" % self._stale, style="bold red")
        return title

    def mark_stale(self, note: str) -> None:
        """`note`: how old the content is while the daemon does not answer ("" once it does)."""
        if note != self._stale:
            self._stale = note
            if self.is_mounted:
                self.query_one("#detail-title", Static).update(self._title_text())

    @property
    def body(self) -> PlainStatic:
        return self.query_one("#detail-body", PlainStatic)

    def on_mount(self) -> None:
        self.query_one("#detail-scroll", VerticalScroll).focus()
        if self._load is not None:
            self.fetch()
            if self._every:
                self.set_interval(self._every, self._fetch_again)

    def _fetch_again(self) -> None:
        """The timer's: a load still under way (a slow daemon) goes on rather than restart."""
        if not any(w.group == "detail-view" and not w.is_finished for w in self.workers):
            self.fetch()

    @work(exclusive=True, group="detail-view", exit_on_error=False)
    async def fetch(self) -> None:
        assert self._load is not None
        try:
            content = await self._load()
        except (DaemonError, DaemonUnavailable) as exc:
            if self._content is not None and isinstance(exc, DaemonUnavailable):
                return  # keep what is shown: the app marks it stale
            content = plain("Cannot load this: %s" % exc, style="red")
        self._content = content
        self.body.update(content)

    def action_scroll(self, direction: str) -> None:
        scroll(self.query_one("#detail-scroll", VerticalScroll), direction)

    def action_reload(self) -> None:
        if self._load is not None:
            self.fetch()

    def action_close(self) -> None:
        self.dismiss(None)
