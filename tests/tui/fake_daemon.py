"""Fixed data behind the TUI's client interface, for SVG snapshots ONLY: no timestamps that move,
no random ids, ports or free-space figures. Every behaviour test uses a real daemon."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

Json = dict[str, Any]
GiB = 1 << 30
MiB = 1 << 20
# The snapshots' wall clock (make_app's `clock`): every "3m ago" is measured from it.
NOW = datetime(2026, 5, 10, 10, 10, tzinfo=UTC).timestamp()


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _image(
    n: int, name: str, status: str, disk: str, size: int | None, virtual: int | None, stores: str, **extra: Any
) -> Json:
    image_id = "%08x-5e1f-4c2a-9d3b-%012x" % (0x1A2B3C00 + n * 0x1111, 0xFEED0000 + n)
    image: Json = {
        "id": image_id,
        "name": name,
        "status": status,
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "checksum": None,
        "os_hash_algo": None,
        "os_hash_value": None,
        "owner": "admin",
        "size": size,
        "virtual_size": virtual,
        "disk_format": disk,
        "container_format": "bare",
        "min_disk": 0,
        "min_ram": 0,
        "created_at": "2026-05-%02dT08:00:00Z" % n,
        "updated_at": "2026-05-%02dT09:30:00Z" % n,
        "tags": [],
        "self": "/v2/images/%s" % image_id,
        "file": "/v2/images/%s/file" % image_id,
        "schema": "/v2/schemas/image",
    }
    if size:
        image.update(checksum="%032x" % (0xABCDEF + n), os_hash_algo="sha512", os_hash_value="%0128x" % (0x123456 + n))
    if stores:
        image["stores"] = stores
    image.update(extra)
    return image


IMAGES = [
    _image(
        1,
        "cirros-0.6.2",
        "active",
        "qcow2",
        21 * MiB,
        112 * MiB,
        "local,fast",
        os_distro="cirros",
        hw_disk_bus="virtio",
    ),
    _image(
        2, "debian-12-genericcloud", "active", "qcow2", 330 * MiB, 2 * GiB, "local", os_distro="debian", os_version="12"
    ),
    _image(3, "ubuntu-24.04-server", "active", "raw", int(3.5 * GiB), int(3.5 * GiB), "local,fast", os_distro="ubuntu"),
    _image(4, "windows-2022", "active", "qcow2", int(9.8 * GiB), 40 * GiB, "local", protected=True, os_type="windows"),
    _image(5, "alpine-3.20", "queued", "qcow2", None, None, ""),
    _image(6, "rocky-9", "importing", "qcow2", None, None, "", os_glance_importing_to_stores="local"),
    _image(7, "broken-upload", "killed", "raw", None, None, ""),
    _image(8, "fedora-40", "deactivated", "qcow2", 420 * MiB, 5 * GiB, "fast"),
    # Mirrored from the hub: their data is there ("central"); the cache keeps copies of some.
    _image(9, "centos-stream-9", "active", "qcow2", int(1.1 * GiB), 10 * GiB, "central"),
    _image(10, "opensuse-leap-15.6", "active", "qcow2", 700 * MiB, 30 * GiB, "central"),
    _image(11, "flatcar-stable", "active", "raw", 480 * MiB, 8 * GiB, "central"),
    _image(12, "arch-linux", "active", "qcow2", 600 * MiB, 20 * GiB, "central"),
    _image(13, "ubuntu-22.04-minimal", "active", "qcow2", int(2.2 * GiB), 10 * GiB, "central"),
]

CACHE_STATS: Json = {
    "hits": 15,
    "misses": 4,
    "hit_ratio": 15 / 19,
    "bytes_from_cache": int(14.2 * GiB),
    "bytes_from_upstream": int(1.9 * GiB),
    "evictions": 3,
    "invalid": 1,
    "uncached": 0,
}
CACHE: Json = {
    "enabled": True,
    "max_size": 10 * GiB,
    "used_bytes": int(1.1 * GiB) + 480 * MiB + 600 * MiB,
    "high_watermark": 90,
    "low_watermark": 75,
    "entries_count": 2,
    "fills_count": 1,
    "stats": CACHE_STATS,
}
CACHE_VIEW: Json = {
    **CACHE,
    "entries": [
        {
            "image_id": IMAGES[8]["id"],
            "size": int(1.1 * GiB),
            "cached_at": NOW - 3 * 3600,
            "last_accessed": NOW - 240,
            "last_modified": NOW - 3 * 3600,
            "hits": 12,
        },
        {
            "image_id": IMAGES[10]["id"],
            "size": 480 * MiB,
            "cached_at": NOW - 26 * 3600,
            "last_accessed": NOW - 2 * 3600,
            "last_modified": NOW - 26 * 3600,
            "hits": 3,
        },
    ],
    "queue": [
        {
            "image_id": IMAGES[9]["id"],
            "queued_at": NOW - 1200,
            "attempts": 2,
            "next_attempt_at": NOW + 75,
            "last_error": "Hub https://hub.example.org:9292 unreachable: connection refused",
        },
        {
            "image_id": IMAGES[11]["id"],
            "queued_at": NOW - 60,
            "attempts": 0,
            "next_attempt_at": NOW - 60,
            "last_error": "",
        },
    ],
    "fills": [{"image_id": IMAGES[11]["id"], "bytes_done": 250 * MiB, "bytes_total": 600 * MiB}],
}

STATUS: Json = {
    "site": {"name": "edge-01", "role": "edge"},
    "version": "0.1.0",
    "uptime_seconds": 93784,
    "hub": {
        "configured": True,
        "url": "https://hub.example.org:9292",
        "state": "up",
        "site_api": True,
        "registered": True,
        "last_sync": NOW - 12,
        "last_error": None,
        "pulls": [{"image_id": IMAGES[12]["id"], "bytes_done": int(1.5 * GiB), "bytes_total": int(2.2 * GiB)}],
    },
    "cache": CACHE,
    "stores": [
        {
            "id": "local",
            "description": "NVMe pool",
            "default": True,
            "total_bytes": 500 * GiB,
            "free_bytes": 180 * GiB,
            "used_bytes": int(13.9 * GiB),
            "read_only": False,
            "read_only_reason": "",
        },
        {
            "id": "fast",
            "description": "RAM-backed scratch",
            "default": False,
            "total_bytes": 64 * GiB,
            "free_bytes": 59 * GiB,
            "used_bytes": int(4 * GiB),
            "read_only": True,
            "read_only_reason": "filesystem mounted read-only (EROFS)",
        },
    ],
    "images": {"active": 9, "queued": 1, "importing": 1, "killed": 1, "deactivated": 1},
    "tasks": {"processing": 1, "failure": 1, "success": 2},
    "imports_running": 1,
}

# The hub: the same images, held centrally and placed at sites.
HUB_STORES = {"local": "central", "fast": "dcn0"}
HUB_IMAGES = [
    {**i, "stores": ",".join(HUB_STORES.get(s, s) for s in i["stores"].split(","))} if i.get("stores") else i
    for i in IMAGES
]
HUB_IMAGES[8]["stores"] = HUB_IMAGES[10]["stores"] = "central,dcn0,dcn1"
HUB_STATUS: Json = {
    **STATUS,
    "site": {"name": "central", "role": "hub"},
    "hub": {"configured": False, "state": "none", "last_sync": None, "last_error": None},
    "cache": None,
    "stores": [
        {
            "id": "central",
            "description": "Central image store",
            "default": True,
            "total_bytes": 4096 * GiB,
            "free_bytes": 3100 * GiB,
            "used_bytes": 45 * GiB,
            "read_only": False,
            "read_only_reason": "",
        }
    ],
}
SITES: list[Json] = [
    {
        "name": "dcn0",
        "online": True,
        "last_seen": iso(NOW - 4),
        "registered_at": "2026-04-02T09:00:00Z",
        "free_bytes": 180 * GiB,
        "total_bytes": 500 * GiB,
        "version": "0.1.0",
        "api_url": "https://dcn0.example.org:9292",
        "stores": [{"id": "local", "description": "NVMe pool"}, {"id": "fast", "description": "RAM-backed scratch"}],
        "cache": {"used_bytes": CACHE["used_bytes"], "entries": 2, "hit_ratio": 15 / 19},
    },
    {
        "name": "dcn1",
        "online": True,
        "last_seen": iso(NOW - 9),
        "registered_at": "2026-04-02T09:05:00Z",
        "free_bytes": 20 * GiB,
        "total_bytes": 250 * GiB,
        "version": "0.1.0",
        "api_url": "",
        "stores": [{"id": "local", "description": "Local filesystem store"}],
        "cache": {"used_bytes": 0, "entries": 0, "hit_ratio": 0.0},
    },
    {
        "name": "dcn2",
        "online": False,
        "last_seen": iso(NOW - 2 * 3600 - 13 * 60),
        "registered_at": "2026-04-03T11:00:00Z",
        "free_bytes": 90 * GiB,
        "total_bytes": 250 * GiB,
        "version": "0.0.9",
        "api_url": "",
        "stores": [{"id": "local", "description": "Local filesystem store"}],
        "cache": {},
    },
]


def _task(
    n: int,
    image: Json,
    status: str,
    method: str,
    stores: list[str],
    done: int | None,
    total: int | None,
    message: str = "",
) -> Json:
    body: Json = {"name": method}
    if method == "web-download":
        body["uri"] = "https://mirror.example.org/%s.qcow2" % image["name"]
    return {
        "id": "7a5c%04x-0000-4000-8000-%012x" % (n, n),
        "type": "api_image_import",
        "status": status,
        "owner": "admin",
        "input": {"image_id": image["id"], "import_req": {"method": body}, "backend": stores},
        "result": None,
        "message": message,
        "image_id": image["id"],
        "created_at": "2026-05-10T10:0%d:00Z" % n,
        "updated_at": "2026-05-10T10:0%d:30Z" % n,
        "expires_at": None,
        "self": "/v2/tasks/x",
        "schema": "/v2/schemas/task",
        "bytes_done": done,
        "bytes_total": total,
    }


TASKS = [
    _task(1, IMAGES[0], "success", "copy-image", ["fast"], 21 * MiB, 21 * MiB),
    _task(2, IMAGES[2], "success", "web-download", ["local"], int(3.5 * GiB), int(3.5 * GiB)),
    _task(
        3,
        IMAGES[6],
        "failure",
        "web-download",
        ["local"],
        12 * MiB,
        None,
        "Download from https://mirror.example.org/broken.raw failed: HTTP 404 Not Found",
    ),
    _task(4, IMAGES[5], "processing", "web-download", ["local"], int(1.2 * GiB), int(2.5 * GiB)),
]

EVENTS = [
    {
        "seq": i + 1,
        "time": "2026-05-10T10:%02d:%02dZ" % (i // 2, (i * 17) % 60),
        "level": level,
        "source": source,
        "message": message,
    }
    for i, (level, source, message) in enumerate(
        [
            ("info", "appliance", "serving the Image API on http://0.0.0.0:9292"),
            ("info", "appliance", "site edge-01 (edge) ready; state in /var/lib/edge-appliance"),
            ("info", "appliance.images", "image %s created by admin/local-admin" % IMAGES[0]["id"]),
            ("info", "appliance.imports", "image %s: copy-image import started to fast" % IMAGES[0]["id"]),
            ("info", "appliance.imports", "image %s: import finished" % IMAGES[0]["id"]),
            ("warning", "appliance.stores.filesystem", "store fast: filesystem mounted read-only (EROFS)"),
            (
                "info",
                "appliance.urifilter",
                "URL http://169.254.169.254/latest refused: host 169.254.169.254 is a cloud metadata address",
            ),
            (
                "error",
                "appliance.imports",
                "image %s: Download from https://mirror.example.org/broken.raw failed: HTTP 404 Not Found"
                % IMAGES[6]["id"],
            ),
            ("info", "appliance.imports", "image %s: web-download import started to local" % IMAGES[5]["id"]),
            ("info", "appliance.images", "image %s deactivated" % IMAGES[7]["id"]),
        ]
    )
]


class FakeDaemon:
    """Implements tui.client.DaemonApi with the fixed data above (an edge with a hub and a
    cache, or with `hub=True` the hub with three sites); actions are refused."""

    target = "unix:/var/lib/edge-appliance/appliance.sock"

    def __init__(self, hub: bool = False) -> None:
        self._status = HUB_STATUS if hub else STATUS
        self._images = HUB_IMAGES if hub else IMAGES
        self._started = time.monotonic()

    async def status(self) -> Json:
        # The uptime moves on as a daemon's does (the TUI tells a restart from it); the Overview
        # shows it to the hour at that age, so snapshots do not see it move.
        return {
            **self._status,
            "uptime_seconds": self._status["uptime_seconds"] + int(time.monotonic() - self._started),
        }

    async def whoami(self) -> Json:
        return {
            "user_id": "admin",
            "project_id": "admin",
            "roles": ["admin", "member", "reader"],
            "is_admin": True,
            "site": self._status["site"],
        }

    async def events(self, since: int, limit: int = 500) -> list[Json]:
        return [e for e in EVENTS if e["seq"] > since][-limit:]

    async def image_pages(self) -> AsyncIterator[list[Json]]:
        yield sorted(self._images, key=lambda i: (i["name"], i["id"]))

    async def images(self) -> list[Json]:
        return list(self._images)

    async def recent_images(self, limit: int) -> list[Json]:
        return sorted(self._images, key=lambda i: i["updated_at"], reverse=True)[:limit]

    async def image(self, image_id: str) -> Json:
        return next(i for i in self._images if i["id"] == image_id)

    async def locations(self, image_id: str) -> list[Json]:
        image = await self.image(image_id)
        stores = [s for s in str(image.get("stores") or "").split(",") if s]
        return [{"url": self._location(s, image_id), "metadata": {"store": s}} for s in stores]

    @staticmethod
    def _location(store: str, image_id: str) -> str:
        if store == "central":
            return "https://hub.example.org:9292/v2/images/%s/file" % image_id
        return "file:///var/lib/edge-appliance/%s/%s" % ("images" if store == "local" else store, image_id)

    async def tasks(self) -> list[Json]:
        return list(TASKS)

    async def image_tasks(self, image_id: str) -> list[Json]:
        return [t for t in TASKS if t["image_id"] == image_id]

    async def cache_view(self) -> Json:
        return CACHE_VIEW

    async def sites(self) -> list[Json]:
        return list(SITES)

    async def site_assignments(self, name: str) -> list[Json]:
        return [{"image_id": IMAGES[12]["id"], "action": "copy", "created_at": iso(NOW - 95)}] if name == "dcn0" else []

    async def check_uri(self, uri: str) -> tuple[bool, str]:
        return False, "snapshot fake"

    async def create_image(self, name: str, disk_format: str, container_format: str) -> Json:
        raise AssertionError("the snapshot fake does not act")

    async def import_web_download(self, image_id: str, uri: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def copy_to_store(self, image_id: str, store: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def delete_from_store(self, store: str, image_id: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def delete_image(self, image_id: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def cache_image(self, image_id: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def uncache_image(self, image_id: str, target: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def clear_cache(self, target: str) -> None:
        raise AssertionError("the snapshot fake does not act")

    async def close(self) -> None:
        pass
