"""Memory given back after uploads: a real daemon's RSS after 20 concurrent 64 MiB uploads
returns close to its idle figure (it stayed ~250 MiB above it: 17-37 MiB per upload kept by
glibc's heap), and one large upload's peak stays bounded. The figures are printed;
tests/bench/bench_memory.py is the same measurement, tests/bench/bench_latency.py the bounds
under imports too. Also the daemon-wide budget of transfer buffers (memory.ByteBudget)."""

from __future__ import annotations

import asyncio

import pytest

from appliance.memory import ByteBudget, MemoryTrimmer
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
