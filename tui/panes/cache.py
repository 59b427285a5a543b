"""Cache: the site's LRU cache of hub images. Figures (use against the watermarks, hits, bytes
from cache and from the hub), the cached images (most recently used first), and the prefetch queue
merged with the fills in progress; the line below describes the highlighted row in full. Its
actions (remove a row, clear) with their dialogs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.widgets import Static

from tui.dialogs.choose import StoreChoiceScreen
from tui.dialogs.confirm import ConfirmScreen
from tui.display import (
    EMPTY,
    ago,
    coarse_duration,
    human_bytes,
    human_duration,
    human_pair,
    human_rate,
    percent,
    plain,
    progress_bar,
    short_id,
    usage_bar,
    visible,
)
from tui.guard import while_running
from tui.messages import CacheCleared, CacheRemoved
from tui.panes.acting import ActingPane
from tui.rate import TransferRates, eta_seconds
from tui.session import Session, cache_enabled
from tui.widgets.contained import PlainStatic
from tui.widgets.keyed_table import KeyedTable, Values
from tui.widgets.steady import show_text

Json = dict[str, Any]
NameOf = Callable[[str], str]
LABEL = 9

ENTRY_COLUMNS = [
    ("image", "Image", 20),
    ("id", "ID", 8),
    ("size", "Size", 8),
    ("hits", "Hits", 5),
    ("used", "Last used", 10),
    ("cached", "Cached", 10),
]
ENTRY_GROW = [("image", 20)]
QUEUE_COLUMNS = [
    ("image", "Image", 16),
    ("state", "State", 8),
    ("progress", "Progress", 13),
    ("tries", "Tries", 5),
    ("next", "Next try", 9),
    ("error", "Last error", 10),
]
QUEUE_GROW = [("image", 10), ("error", 200)]
STATE_STYLES = {"filling": "cyan", "queued": "yellow", "retry": "bold red"}
CLEAR_CHOICES = {
    "cache": "every cached copy",
    "queue": "the prefetch queue",
    "both": "the cached copies and the queue",
}


def _label(name: str) -> Text:
    return Text(name.ljust(LABEL), style="bold")


def off_text(status: Json) -> Text:
    text = Text("Cache not configured on this site.", style="bold")
    if (status.get("site") or {}).get("role") == "hub":
        why = (
            "\n\nThis is the hub: it holds every image itself. The edge sites cache them; Sites (6) shows their caches."
        )
    elif (status.get("hub") or {}).get("configured"):
        why = (
            "\n\nThis site has a hub, but its cache is off ([cache] enabled = false): "
            "images come from the hub on each read."
        )
    else:
        why = (
            "\n\nThis site has no hub ([hub] url): it keeps every image it holds; "
            "there is nothing to cache, queue or evict."
        )
    text.append(why, style="dim")
    return text


def figures_text(cache: Json) -> Text:
    """Three lines: use against the limit and watermarks, hits, and the rest of the counters."""
    used, limit = int(cache.get("used_bytes") or 0), int(cache.get("max_size") or 0)
    high, low = int(cache.get("high_watermark") or 100), int(cache.get("low_watermark") or 100)
    stats = cache.get("stats") or {}
    text = _label("Used")
    text.append("%s of %s (%s) " % (human_bytes(used), human_bytes(limit), percent(used, limit)))
    text.append_text(usage_bar(used, limit, low, high, width=16))
    text.append(" high %d%% · low %d%%" % (high, low), style="dim")
    text.append("\n")
    text.append_text(_label("Hits"))
    hits, misses = int(stats.get("hits") or 0), int(stats.get("misses") or 0)
    text.append("%d%%" % round(100 * float(stats.get("hit_ratio") or 0)), style="bold")
    text.append(
        " · %d hit%s, %d miss%s · from cache %s, from upstream %s"
        % (
            hits,
            "" if hits == 1 else "s",
            misses,
            "" if misses == 1 else "es",
            human_bytes(stats.get("bytes_from_cache") or 0),
            human_bytes(stats.get("bytes_from_upstream") or 0),
        )
    )
    text.append("\n")
    text.append_text(_label("Entries"))
    text.append(
        "%d cached · %d filling · evictions %d · invalid %d · uncached %d"
        % (
            int(cache.get("entries_count") or 0),
            int(cache.get("fills_count") or 0),
            int(stats.get("evictions") or 0),
            int(stats.get("invalid") or 0),
            int(stats.get("uncached") or 0),
        )
    )
    return text


def entry_row(entry: Json, name: str, now: float) -> Values:
    return (
        name,
        short_id(str(entry["image_id"])),
        human_bytes(entry.get("size")),
        visible(entry.get("hits", 0)),
        ago(entry.get("last_accessed"), now, coarse=True),
        ago(entry.get("cached_at"), now, coarse=True),
    )


def queue_rows(view: Json) -> dict[str, Json]:
    """The queue and the fills by image id, fills first: a queued image being fetched is one row."""
    rows: dict[str, Json] = {}
    for fill in view.get("fills") or []:
        rows[str(fill["image_id"])] = {"fill": fill}
    for item in view.get("queue") or []:
        rows.setdefault(str(item["image_id"]), {})["queued"] = item
    return rows


def queue_state(row: Json) -> str:
    if "fill" in row:
        return "filling"
    return "retry" if int(row["queued"].get("attempts") or 0) else "queued"


def fill_eta(fill: Json, rate: float | None) -> float | None:
    return eta_seconds(fill.get("bytes_done"), fill.get("bytes_total"), rate)


def queue_row(row: Json, name: str, now: float, rate: float | None = None) -> Values:
    """`rate`: a fill's bytes per second from successive polls; its ETA goes in "Next try"."""
    fill, item = row.get("fill"), row.get("queued") or {}
    state = queue_state(row)
    due = item.get("next_attempt_at")
    if fill:
        eta = fill_eta(fill, rate)
        when = "ETA %s" % coarse_duration(eta) if eta is not None else EMPTY
    elif item:
        when = "due" if due is not None and due <= now else ago(due, now)
    else:
        when = EMPTY
    return (
        name,
        state,
        progress_bar(fill.get("bytes_done"), fill.get("bytes_total")) if fill else Text(EMPTY),
        visible(item["attempts"]) if item else EMPTY,
        when,
        visible(item.get("last_error") or ""),
    )


