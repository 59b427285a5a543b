"""A real HTTP relay between an edge daemon and its hub, for tests and benchmarks: it counts the
requests the hub receives, records Range headers, and can shape the link (a WAN-like rate, a
flipped byte, a cut after N bytes). It runs on loopback in the test's event loop."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

PASSED_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Content-MD5", "Accept-Ranges")


@dataclass
class HubProxy:
    target: str
    rate: int = 0  # bytes per second over the whole link, 0 = unlimited
    corrupt_offset: int | None = None  # flip one byte of image data at this offset
    cut_after: int | None = None  # drop the connection after this many body bytes (once)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    ranges: list[tuple[str, str]] = field(default_factory=list)
    body_bytes: int = 0  # image data relayed (the WAN bytes)
    url: str = ""
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _sent_at: float = 0.0

    async def start(self) -> HubProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = "http://127.0.0.1:%d" % port
        self._session = aiohttp.ClientSession(auto_decompress=False)
        return self

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def file_requests(self, image_id: str) -> int:
        return self.requests[("GET", "/v2/images/%s/file" % image_id)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        self.requests[(request.method, request.path)] += 1
        if "Range" in request.headers:
            self.ranges.append((request.path, request.headers["Range"]))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        body = await self._request_body(request)
        try:
            upstream = await self._session.request(
                request.method, self.target + request.path_qs, headers=headers, data=body or None, allow_redirects=False
            )
        except aiohttp.ClientError:
            return web.Response(status=502, text="hub down")
        async with upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: upstream.headers[k] for k in PASSED_HEADERS if k in upstream.headers},
            )
            await response.prepare(request)
            start = _range_start(upstream.headers.get("Content-Range"))
            is_data = request.path.endswith("/file")
            offset = 0
            try:
                async for chunk in upstream.content.iter_chunked(64 * 1024):
                    if self.corrupt_offset is not None and start + offset <= self.corrupt_offset < start + offset + len(
                        chunk
                    ):
                        i = self.corrupt_offset - start - offset
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    if self.cut_after is not None and self.body_bytes + len(chunk) > self.cut_after:
                        self.cut_after = None
                        raise ConnectionResetError("cut by the test")
                    await self._pace(len(chunk))
                    await response.write(chunk)
                    offset += len(chunk)
                    if is_data:
                        self.body_bytes += len(chunk)
                await response.write_eof()
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                # The hub went away mid-body: break the edge's connection too, never end it cleanly.
                if request.transport is not None:
                    request.transport.abort()
        return response

    async def _request_body(self, request: web.Request) -> bytes | io.BytesIO:
        return await request.read()

    async def _pace(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        self._sent_at = max(self._sent_at, now) + n / self.rate
        if self._sent_at > now:
            await asyncio.sleep(self._sent_at - now)


def _range_start(content_range: str | None) -> int:
    if not content_range:
        return 0
    return int(content_range.split(" ", 1)[1].split("-", 1)[0])
