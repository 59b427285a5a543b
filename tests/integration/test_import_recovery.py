"""Imports interrupted by a daemon stop (SIGKILL or SIGTERM) are failed cleanly on the next
start: nothing stays `importing`, scratch space and stores are clean, the task says what
happened, and the import can simply be run again. Real daemon processes, a real slow HTTP
source in a thread."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from appliance.stores.filesystem import PARTIAL_DIR
from tests.conftest import Daemon
from tests.integration.conftest import Source
from tests.waiting import wait_for

MiB = 1 << 20
SLOW_TOTAL = 64 * MiB  # would take ~50 s: the import is surely still running when the daemon dies
INTERRUPTED = "Import interrupted"


def call(
    d: Daemon, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    parts = urlsplit(d.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    hdrs = {"X-Auth-Token": d.token, "Accept": "application/json", **(headers or {})}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        ctype = resp.getheader("Content-Type") or ""
        return resp.status, (json.loads(payload) if payload and "json" in ctype else payload)
    finally:
        conn.close()


def create(d: Daemon, name: str) -> str:
    status, image = call(d, "POST", "/v2/images", {"name": name, "disk_format": "raw", "container_format": "bare"})
    assert status == 201, image
    return image["id"]


def tasks_of(d: Daemon, image_id: str) -> list[dict[str, Any]]:
    status, body = call(d, "GET", "/v2/images/%s/tasks" % image_id)
    assert status == 200, body
    return body["tasks"]


def start_import(d: Daemon, image_id: str, body: dict[str, Any]) -> None:
    status, answer = call(d, "POST", "/v2/images/%s/import" % image_id, body)
    assert status == 202, answer


def stage(d: Daemon, image_id: str, data: bytes) -> None:
    status, answer = call(
        d, "PUT", "/v2/images/%s/stage" % image_id, raw=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 204, answer


def upload(d: Daemon, image_id: str, data: bytes) -> None:
    status, answer = call(
        d, "PUT", "/v2/images/%s/file" % image_id, raw=data, headers={"Content-Type": "application/octet-stream"}
    )
    assert status == 204, answer


def download(d: Daemon, image_id: str) -> bytes:
    status, data = call(d, "GET", "/v2/images/%s/file" % image_id, headers={"Accept": "*/*"})
    assert status == 200, data
    return data


def wait_task_done(d: Daemon, image_id: str, known: set[str], timeout: float = 30) -> dict[str, Any]:
    """The image's task that is not in `known`, once it has finished."""

    def finished() -> dict[str, Any] | None:
        new = [t for t in tasks_of(d, image_id) if t["id"] not in known]
        return new[0] if new and new[0]["status"] in ("success", "failure") else None

    return wait_for(finished, "the new import task of %s finishes" % image_id, timeout)


