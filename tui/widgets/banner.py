"""The line above the screens while the daemon cannot be reached, refuses the token or answers
with an error: why, that it is retried, and how old the data still on screen is. Data shown
while the daemon does not answer is marked stale (here, in the header, dimmed screens and the
open detail view) rather than presented as current; the mark goes when a poll succeeds."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from tui.display import ago, visible
from tui.messages import ConnectionFailed
from tui.widgets.contained import PlainStatic

UNAUTHORIZED = (401, 403)  # the daemon refuses the token: no poll will load anything


def clock_time(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))


def stale_note(fresh_at: float, now: float) -> str:
    """ "data from 12:03:04 (42s ago)": when the data on screen was last current."""
    return "data from %s (%s)" % (clock_time(fresh_at), ago(fresh_at, now))


def unauthorized_text(status: int | None) -> Text:
    """What a screen waiting for data the daemon refuses says, instead of "Loading…" for ever."""
    return Text(
        "Not authorized (%s): the daemon refuses this token. Give edge-tui another --token, "
        "or use the Unix socket on the daemon's host." % status,
        style="bold red",
    )


class ConnectionBanner(PlainStatic):
    def __init__(self, target: str, refresh_seconds: float, **kw: Any) -> None:
        super().__init__(classes="-hidden", **kw)
        self._target = target
        self._refresh = refresh_seconds
        self.fresh_at: float | None = None  # wall time of the last answer that succeeded
        self.up = False

    @property
    def stale(self) -> bool:
        return self.up and self.fresh_at is not None

    def failed(self, message: ConnectionFailed, now: float) -> None:
        target = visible(self._target)
        # The stale note first: at 80 columns the reason may take the banner's three lines.
        text = Text("STALE, %s · " % stale_note(self.fresh_at, now) if self.fresh_at is not None else "", style="bold")
        if message.status in UNAUTHORIZED:
            text.append("⛔ Not authorized by the daemon at %s: " % target, style="bold")
        elif message.reachable:
            text.append("⚠ The daemon at %s answered with an error: " % target, style="bold")
        else:
            text.append("⚠ Cannot reach the daemon at %s: " % target, style="bold")
        text.append(visible(message.reason))
        text.append(" — retrying every %g s" % self._refresh)
        self.update(text)
        self.remove_class("-hidden")
        self.up = True

    def answered(self, now: float) -> bool:
        """A poll succeeded: the data is current again. True if the banner was up."""
        self.fresh_at = now
        if not self.up:
            return False
        self.up = False
        self.add_class("-hidden")
        return True
