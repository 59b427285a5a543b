"""Conversion straight into the first target store, hashed while qemu-img writes.

When image_conversion produces raw output into a filesystem store, qemu-img converts the
image one range after the other into the store's partial file (`FilesystemStore.open_prepared`)
while two threads hash each finished range (`FileFollower`): the bytes are written once, never
copied from a scratch file into the store, and hashing overlaps the conversion. Every check of
the step stays: the inspection and qemu-img info before, the pinned drivers and the limits on
each qemu-img run, the inspection of the output after. Nothing is visible under the image's
name until the runner commits the file.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from appliance.digest import Digest
from appliance.errors import FormatRejected
from appliance.formats import Inspection
from appliance.pipeline.base import ImportFailed, StagedImage, StepContext
from appliance.pipeline.follow import FileFollower
from appliance.pipeline.steps.convert import Convert, ConvertPlan
from appliance.pipeline.timing import StageTimer
from appliance.stores.filesystem import FilesystemStore

log = logging.getLogger(__name__)

# Ranges per qemu-img run: small enough that hashing starts soon after the conversion does
# (one run costs ~30 ms to start), few enough runs for big images.
FIRST_RANGE_BYTES = 32 << 20
RANGE_BYTES = 256 << 20
MAX_RANGES = 64


@dataclass
class DirectWrite:
    """The first store's copy, converted into its partial file, hashed and inspected in the
    same pass: commit or discard."""

    store: FilesystemStore
    partial: Path
    digest: Digest
    inspection: Inspection  # of the converted bytes, as claimed after conversion
    committed: bool = False

    async def commit(self, image_id: str) -> None:
        await self.store.commit_prepared(self.partial, image_id)
        self.committed = True

    async def discard(self) -> None:
        if not self.committed:
            await self.store.discard_prepared(self.partial)


def ranges(size: int) -> list[tuple[int, int]]:
    """The ranges qemu-img converts one after the other: a short first one, so hashing starts
    early, then equal ones (whole MiB: each starts on a sector and cluster boundary)."""
    step = max(RANGE_BYTES, -(-size // MAX_RANGES))
    step += -step % (1 << 20)
    bounds = [0, *range(FIRST_RANGE_BYTES, size, step), size] if size > FIRST_RANGE_BYTES else [0, size]
    return [(a, b - a) for a, b in itertools.pairwise(bounds) if b > a]


async def convert_into_store(
    convert: Convert,
    plan: ConvertPlan,
    staged: StagedImage,
    ctx: StepContext,
    store: FilesystemStore,
    *,
    max_size: int,
    signed_hash: str | None,
    on_progress: Callable[[int], None],
    timer: StageTimer,
) -> tuple[StagedImage, DirectWrite]:
    """Convert `staged` (checked by `convert.check`, which gave `plan`) into a partial file of
    `store`; returns the converted image (its path is the partial file) and the write to
    commit. On any failure the partial file is gone."""
    size = plan.virtual_size
    partial = await store.open_prepared(ctx.image_id, size, max_size=max_size)
    follower = FileFollower(partial, convert.output_inspector(), signed_hash=signed_hash, on_progress=on_progress)
    parts = ranges(size)
    try:
        with timer.stage(convert.name):
            for offset, length in parts:
                await convert.convert_range(plan, staged.path, partial, offset, length)
                follower.advance(offset + length)
                await store.written(partial, offset, length)
        with timer.stage("hash_after_conversion"):
            try:
                digest, found = await follower.finish(size)
            except FormatRejected as exc:
                raise ImportFailed("converted image failed inspection: %s" % exc) from None
        converted = await convert.finish(staged, plan, partial, ctx, inspected=found)
    except BaseException:
        await asyncio.shield(follower.abort())
        await asyncio.shield(store.discard_prepared(partial))
        raise
    log.info("image %s: converted into store %s in %d range(s)", ctx.image_id, store.name, len(parts))
    return converted, DirectWrite(store, partial, digest, found)
