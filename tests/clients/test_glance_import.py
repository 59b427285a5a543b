"""The interoperable import workflow driven by the real `glance` CLI against a real daemon.

web-download fetches from a real HTTP server on 127.0.0.1 that the test runs in a thread;
glance-direct and copy-image go through the CLI's own stage/import calls. Assertions are on the
tables the CLI prints, its exit codes and stderr, and on the downloaded bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_glance_cli import GLANCE, as_dict, as_records
from tests.clients.test_glance_cli import Glance as _Glance
from tests.conftest import Daemon, write_toml

pytestmark = pytest.mark.clients

STORES = {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}
FINISHED = ("success", "failure")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up early is not the test's business


@dataclass
class WebRoot:
    """A real HTTP server on 127.0.0.1 serving the files of `root`."""

    root: Path
    port: int

    def add(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url(name)

    def url(self, name: str) -> str:
        return "http://127.0.0.1:%d/%s" % (self.port, name)


@pytest.fixture
def web(tmp_path: Path) -> Iterator[WebRoot]:
    root = tmp_path / "www"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield WebRoot(root=root, port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class Glance(_Glance):
    """The CLI with a terminal as stdin. image-create-via-import treats any stdin that is not a
    tty as image data (and then refuses web-download), so /dev/null will not do."""

    def run(self, *args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        cmd = [
            str(GLANCE),
            "--os-image-api-version",
            "2",
            "--os-image-url",
            self.daemon.url,
            "--os-auth-token=" + (token if token is not None else self.daemon.token),  # may start with "-"
            *args,
        ]
        master, slave = os.openpty()
        try:
            return subprocess.run(cmd, env=env, stdin=slave, capture_output=True, text=True, timeout=timeout)
        finally:
            os.close(slave)
            os.close(master)


def site_config(tmp_path: Path, port: int | None) -> Path:
    imp: dict[str, Any] = {
        # Both plugins are no-ops for plain raw data; a gzip'd download is unpacked on the way in.
        "plugins": ["image_decompression", "inject_image_metadata"],
        "inject": {"edge_site": "dcn0"},
        "ignore_user_roles": [],  # the CLI runs as admin; inject for admins too
    }
    if port is not None:
        imp["uri_filter"] = {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [port]}
    return write_toml(
        tmp_path / ("import-%s.toml" % ("default-filter" if port is None else "loopback")),
        {"stores": STORES, "import": imp},
    )


@pytest.fixture
def glance(tmp_path: Path, daemon_factory: Callable[..., Daemon], web: WebRoot) -> Glance:
    return Glance(daemon_factory("site", site_config(tmp_path, web.port)))


def disk_bytes(size: int) -> bytes:
    # A fixed, non-archive header: the decompression plugin must see plain raw data.
    return b"RAWDISK\0" + os.urandom(size - 8)


def image_tasks(glance: Glance, image_id: str) -> list[dict[str, str]]:
    """`glance --verbose image-tasks`: its first column (Image Id) is never empty, which the
    table parser needs (an empty first cell reads as a wrapped line of the row above, and the
    plain listing starts with Message, empty while a task runs or after it succeeded)."""
    return as_records(glance.ok("--verbose", "image-tasks", image_id))


def _api_tasks(glance: Glance, image_id: str) -> list[dict[str, Any]]:
    req = urllib.request.Request(
        "%s/v2/images/%s/tasks" % (glance.daemon.url, image_id),
        headers={"X-Auth-Token": glance.daemon.token, "Accept": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["tasks"]


def wait_import(glance: Glance, image_id: str, timeout: float = 45) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Wait until no task of the image is still running, then what the CLI says:
    (`image-show`, `image-tasks`). The waiting polls the API directly (a CLI run costs half a
    second of start-up); what is asserted on comes from the CLI."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = _api_tasks(glance, image_id)
        if tasks and all(t["status"] in FINISHED for t in tasks):
            break
        assert time.monotonic() < deadline, "import of %s did not finish in %ss: %s" % (image_id, timeout, tasks)
        time.sleep(0.05)
    return glance.show(image_id), image_tasks(glance, image_id)


def wait_active(glance: Glance, image_id: str) -> dict[str, str]:
    shown, tasks = wait_import(glance, image_id)
    assert shown["status"] == "active", "import failed: %s\n%s" % (tasks, shown)
    assert [t["Status"] for t in tasks] == ["success"], tasks
    assert "os_glance_importing_to_stores" not in shown
    return shown


def download(glance: Glance, image_id: str, tmp_path: Path) -> bytes:
    out = tmp_path / ("download-%s" % image_id)
    out.unlink(missing_ok=True)
    glance.ok("image-download", "--file", str(out), image_id)  # glanceclient checks os_hash_value too
    return out.read_bytes()


def stores_of(shown: dict[str, str]) -> set[str]:
    return set(filter(None, shown.get("stores", "").split(",")))


def created_id(out: str) -> str:
    """The id of the image a create-via-import printed (it prints the image even on failure)."""
    return as_dict(out)["id"]


def test_web_download_via_cli(glance: Glance, web: WebRoot, tmp_path: Path) -> None:
    data = disk_bytes(3 << 20)
    url = web.add("disk.raw", data)
    out = glance.ok(
        "image-create-via-import",
        "--import-method",
        "web-download",
        "--uri",
        url,
        "--name",
        "from-web",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
    )
    created = as_dict(out)
    assert created["name"] == "from-web"
    assert created["status"] in ("importing", "active")
    image_id = created["id"]

    shown = wait_active(glance, image_id)
    assert shown["size"] == str(len(data))
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["stores"] == "local"  # no store named: the default one
    assert shown["edge_site"] == "dcn0"  # inject_image_metadata ran
    assert download(glance, image_id, tmp_path) == data

    # A gzip'd source is unpacked by image_decompression before it reaches the store.
    packed = disk_bytes(2 << 20) + bytes(1 << 20)
    url = web.add("disk.raw.gz", gzip.compress(packed))
    image_id = created_id(
        glance.ok(
            "image-create-via-import",
            "--import-method",
            "web-download",
            "--uri",
            url,
            "--name",
            "from-web-gz",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--stores",
            "fast",
        )
    )
    shown = wait_active(glance, image_id)
    assert shown["size"] == str(len(packed))
    assert shown["stores"] == "fast"
    assert download(glance, image_id, tmp_path) == packed


@pytest.mark.parametrize(
    "targets", [("--stores", "local,fast"), ("--all-stores", "true")], ids=["stores", "all-stores"]
)
def test_glance_direct_to_both_stores_via_cli(glance: Glance, tmp_path: Path, targets: tuple[str, str]) -> None:
    data = disk_bytes((2 << 20) + 4321)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    out = glance.ok(
        "image-create-via-import",
        "--import-method",
        "glance-direct",
        "--file",
        str(source),
        "--name",
        "direct",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        *targets,
        "--allow-failure",
        "false",
    )
    image_id = created_id(out)
    shown = wait_active(glance, image_id)
    assert stores_of(shown) == {"local", "fast"}
    assert shown.get("os_glance_failed_import", "") == ""
    assert shown["size"] == str(len(data))
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert download(glance, image_id, tmp_path) == data
    state = glance.daemon.state_dir
    assert (state / "images" / image_id).read_bytes() == data
    assert (state / "fast" / image_id).read_bytes() == data
    # the staged copy is gone once the import is done
    assert not (state / "staging" / "staged" / image_id).exists()


def test_copy_image_then_delete_original_store_via_cli(glance: Glance, tmp_path: Path) -> None:
    data = disk_bytes(3 << 20)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)
    created = as_dict(
        glance.ok(
            "image-create",
            "--name",
            "to-copy",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            str(source),
            "--store",
            "local",
        )
    )
    image_id = created["id"]
    assert created["status"] == "active" and created["stores"] == "local"

    # Only copy: the CLI refuses to remove it.
    err = glance.fails("stores-delete", "--store", "local", image_id)
    assert "Unable to delete image '%s' from store 'local'" % image_id in err

    glance.ok("image-import", "--import-method", "copy-image", "--stores", "fast", image_id)
    shown = wait_active(glance, image_id)
    assert shown["stores"] == "local,fast"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    state = glance.daemon.state_dir
    assert (state / "fast" / image_id).read_bytes() == data

    # Copying to a store that already holds it is refused, with the reason.
    err = glance.fails("image-import", "--import-method", "copy-image", "--stores", "fast", image_id)
    assert "already" in err and "fast" in err

    glance.ok("stores-delete", "--store", "local", image_id)
    shown = glance.show(image_id)
    assert shown["status"] == "active" and shown["stores"] == "fast"
    assert not (state / "images" / image_id).exists()
    assert download(glance, image_id, tmp_path) == data


def test_refused_uri_fails_the_cli_with_the_reason(glance: Glance, web: WebRoot) -> None:
    other_port = web.port + 1 if web.port < 65535 else web.port - 1
    cases = {
        "metadata": ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        # loopback is allowed on this site, but only on the web server's port
        "other-port": ("http://127.0.0.1:%d/disk.raw" % other_port, "port %d" % other_port),
    }
    for name, (url, reason) in cases.items():
        result = glance.run(
            "image-create-via-import",
            "--import-method",
            "web-download",
            "--uri",
            url,
            "--name",
            name,
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
        )
        assert result.returncode != 0, result.stdout
        assert "URI refused" in result.stderr and reason in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "object has no attribute" not in result.stderr
        # The record was created before the import was refused; the CLI still prints it.
        image_id = created_id(result.stdout)
        shown = glance.show(image_id)
        assert shown["name"] == name and shown["status"] == "queued", shown
        assert "os_glance_importing_to_stores" not in shown
        # refused synchronously: no task was ever created
        assert image_tasks(glance, image_id) == []


def test_loopback_refused_by_the_default_filter(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], web: WebRoot
) -> None:
    glance = Glance(daemon_factory("default-filter", site_config(tmp_path, None)))
    url = web.add("disk.raw", disk_bytes(1 << 20))
    result = glance.run(
        "image-create-via-import",
        "--import-method",
        "web-download",
        "--uri",
        url,
        "--name",
        "loopback",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
    )
    assert result.returncode != 0, result.stdout
    # The real server's URL: refused on its port (not 80/443) before its loopback address is looked at.
    assert "URI refused" in result.stderr and "port %d" % web.port in result.stderr, result.stderr
    assert glance.show(created_id(result.stdout))["status"] == "queued"
    # On the default port, the address itself is the reason.
    err = glance.fails(
        "image-create-via-import",
        "--import-method",
        "web-download",
        "--uri",
        "http://127.0.0.1/disk.raw",
        "--name",
        "loopback-80",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
    )
    assert "URI refused" in err and "loopback" in err, err


def test_image_tasks_shows_status_and_failure_message(glance: Glance, web: WebRoot, tmp_path: Path) -> None:
    web.add("present.raw", b"x")
    missing = web.url("absent.raw")
    out = glance.ok(
        "image-create-via-import",
        "--import-method",
        "web-download",
        "--uri",
        missing,
        "--name",
        "will-404",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
    )
    image_id = created_id(out)
    shown, tasks = wait_import(glance, image_id)
    assert [t["Status"] for t in tasks] == ["failure"], tasks
    assert "404" in tasks[0]["Message"], tasks
    assert tasks[0]["Updated at"]
    assert shown["status"] == "queued"
    assert "os_glance_importing_to_stores" not in shown

    # The plain listing (what an operator types) shows the same status and message.
    plain = glance.ok("image-tasks", image_id)
    assert "failure" in plain and "404" in plain, plain
    # task-show finds the same task by the id the verbose listing gave.
    assert tasks[0]["Image Id"] == image_id
    task = as_dict(glance.ok("task-show", tasks[0]["Task Id"]))
    assert task["status"] == "failure" and "404" in task["message"]
    assert task["type"] == "api_image_import"

    # The same image can be imported again once the source is there; the new task succeeds.
    data = disk_bytes(1 << 20)
    web.add("absent.raw", data)
    glance.ok("image-import", "--import-method", "web-download", "--uri", missing, image_id)
    shown, tasks = wait_import(glance, image_id)
    assert shown["status"] == "active"
    assert sorted(t["Status"] for t in tasks) == ["failure", "success"], tasks
    assert download(glance, image_id, tmp_path) == data


def test_ftp_web_download_is_refused_at_the_request(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    """An empty allowed_schemes lets Glance's filter pass ftp (only disallowed_schemes apply);
    nothing here downloads ftp, so the import request itself is refused, not a task later."""
    config = write_toml(
        tmp_path / "ftp-open.toml",
        {
            "stores": STORES,
            "import": {
                "uri_filter": {"allowed_schemes": [], "disallowed_schemes": ["file"], "allowed_hosts": ["127.0.0.0/8"]}
            },
        },
    )
    glance = Glance(daemon_factory("site", config))
    err = glance.fails(
        "image-create-via-import",
        "--import-method",
        "web-download",
        "--uri",
        "ftp://127.0.0.1/disk.raw",
        "--name",
        "from-ftp",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
    )
    assert "scheme 'ftp' cannot be downloaded (only http, https)" in err
    assert all(t["status"] != "processing" for image in _images(glance) for t in _api_tasks(glance, image))


def _images(glance: Glance) -> list[str]:
    req = urllib.request.Request(
        "%s/v2/images" % glance.daemon.url, headers={"X-Auth-Token": glance.daemon.token, "Accept": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return [i["id"] for i in json.load(resp)["images"]]
