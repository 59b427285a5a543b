"""Fixtures shared by the daemon tests here: a loopback HTTP source (fast and slow bodies) for
web-download imports, and a site config with two filesystem stores whose URI filter lets
the daemon reach that source."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_toml

KiB = 1 << 10
SLOW_CHUNK = 64 * KiB
SLOW_DELAY = 0.05  # 64 KiB every 50 ms: ~1.3 MiB/s

# -- a loopback HTTP source ----------------------------------------------------------------


class Source:
    """GET /fast/<name>: registered bytes at once. GET /slow/<n>: n bytes, 64 KiB per 50 ms.
    GET /trickle/<name>, /chunked/<name>, /drop/<name>: a registered file slowly, without a
    length, or cut off half-way."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.slow_block = os.urandom(SLOW_CHUNK)
        self.port = 0

    def url(self, path: str) -> str:
        return "http://127.0.0.1:%d/%s" % (self.port, path)

    def add(self, name: str, data: bytes) -> str:
        self.files[name] = data
        return self.url("fast/" + name)


def _handler(source: Source) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "fast" and name in source.files:
                body = source.files[name]
                self._head(len(body))
                self.wfile.write(body)
            elif kind in ("trickle", "chunked", "drop") and name in source.files:
                self._stream(kind, source.files[name])
            elif kind == "slow" and name.isdigit():
                total = int(name)
                self._head(total)
                sent = 0
                try:
                    while sent < total:
                        piece = source.slow_block[: total - sent]
                        self.wfile.write(piece)
                        self.wfile.flush()
                        sent += len(piece)
                        time.sleep(SLOW_DELAY)
                except OSError:  # the daemon went away mid-body: expected here
                    self.close_connection = True
            else:
                self.send_error(404)

        def _stream(self, kind: str, body: bytes) -> None:
            """trickle: a registered file at the slow pace; chunked: at once, without a
            Content-Length; drop: half of it, then the connection closes mid-body."""
            if kind == "chunked":
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for at in range(0, len(body), SLOW_CHUNK):
                    piece = body[at : at + SLOW_CHUNK]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
                return
            self._head(len(body))
            end = len(body) // 2 if kind == "drop" else len(body)
            try:
                for at in range(0, end, SLOW_CHUNK):
                    self.wfile.write(body[at : min(end, at + SLOW_CHUNK)])
                    self.wfile.flush()
                    if kind == "trickle":
                        time.sleep(SLOW_DELAY)
            except OSError:
                pass
            self.close_connection = True

        def _head(self, length: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


@pytest.fixture
def source() -> Iterator[Source]:
    src = Source()
    server = _Server(("127.0.0.1", 0), _handler(src))
    src.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield src
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


STORES = {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}


@pytest.fixture
def config(tmp_path: Path, source: Source) -> Path:
    return write_toml(
        tmp_path / "site.toml",
        {
            "stores": STORES,
            "import": {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]}},
        },
    )
