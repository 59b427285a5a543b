"""What the actions read from an image record as the daemon lists it: the stores that hold it,
the name it is shown by, and the properties Glance keeps for itself."""

from __future__ import annotations

from typing import Any

from tui.display import visible

Json = dict[str, Any]
# The store name an edge gives the hub's copy of a mirrored image: the cache can hold those.
HUB_STORE = "central"  # the hub, as the daemon names it in `stores`
IMPORTING_TO = "os_glance_importing_to_stores"
FAILED_IMPORT = "os_glance_failed_import"
# Attributes every image has; the rest are the image's custom properties.
BASE_KEYS = frozenset(
    {
        "id",
        "name",
        "status",
        "visibility",
        "protected",
        "os_hidden",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "owner",
        "size",
        "virtual_size",
        "disk_format",
        "container_format",
        "min_disk",
        "min_ram",
        "created_at",
        "updated_at",
        "tags",
        "self",
        "file",
        "schema",
        "stores",
        "locations",
        "direct_url",
    }
)


def split_list(value: object) -> list[str]:
    """A comma-separated list property (`stores`, `os_glance_importing_to_stores`, ...)."""
    return [s for s in str(value or "").split(",") if s]


def store_list(image: Json) -> list[str]:
    return split_list(image.get("stores"))


def image_label(image: Json) -> str:
    """An image's name (else its id) as shown in dialogs and notifications: `visible`."""
    return visible(image.get("name") or image["id"])


def custom_properties(image: Json) -> dict[str, Any]:
    """The image's own properties: not its attributes, not what Glance keeps (`os_glance_*`)."""
    return {k: v for k, v in image.items() if k not in BASE_KEYS and not str(k).startswith("os_glance_")}
