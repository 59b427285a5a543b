"""Portable image bundles: the file format, its streaming writer and reader, and signing.

A bundle carries images with their ids and metadata to sites the hub never reaches. The file
is one zstandard frame holding a tar stream, followed by a small end marker:

    zstd frame 1   manifest.json   format, version, created_at, source, one record per image
                   manifest.sig    optional: ed25519 over the exact bytes of manifest.json
    zstd frame 2   images/<id>     each image's data, `size` bytes, in the manifest's order
                   (tar end: two zero blocks)
    skippable      "EIB1" + the length of the two frames

`zstd -dc FILE | tar tv` lists a bundle. The manifest has a frame of its own so that the frame's
checksum is verified before any image is read (a damaged manifest must not create images under
wrong names). The end marker is a zstd skippable frame (the `zstd` tool ignores it); it is
there because libzstd's streaming reader says nothing when a file stops just short of the
last frame's end, and a bundle must show truncation wherever it happens.

Integrity is layered: each image's data must match the size, MD5 and SHA-512 its record
promises (`appliance.digest.verify`, the one verifier); the records themselves are trusted as
far as the manifest's signature goes. Compressed data is read through a bounded reader (1 MiB
of output at a time), so a small bundle that expands to terabytes of zeros (a sparse disk
compresses to almost nothing) never needs more memory than a normal one.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Awaitable, BinaryIO, Callable, Iterable, Mapping, Sequence

import zstandard
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance import wire
from appliance.digest import Buffer, ChecksumMismatch, Digest, DigestSink, verify
from appliance.errors import ApplianceError, BadRequest, ConfigError, Forbidden

log = logging.getLogger(__name__)

FORMAT = "edge-image-bundle"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
IMAGE_DIR = "images/"
BLOCK = 512  # tar's block size
CHUNK = 1 << 20  # data handed on at a time (decompressed), and batch size for hashing
# Level 1 on every core. Image data is mostly incompressible (qcow2 compressed clusters,
# compressed file systems) or long runs of zeros (sparse raw disks): level 1 shrinks both about
# as well as the default level 3 while spending less CPU, and the CPU is what an export is short
# of: every byte is also hashed twice (MD5 and SHA-512). zstd's worker threads keep compression
# off the hashing threads; the window (512 KiB at level 1) bounds the reader's memory.
LEVEL = 1
THREADS = os.cpu_count() or 1
# A reader refuses frames that ask for a larger window than this (libzstd's own default limit).
MAX_WINDOW = 1 << 27
MAX_MANIFEST_BYTES = 16 << 20
MAX_SIGNATURE_BYTES = 4096
_SKIP_PIECE = 4 << 20
# The end marker: a zstd skippable frame (magic, content size) holding b"EIB1" and the length
# of the frames before it.
_END = struct.Struct("<II4sQ")
_END_MAGIC = 0x184D2A5E
_END_ID = b"EIB1"

# Outcomes of one image in a report.
OK = "ok"
IMPORTED = "imported"
SKIPPED = "skipped"
FAILED = "failed"

_HEX = re.compile(r"[0-9a-f]+")
# What a Glance v2 image body holds besides custom properties.
_GLANCE_SYSTEM_KEYS = frozenset({
    "id", "name", "status", "visibility", "protected", "os_hidden", "owner", "disk_format", "container_format",
    "min_disk", "min_ram", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value", "created_at",
    "updated_at", "tags", "self", "file", "schema", "locations", "direct_url", "stores", "deleted", "deleted_at",
})


class BundleError(BadRequest):
    """A bundle or one of its records is malformed; the message says where."""


class BundleCorrupt(BundleError):
    """The bundle's stream is broken (truncated, damaged, out of order): nothing after this
    point can be read."""


class BundleRefused(Forbidden):
    """The site's signature policy refuses the bundle."""


# -- records and manifest ------------------------------------------------------------------


