"""The daemon as a systemd service: a fake systemd (a datagram socket as NOTIFY_SOCKET)
receives what the real daemon process sends on start, watchdog, reload and stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import cli, systemd
from tests.conftest import start_daemon, write_toml


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[tuple[float, str]] = []

    def wait_for(self, text: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for _, msg in self.received:
                if text in msg:
                    return msg
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.received.append((time.monotonic(), data.decode()))
        raise AssertionError("no %r from the daemon; got %r" % (text, [m for _, m in self.received]))

    def drain(self, seconds: float) -> list[tuple[float, str]]:
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            got.append((time.monotonic(), data.decode()))
        self.received.extend(got)
        return got


@pytest.fixture
def fake_systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.sock.close()


def check_uri(url: str, token: str, uri: str) -> dict:
    req = urllib.request.Request(
        url + "/v2/edge/check-uri",
        data=json.dumps({"uri": uri}).encode(),
        method="POST",
        headers={"X-Auth-Token": token, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_ready_watchdog_reload_and_stop(tmp_path: Path, fake_systemd: FakeSystemd) -> None:
    fake = fake_systemd
    config = write_toml(tmp_path / "appliance.toml", {"import": {"uri_filter": {"allowed_hosts": ["203.0.113.0/24"]}}})
    daemon = start_daemon(tmp_path / "state", config, env={"NOTIFY_SOCKET": str(fake.path), "WATCHDOG_USEC": "400000"})
    try:
        ready = fake.wait_for("READY=1")
        assert "STATUS=edge site edge" in ready
        # WATCHDOG=1 every WatchdogSec/2 = 0.2 s
        pings = [t for t, m in fake.drain(1.5) if "WATCHDOG=1" in m]
        assert 5 <= len(pings) <= 10, pings
        assert check_uri(daemon.url, daemon.token, "http://203.0.113.9/disk")["allowed"] is True

        # A reload with a changed URI filter takes effect without a restart.
        write_toml(
            config, {"import": {"uri_filter": {"allowed_hosts": ["198.51.100.0/24"]}}, "site": {"name": "renamed"}}
        )
        fake.received.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        reloading = fake.wait_for("RELOADING=1")
        assert "MONOTONIC_USEC=" in reloading
        fake.wait_for("READY=1")
        assert check_uri(daemon.url, daemon.token, "http://203.0.113.9/disk")["allowed"] is False
        assert check_uri(daemon.url, daemon.token, "http://198.51.100.9/disk")["allowed"] is True
        log = daemon.log.read_text()
        assert "need a restart to take effect: site" in log

        # An invalid config on reload keeps the running one and says why.
        config.write_text('[import.uri_filter]\nallowed_ports = ["x"]\n')
        fake.received.clear()
        daemon.proc.send_signal(signal.SIGHUP)
        fake.wait_for("RELOADING=1")
        failed = fake.wait_for("READY=1")
        assert "reload failed" in failed and "allowed_ports" in failed
        assert check_uri(daemon.url, daemon.token, "http://198.51.100.9/disk")["allowed"] is True

        fake.received.clear()
        daemon.proc.send_signal(signal.SIGTERM)
        fake.wait_for("STOPPING=1")
        assert daemon.proc.wait(30) == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.proc.kill()


def block_the_event_loop(seconds: float) -> None:
    """What a handler stuck in a blocking call does: hold the thread the event loop runs on."""
    time.sleep(seconds)


async def test_a_blocked_loop_stops_the_watchdog(fake_systemd: FakeSystemd, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_systemd
    monkeypatch.setenv("NOTIFY_SOCKET", str(fake.path))
    task = asyncio.create_task(cli._watchdog(0.05))
    await asyncio.sleep(0.3)
    before = fake.drain(0.05)
    assert len(before) >= 3
    block_the_event_loop(0.5)  # no coroutine runs meanwhile
    # Read what arrived during the block, before the loop gets control back.
    fake.sock.setblocking(False)
    during = []
    while True:
        try:
            during.append(fake.sock.recv(4096))
        except BlockingIOError:
            break
    fake.sock.setblocking(True)
    # Ten pings were due during the block; none was sent.
    assert during == []
    await asyncio.sleep(0.12)  # the loop runs again: so do the pings
    task.cancel()
    assert any("WATCHDOG=1" in m for _, m in fake.drain(0.1))


def test_watchdog_interval_reads_systemd_environment() -> None:
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None


def test_notify_without_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
