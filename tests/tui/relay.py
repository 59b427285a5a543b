"""A recording relay between the TUI and a daemon: the TUI's `--url` points here, every request
goes on to the daemon unchanged, and the test reads which requests the TUI sent (with Glance's
cache clear-target header, which tells "drop the cached copy" from "take it off the queue"). With
`upload_rate` it reads an image upload's body at that many bytes per second, as a slow link
would, so that the TUI's upload progress can be watched and cancelled."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass, field

from aiohttp import web

from tests.hubproxy import HubProxy
from tui.client import CLEAR_TARGET

Sent = tuple[str, str, str | None]


@dataclass
class RecordingRelay(HubProxy):
    seen: list[Sent] = field(default_factory=list)
    upload_rate: int = 0  # bytes per second for PUT /v2/images/ID/file bodies, 0 = unlimited
    uploaded: int = 0  # upload body bytes read so far

    async def _request_body(self, request: web.Request) -> bytes | io.BytesIO:
        if not (self.upload_rate and request.method == "PUT" and request.path.endswith("/file")):
            return await super()._request_body(request)
        parts = []
        while chunk := await request.content.read(16 * 1024):
            parts.append(chunk)
            self.uploaded += len(chunk)
            await asyncio.sleep(len(chunk) / self.upload_rate)
        return io.BytesIO(b"".join(parts))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.headers.get(CLEAR_TARGET)))
        return await super()._handle(request)

    def changes(self) -> list[Sent]:
        """What the TUI asked the daemon to do: every request but the reads."""
        return [s for s in self.seen if s[0] != "GET"]
