"""Worker threads and tools run at a lower CPU priority than the event loop, so hashing,
decompression and qemu-img never make API answers wait when the cores are busy (Linux nice
values are per thread). Uncontended, they still get every idle cycle."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

from appliance.memory import TRIMMER

T = TypeVar("T")

WORKER_NICE = 5
# A client's own upload: its hashing threads yield to the event loop too, which must keep
# answering every other request while the cores are busy (at nice 0, during an upload on a
# loaded 2-core machine, the loop waited for a CPU 41-46% of the time, at nice 5 26-34%, and
# image-show's p50 went from 7-11 to 2-4 ms); just above imports, which nobody waits on byte by
# byte. Alone on the machine, they still get every idle cycle.
FOREGROUND_NICE = 4


def lower_priority(nice: int = WORKER_NICE) -> None:
    """ThreadPoolExecutor initializer: renice the calling worker thread."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        pass  # not permitted or not Linux: run at normal priority


class _Workers(ThreadPoolExecutor):
    """A transfer's (or an import stage's) threads: when they are shut down, the buffers they
    passed around are freed, and the memory goes back to the system (memory.TRIMMER) whichever
    path the bytes took."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        TRIMMER.transfer_ended()


def executor(workers: int, name: str, background: bool = True) -> ThreadPoolExecutor:
    nice = WORKER_NICE if background else FOREGROUND_NICE
    return _Workers(workers, thread_name_prefix=name, initializer=lower_priority, initargs=(nice,))


# Idle lanes kept per priority: two imports (spool, two hash threads each) and an upload (two).
LANES_KEPT = 8


class _Lane(_Workers):
    """One worker thread that runs what is submitted in order, and outlives its users: it is
    lent out (a _Loan) again and again by its LanePool."""

    def __init__(self, nice: int) -> None:
        super().__init__(1, thread_name_prefix="lane-nice%d" % nice, initializer=lower_priority, initargs=(nice,))
        self.nice = nice


class _Loan(Executor):
    """One transfer's use of a lane. Shutting it down hands the lane back, once: a user that
    shuts down twice (an abort, then a close) must not give back a lane lent to someone else
    meanwhile, and submits after that are refused as by a shut-down executor."""

    def __init__(self, pool: LanePool, lane: _Lane) -> None:
        self._pool = pool
        self._lane: _Lane | None = lane

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        lane = self._lane
        if lane is None:
            raise RuntimeError("cannot schedule new futures after shutdown")
        return lane.submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        lane, self._lane = self._lane, None
        if lane is None:
            return
        if cancel_futures or not self._pool.give(lane):
            lane.shutdown(wait, cancel_futures=cancel_futures)
        else:
            if wait:
                lane.submit(int).result()  # what this user queued is done
            TRIMMER.transfer_ended()


class LanePool:
    """Single-thread executors reused across transfers. A new executor starts its thread on
    the first submit, from the event loop, which waits until the thread runs: on 2 busy cores
    that held the loop for up to 12 ms, once per hash thread of every upload and import."""

    def __init__(self, kept: int = LANES_KEPT) -> None:
        self._kept = kept
        self._idle: dict[int, list[_Lane]] = {}
        self._lock = threading.Lock()

    def take(self, background: bool) -> Executor:
        nice = WORKER_NICE if background else FOREGROUND_NICE
        with self._lock:
            idle = self._idle.get(nice)
            lane = idle.pop() if idle else None
        return _Loan(self, lane or _Lane(nice))

    def give(self, lane: _Lane) -> bool:
        with self._lock:
            idle = self._idle.setdefault(lane.nice, [])
            if len(idle) >= self._kept:
                return False
            idle.append(lane)
            return True

    def warm(self, background: bool, count: int) -> None:
        """Start `count` lanes' threads now (at startup, off any request's path)."""
        loans = [self.take(background) for _ in range(count)]
        for loan in loans:
            loan.submit(int).result()
        for loan in loans:
            loan.shutdown(wait=False)


LANES = LanePool()


def lane(background: bool = True) -> Executor:
    """A worker thread of its own for one transfer's stage, in order; shut it down when done."""
    return LANES.take(background)


def nice_argv(argv: list[str]) -> list[str]:
    """Prefix an external command with `nice` (coreutils) at the workers' priority."""
    nice = shutil.which("nice")
    return [nice, "-n", str(WORKER_NICE), *argv] if nice else argv


def watch_children_by_pidfd(loop: asyncio.AbstractEventLoop) -> bool:
    """Learn of qemu-img's exits through a pidfd the loop polls, not through a thread per
    child. Python 3.11's default watcher starts a thread for every subprocess, and the loop
    waits until it has started: an import runs qemu-img once per range, and under two imports
    and an upload on 2 cores those starts held the loop for up to 12 ms each (3.12 and later
    use pidfds by themselves). False where the kernel has no pidfd_open (Linux < 5.3)."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    watcher = asyncio.PidfdChildWatcher()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        watcher.attach_loop(loop)
        asyncio.set_child_watcher(watcher)
    return True
