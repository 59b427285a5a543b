"""The scrubber's loop keeps time on the clock it is given: an hour's interval passes at once on
a test clock, and a reloaded interval is the next pause."""

from __future__ import annotations

import asyncio
import contextlib
import os

from appliance.scrubber import Scrubber
from tests.clock import ManualClock
from tests.conftest import Api


async def test_the_scrubber_loop_pauses_on_its_clock_and_takes_a_new_interval(api: Api) -> None:
    image = await api.create(name="scrubbed")
    assert (await api.upload(image["id"], os.urandom(10_000))).status == 204
    clock = ManualClock()
    passes = 0
    progressed = asyncio.Event()

    def checked() -> None:
        nonlocal passes
        passes += 1
        progressed.set()

    scrubber = Scrubber(
        api.services.catalog, api.services.stores, interval=3600, rate_bytes_per_s=1e9, on_checked=checked, clock=clock
    )

    async def passes_reach(count: int) -> None:
        async with asyncio.timeout(10):  # an hour each on the real clock
            while passes < count:
                await progressed.wait()
                progressed.clear()

    loop = asyncio.create_task(scrubber.run())
    try:
        await passes_reach(2)
        scrubber.apply_settings(interval=60, rate_bytes_per_s=1e9)
        await passes_reach(passes + 2)
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    assert clock.sleeps[:2] == [3600, 3600]
    assert clock.sleeps[-1] == 60
    assert clock.elapsed == sum(clock.sleeps)
