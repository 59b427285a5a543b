"""Filesystem store: one file per image, written as temp file → fsync → rename.

A partial file lives only under `.partial/` and never under an image's name, so a crash at
any point leaves either the old state or the complete new file.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from appliance.digest import Buffer, Digest, DigestSink
from appliance.errors import ApplianceError, StorageError, StorageFull, StoreReadOnly, TooLarge
from appliance.stores.base import StoreUsage
from appliance.stores.files import file_chunks, nonzero_runs, replace_durably
from appliance.stores.stream import feed_batches

log = logging.getLogger(__name__)
T = TypeVar("T")

PARTIAL_DIR = ".partial"
QUARANTINE_DIR = ".quarantine"
PULLS_DIR = ".pulls"
# Start writeback every so often so the final fsync does not wait for the whole image.
WRITEBACK_EVERY = 64 << 20
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    fn.restype = ctypes.c_int

    def start_writeback(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # advisory; errors are harmless

    return start_writeback


_start_writeback = _load_sync_file_range()


class _FileWriter:
    """Runs on a digest worker thread: appends batches to a file, skipping zero runs if thin."""

    def __init__(self, fd: int, thin: bool) -> None:
        self.fd = fd
        self.thin = thin
        self.offset = 0
        self._flushed = 0

    def write(self, batch: Sequence[Buffer]) -> None:
        for piece in batch:
            if self.thin:
                self._write_sparse(piece)
            else:
                self._write_all(memoryview(piece), self.offset)
            self.offset += len(piece)
        if _start_writeback is not None and self.offset - self._flushed >= WRITEBACK_EVERY:
            _start_writeback(self.fd, self._flushed, self.offset - self._flushed)
            self._flushed = self.offset

    def _write_all(self, view: memoryview, offset: int) -> None:
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def _write_sparse(self, piece: Buffer) -> None:
        data = piece if not isinstance(piece, memoryview) else piece.tobytes()
        view = memoryview(data)
        for start, stop in nonzero_runs(data):
            self._write_all(view[start:stop], self.offset + start)

    def finish(self) -> None:
        # Trailing zero runs were skipped: extend the file to its full length (a hole).
        os.ftruncate(self.fd, self.offset)
        os.fsync(self.fd)


class FilesystemStore:
    def __init__(
        self,
        name: str,
        path: Path,
        *,
        thin_provisioning: bool = False,
        description: str = "",
        require_mount: bool = False,
        min_free_bytes: int = 0,
    ) -> None:
        self.name = name
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.thin_provisioning = thin_provisioning
        self.description = description
        self.require_mount = require_mount
        self._partial = path / PARTIAL_DIR

    def prepare(self) -> None:
        """Create the directories if possible; a failure leaves the store read-only, not fatal."""
        if self.require_mount and not os.path.ismount(self.path):
            log.warning("store %s: %s is not mounted; the store is read-only until it is", self.name, self.path)
            return
        try:
            self._partial.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.warning(
                "store %s: cannot create %s: %s; the store is read-only", self.name, self._partial, exc.strerror
            )

    def read_only_reason(self) -> str:
        """Why writes are refused right now ("" if they are not). Checked on every write and
        report, so a store recovers by itself when its mount comes back or turns writable."""
        if self.require_mount and not os.path.ismount(self.path):
            return "%s is not a mount point (its filesystem is not mounted)" % self.path
        if not self.path.is_dir():
            return "directory %s does not exist" % self.path
        try:
            if os.statvfs(self.path).f_flag & os.ST_RDONLY:
                return "filesystem of %s is mounted read-only" % self.path
        except OSError as exc:
            return "cannot stat %s: %s" % (self.path, exc.strerror)
        if not os.access(self.path, os.W_OK):
            return "directory %s is not writable" % self.path
        return ""

    def usage(self) -> StoreUsage:
        reason = self.read_only_reason()
        total = free = used = 0
        try:
            st = os.statvfs(self.path)
            total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
            with os.scandir(self.path) as it:
                for entry in it:
                    if entry.is_file(follow_symlinks=False):
                        used += entry.stat(follow_symlinks=False).st_blocks * 512
        except OSError:
            pass
        return StoreUsage(self.name, total, free, used, bool(reason), reason)

    def ensure_room(self, need: int) -> None:
        """StorageFull unless `need` more bytes leave `min_free_bytes` free on the filesystem:
        writes stop before the disk is full, so the catalog (and the system) keep room."""
        if self.min_free_bytes <= 0:
            return  # no floor: a full filesystem answers ENOSPC, reported as StorageFull too
        try:
            st = os.statvfs(self.path)
        except OSError as exc:
            raise self._error(exc) from exc
        free = st.f_bavail * st.f_frsize
        if free - need < self.min_free_bytes:
            raise StorageFull(
                "Store %s has %d bytes free; %s would leave less than its floor of %d bytes "
                "(min_free_bytes). Delete images or free space on its filesystem."
                % (self.name, free, "%d more bytes" % need if need else "writing", self.min_free_bytes)
            )

    def location_url(self, image_id: str) -> str:
        return "file://%s" % (self.path.absolute() / image_id)

    def data_path(self, image_id: str) -> Path | None:
        p = self.path / image_id
        return p if p.is_file() else None

    kind = "file"

    def properties(self) -> dict[str, Any]:
        return {"datadir": str(self.path)}

    def holds(self, image_id: str) -> bool:
        return self.data_path(image_id) is not None

    async def read(self, image_id: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in file_chunks(self.path / image_id, start=start, stop=stop):
            yield chunk

    async def in_use(self, image_id: str) -> str:
        return ""  # nothing outside the appliance refers to a file

    def close(self) -> None:
        pass

    async def write(
        self,
        image_id: str,
        chunks: AsyncIterable[bytes],
        *,
        max_size: int,
        on_progress: Callable[[int], None] | None = None,
        background: bool = False,
        expected_size: int | None = None,
        signed_hash: str | None = None,
    ) -> Digest:
        """Stream `chunks` into the store under `image_id`. Returns the digest of what was
        written; on any error (including the source raising) nothing is left behind.
        `background` lowers the priority of the hashing threads (imports, not uploads).
        `expected_size`, when known, is checked against the free-space floor before anything
        is written; a stream of unknown size stops when it reaches the floor."""
        reason = self.read_only_reason()
        if reason:
            raise StoreReadOnly("Store %s is read-only: %s" % (self.name, reason))
        self.ensure_room(expected_size or 0)
        tmp = self._partial / ("%s.%s" % (image_id, secrets.token_hex(4)))
        try:
            await asyncio.to_thread(self._partial.mkdir, exist_ok=True)  # e.g. a mount that just came back
            fd = await asyncio.to_thread(os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except OSError as exc:
            raise self._error(exc) from exc
        writer = _FileWriter(fd, self.thin_provisioning)
        sink = DigestSink(writer.write, background=background, signed_hash=signed_hash)
        committed = False
        try:
            total = await feed_batches(
                chunks,
                sink,
                max_size=max_size,
                io=self._io,
                on_progress=on_progress,
                # What is accepted but not yet on disk (the pipeline holds a few batches).
                before_batch=lambda total: self.ensure_room(total - writer.offset),
            )
            digest = await self._io(sink.close())
            await self._io(asyncio.to_thread(self._commit, writer, tmp, self.path / image_id))
            committed = True
            if on_progress is not None:
                on_progress(total)
            log.info("store %s: wrote image %s (%d bytes)", self.name, image_id, digest.size)
            return digest
        finally:
            if not committed:
                await sink.abort()
                await asyncio.to_thread(self._discard, writer, tmp)

    async def open_prepared(self, image_id: str, size: int, *, max_size: int) -> Path:
        """A new partial file of `size` zero bytes for a writer outside the store (qemu-img
        converting straight into it), checked as write() checks and fully allocated unless the
        store is thin. Nothing shows under the image's name before commit_prepared(); a crash
        leaves only the partial file, which clean_partial() removes at the next start."""
        reason = self.read_only_reason()
        if reason:
            raise StoreReadOnly("Store %s is read-only: %s" % (self.name, reason))
        if size > max_size:
            raise TooLarge("Image exceeds the maximum upload size of %d bytes" % max_size)
        self.ensure_room(size)
        tmp = self._partial / ("%s.%s" % (image_id, secrets.token_hex(4)))

        def create() -> None:
            self._partial.mkdir(exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                if self.thin_provisioning:
                    os.ftruncate(fd, size)
                else:
                    os.posix_fallocate(fd, 0, size)  # the blocks a non-thin write would take
            finally:
                os.close(fd)

        try:
            await asyncio.to_thread(create)
        except OSError as exc:
            await asyncio.to_thread(tmp.unlink, True)
            raise self._error(exc) from exc
        return tmp

    async def written(self, tmp: Path, offset: int, length: int) -> None:
        """A range of a prepared file is final: start its writeback now, so the commit's fsync
        does not wait for the whole image."""
        if _start_writeback is None:
            return

        def start() -> None:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                assert _start_writeback is not None
                _start_writeback(fd, offset, length)
            finally:
                os.close(fd)

        await self._io(asyncio.to_thread(start))

    async def commit_prepared(self, tmp: Path, image_id: str) -> None:
        """Make a prepared file (open_prepared) the image's data: fsync, then rename."""

        def commit() -> None:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            replace_durably(tmp, self.path / image_id)

        await self._io(asyncio.to_thread(commit))
        log.info("store %s: wrote image %s (prepared)", self.name, image_id)

    async def discard_prepared(self, tmp: Path) -> None:
        await asyncio.to_thread(tmp.unlink, True)

    async def _io(self, step: Awaitable[T]) -> T:
        try:
            return await step
        except OSError as exc:
            raise self._error(exc) from exc

    def _commit(self, writer: _FileWriter, tmp: Path, final: Path) -> None:
        writer.finish()
        os.close(writer.fd)
        writer.fd = -1
        replace_durably(tmp, final)

    @staticmethod
    def _discard(writer: _FileWriter, tmp: Path) -> None:
        if writer.fd >= 0:
            os.close(writer.fd)
            writer.fd = -1
        tmp.unlink(missing_ok=True)

    def _error(self, exc: OSError) -> ApplianceError:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull("Store %s is full: %s" % (self.name, exc.strerror))
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreReadOnly("Store %s refused the write: %s" % (self.name, exc.strerror))
        return StorageError("Store %s could not write: %s" % (self.name, exc.strerror or exc))

    async def delete(self, image_id: str) -> bool:
        def unlink() -> bool:
            try:
                (self.path / image_id).unlink()
            except FileNotFoundError:
                return False
            return True

        return await asyncio.to_thread(unlink)

    async def purge(self, image_id: str) -> None:
        """Every file of an image here: its data, its pull in progress, its partial writes
        (a writer still running then fails its commit and removes nothing else)."""

        def remove() -> None:
            (self.path / image_id).unlink(missing_ok=True)
            self.pull_path(image_id).unlink(missing_ok=True)
            for directory in (self._partial, self.path / QUARANTINE_DIR):
                try:
                    with os.scandir(directory) as it:
                        names = [e.path for e in it if e.name.split(".", 1)[0] == image_id]
                except FileNotFoundError:
                    continue
                for name in names:
                    Path(name).unlink(missing_ok=True)

        await asyncio.to_thread(remove)

    def pull_ids(self) -> set[str]:
        """Images with a pull here (kept over restarts so that it resumes)."""
        try:
            with os.scandir(self.path / PULLS_DIR) as it:
                return {e.name for e in it if e.is_file(follow_symlinks=False)}
        except FileNotFoundError:
            return set()

    def pull_path(self, image_id: str) -> Path:
        """Where a pull from the hub writes before it is verified. Unlike `.partial/`, kept over
        a restart, so an interrupted pull resumes where it stopped (same filesystem: adopt()
        is a rename)."""
        return self.path / PULLS_DIR / image_id

    async def adopt(self, image_id: str, verified: Path) -> None:
        """Move a verified file (from pull_path) into place under the image's name."""
        reason = self.read_only_reason()
        if reason:
            raise StoreReadOnly("Store %s is read-only: %s" % (self.name, reason))

        try:
            await asyncio.to_thread(replace_durably, verified, self.path / image_id)
        except OSError as exc:
            raise self._error(exc) from exc

    def quarantine(self, image_id: str) -> Path | None:
        """Move a copy that failed verification aside (kept for inspection, never served)."""
        src = self.path / image_id
        if not src.is_file():
            return None
        qdir = self.path / QUARANTINE_DIR
        qdir.mkdir(exist_ok=True)
        dest = qdir / ("%s.%d" % (image_id, int(time.time())))
        os.replace(src, dest)
        return dest

    def clean_partial(self) -> int:
        """Remove leftovers of interrupted writes (called at start, before serving)."""
        removed = 0
        try:
            with os.scandir(self._partial) as it:
                for entry in it:
                    os.unlink(entry.path)
                    removed += 1
        except FileNotFoundError:
            pass
        if removed:
            log.info("store %s: removed %d partial file(s) of interrupted writes", self.name, removed)
        return removed

    def image_files(self) -> set[str]:
        try:
            with os.scandir(self.path) as it:
                return {e.name for e in it if e.is_file(follow_symlinks=False) and not e.name.startswith(".")}
        except FileNotFoundError:
            return set()
