"""Transfer rates and ETAs of running imports, from successive `bytes_done` samples.

The daemon reports how far each task got, not how fast: the rate is the smoothed slope of
the samples the Queues screen sees. Time is passed in, so this is pure and testable."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    at: float
    done: int


class TransferRates:
    def __init__(self, smoothing: float = 0.5) -> None:
        self._smoothing = smoothing  # weight of the newest slope
        self._last: dict[str, Sample] = {}
        self._rate: dict[str, float] = {}

    def observe(self, task_id: str, done: int, at: float) -> float | None:
        """Record a sample; returns the smoothed rate in bytes/s (None until two samples)."""
        prev = self._last.get(task_id)
        self._last[task_id] = Sample(at, done)
        if prev is None or at <= prev.at:
            return self._rate.get(task_id)
        slope = max(0, done - prev.done) / (at - prev.at)
        old = self._rate.get(task_id)
        rate = slope if old is None else old + self._smoothing * (slope - old)
        self._rate[task_id] = rate
        return rate

    def rate(self, task_id: str) -> float | None:
        return self._rate.get(task_id)

    def keep_only(self, task_ids: set[str]) -> None:
        for gone in [t for t in self._last if t not in task_ids]:
            self._last.pop(gone, None)
            self._rate.pop(gone, None)


def eta_seconds(done: int | None, total: int | None, rate: float | None) -> float | None:
    if done is None or not total or not rate or rate <= 0:
        return None
    return max(0.0, (total - done) / rate)
