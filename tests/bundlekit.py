"""Helpers for bundle tests: image records for given bytes, and bundle files written with the
real writer."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from appliance.bundles.manifest import ImageRecord, Manifest
from appliance.bundles.signing import load_private_key, sign_manifest
from appliance.bundles.stream import IMAGE_DIR, create_bundle


def record(data: bytes, **overrides: Any) -> ImageRecord:
    body: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": "img",
        "disk_format": "raw",
        "container_format": "bare",
        "visibility": "public",
        "protected": False,
        "os_hidden": False,
        "owner": "admin",
        "min_disk": 0,
        "min_ram": 0,
        "size": len(data),
        "virtual_size": len(data),
        "checksum": hashlib.md5(data).hexdigest(),
        "os_hash_algo": "sha512",
        "os_hash_value": hashlib.sha512(data).hexdigest(),
        "properties": {"os_distro": "cirros"},
        "tags": ["a"],
    }
    body.update(overrides)
    return ImageRecord.from_json(body)


async def chunks(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def write_bundle(
    path: Path, images: list[tuple[ImageRecord, bytes]], key_file: Path | None = None, manifest_raw: bytes | None = None
) -> Path:
    """A bundle of `images`. manifest_raw replaces the manifest (its signature, with key_file,
    stays the one over the true manifest: a tampered bundle)."""
    raw = manifest_raw or Manifest(images=tuple(r for r, _ in images), source="test").encode()
    signature = None
    if key_file is not None:
        signed = Manifest(images=tuple(r for r, _ in images)).encode() if manifest_raw else raw
        signature = sign_manifest(signed, load_private_key(key_file))
    async with create_bundle(path) as writer:
        await writer.start(raw, signature)
        for rec, data in images:
            await writer.add_stream(IMAGE_DIR + rec.id, rec.size, chunks(data))
    return path
