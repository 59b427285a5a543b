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

    # -- Glance's legacy cache routes (/v2/cached_images, /v2/queued_images), which older
    # glance-cache-manage tools call; Glance guards them all with `manage_image_cache`.

    async def legacy_cached(self, ctx: Context) -> list[CacheEntry]:
        policy.enforce(ctx, "manage_image_cache")
        return self.cache.entries() if self.cache is not None else []

    async def legacy_queued(self, ctx: Context) -> list[str]:
        policy.enforce(ctx, "manage_image_cache")
        return [q.image_id for q in await self.cache.queued()] if self.cache is not None else []

    async def legacy_queue(self, ctx: Context, image_id: str) -> None:
        policy.enforce(ctx, "manage_image_cache")
        image = await self._images.get(ctx, image_id)
        if self.cache is not None:
            await self.cache.queue(image)
        else:
            check_queueable(image)

    async def legacy_remove(self, ctx: Context, image_id: str, target: str) -> None:
        """Drop one image from the cache or from the queue (an id it does not hold is a no-op, as in Glance)."""
        policy.enforce(ctx, "manage_image_cache")
        if self.cache is not None and target == "cache":
            await self.cache.delete(image_id)
        elif self.cache is not None:
            await self.cache.dequeue(image_id)

    async def legacy_clear(self, ctx: Context, target: str) -> int:
        """Empty the cache or the queue; how many went (Glance's num_deleted)."""
        policy.enforce(ctx, "manage_image_cache")
        return await self.cache.clear(target) if self.cache is not None else 0
