"""Memory given back after uploads: a real daemon's RSS after 20 concurrent 64 MiB uploads
returns close to its idle figure (it stayed ~250 MiB above it: 17-37 MiB per upload kept by
glibc's heap), and one large upload's peak stays bounded. The figures are printed;
tests/bench/bench_memory.py is the same measurement, tests/bench/bench_latency.py the bounds
under imports too. Also the daemon-wide budget of transfer buffers (memory.ByteBudget)."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.memory import ByteBudget, MemoryTrimmer
from tests.bench.bench_memory import create_image, measure, rss_mib
from tests.conftest import Daemon, write_toml
from tests.integration.conftest import Source
from tests.waiting import wait_for


def post_json(daemon: Daemon, path: str, body: object) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=30)
    try:
        conn.request("POST", path, json.dumps(body), {"X-Auth-Token": daemon.token, "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        assert resp.status < 300, raw
        return json.loads(raw) if raw else None
    finally:
        conn.close()


def test_rss_after_20_concurrent_uploads_returns_near_idle(daemon: Daemon) -> None:
    memory = measure(daemon, uploads=20, size_mib=64, rounds=2)
    print("\n" + memory.report(20, 64))
    for after in memory.after:
        assert after < memory.idle + 40, memory.report(20, 64)


async def test_transfers_ending_together_trim_once() -> None:
    calls: list[int] = []
    trimmer = MemoryTrimmer(calls.append, delay=0.05)  # type: ignore[arg-type]
    for _ in range(20):
        trimmer.transfer_ended()
    await asyncio.sleep(0.3)
    assert calls == [0]
    trimmer.transfer_ended()
    await asyncio.sleep(0.3)
    assert calls == [0, 0]


def test_peak_rss_of_one_large_upload_stays_under_150_mib(daemon: Daemon) -> None:
    """Issue 19's bound: what one upload holds in flight (its socket reads, the batch being
    gathered, PIPELINE_HIGH batches queued to the hash threads) whatever its size."""
    memory = measure(daemon, uploads=1, size_mib=512, rounds=1)
    print("\n" + memory.report(1, 512))
    assert memory.peak < 150, memory.report(1, 512)
    assert memory.after[-1] < memory.idle + 10, memory.report(1, 512)


async def test_byte_budget_serves_waiters_in_order_and_gives_back_from_threads() -> None:
    budget = ByteBudget(10)
    assert await budget.take(6) == 6
    order: list[str] = []

    async def taker(name: str, n: int) -> None:
        await budget.take(n)
        order.append(name)

    big = asyncio.create_task(taker("big", 8))
    small = asyncio.create_task(taker("small", 1))  # fits now, but waits its turn behind "big"
    await asyncio.sleep(0.05)
    assert order == [] and budget.used == 6
    await asyncio.to_thread(budget.give, 6)  # a worker thread finishing a batch
    await asyncio.wait_for(asyncio.gather(big, small), 5)
    assert order == ["big", "small"] and budget.used == 9
    whole = asyncio.create_task(budget.take(100))  # bigger than the whole: waits for all of it
    await asyncio.sleep(0.05)
    assert not whole.done()
    budget.give(9)
    assert await asyncio.wait_for(whole, 5) == 10 and budget.used == 10
    budget.give(10)
    assert budget.used == 0


async def test_byte_budget_cancelled_waiter_takes_nothing() -> None:
    budget = ByteBudget(4)
    await budget.take(4)
    waiter = asyncio.create_task(budget.take(2))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    budget.give(4)
    assert budget.used == 0
    # Granted and then cancelled before it ran: what it was given comes back.
    await budget.take(4)
    late = asyncio.create_task(budget.take(3))
    await asyncio.sleep(0.05)
    budget.give(4)  # grants `late` (3 in use) ...
    late.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await late
    assert budget.used == 0


def test_rss_after_two_concurrent_web_downloads_returns_to_idle(
    daemon_factory: Callable[..., Daemon], source: Source, tmp_path: Path, qemu_img: str
) -> None:
    """The import's worker threads allocate too (spooling, decompressing, hashing): in arenas of
    their own, whose top glibc's malloc_trim never returns, they kept 16-22 MiB after two
    imports; with one arena (memory.one_arena) the daemon goes back to its idle figure."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(os.urandom(64 << 20))
    subprocess.run(
        [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(tmp_path / "disk.qcow2")], check=True
    )
    uri = source.add("disk.qcow2.gz", gzip.compress((tmp_path / "disk.qcow2").read_bytes(), compresslevel=1))
    config = write_toml(
        tmp_path / "site.toml",
        {
            "import": {
                "plugins": ["image_decompression", "image_conversion"],
                "uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [source.port]},
            }
        },
    )
    daemon = daemon_factory(config=config)
    warm = create_image(daemon, "warm-up")
    time.sleep(2)
    idle = rss_mib(daemon.proc.pid)
    for round_ in range(2):
        ids = [
            post_json(
                daemon,
                "/v2/images",
                {"name": "i%d-%d" % (round_, i), "disk_format": "qcow2", "container_format": "bare"},
            )["id"]
            for i in range(2)
        ]
        for image_id in ids:
            post_json(daemon, "/v2/images/%s/import" % image_id, {"method": {"name": "web-download", "uri": uri}})
        for image_id in ids:
            wait_for(lambda image_id=image_id: daemon.show(image_id)["status"] == "active", "import", timeout=300)
    time.sleep(3)  # the trim runs a moment after the last transfer
    after = rss_mib(daemon.proc.pid)
    print("\nRSS idle %.0f MiB, after 2 x 2 concurrent web-downloads (qcow2.gz, 64 MiB): %.0f MiB" % (idle, after))
    assert after < idle + 10, (idle, after)
    assert daemon.show(warm)["status"] == "queued"
