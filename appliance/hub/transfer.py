"""One hub image transfer into a local file, shared by the cache fill and hub-driven pulls.

* Resumable: when the link drops, the bytes already on disk are read back and hashed, then the
  transfer continues with an HTTP Range request from where it stopped (also after a restart,
  from a partial file left behind), with exponential back-off and jitter between attempts.
* Verified: size, MD5 and SHA-512 must match the image record before `run()` returns; the owner
  commits (renames) the file only then, and calls `complete()` (or `fail()`).
* Followable: readers stream the bytes as they land (`follow()`), each from its own offset, so
  one transfer feeds any number of clients with bounded memory. The last byte is held back until
  the data is verified, so a client never sees a complete response for bad data.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path

from appliance.digest import Buffer, ChecksumMismatch, Digest, DigestSink, hash_prefix, pread_chunks, verify
from appliance.errors import ApplianceError, HubUnreachable
from appliance.hub.client import HubClient
from appliance.model import Image

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


class TransferBroken(ApplianceError):
    """The transfer a reader was following failed; the reader's response must not complete."""


def backoff(attempt: int, ceiling: float, base: float = 0.5) -> float:
    """Exponential back-off with full jitter in its upper half (attempt counts from 1)."""
    delay = min(ceiling, base * 2.0 ** (attempt - 1))
    return delay * random.uniform(0.5, 1.0)


