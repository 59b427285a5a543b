"""Polling for a condition in tests that drive real daemons (nothing to await directly)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], what: str, within: float = 30, interval: float = 0.1) -> T:
    """Await `check` every `interval` seconds until it returns something true (for up to
    `within` seconds), and return that."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found:
            return found
        await asyncio.sleep(interval)
    raise AssertionError("timed out waiting for: %s" % what)


def wait_for(check: Callable[[], T], what: str, timeout: float = 20, interval: float = 0.05) -> T:
    """Call `check` (blocking: from a test that drives a daemon process) until it returns
    something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %ss waiting for: %s" % (timeout, what))
        time.sleep(interval)
