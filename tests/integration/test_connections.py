"""Connections on a real daemon: idle and half-sent requests are closed after the header
timeout, kept-alive connections after the idle timeout, slow bodies are cut off with 408, the
TCP listener's cap answers 503 and leaves the Unix socket (and the daemon's own files) their
descriptors, repeated warnings are rate-limited, /versions never echoes the Host header, and
the state the daemon writes is its user's alone."""

from __future__ import annotations

import http.client
import json
import os
import resource
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, start_daemon, write_toml
from tests.integration.conftest import Source
from tests.integration.test_import_recovery import create, start_import, wait_task_done
from tests.integration.test_request_bodies import image_status, new_image, request
from tests.waiting import wait_for

IDLE_CONNECTIONS = 1000


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 5) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def unix_get(daemon: Daemon, path: str) -> tuple[int, bytes]:
    """As an administrator: the socket's peer is the daemon's own user, no token needed."""
    conn = UnixConnection(daemon.state_dir / "appliance.sock")
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def healthcheck_seconds(daemon: Daemon) -> float:
    started = time.monotonic()
    status, body = request(daemon, "GET", "/healthcheck", timeout=5)
    assert (status, body) == (200, b"OK")
    return time.monotonic() - started


def fd_count(daemon: Daemon) -> int:
    return len(os.listdir("/proc/%d/fd" % daemon.proc.pid))


def closed_by_server(sock: socket.socket, timeout: float = 0.05) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except OSError:
        return True


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def connect(daemon: Daemon, opened: list[socket.socket], count: int) -> list[socket.socket]:
    port = int(daemon.url.rsplit(":", 1)[1])
    new = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    opened.extend(new)
    return new


def started(tmp_path: Path, name: str = "site", preexec_fn: Callable[[], None] | None = None, **api: object) -> Daemon:
    config = write_toml(tmp_path / ("%s.toml" % name), {"api": dict(api)})
    return start_daemon(tmp_path / name, config, preexec_fn=preexec_fn)


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    running: list[Daemon] = []
    yield running
    for d in running:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


def test_idle_connections_are_closed_after_the_header_timeout(
    tmp_path: Path, daemons: list[Daemon], sockets: list[socket.socket]
) -> None:
    daemon = started(tmp_path, header_timeout=8)
    daemons.append(daemon)
    healthcheck_seconds(daemon)
    idle_fds = fd_count(daemon)
    log_size = daemon.log.stat().st_size

    opened_at = time.monotonic()
    idle = connect(daemon, sockets, IDLE_CONNECTIONS)
    wait_for(lambda: fd_count(daemon) >= idle_fds + IDLE_CONNECTIONS * 0.9, "the daemon to accept them", 10)
    peak = fd_count(daemon)
    # While they are open, the TCP API and the administrator's Unix socket both answer.
    assert healthcheck_seconds(daemon) < 1.0
    assert unix_get(daemon, "/v2/images")[0] == 200
    assert not any(closed_by_server(s, 0) for s in idle[:50]), "closed before the header timeout"

    wait_for(lambda: fd_count(daemon) <= idle_fds + 5, "the descriptors of the idle connections to be freed", 15)
    held = fd_count(daemon)
    print(
        "\nfds: idle %d, with %d idle connections open %d, %.1f s after they connected: %d"
        % (idle_fds, IDLE_CONNECTIONS, peak, time.monotonic() - opened_at, held)
    )
    assert time.monotonic() - opened_at >= 7.9
    assert all(closed_by_server(s) for s in idle)
    assert healthcheck_seconds(daemon) < 1.0
    grown = daemon.log.stat().st_size - log_size
    print("log grew by %d bytes" % grown)
    assert grown < 4096, daemon.log.read_text()[-5000:]


def test_slow_headers_are_closed_after_the_header_timeout(
    tmp_path: Path, daemons: list[Daemon], sockets: list[socket.socket]
) -> None:
    daemon = started(tmp_path, header_timeout=2)
    daemons.append(daemon)
    [slow] = connect(daemon, sockets, 1)
    head = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 40
    sent_at = time.monotonic()
    closed = False
    for byte in head:  # one byte every 0.2 s: each arrives well within any idle timeout
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            closed = True
            break
        if closed_by_server(slow, 0.2):
            closed = True
            break
    assert closed
    assert 1.8 <= time.monotonic() - sent_at < 5


