"""The inbox: in-process rounds (`tick`) with an injected clock on real services, and real
daemons watching a real directory (a file written slowly in pieces; SIGKILL mid-import)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import signal
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.bundles.inbox import DONE, FAILED, PROCESSING, Inbox
from appliance.config import Config
from appliance.services import Services, open_services
from tests.bundlekit import record, write_bundle
from tests.conftest import Daemon, write_toml
from tests.ondisk import append
from tests.waiting import wait_for

MiB = 1 << 20
SETTLE = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def services(make_config: Callable[..., Config]) -> AsyncIterator[Services]:
    async with open_services(make_config(**{"import": {"plugins": ["image_decompression"]}})) as s:
        yield s


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbox(services: Services, tmp_path: Path, clock: Clock) -> Inbox:
    box = Inbox(
        tmp_path / "inbox",
        store=None,
        settle_seconds=SETTLE,
        bundles=services.bundles,
        images=services.images,
        imports=services.imports,
        clock=clock,
    )
    box.prepare()
    return box


def sidecar(path: Path, **body: Any) -> None:
    path.with_name(path.name + ".json").write_text(
        json.dumps({"disk_format": "raw", "container_format": "bare", **body})
    )


async def settle(inbox: Inbox, clock: Clock) -> int:
    """Two rounds SETTLE seconds apart: what was complete is taken."""
    await inbox.tick()
    clock.now += SETTLE
    return await inbox.tick()


async def images(services: Services) -> list[Any]:
    return [
        await services.catalog.get_image(i)
        for s in ("active", "queued", "saving", "importing", "uploading")
        for i in await services.catalog.images_in_status(s)
    ]


async def test_file_is_taken_only_once_unchanged_for_settle_seconds(
    inbox: Inbox, clock: Clock, services: Services
) -> None:
    data = os.urandom(MiB)
    path = inbox.dir / "disk.raw"
    sidecar(path, name="disk")
    path.write_bytes(data[: MiB // 2])
    assert await inbox.tick() == 0
    clock.now += SETTLE - 1
    assert await inbox.tick() == 0
    await asyncio.to_thread(append, path, data[MiB // 2 :])  # the copy goes on: the wait starts again
    clock.now += 2
    assert await inbox.tick() == 0
    clock.now += SETTLE - 1
    assert await inbox.tick() == 0
    clock.now += 1
    assert await inbox.tick() == 1
    assert sorted(p.name for p in (inbox.dir / DONE).iterdir()) == ["disk.raw", "disk.raw.json"]
    [image] = await images(services)
    assert image.status == "active" and image.name == "disk" and image.checksum == hashlib.md5(data).hexdigest()
    clock.now += 100
    assert await inbox.tick() == 0


async def test_hidden_and_partial_names_are_never_taken(inbox: Inbox, clock: Clock) -> None:
    (inbox.dir / ".disk.raw").write_bytes(b"x")
    (inbox.dir / "disk.raw.partial").write_bytes(b"x")
    (inbox.dir / "lonely.json").write_text("{}")
    assert await settle(inbox, clock) == 0
    clock.now += 1000
    assert await inbox.tick() == 0
    assert sorted(p.name for p in inbox.dir.iterdir() if p.is_file()) == [
        ".disk.raw",
        "disk.raw.partial",
        "lonely.json",
    ]


async def test_plain_image_goes_through_the_import_plugins(inbox: Inbox, clock: Clock, services: Services) -> None:
    data = os.urandom(MiB) + bytes(MiB)
    path = inbox.dir / "disk.raw.gz"
    path.write_bytes(gzip.compress(data, 1))
    sidecar(path, name="cirros", properties={"os_distro": "cirros"}, tags=["boot"], visibility="public", min_disk=1)
    assert await settle(inbox, clock) == 1
    [image] = await images(services)
    assert (image.status, image.name, image.visibility, image.min_disk, image.tags) == (
        "active",
        "cirros",
        "public",
        1,
        ("boot",),
    )
    assert image.properties["os_distro"] == "cirros"
    assert image.size == len(data) and image.os_hash_value == hashlib.sha512(data).hexdigest()  # decompressed


@pytest.mark.parametrize(
    "content, side, reason",
    [
        (b"not an image", None, "not a bundle"),
        (os.urandom(4096), {"disk_format": "qcow2", "container_format": "bare"}, "qcow2"),
        (os.urandom(4096), {"disk_format": "raw"}, "container_format"),
        (os.urandom(4096), {"disk_format": "raw", "container_format": "bare", "colour": "red"}, "unknown key"),
        (os.urandom(4096), {"disk_format": "nope", "container_format": "bare"}, "nope"),
    ],
)
async def test_failed_files_say_why_and_leave_no_image(
    inbox: Inbox, clock: Clock, services: Services, content: bytes, side: dict[str, Any] | None, reason: str
) -> None:
    path = inbox.dir / "thing.img"
    path.write_bytes(content)
    if side is not None:
        path.with_name("thing.img.json").write_text(json.dumps(side))
    assert await settle(inbox, clock) == 1
    failed = inbox.dir / FAILED
    assert (failed / "thing.img").read_bytes() == content
    assert reason in (failed / "thing.img.error").read_text()
    assert (failed / "thing.img.json").exists() == (side is not None)
    assert await images(services) == []
    assert not any((inbox.dir / PROCESSING).iterdir())


async def test_bundles_and_their_failures(inbox: Inbox, clock: Clock, services: Services, tmp_path: Path) -> None:
    datas = [os.urandom(MiB), os.urandom(MiB)]
    recs = [(record(d, name="b%d" % i), d) for i, d in enumerate(datas)]
    await write_bundle(inbox.dir / "good.bundle", recs)
    raw = bytearray(
        (
            await write_bundle(
                tmp_path / "bad",
                [(record(d, name="c%d" % i), d) for i, d in enumerate([os.urandom(MiB), os.urandom(MiB)])],
            )
        ).read_bytes()
    )
    raw[len(raw) // 4] ^= 1  # inside the first image of the second bundle
    (inbox.dir / "bad.bundle").write_bytes(bytes(raw))
    assert await settle(inbox, clock) == 2
    assert (inbox.dir / DONE / "good.bundle").exists()
    error = (inbox.dir / FAILED / "bad.bundle.error").read_text()
    assert "failed" in error and "1 imported" in error
    assert sorted(i.name for i in await images(services)) == ["b0", "b1", "c1"]
    # The same bundle again: nothing to do, and the name does not clash in done/.
    await write_bundle(inbox.dir / "good.bundle", recs)
    assert await settle(inbox, clock) == 1
    assert sorted(p.name for p in (inbox.dir / DONE).iterdir()) == ["good.bundle", "good.bundle.1"]


async def test_claimed_files_are_finished_after_a_restart(inbox: Inbox, clock: Clock, services: Services) -> None:
    # A crash after the import but before the move: the image is there; it is not imported twice.
    data = os.urandom(MiB)
    path = inbox.dir / "disk.raw"
    path.write_bytes(data)
    sidecar(path)
    assert await settle(inbox, clock) == 1
    os.replace(inbox.dir / DONE / "disk.raw", inbox.dir / PROCESSING / "disk.raw")
    os.replace(inbox.dir / DONE / "disk.raw.json", inbox.dir / PROCESSING / "disk.raw.json")
    assert await inbox.tick() == 1  # at once: claimed files do not wait
    assert len(await images(services)) == 1
    assert (inbox.dir / DONE / "disk.raw").exists() and not any((inbox.dir / PROCESSING).iterdir())


async def test_orphaned_sidecar_in_processing_is_moved_aside(inbox: Inbox) -> None:
    (inbox.dir / PROCESSING / "gone.raw.json").write_text("{}")
    inbox.prepare()
    assert "without its image" in (inbox.dir / FAILED / "gone.raw.json.error").read_text()


async def test_run_takes_a_round_per_change_set(services: Services, tmp_path: Path, clock: Clock) -> None:
    seen: list[dict[str, Any]] = []

    async def watch(path: Path, **options: Any) -> AsyncIterator[set[Any]]:
        seen.append({"path": path, **options})
        (path / "disk.raw").write_bytes(os.urandom(4096))
        sidecar(path / "disk.raw")
        yield set()  # the file is new: its wait starts
        clock.now += SETTLE
        yield set()  # unchanged since: taken

    box = Inbox(
        tmp_path / "box",
        store=None,
        settle_seconds=SETTLE,
        bundles=services.bundles,
        images=services.images,
        imports=services.imports,
        clock=clock,
        watch=watch,
    )
    await box.run()
    assert (tmp_path / "box" / DONE / "disk.raw").exists()
    assert seen == [
        {"path": tmp_path / "box", "recursive": False, "yield_on_timeout": True, "rust_timeout": 1000, "debounce": 1000}
    ]


# -- real daemons ---------------------------------------------------------------------------


def api(daemon: Daemon, path: str) -> Any:
    req = urllib.request.Request(
        daemon.url + path, headers={"X-Auth-Token": daemon.token, "Accept": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return (
            json.loads(resp.read())
            if resp.headers.get("Content-Type", "").startswith("application/json")
            else resp.read()
        )


def all_images(daemon: Daemon) -> list[dict[str, Any]]:
    return api(daemon, "/v2/images?limit=1000")["images"]


@pytest.fixture
def inbox_config(tmp_path: Path) -> Path:
    return write_toml(tmp_path / "site.toml", {"inbox": {"dir": "inbox", "settle_seconds": 1}})


def test_file_written_slowly_is_imported_once_after_it_is_complete(
    daemon_factory: Callable[..., Daemon], inbox_config: Path
) -> None:
    daemon = daemon_factory("site", inbox_config)
    box = daemon.state_dir / "inbox"
    wait_for(lambda: (box / DONE).is_dir(), "the inbox", timeout=60)
    data = os.urandom(6 * MiB)
    sidecar(box / "slow.raw", name="slow")
    piece = len(data) // 12
    with open(box / "slow.raw", "wb") as fh:
        for i in range(0, len(data), piece):
            fh.write(data[i : i + piece])
            fh.flush()
            time.sleep(0.4)  # shorter than settle_seconds: the file is still being written
            assert (box / "slow.raw").exists() and all_images(daemon) == []
    wait_for(lambda: (box / DONE / "slow.raw").exists(), "the import", timeout=60)
    time.sleep(2.5)  # a few more rounds: nothing happens twice
    [image] = all_images(daemon)
    assert image["name"] == "slow" and image["status"] == "active"
    assert api(daemon, "/v2/images/%s/file" % image["id"]) == data
    assert sorted(p.name for p in box.iterdir()) == [DONE, FAILED, PROCESSING]
    assert not any((box / FAILED).iterdir())


@pytest.mark.parametrize("kind", ["image", "bundle"])
def test_daemon_killed_during_an_inbox_import_recovers(
    daemon_factory: Callable[..., Daemon], inbox_config: Path, tmp_path: Path, kind: str
) -> None:
    daemon = daemon_factory("site", inbox_config)
    box = daemon.state_dir / "inbox"
    wait_for(lambda: (box / DONE).is_dir(), "the inbox", timeout=60)
    datas = [os.urandom(96 * MiB), os.urandom(96 * MiB)]
    name = "big.raw" if kind == "image" else "big.bundle"
    staging = tmp_path / (".writing-" + name)
    if kind == "image":
        staging.write_bytes(datas[0])
        sidecar(box / name, name="big")
        expected = {"big": datas[0]}
    else:
        recs = [(record(d, name="big%d" % i), d) for i, d in enumerate(datas)]
        asyncio.run(write_bundle(staging, recs))
        expected = {"big0": datas[0], "big1": datas[1]}
    os.replace(staging, box / name)  # rename into place: complete at once

    wait_for(lambda: (box / PROCESSING / name).exists(), "the claim", timeout=60)
    wait_for(
        lambda: any(i["status"] in ("uploading", "importing", "saving") for i in all_images(daemon)),
        "the import to run",
        timeout=60,
    )
    daemon.stop(signal.SIGKILL)
    assert (box / PROCESSING / name).exists()

    daemon = daemon_factory("site", inbox_config)
    wait_for(lambda: (box / DONE / name).exists(), "the import after the restart", timeout=60)
    found = {i["name"]: i for i in all_images(daemon)}
    assert sorted(found) == sorted(expected)  # once each
    for image_name, data in expected.items():
        image = found[image_name]
        assert image["status"] == "active" and image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert not any((box / PROCESSING).iterdir()) and not any((box / FAILED).iterdir())
    assert not any((daemon.state_dir / "staging" / "staged").glob("*-*"))
    images_dir = daemon.state_dir / "images"
    assert sorted(p.name for p in images_dir.iterdir() if p.is_file()) == sorted(i["id"] for i in found.values())
