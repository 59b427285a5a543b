"""What the services need from a store."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

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
    kind: str  # Glance's store type in /v2/info/stores/detail: "file", "rbd"

    def properties(self) -> dict[str, Any]:
        """Glance's `properties` of the store in /v2/info/stores/detail."""

    def usage(self) -> StoreUsage: ...

    def location_url(self, image_id: str) -> str: ...

    def data_path(self, image_id: str) -> Path | None:
        """The committed file of an image, or None if this store does not hold it as a file
        (an RBD store never does: read() streams its bytes)."""

    def holds(self, image_id: str) -> bool:
        """Whether the store holds committed data of the image. Blocking: run it in a thread."""

    def read(self, image_id: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        """The committed bytes [start, stop) of an image this store holds."""

    async def in_use(self, image_id: str) -> str:
        """Why the image's data cannot be deleted from this store ("" if it can), e.g. RBD
        clones of it (Glance: InUseByStore)."""

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

    def quarantine(self, image_id: str) -> object | None:
        """Move a copy that failed verification aside, kept for inspection and never served;
        returns where it went (None if there was no copy). Blocking: run it in a thread."""

    def clean_partial(self) -> int: ...

    def close(self) -> None: ...