def test_kept_alive_connections_are_closed_after_the_idle_timeout(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = started(tmp_path, idle_timeout=2)
    daemons.append(daemon)
    conn = http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", "/healthcheck")
    resp = conn.getresponse()
    assert (resp.status, resp.read(), resp.getheader("Connection")) == (200, b"OK", None)  # kept alive
    assert conn.sock is not None
    assert not closed_by_server(conn.sock, 1.0)
    wait_for(lambda: closed_by_server(conn.sock, 0.1), "the idle connection to be closed", 5)
    conn.close()


def slow_upload(daemon: Daemon, image_id: str, rate: float, length: int, give_up: float) -> tuple[float, bytes]:
    """Send a PUT body at `rate` bytes/s; answer (seconds until the daemon answered or closed, answer)."""
    port = int(daemon.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        (
            "PUT /v2/images/%s/file HTTP/1.1\r\nHost: x\r\nX-Auth-Token: %s\r\nAccept: application/json\r\n"
            "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % (image_id, daemon.token, length)
        ).encode()
    )
    begun = time.monotonic()
    answer = b""
    try:
        sock.settimeout(1.0 / rate)
        while time.monotonic() - begun < give_up:
            try:
                sock.sendall(b"x")
            except OSError:
                pass
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            answer += data
    finally:
        sock.close()
    return time.monotonic() - begun, answer


def test_a_slow_loris_body_is_cut_off_with_408(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = started(tmp_path, min_body_rate=100, body_rate_window=2)
    daemons.append(daemon)
    image_id = new_image(daemon)
    took, answer = slow_upload(daemon, image_id, rate=1, length=1 << 20, give_up=20)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"below the minimum of 100 bytes/s" in answer
    assert took < 6
    assert image_status(daemon, image_id) == "queued"
    assert healthcheck_seconds(daemon) < 1.0


def test_a_body_past_body_timeout_is_cut_off_with_408(tmp_path: Path, daemons: list[Daemon]) -> None:
    # A steady 20 bytes/s passes a minimum rate of 5 bytes/s, but not the 3 s total limit.
    daemon = started(tmp_path, min_body_rate=5, body_rate_window=1, body_timeout=3)
    daemons.append(daemon)
    image_id = new_image(daemon)
    took, answer = slow_upload(daemon, image_id, rate=20, length=1 << 20, give_up=20)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 3 s" in answer
    assert 2.5 < took < 6
    assert image_status(daemon, image_id) == "queued"


def test_the_tcp_cap_answers_503_and_leaves_the_unix_socket(
    tmp_path: Path, daemons: list[Daemon], sockets: list[socket.socket]
) -> None:
    daemon = started(tmp_path, max_connections=50, unix_max_connections=4, header_timeout=30)
    daemons.append(daemon)
    log_size = daemon.log.stat().st_size
    idle_fds = fd_count(daemon)
    held = connect(daemon, sockets, 50)
    wait_for(lambda: fd_count(daemon) >= idle_fds + 50, "the daemon to accept them", 10)
    time.sleep(0.2)
    refused = connect(daemon, sockets, 300)
    answers = []
    for s in refused:
        s.settimeout(5)
        try:
            answers.append(s.recv(4096))
        except OSError as exc:  # a reset racing the answer still counts as refused
            answers.append(repr(exc).encode())
    assert all(a.startswith(b"HTTP/1.1 503 ") or b"Reset" in a for a in answers), answers[:3]
    assert sum(a.startswith(b"HTTP/1.1 503 ") for a in answers) > 250
    assert b"Too many connections" in answers[0]
    assert not any(closed_by_server(s, 0) for s in held)
    # The administrator still gets in on the Unix socket, with its own cap.
    assert unix_get(daemon, "/v2/images")[0] == 200
    # 300 refusals log a handful of lines, not 300.
    grown = daemon.log.read_bytes()[log_size:].decode()
    assert 1 <= grown.count("refusing new connections") <= 6, grown
    # Once the held connections go, TCP clients get in again.
    for s in held:
        s.close()
    wait_for(lambda: fd_count(daemon) < idle_fds + 5, "the held connections to be gone", 10)
    assert healthcheck_seconds(daemon) < 1.0


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _soft_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))


def soft_nofile(daemon: Daemon) -> int:
    for line in Path("/proc/%d/limits" % daemon.proc.pid).read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc/PID/limits")


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = started(tmp_path, preexec_fn=_soft_fd_limit)
    daemons.append(daemon)
    assert soft_nofile(daemon) == 4096


def test_a_low_open_file_limit_lowers_the_tcp_cap_and_never_runs_out(
    tmp_path: Path, daemons: list[Daemon], sockets: list[socket.socket]
) -> None:
    # 256 descriptors: 64 are kept for the daemon's files, 64 + 16 for the Unix socket and 16 for
    # accepting, so TCP gets 96, whatever max_connections says; before, accept() failed with
    # EMFILE and the Unix socket, the catalog and the log went down together.
    daemon = started(tmp_path, preexec_fn=_low_fd_limit, header_timeout=30)
    daemons.append(daemon)
    text = daemon.log.read_text()
    assert "api.max_connections = 4096 does not fit the open-file limit of 256" in text and "using 96" in text
    log_size = daemon.log.stat().st_size
    connect(daemon, sockets, 400)
    time.sleep(1)
    assert fd_count(daemon) < 240
    status, body = unix_get(daemon, "/v2/images")
    assert status == 200, body
    image_id = new_image_over_unix(daemon)
    assert image_id
    grown = daemon.log.read_bytes()[log_size:].decode()
    assert "out of system resource" not in grown and "Too many open files" not in grown, grown
    assert len(grown) < 4096, grown