def files_in(path: Path) -> list[str]:
    """Every file under `path` (recursively), relative; [] if it does not exist."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


def store_leftovers(state: Path, image_id: str) -> dict[str, list[str]]:
    """Per store: the image's file if present, and anything in the store's .partial/."""
    found: dict[str, list[str]] = {}
    for store in ("images", "fast"):
        names = [image_id] if (state / store / image_id).exists() else []
        names += [PARTIAL_DIR + "/" + n for n in files_in(state / store / PARTIAL_DIR)]
        if names:
            found[store] = names
    return found


def stop(d: Daemon, sig: int) -> None:
    started = time.monotonic()
    rc = d.stop(sig, timeout=15)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        # A graceful stop does not wait for the import to finish (it would take ~50 s).
        assert rc == 0, d.log.read_text()[-3000:]
        assert time.monotonic() - started < 5, "SIGTERM took %.1fs" % (time.monotonic() - started)


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_web_download_interrupted_is_failed_cleanly_and_can_be_rerun(
    daemon_factory: Callable[..., Daemon], config: Path, source: Source, sig: int
) -> None:
    d = daemon_factory("site", config)
    state = d.state_dir
    image_id = create(d, "in-flight")
    start_import(
        d,
        image_id,
        {"method": {"name": "web-download", "uri": source.url("slow/%d" % SLOW_TOTAL)}, "stores": ["local", "fast"]},
    )

    def downloading() -> dict[str, Any] | None:
        tasks = tasks_of(d, image_id)
        return tasks[0] if tasks and (tasks[0]["bytes_done"] or 0) > 0 else None

    task = wait_for(downloading, "the download makes progress")
    assert task["status"] == "processing"
    shown = d.show(image_id)
    assert shown["status"] == "importing"
    assert shown["os_glance_importing_to_stores"] == "local,fast"
    # the download is being written to the task's scratch directory
    assert files_in(state / "staging" / "work") == ["%s/download" % task["id"]]

    stop(d, sig)
    d = daemon_factory("site", config)  # same state dir: a restart

    shown = d.show(image_id)
    assert shown["status"] == "queued", shown
    assert "os_glance_importing_to_stores" not in shown
    assert "stores" not in shown and shown["size"] is None and shown["checksum"] is None
    [failed] = tasks_of(d, image_id)
    assert failed["id"] == task["id"]
    assert failed["status"] == "failure"
    assert INTERRUPTED in failed["message"] and "again" in failed["message"], failed["message"]
    assert files_in(state / "staging" / "work") == []
    assert files_in(state / "staging" / "staged") == []
    assert store_leftovers(state, image_id) == {}

    # The same image imports fine now, from a fast source.
    data = os.urandom(3 * MiB + 17)
    start_import(
        d,
        image_id,
        {"method": {"name": "web-download", "uri": source.add("disk.raw", data)}, "stores": ["local", "fast"]},
    )
    done = wait_task_done(d, image_id, {task["id"]})
    assert done["status"] == "success", done["message"]
    shown = d.show(image_id)
    assert shown["status"] == "active" and set(shown["stores"].split(",")) == {"local", "fast"}
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert "os_glance_importing_to_stores" not in shown
    assert download(d, image_id) == data
    assert files_in(state / "staging" / "work") == []


def test_staged_data_survives_a_restart(daemon_factory: Callable[..., Daemon], config: Path) -> None:
    """glance-direct: staged but not yet imported. Recovery only touches unfinished tasks, so
    the staged file is kept and the import can still be run after the restart."""
    d = daemon_factory("site", config)
    state = d.state_dir
    data = os.urandom(2 * MiB + 5)
    image_id = create(d, "staged")
    stage(d, image_id, data)
    assert d.show(image_id)["status"] == "uploading"
    assert (state / "staging" / "staged" / image_id).read_bytes() == data

    stop(d, signal.SIGKILL)
    d = daemon_factory("site", config)  # same state dir: a restart

    assert d.show(image_id)["status"] == "uploading"
    assert (state / "staging" / "staged" / image_id).read_bytes() == data
    assert tasks_of(d, image_id) == []
    start_import(d, image_id, {"method": {"name": "glance-direct"}, "stores": ["fast"]})
    done = wait_task_done(d, image_id, set())
    assert done["status"] == "success", done["message"]
    shown = d.show(image_id)
    assert shown["status"] == "active" and shown["stores"] == "fast"
    assert download(d, image_id) == data
    assert files_in(state / "staging" / "staged") == []


def test_sigkill_mid_stage_leaves_an_image_that_can_be_staged_again(
    daemon_factory: Callable[..., Daemon], config: Path
) -> None:
    """Killed while PUT /stage streams: the partial staging file is dropped at start, and the
    image must not be stuck in `uploading` with nothing staged."""
    d = daemon_factory("site", config)
    state = d.state_dir
    image_id = create(d, "half-staged")
    total = 32 * MiB
    parts = urlsplit(d.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("PUT", "/v2/images/%s/stage" % image_id)
        for k, v in {
            "X-Auth-Token": d.token,
            "Content-Type": "application/octet-stream",
            "Content-Length": str(total),
        }.items():
            conn.putheader(k, v)
        conn.endheaders()
        block = os.urandom(MiB)
        for _ in range(4):
            conn.send(block)
        wait_for(lambda: files_in(state / "staging" / "staged" / PARTIAL_DIR), "the staging write starts")
        assert d.show(image_id)["status"] == "uploading"
        stop(d, signal.SIGKILL)
    finally:
        conn.close()
    d = daemon_factory("site", config)  # same state dir: a restart

    assert files_in(state / "staging" / "staged") == []
    shown = d.show(image_id)
    # Either way the image must be usable again: queued (stage again), never stuck.
    assert shown["status"] == "queued", shown
    data = os.urandom(MiB + 3)
    stage(d, image_id, data)
    start_import(d, image_id, {"method": {"name": "glance-direct"}})
    done = wait_task_done(d, image_id, set())
    assert done["status"] == "success", done["message"]
    assert download(d, image_id) == data


def test_copy_image_interrupted_keeps_the_original(daemon_factory: Callable[..., Daemon], config: Path) -> None:
    d = daemon_factory("site", config)
    state = d.state_dir
    data = os.urandom(MiB) * 96 + b"tail"
    digest = hashlib.sha512(data).hexdigest()
    image_id = create(d, "copy-me")
    upload(d, image_id, data)
    assert d.show(image_id)["stores"] == "local"

    start_import(d, image_id, {"method": {"name": "copy-image"}, "stores": ["fast"]})
    # Kill as soon as the copy shows up in the target store (in .partial/ or done).
    partial = state / "fast" / PARTIAL_DIR
    wait_for(lambda: (state / "fast" / image_id).exists() or any(partial.iterdir()), "the copy starts", interval=0.001)
    stop(d, signal.SIGKILL)
    d = daemon_factory("site", config)  # same state dir: a restart

    shown = d.show(image_id)
    assert shown["status"] == "active"
    assert "local" in shown["stores"].split(",")
    assert shown["os_hash_value"] == digest and shown["size"] == len(data)
    assert "os_glance_importing_to_stores" not in shown
    assert files_in(partial) == []
    [task] = tasks_of(d, image_id)
    if "fast" in shown["stores"].split(","):  # the copy had completed just before the kill
        assert (state / "fast" / image_id).read_bytes() == data
    else:
        assert task["status"] == "failure" and INTERRUPTED in task["message"], task
        assert not (state / "fast" / image_id).exists()
    assert (state / "images" / image_id).read_bytes() == data
    assert hashlib.sha512(download(d, image_id)).hexdigest() == digest

    if "fast" not in shown["stores"].split(","):
        start_import(d, image_id, {"method": {"name": "copy-image"}, "stores": ["fast"]})
        done = wait_task_done(d, image_id, {task["id"]})
        assert done["status"] == "success", done["message"]
    shown = d.show(image_id)
    assert shown["stores"] == "local,fast"
    assert (state / "fast" / image_id).read_bytes() == data


def test_killed_between_stores_with_all_must_succeed_reverts(
    daemon_factory: Callable[..., Daemon], config: Path
) -> None:
    """all_stores_must_succeed: the image becomes active only once every store has its copy.
    Killed after the first store was written but before the second was: the next start must
    revert (queued, no copies), not turn a half-imported image active."""
    d = daemon_factory("site", config)
    state = d.state_dir
    data = os.urandom(MiB) * 128
    image_id = create(d, "all-or-nothing")
    stage(d, image_id, data)
    start_import(
        d, image_id, {"method": {"name": "glance-direct"}, "stores": ["local", "fast"], "all_stores_must_succeed": True}
    )

    def first_store_done() -> dict[str, Any] | None:
        shown = d.show(image_id)
        return (
            shown
            if (
                shown.get("stores") == "local"
                and shown["status"] == "importing"
                and shown.get("os_glance_importing_to_stores") == "fast"
            )
            else None
        )

    wait_for(first_store_done, "the first store holds its copy, the second is being written", interval=0.002)
    stop(d, signal.SIGKILL)
    d = daemon_factory("site", config)  # same state dir: a restart

    shown = d.show(image_id)
    assert shown["status"] == "queued", shown
    assert "stores" not in shown and shown["checksum"] is None
    assert "os_glance_importing_to_stores" not in shown
    [task] = tasks_of(d, image_id)
    assert task["status"] == "failure" and INTERRUPTED in task["message"]
    assert store_leftovers(state, image_id) == {}
    assert files_in(state / "staging") == []
