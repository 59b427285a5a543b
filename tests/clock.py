"""A Clock (appliance.clock) that moves only when a test moves it: intervals pass at once instead
of being waited out."""

from __future__ import annotations

import asyncio
import time

from appliance.clock import parse_timestamp


class ManualClock:
    def __init__(self, start: float | str | None = None) -> None:
        """start: seconds since the epoch, or a timestamp (`2024-05-01T12:00:00Z`); default now."""
        if isinstance(start, str):
            start = parse_timestamp(start).timestamp()
        self.wall = time.time() if start is None else start
        self.elapsed = 0.0
        self.sleeps: list[float] = []  # every sleep asked for, in order

    def now(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.elapsed

    async def sleep(self, seconds: float) -> None:
        """Pass `seconds` at once; other tasks still get their turn, as after a real sleep."""
        self.sleeps.append(seconds)
        self.advance(seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.elapsed += seconds
