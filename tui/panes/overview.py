"""Overview: site, hub link (or, on a hub, its sites), stores with capacity bars, cache, task
and image counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.display import (
    ago,
    capacity_bar,
    human_bytes,
    human_duration,
    human_pair,
    percent,
    progress_bar,
    status_text,
    visible,
)
from tui.panes.sites import sites_summary
from tui.widgets.contained import PlainStatic
from tui.widgets.steady import show_text

Json = dict[str, Any]
LABEL = 8  # width of the left-hand labels


def _label(name: str) -> Text:
    return Text(name.ljust(LABEL), style="bold")


def site_text(status: Json) -> Text:
    site = status.get("site") or {}
    text = _label("Site")
    text.append(visible(site.get("name", "?")), style="bold")
    text.append(" (%s)" % visible(site.get("role", "?")))
    text.append(
        " · version %s · up %s" % (visible(status.get("version", "?")), human_duration(status.get("uptime_seconds")))
    )
    return text


HUB_STATES = {"up": "bold green", "down": "bold red", "unknown": "yellow"}


def hub_text(status: Json, now: float, name_of: Callable[[str], str], sites: list[Json] | None = None) -> Text:
    """The hub link at an edge: state, last sync, the last error, pinned pulls in progress. On a
    hub: its sites (None until loaded)."""
    site = status.get("site") or {}
    hub = status.get("hub") or {}
    if site.get("role") == "hub":
        text = _label("Sites")
        if sites is None:
            text.append("loading…", style="dim")
        else:
            text.append_text(sites_summary(sites, now))
            text.append(" · 6 lists them", style="dim")
        return text
    text = _label("Hub")
    if not hub.get("configured"):
        text.append("not configured", style="dim")
        return text
    state = str(hub.get("state", "?"))
    text.append(visible(state), style=HUB_STATES.get(state, ""))
    text.append(" · %s" % visible(hub.get("url", "?")))
    text.append(" · last sync %s" % ago(hub.get("last_sync"), now) if hub.get("last_sync") else " · never synced")
    if not hub.get("registered"):
        text.append(
            " · not registered" if hub.get("site_api") is not False else " · plain Glance (no sites API)",
            style="yellow",
        )
    indent = "\n" + " " * LABEL
    if hub.get("last_error"):
        text.append(indent)
        text.append(visible(hub["last_error"]), style="red")
    for pull in hub.get("pulls") or []:
        text.append(indent)
        text.append("pulling %s " % visible(name_of(str(pull.get("image_id") or ""))))
        text.append_text(progress_bar(pull.get("bytes_done"), pull.get("bytes_total")))
        text.append(" %s" % human_pair(pull.get("bytes_done"), pull.get("bytes_total")), style="dim")
    return text


def stores_text(status: Json, bar_width: int = 30) -> Text:
    stores = status.get("stores") or []
    text = _label("Stores")
    if not stores:
        text.append("none", style="dim")
        return text
    width = max(len(visible(s.get("id", ""))) for s in stores)
    for i, store in enumerate(stores):
        if i:
            text.append("\n" + " " * LABEL)
        total, free, used = (
            int(store.get("total_bytes") or 0),
            int(store.get("free_bytes") or 0),
            int(store.get("used_bytes") or 0),
        )
        text.append(visible(store.get("id")).ljust(width), style="bold")
        text.append(" ")
        text.append_text(capacity_bar(total, free, used, bar_width))
        percent = 100 * (total - free) / total if total else 0
        text.append(" %3d%% used" % percent)
        if store.get("default"):
            text.append(" · default", style="italic")
        text.append("\n" + " " * (LABEL + width + 1))
        text.append(
            "images %s · %s used / %s free of %s"
            % (human_bytes(used), human_bytes(max(0, total - free)), human_bytes(free), human_bytes(total)),
            style="dim",
        )
        if store.get("read_only"):
            text.append("\n" + " " * (LABEL + width + 1))
            text.append(" READ-ONLY ", style="bold white on red")
            reason = store.get("read_only_reason") or ""
            if reason:
                text.append(" %s" % visible(reason), style="red")
    return text


def cache_text(status: Json) -> Text:
    text = _label("Cache")
    cache = status.get("cache")
    if not cache or not cache.get("enabled"):
        text.append("not configured on this site", style="dim")
        return text
    stats = cache.get("stats") or {}
    used, limit = cache.get("used_bytes") or 0, cache.get("max_size") or 0
    text.append("%s of %s (%s)" % (human_bytes(used), human_bytes(limit), percent(used, limit)))
    text.append(
        " · %d image(s) · hit ratio %d%%"
        % (int(cache.get("entries_count") or 0), round(100 * float(stats.get("hit_ratio") or 0)))
    )
    if cache.get("fills_count"):
        text.append(" · %d filling" % int(cache["fills_count"]), style="cyan")
    return text


def counts_text(status: Json) -> Text:
    tasks = status.get("tasks") or {}
    text = _label("Tasks")
    parts = [
        ("active", int(tasks.get("processing", 0)), "cyan"),
        ("queued", int(tasks.get("pending", 0)), "yellow"),
        ("failed", int(tasks.get("failure", 0)), "bold red"),
        ("succeeded", int(tasks.get("success", 0)), "green"),
    ]
    for i, (name, count, style) in enumerate(parts):
        if i:
            text.append(" · ")
        text.append(str(count), style=style if count else "")
        text.append(" %s" % name)
    text.append(" · imports running %d" % int(status.get("imports_running") or 0))
    text.append("\n")
    text.append_text(_label("Images"))
    images = status.get("images") or {}
    if not images:
        text.append("none", style="dim")
        return text
    text.append("%d:" % sum(images.values()), style="bold")
    for i, (name, count) in enumerate(sorted(images.items(), key=lambda kv: (-kv[1], kv[0]))):
        text.append(" · " if i else " ")
        text.append("%d " % count)
        text.append_text(status_text(name))
    return text


def _ms(seconds: object) -> str:
    return "%.0f ms" % (1000 * float(seconds)) if isinstance(seconds, (int, float)) else "?"


def loop_text(status: Json) -> Text | None:
    """How late the daemon's event loop runs (every request waits as long); None from a daemon
    that does not say."""
    lag = status.get("event_loop_lag")
    if not isinstance(lag, dict):
        return None
    text = _label("Loop")
    text.append("lag %s" % _ms(lag.get("latest_seconds")))
    peak = lag.get("max_seconds")
    style = ""
    if isinstance(peak, (int, float)):
        style = "bold red" if peak >= 0.25 else "yellow" if peak >= 0.05 else ""
    text.append(" · max ")
    text.append(_ms(peak), style=style)
    window = lag.get("window_seconds")
    if isinstance(window, (int, float)):
        text.append(" over %s" % human_duration(window), style="dim")
    return text


class OverviewPane(VerticalScroll):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield PlainStatic(Text("Waiting for the daemon…", style="dim"), id="overview-site")
        yield PlainStatic(id="overview-hub")
        yield PlainStatic(id="overview-stores")
        yield PlainStatic(id="overview-cache")
        yield PlainStatic(id="overview-counts")

    def show_status(self, status: Json, now: float, name_of: Callable[[str], str], sites: list[Json] | None) -> None:
        show_text(self.query_one("#overview-site", Static), site_text(status))
        show_text(self.query_one("#overview-hub", Static), hub_text(status, now, name_of, sites))
        show_text(self.query_one("#overview-stores", Static), stores_text(status))
        show_text(self.query_one("#overview-cache", Static), cache_text(status))
        counts = counts_text(status)
        loop = loop_text(status)
        if loop is not None:
            counts.append("\n")
            counts.append_text(loop)
        show_text(self.query_one("#overview-counts", Static), counts)
