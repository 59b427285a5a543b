"""Polling for a condition in tests that drive real daemons (nothing to await directly)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out waiting for: %s" % what)