def new_image_over_unix(daemon: Daemon) -> str:
    conn = UnixConnection(daemon.state_dir / "appliance.sock")
    try:
        conn.request(
            "POST",
            "/v2/images",
            body=json.dumps({"name": "u", "disk_format": "raw", "container_format": "bare"}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        assert resp.status == 201, resp.read()
        return str(json.loads(resp.read())["id"])
    finally:
        conn.close()


def versions_href(daemon: Daemon, host: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=5)
    try:
        conn.request("GET", "/versions", headers={"Host": host})
        resp = conn.getresponse()
        assert resp.status == 200
        return str(json.loads(resp.read())["versions"][0]["links"][0]["href"])
    finally:
        conn.close()


def test_versions_never_reflect_the_host_header(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = started(tmp_path)
    daemons.append(daemon)
    assert versions_href(daemon, "evil.example:666") == daemon.url + "/v2/"
    public = started(tmp_path, "public", public_url="https://images.example.org:9292/")
    daemons.append(public)
    assert versions_href(public, "evil.example") == "https://images.example.org:9292/v2/"


def _permissive_umask() -> None:
    os.umask(0o022)


def test_state_is_private_when_started_outside_systemd(tmp_path: Path, daemons: list[Daemon]) -> None:
    state = tmp_path / "site"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    daemon = start_daemon(state, preexec_fn=_permissive_umask)
    daemons.append(daemon)
    new_image(daemon)
    assert stat.S_IMODE(state.stat().st_mode) & 0o027 == 0
    for name in ("catalog.sqlite", "admin-token", "images", "staging"):
        path = state / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (name, oct(path.stat().st_mode))
    assert stat.S_IMODE((state / "catalog.sqlite").stat().st_mode) == 0o600
    daemon.stop()
    # An existing world-readable catalog is made private at the next start.
    (state / "catalog.sqlite").chmod(0o644)
    state.chmod(0o755)
    again = start_daemon(state, preexec_fn=_permissive_umask)
    daemons.append(again)
    assert stat.S_IMODE((state / "catalog.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o750


def test_under_systemd_the_units_group_bits_stay_and_world_bits_go(tmp_path: Path, daemons: list[Daemon]) -> None:
    """The unit's UMask=0027 makes files group-readable by design; the daemon keeps that (less
    any world bits) when systemd started it."""
    state = tmp_path / "site"
    daemon = start_daemon(state, preexec_fn=_permissive_umask, env={"INVOCATION_ID": "0" * 32})
    daemons.append(daemon)
    new_image(daemon)
    mode = stat.S_IMODE((state / "catalog.sqlite").stat().st_mode)
    assert mode & 0o007 == 0 and mode & 0o040, oct(mode)


def test_a_web_download_past_download_timeout_fails_the_import(
    tmp_path: Path, daemons: list[Daemon], source: Source
) -> None:
    # The source sends 64 KiB every 50 ms: never idle, but 64 MiB would take ~50 s.
    config = write_toml(
        tmp_path / "slow.toml",
        {
            "import": {
                "download_timeout": 2,
                "uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]},
            }
        },
    )
    daemon = start_daemon(tmp_path / "slow", config)
    daemons.append(daemon)
    image_id = create(daemon, "slow")
    begun = time.monotonic()
    start_import(daemon, image_id, {"method": {"name": "web-download", "uri": source.url("slow/%d" % (64 << 20))}})
    task = wait_task_done(daemon, image_id, set(), timeout=30)
    assert task["status"] == "failure"
    assert "not finished within 2 s" in task["message"], task["message"]
    assert time.monotonic() - begun < 10
    assert image_status(daemon, image_id) == "queued"


def test_a_reload_reports_connection_settings_as_needing_a_restart(tmp_path: Path, daemons: list[Daemon]) -> None:
    daemon = started(tmp_path, header_timeout=3)
    daemons.append(daemon)
    write_toml(tmp_path / "site.toml", {"api": {"header_timeout": 7, "max_connections": 10}})
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload applied" in daemon.log.read_text(), "the reload", 10)
    assert "need a restart to take effect: api.header_timeout, api.max_connections" in daemon.log.read_text()
