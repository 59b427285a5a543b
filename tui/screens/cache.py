"""Cache: the site's LRU image cache. The daemon has none yet, so this says so."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

Json = dict[str, Any]


def cache_summary(cache: Json | None) -> Text:
    if not cache:
        text = Text("Cache not configured on this site.", style="bold")
        text.append("\n\nThis daemon keeps every image it holds; there is no cache to queue or evict.", style="dim")
        return text
    text = Text("Cache\n", style="bold")
    for key, value in sorted(cache.items()):
        text.append("\n%s " % key, style="cyan")
        text.append(str(value))
    return text


class CachePane(VerticalScroll):
    def compose(self) -> ComposeResult:
        yield Static(cache_summary(None), id="cache-summary")

    def show_status(self, status: Json) -> None:
        self.query_one("#cache-summary", Static).update(cache_summary(status.get("cache")))
