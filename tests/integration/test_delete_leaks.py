"""Deleting an image leaves no byte of it behind (issue 12): staged data, store files and
partial writes, import scratch space, pulls and cache files all go, running imports and uploads
stop, and the start-up sweep removes what a crash left. Real daemon processes; the state
directory is walked for any file named after the image or holding its bytes."""

from __future__ import annotations

import http.client
import os
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from appliance.stores.filesystem import PARTIAL_DIR, PULLS_DIR
from tests.conftest import Daemon
from tests.integration.conftest import Source
from tests.integration.test_import_recovery import MiB, call, create, files_in, stage, start_import, tasks_of
from tests.waiting import wait_for


def leftovers(state: Path, image_id: str, needles: list[bytes]) -> list[str]:
    """Files under the state dir named after the image, or holding one of `needles` (pieces
    of its data). The catalog and logs only ever hold the id, never the bytes."""
    found = []
    for path in state.rglob("*"):
        if not path.is_file() or path.suffix in (".log",) or path.name.startswith("catalog.sqlite"):
            continue
        if image_id in path.name:
            found.append(str(path.relative_to(state)))
            continue
        content = path.read_bytes()
        if any(n in content for n in needles):
            found.append(str(path.relative_to(state)) + " (holds its bytes)")
    return found


def task_by_id(d: Daemon, task_id: str) -> dict[str, Any]:
    status, task = call(d, "GET", "/v2/tasks/%s" % task_id)
    assert status == 200, task
    return task


def delete(d: Daemon, image_id: str) -> None:
    status, body = call(d, "DELETE", "/v2/images/%s" % image_id)
    assert status == 204, body


def no_traceback(d: Daemon) -> None:
    text = d.log.read_text(errors="replace")
    assert "Traceback" not in text and "never retrieved" not in text, text[-4000:]


def test_delete_after_stage_removes_the_staged_data_at_once(
    daemon_factory: Callable[..., Daemon], config: Path
) -> None:
    d = daemon_factory("site", config)
    data = os.urandom(2 * MiB + 11)
    image_id = create(d, "staged")
    stage(d, image_id, data)
    assert (d.state_dir / "staging" / "staged" / image_id).exists()
    delete(d, image_id)
    assert leftovers(d.state_dir, image_id, [data[:4096], data[-4096:]]) == []
    no_traceback(d)


def test_delete_during_a_web_download_import_stops_it_and_leaves_nothing(
    daemon_factory: Callable[..., Daemon], config: Path, source: Source
) -> None:
    d = daemon_factory("site", config)
    for round_ in range(3):  # the race, repeated: the delete lands at a different point each time
        image_id = create(d, "slow-%d" % round_)
        start_import(
            d,
            image_id,
            {
                "method": {"name": "web-download", "uri": source.url("slow/%d" % (64 * MiB))},
                "stores": ["local", "fast"],
            },
        )
        task = wait_for(
            lambda image_id=image_id: next((t for t in tasks_of(d, image_id) if (t["bytes_done"] or 0) > 0), None),
            "the download makes progress",
        )
        time.sleep(random.uniform(0, 0.3))
        delete(d, image_id)
        # The import stopped with the delete: the task says why, nothing of the image is left.
        ended = task_by_id(d, task["id"])
        assert ended["status"] == "failure" and "deleted" in ended["message"], ended
        assert files_in(d.state_dir / "staging" / "work") == []
        assert leftovers(d.state_dir, image_id, [source.slow_block[:4096]]) == []
    no_traceback(d)


def test_delete_racing_a_glance_direct_import_leaves_nothing(
    daemon_factory: Callable[..., Daemon], config: Path
) -> None:
    d = daemon_factory("site", config)
    for round_ in range(5):
        data = os.urandom(24 * MiB)
        image_id = create(d, "direct-%d" % round_)
        stage(d, image_id, data)
        start_import(d, image_id, {"method": {"name": "glance-direct"}, "stores": ["local", "fast"]})
        [task] = tasks_of(d, image_id)
        time.sleep(random.uniform(0, 0.2))  # before, during or after the store writes
        delete(d, image_id)
        ended = wait_for(
            lambda task=task: (t := task_by_id(d, task["id"]))["status"] != "processing" and t, "the task ends"
        )
        assert ended["status"] == "success" or "deleted" in ended["message"], ended
        assert leftovers(d.state_dir, image_id, [data[:4096], data[-4096:]]) == []
    no_traceback(d)


def _slow_put(d: Daemon, path: str, total: int) -> http.client.HTTPConnection:
    parts = urlsplit(d.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("PUT", path)
    for k, v in {
        "X-Auth-Token": d.token,
        "Content-Type": "application/octet-stream",
        "Content-Length": str(total),
        "Accept": "application/json",
    }.items():
        conn.putheader(k, v)
    conn.endheaders()
    return conn


def test_delete_during_an_upload_or_a_stage_stops_it_and_leaves_nothing(
    daemon_factory: Callable[..., Daemon], config: Path
) -> None:
    d = daemon_factory("site", config)
    block = os.urandom(MiB)
    for route, partial_dir in (
        ("file", d.state_dir / "images" / PARTIAL_DIR),
        ("stage", d.state_dir / "staging" / "staged" / PARTIAL_DIR),
    ):
        image_id = create(d, "uploading-" + route)
        conn = _slow_put(d, "/v2/images/%s/%s" % (image_id, route), 32 * MiB)
        try:
            for _ in range(8):
                conn.send(block)
            wait_for(lambda partial_dir=partial_dir: files_in(partial_dir), "the write starts")
            delete(d, image_id)
            try:  # the upload is refused at its next chunk (or its connection dropped)
                for _ in range(24):
                    conn.send(block)
                resp = conn.getresponse()
                answer = resp.read()
                assert resp.status == 409 and b"was deleted during the" in answer, (resp.status, answer)
            except (BrokenPipeError, ConnectionResetError):
                pass
        finally:
            conn.close()
        wait_for(lambda partial_dir=partial_dir: not files_in(partial_dir), "the partial write is gone")
        assert leftovers(d.state_dir, image_id, [block[:4096]]) == []
    no_traceback(d)


def test_the_start_up_sweep_removes_what_a_crash_left(daemon_factory: Callable[..., Daemon], config: Path) -> None:
    d = daemon_factory("site", config)
    state = d.state_dir
    kept_data, gone_data = os.urandom(MiB), os.urandom(MiB)
    kept = create(d, "kept")
    stage(d, kept, kept_data)
    gone = create(d, "gone")
    stage(d, gone, gone_data)
    d.stop(signal.SIGKILL)
    # A crash between the catalog's delete and the file removals, and files of images the
    # catalog never had: a pull, a cache fill and an invalid cache file.
    with sqlite3.connect(state / "catalog.sqlite") as db:
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("DELETE FROM images WHERE id = ?", [gone])
    stray = str(uuid.uuid4())
    planted = [
        state / "images" / PULLS_DIR / stray,
        state / "cache" / "partial" / stray,
        state / "cache" / "invalid" / stray,
        state / "staging" / "staged" / stray,
    ]
    for path in planted:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gone_data)
    pull_of_kept = state / "images" / PULLS_DIR / kept
    pull_of_kept.write_bytes(b"resumes")

    d = daemon_factory("site", config)  # same state dir: a restart
    assert leftovers(state, gone, [gone_data[:4096]]) == []
    assert [p for p in planted if p.exists()] == []
    assert (state / "staging" / "staged" / kept).read_bytes() == kept_data  # a live image keeps its data
    assert pull_of_kept.exists()  # and its pull, which resumes
    no_traceback(d)
