"""Image digests: MD5 (`checksum`) and SHA-512 (`os_hash_value`) computed while streaming,
and the one place that compares them with what an image record promises.

Each hash runs on its own worker thread (hashlib releases the GIL), so on two cores the two
digests proceed in parallel and the event loop only hands over buffers.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from appliance.errors import ApplianceError
from appliance.memory import TRANSFER_BUFFERS
from appliance.model import ImageData
from appliance.workers import lane

Buffer = bytes | bytearray | memoryview

HASH_ALGO = "sha512"
# Batches in flight per stream: when more than HIGH are queued, the feeder waits until only
# LOW remain. Memory per transfer is bounded by HIGH x batch size (and the daemon's by
# memory.TRANSFER_BUFFERS), and the worker threads wake the event loop once per HIGH - LOW
# batches instead of once per batch. Six 4 MiB batches keep both hash threads busy while the
# loop receives the next ones; eight held 36 MiB per upload for no gain.
PIPELINE_HIGH = 6
PIPELINE_LOW = 3


class ChecksumMismatch(ApplianceError):
    """Data does not match the size or hashes recorded for it."""


@dataclass(frozen=True)
class Digest:
    size: int
    checksum: str  # md5 hex
    os_hash_value: str  # sha512 hex
    os_hash_algo: str = HASH_ALGO
    # The raw digest of the image signature's hash method (img_signature_hash_method), when
    # the writer was asked for one: what the signature is checked against.
    signed_hash: bytes | None = None

    def image_data(self, virtual_size: int | None) -> ImageData:
        """What the catalog records for an image whose bytes hashed to this."""
        return ImageData(
            size=self.size,
            checksum=self.checksum,
            os_hash_value=self.os_hash_value,
            os_hash_algo=self.os_hash_algo,
            virtual_size=virtual_size,
        )


class Recorded(Protocol):
    """What a record promises about its data: an Image, a bundle's manifest entry, or a Digest
    taken earlier. Values that are not set (None, "") are not checked."""

    @property
    def size(self) -> int | None: ...

    @property
    def checksum(self) -> str | None: ...

    @property
    def os_hash_value(self) -> str | None: ...

    @property
    def os_hash_algo(self) -> str | None: ...


def verify(actual: Digest, expected: Recorded) -> None:
    """Raise ChecksumMismatch unless every recorded value that is set matches. A multihash of
    another algorithm (a Glance hub's `hashing_algorithm`, e.g. sha256) is not comparable with
    the one computed here: size and MD5 are checked (and hub transfers check it themselves)."""
    size, checksum, os_hash_value = expected.size, expected.checksum, expected.os_hash_value
    if size is not None and actual.size != size:
        raise ChecksumMismatch("size is %d bytes, expected %d" % (actual.size, size))
    if checksum and actual.checksum != checksum:
        raise ChecksumMismatch("MD5 checksum %s does not match the recorded %s" % (actual.checksum, checksum))
    same_algo = (expected.os_hash_algo or actual.os_hash_algo) == actual.os_hash_algo
    if os_hash_value and same_algo and actual.os_hash_value != os_hash_value:
        raise ChecksumMismatch("SHA-512 hash does not match the recorded os_hash_value")


@dataclass
class Prefix:
    """Hash state of the first `size` bytes of a stream."""

    md5: hashlib._Hash
    sha: hashlib._Hash
    size: int


def hash_prefix(fd: int, size: int, chunk: int = 1 << 20) -> Prefix:
    """Hash the first `size` bytes of an open file (blocking: run it in a thread). Used to
    re-read what a broken transfer already wrote before resuming after it."""
    md5, sha = hashlib.md5(), hashlib.sha512()
    done = 0
    for data in pread_chunks(fd, size, chunk):
        md5.update(data)
        sha.update(data)
        done += len(data)
    return Prefix(md5, sha, done)


def pread_chunks(fd: int, size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The first `size` bytes of an open file a chunk at a time, fewer if it is shorter
    (blocking: run it in a thread); pread leaves the descriptor's offset to its other readers."""
    done = 0
    while done < size:
        data = os.pread(fd, min(chunk, size - done), done)
        if not data:
            return
        yield data
        done += len(data)


def _give_back_when_done(taken: int, pair: tuple[Future[None], Future[None]]) -> None:
    """Return a batch's share of TRANSFER_BUFFERS once both threads are done with it (or it
    was cancelled), on whichever thread finishes last."""
    left = [len(pair)]
    lock = threading.Lock()

    def done(_: Future[None]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            TRANSFER_BUFFERS.give(taken)

    for future in pair:
        future.add_done_callback(done)


class DigestSink:
    """Consume a stream in order: `consume(batch)` (e.g. the file write) and MD5 on one thread,
    SHA-512 (and the signature's hash, if asked for) on another. `feed` applies back-pressure
    once PIPELINE_HIGH batches are queued."""

    def __init__(
        self,
        consume: Callable[[Sequence[Buffer]], None] | None = None,
        *,
        background: bool = False,
        resume: Prefix | None = None,
        signed_hash: str | None = None,
    ) -> None:
        """background: run the worker threads below the event loop's priority (imports, which
        nobody waits on byte by byte); a client's upload keeps normal priority.
        resume: continue after bytes already hashed (a transfer resumed after a link drop).
        signed_hash: a hashlib name (e.g. "sha256") also computed, for a signed image."""
        self._consume = consume
        self._signed = hashlib.new(signed_hash) if signed_hash else None
        if self._signed is not None and resume is not None and resume.size:
            raise ValueError("a resumed transfer cannot compute a signature hash")
        self._md5 = resume.md5 if resume else hashlib.md5()
        self._sha = resume.sha if resume else hashlib.sha512()
        self._size = resume.size if resume else 0
        self._first = lane(background)
        self._second = lane(background)
        self._pending: deque[tuple[Future[None], Future[None]]] = deque()

    def _md5_step(self, batch: Sequence[Buffer]) -> None:
        if self._consume is not None:
            self._consume(batch)
        update = self._md5.update
        for piece in batch:
            update(piece)

    def _sha_step(self, batch: Sequence[Buffer]) -> None:
        update = self._sha.update
        for piece in batch:
            update(piece)
        if self._signed is not None:
            update = self._signed.update
            for piece in batch:
                update(piece)

    async def feed(self, batch: Sequence[Buffer]) -> None:
        """Queue one batch (a list of buffers, hashed in order, never joined: no copy);
        the caller must not modify the buffers afterwards."""
        size = sum(len(piece) for piece in batch)
        if not size:
            return
        self._size += size
        taken = await TRANSFER_BUFFERS.take(size)
        pair = (self._first.submit(self._md5_step, batch), self._second.submit(self._sha_step, batch))
        _give_back_when_done(taken, pair)
        self._pending.append(pair)
        if len(self._pending) > PIPELINE_HIGH:
            await self._drain_to(PIPELINE_LOW)

    async def _drain_to(self, remaining: int) -> None:
        """Wait until at most `remaining` batches are queued. Each executor has one thread and
        runs its batches in order, so waiting on one pair means every older pair is done."""
        a, b = self._pending[len(self._pending) - remaining - 1]
        await asyncio.wrap_future(a)
        await asyncio.wrap_future(b)
        while len(self._pending) > remaining:
            first, second = self._pending.popleft()
            first.result()  # re-raise a worker's error (e.g. ENOSPC from the writer)
            second.result()

    async def close(self) -> Digest:
        """Wait for every queued batch and return the digest."""
        try:
            if self._pending:
                await self._drain_to(0)
        finally:
            self._shutdown()
        return Digest(
            size=self._size,
            checksum=self._md5.hexdigest(),
            os_hash_value=self._sha.hexdigest(),
            signed_hash=self._signed.digest() if self._signed is not None else None,
        )

    async def abort(self) -> None:
        """Drop the stream: wait for running steps (they may hold a file), ignore their errors."""
        while self._pending:
            a, b = self._pending.popleft()
            for fut in (a, b):
                fut.cancel()
                try:
                    await asyncio.wrap_future(fut)
                except (Exception, asyncio.CancelledError):
                    pass
        self._shutdown()

    def _shutdown(self) -> None:
        self._first.shutdown(wait=False)  # which also hands their buffers' memory back
        self._second.shutdown(wait=False)
