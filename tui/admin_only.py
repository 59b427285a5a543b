"""A token without the admin role: the daemon refuses it its status, events, cache and sites
(`edge:*` and the cache rules are admin-only), not its project's images and tasks. The screens it
may not read say so, with the daemon's refusal, instead of "Waiting for the daemon…" for ever."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App
from textual.widgets import Static

from tui.display import visible
from tui.widgets.steady import show_text

# (screen, the widget that says it, what the screen would show)
ADMIN_SCREENS = [
    ("#overview-site", "the site's status, stores and counts"),
    ("#cache-summary", "the image cache and its prefetch queue"),
    ("#event-level", "the daemon's event log"),
]


def admin_only_text(what: str, reason: str) -> Text:
    text = Text()
    text.append("Admin only: ", style="bold yellow")
    text.append("%s need the admin role, which this token does not have. " % what)
    text.append("Images (2) and Queues (3) show what it may see.\n", style="bold")
    text.append("The daemon: %s" % visible(reason), style="dim")
    return text


def show_admin_only(app: App[Any], reason: str) -> None:
    for selector, what in ADMIN_SCREENS:
        line = app.query_one(selector, Static)
        line.remove_class("-hidden")
        line.add_class("-admin-only")
        show_text(line, admin_only_text(what, reason))
