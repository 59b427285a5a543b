"""FileFollower: MD5 and SHA-512 of a file while another process is still writing it.

The writer (qemu-img, one range after the other) says how far the file is final with
`advance(n)`; two worker threads each read up to that point, MD5 and the format inspection on
one, SHA-512 (and a signature's hash) on the other, so on two cores they run beside the
conversion and beside each other, and the file is read once for all of them. The event loop
never touches the bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from appliance.digest import Digest
from appliance.errors import FormatRejected
from appliance.formats import FormatInspector, Inspection
from appliance.workers import lane

READ_BYTES = 4 << 20


class _Stopped(Exception):
    """The follower was aborted."""


class FileFollower:
    def __init__(
        self,
        path: Path,
        inspector: FormatInspector,
        *,
        signed_hash: str | None = None,
        on_progress: Callable[[int], None],
    ) -> None:
        """on_progress(bytes hashed) runs on a worker thread: keep it to a plain assignment."""
        self._inspector = inspector
        self._refused: FormatRejected | None = None
        self._path = path
        self._cond = threading.Condition()
        self._final = 0  # bytes of the file that are final
        self._ended = False
        self._stopped = False
        self._md5 = hashlib.md5()
        self._sha = hashlib.sha512()
        self._signed = hashlib.new(signed_hash) if signed_hash else None
        self._on_progress = on_progress
        self._lanes = (lane(background=True), lane(background=True))
        self._futures: list[Future[int]] = [
            self._lanes[0].submit(self._follow, (self._md5.update, self._inspect), True),
            self._lanes[1].submit(
                self._follow,
                (self._sha.update,) if self._signed is None else (self._sha.update, self._signed.update),
                False,
            ),
        ]

    def advance(self, final: int) -> None:
        with self._cond:
            self._final = max(self._final, final)
            self._cond.notify_all()

    def _inspect(self, data: memoryview) -> None:
        if self._refused is None:  # keep hashing to the end: finish() says why it was refused
            try:
                self._inspector.feed(data)  # copies what it keeps: the buffer is reused
            except FormatRejected as exc:
                self._refused = exc

    def _follow(self, consumers: tuple[Callable[[memoryview], object], ...], report: bool) -> int:
        done = 0
        # One buffer, read into again and again: a fresh 4 MiB bytes object per read costs
        # page faults that took as long as the MD5 itself.
        buf = bytearray(READ_BYTES)
        view = memoryview(buf)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            while True:
                with self._cond:
                    while not self._stopped and done >= self._final and not self._ended:
                        self._cond.wait()
                    if self._stopped:
                        raise _Stopped
                    final = self._final
                    if done >= final:  # ended, and everything hashed
                        return done
                n = os.preadv(fd, [view[: min(READ_BYTES, final - done)]], done)
                if not n:
                    raise OSError("%s is shorter than the %d bytes written to it" % (self._path, final))
                for consume in consumers:
                    consume(view[:n])
                done += n
                if report:
                    self._on_progress(done)
        finally:
            view.release()
            os.close(fd)

    async def finish(self, size: int) -> tuple[Digest, Inspection]:
        """The file is complete at `size` bytes: the digest and the inspection of its bytes
        once both threads got there. Raises FormatRejected when the inspection refused them."""
        with self._cond:
            self._final = size
            self._ended = True
            self._cond.notify_all()
        try:
            sizes = [await asyncio.wrap_future(f) for f in self._futures]
        finally:
            self._release()
        assert sizes == [size, size], sizes
        if self._refused is not None:
            raise self._refused
        inspection = self._inspector.finish()
        digest = Digest(
            size=size,
            checksum=self._md5.hexdigest(),
            os_hash_value=self._sha.hexdigest(),
            signed_hash=self._signed.digest() if self._signed is not None else None,
        )
        return digest, inspection

    async def abort(self) -> None:
        """Stop both threads and wait for them (they hold the file open)."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for fut in self._futures:
            try:
                await asyncio.shield(asyncio.wrap_future(fut))
            except Exception:  # stopped, or the file went: the abort's cause is what matters
                pass
        self._release()

    def _release(self) -> None:
        for worker in self._lanes:
            worker.shutdown(wait=False)
