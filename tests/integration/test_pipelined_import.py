"""The pipelined web-download against a real daemon, real qemu-img and a loopback source:
image_decompression decodes a GZIP download as it arrives, image_conversion converts straight
into the store's partial file while two threads hash it, the task reports the seconds per
stage. Every check stays (bomb limits with their messages), and a SIGKILL in the middle of
the conversion leaves nothing behind after the restart."""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.stores.filesystem import PARTIAL_DIR
from tests.conftest import Daemon, write_toml
from tests.integration.conftest import STORES, Source
from tests.integration.test_import_recovery import (
    INTERRUPTED,
    call,
    download,
    files_in,
    start_import,
    store_leftovers,
    tasks_of,
    wait_task_done,
)
from tests.waiting import wait_for

MiB = 1 << 20
QCOW2_MAGIC = b"QFI\xfb"


def site_config(tmp_path: Path, source: Source, **imports: Any) -> Path:
    return write_toml(
        tmp_path / "pipelined.toml",
        {
            "stores": STORES,
            "import": {
                "plugins": ["image_decompression", "image_conversion"],
                "uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]},
                **imports,
            },
        },
    )


def qcow2_gz(tmp_path: Path, virtual_mib: int, data_mib: int) -> tuple[bytes, dict[str, Any]]:
    """A gzip'd qcow2 holding `data_mib` MiB of random data spread over `virtual_mib` MiB,
    and what its raw conversion must hash to."""
    raw = tmp_path / "src.raw"
    with open(raw, "wb") as fh:
        fh.truncate(virtual_mib * MiB)
        stride = virtual_mib // data_mib
        for i in range(data_mib):
            fh.seek(i * stride * MiB)
            fh.write(os.urandom(MiB))
    md5, sha = hashlib.md5(), hashlib.sha512()
    with open(raw, "rb") as fh:
        while block := fh.read(4 * MiB):
            md5.update(block)
            sha.update(block)
    qcow = tmp_path / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True)
    data = gzip.compress(qcow.read_bytes(), compresslevel=1)
    raw.unlink()
    qcow.unlink()
    return data, {"size": virtual_mib * MiB, "checksum": md5.hexdigest(), "os_hash_value": sha.hexdigest()}


def create(d: Daemon, name: str) -> str:
    status, image = call(d, "POST", "/v2/images", {"name": name, "disk_format": "qcow2", "container_format": "bare"})
    assert status == 201, image
    return str(image["id"])


def qemu_img_commands() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"qemu-img"):
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


def web_download(d: Daemon, image_id: str, uri: str, stores: tuple[str, ...] = ("local",)) -> None:
    start_import(d, image_id, {"method": {"name": "web-download", "uri": uri}, "stores": list(stores)})


def assert_clean(state: Path, image_id: str) -> None:
    assert files_in(state / "staging" / "work") == []
    assert files_in(state / "staging" / "staged") == []
    assert files_in(state / "images" / PARTIAL_DIR) == []


def test_gzip_download_is_decoded_as_it_arrives_and_converted_into_the_store(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, source: Source
) -> None:
    data, expected = qcow2_gz(tmp_path, virtual_mib=64, data_mib=4)
    d = daemon_factory("site", site_config(tmp_path, source))
    image_id = create(d, "pipelined")
    source.add("disk.qcow2.gz", data)
    # The first store gets the conversion straight into its file; the second a copy of that.
    web_download(d, image_id, source.url("trickle/disk.qcow2.gz"), ("local", "fast"))  # ~1.3 MiB/s

    def halfway() -> dict[str, Any] | None:
        [task] = tasks_of(d, image_id)
        return task if 0 < (task["bytes_done"] or 0) < len(data) // 2 else None

    task = wait_for(halfway, "the download is under way", timeout=30)
    # What lands in the scratch file while the download still runs is the decoded qcow2,
    # never the archive: decompression overlaps the download.
    head = (d.state_dir / "staging" / "work" / task["id"] / "download").read_bytes()[:4]
    assert head == QCOW2_MAGIC, head

    done = wait_task_done(d, image_id, set(), timeout=120)
    assert done["status"] == "success", done["message"]
    stages = done["result"]["stage_seconds"]
    assert "image_decompression" not in stages, stages  # it ran during the download
    assert {"download", "image_conversion", "hash_after_conversion", "store:local", "store:fast", "total"} <= set(
        stages
    ), stages
    assert all(isinstance(v, float) and v >= 0 for v in stages.values()), stages
    shown = d.show(image_id)
    assert shown["status"] == "active" and shown["disk_format"] == "raw", shown
    assert set(shown["stores"].split(",")) == {"local", "fast"}, shown
    assert {k: shown[k] for k in expected} == expected
    assert hashlib.sha512(download(d, image_id)).hexdigest() == expected["os_hash_value"]
    for store in ("images", "fast"):
        assert hashlib.sha512((d.state_dir / store / image_id).read_bytes()).hexdigest() == expected["os_hash_value"]
    assert_clean(d.state_dir, image_id)


