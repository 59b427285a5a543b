"""CacheAdmin: Glance's cache API as operations with their policy checks (`cache_list`,
`cache_image`, `cache_delete`), over an ImageCache that may be absent (no hub, or
`[cache] enabled = false`): then it answers as an empty cache that is off."""

from __future__ import annotations

from appliance import policy
from appliance.auth import Context
from appliance.cache import CLEAR_TARGETS, ImageCache, check_queueable
from appliance.errors import BadRequest
from appliance.images import ImageService
from appliance.model import CacheEntry, QueuedImage


def clear_target(value: str | None) -> str:
    """Glance's x-image-cache-clear-target: absent (or empty) means both."""
    target = (value or "both").strip().lower() or "both"
    if target not in CLEAR_TARGETS:
        raise BadRequest("x-image-cache-clear-target must be one of %s, got %r" % (", ".join(CLEAR_TARGETS), target))
    return target


class CacheAdmin:
    def __init__(self, cache: ImageCache | None, images: ImageService) -> None:
        self.cache = cache
        self._images = images

    async def listing(self, ctx: Context) -> tuple[list[CacheEntry], list[QueuedImage]]:
        """The cached entries and the queue."""
        policy.enforce(ctx, "cache_list")
        if self.cache is None:
            return [], []
        return self.cache.entries(), await self.cache.queued()

    async def queue(self, ctx: Context, image_id: str) -> None:
        policy.enforce(ctx, "cache_image")
        image = await self._images.get(ctx, image_id)
        if self.cache is not None:
            await self.cache.queue(image)
        else:
            check_queueable(image)

    async def remove(self, ctx: Context, image_id: str, target: str | None) -> None:
        """Drop one image from the cache, the queue or both (`target`: the clear-target header)."""
        policy.enforce(ctx, "cache_delete")
        image = await self._images.get(ctx, image_id)
        # Glance removes the image from both; the clear-target header narrows it, as for DELETE /v2/cache.
        chosen = clear_target(target)
        if self.cache is not None and chosen in ("cache", "both"):
            await self.cache.delete(image.id)
        if self.cache is not None and chosen in ("queue", "both"):
            await self.cache.dequeue(image.id)

    async def clear(self, ctx: Context, target: str | None) -> None:
        policy.enforce(ctx, "cache_delete")
        # Absent means both; `both` is accepted too (Glance documents it but rejects it).
        chosen = clear_target(target)
        if self.cache is not None:
            await self.cache.clear(chosen)

    async def clean(self, ctx: Context) -> tuple[int, int]:
        """(files, bytes) removed: invalid and stalled partial files."""
        policy.enforce(ctx, "cache_delete")
        return await self.cache.clean() if self.cache is not None else (0, 0)

    async def prune(self, ctx: Context) -> tuple[int, int]:
        """(files, bytes) evicted down to the low watermark."""
        policy.enforce(ctx, "cache_delete")
        return await self.cache.prune() if self.cache is not None else (0, 0)

    def readable(self, ctx: Context) -> ImageCache | None:
        """The cache, for a caller who may read it (the operator view: figures, entries, queue, fills)."""
        policy.enforce(ctx, "cache_list")
        return self.cache
