"""What the services need from a store."""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.digest import Digest


@dataclass(frozen=True)
class StoreUsage:
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int  # bytes of image files this store holds
    read_only: bool
    reason: str = ""  # why it is read-only


class ImageStore(Protocol):
    name: str
    description: str

    def usage(self) -> StoreUsage: ...

    def location_url(self, image_id: str) -> str: ...

    def data_path(self, image_id: str) -> Path | None:
        """The committed file of an image, or None if this store does not hold it."""

    async def write(
        self,
        image_id: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int,
        on_progress: Callable[[int], None] | None = None,
        background: bool = False,
        expected_size: int | None = None,
        signed_hash: str | None = None,
    ) -> Digest: ...

    async def delete(self, image_id: str) -> bool: ...

    async def purge(self, image_id: str) -> None:
        """Remove every file of the image (data, partial writes, pulls): it was deleted."""

    def clean_partial(self) -> int: ...
