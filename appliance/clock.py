"""Time, in one place: the Clock that services and loops take (tests pass their own instead of
waiting out real intervals), and the one timestamp shape the API uses (Glance's
`2026-01-01T00:00:00Z`: UTC, whole seconds)."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Protocol

TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (for records and timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


def timestamp(epoch: float | None = None) -> str:
    """`epoch` (default: now) in Glance's shape."""
    return time.strftime(TIMESTAMP_FORMAT, time.gmtime(epoch))


def parse_timestamp(text: str) -> datetime.datetime:
    """An ISO 8601 time (`Z` or an offset; none means UTC) as an aware datetime (its offset
    kept: converting year 1 at +01:00 to UTC would overflow); ValueError if it is not one."""
    when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)
