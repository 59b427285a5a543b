"""ImageWork: a delete stops an image's running work before its files go (issue 12)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from appliance.errors import Conflict
from appliance.imagework import ImageWork


async def test_a_delete_cancels_background_work_and_waits_for_its_clean_up() -> None:
    work = ImageWork()
    events: list[str] = []

    async def job() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            assert work.deleting("img")  # the job can tell a delete from a shutdown
            await asyncio.sleep(0.01)
            events.append("job cleaned up")
            raise

    async def cleaner(image_id: str) -> None:
        events.append("cleaner %s" % image_id)

    work.add_cleaner(cleaner)
    task = asyncio.create_task(job())
    work.watch("img", task, "import")
    await asyncio.sleep(0)
    async with work.stopped("img"):
        assert task.cancelled()
        events.append("files removed")
    assert events == ["job cleaned up", "files removed", "cleaner img"]
    assert not work.deleting("img")


async def test_request_work_is_flagged_and_stops_at_its_next_chunk() -> None:
    work = ImageWork()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"x"

    got = []
    with pytest.raises(Conflict, match="was deleted during the upload"):
        with work.track("img", "upload") as job:
            async for chunk in job.guard(chunks()):
                got.append(chunk)
                async with work.stopped("img"):
                    pass
    assert got == [b"x"]


async def test_no_work_starts_while_an_image_is_being_deleted() -> None:
    work = ImageWork()
    async with work.stopped("img"):
        with pytest.raises(Conflict, match="being deleted"):
            with work.track("img", "upload"):
                pass
    with work.track("img", "upload") as job:  # a new image with the same id later: fine
        job.check()
