"""The inbox: a watched directory where images arrive on removable media ([inbox] dir).

What may be dropped there: a bundle, or a plain image file with a sidecar `<file>.json` (JSON:
name, disk_format, container_format, properties; optionally visibility, tags, min_disk,
min_ram). A bundle goes through the bundle import; a plain image through the normal import
workflow (staged, then a glance-direct import), so the plugins and the safety checks apply.

When a file is complete: once its size and mtime (and its sidecar's) have not changed for
[inbox] settle_seconds. Names starting with a dot or ending in `.partial` are never taken, so
a writer that pauses can write `disk.qcow2.partial` and rename it into place when done; names
ending in `.json` are sidecars, taken with their image.

A file's way: inbox/X → processing/X (claimed; its sidecar moves first) → imported → done/X,
or failed/X with failed/X.error saying why. Restart-safe: what is in processing/ at start is
imported again, and that is idempotent: bundle images already present with the same hash are
skipped, and a plain image's id is derived from its file (name, size, mtime), so an image the
crash interrupted is found again: active (it was finished) or queued (its import was undone
at start-up and runs again). Nothing is imported twice; nothing leaves processing/ unfinished.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import watchfiles

from appliance import wire
from appliance.auth import Context
from appliance.bundles.service import BundleService
from appliance.errors import ApplianceError, BadRequest, Conflict, NotFound
from appliance.images import ImageService
from appliance.imports import ImportService
from appliance.model import ACTIVE, DEACTIVATED, QUEUED, UPLOADING
from appliance.stores.files import file_chunks

log = logging.getLogger(__name__)

# Inbox imports act as the site's administrator (whoever can write to the inbox is one).
INBOX_USER = Context(user="inbox", project="admin", roles=frozenset({"admin", "member", "reader"}))
PROCESSING = "processing"
DONE = "done"
FAILED = "failed"
SIDECAR = ".json"
ERROR = ".error"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SIDECAR_KEYS = frozenset(
    {"name", "disk_format", "container_format", "properties", "visibility", "tags", "min_disk", "min_ram"}
)
MAX_SIDECAR_BYTES = 1 << 20
# Ids of plain images are derived from their file in this namespace (uuid5).
ID_NAMESPACE = uuid.UUID("8f0c6f4e-6a53-4a35-9b1e-3c3e0b2f7d21")

Watch = Callable[..., AsyncIterator[Any]]


@dataclass
class _Seen:
    signature: tuple[Any, ...]  # (size, mtime) of the file and of its sidecar
    since: float  # when that signature was first seen


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_size, st.st_mtime_ns


def _is_candidate(name: str) -> bool:
    return not (name.startswith(".") or name.endswith((".partial", SIDECAR, ERROR)))


def _free_name(directory: Path, name: str) -> str:
    """`name`, or name.1, name.2, ... if done/ or failed/ already holds one."""
    candidate, n = name, 0
    while (directory / candidate).exists() or (directory / (candidate + ERROR)).exists():
        n += 1
        candidate = "%s.%d" % (name, n)
    return candidate


def read_sidecar(path: Path, image_name: str) -> dict[str, Any]:
    """The image-create body a sidecar describes (properties flattened in, as Glance takes them)."""
    try:
        if path.stat().st_size > MAX_SIDECAR_BYTES:
            raise BadRequest("sidecar %s is larger than %d bytes" % (path.name, MAX_SIDECAR_BYTES))
        data = wire.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("sidecar %s is not valid JSON: %s" % (path.name, exc)) from None
    if not isinstance(data, dict):
        raise BadRequest("sidecar %s must hold a JSON object" % path.name)
    unknown = sorted(set(data) - SIDECAR_KEYS)
    if unknown:
        raise BadRequest(
            "sidecar %s: unknown key(s) %s (allowed: %s)"
            % (path.name, ", ".join(unknown), ", ".join(sorted(SIDECAR_KEYS)))
        )
    missing = [k for k in ("disk_format", "container_format") if k not in data]
    if missing:
        raise BadRequest("sidecar %s lacks %s" % (path.name, " and ".join(missing)))
    properties = data.pop("properties", {})
    if not isinstance(properties, dict):
        raise BadRequest("sidecar %s: properties must be a JSON object of strings" % path.name)
    clash = sorted(set(properties) & SIDECAR_KEYS)
    if clash:
        raise BadRequest("sidecar %s: %s belong beside properties, not in them" % (path.name, ", ".join(clash)))
    data.setdefault("name", image_name)
    return {**properties, **data}


class Inbox:
    def __init__(
        self,
        directory: Path,
        *,
        store: str | None,
        settle_seconds: float,
        bundles: BundleService,
        images: ImageService,
        imports: ImportService,
        clock: Callable[[], float] = time.monotonic,
        watch: Watch = watchfiles.awatch,
    ) -> None:
        self.dir = directory
        self.store = store or None
        self.settle_seconds = settle_seconds
        self._bundles = bundles
        self._images = images
        self._imports = imports
        self._clock = clock
        self._watch = watch
        self._seen: dict[str, _Seen] = {}

    @property
    def processing(self) -> Path:
        return self.dir / PROCESSING

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch the directory; every change, and every poll while files settle, runs a tick."""
        await asyncio.to_thread(self.prepare)
        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change at info
        log.info("inbox: watching %s (files are taken once unchanged for %s s)", self.dir, self.settle_seconds)
        poll_ms = int(min(1000, max(100, self.settle_seconds * 250)))
        await self._round()
        async for _changes in self._watch(
            self.dir, recursive=False, yield_on_timeout=True, rust_timeout=poll_ms, debounce=poll_ms
        ):
            await self._round()

    async def _round(self) -> None:
        try:
            await self.tick()
        except OSError as exc:  # e.g. the medium is full or went read-only: try again next round
            log.warning("inbox: %s", exc)

    def prepare(self) -> None:
        for sub in (PROCESSING, DONE, FAILED):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # A sidecar alone in processing/ whose image is neither there nor in the inbox was
        # left by a crash while finishing (its image already moved on).
        for sidecar in self.processing.glob("*" + SIDECAR):
            name = sidecar.name[: -len(SIDECAR)]
            if not (self.processing / name).exists() and not (self.dir / name).exists():
                target = _free_name(self.dir / FAILED, sidecar.name)
                (self.dir / FAILED / (target + ERROR)).write_text(
                    "sidecar without its image (a crash while finishing it)\n"
                )
                os.replace(sidecar, self.dir / FAILED / target)

    async def tick(self) -> int:
        """One round: finish what was claimed before a restart, then claim and import every
        file that has settled. Returns how many files were processed."""
        handled = 0
        for name in await asyncio.to_thread(self._claimed):
            await self._process(name)
            handled += 1
        for name in await asyncio.to_thread(self._settled):
            if await asyncio.to_thread(self._claim, name):
                await self._process(name)
                handled += 1
        return handled

    def _claimed(self) -> list[str]:
        with os.scandir(self.processing) as it:
            return sorted(e.name for e in it if e.is_file(follow_symlinks=False) and _is_candidate(e.name))

    def _settled(self) -> list[str]:
        """Files whose (and whose sidecar's) size and mtime have not changed for settle_seconds."""
        now = self._clock()
        with os.scandir(self.dir) as it:
            names = {e.name for e in it if e.is_file(follow_symlinks=False)}
        ready = []
        for name in sorted(n for n in names if _is_candidate(n)):
            signature = (_stat(self.dir / name), _stat(self.dir / (name + SIDECAR)))
            seen = self._seen.get(name)
            if seen is None or seen.signature != signature:
                self._seen[name] = _Seen(signature, now)  # new or still changing: the wait starts again
            elif now - seen.since >= self.settle_seconds and signature[0] is not None:
                ready.append(name)
        self._seen = {n: s for n, s in self._seen.items() if n in names}
        return ready

    def _claim(self, name: str) -> bool:
        try:
            if (self.dir / (name + SIDECAR)).exists():
                os.replace(self.dir / (name + SIDECAR), self.processing / (name + SIDECAR))
            os.replace(self.dir / name, self.processing / name)
        except FileNotFoundError:
            return False  # taken away meanwhile
        self._seen.pop(name, None)
        log.info("inbox: took %s", name)
        return True

    # -- one file -------------------------------------------------------------------------

    async def _process(self, name: str) -> None:
        path = self.processing / name
        try:
            if await asyncio.to_thread((self.processing / (name + SIDECAR)).exists):
                problem = await self._import_image(path)
            else:
                problem = await self._import_bundle(path)
        except ApplianceError as exc:
            problem = str(exc)
        except Exception as exc:  # a bug must not stop the inbox, nor retry the file forever
            log.exception("inbox: %s failed unexpectedly", name)
            problem = "unexpected error: %s: %s" % (type(exc).__name__, exc)
        await asyncio.to_thread(self._finish, name, problem)

    def _finish(self, name: str, problem: str) -> None:
        """Move the file (the commit point: while it is in processing/ it is redone after a
        restart), then its sidecar, to done/ or failed/ (with the .error written first)."""
        target_dir = self.dir / (FAILED if problem else DONE)
        target = _free_name(target_dir, name)
        if problem:
            (target_dir / (target + ERROR)).write_text(problem.rstrip("\n") + "\n")
        os.replace(self.processing / name, target_dir / target)
        sidecar = self.processing / (name + SIDECAR)
        if sidecar.exists():
            os.replace(sidecar, target_dir / (target + SIDECAR))
        if problem:
            log.warning("inbox: %s failed, moved to %s: %s", name, target_dir / target, problem.splitlines()[0])
        else:
            log.info("inbox: %s imported, moved to %s", name, target_dir / target)

    async def _import_bundle(self, path: Path) -> str:
        def magic() -> bytes:
            with open(path, "rb") as fh:
                return fh.read(len(ZSTD_MAGIC))

        if await asyncio.to_thread(magic) != ZSTD_MAGIC:
            raise BadRequest(
                "%s is not a bundle (it does not start with a zstandard frame) and has no sidecar %s%s: "
                "a plain image needs a JSON sidecar with disk_format and container_format"
                % (path.name, path.name, SIDECAR)
            )
        report = await self._bundles.import_file(INBOX_USER, path, self.store)
        return "" if report.ok else "\n".join(report.lines())

    async def _import_image(self, path: Path) -> str:
        body = await asyncio.to_thread(read_sidecar, path.with_name(path.name + SIDECAR), path.name)
        st = await asyncio.to_thread(path.stat)
        image_id = str(uuid.uuid5(ID_NAMESPACE, "%s\0%d\0%d" % (path.name, st.st_size, st.st_mtime_ns)))
        try:
            image = await self._images.get(INBOX_USER, image_id)
        except NotFound:
            image = await self._images.create(INBOX_USER, {**body, "id": image_id})
        if image.status in (ACTIVE, DEACTIVATED):
            log.info("inbox: %s was imported before the restart as image %s", path.name, image_id)
            return ""
        if image.status not in (QUEUED, UPLOADING):
            raise Conflict(
                "image %s (from %s) is %s; it must be queued to import it" % (image_id, path.name, image.status)
            )
        try:
            if image.status == QUEUED:  # UPLOADING: staged before a restart, the import did not start
                await self._imports.stage(INBOX_USER, image_id, file_chunks(path), st.st_size)
            request: dict[str, Any] = {"method": {"name": "glance-direct"}}
            if self.store:
                request["stores"] = [self.store]
            task = await self._imports.wait(await self._imports.start(INBOX_USER, image_id, request))
        except ApplianceError as exc:
            await self._forget(image_id)
            return "import refused: %s" % exc
        if task.status != "success":
            await self._forget(image_id)
            return "import failed: %s" % task.message
        log.info("inbox: %s imported as image %s", path.name, image_id)
        return ""

    async def _forget(self, image_id: str) -> None:
        """A failed file leaves no image behind (dropping it again starts afresh)."""
        try:
            await self._images.delete(INBOX_USER, image_id)
        except NotFound:
            pass
        except ApplianceError as exc:
            log.warning("inbox: could not remove image %s after its failed import: %s", image_id, exc)
