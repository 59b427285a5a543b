"""A large upload's body read straight from its socket on a worker thread.

Through aiohttp, every body byte is copied twice on the event loop (by recv into a fresh
buffer, then by the HTTP parser into another), 0.5 ms of the loop's CPU per MiB and several
times that when the cores are busy, which every other request waits behind. Once the headers
are parsed, a body with a Content-Length has nothing left to parse: here the connection stops
being read on the loop, a worker thread receives the rest of the body from the socket (one
copy, with the GIL released) in batches the store's hash threads take as they are, and the
loop only passes each batch on. The parser never sees those bytes, so the connection closes
once the answer is sent (`Connection: close`); the next request opens a new one.

The thread enforces the listener's body limits itself (the minimum rate over a window and the
overall deadline), counting only the time it waits for the client, not the time the store
takes. An answer given before the body is complete (an error) is followed by reading and
dropping the rest for a while, so a client that sends everything before it reads sees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor

from aiohttp import web

from appliance.api.listener import ConnectionLimits, GuardedHandler
from appliance.errors import BadRequest, RequestTimeout
from appliance.workers import lane

log = logging.getLogger(__name__)

# Smaller bodies take the parser's path: a handful of reads cost the loop little.
SOCKET_BODY_MIN = 8 << 20
# Bytes the thread receives before handing them on: the store's batch (stores.stream).
FILL_BYTES = 4 << 20
# How often a waiting thread looks at its limits and at being stopped.
POLL_SECONDS = 0.25
# After an early answer, the rest of the body is read and dropped for at most this long.
LINGER_SECONDS = 10.0


def end_socket_body(request: web.Request) -> None:
    """The answer is going out (an error, raised before the body was read to its end): stop
    reading it, and drop the rest for a while so that a client still sending sees the answer.
    A handler that refused may not have closed its reader."""
    body = request.get(SOCKET_BODY)
    if body is not None:
        body.end()


def takes_socket(request: web.Request) -> bool:
    """Whether this request's body is read from the socket: a plain (not chunked) body of
    SOCKET_BODY_MIN bytes or more, on a connection of the guarded listeners."""
    length = request.content_length
    return (
        length is not None
        and length >= SOCKET_BODY_MIN
        and isinstance(request.protocol, GuardedHandler)
        and request.transport is not None
        and request.transport.get_extra_info("socket") is not None
        and request.transport.get_extra_info("sslcontext") is None
        and "chunked" not in request.headers.get("Transfer-Encoding", "").lower()
    )


class _Receiver:
    """The thread's side: receives from a duplicate of the connection's descriptor (the loop
    may close its own once the answer is sent)."""

    def __init__(self, fd: int, limits: ConnectionLimits, deadline: float, peer: str) -> None:
        self._sock = socket.socket(fileno=fd)
        self._sock.settimeout(POLL_SECONDS)
        self._min_rate = limits.min_body_rate
        self._window = limits.body_rate_window
        self._timeout = limits.body_timeout
        self._deadline = deadline  # time.monotonic() value; 0 = none
        self._peer = peer
        self.stop = threading.Event()
        self._waited = 0.0  # seconds spent waiting for the client in the current window
        self.cut_off = False  # too slow: closed at once, the rest is not waited for
        self._window_bytes = 0

    def fill(self, want: int) -> list[bytes]:
        """Up to `want` bytes as received; fewer only at end of stream. Raises RequestTimeout
        when the client is too slow, ConnectionError when it broke off."""
        pieces: list[bytes] = []
        got = 0
        while got < want and not self.stop.is_set():
            started = time.monotonic()
            try:
                data = self._sock.recv(want - got)
            except TimeoutError:
                data = None
            except InterruptedError:
                continue
            self._account(started, len(data) if data else 0)
            if data is None:
                continue
            if not data:
                break  # the client closed its side
            pieces.append(data)
            got += len(data)
        return pieces

    def _account(self, started: float, received: int) -> None:
        now = time.monotonic()
        if self._deadline and now >= self._deadline:
            raise self._too_slow("the request body did not arrive within %g s" % self._timeout)
        self._waited += now - started
        self._window_bytes += received
        if self._min_rate and self._waited >= self._window:
            if self._window_bytes < self._min_rate * self._window:
                raise self._too_slow(
                    "the request body arrived at %d bytes in %g s, below the minimum of %d bytes/s"
                    % (self._window_bytes, self._window, self._min_rate)
                )
            self._waited, self._window_bytes = 0.0, 0

    def _too_slow(self, reason: str) -> RequestTimeout:
        self.cut_off = True
        log.warning("closed a connection from %s: %s", self._peer, reason)
        return RequestTimeout("Request body too slow: %s" % reason)

    def drain(self, left: int, seconds: float) -> None:
        """Read and drop up to `left` bytes for at most `seconds`, then close."""
        end = time.monotonic() + seconds
        try:
            while left > 0 and time.monotonic() < end:
                try:
                    data = self._sock.recv(min(left, FILL_BYTES))
                except TimeoutError:
                    continue
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close()


async def _detach(request: web.Request, protocol: GuardedHandler) -> list[bytes]:
    """Stop reading the connection on the loop; answers what the parser had already taken in
    of the body (up to its read buffer)."""
    content = request.content
    taken: list[bytes] = []
    while True:
        if data := content.read_nowait():
            taken.append(data)
        if not protocol.reading_held():
            break
        protocol.parse_held()  # flow control held data in the parser: let it through
    protocol.detach_body()
    # The parser lost track of the stream: the answer says `Connection: close`, as aiohttp
    # writes it for a client that asked for it.
    request._message = request._message._replace(should_close=True)
    # A read the loop had already scheduled still runs: let it, and take what it parsed.
    await asyncio.sleep(0)
    if data := content.read_nowait():
        taken.append(data)
    content.feed_eof()  # nothing more arrives this way: aiohttp reads no more of it
    return taken


class _SocketBody:
    """One request's body from the socket: the thread that receives it, and the end of it,
    which comes once, from whichever happens first: the last byte is taken, the reader is
    closed, or the answer goes out (a handler that refused may not close its reader)."""

    def __init__(self, receiver: _Receiver, length: int) -> None:
        self._receiver = receiver
        self._worker = lane(background=False)
        self.length = length
        self.received = 0
        self._ended = False

    async def fill(self) -> list[bytes]:
        want = min(FILL_BYTES, self.length - self.received)
        return await asyncio.wrap_future(self._worker.submit(self._receiver.fill, want))

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        receiver = self._receiver
        receiver.stop.set()  # a fill still running returns within POLL_SECONDS
        if self.received < self.length and not receiver.cut_off:
            # Answered early: drop the rest for a while on a thread of its own (the lane goes
            # back to the pool once its stopped fill returns), so that a client still sending
            # sees the answer.
            args = (self._worker, receiver, self.length - self.received)
            threading.Thread(target=_linger, args=args, name="body-linger", daemon=True).start()
        else:
            receiver.close()
            self._worker.shutdown(wait=False)


# The body of a request read from the socket: its answer ends the connection.
SOCKET_BODY = web.RequestKey("socket_body", _SocketBody)


async def socket_chunks(request: web.Request) -> AsyncIterator[bytes]:
    """The body of a request for which takes_socket() holds, as received. Raises BadRequest
    when it ends short of its Content-Length, RequestTimeout when it is too slow."""
    protocol = request.protocol
    assert isinstance(protocol, GuardedHandler) and request.transport is not None
    taken = await _detach(request, protocol)
    if request.transport is None:  # the client went away meanwhile
        raise ConnectionResetError("the connection closed")
    sock = request.transport.get_extra_info("socket")
    receiver = _Receiver(
        os.dup(sock.fileno()), protocol.body_limits(), protocol.body_deadline_monotonic(), protocol.peer()
    )
    body = _SocketBody(receiver, request.content_length or 0)
    request[SOCKET_BODY] = body
    try:
        for data in taken:
            body.received += len(data)
            yield data
        del taken
        while body.received < body.length:
            try:
                pieces = await body.fill()
            except ConnectionError as exc:
                raise BadRequest(
                    "The request body broke off after %d bytes: %s" % (body.received, exc or type(exc).__name__)
                ) from None
            if not pieces:
                raise BadRequest(
                    "The request body ended after %d of the %d bytes in Content-Length" % (body.received, body.length)
                )
            for data in pieces:
                body.received += len(data)
                yield data
    finally:
        body.end()


def _linger(worker: Executor, receiver: _Receiver, left: int) -> None:
    worker.submit(int).result()  # the stopped fill has returned
    worker.shutdown(wait=False)
    receiver.drain(left, LINGER_SECONDS)
