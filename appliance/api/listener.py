"""The API's listening sockets: a connection cap per listener, header, idle and body timeouts,
and a file-descriptor budget that keeps the Unix socket reachable.

aiohttp bounds none of this by itself: a connection that never completes a request is kept for
the keep-alive timeout (an hour by default), a body may trickle for ever, and a listener
accepts until the process runs out of descriptors, which takes the Unix socket, the catalog
and the stores down with it. Each listener here has its own protocol factory: past its cap it
answers 503 and closes at once, and every connection it accepts is a RequestHandler that
closes itself when the request headers or the body stall. Status codes appear here because
these answers are written before (or instead of) any request reaching the application.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_runner import BaseSite

from appliance.errors import RequestTimeout

log = logging.getLogger(__name__)

# Descriptors kept for everything that is not a client connection: the catalog, store and
# cache files, upstream sockets, subprocess pipes, the inbox watcher.
FD_RESERVE = 512
# Pending connections the kernel queues for accept(): a burst of clients (a rack of nova
# computes booting) waits there instead of retrying SYNs after a second.
BACKLOG = 1024
# RLIMIT_NOFILE's hard limit may be "unlimited"; the kernel's nr_open default is this.
FD_CEILING = 1 << 20
# How long a handler whose body was cut off may take to clean up and answer before the
# connection answers 408 for it and closes.
CUT_OFF_GRACE = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    # Bytes per second, averaged over body_rate_window; 0 turns the check off.
    min_body_rate: int
    body_rate_window: float
    # Longest time a request body may take to arrive; 0 = no limit.
    body_timeout: float


def raw_response(status: int, title: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with Glance's JSON error shape, ending the connection."""
    body = json.dumps({"code": "%d %s" % (status, title), "title": title, "message": message}).encode()
    head = "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (
        status,
        title,
        len(body),
    )
    return head.encode() + body


class Listener:
    """The protocol factory of one listening socket; counts its open connections."""

    def __init__(self, name: str, server: web.Server, limits: ConnectionLimits, max_connections: int) -> None:
        self.name = name
        self.server = server
        self.limits = limits
        self.max_connections = max_connections
        self.open = 0
        self._refusal = raw_response(
            503, "Service Unavailable", "Too many connections to this listener (%d); try again later" % max_connections
        )

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open >= self.max_connections:
            # Rate-limited by the log filter: a flood of these is a few lines a minute.
            log.warning("%s: %d connections open (the limit): refusing new connections", self.name, self.open)
            return _Refusal(self._refusal)
        # Counted here, not in connection_made: one accept() round creates many protocols first.
        self.open += 1
        # Server keeps the handler arguments (keep-alive timeout, read buffer, access log...)
        # that AppRunner and Application.handler_args gave it.
        return GuardedHandler(self, self.server, loop=asyncio.get_running_loop(), **self.server._kwargs)