def entry_detail(entry: Json, name: str, now: float) -> Text:
    text = Text()
    text.append(visible(name), style="bold")
    text.append("  %s\n" % visible(entry["image_id"]), style="dim")
    text.append(
        "cached %s · %s · %s hit(s) · last used %s"
        % (
            ago(entry.get("cached_at"), now),
            human_bytes(entry.get("size")),
            visible(entry.get("hits", 0)),
            ago(entry.get("last_accessed"), now),
        )
    )
    return text


def queue_detail(row: Json, name: str, now: float, rate: float | None = None) -> Text:
    fill, item = row.get("fill"), row.get("queued")
    text = Text()
    text.append(visible(name), style="bold")
    text.append("  %s\n" % visible((fill or item or {}).get("image_id", "")), style="dim")
    parts = []
    if fill:
        parts.append("filling %s" % human_pair(fill.get("bytes_done"), fill.get("bytes_total")))
        if rate is not None:
            eta = fill_eta(fill, rate)
            parts.append("%s%s" % (human_rate(rate), " · ETA %s" % human_duration(eta) if eta is not None else ""))
    if item:
        parts.append("queued %s · %d attempt(s)" % (ago(item.get("queued_at"), now), int(item.get("attempts") or 0)))
        if not fill and item.get("next_attempt_at") is not None:
            parts.append("next try %s" % ago(item["next_attempt_at"], now))
    else:
        parts.append("a client's read (not queued)")
    text.append(" · ".join(parts))
    if item and item.get("last_error"):
        text.append("\n")
        text.append(visible(item["last_error"]), style="red")
    return text


class CacheEntryTable(KeyedTable):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(ENTRY_COLUMNS, grow=ENTRY_GROW, id=id)


