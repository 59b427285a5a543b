"""Handing the memory of finished transfers back to the system.

A transfer's socket reads (up to 1 MiB each) and the batches queued to its hash threads are
freed when it ends, but glibc keeps them: once a large mmapped buffer has been freed it raises
its mmap threshold, later buffers come from the heap, and free space in the middle of a heap
is never returned. That left 17-37 MiB per concurrent upload allocated after it ended.
malloc_trim(0) returns those pages. It runs on a worker thread a moment after transfers end,
once for all that ended meanwhile, so a transfer pays nothing per chunk (a fixed mmap
threshold, which keeps large buffers off the heap, cost a third of the upload throughput).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import threading
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)

# After the last transfer ends: the request's own last buffers are dropped by then.
TRIM_DELAY = 1.0
M_ARENA_MAX = -8  # glibc's mallopt() parameter


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    libc = _libc()
    # Not glibc (musl has no malloc_trim): nothing to give back this way.
    return getattr(libc, "malloc_trim", None) if libc is not None else None


def one_arena() -> None:
    """Let every thread allocate from glibc's main heap, which malloc_trim gives back whole.
    Each other arena keeps its top free chunk (up to the trim threshold, which grows with the
    largest buffer freed: 8 MiB after 4 MiB batches) and malloc_trim never returns it: two
    imports, whose worker threads had arenas of their own, left 16-22 MiB that way, and with
    one arena RSS went back to its idle figure. The threads that move bytes allocate little
    (hashing and writes allocate nothing), so they hardly contend for it. Call it before any
    thread starts: threads are spread over the arenas that exist."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is not None:
        mallopt(M_ARENA_MAX, 1)


def freeze_startup() -> None:
    """Keep what the daemon built at startup (modules, routes, policy rules, metrics) out of
    the cyclic garbage collector's scans. A full collection walks every tracked object on the
    thread that triggers it, mostly the event loop's: the daemon's modules alone are ~53,000
    objects, whose full collection took 0.2 s on a busy 2-core machine (36-68 ms at a daemon's
    startup), and every request waited as long. Frozen, a full collection walks only what was
    allocated since (0.01 ms for the modules). Call it once, when startup is done."""
    gc.collect()  # startup garbage goes now, not into the permanent generation
    gc.freeze()


class MemoryTrimmer:
    """Coalesces "a transfer ended" into one malloc_trim(0) per TRIM_DELAY, off the loop."""

    def __init__(self, trim: Callable[[int], int] | None, delay: float = TRIM_DELAY) -> None:
        self._trim = trim
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.trims = 0

    def transfer_ended(self) -> None:
        if self._trim is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the event loop: the next transfer that ends on it trims
        if self._handle is not None and self._loop is loop:
            return  # one is already due, and will see this transfer's memory too
        self._loop = loop
        self._handle = loop.call_later(self._delay, self._start)

    def _start(self) -> None:
        self._handle = None
        assert self._loop is not None
        self._loop.run_in_executor(None, self._run)

    def _run(self) -> None:
        assert self._trim is not None
        self._trim(0)
        self.trims += 1


# malloc is one per process, and so is this.
TRIMMER = MemoryTrimmer(_malloc_trim())


class ByteBudget:
    """Bytes of transfer buffers in flight in the whole daemon (handed to worker threads and not
    yet hashed and written). `take(n)` waits on the event loop until n more fit; `give(n)`, from
    any thread, returns them as soon as a batch is done, whatever its transfer does meanwhile
    (a transfer whose client pauses must not hold others back). Waiters are served in order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]] = deque()

    async def take(self, n: int) -> int:
        """Returns what was taken (a batch bigger than the whole budget takes all of it)."""
        n = min(n, self.limit)
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._waiters and self.used + n <= self.limit:
                self.used += n
                return n
            entry = (loop, loop.create_future(), n)
            self._waiters.append(entry)
        try:
            await entry[1]
        except asyncio.CancelledError:
            with self._lock:
                granted = entry not in self._waiters
                if not granted:
                    self._waiters.remove(entry)
            if granted:
                self.give(n)
            raise
        return n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n
            while self._waiters and self.used + self._waiters[0][2] <= self.limit:
                loop, future, size = self._waiters.popleft()
                self.used += size
                loop.call_soon_threadsafe(_grant, future)


def _grant(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Transfer buffers in flight in the daemon, beside each transfer's own bound (digest.PIPELINE_HIGH
# batches): 20 concurrent uploads held 20 x 36 MiB queued for their hash threads.
TRANSFER_BUFFERS = ByteBudget(64 << 20)
