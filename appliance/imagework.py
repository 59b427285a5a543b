"""Work running on an image's bytes (uploads, staging, imports, pulls), so that deleting the
image stops that work before its files are removed: nothing written for a deleted image
outlives the delete.

Background work (an import task) is cancelled and awaited; work that runs in a client's request
(an upload) is flagged and stops at its next chunk with a Conflict. Work cannot start on an
image while it is being deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from appliance.errors import Conflict

log = logging.getLogger(__name__)

Cleaner = Callable[[str], Awaitable[Any]]


@dataclass(eq=False)
class Job:
    image_id: str
    what: str  # "upload", "staging", "import", ...: for messages
    task: asyncio.Task[Any] | None = None  # background work: cancelled by a delete
    deleted: bool = False

    def check(self) -> None:
        """Conflict once the image has been deleted: the caller stops writing."""
        if self.deleted:
            raise Conflict("Image %s was deleted during the %s" % (self.image_id, self.what))

    async def guard(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, stopped with a Conflict at the first chunk after a delete."""
        async for chunk in chunks:
            self.check()
            yield chunk


class ImageWork:
    def __init__(self) -> None:
        self._jobs: dict[str, set[Job]] = {}
        self._deleting: set[str] = set()
        self._cleaners: list[Cleaner] = []

    def add_cleaner(self, cleaner: Cleaner) -> None:
        """`cleaner(image_id)` removes what its owner keeps for an image (staged data, ...);
        called on every delete, once the image's running work has stopped."""
        self._cleaners.append(cleaner)

    def deleting(self, image_id: str) -> bool:
        return image_id in self._deleting

    @contextlib.contextmanager
    def track(self, image_id: str, what: str) -> Iterator[Job]:
        """Work done inside a request (upload, staging): flagged, not cancelled, by a delete."""
        job = self._add(image_id, what)
        try:
            yield job
        finally:
            self._discard(job)

    def watch(self, image_id: str, task: asyncio.Task[Any], what: str) -> None:
        """Background work: a delete cancels `task` and waits for it to end."""
        job = self._add(image_id, what)
        job.task = task
        task.add_done_callback(lambda _t: self._discard(job))

    def _add(self, image_id: str, what: str) -> Job:
        if image_id in self._deleting:
            raise Conflict("Image %s is being deleted; no %s can start" % (image_id, what))
        job = Job(image_id, what)
        self._jobs.setdefault(image_id, set()).add(job)
        return job

    def _discard(self, job: Job) -> None:
        jobs = self._jobs.get(job.image_id)
        if jobs is not None:
            jobs.discard(job)
            if not jobs:
                del self._jobs[job.image_id]

    @contextlib.asynccontextmanager
    async def stopped(self, image_id: str) -> AsyncIterator[None]:
        """Stop the image's running work (flag it, cancel background tasks and wait for them);
        inside, no new work starts; on the way out, the cleaners remove what owners kept."""
        self._deleting.add(image_id)
        try:
            jobs = list(self._jobs.get(image_id, ()))
            for job in jobs:
                job.deleted = True
            me = asyncio.current_task()
            tasks = [j.task for j in jobs if j.task is not None and j.task is not me and not j.task.done()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
                log.info("image %s: stopped %d running job(s) for its delete", image_id, len(tasks))
            yield
            for cleaner in self._cleaners:
                await cleaner(image_id)
        finally:
            self._deleting.discard(image_id)
