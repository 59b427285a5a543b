"""Domain records returned by the catalog: frozen dataclasses, never rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NewType

ImageId = NewType("ImageId", str)
TaskId = NewType("TaskId", str)

# Image status values Glance uses.
QUEUED = "queued"
SAVING = "saving"
ACTIVE = "active"
KILLED = "killed"
DELETED = "deleted"
UPLOADING = "uploading"
IMPORTING = "importing"
PENDING_DELETE = "pending_delete"
DEACTIVATED = "deactivated"
STATUSES = (QUEUED, SAVING, ACTIVE, KILLED, DELETED, UPLOADING, IMPORTING, PENDING_DELETE, DEACTIVATED)

VISIBILITIES = ("public", "private", "shared", "community")


@dataclass(frozen=True)
class Location:
    store: str
    url: str
    status: str = "active"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Image:
    id: ImageId
    name: str | None
    status: str
    visibility: str
    protected: bool
    os_hidden: bool
    owner: str | None
    disk_format: str | None
    container_format: str | None
    min_disk: int
    min_ram: int
    size: int | None
    virtual_size: int | None
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    created_at: str
    updated_at: str
    properties: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    locations: tuple[Location, ...] = ()

    @property
    def stores(self) -> tuple[str, ...]:
        """Stores holding a servable copy (quarantined copies are never served)."""
        return tuple(loc.store for loc in self.locations if loc.status == "active")


@dataclass(frozen=True)
class Task:
    id: TaskId
    type: str
    status: str
    owner: str | None
    image_id: ImageId | None
    input: dict[str, Any]
    result: dict[str, Any] | None
    message: str
    created_at: str
    updated_at: str
    expires_at: str | None = None
    bytes_done: int = 0
    bytes_total: int | None = None


@dataclass(frozen=True)
class ImageData:
    """What a store reports after writing an image's bytes."""

    size: int
    checksum: str
    os_hash_value: str
    os_hash_algo: str = "sha512"
    virtual_size: int | None = None