class CacheQueueTable(KeyedTable):
    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(QUEUE_COLUMNS, grow=QUEUE_GROW, id=id)

    def render_value(self, column: str, value: Any) -> Any:
        if column == "state":
            return Text(value, style=STATE_STYLES.get(value, ""))
        if column == "error" and value:
            return plain(value, style="red")
        return super().render_value(column, value)


class CachePane(ActingPane, Vertical):
    # Focusable, so that switching here moves focus off the screen left behind (focus inside a
    # hidden tab would switch back to it) even when there are no tables to focus.
    can_focus = True
    # The app's keys call these actions (one key map: see ApplianceTui.BINDINGS).
    ACTIONS = frozenset({"cache_remove", "cache_clear"})

    def __init__(self, session: Session, *, id: str | None = None) -> None:
        super().__init__(session, id=id)
        self.enabled = False
        self.loaded = False
        self.entries: dict[str, Json] = {}
        self.queue: dict[str, Json] = {}
        self._now = 0.0
        self._name_of: NameOf = short_id
        self._fill_rates = TransferRates()  # a fill's rate, from the polls' byte counts

    def compose(self) -> ComposeResult:
        yield PlainStatic(off_text({}), id="cache-summary")
        with Vertical(id="cache-tables", classes="-hidden"):
            yield PlainStatic(
                Text("Cached images · most recently used first", style="bold"),
                id="cache-entries-title",
                classes="section",
            )
            yield CacheEntryTable(id="cache-entries")
            yield PlainStatic(Text("Prefetch queue and fills", style="bold"), id="cache-queue-title", classes="section")
            yield CacheQueueTable(id="cache-queue")
            yield PlainStatic(Text("Loading the cache…", style="dim"), id="cache-detail")

    @property
    def entry_table(self) -> CacheEntryTable:
        return self.query_one(CacheEntryTable)

    @property
    def queue_table(self) -> CacheQueueTable:
        return self.query_one(CacheQueueTable)

    def focus_table(self) -> None:
        if self.enabled:
            self.entry_table.focus()
        else:
            self.focus()

    def show_status(self, status: Json) -> None:
        """The figures come with every status poll; the tables with the cache view."""
        cache = status.get("cache")
        enabled = bool(cache and cache.get("enabled"))
        if enabled != self.enabled:
            self.enabled = enabled
            self.query_one("#cache-tables").set_class(not enabled, "-hidden")
        show_text(
            self.query_one("#cache-summary", Static), figures_text(cache) if enabled and cache else off_text(status)
        )

    def show_view(self, view: Json, name_of: NameOf, now: float) -> None:
        self.loaded, self._now, self._name_of = True, now, name_of
        self.entries = {str(e["image_id"]): e for e in view.get("entries") or []}
        self.queue = queue_rows(view)
        fills = {k: r["fill"] for k, r in self.queue.items() if "fill" in r}
        for key, fill in fills.items():
            self._fill_rates.observe(key, int(fill.get("bytes_done") or 0), now)
        self._fill_rates.keep_only(set(fills))
        show_text(
            self.query_one("#cache-entries-title", Static),
            Text.assemble(("Cached images (%d)" % len(self.entries), "bold"), (" · most recently used first", "dim")),
        )
        show_text(
            self.query_one("#cache-queue-title", Static),
            Text.assemble(
                (
                    "Prefetch queue (%d) and fills (%d)" % (len(view.get("queue") or []), len(view.get("fills") or [])),
                    "bold",
                )
            ),
        )
        self.entry_table.sync_rows([(k, entry_row(e, name_of(k), now)) for k, e in self.entries.items()])
        self.queue_table.sync_rows(
            [(k, queue_row(r, name_of(k), now, self._fill_rates.rate(k))) for k, r in self.queue.items()]
        )
        self.show_highlighted(name_of)

    def selected(self) -> tuple[str, str] | None:
        """(image id, "cache" | "queue" | "fill") of the highlighted row of the focused table
        (the cached images when neither has focus)."""
        table = self.queue_table if self.app.focused is self.queue_table else self.entry_table
        key = table.highlighted_key
        if key is None:
            return None
        if table is self.entry_table:
            return (key, "cache") if key in self.entries else None
        row = self.queue.get(key)
        if row is None:
            return None
        return (key, "queue" if "queued" in row else "fill")

    def show_highlighted(self, name_of: NameOf) -> None:
        detail = self.query_one("#cache-detail", Static)
        chosen = self.selected()
        if chosen is None:
            if not self.loaded:
                message = "Loading the cache…"
            elif not self.entries and not self.queue:
                message = "Nothing cached or queued yet. Press p on Images to queue an image."
            else:
                message = "tab: the other table · x: remove the highlighted row · X: clear"
            show_text(detail, Text(message, style="dim"))
            return
        key, kind = chosen
        if kind == "cache":
            show_text(detail, entry_detail(self.entries[key], name_of(key), self._now))
        else:
            show_text(detail, queue_detail(self.queue[key], name_of(key), self._now, self._fill_rates.rate(key)))

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        # The detail line follows the focused table.
        if self.loaded:
            self.show_highlighted(self._name_of)

    # -- actions: ask, then a worker does it and reports back -------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action not in self.ACTIONS:
            return True
        if self.session.read_only or not cache_enabled(self.session.status):
            return False
        if action == "cache_remove" and self._selected_or_none() is None:
            return None  # shown greyed out: no row highlighted
        return True

    def _selected_or_none(self) -> tuple[str, str] | None:
        try:
            return self.selected()
        except NoMatches:  # bindings are checked while the app is still composing
            return None

    def action_cache_remove(self) -> None:
        if self.session.read_only:
            return
        chosen = self.selected()
        if chosen is None:
            self.notify(
                "Highlight a cached or queued image on the Cache screen first.", severity="warning", markup=False
            )
            return
        image_id, kind = chosen
        name = self._name_of(image_id)
        if kind == "fill":
            self.notify(
                "%s is being cached for a client's read; remove it once it is cached." % name,
                severity="warning",
                markup=False,
            )
            return
        if kind == "cache":
            title, yes = "Remove from cache", "Remove"
            question = "Remove the cached copy of %s (%s)?\nThe next read fetches it from the hub again." % (
                name,
                visible(image_id),
            )
        else:
            title, yes = "Remove from queue", "Dequeue"
            question = "Take %s (%s) off the prefetch queue?" % (name, visible(image_id))
            if "fill" in self.queue.get(image_id, {}):
                question += "\nThe fill under way goes on."

        def answered(ok: bool | None) -> None:
            if ok:
                self.act(
                    "Remove %s from the %s" % (name, kind),
                    partial(self.session.client.uncache_image, image_id, kind),
                    CacheRemoved(image_id, name, kind),
                )

        self.app.push_screen(ConfirmScreen(title, question, yes=yes), answered)

    def action_cache_clear(self) -> None:
        if self.session.read_only:
            return
        counts = {"cache": len(self.entries), "queue": sum("queued" in r for r in self.queue.values())}
        counts["both"] = counts["cache"] + counts["queue"]
        choices = [(target, "%s (%d image(s))" % (what, counts[target])) for target, what in CLEAR_CHOICES.items()]

        def chosen(target: str | None) -> None:
            if not target:
                return
            question = "Clear %s: %d image(s)?" % (CLEAR_CHOICES[target], counts[target])
            if target != "queue":
                question += "\nReads of those images fetch them from the hub again."

            def answered(ok: bool | None) -> None:
                if ok:
                    self.act(
                        "Clear %s" % CLEAR_CHOICES[target],
                        partial(self.session.client.clear_cache, target),
                        CacheCleared(target),
                    )

            self.app.push_screen(ConfirmScreen("Clear cache", question, yes="Clear"), answered)

        self.app.push_screen(StoreChoiceScreen("Clear what?", choices), chosen)

    @while_running
    def on_cache_removed(self, message: CacheRemoved) -> None:
        said = "Removed the cached copy of %s." if message.target == "cache" else "Took %s off the prefetch queue."
        self.notify(said % message.name, title="Cache", markup=False)
        self.changed(full=False)

    @while_running
    def on_cache_cleared(self, message: CacheCleared) -> None:
        self.notify("Cleared %s." % CLEAR_CHOICES[message.target], title="Cache", markup=False)
        self.changed(full=False)
