"""A recording relay between the TUI and a daemon: the TUI's `--url` points here, every request
goes on to the daemon unchanged, and the test reads which requests the TUI sent (with Glance's
cache clear-target header, which tells "drop the cached copy" from "take it off the queue")."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from tests.hubproxy import HubProxy
from tui.client import CLEAR_TARGET

Sent = tuple[str, str, str | None]


@dataclass
class RecordingRelay(HubProxy):
    seen: list[Sent] = field(default_factory=list)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get(CLEAR_TARGET)))
        return await super()._handle(request)

    def changes(self) -> list[Sent]:
        """What the TUI asked the daemon to do: every request but the reads."""
        return [s for s in self.seen if s[0] != "GET"]
