"""Integrity and store health: scrubber, mount requirement, a full filesystem."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ondisk import flip_bit


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """Mount small tmpfs filesystems (the tests run as root; a failure to mount fails the test)."""
    mounted: list[Path] = []

    def mount(name: str, size: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(path)], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_scrubber_quarantines_a_flipped_byte(open_api: Callable[..., Any]) -> None:
    api = await open_api()
    services = api.services
    good = await api.create(name="good")
    bad = await api.create(name="bad")
    assert (await api.upload(good["id"], os.urandom(300_000))).status == 204
    data = os.urandom(300_000)
    assert (await api.upload(bad["id"], data)).status == 204
    path = services.stores["local"].path / bad["id"]
    await asyncio.to_thread(flip_bit, path, 123_456)
    report = await services.scrubber.tick()
    assert report.checked == 2
    assert report.quarantined == [(bad["id"], "local")]
    assert not path.exists()
    assert any(p.name.startswith(bad["id"]) for p in (services.stores["local"].path / ".quarantine").iterdir())
    resp = await api.client.get("/v2/images/%s/file" % bad["id"], headers=api.headers())
    assert resp.status == 204  # never served again: Glance's answer for an image without data
    resp = await api.client.get("/v2/images/%s/locations" % bad["id"], headers=api.headers())
    assert await resp.json() == []
    shown = await (await api.client.get("/v2/images/%s" % bad["id"], headers=api.headers())).json()
    assert "stores" not in shown
    resp = await api.client.get("/v2/images/%s/file" % good["id"], headers=api.headers())
    assert resp.status == 200
    metrics = await (await api.client.get("/metrics")).text()
    assert "appliance_scrub_mismatches_total 1.0" in metrics
    # the next pass no longer looks at the quarantined copy
    assert (await services.scrubber.tick()).checked == 1


async def test_store_requiring_a_mount_is_read_only_until_mounted(open_api: Callable[..., Any], tmp_path: Path) -> None:
    mountpoint = tmp_path / "nfs"
    mountpoint.mkdir()
    api = await open_api(
        stores={"default": "local", "local": {"path": str(mountpoint), "require_mount": True, "min_free_bytes": 0}}
    )
    image = await api.create(name="waits-for-mount")
    resp = await api.upload(image["id"], b"x" * 1000)
    assert resp.status == 409
    assert "not a mount point" in (await resp.json())["message"]
    assert list(mountpoint.iterdir()) == []  # nothing written into the bare directory
    detail = await (await api.client.get("/v2/info/stores/detail", headers=api.headers())).json()
    assert detail["stores"][0]["read-only"] == "true"
    await asyncio.to_thread(
        subprocess.run, ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], check=True
    )
    try:
        resp = await api.upload(image["id"], b"x" * 1000)
        assert resp.status == 204, await resp.text()  # recovered by itself
        detail = await (await api.client.get("/v2/info/stores/detail", headers=api.headers())).json()
        assert "read-only" not in detail["stores"][0]
    finally:
        await asyncio.to_thread(subprocess.run, ["umount", "-l", str(mountpoint)], check=False)


async def test_full_filesystem_fails_the_write_cleanly(
    open_api: Callable[..., Any], tmpfs: Callable[[str, int], Path]
) -> None:
    small = tmpfs("small", 4 << 20)
    # No free-space floor: this is what a write that meets ENOSPC does (tests/integration/test_full_disk.py: the floor)
    api = await open_api(stores={"default": "local", "local": {"path": str(small), "min_free_bytes": 0}})
    kept = await api.create(name="kept")
    kept_data = os.urandom(1 << 20)
    assert (await api.upload(kept["id"], kept_data)).status == 204
    big = await api.create(name="too-big")
    resp = await api.upload(big["id"], os.urandom(6 << 20))
    assert resp.status == 507
    assert "full" in (await resp.json())["message"]
    shown = await (await api.client.get("/v2/images/%s" % big["id"], headers=api.headers())).json()
    assert shown["status"] == "queued"
    assert sorted(p.name for p in small.iterdir() if p.is_file()) == [kept["id"]]
    assert list((small / ".partial").iterdir()) == []
    resp = await api.client.get("/v2/images/%s/file" % kept["id"], headers=api.headers())
    assert await resp.read() == kept_data  # what was stored is untouched
    small_again = await api.create(name="fits")
    assert (await api.upload(small_again["id"], b"y" * 1000)).status == 204  # still serving
