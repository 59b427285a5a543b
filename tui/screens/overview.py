"""Overview: site, hub link, stores with capacity bars, cache, task and image counts."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Static

from tui.display import capacity_bar, human_bytes, human_duration, status_text

Json = dict[str, Any]
LABEL = 8  # width of the left-hand labels


def _label(name: str) -> Text:
    return Text(name.ljust(LABEL), style="bold")


def site_text(status: Json) -> Text:
    site = status.get("site") or {}
    text = _label("Site")
    text.append(str(site.get("name", "?")), style="bold")
    text.append(" (%s)" % site.get("role", "?"))
    text.append(" · version %s · up %s" % (status.get("version", "?"), human_duration(status.get("uptime_seconds"))))
    return text


def hub_text(status: Json) -> Text:
    hub = status.get("hub") or {}
    text = _label("Hub")
    if not hub.get("configured"):
        text.append("not configured", style="dim")
        return text
    text.append(str(hub.get("state", "?")))
    if hub.get("last_sync"):
        text.append(" · last sync %s" % hub["last_sync"])
    if hub.get("last_error"):
        text.append(" · %s" % hub["last_error"], style="red")
    return text


def stores_text(status: Json, bar_width: int = 30) -> Text:
    stores = status.get("stores") or []
    text = _label("Stores")
    if not stores:
        text.append("none", style="dim")
        return text
    width = max(len(str(s.get("id", ""))) for s in stores)
    for i, store in enumerate(stores):
        if i:
            text.append("\n" + " " * LABEL)
        total, free, used = int(store.get("total_bytes") or 0), int(store.get("free_bytes") or 0), int(store.get("used_bytes") or 0)
        text.append(str(store.get("id")).ljust(width), style="bold")
        text.append(" ")
        text.append_text(capacity_bar(total, free, used, bar_width))
        percent = 100 * (total - free) / total if total else 0
        text.append(" %3d%% used" % percent)
        if store.get("default"):
            text.append(" · default", style="italic")
        text.append("\n" + " " * (LABEL + width + 1))
        text.append("images %s · %s used / %s free of %s" % (
            human_bytes(used), human_bytes(max(0, total - free)), human_bytes(free), human_bytes(total)), style="dim")
        if store.get("read_only"):
            text.append("\n" + " " * (LABEL + width + 1))
            text.append(" READ-ONLY ", style="bold white on red")
            reason = store.get("read_only_reason") or ""
            if reason:
                text.append(" %s" % reason, style="red")
    return text


def cache_text(status: Json) -> Text:
    text = _label("Cache")
    cache = status.get("cache")
    if not cache:
        text.append("not configured on this site", style="dim")
        return text
    text.append(", ".join("%s %s" % (k, v) for k, v in sorted(cache.items()) if not isinstance(v, (dict, list))))
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


class OverviewPane(VerticalScroll):
    BINDINGS = [
        Binding("j", "scroll_down", "Down", show=False),
        Binding("k", "scroll_up", "Up", show=False),
    ]

    def compose(self) -> ComposeResult:
        yield Static(Text("Waiting for the daemon…", style="dim"), id="overview-site")
        yield Static(id="overview-hub")
        yield Static(id="overview-stores")
        yield Static(id="overview-cache")
        yield Static(id="overview-counts")

    def show_status(self, status: Json) -> None:
        self.query_one("#overview-site", Static).update(site_text(status))
        self.query_one("#overview-hub", Static).update(hub_text(status))
        self.query_one("#overview-stores", Static).update(stores_text(status))
        self.query_one("#overview-cache", Static).update(cache_text(status))
        self.query_one("#overview-counts", Static).update(counts_text(status))