def _get(data: Mapping[str, Any], key: str, kinds: type | tuple[type, ...], where: str, *, nullable: bool = False) -> Any:
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

    KEYS = ("id", "name", "disk_format", "container_format", "visibility", "protected", "os_hidden", "owner",
            "min_disk", "min_ram", "size", "virtual_size", "checksum", "os_hash_algo", "os_hash_value",
            "properties", "tags")

    def to_json(self) -> dict[str, Any]:
        body = {key: getattr(self, key) for key in self.KEYS}
        body["tags"] = list(self.tags)
        return body

    @classmethod
    def from_json(cls, data: Any, where: str = "image record") -> "ImageRecord":
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
        clash = sorted(set(properties) & _GLANCE_SYSTEM_KEYS)
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
    def from_glance(cls, body: Mapping[str, Any]) -> "ImageRecord":
        """The record of an image as a Glance v2 endpoint shows it (custom properties sit beside
        the base attributes there). Only active images with a SHA-512 hash can travel."""
        where = "image %s" % body.get("id")
        if body.get("status") != "active":
            raise BundleError("%s is %s; only active images can be exported" % (where, body.get("status")))
        if body.get("os_hash_algo") != "sha512" or not body.get("os_hash_value") or not body.get("checksum"):
            raise BundleError("%s has no SHA-512 hash and MD5 checksum (os_hash_algo %r); bundles need both"
                              % (where, body.get("os_hash_algo")))
        record = {key: body.get(key) for key in cls.KEYS if key not in ("properties", "tags")}
        for key, default in (("protected", False), ("os_hidden", False), ("min_disk", 0), ("min_ram", 0)):
            if record[key] is None:
                record[key] = default
        record["tags"] = list(body.get("tags") or [])
        record["properties"] = {key: value for key, value in body.items()
                                if key not in _GLANCE_SYSTEM_KEYS and not key.startswith("os_glance") and isinstance(value, str)}
        return cls.from_json(record, where)

    def create_body(self) -> dict[str, Any]:
        """The image-create request that makes this image (ids and metadata as they were)."""
        body: dict[str, Any] = {key: getattr(self, key) for key in (
            "id", "name", "disk_format", "container_format", "visibility", "protected", "os_hidden", "owner",
            "min_disk", "min_ram")}
        body["tags"] = list(self.tags)
        body.update(self.properties)
        return body

    def check(self, digest: Digest) -> None:
        """Raise ChecksumMismatch unless `digest` is this image's data."""
        verify(digest, size=self.size, checksum=self.checksum, os_hash_value=self.os_hash_value)


@dataclass(frozen=True)
class Manifest:
    images: tuple[ImageRecord, ...]
    source: str = ""
    created_at: str = ""

    def encode(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "version": VERSION, "created_at": self.created_at or _now(), "source": self.source,
            "images": [record.to_json() for record in self.images],
        }, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, raw: bytes) -> "Manifest":
        try:
            data = wire.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BundleError("manifest.json is not valid JSON: %s" % exc) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError("manifest.json does not describe an %s" % FORMAT)
        if data.get("version") != VERSION:
            raise BundleError("bundle format version %r is not supported (this appliance reads version %d)"
                              % (data.get("version"), VERSION))
        images = _get(data, "images", list, "manifest.json")
        records = tuple(ImageRecord.from_json(item, "manifest.json image #%d" % (i + 1)) for i, item in enumerate(images))
        seen: set[str] = set()
        for record in records:
            if record.id in seen:
                raise BundleError("manifest.json lists image %s twice" % record.id)
            seen.add(record.id)
        return cls(images=records, source=str(data.get("source", "")), created_at=str(data.get("created_at", "")))


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# -- signing -------------------------------------------------------------------------------


