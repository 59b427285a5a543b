"""StageTimer: where an import's time went, reported in its task's result (`stage_seconds`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StageTimer:
    def __init__(self) -> None:
        self._started = time.monotonic()
        self._seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started)

    def add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def report(self) -> dict[str, float]:
        """Each stage's wall-clock seconds in the order they ran, and the whole import's
        (`total`); stages that overlap (hashing beside conversion) each count in full."""
        seconds = {**self._seconds, "total": time.monotonic() - self._started}
        return {name: round(value, 3) for name, value in seconds.items()}