class _Refusal(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        transport.close()


class GuardedHandler(RequestHandler):
    """aiohttp's connection handler with the header timeout and the minimum body rate.

    Bookkeeping per received chunk is one addition and one comparison; the checks run from
    timers, only while headers or a body are awaited."""

    def __init__(self, listener: Listener, server: web.Server, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._listener = listener
        self._limits = listener.limits
        self._counted = True
        self._header_timer: asyncio.TimerHandle | None = None
        self._requests_at_arm = 0
        self._body: Any = None  # the StreamReader of the body being received
        self._body_timer: asyncio.TimerHandle | None = None
        self._received = 0
        self._received_at_check = 0
        self._paused_since_check = False
        self._body_deadline = 0.0
        self._detached = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._listener.open -= 1
            self._counted = False
        self._stop_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if self._header_timer is None and waiter is not None and not waiter.done():
            # The first bytes of a request on an idle keep-alive connection.
            self._arm_header_timer()
        requests = self._request_count
        super().data_received(data)
        self._received += len(data)
        if self._request_count != requests:
            self._headers_arrived()

    def pause_reading(self) -> None:
        # The application is not reading fast enough: a slow body is then not the client's fault.
        self._paused_since_check = True
        super().pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        if not self._detached:
            super().resume_reading(resume_parser)

    # The hand-over of a body to api.socketbody, which reads it from the socket itself.

    def reading_held(self) -> bool:
        """Flow control paused reading, and the parser may hold received bytes."""
        return bool(self._reading_paused)

    def parse_held(self) -> None:
        """Let the parser hand on what it holds (the body's buffer has room again)."""
        super().resume_reading()

    def detach_body(self) -> None:
        """Stop reading this connection on the event loop: the rest of the current body is
        read from the socket by its handler. The parser never sees it, so the connection
        closes once the answer is sent, and the body limits are the reader's to enforce."""
        self._detached = True
        self._stop_timers()
        self._lingering_time = 0.0
        self.close()
        if self.transport is not None:
            self.transport.pause_reading()

    def body_limits(self) -> ConnectionLimits:
        return self._limits

    def body_deadline_monotonic(self) -> float:
        """When the current body must have arrived (time.monotonic(), as the loop's clock), 0
        for never."""
        return self._body_deadline if self._limits.body_timeout else 0.0

    def _arm_header_timer(self) -> None:
        if self._limits.header_timeout <= 0:
            return
        self._requests_at_arm = self._request_count
        self._header_timer = self._loop.call_later(self._limits.header_timeout, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._request_count == self._requests_at_arm and self.transport is not None:
            log.warning(
                "%s: closed a connection from %s: no complete request headers within %g s",
                self._listener.name,
                self.peer(),
                self._limits.header_timeout,
            )
            self.force_close()

    def _headers_arrived(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        limits = self._limits
        if not self._messages or not (limits.min_body_rate or limits.body_timeout):
            return
        payload = self._messages[-1][1]
        if payload.is_eof() or self._body_timer is not None:
            return
        self._body = payload
        now = self._loop.time()
        self._body_deadline = now + limits.body_timeout if limits.body_timeout else 0.0
        self._received_at_check = self._received
        self._paused_since_check = self._reading_paused
        self._schedule_body_check(now)

    def _schedule_body_check(self, now: float) -> None:
        delay = self._limits.body_rate_window if self._limits.min_body_rate else self._limits.body_timeout
        if self._body_deadline:
            delay = min(delay, max(0.0, self._body_deadline - now))
        self._body_timer = self._loop.call_later(delay, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        body, self._body = self._body, None
        if body is None or body.is_eof() or self.transport is None:
            return
        limits = self._limits
        now = self._loop.time()
        delivered = self._received - self._received_at_check
        if self._body_deadline and now >= self._body_deadline - 0.001:
            self._cut_off(body, "the request body did not arrive within %g s" % limits.body_timeout)
            return
        stalled_by_us = self._paused_since_check or self._reading_paused
        if limits.min_body_rate and not stalled_by_us and delivered < limits.min_body_rate * limits.body_rate_window:
            self._cut_off(
                body,
                "the request body arrived at %d bytes in %g s, below the minimum of %d bytes/s"
                % (delivered, limits.body_rate_window, limits.min_body_rate),
            )
            return
        self._body = body
        self._received_at_check = self._received
        self._paused_since_check = self._reading_paused
        self._schedule_body_check(now)

    def _cut_off(self, body: Any, reason: str) -> None:
        log.warning("%s: closed a connection from %s: %s", self._listener.name, self.peer(), reason)
        # The handler's next read fails; it cleans up (the image back to queued, nothing partial
        # left) before the middleware answers 408, so the client sees the 408 only once the
        # image can take the next upload. Then the connection closes: the rest of the body is
        # not read.
        body.set_exception(RequestTimeout("Request body too slow: %s" % reason))
        self._lingering_time = 0.0  # do not drain the rest of the body after the answer
        self.close()  # close once the answer is sent
        self._stop_timers()
        # A handler that is not reading the body does not see that: answer for it after a grace.
        request = self._current_request
        self._loop.call_later(CUT_OFF_GRACE, self._answer_for_stuck_handler, request, reason)

    def _answer_for_stuck_handler(self, request: web.BaseRequest | None, reason: str) -> None:
        transport, current = self.transport, self._current_request
        if request is None or current is not request or transport is None:
            return  # the handler answered, and the connection is closed or closing
        if getattr(current.writer, "output_size", 1) == 0:
            transport.write(raw_response(408, "Request Timeout", "Request body too slow: %s" % reason))
        self.force_close()

    def _stop_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        self._body = None

    def peer(self) -> str:
        transport = self.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return "%s:%s" % (peer[0], peer[1])
        return "a local client" if peer is not None else "an unknown peer"


class GuardedTCPSite(web.TCPSite):
    def __init__(
        self, runner: web.BaseRunner, listener: Listener, host: str, port: int, backlog: int = BACKLOG
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self.listener = listener

    async def start(self) -> None:
        await BaseSite.start(self)  # registers the site: runner.cleanup() stops it
        self._server = await asyncio.get_running_loop().create_server(
            self.listener, self._host, self._port, backlog=self._backlog, reuse_address=True
        )


class GuardedUnixSite(web.UnixSite):
    def __init__(self, runner: web.BaseRunner, listener: Listener, path: str, backlog: int = BACKLOG) -> None:
        super().__init__(runner, path, backlog=backlog)
        self.listener = listener

    async def start(self) -> None:
        await BaseSite.start(self)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self.listener, str(self._path), backlog=self._backlog
        )


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; answer the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return FD_CEILING if soft == resource.RLIM_INFINITY else soft


@dataclass(frozen=True)
class Budget:
    tcp_cap: int
    # accept() takes up to `backlog` connections in one go before the caps can refuse any, so
    # that many descriptors are set aside for each listener too.
    backlog: int
    unix_backlog: int


def connection_budget(configured: int, unix_cap: int, fd_limit: int) -> Budget:
    """The TCP listener's cap: what is configured, lowered so that TCP clients alone can never
    exhaust the descriptors the Unix socket and the daemon's own files need."""
    reserve = min(FD_RESERVE, fd_limit // 4)
    backlog = min(BACKLOG, max(16, fd_limit // 16))
    unix_backlog = min(backlog, unix_cap)
    room = fd_limit - reserve - unix_cap - unix_backlog - backlog
    if configured <= room:
        return Budget(configured, backlog, unix_backlog)
    cap = max(1, room)
    log.warning(
        "api.max_connections = %d does not fit the open-file limit of %d (%d kept for the Unix socket, "
        "%d for files, %d for accepting): using %d",
        configured,
        fd_limit,
        unix_cap + unix_backlog,
        reserve,
        backlog,
        cap,
    )
    return Budget(cap, backlog, unix_backlog)
