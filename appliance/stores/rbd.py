"""Ceph RBD store, laid out as Glance's RBD driver does so that Nova and Cinder at the site clone
images copy-on-write: an RBD image named after the image id, a protected snapshot `snap`, the
location rbd://FSID/POOL/ID/snap.

An image without `snap` is a write in progress (or one that failed): the snapshot is taken and
protected only once every byte is written, so a reader that follows the location never sees a
partial image. Every librados/librbd call runs on a worker thread, never on the event loop;
the cluster's health is refreshed in the background and `usage()` only reads the last result.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import rados
import rbd

from appliance.digest import Buffer, Digest, DigestSink
from appliance.errors import ApplianceError, Conflict, StorageError, StorageFull, StoreReadOnly
from appliance.stores.base import StoreUsage
from appliance.stores.files import nonzero_runs
from appliance.stores.stream import feed_batches

log = logging.getLogger(__name__)

SNAP = "snap"
# A quarantined copy (the scrubber found it changed) is renamed ID.quarantine.TIME.
QUARANTINE_INFIX = ".quarantine."
# Bytes read per request.
READ_CHUNK = 4 << 20
# Asynchronous writes in flight per image (up to this many 4 MiB pieces; rbd import keeps 10
# object operations in flight, rbd_concurrent_management_ops).
INFLIGHT = 8
# A cluster that does not answer within this fails the operation (librados would wait forever):
# uploads fail and the store turns read-only instead of hanging.
OP_TIMEOUT = 10
# How long a dead writer's client stays blocklisted: it was shut down, so it never comes back.
FENCE_SECONDS = 3600
# How often usage() starts a background refresh, and how long a refresh may run before the
# store reports the cluster as not answering.
HEALTH_EVERY = 2.0
HEALTH_STALL = 3.0


def _is_image_id(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


class _RbdWriter:
    """Runs on a digest worker thread: writes batches into an open RBD image, skipping zero runs
    (RBD images are thin: what is never written reads as zeros), growing the image as it goes."""

    def __init__(self, cluster: Any, ioctx: Any, image: Any, size: int) -> None:
        self.cluster = cluster  # the write's own client (see RbdStore._create)
        self.address = str(cluster.get_addrs())  # to fence it off (RbdStore._remove_leftover)
        self.ioctx = ioctx
        self.image = image
        self.size = size
        self.offset = 0
        # The first failure, raised again at once for the batches already queued: each would
        # otherwise wait OP_TIMEOUT on a cluster that went away.
        self.failed: BaseException | None = None
        # Writes in flight (librbd's asynchronous writes): the cluster works on several objects
        # at once while this thread hashes the next batch.
        self.inflight: deque[Any] = deque()

    def write(self, batch: Sequence[Buffer]) -> None:
        if self.failed is not None:
            raise self.failed
        try:
            self._write(batch)
        except BaseException as exc:
            self.failed = exc
            raise

    def _write(self, batch: Sequence[Buffer]) -> None:
        end = self.offset + sum(len(p) for p in batch)
        if end > self.size:  # grow in large steps: a resize is a metadata update on the cluster
            self.size = max(end, self.size * 2)
            self.image.resize(self.size)
        for piece in batch:
            data = piece if isinstance(piece, bytes) else bytes(piece)
            for start, stop in nonzero_runs(data):
                if len(self.inflight) >= INFLIGHT:
                    self._wait_oldest()
                buf = data[start:stop]  # kept with its completion until the write is done
                self.inflight.append((self.image.aio_write(buf, self.offset + start, None), buf))
            self.offset += len(data)

    def _wait_oldest(self) -> None:
        done, _ = self.inflight.popleft()
        done.wait_for_complete_and_cb()
        code = done.get_return_value()
        if code < 0:
            raise OSError(-code, "RBD write failed: %s" % os.strerror(-code))

    def drain(self) -> None:
        """Wait for every write in flight, then raise the first failure: librbd reads their
        buffers until they complete, so none may be dropped earlier."""
        first: OSError | None = None
        while self.inflight:
            try:
                self._wait_oldest()
            except OSError as exc:
                first = first or exc
        if first is not None:
            raise first

    def finish(self) -> None:
        self.drain()
        if self.size != self.offset:
            self.image.resize(self.offset)
        self.image.flush()
        self.image.create_snap(SNAP)
        self.image.protect_snap(SNAP)


class RbdStore:
    def __init__(
        self,
        name: str,
        *,
        pool: str,
        user: str,
        conf_file: str,
        keyring: str = "",
        chunk_size_mib: int = 8,
        description: str = "",
    ) -> None:
        self.name = name
        self.pool = pool
        self.user = user
        self.conf_file = conf_file
        self.keyring = keyring
        self.order = (chunk_size_mib << 20).bit_length() - 1  # log2 of the RBD object size
        self.description = description
        self.fsid = ""
        self._cluster: Any = None
        self._lock = threading.Lock()  # guards _cluster, _usage, _leftovers
        self._usage = StoreUsage(name, 0, 0, 0, True, "not connected to the Ceph cluster yet")
        self._asking_since: float | None = None
        # Half-written images whose removal failed (the cluster went away), with their handle if
        # closing it failed too (its watch keeps the image busy): removed once the cluster is back.
        self._leftovers: dict[str, Any] = {}
        self._fence: dict[str, str] = {}  # image id -> address of its dead writer's client
        self._closed = threading.Event()
        self._health = threading.Thread(target=self._watch, name="rbd-health-%s" % name, daemon=True)

    # -- connection and health -------------------------------------------------------------

    def _connect(self) -> Any:
        with self._lock:
            if self._cluster is not None:
                return self._cluster
        cluster = self._new_client()
        with self._lock:
            if self._cluster is None:
                self._cluster, self.fsid = cluster, cluster.get_fsid()
                return cluster
        cluster.shutdown()  # another thread connected meanwhile
        return self._cluster

    def _new_client(self) -> Any:
        """A connected librados client (the fsid already read, so later reads are local)."""
        conf = {
            "client_mount_timeout": str(OP_TIMEOUT),
            "rados_mon_op_timeout": str(OP_TIMEOUT),
            "rados_osd_op_timeout": str(OP_TIMEOUT),
            # No writeback cache: with it, a write to a cluster that went away waits in the cache
            # for good instead of failing after OP_TIMEOUT; batches are large, flushed at the end.
            "rbd_cache": "false",
        }
        if self.keyring:
            conf["keyring"] = self.keyring
        cluster = rados.Rados(conffile=self.conf_file, rados_id=self.user, conf=conf)
        try:
            cluster.connect(timeout=OP_TIMEOUT)
            cluster.get_fsid()
        except BaseException:
            cluster.shutdown()
            raise
        return cluster

    def _ioctx(self) -> Any:
        try:
            return self._connect().open_ioctx(self.pool)
        except rados.ObjectNotFound:
            raise StorageError("Store %s: Ceph pool %s does not exist" % (self.name, self.pool)) from None

    def prepare(self) -> None:
        """First health check (before serving); a cluster that cannot be reached leaves the
        store read-only, not the daemon stopped."""
        self._refresh()
        if self._usage.read_only:
            log.warning("store %s: %s; the store is read-only until it answers", self.name, self._usage.reason)
        self._health.start()

    def _watch(self) -> None:
        while not self._closed.wait(HEALTH_EVERY):
            self._refresh()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            cluster, self._cluster = self._cluster, None
        if cluster is not None:
            cluster.shutdown()

    def _refresh(self) -> None:
        with self._lock:
            self._asking_since = time.monotonic()
        try:
            cluster = self._connect()
            stats = cluster.get_cluster_stats()
            with self._ioctx() as ioctx:
                used = int(ioctx.get_stats()["num_bytes"])
            usage = StoreUsage(
                self.name, int(stats["kb"]) << 10, int(stats["kb_avail"]) << 10, used, read_only=False, reason=""
            )
        except (rados.Error, rbd.Error, ApplianceError) as exc:
            reason = "Ceph cluster (pool %s, %s) unavailable: %s" % (self.pool, self.conf_file, exc)
            usage = StoreUsage(self.name, 0, 0, 0, read_only=True, reason=reason)
        with self._lock:
            if self._usage.read_only != usage.read_only:
                log.warning("store %s: %s", self.name, usage.reason or "Ceph cluster answers again; writable")
            self._usage = usage
            self._asking_since = None
            leftovers = list(self._leftovers) if not usage.read_only else []
        for image_id in leftovers:
            self._remove_leftover(image_id)

    def usage(self) -> StoreUsage:
        """The last health check of the health thread (never waits for the cluster); a question
        it has been waiting on for long means the cluster does not answer."""
        now = time.monotonic()
        with self._lock:
            usage, since = self._usage, self._asking_since
        if since is not None and now - since > HEALTH_STALL:
            reason = "Ceph cluster (pool %s) has not answered for %d s" % (self.pool, now - since)
            return StoreUsage(self.name, usage.total_bytes, usage.free_bytes, usage.used_bytes, True, reason)
        return usage

    def read_only_reason(self) -> str:
        return self.usage().reason

    kind = "rbd"

    def properties(self) -> dict[str, Any]:
        return {"chunk_size": 1 << self.order, "pool": self.pool, "thin_provisioning": True}

    def location_url(self, image_id: str) -> str:
        return "rbd://%s/%s/%s/%s" % (self.fsid, self.pool, image_id, SNAP)

    def data_path(self, image_id: str) -> Path | None:
        return None  # no local file: read() streams the bytes

    # -- writes -------------------------------------------------------------------------------

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
        """Stream `chunks` into a new RBD image `image_id`, then snapshot and protect it. On any
        error (the source's included) the image is removed: no half image is left behind."""
        reason = self.read_only_reason()
        if reason:
            raise StoreReadOnly("Store %s is read-only: %s" % (self.name, reason))
        writer = await self._io(asyncio.to_thread(self._create, image_id, expected_size or 0))
        sink = DigestSink(writer.write, background=background, signed_hash=signed_hash)
        committed = False
        try:
            total = await feed_batches(chunks, sink, max_size=max_size, io=self._io, on_progress=on_progress)
            digest: Digest = await self._io(sink.close())
            await self._io(asyncio.to_thread(self._commit, writer))
            committed = True
            if on_progress is not None:
                on_progress(total)
            log.info("store %s: wrote image %s (%d bytes)", self.name, image_id, digest.size)
            return digest
        finally:
            if not committed:
                await sink.abort()
                await asyncio.to_thread(self._discard, writer, image_id)

    def _create(self, image_id: str, size: int) -> _RbdWriter:
        """A new image open for writing on a librados client of its own: if the cluster goes
        away mid-write, closing the image fails and its watch would keep it busy (unremovable)
        for as long as the client lives; shutting down the write's own client ends the watch
        without touching other transfers."""
        if image_id in self._leftovers:  # an earlier failed write of the same image
            self._remove_leftover(image_id)
        cluster = self._new_client()
        try:
            ioctx = cluster.open_ioctx(self.pool)
        except BaseException as exc:
            cluster.shutdown()
            if isinstance(exc, rados.ObjectNotFound):
                raise StorageError("Store %s: Ceph pool %s does not exist" % (self.name, self.pool)) from None
            raise
        try:
            rbd.RBD().create(ioctx, image_id, size, order=self.order, old_format=False)
            return _RbdWriter(cluster, ioctx, rbd.Image(ioctx, image_id), size)
        except rbd.ImageExists:
            ioctx.close()
            cluster.shutdown()
            raise Conflict("Store %s already holds an RBD image %s" % (self.name, image_id)) from None
        except BaseException:
            ioctx.close()
            cluster.shutdown()
            # The create (or the open after it) timed out with the cluster gone: the image may
            # exist all the same, and nothing else would remove it. The health thread does, once
            # the cluster answers (an image that was never made is simply not found).
            with self._lock:
                self._leftovers.setdefault(image_id, None)
            raise

    @staticmethod
    def _commit(writer: _RbdWriter) -> None:
        writer.finish()
        writer.image.close()
        writer.ioctx.close()
        writer.cluster.shutdown()

    def _discard(self, writer: _RbdWriter, image_id: str) -> None:
        try:
            writer.drain()  # their buffers must outlive them
        except OSError:
            pass
        with self._lock:
            self._leftovers[image_id] = writer
        if writer.failed is None or not isinstance(writer.failed, (rbd.Error, rados.Error, OSError)):
            self._remove_leftover(image_id)  # else the cluster is likely gone: the health thread retries

    def _remove_leftover(self, image_id: str) -> None:
        """Remove a half-written image; if the cluster does not answer, it stays listed and the
        next good health check removes it."""
        writer = self._leftovers.get(image_id)
        if writer is not None:  # its open handle's watch keeps the image busy: end its client
            with contextlib.suppress(rbd.Error, rados.Error):
                writer.image.close()
            writer.ioctx.close()  # before the client: an ioctx outliving it would be freed after it
            writer.cluster.shutdown()
            with self._lock:
                self._leftovers[image_id] = None
                if isinstance(writer.failed, (rbd.Error, rados.Error, OSError)):
                    self._fence[image_id] = writer.address
        try:
            fence = self._fence.get(image_id)
            if fence:
                # The write's client lost the cluster mid-write: an operation it had sent (seen:
                # a watch ping on the image header) can stay stuck in the OSD after the cluster
                # returns, and every open of the image times out behind it. Blocklisting the
                # dead client makes the OSDs drop what it left, as librbd does to a lock owner
                # that stopped answering ("profile rbd" allows it).
                try:
                    self._connect().blocklist_add(fence, FENCE_SECONDS)
                except (rados.PermissionError, rados.PermissionDeniedError, rados.InvalidArgumentError) as exc:
                    log.warning("store %s: cannot blocklist the dead writer %s: %s", self.name, fence, exc)
                with self._lock:
                    self._fence.pop(image_id, None)
            with self._ioctx() as ioctx:
                try:
                    self._remove(ioctx, image_id)
                except rbd.ImageNotFound:  # or a create cut short: listed, with no header to open
                    with contextlib.suppress(rbd.ImageNotFound):
                        rbd.RBD().remove(ioctx, image_id)
        except (rbd.Error, rados.Error, ApplianceError) as exc:
            log.warning("store %s: half-written image %s not removed yet: %s", self.name, image_id, exc)
            return
        with self._lock:
            self._leftovers.pop(image_id, None)
        log.info("store %s: removed half-written image %s", self.name, image_id)

    async def _io(self, step: Any) -> Any:
        try:
            return await step
        except (rbd.Error, rados.Error, OSError) as exc:  # OSError: an asynchronous write's result
            raise self._error(exc) from exc

    def _error(self, exc: Exception) -> ApplianceError:
        code = getattr(exc, "errno", None)
        if code in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull("Store %s (Ceph pool %s) is full: %s" % (self.name, self.pool, exc))
        if code in (errno.EROFS, errno.EACCES, errno.EPERM):
            return StoreReadOnly("Store %s (Ceph pool %s) refused the write: %s" % (self.name, self.pool, exc))
        return StorageError("Store %s (Ceph pool %s) failed: %s" % (self.name, self.pool, exc))

    # -- reads --------------------------------------------------------------------------------

    def holds(self, image_id: str) -> bool:
        """Blocking: run it in a thread."""
        try:
            with self._ioctx() as ioctx, rbd.Image(ioctx, image_id, snapshot=SNAP, read_only=True):
                return True
        except rbd.ImageNotFound:
            return False
        except (rbd.Error, rados.Error) as exc:  # the cluster does not answer: a domain error, not a crash
            raise self._error(exc) from exc

    async def read(self, image_id: str, start: int = 0, stop: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of the committed image (its snapshot), [start, stop)."""
        try:
            ioctx = await asyncio.to_thread(self._ioctx)
            image = await asyncio.to_thread(rbd.Image, ioctx, image_id, snapshot=SNAP, read_only=True)
        except (rbd.Error, rados.Error) as exc:
            raise self._error(exc) from exc
        try:
            size = await asyncio.to_thread(image.size)
            end = size if stop is None else min(stop, size)
            offset = start
            while offset < end:
                n = min(READ_CHUNK, end - offset)
                yield await self._io(asyncio.to_thread(image.read, offset, n))
                offset += n
        finally:
            await asyncio.to_thread(image.close)
            await asyncio.to_thread(ioctx.close)

    # -- deletes ------------------------------------------------------------------------------

    def _in_use(self, ioctx: Any, image_id: str) -> str:
        try:
            with rbd.Image(ioctx, image_id, snapshot=SNAP, read_only=True) as image:
                children = list(image.list_children2())
        except rbd.ImageNotFound:
            return ""
        if not children:
            return ""
        names = ", ".join("%s/%s" % (c["pool"], c["image"]) for c in children[:5])
        return "RBD image %s/%s@%s has clones (%s)" % (self.pool, image_id, SNAP, names)

    async def in_use(self, image_id: str) -> str:
        """Why the image cannot be deleted here ("" if it can): RBD clones of its snapshot
        (Nova's and Cinder's disks) depend on it."""

        def check() -> str:
            with self._ioctx() as ioctx:
                return self._in_use(ioctx, image_id)

        return str(await self._io(asyncio.to_thread(check)))

    def _remove(self, ioctx: Any, image_id: str) -> None:
        with rbd.Image(ioctx, image_id) as image:
            for snap in list(image.list_snaps()):
                if image.is_protected_snap(snap["name"]):
                    try:
                        image.unprotect_snap(snap["name"])
                    except rbd.ImageBusy:
                        raise Conflict(
                            "The image cannot be deleted because it is in use through the backend store "
                            "outside of Glance: %s" % self._in_use(ioctx, image_id)
                        ) from None
                image.remove_snap(snap["name"])
        rbd.RBD().remove(ioctx, image_id)

    async def delete(self, image_id: str) -> bool:
        def remove() -> bool:
            with self._ioctx() as ioctx:
                try:
                    self._remove(ioctx, image_id)
                except rbd.ImageNotFound:
                    return False
                return True

        removed = bool(await self._io(asyncio.to_thread(remove)))
        if removed:
            log.info("store %s: removed RBD image %s/%s", self.name, self.pool, image_id)
        return removed

    async def purge(self, image_id: str) -> None:
        """The image was deleted: its RBD image and its quarantined ones go."""
        try:
            quarantined = await self._io(asyncio.to_thread(self._quarantined, image_id))
        except ApplianceError as exc:
            quarantined = []
            log.warning("store %s: cannot look for quarantined copies of %s: %s", self.name, image_id, exc)
        for name in [image_id, *quarantined]:
            try:
                await self.delete(name)
            except Conflict as exc:  # clones appeared after the check: the image stays for them
                log.warning("store %s: image %s not removed: %s", self.name, name, exc)
            except ApplianceError as exc:
                if name == image_id:
                    with self._lock:
                        self._leftovers.setdefault(image_id, None)
                log.warning("store %s: image %s not removed: %s", self.name, name, exc)

    def quarantine(self, image_id: str) -> str | None:
        """Rename a copy that failed verification aside (`ID.quarantine.TIME`, with its snapshot
        and any clones of it): never served again, kept for inspection, and the image's name is
        free for a fresh copy. Blocking."""
        dest = "%s%s%d" % (image_id, QUARANTINE_INFIX, int(time.time()))
        try:
            with self._ioctx() as ioctx:
                rbd.RBD().rename(ioctx, image_id, dest)
        except rbd.ImageNotFound:
            return None
        except (rbd.Error, rados.Error) as exc:
            raise self._error(exc) from exc
        log.warning("store %s: RBD image %s/%s renamed to %s (quarantined)", self.name, self.pool, image_id, dest)
        return "%s/%s" % (self.pool, dest)

    def _quarantined(self, image_id: str) -> list[str]:
        with self._ioctx() as ioctx:
            return [n for n in rbd.RBD().list(ioctx) if n.startswith(image_id + QUARANTINE_INFIX)]

    def clean_partial(self) -> int:
        """Remove half-written images (an image id without `snap`) left by a crash; called at
        start, before serving. Blocking."""
        removed = 0
        try:
            with self._ioctx() as ioctx:
                for name in rbd.RBD().list(ioctx):
                    if not _is_image_id(name):
                        continue
                    with rbd.Image(ioctx, name, read_only=True) as image:
                        if any(s["name"] == SNAP for s in image.list_snaps()):
                            continue
                    self._remove(ioctx, name)
                    removed += 1
        except (rbd.Error, rados.Error, ApplianceError) as exc:
            log.warning("store %s: cannot look for half-written images: %s", self.name, exc)
        if removed:
            log.info("store %s: removed %d half-written RBD image(s)", self.name, removed)
        return removed

    def image_files(self) -> set[str]:
        """Committed images of this store (recovery removes those no record names); an image
        with clones is left out, it is in use whatever the catalog says. Blocking."""
        try:
            with self._ioctx() as ioctx:
                return {n for n in rbd.RBD().list(ioctx) if _is_image_id(n) and not self._in_use(ioctx, n)}
        except (rbd.Error, rados.Error, ApplianceError) as exc:
            log.warning("store %s: cannot list images: %s", self.name, exc)
            return set()

    def names(self) -> set[str]:
        """Every RBD image of the pool (the image cache keeps its own there). Blocking."""
        try:
            with self._ioctx() as ioctx:
                return set(rbd.RBD().list(ioctx))
        except (rbd.Error, rados.Error) as exc:
            raise self._error(exc) from exc

    def pull_ids(self) -> set[str]:
        return set()  # pulls from the hub are staged on a filesystem store
