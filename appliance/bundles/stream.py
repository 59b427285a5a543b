"""The bundle file: its format, the streaming writer and reader, and the check of a whole file.

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
import concurrent.futures
import contextlib
import os
import struct
import tarfile
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from appliance.bundles.manifest import BundleError, ImageRecord, Manifest
from appliance.bundles.report import FAILED, OK, BundleReport, EntryResult
from appliance.bundles.signing import check_signature, enforce_signature_policy
from appliance.digest import Buffer, ChecksumMismatch, Digest, DigestSink
from appliance.errors import ApplianceError
from appliance.stores.files import replace_durably

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


class BundleCorrupt(BundleError):
    """The bundle's stream is broken (truncated, damaged, out of order): nothing after this
    point can be read."""


# -- writing -------------------------------------------------------------------------------


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = int(time.time())
    # GNU format: sizes beyond tar's 8 GiB octal field are written in base-256.
    return info.tobuf(format=tarfile.GNU_FORMAT, encoding="utf-8", errors="strict")


async def hash_stream(
    chunks: AsyncIterable[Buffer], consume: Callable[[Sequence[Buffer]], None] | None, *, limit: int, what: str
) -> Digest:
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
    replace_durably(partial, final)


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
        self.tail = data[-_END.size :] if len(data) >= _END.size else (self.tail + data)[-_END.size :]
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
        data = self._buffer[self._offset : self._offset + n]
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
        # zstd calls only read() on its source, which is all a _Source has of a file.
        self._zr = zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW).stream_reader(
            cast(BinaryIO, source), read_size=CHUNK, read_across_frames=True
        )
        self._data_left = 0  # unread data of the current member
        self._pad_left = 0  # and its padding
        self._first: tarfile.TarInfo | None = None  # the member header after the manifest
        self.broken: BundleCorrupt | None = None
        self.manifest = Manifest(images=())
        self.manifest_bytes = b""
        self.signature: bytes | None = None

    @classmethod
    async def from_file(cls, fh: BinaryIO) -> BundleReader:
        return await cls._open(_Source(fh.read))

    @classmethod
    async def from_chunks(cls, chunks: AsyncIterable[bytes]) -> BundleReader:
        return await cls._open(_ChunkSource(chunks, asyncio.get_running_loop()))

    @classmethod
    async def _open(cls, source: _Source) -> BundleReader:
        reader = cls(source)
        first = await reader._next_member()
        if first is None or first.name != MANIFEST:
            raise reader._break(
                "not a bundle: it starts with %s, not %s" % (first.name if first else "no member", MANIFEST)
            )
        if first.size > MAX_MANIFEST_BYTES:
            raise reader._break("manifest.json is %d bytes; at most %d are accepted" % (first.size, MAX_MANIFEST_BYTES))
        reader.manifest_bytes = await reader._member_bytes(first)
        following = await reader._next_member()
        if following is not None and following.name == SIGNATURE:
            if following.size > MAX_SIGNATURE_BYTES:
                raise reader._break(
                    "manifest.sig is %d bytes; at most %d are accepted" % (following.size, MAX_SIGNATURE_BYTES)
                )
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
            raise self._break(
                "the bundle is damaged (%s, after %d bytes of the file)" % (exc, self._source.count)
            ) from None
        except ApplianceError as exc:
            raise self._break("reading the bundle failed after %d bytes: %s" % (self._source.count, exc)) from None
        except Exception as exc:  # the source's own failure (an I/O error, a client gone)
            raise self._break(
                "reading the bundle failed after %d bytes: %s" % (self._source.count, str(exc) or type(exc).__name__)
            ) from None

    async def _exact(self, n: int, what: str) -> bytes:
        data: bytes = await self._call(self._zr.read, n)
        if len(data) < n:
            raise self._break(
                "the bundle is truncated: it ends inside %s (after %d bytes of the file)" % (what, self._source.count)
            )
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
        if not any(block):  # a zero block: the archive's end (what tarfile's EOFHeaderError means)
            return None
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "strict")
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
                raise self._break(
                    "the bundle ends before the data of image %s (%d of %d images present)"
                    % (record.id, index, len(self.manifest.images))
                )
            if info.name != expected:
                raise self._break(
                    "found %s where %s was expected (images follow the manifest's order)" % (info.name, expected)
                )
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
        magic, size, ident, frame = (
            _END.unpack(self._source.tail) if len(self._source.tail) == _END.size else (0, 0, b"", 0)
        )
        if (magic, size, ident) != (_END_MAGIC, _END.size - 8, _END_ID):
            raise self._break("the bundle is truncated or has data appended: its end marker is missing")
        if frame != self._source.count - _END.size:
            raise self._break(
                "the bundle is truncated or damaged: its compressed data is %d bytes, the end marker says %d"
                % (self._source.count - _END.size, frame)
            )

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
    entries = tuple(
        results.get(r.id) or EntryResult(r.id, r.name, r.size, FAILED, "not read: %s" % error)
        for r in reader.manifest.images
    )
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
