"""Shared fixtures: configs on tmp_path, in-process services and API clients, and real daemon
processes started through the `edge-appliance serve` entry point."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient

from appliance.app import build_app
from appliance.config import Config, parse_config
from appliance.services import Services, open_services
from tests.ceph import ceph as ceph  # the session's Ceph cluster (RBD stores)
from tests.glance_server import keystone_glance as keystone_glance  # the same, tokens from Keystone
from tests.glance_server import openstack_glance as openstack_glance  # the session's OpenStack Glance
from tests.keystone import keystone as keystone  # the session's Keystone

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# Glance (and so the daemon) answers errors as HTML unless the client prefers JSON.
JSON_ERRORS = {"Accept": "application/json"}


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """A tiny TOML writer for test configs (tables of scalars, lists, one nesting level)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, str):
            return '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
        if isinstance(v, (list, tuple)):
            return "[%s]" % ", ".join(value(x) for x in v)
        raise TypeError(v)

    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        scalars = {
            k: v
            for k, v in body.items()
            if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict))
        }
        lines.append("[%s]" % name)
        lines.extend("%s = %s" % (k, value(v)) for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                table("%s.%s" % (name, k), v)
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    lines.append("[[%s.%s]]" % (name, k))
                    lines.extend("%s = %s" % (ik, value(iv)) for ik, iv in item.items())

    for name, body in data.items():
        table(name, body)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """make_config(api={...}, stores={...}, ...) → a validated Config rooted in tmp_path."""

    def make(state_dir: Path | None = None, **sections: Any) -> Config:
        sections.setdefault("api", {})
        sections["api"].setdefault("unix_socket", "")
        return parse_config(sections, state_dir or (tmp_path / "state"))

    return make


@pytest.fixture
async def services(make_config: Callable[..., Config]) -> AsyncIterator[Services]:
    async with open_services(make_config()) as s:
        yield s


@dataclass
class Api:
    client: TestClient
    token: str
    services: Services

    def headers(self, **extra: str) -> dict[str, str]:
        return {"X-Auth-Token": self.token, **extra}

    async def create(self, **body: Any) -> dict[str, Any]:
        body.setdefault("disk_format", "raw")
        body.setdefault("container_format", "bare")
        resp = await self.client.post("/v2/images", json=body, headers=self.headers())
        assert resp.status == 201, await resp.text()
        return await resp.json()

    async def upload(self, image_id: str, data: bytes, **headers: str) -> Any:
        return await self.client.put(
            "/v2/images/%s/file" % image_id,
            data=io.BytesIO(data),
            headers=self.headers(**{"Content-Type": "application/octet-stream", **headers}),
        )

    async def show(self, image_id: str) -> dict[str, Any]:
        resp = await self.client.get("/v2/images/%s" % image_id, headers=self.headers())
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture
async def api(services: Services, aiohttp_client: Any) -> Api:
    client = await aiohttp_client(build_app(services), headers=JSON_ERRORS)
    token = (services.config.state_dir / "admin-token").read_text().strip()
    return Api(client=client, token=token, services=services)


@pytest.fixture
async def open_api(
    make_config: Callable[..., Config], aiohttp_client: Any
) -> AsyncIterator[Callable[..., Awaitable[Api]]]:
    """open_api(token=None, **sections) → an Api on services built from that config (the token
    defaults to the admin token the daemon writes when none are configured)."""
    stack = contextlib.AsyncExitStack()

    async def factory(token: str | None = None, **sections: Any) -> Api:
        services = await stack.enter_async_context(open_services(make_config(**sections)))
        client = await aiohttp_client(build_app(services), headers=JSON_ERRORS)
        stack.push_async_callback(client.close)  # runs before the services close
        if token is None:
            token = (services.config.state_dir / "admin-token").read_text().strip()
        return Api(client=client, token=token, services=services)

    yield factory
    await stack.aclose()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    url: str
    log: Path

    @property
    def token(self) -> str:
        return (self.state_dir / "admin-token").read_text().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def show(self, image_id: str) -> dict[str, Any]:
        """The image's record, asked over HTTP (blocking)."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            conn.request(
                "GET", "/v2/images/%s" % image_id, headers={"X-Auth-Token": self.token, "Accept": "application/json"}
            )
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        assert resp.status == 200, raw
        return dict(json.loads(raw))


def start_daemon(
    state_dir: Path,
    config: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
    port: int = 0,
    preexec_fn: Callable[[], None] | None = None,
) -> Daemon:
    """port: 0 picks a free one; a restarted daemon passes its old port to keep its URL.
    preexec_fn runs in the child before exec (resource limits, umask). The timeout is generous: on a
    loaded 2-core CI machine the interpreter alone has taken over 20 s to start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log = state_dir / "daemon.log"
    cmd = [
        str(VENV_BIN / "edge-appliance"),
        "serve",
        "--state-dir",
        str(state_dir),
        "--port",
        str(port),
        "--host",
        "127.0.0.1",
    ]
    if config is not None:
        cmd += ["--config", str(config)]
    fh = open(log, "ab")
    start = fh.tell()  # a restarted daemon appends: read only what this run wrote
    # A test daemon is not a systemd service, even when the test run itself is one.
    proc = subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        cwd=str(state_dir),
        env={**{k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}, **(env or {})},
        preexec_fn=preexec_fn,
    )
    fh.close()
    deadline = time.monotonic() + timeout
    port = None
    while time.monotonic() < deadline and port is None:
        text = log.read_bytes()[start:].decode(errors="replace")
        if proc.poll() is not None:
            raise RuntimeError("daemon exited with %s:\n%s" % (proc.returncode, text))
        found = re.findall(r"serving the Image API on http://127\.0\.0\.1:(\d+)", text)
        if found and "ready;" in text:
            port = int(found[-1])
        else:
            time.sleep(0.05)
    if port is None:
        proc.kill()
        raise RuntimeError("daemon did not become ready:\n%s" % log.read_text())
    return Daemon(proc=proc, state_dir=state_dir, url="http://127.0.0.1:%d" % port, log=log)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def factory(name: str = "site", config: Path | None = None) -> Daemon:
        d = start_daemon(tmp_path / name, config)
        started.append(d)
        return d

    yield factory
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(10)


@pytest.fixture
def daemon(daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory()


@pytest.fixture(scope="session")
def qemu_img() -> str:
    path = shutil.which("qemu-img")
    if path is None:
        pytest.fail("qemu-img is required (make test installs qemu-utils)")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # glanceclient caches schemas under ~/.glanceclient; keep every test's cache its own.
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("OS_AUTH_URL", raising=False)
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    os.environ.pop("STATE_DIRECTORY", None)
