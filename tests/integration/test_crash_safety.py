"""A daemon killed with SIGKILL in the middle of an upload leaves no image file behind, and the
next start puts the image back to queued with a clean store."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.stores.filesystem import PARTIAL_DIR
from tests.conftest import Daemon, start_daemon
from tests.waiting import wait_for

MiB = 1 << 20
TOTAL = 64 * MiB


def request(
    d: Daemon, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    parts = urlsplit(d.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"X-Auth-Token": d.token, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def create_image(d: Daemon, **body: Any) -> dict[str, Any]:
    body = {"disk_format": "raw", "container_format": "bare", **body}
    status, raw = request(d, "POST", "/v2/images", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert status == 201, raw
    return json.loads(raw)


def restart(state_dir: Path) -> Daemon:
    """start_daemon on a used state dir. start_daemon looks for the port in daemon.log, which it
    appends to, so the previous run's log is moved aside first (else it would find the old port)."""
    log = state_dir / "daemon.log"
    if log.exists():
        runs = len(list(state_dir.glob("daemon.log.*")))
        log.rename(state_dir / ("daemon.log.%d" % (runs + 1)))
    return start_daemon(state_dir)


def store_entries(state_dir: Path) -> tuple[set[str], list[str]]:
    """(files directly in the store directory, files in its .partial/)."""
    images = state_dir / "images"
    files = {p.name for p in images.iterdir() if p.is_file()}
    partial = sorted(p.name for p in (images / PARTIAL_DIR).iterdir())
    return files, partial


def test_sigkill_mid_upload_leaves_nothing_and_restart_requeues(daemon_factory: Callable[..., Daemon]) -> None:
    daemon = daemon_factory("site")
    state_dir = daemon.state_dir
    image = create_image(daemon, name="interrupted")
    image_id = image["id"]
    final = state_dir / "images" / image_id

    # Announce 64 MiB, send a quarter of it slowly, and keep the connection open.
    parts = urlsplit(daemon.url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    try:
        sock.sendall(
            (
                "PUT /v2/images/%s/file HTTP/1.1\r\nHost: %s\r\nX-Auth-Token: %s\r\n"
                "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n"
                % (image_id, parts.netloc, daemon.token, TOTAL)
            ).encode()
        )
        block = os.urandom(MiB)
        for _ in range(16):
            sock.sendall(block)
            time.sleep(0.01)
        wait_for(lambda: daemon.show(image_id)["status"] == "saving", "the upload to be saving")
        partial_dir = state_dir / "images" / PARTIAL_DIR
        wait_for(lambda: any(p.stat().st_size >= 4 * MiB for p in partial_dir.iterdir()), "4 MiB written")
        assert not final.exists()  # only the partial file exists while the upload runs

        daemon.proc.kill()
        assert daemon.proc.wait(10) == -signal.SIGKILL
    finally:
        sock.close()

    # After the crash: never a (partial) file under the image's name.
    assert not final.exists()
    files, partial = store_entries(state_dir)
    assert files == set()
    assert len(partial) == 1 and partial[0].startswith(image_id)  # the leftover, cleaned at start

    again = restart(state_dir)
    try:
        body = again.show(image_id)
        assert body["status"] == "queued"
        assert body["size"] is None and body["checksum"] is None
        assert "stores" not in body
        assert store_entries(state_dir) == (set(), [])
        log = again.log.read_text()
        assert "recovery: image %s" % image_id in log

        # The image can be uploaded in full now.
        data = os.urandom(8 * MiB) + b"complete"
        status, raw = request(
            again, "PUT", "/v2/images/%s/file" % image_id, data, {"Content-Type": "application/octet-stream"}
        )
        assert status == 204, raw
        body = again.show(image_id)
        assert body["status"] == "active"
        assert body["size"] == len(data)
        assert body["checksum"] == hashlib.md5(data).hexdigest()
        assert body["os_hash_value"] == hashlib.sha512(data).hexdigest()
        assert final.read_bytes() == data
        assert store_entries(state_dir) == ({image_id}, [])
        status, raw = request(again, "GET", "/v2/images/%s/file" % image_id)
        assert status == 200 and raw == data
        assert again.stop() == 0
    finally:
        if again.proc.poll() is None:
            again.proc.kill()
            again.proc.wait(10)


def test_sigkill_after_upload_keeps_the_image(daemon_factory: Callable[..., Daemon]) -> None:
    """The other side of the contract: once 204 was answered, a crash loses nothing."""
    daemon = daemon_factory("site")
    image = create_image(daemon, name="durable")
    data = os.urandom(3 * MiB)
    status, raw = request(
        daemon, "PUT", "/v2/images/%s/file" % image["id"], data, {"Content-Type": "application/octet-stream"}
    )
    assert status == 204, raw
    daemon.proc.kill()
    daemon.proc.wait(10)
    again = restart(daemon.state_dir)
    try:
        body = again.show(image["id"])
        assert body["status"] == "active"
        assert body["checksum"] == hashlib.md5(data).hexdigest()
        status, raw = request(again, "GET", "/v2/images/%s/file" % image["id"])
        assert status == 200 and raw == data
    finally:
        again.proc.kill()
        again.proc.wait(10)


def test_orphan_store_file_is_removed_at_start(daemon_factory: Callable[..., Daemon]) -> None:
    """A file written but never recorded (crash between rename and commit) is removed at start."""
    daemon = daemon_factory("site")
    image = create_image(daemon, name="queued")
    assert daemon.stop() == 0
    orphan = daemon.state_dir / "images" / image["id"]
    orphan.write_bytes(b"never recorded")
    stray = daemon.state_dir / "images" / PARTIAL_DIR / ("%s.deadbeef" % image["id"])
    stray.write_bytes(b"half")
    again = restart(daemon.state_dir)
    try:
        assert not orphan.exists()
        assert not stray.exists()
        assert again.show(image["id"])["status"] == "queued"
    finally:
        again.proc.kill()
        again.proc.wait(10)
