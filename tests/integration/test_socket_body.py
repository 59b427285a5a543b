"""Large bodies read straight from the socket (api.socketbody) on a real daemon: every byte
stored and hashed right, the connection closed after the answer, limits enforced by the
reading thread, an early refusal seen by a client that sends everything first, nothing left
behind when the client breaks off, and the event loop free meanwhile."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from appliance.api.socketbody import SOCKET_BODY_MIN
from tests.conftest import Daemon
from tests.integration.test_connections import daemons, slow_upload, started  # noqa: F401 (fixture)
from tests.integration.test_request_bodies import HealthProbe, image_status, new_image, request
from tests.waiting import wait_for

OCTETS = "application/octet-stream"
LARGE = 3 * SOCKET_BODY_MIN  # 24 MiB: read from the socket
SMALL = SOCKET_BODY_MIN - 1  # read through aiohttp's parser


def put(daemon: Daemon, path: str, body: bytes) -> tuple[int, bytes, http.client.HTTPResponse, bool]:
    """PUT on a kept-alive connection; answers (status, body, response, whether the server
    closed the connection afterwards)."""
    url = urlsplit(daemon.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.request(
            "PUT", path, body, {"X-Auth-Token": daemon.token, "Content-Type": OCTETS, "Accept": "application/json"}
        )
        resp = conn.getresponse()
        data = resp.read()
        if conn.sock is None:  # http.client closes on "Connection: close": see that the server did
            return resp.status, data, resp, True
        conn.sock.settimeout(2)
        try:
            closed = conn.sock.recv(1) == b""
        except TimeoutError:
            closed = False
        return resp.status, data, resp, closed
    finally:
        conn.close()


def leftovers(daemon: Daemon, image_id: str) -> list[Path]:
    return [
        p
        for p in (daemon.state_dir / "images").rglob("*")
        if p.is_file() and (p.name.endswith(".partial") or p.parent.name == ".partial" or image_id in p.name)
    ]


@pytest.fixture
def payload() -> Iterator[bytes]:
    yield os.urandom(LARGE)


def test_a_large_upload_is_stored_and_hashed_right_and_ends_the_connection(daemon: Daemon, payload: bytes) -> None:
    image_id = new_image(daemon)
    with HealthProbe(daemon.url) as probe:
        status, body, resp, closed = put(daemon, "/v2/images/%s/file" % image_id, payload)
    assert status == 204, body
    # The parser did not see the body, so the connection cannot carry another request.
    assert resp.getheader("Connection") == "close" and closed
    status, raw = request(daemon, "GET", "/v2/images/%s" % image_id)
    image = json.loads(raw)
    assert image["status"] == "active" and image["size"] == LARGE
    assert image["checksum"] == hashlib.md5(payload).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(payload).hexdigest()
    status, data = request(daemon, "GET", "/v2/images/%s/file" % image_id, timeout=60)
    assert status == 200 and data == payload
    assert probe.latencies and sorted(probe.latencies)[-2 if len(probe.latencies) > 1 else -1] < 0.1


def test_a_smaller_upload_keeps_its_connection(daemon: Daemon) -> None:
    image_id = new_image(daemon)
    data = os.urandom(SMALL)
    status, body, resp, closed = put(daemon, "/v2/images/%s/file" % image_id, data)
    assert status == 204, body
    assert resp.getheader("Connection") is None and not closed
    status, raw = request(daemon, "GET", "/v2/images/%s" % image_id)
    assert json.loads(raw)["checksum"] == hashlib.md5(data).hexdigest()


def test_staging_a_large_body_keeps_every_byte(daemon: Daemon, payload: bytes) -> None:
    image_id = new_image(daemon)
    status, body, _resp, closed = put(daemon, "/v2/images/%s/stage" % image_id, payload)
    assert status == 204, body and closed
    assert image_status(daemon, image_id) == "uploading"
    staged = [p for p in daemon.state_dir.rglob("*") if p.is_file() and p.name == image_id]
    assert any(p.read_bytes() == payload for p in staged), staged


def test_a_refusal_mid_body_reaches_a_client_that_sends_everything_first(daemon: Daemon, payload: bytes) -> None:
    """Random bytes declared as qcow2 are refused once inspected, long before the body ends;
    the rest is read and dropped, so the client gets the 400 instead of a broken pipe."""
    status, raw = request(
        daemon,
        "POST",
        "/v2/images",
        json.dumps({"name": "q", "disk_format": "qcow2", "container_format": "bare"}).encode(),
        "application/json",
    )
    image_id = json.loads(raw)["id"]
    status, body, _resp, closed = put(daemon, "/v2/images/%s/file" % image_id, payload)
    assert status == 400, body
    assert "qcow2" in json.loads(body)["message"]
    assert _resp.getheader("Connection") == "close", _resp.getheaders()
    assert closed
    assert image_status(daemon, image_id) == "queued"
    assert leftovers(daemon, image_id) == []


@pytest.mark.parametrize("close_write", [True, False], ids=["half-close", "disconnect"])
def test_a_body_that_stops_short_leaves_nothing(daemon: Daemon, payload: bytes, close_write: bool) -> None:
    image_id = new_image(daemon)
    url = urlsplit(daemon.url)
    head = (
        "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nContent-Type: %s\r\n"
        "Content-Length: %d\r\nAccept: application/json\r\n\r\n" % (image_id, daemon.token, OCTETS, LARGE)
    )
    sent = LARGE // 2
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head.encode() + payload[:sent])
        if close_write:
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]
            assert b"ended after %d of the %d bytes" % (sent, LARGE) in answer
    # "queued" is also the status before the upload began: wait for the failure itself
    failed = "image %s: upload failed" % image_id
    wait_for(lambda: failed in daemon.log.read_text(errors="replace"), timeout=10, what="the upload to fail")
    assert image_status(daemon, image_id) == "queued"
    assert leftovers(daemon, image_id) == []
    # the next upload of the same image goes through
    assert put(daemon, "/v2/images/%s/file" % image_id, payload)[0] == 204
    assert image_status(daemon, image_id) == "active"
    assert "Traceback" not in daemon.log.read_text(errors="replace")


def test_a_slow_loris_large_body_is_cut_off_with_408(tmp_path: Path, daemons: list[Daemon]) -> None:  # noqa: F811
    daemon = started(tmp_path, min_body_rate=100, body_rate_window=2)
    daemons.append(daemon)
    image_id = new_image(daemon)
    took, answer = slow_upload(daemon, image_id, rate=1, length=LARGE, give_up=20)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"below the minimum of 100 bytes/s" in answer
    assert took < 6
    assert image_status(daemon, image_id) == "queued"
    assert leftovers(daemon, image_id) == []


def test_a_large_body_past_body_timeout_is_cut_off_with_408(tmp_path: Path, daemons: list[Daemon]) -> None:  # noqa: F811
    daemon = started(tmp_path, min_body_rate=5, body_rate_window=1, body_timeout=3)
    daemons.append(daemon)
    image_id = new_image(daemon)
    took, answer = slow_upload(daemon, image_id, rate=20, length=LARGE, give_up=20)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 3 s" in answer
    assert 2.5 < took < 6
    assert image_status(daemon, image_id) == "queued"


def test_concurrent_large_uploads_race_and_each_keeps_its_bytes(daemon: Daemon) -> None:
    """Four uploads at once, twice: the hand-over from the parser to the socket happens while
    the other connections are read, and each image ends with its own bytes."""
    import concurrent.futures

    for _round in range(2):
        bodies = [os.urandom(SOCKET_BODY_MIN + 12345 * i) for i in range(4)]
        ids = [new_image(daemon) for _ in bodies]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            results = list(
                pool.map(
                    lambda pair: put(daemon, "/v2/images/%s/file" % pair[0], pair[1]), zip(ids, bodies, strict=True)
                )
            )
        assert [r[0] for r in results] == [204] * 4
        for image_id, body in zip(ids, bodies, strict=True):
            _status, raw = request(daemon, "GET", "/v2/images/%s" % image_id)
            image = json.loads(raw)
            assert image["size"] == len(body) and image["checksum"] == hashlib.md5(body).hexdigest()


def test_a_large_body_that_is_not_a_bundle_is_refused_and_the_answer_arrives(daemon: Daemon, payload: bytes) -> None:
    url = urlsplit(daemon.url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.request(
            "POST",
            "/v2/edge/bundles",
            payload,
            {"X-Auth-Token": daemon.token, "Content-Type": OCTETS, "Accept": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 400, body
    assert json.loads(body)["message"]
    assert resp.getheader("Connection") == "close"
    assert request(daemon, "GET", "/healthcheck")[0] == 200
