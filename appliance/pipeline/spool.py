"""Spool a download to a work file while it arrives, decoding a GZIP stream on the way.

When image_decompression is the first import step, a GZIP download is decompressed as its
bytes arrive (the step's own decoder and bomb limits), so the archive is never written out
and read back: downloading and decompressing overlap. ZIP and LHA need their whole archive
(the member list sits at the end, or the decoder seeks), so they are written as they are and
the step unpacks them afterwards, as it always did.

One worker thread writes (and decodes); the event loop only hands it batches, at most
`IN_FLIGHT` of them at a time, so memory per download is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import AsyncIterable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from appliance.pipeline.steps.decompress import Decompress, GunzipStream, OutputSink, archive_kind
from appliance.workers import lane

log = logging.getLogger(__name__)

BATCH_BYTES = 1 << 20
IN_FLIGHT = 8  # batches queued for the writer thread: ~8 MiB per download
_HEAD = 16  # enough of the start to tell the archive kind


@dataclass(frozen=True)
class Spooled:
    path: Path
    size: int  # bytes in the file
    received: int  # bytes downloaded
    decoded: str | None  # the archive kind decoded on the way ("gzip"), or None: as received


class _RoomChecked:
    """The decoder's output file: each write checks the free-space floor first."""

    def __init__(self, fh: BinaryIO, ensure_room: Callable[[int], None]) -> None:
        self._fh = fh
        self._ensure_room = ensure_room

    def write(self, data: bytes) -> int:
        self._ensure_room(len(data))
        return self._fh.write(data)


class _Writer:
    """Lives on the worker thread: detects the kind from the first batch, then writes."""

    def __init__(
        self,
        path: Path,
        decompress: Decompress | None,
        expected: int | None,
        ensure_room: Callable[[int], None],
        stop: threading.Event,
    ) -> None:
        self._path = path
        self._decompress = decompress
        self._expected = expected or 0
        self._ensure_room = ensure_room
        self._stop = stop
        self._fh: BinaryIO | None = None
        self._sink: OutputSink | None = None
        self._gunzip: GunzipStream | None = None
        self.received = 0
        self.size = 0

    def write(self, batch: list[bytes]) -> None:
        if self._fh is None:
            self._open(b"".join(batch)[:_HEAD])
        assert self._fh is not None
        self.received += sum(len(b) for b in batch)
        if self._gunzip is not None and self._sink is not None:
            self._sink.archive_grew(max(self._expected, self.received))
            for piece in batch:
                self._gunzip.feed(piece)
            self.size = self._sink.written
        else:
            if self._stop.is_set():
                return
            n = sum(len(b) for b in batch)
            self._ensure_room(n)
            self._fh.writelines(batch)
            self.size += n

    def _open(self, head: bytes) -> None:
        self._fh = open(self._path, "wb")  # closed in close()
        if self._decompress is not None and archive_kind(head) == "gzip":
            self._sink = OutputSink(
                _RoomChecked(self._fh, self._ensure_room),
                self._decompress.max_output_bytes,
                self._decompress.max_ratio,
                max(self._expected, len(head)),
                self._stop,
            )
            self._gunzip = GunzipStream(self._sink)

    @property
    def decoded(self) -> str | None:
        return "gzip" if self._gunzip is not None else None

    def finish(self) -> None:
        if self._fh is None:
            self._fh = open(self._path, "wb")  # an empty download: an empty file
        if self._gunzip is not None and self._sink is not None:
            self._gunzip.finish()
            self._sink.close()
            self.size = self._sink.written
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


async def spool(
    chunks: AsyncIterable[bytes],
    path: Path,
    *,
    decompress: Decompress | None,
    expected: int | None,
    ensure_room: Callable[[int], None],
    on_progress: Callable[[int], None],
) -> Spooled:
    """Write `chunks` to `path`; a GZIP stream is decoded when `decompress` is given (the
    image_decompression step, first in the plugin order). `expected` is the announced length
    (the expansion ratio is taken against it, or against what arrived when it is unknown).
    Raises what the source raises, ImportFailed for a refused archive, StorageFull."""
    stop = threading.Event()
    writer = _Writer(path, decompress, expected, ensure_room, stop)
    pool = lane(background=True)
    pending: deque[Future[None]] = deque()
    batch: list[bytes] = []
    batched = received = 0

    async def settle(keep: int) -> None:
        while len(pending) > keep or (pending and pending[0].done()):
            await asyncio.wrap_future(pending.popleft())  # re-raises the writer's error

    try:
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            received += len(chunk)
            if batched >= BATCH_BYTES:
                pending.append(pool.submit(writer.write, batch))
                batch, batched = [], 0
                on_progress(received)
                await settle(IN_FLIGHT)
        if batch:
            pending.append(pool.submit(writer.write, batch))
        pending.append(pool.submit(writer.finish))
        await settle(0)
        on_progress(received)
    except BaseException:
        stop.set()  # the thread stops at its next write; wait for it before the file goes
        for fut in pending:
            fut.cancel()
        await asyncio.shield(asyncio.to_thread(_quiesce, list(pending)))
        raise
    finally:
        await asyncio.shield(asyncio.wrap_future(pool.submit(writer.close)))
        pool.shutdown(wait=False)
    if writer.decoded:
        log.debug("%s: decoded %s while downloading, %d -> %d bytes", path, writer.decoded, received, writer.size)
    return Spooled(path=path, size=writer.size, received=received, decoded=writer.decoded)


def _quiesce(futures: list[Future[None]]) -> None:
    for fut in futures:
        try:
            fut.result()
        except BaseException:  # the first error is already propagating
            pass
