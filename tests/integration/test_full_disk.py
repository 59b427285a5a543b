"""A full disk, for real: a small tmpfs holds the store, the staging area and the catalog of a
real daemon. Writes that would cross the free-space floor are refused before a byte is written
(507), nothing partial is left, the catalog stays writable; a catalog that meets a full
filesystem anyway answers 507, not 500, and recovers when space comes back."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, write_toml

MIB = 1 << 20
PATCH_CT = "application/openstack-images-v2.1-json-patch"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs (the tests run as root, here and in CI; a failure to mount fails the test)."""
    path = tmp_path / "disk"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % (32 * MIB), "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def call(
    daemon: Daemon,
    method: str,
    path: str,
    *,
    body: Any = None,
    data: bytes | None = None,
    content_type: str = "application/json",
    chunked: bool = False,
) -> tuple[int, Any]:
    headers = {"X-Auth-Token": daemon.token, "Accept": "application/json"}
    payload: Any = data if data is not None else (json.dumps(body).encode() if body is not None else None)
    if payload is not None:
        headers["Content-Type"] = content_type
    if chunked:
        payload = iter([payload[i : i + MIB] for i in range(0, len(payload), MIB)])
        headers["Transfer-Encoding"] = "chunked"
    req = urllib.request.Request(daemon.url + path, data=payload, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, text = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read()
    return status, json.loads(text) if text else None


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


@pytest.fixture
def daemon_on_small_disk(tmp_path: Path, small_disk: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    config = write_toml(
        tmp_path / "full.toml",
        {
            "api": {"unix_socket": ""},
            "stores": {"default": "local", "local": {"path": str(small_disk / "images"), "min_free_bytes": 8 * MIB}},
            "catalog": {"path": str(small_disk / "catalog.sqlite")},
            "import": {"staging_dir": str(small_disk / "staging"), "staging_min_free_bytes": 8 * MIB},
            "cache": {"enabled": False},
        },
    )
    return daemon_factory("site", config)


def new_image(daemon: Daemon, name: str) -> str:
    status, image = call(
        daemon, "POST", "/v2/images", body={"name": name, "disk_format": "raw", "container_format": "bare"}
    )
    assert status == 201, image
    return str(image["id"])


def test_writes_stop_at_the_floor_and_the_catalog_stays_writable(
    daemon_on_small_disk: Daemon, small_disk: Path
) -> None:
    daemon = daemon_on_small_disk
    kept = new_image(daemon, "kept")
    kept_data = os.urandom(10 * MIB)
    assert (
        call(daemon, "PUT", "/v2/images/%s/file" % kept, data=kept_data, content_type="application/octet-stream")[0]
        == 204
    )
    # ~22 MiB left, the floor is 8 MiB: 20 MiB does not fit.
    big = new_image(daemon, "big")
    data = os.urandom(20 * MIB)
    before = free_bytes(small_disk)
    status, answer = call(daemon, "PUT", "/v2/images/%s/file" % big, data=data, content_type="application/octet-stream")
    assert status == 507, answer
    assert "min_free_bytes" in answer["message"] and "Store local" in answer["message"]
    assert free_bytes(small_disk) >= before - MIB  # refused before writing (only the catalog moved)
    # Size unknown (chunked): stopped at the floor, the partial file removed.
    status, answer = call(
        daemon, "PUT", "/v2/images/%s/file" % big, data=data, content_type="application/octet-stream", chunked=True
    )
    assert status == 507, answer
    assert free_bytes(small_disk) >= 8 * MIB - 4 * MIB  # never far below the floor
    # Staging (glance-direct) has its own floor.
    status, answer = call(
        daemon, "PUT", "/v2/images/%s/stage" % big, data=data, content_type="application/octet-stream"
    )
    assert status == 507, answer
    status, answer = call(
        daemon, "PUT", "/v2/images/%s/stage" % big, data=data, content_type="application/octet-stream", chunked=True
    )
    assert status == 507, answer
    leftovers = [f for f in files_under(small_disk) if not f.startswith("catalog.sqlite")]
    assert leftovers == ["images/%s" % kept], leftovers  # nothing partial anywhere
    assert call(daemon, "GET", "/v2/images/%s" % big)[1]["status"] == "queued"

    # An import whose data would cross the store's floor fails before writing to the store.
    staged = new_image(daemon, "staged")
    assert (
        call(
            daemon,
            "PUT",
            "/v2/images/%s/stage" % staged,
            data=os.urandom(10 * MIB),
            content_type="application/octet-stream",
        )[0]
        == 204
    )  # 22 - 10 MiB: above the floor
    status, answer = call(daemon, "POST", "/v2/images/%s/import" % staged, body={"method": {"name": "glance-direct"}})
    assert status == 202, answer
    deadline = time.monotonic() + 30
    while (task := call(daemon, "GET", "/v2/images/%s/tasks" % staged)[1]["tasks"][0])["status"] == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert task["status"] == "failure" and "min_free_bytes" in task["message"], task
    assert call(daemon, "GET", "/v2/images/%s" % staged)[1]["status"] == "queued"
    leftovers = [f for f in files_under(small_disk) if not f.startswith("catalog.sqlite")]
    assert leftovers == ["images/%s" % kept], leftovers

    # The catalog is still writable for everyone.
    status, shown = call(
        daemon,
        "PATCH",
        "/v2/images/%s" % kept,
        body=[{"op": "add", "path": "/note", "value": "still writable"}],
        content_type=PATCH_CT,
    )
    assert status == 200 and shown["note"] == "still writable"
    assert new_image(daemon, "another")
    # Deleting frees space: then the big image fits.
    assert call(daemon, "DELETE", "/v2/images/%s" % kept)[0] == 204
    assert call(daemon, "PUT", "/v2/images/%s/file" % big, data=data, content_type="application/octet-stream")[0] == 204
    status, got = 0, b""
    req = urllib.request.Request(daemon.url + "/v2/images/%s/file" % big, headers={"X-Auth-Token": daemon.token})
    with urllib.request.urlopen(req, timeout=60) as resp:
        status, got = resp.status, resp.read()
    assert status == 200 and got == data


def fill(path: Path) -> Path:
    """Fill the filesystem to the last byte (as another program would)."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for block in (1 << 20, 4096, 1):  # down to the last byte
            try:
                while True:
                    os.write(fd, b"\xff" * block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def test_a_full_catalog_filesystem_answers_507_and_recovers(daemon_on_small_disk: Daemon, small_disk: Path) -> None:
    daemon = daemon_on_small_disk
    image = new_image(daemon, "before")
    filler = fill(small_disk)
    try:
        big_value = "v" * 60_000  # needs new catalog pages
        for attempt in range(3):  # every write: a 507 naming the cause, never a 500
            status, answer = call(
                daemon,
                "PATCH",
                "/v2/images/%s" % image,
                body=[{"op": "add", "path": "/note%d" % attempt, "value": big_value}],
                content_type=PATCH_CT,
            )
            assert status == 507, (status, answer)
            assert "catalog's filesystem is full" in answer["message"]
        status, answer = call(
            daemon,
            "POST",
            "/v2/images",
            body={"name": "x" * 200, "disk_format": "raw", "container_format": "bare", "n": big_value},
        )
        assert status == 507, (status, answer)
        status, shown = call(daemon, "GET", "/v2/images/%s" % image)  # reads go on
        assert status == 200 and "note0" not in shown
        with urllib.request.urlopen(daemon.url + "/healthcheck", timeout=10) as resp:
            assert resp.status == 200
    finally:
        filler.unlink()
    status, shown = call(
        daemon,
        "PATCH",
        "/v2/images/%s" % image,
        body=[{"op": "add", "path": "/note", "value": "space is back"}],
        content_type=PATCH_CT,
    )
    assert status == 200 and shown["note"] == "space is back"
    assert [i["name"] for i in call(daemon, "GET", "/v2/images")[1]["images"]] == ["before"]
