"""Memory given back after uploads: a real daemon's RSS after 20 concurrent 64 MiB uploads
returns close to its idle figure (it stayed ~250 MiB above it: 17-37 MiB per upload kept by
glibc's heap). The figures are printed; tests/bench/bench_memory.py is the same measurement."""

from __future__ import annotations

import asyncio

from appliance.memory import MemoryTrimmer
from tests.bench.bench_memory import measure
from tests.conftest import Daemon


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