def test_sigkill_while_converting_into_the_store_is_recovered(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, source: Source
) -> None:
    data, expected = qcow2_gz(tmp_path, virtual_mib=1024, data_mib=48)
    config = site_config(tmp_path, source)
    d = daemon_factory("site", config)
    state = d.state_dir
    image_id = create(d, "killed")
    web_download(d, image_id, source.add("big.qcow2.gz", data))

    partial = state / "images" / PARTIAL_DIR

    def converting() -> str | None:
        """The store's partial file while a qemu-img process writes into it: the conversion
        goes straight into the store (no scratch copy)."""
        names = files_in(partial)
        if not names:
            return None
        return names[0] if any(str(partial / names[0]) in cmd for cmd in qemu_img_commands()) else None

    name = wait_for(converting, "qemu-img converts into the store's partial file", timeout=60, interval=0.005)
    assert name.startswith(image_id)
    [task] = tasks_of(d, image_id)
    assert task["status"] == "processing"
    assert d.stop(signal.SIGKILL, timeout=15) == -signal.SIGKILL

    d = daemon_factory("site", config)  # a restart on the same state
    shown = d.show(image_id)
    assert shown["status"] == "queued" and shown["checksum"] is None, shown
    [failed] = tasks_of(d, image_id)
    assert failed["status"] == "failure" and INTERRUPTED in failed["message"], failed
    assert_clean(state, image_id)
    assert store_leftovers(state, image_id) == {}

    web_download(d, image_id, source.url("fast/big.qcow2.gz"))
    done = wait_task_done(d, image_id, {task["id"]}, timeout=180)
    assert done["status"] == "success", done["message"]
    shown = d.show(image_id)
    assert {k: shown[k] for k in expected} == expected
    assert_clean(state, image_id)


def _zeros_gz(size: int) -> bytes:
    return gzip.compress(bytes(size), compresslevel=9)


@pytest.mark.parametrize(
    ("route", "body", "limits", "reason"),
    [
        ("fast", lambda: _zeros_gz(64 * MiB), {"max_expansion_ratio": 100}, "expands more than 100 times"),
        ("chunked", lambda: _zeros_gz(64 * MiB), {"max_expansion_ratio": 100}, "expands more than 100 times"),
        (
            "fast",
            lambda: gzip.compress(os.urandom(16 * MiB), compresslevel=1),
            {"max_decompressed_bytes": 8 * MiB},
            "decompressed data exceeds the limit of %d bytes" % (8 * MiB),
        ),
        ("fast", lambda: gzip.compress(b"x" * MiB) + gzip.compress(b"y"), {}, "more than one member"),
        ("fast", lambda: gzip.compress(os.urandom(MiB))[:-9], {}, "truncated"),
        ("drop", lambda: gzip.compress(os.urandom(4 * MiB), compresslevel=1), {}, "web-download of .* failed"),
    ],
    ids=["ratio", "ratio-no-length", "size", "two-members", "truncated", "dropped"],
)
def test_refused_downloads_fail_with_the_reason_and_leave_nothing(
    daemon_factory: Callable[..., Daemon],
    tmp_path: Path,
    source: Source,
    route: str,
    body: Callable[[], bytes],
    limits: dict[str, int],
    reason: str,
) -> None:
    d = daemon_factory("site", site_config(tmp_path, source, **limits))
    image_id = create(d, "refused")
    source.add("bad.gz", body())
    started = time.monotonic()
    web_download(d, image_id, source.url("%s/bad.gz" % route))
    done = wait_task_done(d, image_id, set(), timeout=60)
    assert done["status"] == "failure"
    assert "Internal" not in done["message"]
    assert re.search(reason, done["message"]), done["message"]
    assert time.monotonic() - started < 60
    assert d.show(image_id)["status"] == "queued"
    assert_clean(d.state_dir, image_id)


def test_converted_output_is_inspected_in_the_pipelined_path(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, source: Source
) -> None:
    """A qcow2 whose guest disk holds another qcow2: converted to raw, the output is that
    inner qcow2, which the inspection of the output (done in the hashing pass) refuses."""
    inner = tmp_path / "inner.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(inner), "64M"], check=True)
    outer = tmp_path / "outer.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(inner), str(outer)], check=True)
    d = daemon_factory("site", site_config(tmp_path, source))
    image_id = create(d, "nested")
    web_download(d, image_id, source.add("nested.qcow2.gz", gzip.compress(outer.read_bytes())))
    done = wait_task_done(d, image_id, set(), timeout=60)
    assert done["status"] == "failure"
    assert done["message"].startswith("converted image failed inspection: "), done["message"]
    assert "qcow2" in done["message"], done["message"]
    assert d.show(image_id)["status"] == "queued"
    assert_clean(d.state_dir, image_id)
    assert store_leftovers(d.state_dir, image_id) == {}
