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

# Glance's image member statuses; a new member is pending until it accepts or rejects.
MEMBER_PENDING = "pending"
MEMBER_ACCEPTED = "accepted"
MEMBER_REJECTED = "rejected"
MEMBER_STATUSES = (MEMBER_PENDING, MEMBER_ACCEPTED, MEMBER_REJECTED)
# The key of an image's members in the records a hub serves its edge sites. Glance reserves
# os_glance_* names: no client can set a property by this name and pass it off as members.
MIRRORED_MEMBERS = "os_glance_members"

# Glance's import progress properties: comma-separated store names still to do / that failed.
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"


@dataclass(frozen=True)
class Location:
    store: str
    url: str
    status: str = "active"
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def in_store(cls, store: str, url: str, status: str = "active") -> Location:
        """A copy in `store` at `url`; Glance also shows the store's name in its metadata."""
        return cls(store=store, url=url, status=status, metadata={"store": store})


@dataclass(frozen=True)
class Member:
    """A project an image is shared with (Glance's image membership)."""

    image_id: ImageId
    member_id: str
    status: str
    created_at: str
    updated_at: str


# The image record's own attributes, in the catalog's column order.
IMAGE_ATTRIBUTES = (
    "id",
    "name",
    "status",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "disk_format",
    "container_format",
    "min_disk",
    "min_ram",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "created_at",
    "updated_at",
)
# Keys of a Glance v2 image body that are not custom properties: the attributes, tags, links and
# computed views, and the names Glance reserves.
NOT_PROPERTIES = frozenset(IMAGE_ATTRIBUTES) | {
    "tags",
    "self",
    "file",
    "schema",
    "locations",
    "direct_url",
    "stores",
    "deleted",
    "deleted_at",
}


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
    # The projects it is shared with: they see a shared image (and only a shared one).
    members: tuple[Member, ...] = ()

    @property
    def stores(self) -> tuple[str, ...]:
        """Stores holding a servable copy (quarantined copies are never served)."""
        return tuple(loc.store for loc in self.locations if loc.status == "active")

    def membership(self, project: str | None) -> Member | None:
        """`project`'s membership of this image, if it has one."""
        return next((m for m in self.members if m.member_id == project), None)


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
class Site:
    """An edge site registered with this hub (times: epoch seconds)."""

    name: str
    registered_at: float
    last_seen: float
    free_bytes: int | None = None
    total_bytes: int | None = None
    version: str = ""
    api_url: str = ""
    stores: tuple[dict[str, Any], ...] = ()  # id, description; type, total_bytes, free_bytes if sent
    cache: dict[str, Any] = field(default_factory=dict)


# What a site is asked to do with an image: pull a pinned copy, or drop it.
COPY = "copy"
REMOVE = "remove"


@dataclass(frozen=True)
class Assignment:
    """Pending work for one site: one action per (site, image); a newer request replaces it."""

    site: str
    image_id: ImageId
    action: str
    created_at: str


@dataclass(frozen=True)
class ImageData:
    """What a store reports after writing an image's bytes."""

    size: int
    checksum: str
    os_hash_value: str
    os_hash_algo: str = "sha512"
    virtual_size: int | None = None


@dataclass(frozen=True)
class CacheEntry:
    """A cached copy of a hub image (times: epoch seconds, as Glance's cache API)."""

    image_id: str
    size: int
    cached_at: float
    last_accessed: float
    hits: int


@dataclass(frozen=True)
class QueuedImage:
    """An image waiting for the prefetcher; failures keep it queued with a back-off."""

    image_id: str
    queued_at: float
    attempts: int
    last_error: str
    next_attempt_at: float


# Kinds of entries in a hub's change feed.
CREATED = "created"
UPDATED = "updated"
REMOVED = "deleted"


@dataclass(frozen=True)
class ImageChange:
    """One entry of a hub's change feed: an image created, updated or deleted."""

    serial: int
    image_id: str
    kind: str  # CREATED | UPDATED | REMOVED
    changed_at: str


@dataclass(frozen=True)
class ChangePage:
    """Changes after a serial, oldest first. `feed` names this feed: a new one (a new hub
    database) has serials unrelated to the old. Serials up to `pruned_through` are gone, and
    `latest` is the newest serial written; `more`: the page was cut at its limit."""

    feed: str
    pruned_through: int
    latest: int
    changes: tuple[ImageChange, ...]
    more: bool


# Glance's metadata definitions: a namespace and what it holds (objects, properties, tags and its
# resource type associations), each item kept as Glance's JSON body of it.
METADEF_KINDS = ("object", "property", "tag", "resource_type")


@dataclass(frozen=True)
class MetadefNamespace:
    namespace: str
    display_name: str | None
    description: str | None
    visibility: str  # public | private
    protected: bool
    owner: str | None
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class MetadefItem:
    namespace: str
    kind: str  # one of METADEF_KINDS
    name: str
    body: dict[str, Any]  # the item's fields besides its name and timestamps
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class MetadefResourceType:
    name: str
    protected: bool
    created_at: str
    updated_at: str
