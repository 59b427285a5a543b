"""What a bundle says about its images: one ImageRecord per image (the ids, metadata and the
hashes its data must match) and the Manifest that lists them (manifest.json)."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from appliance import wire
from appliance.clock import timestamp
from appliance.digest import Digest, verify
from appliance.errors import BadRequest
from appliance.model import NOT_PROPERTIES

FORMAT = "edge-image-bundle"
VERSION = 1

_HEX = re.compile(r"[0-9a-f]+")


class BundleError(BadRequest):
    """A bundle or one of its records is malformed; the message says where."""


def _get(
    data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str, *, nullable: bool = False
) -> Any:
    if key not in data:
        raise BundleError("%s: %s is missing" % (where, key))
    value = data[key]
    if value is None and nullable:
        return None
    # bool is an int subclass: refuse it where a number is meant.
    if not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
        raise BundleError("%s: %s has the wrong type (%s)" % (where, key, type(value).__name__))
    return value


def _hex(value: str, length: int, what: str, where: str) -> str:
    if len(value) != length or not _HEX.fullmatch(value):
        raise BundleError("%s: %s must be %d lowercase hex digits" % (where, what, length))
    return value


@dataclass(frozen=True)
class ImageRecord:
    """One image of a bundle: what the importing site creates, and what the data must hash to."""

    id: str
    name: str | None
    disk_format: str | None
    container_format: str | None
    visibility: str
    protected: bool
    os_hidden: bool
    owner: str | None
    min_disk: int
    min_ram: int
    size: int
    virtual_size: int | None
    checksum: str  # MD5, hex
    os_hash_algo: str
    os_hash_value: str  # SHA-512, hex
    properties: dict[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    KEYS = (
        "id",
        "name",
        "disk_format",
        "container_format",
        "visibility",
        "protected",
        "os_hidden",
        "owner",
        "min_disk",
        "min_ram",
        "size",
        "virtual_size",
        "checksum",
        "os_hash_algo",
        "os_hash_value",
        "properties",
        "tags",
    )

    def to_json(self) -> dict[str, Any]:
        body = {key: getattr(self, key) for key in self.KEYS}
        body["tags"] = list(self.tags)
        return body

    @classmethod
    def from_json(cls, data: Any, where: str = "image record") -> ImageRecord:
        if not isinstance(data, dict):
            raise BundleError("%s: expected a JSON object" % where)
        unknown = sorted(set(data) - set(cls.KEYS))
        if unknown:
            raise BundleError("%s: unknown key(s) %s" % (where, ", ".join(unknown)))
        try:
            image_id = str(uuid.UUID(_get(data, "id", str, where)))
        except ValueError:
            raise BundleError("%s: id %r is not a UUID" % (where, data["id"])) from None
        where = "image %s" % image_id
        properties = _get(data, "properties", dict, where)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in properties.items()):
            raise BundleError("%s: properties must map strings to strings" % where)
        clash = sorted(set(properties) & NOT_PROPERTIES)
        if clash:
            raise BundleError("%s: %s cannot be a custom property" % (where, ", ".join(clash)))
        tags = _get(data, "tags", list, where)
        if not all(isinstance(t, str) for t in tags):
            raise BundleError("%s: tags must be strings" % where)
        size = _get(data, "size", int, where)
        if size < 0:
            raise BundleError("%s: size must not be negative" % where)
        algo = _get(data, "os_hash_algo", str, where)
        if algo != "sha512":
            raise BundleError("%s: os_hash_algo is %r; bundles carry SHA-512 hashes" % (where, algo))
        return cls(
            id=image_id,
            name=_get(data, "name", str, where, nullable=True),
            disk_format=_get(data, "disk_format", str, where, nullable=True),
            container_format=_get(data, "container_format", str, where, nullable=True),
            visibility=_get(data, "visibility", str, where),
            protected=_get(data, "protected", bool, where),
            os_hidden=_get(data, "os_hidden", bool, where),
            owner=_get(data, "owner", str, where, nullable=True),
            min_disk=_get(data, "min_disk", int, where),
            min_ram=_get(data, "min_ram", int, where),
            size=size,
            virtual_size=_get(data, "virtual_size", int, where, nullable=True),
            checksum=_hex(_get(data, "checksum", str, where), 32, "checksum (MD5)", where),
            os_hash_algo=algo,
            os_hash_value=_hex(_get(data, "os_hash_value", str, where), 128, "os_hash_value (SHA-512)", where),
            properties=dict(properties),
            tags=tuple(tags),
        )

    @classmethod
    def from_glance(cls, body: Mapping[str, Any]) -> ImageRecord:
        """The record of an image as a Glance v2 endpoint shows it (custom properties sit beside
        the base attributes there). Only active images with a SHA-512 hash can travel."""
        where = "image %s" % body.get("id")
        if body.get("status") != "active":
            raise BundleError("%s is %s; only active images can be exported" % (where, body.get("status")))
        if body.get("os_hash_algo") != "sha512" or not body.get("os_hash_value") or not body.get("checksum"):
            raise BundleError(
                "%s has no SHA-512 hash and MD5 checksum (os_hash_algo %r); bundles need both"
                % (where, body.get("os_hash_algo"))
            )
        record = {key: body.get(key) for key in cls.KEYS if key not in ("properties", "tags")}
        for key, default in (("protected", False), ("os_hidden", False), ("min_disk", 0), ("min_ram", 0)):
            if record[key] is None:
                record[key] = default
        record["tags"] = list(body.get("tags") or [])
        record["properties"] = {
            key: value
            for key, value in body.items()
            if key not in NOT_PROPERTIES and not key.startswith("os_glance") and isinstance(value, str)
        }
        return cls.from_json(record, where)

    def create_body(self) -> dict[str, Any]:
        """The image-create request that makes this image (ids and metadata as they were)."""
        body: dict[str, Any] = {
            key: getattr(self, key)
            for key in (
                "id",
                "name",
                "disk_format",
                "container_format",
                "visibility",
                "protected",
                "os_hidden",
                "owner",
                "min_disk",
                "min_ram",
            )
        }
        body["tags"] = list(self.tags)
        body.update(self.properties)
        return body

    def check(self, digest: Digest) -> None:
        """Raise ChecksumMismatch unless `digest` is this image's data."""
        verify(digest, self)


@dataclass(frozen=True)
class Manifest:
    images: tuple[ImageRecord, ...]
    source: str = ""
    created_at: str = ""

    def encode(self) -> bytes:
        return (
            json.dumps(
                {
                    "format": FORMAT,
                    "version": VERSION,
                    "created_at": self.created_at or timestamp(),
                    "source": self.source,
                    "images": [record.to_json() for record in self.images],
                },
                indent=1,
                sort_keys=True,
            ).encode()
            + b"\n"
        )

    @classmethod
    def decode(cls, raw: bytes) -> Manifest:
        try:
            data = wire.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError("manifest.json is not valid JSON: %s" % exc) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError("manifest.json does not describe an %s" % FORMAT)
        if data.get("version") != VERSION:
            raise BundleError(
                "bundle format version %r is not supported (this appliance reads version %d)"
                % (data.get("version"), VERSION)
            )
        images = _get(data, "images", list, "manifest.json")
        records = tuple(
            ImageRecord.from_json(item, "manifest.json image #%d" % (i + 1)) for i, item in enumerate(images)
        )
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise BundleError("manifest.json lists image %s twice" % record.id)
            seen.add(record.id)
        return cls(images=records, source=str(data.get("source", "")), created_at=str(data.get("created_at", "")))
