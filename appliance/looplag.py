"""Event-loop lag: how late the loop runs a timer that is due. Anything that holds the loop
(a long callback, a blocking call, a big JSON encoding) delays every request by as much, so
this is the figure that tail latency follows. A small task sleeps SAMPLE_INTERVAL and
measures how late it woke up; the cost is one timer per interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge, Histogram

log = logging.getLogger(__name__)

# Short enough that a 20 ms stall is seen most of the time, long enough to cost nothing.
SAMPLE_INTERVAL = 0.05
# The window of the "max" figure: the TUI refreshes every few seconds and a scrape every 15-60 s.
WINDOW = 60.0
# One stall this long is worth a line in the log (asyncio's debug mode uses 100 ms).
WARN_LAG = 0.25
WARN_EVERY = 60.0  # at most one such line a minute: a starved machine would fill the log
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


@dataclass(frozen=True)
class LoopLag:
    latest: float  # seconds, the last sample
    max: float  # seconds, the largest sample of the last WINDOW seconds
    window: float


class LoopLagMonitor:
    """Samples the running loop's lag; `run()` is a background loop, `observe()` the unit."""

    def __init__(self, registry: CollectorRegistry, interval: float = SAMPLE_INTERVAL, window: float = WINDOW) -> None:
        self._interval = interval
        self._window = window
        self._latest = 0.0
        # Sliding-window maximum: (time, lag) pairs with decreasing lags, oldest first.
        self._peaks: deque[tuple[float, float]] = deque()
        self._gauge = Gauge(
            "appliance_event_loop_lag_seconds",
            "How late the event loop ran a due timer, last sample (every %g s)" % interval,
            registry=registry,
        )
        self._max = Gauge(
            "appliance_event_loop_lag_max_seconds",
            "Largest event loop lag over the last %g s" % window,
            registry=registry,
        )
        self._samples = Histogram(
            "appliance_event_loop_lag_sample_seconds",
            "Every event loop lag sample",
            buckets=LAG_BUCKETS,
            registry=registry,
        )

    def observe(self, now: float, lag: float) -> None:
        self._latest = lag
        peaks = self._peaks
        while peaks and peaks[-1][1] <= lag:
            peaks.pop()
        peaks.append((now, lag))
        while peaks[0][0] < now - self._window:
            peaks.popleft()
        self._gauge.set(lag)
        self._max.set(peaks[0][1])
        self._samples.observe(lag)

    def current(self) -> LoopLag:
        """The figures now (call on the loop: the window is on the loop's clock)."""
        since = asyncio.get_running_loop().time() - self._window
        recent = [lag for when, lag in self._peaks if when >= since]
        return LoopLag(latest=self._latest, max=max(recent, default=0.0), window=self._window)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        warned = -WARN_EVERY
        while True:
            due = loop.time() + self._interval
            await asyncio.sleep(self._interval)
            now = loop.time()
            lag = max(0.0, now - due)
            self.observe(now, lag)
            if lag >= WARN_LAG and now - warned >= WARN_EVERY:
                warned = now
                log.warning("event loop held for %.0f ms (requests waited as long)", lag * 1000)
