"""A token without the admin role: the daemon refuses it its status, events, cache and sites
(`edge:*` and the cache rules are admin-only), not its project's images and tasks. The screens it
may not read say so, with who the token is (GET /v2/edge/whoami) and the daemon's refusal,
instead of "Waiting for the daemon…" for ever."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App
from textual.widgets import Static

from tui.display import visible
from tui.widgets.steady import show_text

Json = dict[str, Any]

# (the widget that says it, what the screen would show); Sites is shown at a hub only.
ADMIN_SCREENS = [
    ("#overview-site", "the site's status, stores and counts"),
    ("#cache-summary", "the image cache and its prefetch queue"),
    ("#event-level", "the daemon's event log"),
    ("#site-detail", "the edge sites registered with this hub"),
]


def identity(whoami: Json) -> str:
    """Who the token is, in one line: `user alice · project proj-a · roles: member, reader`
    (`visible`); empty if the daemon did not say."""
    if not whoami:
        return ""
    roles = ", ".join(visible(role) for role in whoami.get("roles") or ()) or "none"
    return "user %s · project %s · roles: %s" % (
        visible(whoami.get("user_id", "?")),
        visible(whoami.get("project_id", "?")),
        roles,
    )


def admin_only_text(what: str, reason: str, whoami: Json) -> Text:
    text = Text()
    text.append("Admin only: ", style="bold yellow")
    if whoami.get("is_admin"):  # the daemon's policy file asks more than the admin role
        text.append("%s are refused to this token by the daemon's policy. " % what)
    else:
        text.append("%s need the admin role, which this token does not have. " % what)
    text.append("Images (2) and Queues (3) show what it may see.\n", style="bold")
    if whoami:
        text.append("This token: %s\n" % identity(whoami))
    text.append("The daemon: %s" % visible(reason), style="dim")
    return text


def show_admin_only(app: App[Any], reason: str, whoami: Json) -> None:
    for selector, what in ADMIN_SCREENS:
        line = app.query_one(selector, Static)
        line.remove_class("-hidden")
        line.add_class("-admin-only")
        show_text(line, admin_only_text(what, reason, whoami))