def fingerprint(public_key: bytes) -> str:
    """How a key is named in messages: the start of the SHA-256 of its 32 raw bytes."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:32]


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError("cannot read key file %s: %s" % (path, exc.strerror)) from None


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """An ed25519 private key from a PEM (PKCS#8) or OpenSSH key file."""
    raw = _read_key_file(path)
    try:
        if raw.lstrip().startswith(b"-----BEGIN OPENSSH"):
            key: Any = serialization.load_ssh_private_key(raw, password=None)
        else:
            key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError("%s is not an unencrypted PEM or OpenSSH private key: %s" % (path, exc)) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("%s holds a %s key; bundles are signed with ed25519" % (path, type(key).__name__))
    return key


def load_public_key(path: Path) -> bytes:
    """The 32 raw bytes of an ed25519 public key: PEM, OpenSSH (`ssh-ed25519 ...`) or raw."""
    raw = _read_key_file(path)
    if len(raw) == 32:
        return raw
    try:
        if raw.lstrip().startswith(b"ssh-"):
            key: Any = serialization.load_ssh_public_key(raw.strip())
        else:
            key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError("%s is not a PEM, OpenSSH or raw 32-byte public key: %s" % (path, exc)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("%s holds a %s key; bundles are signed with ed25519" % (path, type(key).__name__))
    return _raw_public(key)


def generate_key(path: Path) -> str:
    """Write a new private key to `path` (PEM, mode 0600) and its public key to `path`.pub;
    returns the fingerprint."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
    public = key.public_key()
    path.with_name(path.name + ".pub").write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return fingerprint(_raw_public(public))


def sign_manifest(manifest: bytes, key: Ed25519PrivateKey) -> bytes:
    """manifest.sig: the signature over the exact manifest bytes, with the signer's public key
    (so a site can name the signer, and check the signature, even when it does not trust it)."""
    return json.dumps({
        "algorithm": "ed25519",
        "public_key": base64.b64encode(_raw_public(key.public_key())).decode(),
        "signature": base64.b64encode(key.sign(manifest)).decode(),
    }, indent=1).encode() + b"\n"


@dataclass(frozen=True)
class SignatureCheck:
    signed: bool
    valid: bool = False
    fingerprint: str = ""
    trusted: bool = False

    def describe(self) -> str:
        if not self.signed:
            return "unsigned"
        if not self.valid:
            return "signature INVALID (claims key %s)" % self.fingerprint
        return "signed by %s (%s)" % (self.fingerprint, "trusted" if self.trusted else "not a trusted key")


def check_signature(manifest: bytes, signature: bytes | None, trusted: Iterable[bytes]) -> SignatureCheck:
    if signature is None:
        return SignatureCheck(signed=False)
    try:
        data = json.loads(signature)
        if data.get("algorithm") != "ed25519":
            return SignatureCheck(signed=True, fingerprint="(algorithm %r)" % data.get("algorithm"))
        public = base64.b64decode(data["public_key"], validate=True)
        sig = base64.b64decode(data["signature"], validate=True)
        key = Ed25519PublicKey.from_public_bytes(public)
    except (ValueError, KeyError, TypeError, AttributeError):
        return SignatureCheck(signed=True, fingerprint="(unreadable)")
    try:
        key.verify(sig, manifest)
    except InvalidSignature:
        return SignatureCheck(signed=True, fingerprint=fingerprint(public))
    return SignatureCheck(signed=True, valid=True, fingerprint=fingerprint(public), trusted=public in set(trusted))


def enforce_signature_policy(check: SignatureCheck, require_signed: bool) -> None:
    """The one rule: a signature that does not verify is always refused (the manifest was
    changed after signing); a site that requires signatures refuses unsigned bundles and
    bundles signed by keys it does not trust."""
    if check.signed and not check.valid:
        raise BundleRefused("The bundle's signature does not verify (%s): the manifest was changed after signing, "
                            "or the signature is damaged; nothing was imported" % check.describe())
    if not require_signed:
        return
    if not check.signed:
        raise BundleRefused("This site requires signed bundles ([bundles] require_signed) and this bundle is "
                            "not signed; nothing was imported. Export it with --sign")
    if not check.trusted:
        raise BundleRefused("This site requires bundles signed by one of its trusted_keys; this one is signed by %s, "
                            "which is not among them; nothing was imported" % check.fingerprint)


# -- reports -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EntryResult:
    id: str
    name: str | None
    size: int
    outcome: str  # OK, IMPORTED, SKIPPED or FAILED
    message: str = ""


@dataclass(frozen=True)
class BundleReport:
    signature: str
    entries: tuple[EntryResult, ...]
    error: str = ""  # what is wrong with the bundle itself (truncation, damage), if anything

    @property
    def ok(self) -> bool:
        return not self.error and all(e.outcome != FAILED for e in self.entries)

    def lines(self) -> list[str]:
        """The report as an operator reads it (the CLI, and the inbox's .error files)."""
        out = ["signature: %s" % self.signature]
        for e in self.entries:
            out.append("%-8s %s  %s  %d bytes%s" % (e.outcome, e.id, e.name or "-", e.size,
                                                    "  " + e.message if e.message else ""))
        if self.error:
            out.append("bundle error: %s" % self.error)
        counts = {o: sum(1 for e in self.entries if e.outcome == o) for o in (OK, IMPORTED, SKIPPED, FAILED)}
        out.append("%d image(s): %s" % (len(self.entries), ", ".join("%d %s" % (n, o) for o, n in counts.items() if n)
                                          or "nothing to do"))
        return out

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature, "error": self.error, "ok": self.ok,
                "images": [{"id": e.id, "name": e.name, "size": e.size, "outcome": e.outcome, "message": e.message}
                           for e in self.entries]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BundleReport":
        return cls(signature=data["signature"], error=data.get("error", ""),
                   entries=tuple(EntryResult(id=e["id"], name=e["name"], size=e["size"], outcome=e["outcome"],
                                             message=e.get("message", "")) for e in data["images"]))


# -- writing -------------------------------------------------------------------------------


async def file_chunks(path: Path, size: int = CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes, read on worker threads (a bundle to send, an inbox image to stage)."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    # GNU format: sizes beyond tar's 8 GiB octal field are written in base-256.
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


async def hash_stream(chunks: AsyncIterable[Buffer], consume: Callable[[Sequence[Buffer]], None] | None, *,
                      limit: int, what: str) -> Digest:
    """Hash a stream (MD5 and SHA-512 on worker threads), handing each batch to `consume` (on
    the MD5 thread, in order) too. More than `limit` bytes is an error."""
    sink = DigestSink(consume)
    total = batched = 0
    batch: list[Buffer] = []
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > limit:
                raise BundleError("%s: the data is longer than the %d bytes recorded" % (what, limit))
            batch.append(chunk)
            batched += len(chunk)
            if batched >= CHUNK:
                await sink.feed(batch)
                batch, batched = [], 0
        await sink.feed(batch)
        return await sink.close()
    except BaseException:
        await sink.abort()
        raise


class BundleWriter:
    """Writes a bundle to an open file, member by member, in bounded memory."""

    def __init__(self, fh: BinaryIO, *, level: int = LEVEL, threads: int = THREADS) -> None:
        self._fh = fh
        compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
        self._zw = compressor.stream_writer(fh, closefd=False)

    def _write_batch(self, batch: Sequence[Buffer]) -> None:
        for piece in batch:
            self._zw.write(piece)

    async def start(self, manifest: bytes, signature: bytes | None = None) -> None:
        """The first frame: the manifest and its signature."""
        def write() -> None:
            for name, data in ((MANIFEST, manifest), (SIGNATURE, signature)):
                if data is not None:
                    self._zw.write(_header(name, len(data)) + data + bytes(-len(data) % BLOCK))
            self._zw.flush(zstandard.FLUSH_FRAME)

        await asyncio.to_thread(write)

    async def add_stream(self, name: str, size: int, chunks: AsyncIterable[Buffer]) -> Digest:
        """One member of exactly `size` bytes from `chunks`; returns the digest of what was written."""
        await asyncio.to_thread(self._zw.write, _header(name, size))
        digest = await hash_stream(chunks, self._write_batch, limit=size, what=name)
        if digest.size != size:
            raise BundleError("%s: the data ended after %d of the %d bytes recorded" % (name, digest.size, size))
        await asyncio.to_thread(self._zw.write, bytes(-size % BLOCK))
        return digest

    async def finish(self) -> None:
        def end() -> None:
            self._zw.write(bytes(2 * BLOCK))
            self._zw.flush(zstandard.FLUSH_FRAME)
            self._fh.write(_END.pack(_END_MAGIC, _END.size - 8, _END_ID, self._zw.tell()))

        await asyncio.to_thread(end)


def _commit(fh: BinaryIO, partial: Path, final: Path) -> None:
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()
    os.replace(partial, final)
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def create_bundle(path: Path) -> AsyncIterator[BundleWriter]:
    """A writer into `path`.partial, finished, synced and renamed to `path` when the block
    ends cleanly; on any error the partial file is removed and `path` is untouched."""
    partial = path.with_name(path.name + ".partial")
    fh = await asyncio.to_thread(open, partial, "wb")
    try:
        writer = BundleWriter(fh)
        yield writer
        await writer.finish()
        await asyncio.to_thread(_commit, fh, partial, path)
    except BaseException:
        await asyncio.to_thread(fh.close)
        await asyncio.to_thread(partial.unlink, True)
        raise


# -- reading -------------------------------------------------------------------------------


class _Source:
    """What zstd reads the compressed bytes from (on a worker thread). Counts them and keeps
    the last few, so the end marker can be checked once the frame has been decoded."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self.count = 0
        self.tail = b""

    def read(self, n: int) -> bytes:
        data = self._read(n)
        self.count += len(data)
        self.tail = data[-_END.size:] if len(data) >= _END.size else (self.tail + data)[-_END.size:]
        return data

    def cancel(self) -> None:
        """Called when the reader is cancelled while a worker thread may be waiting in read()."""


class _ChunkSource(_Source):
    """A source over an async iterator (an HTTP request body). zstd reads on a worker thread;
    each read asks the event loop for the next chunk and waits for it."""

    def __init__(self, chunks: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(self._next_chunk)
        self._chunks = chunks.__aiter__()
        self._loop = loop
        self._buffer = b""
        self._offset = 0
        self._done = False
        self._waiting: concurrent.futures.Future[bytes | None] | None = None

    async def _fetch(self, n: int) -> bytes | None:
        """At least n bytes (fewer at the end): one trip to the event loop per read, not per
        network chunk, whose size the peer decides."""
        got: list[bytes] = []
        size = 0
        try:
            while size < n:
                chunk = await self._chunks.__anext__()
                got.append(chunk)
                size += len(chunk)
        except StopAsyncIteration:
            if not got:
                return None
        return got[0] if len(got) == 1 else b"".join(got)

    def _next_chunk(self, n: int) -> bytes:
        while self._offset >= len(self._buffer) and not self._done:
            self._waiting = asyncio.run_coroutine_threadsafe(self._fetch(n), self._loop)
            try:
                chunk = self._waiting.result()
            finally:
                self._waiting = None
            if chunk is None:
                self._done = True
            else:
                self._buffer, self._offset = bytes(chunk), 0
        data = self._buffer[self._offset:self._offset + n]
        self._offset += len(data)
        return data

    def cancel(self) -> None:
        waiting = self._waiting
        if waiting is not None:
            waiting.cancel()


@dataclass(frozen=True)
class Entry:
    record: ImageRecord
    chunks: AsyncIterator[bytes]  # the image's data; what is left unread is skipped


class BundleReader:
    """Reads a bundle from the front: the manifest (and signature) first, then `entries()` in
    the manifest's order. Every read runs on a worker thread; at most CHUNK bytes of output
    are held at a time. After a BundleCorrupt nothing more is read (`broken` says why)."""

    def __init__(self, source: _Source) -> None:
        self._source = source
        self._zr = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
            source, read_size=CHUNK, read_across_frames=True)
        self._data_left = 0  # unread data of the current member
        self._pad_left = 0  # and its padding
        self._first: tarfile.TarInfo | None = None  # the member header after the manifest
        self.broken: BundleCorrupt | None = None
        self.manifest = Manifest(images=())
        self.manifest_bytes = b""
        self.signature: bytes | None = None

    @classmethod
    async def from_file(cls, fh: BinaryIO) -> "BundleReader":
        return await cls._open(_Source(fh.read))

    @classmethod
    async def from_chunks(cls, chunks: AsyncIterable[bytes]) -> "BundleReader":
        return await cls._open(_ChunkSource(chunks, asyncio.get_running_loop()))

    @classmethod
    async def _open(cls, source: _Source) -> "BundleReader":
        reader = cls(source)
        first = await reader._next_member()
        if first is None or first.name != MANIFEST:
            raise reader._break("not a bundle: it starts with %s, not %s" % (first.name if first else "no member", MANIFEST))
        if first.size > MAX_MANIFEST_BYTES:
            raise reader._break("manifest.json is %d bytes; at most %d are accepted" % (first.size, MAX_MANIFEST_BYTES))
        reader.manifest_bytes = await reader._member_bytes(first)
        following = await reader._next_member()
        if following is not None and following.name == SIGNATURE:
            if following.size > MAX_SIGNATURE_BYTES:
                raise reader._break("manifest.sig is %d bytes; at most %d are accepted" % (following.size, MAX_SIGNATURE_BYTES))
            reader.signature = await reader._member_bytes(following)
            following = await reader._next_member()
        # Only now, past the end of the first frame (its checksum verified), is the manifest used.
        reader.manifest = Manifest.decode(reader.manifest_bytes)
        reader._first = following
        return reader

    def _break(self, message: str) -> BundleCorrupt:
        if self.broken is None:
            self.broken = BundleCorrupt(message)
        return self.broken

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a decompressing read on a worker thread; its failures break the reader."""
        if self.broken is not None:
            raise self.broken
        try:
            return await asyncio.to_thread(fn, *args)
        except asyncio.CancelledError:
            self._source.cancel()
            self._break("reading was cancelled")
            raise
        except zstandard.ZstdError as exc:
            raise self._break("the bundle is damaged (%s, after %d bytes of the file)" % (exc, self._source.count)) from None
        except ApplianceError as exc:
            raise self._break("reading the bundle failed after %d bytes: %s" % (self._source.count, exc)) from None
        except Exception as exc:  # the source's own failure (an I/O error, a client gone)
            raise self._break("reading the bundle failed after %d bytes: %s" % (
                self._source.count, str(exc) or type(exc).__name__)) from None

    async def _exact(self, n: int, what: str) -> bytes:
        data = await self._call(self._zr.read, n)
        if len(data) < n:
            raise self._break("the bundle is truncated: it ends inside %s (after %d bytes of the file)" % (what, self._source.count))
        return data

    def _discard(self, n: int) -> int:
        """Worker thread: read and drop n bytes; returns how many were missing."""
        while n:
            got = len(self._zr.read(min(n, _SKIP_PIECE)))
            if not got:
                return n
            n -= got
        return 0

    async def _next_member(self) -> tarfile.TarInfo | None:
        """The next member's header (after skipping what is left of the current one), or None
        at the archive's end."""
        left = self._data_left + self._pad_left
        if left:
            if await self._call(self._discard, left):
                raise self._break("the bundle is truncated: it ends inside a member's data")
            self._data_left = self._pad_left = 0
        block = await self._exact(BLOCK, "a member header")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
        except tarfile.EOFHeaderError:
            return None
        except tarfile.HeaderError as exc:
            raise self._break("the bundle is damaged: a member header is unreadable (%s)" % exc) from None
        if not info.isreg():
            raise self._break("the bundle holds %s, which is not a regular file" % info.name)
        self._data_left, self._pad_left = info.size, -info.size % BLOCK
        return info

    async def _member_bytes(self, info: tarfile.TarInfo) -> bytes:
        data = await self._exact(info.size, info.name)
        self._data_left = 0
        return data

    async def _data(self, name: str) -> AsyncIterator[bytes]:
        while self._data_left:
            chunk = await self._exact(min(CHUNK, self._data_left), name)
            self._data_left -= len(chunk)
            yield chunk

    async def entries(self) -> AsyncIterator[Entry]:
        """Each image in the manifest's order, then the end checks. Raises BundleCorrupt when
        the stream breaks; an entry's data may be left unread (it is skipped)."""
        info, self._first = self._first, None
        for index, record in enumerate(self.manifest.images):
            if index:
                info = await self._next_member()
            expected = IMAGE_DIR + record.id
            if info is None:
                raise self._break("the bundle ends before the data of image %s (%d of %d images present)"
                                  % (record.id, index, len(self.manifest.images)))
            if info.name != expected:
                raise self._break("found %s where %s was expected (images follow the manifest's order)" % (info.name, expected))
            if info.size != record.size:
                raise self._break("%s holds %d bytes; its record says %d" % (info.name, info.size, record.size))
            yield Entry(record, self._data(info.name))
        if self.manifest.images:
            info = await self._next_member()
        if info is not None:
            raise self._break("unexpected member %s after the last image" % info.name)
        await self._finish()

    async def _finish(self) -> None:
        if any(await self._exact(BLOCK, "the end of the archive")):
            raise self._break("the bundle is damaged: the archive's end is not two zero blocks")
        if await self._call(self._zr.read, 1):
            raise self._break("the bundle is damaged: data follows the end of the archive")
        await self._call(self._drain_source)
        magic, size, ident, frame = _END.unpack(self._source.tail) if len(self._source.tail) == _END.size else (0, 0, b"", 0)
        if (magic, size, ident) != (_END_MAGIC, _END.size - 8, _END_ID):
            raise self._break("the bundle is truncated or has data appended: its end marker is missing")
        if frame != self._source.count - _END.size:
            raise self._break("the bundle is truncated or damaged: its compressed data is %d bytes, the end marker says %d"
                              % (self._source.count - _END.size, frame))

    def _drain_source(self) -> None:
        while self._source.read(CHUNK):
            pass


async def walk(reader: BundleReader, handle: Callable[[Entry], Awaitable[EntryResult]], signature: str) -> BundleReport:
    """Run `handle` on every entry and collect the report. A broken stream ends the walk: the
    image it broke in, and every one after it, are reported failed with the reason."""
    results: dict[str, EntryResult] = {}
    error = ""
    try:
        async for entry in reader.entries():
            results[entry.record.id] = await handle(entry)
    except BundleCorrupt as exc:
        error = str(exc)
    entries = tuple(results.get(r.id) or EntryResult(r.id, r.name, r.size, FAILED, "not read: %s" % error)
                    for r in reader.manifest.images)
    return BundleReport(signature=signature, entries=entries, error=error)


async def verify_bundle(path: Path, trusted: Iterable[bytes] = (), require_signed: bool = False) -> BundleReport:
    """Check a bundle file's structure, signature and every image's size, MD5 and SHA-512,
    without importing anything."""

    async def check(entry: Entry) -> EntryResult:
        record = entry.record
        try:
            record.check(await hash_stream(entry.chunks, None, limit=record.size, what=record.id))
        except ChecksumMismatch as exc:
            return EntryResult(record.id, record.name, record.size, FAILED, str(exc))
        return EntryResult(record.id, record.name, record.size, OK)

    fh = await asyncio.to_thread(open, path, "rb")
    try:
        reader = await BundleReader.from_file(fh)
        verdict = check_signature(reader.manifest_bytes, reader.signature, trusted)
        enforce_signature_policy(verdict, require_signed)
        return await walk(reader, check, verdict.describe())
    finally:
        await asyncio.to_thread(fh.close)
