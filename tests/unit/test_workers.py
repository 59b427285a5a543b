"""Worker lanes are lent again instead of started per transfer, keep their order and their
priority; qemu-img's exits are learnt without a thread per subprocess."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest

from appliance import workers
from appliance.workers import FOREGROUND_NICE, WORKER_NICE, LanePool


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_a_lane_given_back_is_lent_again_with_its_thread_and_priority() -> None:
    pool = LanePool(kept=2)
    first = pool.take(background=True)
    thread, nice = first.submit(threading.get_ident).result(), first.submit(_nice).result()
    first.shutdown(wait=False)
    again = pool.take(background=True)
    assert again.submit(threading.get_ident).result() == thread
    assert nice == max(WORKER_NICE, os.getpriority(os.PRIO_PROCESS, 0))
    # the other priority has lanes of its own
    upload = pool.take(background=False)
    assert upload.submit(threading.get_ident).result() != thread
    assert upload.submit(_nice).result() == max(FOREGROUND_NICE, os.getpriority(os.PRIO_PROCESS, 0))
    again.shutdown()
    upload.shutdown()


def test_a_lane_runs_what_it_is_given_in_order() -> None:
    pool = LanePool()
    lane = pool.take(background=True)
    seen: list[int] = []
    futures = [lane.submit(lambda i=i: (time.sleep(0.001 * (5 - i % 5)), seen.append(i))) for i in range(20)]
    for f in futures:
        f.result()
    assert seen == list(range(20))
    lane.shutdown()


def test_lanes_past_the_kept_number_really_stop() -> None:
    pool = LanePool(kept=1)
    lanes = [pool.take(background=True) for _ in range(3)]
    threads = [lane.submit(threading.current_thread).result() for lane in lanes]
    for lane in lanes:
        lane.shutdown(wait=True)
    alive = [t for t in threads if t.is_alive()]
    assert len(alive) == 1  # the one kept, idle, for the next transfer
    assert pool.take(background=True).submit(threading.current_thread).result() is alive[0]


def test_a_lane_shut_down_twice_is_given_back_once() -> None:
    """An abort then a close of the same transfer must not lend its lane to two others."""
    pool = LanePool()
    first = pool.take(background=True)
    first.submit(int).result()
    first.shutdown(wait=False)
    first.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        first.submit(int)
    a, b = pool.take(background=True), pool.take(background=True)
    assert a.submit(threading.get_ident).result() != b.submit(threading.get_ident).result()
    a.shutdown()
    b.shutdown()


def test_subprocess_exits_are_seen_without_a_thread_per_child() -> None:
    async def run() -> tuple[list[int], list[str]]:
        loop = asyncio.get_running_loop()
        assert workers.watch_children_by_pidfd(loop)
        procs = [await asyncio.create_subprocess_exec("sh", "-c", "sleep 0.3; exit %d" % i) for i in range(5)]
        # the default watcher runs one thread per child, named "...waitpid-N"
        watching = [t.name for t in threading.enumerate() if "waitpid" in t.name]
        codes = [await p.wait() for p in procs]
        return codes, watching

    try:
        codes, watching = asyncio.run(run())
    finally:
        asyncio.set_child_watcher(None)  # type: ignore[arg-type]
    assert codes == [0, 1, 2, 3, 4]
    assert watching == []
