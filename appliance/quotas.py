"""Per-project quotas with Glance's unified-limit names, counted from the catalog plus the
bytes of transfers still flowing, and answered as Glance answers them (413, oslo.limit's text).

Glance checks `image_size_total` and `image_stage_total` before a transfer only, so a project
can end up over its limit by one image; here a transfer of unknown size is also stopped as it
crosses the limit. Admission (the check and the status change that makes a transfer count) is
serialised, so concurrent requests cannot both take the last unit of a quota.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from appliance.catalog import Catalog, ProjectUsage
from appliance.config import QuotaLimits, QuotasConfig
from appliance.errors import TooLarge

log = logging.getLogger(__name__)

T = TypeVar("T")
MIB = 1 << 20
SIZE_TOTAL = "image_size_total"
STAGE_TOTAL = "image_stage_total"
COUNT_TOTAL = "image_count_total"
COUNT_UPLOADING = "image_count_uploading"


class QuotaExceeded(TooLarge):
    """Glance's LimitExceeded around oslo.limit's ProjectOverLimit text."""

    def __init__(self, project: str, resource: str, limit: int, usage: int, delta: int) -> None:
        super().__init__(
            "The request returned a 413 Request Entity Too Large. This generally means that rate limiting or a quota "
            "threshold was breached.\n\nThe response body:\nProject %s is over a limit for [Resource %s is over limit "
            "of %d due to current usage %d and delta %d]" % (project, resource, limit, usage, delta)
        )


async def _nothing_staged(image_ids: Iterable[str]) -> int:
    return 0


def _mib_up(nbytes: int) -> int:
    return -(-nbytes // MIB)


@dataclass
class _Flow:
    project: str
    resource: str  # SIZE_TOTAL (into a store) or STAGE_TOTAL (into staging)
    done: int = 0


class Meter:
    """One admitted transfer: counts its bytes and stops it when it crosses its quota."""

    def __init__(self, quotas: Quotas, flow: _Flow, usage: int, generation: int) -> None:
        self._quotas = quotas
        self._flow = flow
        self._usage = usage  # bytes of the resource held when last counted (catalog, files)
        self._generation = generation

    async def count(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        limit = self._quotas.limits(self._flow.project)
        maximum = getattr(limit, self._flow.resource)
        async for chunk in chunks:
            self._flow.done += len(chunk)
            if maximum >= 0:
                await self._check(maximum)
            yield chunk

    async def _check(self, maximum: int) -> None:
        quotas, flow = self._quotas, self._flow
        if quotas.generation(flow.project) != self._generation:
            # Another transfer of the project ended: what it wrote is now in the usage.
            self._generation = quotas.generation(flow.project)
            self._usage = await quotas.held_bytes(flow.project, flow.resource)
        flowing = quotas.flowing(flow.project, flow.resource)
        if self._usage + flowing > maximum * MIB:
            mine, flow.done = flow.done, 0  # refused: its bytes no longer hold room from the others
            raise QuotaExceeded(flow.project, flow.resource, maximum, self._usage // MIB, _mib_up(mine))


class Quotas:
    def __init__(self, config: QuotasConfig, catalog: Catalog, stores: Iterable[str]) -> None:
        self._config = config
        self._catalog = catalog
        self._stores = tuple(stores)
        self._staged_bytes: Callable[[Iterable[str]], Awaitable[int]] = _nothing_staged
        self._admission = asyncio.Lock()
        self._flows: dict[str, _Flow] = {}  # image id → its transfer in flight
        self._generations: dict[str, int] = {}  # project → transfers ended so far

    def apply_config(self, config: QuotasConfig) -> None:
        self._config = config

    def count_staged_with(self, staged_bytes: Callable[[Iterable[str]], Awaitable[int]]) -> None:
        """How many bytes are staged for some images (the import service owns staging)."""
        self._staged_bytes = staged_bytes

    def limits(self, project: str | None) -> QuotaLimits:
        return self._config.for_project(project)

    def generation(self, project: str) -> int:
        return self._generations.get(project, 0)

    def flowing(self, project: str, resource: str, *, besides: str | None = None) -> int:
        return sum(
            f.done for i, f in self._flows.items() if f.project == project and f.resource == resource and i != besides
        )

    async def held_bytes(self, project: str, resource: str, usage: ProjectUsage | None = None) -> int:
        usage = usage or await self._catalog.project_usage(project, self._stores)
        if resource == SIZE_TOTAL:
            return usage.stored_bytes
        return await self._staged_bytes(usage.uploading)

    async def admit_image(self, project: str | None, create: Callable[[], Awaitable[T]]) -> T:
        """image_count_total: count the project's images and create one, atomically."""
        limit = self.limits(project).image_count_total
        if project is None or limit < 0:
            return await create()
        async with self._admission:
            usage = await self._catalog.project_usage(project, self._stores)
            if usage.images + 1 > limit:
                raise QuotaExceeded(project, COUNT_TOTAL, limit, usage.images, 1)
            return await create()

    async def check(self, project: str | None, image_id: str, adds: dict[str, int]) -> None:
        """Refuse (QuotaExceeded) if starting work on `image_id` needs more than the project has
        left: `adds` maps SIZE_TOTAL / STAGE_TOTAL to the bytes the work adds (0 if unknown);
        every such work counts one against image_count_uploading."""
        async with self._admission:
            await self._check(project, image_id, adds)

    @asynccontextmanager
    async def transfer(
        self,
        project: str | None,
        image_id: str,
        resource: str,
        size: int | None,
        start: Callable[[], Awaitable[object]],
    ) -> AsyncIterator[Meter | None]:
        """Admit a transfer into a store (SIZE_TOTAL) or staging (STAGE_TOTAL): check, then run
        `start` (the status change that makes it count as uploading) atomically; the Meter
        counts its bytes until the block ends. None: no quota applies to the project."""
        limits = self.limits(project)
        if project is None or (getattr(limits, resource) < 0 and limits.image_count_uploading < 0):
            await start()
            yield None
            return
        async with self._admission:
            # Taken before the usage is read: a transfer that ends meanwhile makes it stale.
            generation = self.generation(project)
            usage = await self._check(project, image_id, {resource: size or 0})
            await start()
            held = await self.held_bytes(project, resource, usage)
            flow = self._flows[image_id] = _Flow(project, resource)
        try:
            yield Meter(self, flow, held, generation)
        finally:
            self._end(image_id, flow)

    @asynccontextmanager
    async def metered(self, project: str | None, image_id: str, resource: str) -> AsyncIterator[Meter | None]:
        """Count the bytes of work admitted earlier (an import's download into staging, checked
        when the import started) and stop it if it crosses the quota."""
        if project is None or getattr(self.limits(project), resource) < 0:
            yield None
            return
        generation = self.generation(project)
        held = await self.held_bytes(project, resource)
        flow = self._flows[image_id] = _Flow(project, resource)
        try:
            yield Meter(self, flow, held, generation)
        finally:
            self._end(image_id, flow)

    def _end(self, image_id: str, flow: _Flow) -> None:
        if self._flows.get(image_id) is flow:
            del self._flows[image_id]
        self._generations[flow.project] = self.generation(flow.project) + 1

    async def _check(self, project: str | None, image_id: str, adds: dict[str, int]) -> ProjectUsage | None:
        if project is None:
            return None
        limits = self.limits(project)
        usage = await self._catalog.project_usage(project, self._stores)
        if limits.image_count_uploading >= 0:
            busy = len(
                {i for i in usage.uploading if i != image_id}
                | {i for i, f in self._flows.items() if f.project == project and i != image_id}
            )
            if busy + 1 > limits.image_count_uploading:
                raise QuotaExceeded(project, COUNT_UPLOADING, limits.image_count_uploading, busy, 1)
        for resource, nbytes in adds.items():
            maximum = getattr(limits, resource)
            if maximum < 0:
                continue
            held = await self.held_bytes(project, resource, usage) + self.flowing(project, resource, besides=image_id)
            if held + nbytes > maximum * MIB:
                raise QuotaExceeded(project, resource, maximum, held // MIB, _mib_up(nbytes))
        return usage