class Transfer:
    def __init__(
        self,
        hub: HubClient,
        image: Image,
        partial: Path,
        *,
        attempts: int,
        retry_max: float,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        if image.size is None:
            raise ValueError("an image without a size cannot be transferred")
        self.image = image
        self.size: int = image.size
        self.partial = partial
        self.durable = 0  # bytes on disk; readers may read below this
        self._write_offset = 0  # the writer thread's position
        self.verified = False
        self.error: BaseException | None = None
        self.range_requests = 0  # resumed requests sent (for operators and tests)
        self._hub = hub
        self._attempts = attempts
        self._retry_max = retry_max
        self._on_bytes = on_bytes
        self._fd = -1
        self._read_fd = -1
        self._readers = 0
        self._finished = False
        self._retired = False
        self._loop = asyncio.get_running_loop()
        self._changed: asyncio.Future[None] = self._loop.create_future()
        # Resolved once the hub answered with data (or the transfer failed before that): a
        # client is told 503 at once instead of getting headers for bytes that never come.
        self.connected: asyncio.Future[None] = self._loop.create_future()
        self.connected.add_done_callback(lambda f: f.cancelled() or f.exception())

    async def open(self) -> None:
        """Open (or reopen, to resume) the partial file; readers may attach after this."""

        def opener() -> tuple[int, int]:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o640)
            return fd, os.open(self.partial, os.O_RDONLY)

        self._fd, self._read_fd = await asyncio.to_thread(opener)

    # -- the transfer -------------------------------------------------------------------------

    async def run(self) -> Digest:
        """Fetch, resume as needed, verify. Raises HubUnreachable (attempts exhausted),
        ChecksumMismatch, or NotFound (gone from the hub); the partial file stays for the owner."""
        try:
            digest = await self._fetch()
            verify(digest, self.image)
            await self._verify_other_algo(digest)
            await asyncio.to_thread(os.fsync, self._fd)
            return digest
        except BaseException as exc:
            self.error = exc
            if not self.connected.done():
                self.connected.set_exception(exc)
            raise
        finally:
            self._finished = True
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)
            self._notify()

    async def _verify_other_algo(self, digest: Digest) -> None:
        """A hub that hashes with another algorithm than this site (Glance's `hashing_algorithm`,
        e.g. sha256): its os_hash_value is checked too, by reading the file back once."""
        algo, recorded = self.image.os_hash_algo, self.image.os_hash_value
        if not algo or not recorded or algo == digest.os_hash_algo:
            return
        actual = await asyncio.to_thread(_file_hash, self._fd, algo, self.size)
        if actual is None:
            log.warning(
                "image %s: the hub's os_hash_algo %r is unknown here; size and MD5 checked", self.image.id, algo
            )
        elif actual != recorded:
            raise ChecksumMismatch("%s hash does not match the hub's os_hash_value" % algo)

    def complete(self) -> None:
        """The owner committed the verified file: readers may take the final byte."""
        self.verified = True
        self._notify()

    def fail(self, exc: BaseException) -> None:
        """The owner could not commit: readers fail."""
        if self.error is None:
            self.error = exc
        self._notify()

    def retire(self) -> None:
        """The owner hands out no more readers; the file closes when the last one is done."""
        self._retired = True
        self._release_read_fd()

    async def _fetch(self) -> Digest:
        attempt = 0
        while True:
            existing = await asyncio.to_thread(self._existing_size)
            # Re-read what is on disk: the hash state continues from the bytes actually kept.
            prefix = await asyncio.to_thread(hash_prefix, self._fd, existing)
            self._set_durable(prefix.size)
            self._write_offset = prefix.size
            sink = DigestSink(self._write, background=True, resume=prefix)
            fed = prefix.size
            try:
                if fed < self.size or self.size == 0:
                    if fed:
                        self.range_requests += 1
                        log.info("image %s: resuming the transfer at byte %d of %d", self.image.id, fed, self.size)
                    async with self._hub.open_data(self.image.id, offset=fed) as resp:
                        if not self.connected.done():
                            self.connected.set_result(None)
                        async for chunk in resp.chunks:
                            if fed + len(chunk) > self.size:
                                raise HubUnreachable(
                                    "the hub sent more than the %d bytes recorded for image %s"
                                    % (self.size, self.image.id)
                                )
                            await sink.feed([chunk])
                            fed += len(chunk)
                    if fed < self.size:
                        raise HubUnreachable(
                            "the hub ended the transfer of image %s after %d of %d bytes"
                            % (self.image.id, fed, self.size)
                        )
                if not self.connected.done():
                    self.connected.set_result(None)
                return await sink.close()
            except HubUnreachable as exc:
                await sink.abort()
                attempt += 1
                # Retry a link that dropped; a hub that never answered fails at once.
                if attempt > self._attempts or not self.connected.done():
                    raise
                delay = backoff(attempt, self._retry_max)
                log.warning(
                    "image %s: transfer interrupted at byte %d (%s); retry %d of %d in %.1f s",
                    self.image.id,
                    fed,
                    exc,
                    attempt,
                    self._attempts,
                    delay,
                )
                await asyncio.sleep(delay)
            except BaseException:
                await sink.abort()
                raise

    def _existing_size(self) -> int:
        size = os.fstat(self._fd).st_size
        if size > self.size:  # not this image's bytes: start over
            os.ftruncate(self._fd, 0)
            return 0
        return size

    def _write(self, batch: Sequence[Buffer]) -> None:
        # On the digest worker thread, in stream order; `durable` follows on the loop.
        offset = self._write_offset
        for piece in batch:
            view = memoryview(piece)
            while view:
                n = os.pwrite(self._fd, view, offset)
                offset += n
                view = view[n:]
        self._write_offset = offset
        self._loop.call_soon_threadsafe(self._set_durable, offset)

    def _set_durable(self, offset: int) -> None:
        grown = offset - self.durable
        self.durable = offset
        if grown > 0 and self._on_bytes is not None:
            self._on_bytes(grown)
        self._notify()

    def _notify(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)
        self._changed = self._loop.create_future()

    # -- readers --------------------------------------------------------------------------------

    @property
    def readers(self) -> int:
        return self._readers

    def follow(self, start: int = 0, end: int | None = None) -> Reader:
        """A reader of the image's bytes [start, end) as they land; it counts as attached from
        this call on (the file stays open for it) until it is exhausted or closed."""
        return Reader(self, start, self.size if end is None else min(end, self.size))

    async def _read(self, start: int, end: int) -> AsyncGenerator[bytes, None]:
        offset = start
        while offset < end:
            # Hold the final byte back until the whole image is verified.
            limit = end if self.verified else min(self.durable, self.size - 1, end)
            if offset < limit:
                data = await asyncio.to_thread(os.pread, self._read_fd, min(READ_CHUNK, limit - offset), offset)
                if not data:
                    raise TransferBroken("the cache file of image %s is shorter than expected" % self.image.id)
                offset += len(data)
                yield data
                continue
            if self.error is not None:
                raise TransferBroken(
                    "the transfer of image %s from the hub failed after %d of %d bytes: %s"
                    % (self.image.id, self.durable, self.size, self.error)
                )
            if self.verified:
                continue  # verified since the limit was computed
            await asyncio.shield(self._changed)

    def _release_read_fd(self) -> None:
        if self._retired and self._readers == 0 and self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1


def _file_hash(fd: int, algo: str, size: int) -> str | None:
    """The `algo` hex digest of the first `size` bytes of an open file; None for an algorithm
    hashlib does not know (blocking: run it in a thread)."""
    try:
        h = hashlib.new(algo)
    except ValueError:
        return None
    if not h.digest_size:  # shake_*: no fixed length, not a Glance multihash
        return None
    for data in pread_chunks(fd, size, READ_CHUNK):
        h.update(data)
    return h.hexdigest()


class Reader:
    """One client following a transfer. Always exhausted or closed (`aclose`), so the transfer
    knows when the last reader is gone."""

    def __init__(self, transfer: Transfer, start: int, end: int) -> None:
        self._transfer = transfer
        transfer._readers += 1
        self._chunks = transfer._read(start, end)
        self._open = True

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        if self._open:
            self._open = False
            await self._chunks.aclose()
            self._transfer._readers -= 1
            self._transfer._release_read_fd()
