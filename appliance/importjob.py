"""ImportRunner: the running of one import, as a background job the ImportService starts.

Acquire the data (staging file, web download, hub download or an existing store copy) →
plugins in the configured order → final inspection → one verified write per target store,
activating the image after the first (or, all-stores-must-succeed, the last); a failure puts
the image back as it was and says why in the task. Also the copy of an edge image to the hub.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog, ListEdit
from appliance.clock import timestamp
from appliance.config import Config
from appliance.digest import Digest, verify
from appliance.errors import ApplianceError, TooLarge
from appliance.formats import Inspection, inspect_file, introspected_properties
from appliance.hub.records import HUB_STORE
from appliance.hublink import HubLink
from appliance.images import ImageService
from appliance.model import FAILED_IMPORT, IMPORTING, IMPORTING_TO, QUEUED, Image, Location, Task
from appliance.pipeline.base import ImportFailed, ImportStep, StagedImage, StepContext
from appliance.pipeline.direct import DirectWrite, convert_into_store
from appliance.pipeline.spool import spool
from appliance.pipeline.steps.convert import Convert
from appliance.pipeline.steps.decompress import Decompress
from appliance.pipeline.steps.inject import InjectMetadata
from appliance.pipeline.timing import StageTimer
from appliance.quotas import STAGE_TOTAL
from appliance.signature import Signer
from appliance.stores.base import ImageStore
from appliance.stores.files import file_chunks
from appliance.stores.filesystem import FilesystemStore
from appliance.urifilter import UriFilter
from appliance.webdownload import open_download

log = logging.getLogger(__name__)

READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportRequest:
    method: str
    uri: str | None
    stores: tuple[str, ...]
    all_stores_must_succeed: bool
    glance_image_id: str | None = None  # glance-download: the hub image to import


async def _save(
    chunks: AsyncIterator[bytes], path: Path, on_progress: Callable[[int], None], ensure_room: Callable[[int], None]
) -> int:
    """Write a download to a scratch file. No hashing here: the data is hashed once, as it
    goes into the stores, after the plugins have run. `ensure_room(n)` raises if writing n
    more bytes would cross the free-space floor."""
    fh = await asyncio.to_thread(open, path, "wb")
    try:
        total = batched = 0
        batch: list[bytes] = []
        async for chunk in chunks:
            batch.append(chunk)
            batched += len(chunk)
            total += len(chunk)
            if batched >= READ_CHUNK:
                ensure_room(batched)
                await asyncio.to_thread(fh.writelines, batch)
                batch, batched = [], 0
                on_progress(total)
        await asyncio.to_thread(fh.writelines, batch)
        on_progress(total)
        return total
    finally:
        await asyncio.to_thread(fh.close)


class ImportRunner:
    """Runs imports the service has validated and started; shares its staging area, and keeps
    each running task's progress."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        stores: dict[str, ImageStore],
        images: ImageService,
        staging: FilesystemStore,
        staging_root: Path,
        steps: Sequence[ImportStep],
        uri_filter: UriFilter,
        observe_plugin: Callable[[str, float], None],
        hub: HubLink | None,
    ) -> None:
        self.config = config
        self.steps = list(steps)
        self.uri_filter = uri_filter
        self._catalog = catalog
        self._stores = stores
        self._images = images
        self._staging = staging
        self._staging_root = staging_root
        self._observe_plugin = observe_plugin
        self._hub = hub
        # task id → (bytes done, bytes total or None) while a task runs; persisted at the end.
        self.progress: dict[str, tuple[int, int | None]] = {}

    def reconfigure(self, config: Config, steps: Sequence[ImportStep], uri_filter: UriFilter) -> None:
        self.config = config
        self.steps = list(steps)
        self.uri_filter = uri_filter

    def now(self) -> str:
        return timestamp(self._images.clock.now())  # the image records' clock

    async def forget_local_progress(self, image_id: str) -> None:
        """No import of this hub runs for the image any more: its stores leave the progress list;
        edge sites still copying stay in it until they report."""
        await self._catalog.edit_list_properties(
            image_id, [ListEdit(IMPORTING_TO, remove=tuple(self._stores), drop_empty=True)], self.now()
        )

    async def push(self, task: Task, image: Image, holder: ImageStore) -> None:
        assert self._hub is not None
        try:
            await self._hub.push(image, holder)
        except asyncio.CancelledError:
            if self._images.work.deleting(image.id):
                await asyncio.shield(self.deleted(task))
            raise
        except ApplianceError as exc:
            if self._images.work.deleting(image.id) or not await self._catalog.has_image(image.id):
                await self.deleted(task)
                return
            await self._catalog.edit_list_properties(
                image.id,
                [ListEdit(IMPORTING_TO, remove=(HUB_STORE,)), ListEdit(FAILED_IMPORT, add=(HUB_STORE,))],
                self.now(),
            )
            message = "Copy to the hub (%s) failed: %s" % (HUB_STORE, exc)
            await self._catalog.update_task(task.id, self.now(), status="failure", message=message)
            log.warning("image %s: %s", image.id, message)
            return
        await self._catalog.edit_list_properties(image.id, [ListEdit(IMPORTING_TO, remove=(HUB_STORE,))], self.now())
        await self._catalog.update_task(
            task.id,
            self.now(),
            status="success",
            result={"image_id": image.id},
            bytes_done=image.size or 0,
            bytes_total=image.size,
        )

    def local_copy(self, image: Image) -> Path | None:
        return next(
            (
                p
                for s in image.stores
                if s in self._stores
                for p in [self._stores[s].data_path(image.id)]
                if p is not None
            ),
            None,
        )

    async def run(self, task: Task, image: Image, request: ImportRequest, ctx: Context) -> None:
        try:
            await self._run(task, image, request, ctx)
        except asyncio.CancelledError:
            # Whenever the delete's cancel lands (in the steps, or in the clean-up and the task's
            # last write after them), the task ends as failed, never left processing.
            if self._images.work.deleting(image.id):  # the delete removes the files
                await asyncio.shield(self.deleted(task))
            # Else the daemon is stopping: recover() fails the task cleanly on the next start.
            raise

    async def _run(self, task: Task, image: Image, request: ImportRequest, ctx: Context) -> None:
        work = self._staging_root / "work" / task.id
        timer = StageTimer()
        try:
            await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
            message = await self._execute(task, image, request, ctx, work, timer)
        except ApplianceError as exc:
            message = str(exc)
        except Exception as exc:  # a bug must still leave a clear task message and a sane image
            log.exception("image %s: import crashed", image.id)
            message = "Import failed unexpectedly: %s: %s" % (type(exc).__name__, exc)
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
            done, total = self.progress.pop(task.id, (0, None))
        if self._images.work.deleting(image.id) or not await self._catalog.has_image(image.id):
            await self.deleted(task)  # deleted as the import ended: the delete removes the files
        elif message:
            await self._fail(task, image, request, message)
        else:
            await self._catalog.update_task(
                task.id,
                self.now(),
                status="success",
                # Glance's result is a free JSON object; where the time went is ours to add.
                result={"image_id": image.id, "stage_seconds": timer.report()},
                bytes_done=done,
                bytes_total=total if total is not None else done,
            )
            log.info("image %s: import finished (seconds per stage: %s)", image.id, timer.report())

    async def deleted(self, task: Task) -> None:
        message = "Import stopped: image %s was deleted" % task.image_id
        await self._catalog.update_task(task.id, self.now(), status="failure", message=message)
        log.info("image %s: %s", task.image_id, message)

    async def _fail(self, task: Task, image: Image, request: ImportRequest, message: str) -> None:
        current = await self._catalog.get_image(image.id)
        if request.method != "copy-image" and current.status == IMPORTING:
            # Nothing became active: remove what was written, back to queued.
            for store_name in current.stores:
                await self._stores[store_name].delete(image.id)
                await self._catalog.remove_location(image.id, store_name, self.now(), keep_last=False)
            await self._catalog.update_image(
                image.id, columns={"status": QUEUED}, remove_properties=[IMPORTING_TO], updated_at=self.now()
            )
        else:
            await self.forget_local_progress(image.id)
        await self._staging.delete(image.id)
        await self._catalog.update_task(task.id, self.now(), status="failure", message=message)
        log.warning("image %s: import failed: %s", image.id, message)

    async def _execute(
        self, task: Task, image: Image, request: ImportRequest, ctx: Context, work: Path, timer: StageTimer
    ) -> str:
        """Run the import; returns "" on success or the failure message."""
        # A signed image's certificate is checked before any data is fetched; the signature is
        # checked against each store's copy as it is written, before the image turns active.
        signer = await self._images.signatures.prepare(image.id, image.properties, ctx.token)
        with timer.stage("download" if request.method in ("web-download", "glance-download") else "acquire"):
            staged, decoded = await self._acquire(task, image, request, work)
        direct: DirectWrite | None = None
        try:
            if request.method != "copy-image":
                staged, direct = await self._run_steps(task, image, request, ctx, work, timer, signer, staged, decoded)
            return await self._write_stores(task, image, request, timer, signer, staged, direct)
        finally:
            if direct is not None:  # not committed: a step after it or its store refused
                await asyncio.shield(direct.discard())

    def _direct_target(self, request: ImportRequest, index: int) -> FilesystemStore | None:
        """The store image_conversion may convert straight into: the first target, when it
        holds files and no later plugin changes the data."""
        first = self._stores.get(request.stores[0]) if request.stores else None
        later = self.steps[index + 1 :]
        if isinstance(first, FilesystemStore) and all(isinstance(s, InjectMetadata) for s in later):
            return first
        return None

    async def _run_steps(
        self,
        task: Task,
        image: Image,
        request: ImportRequest,
        ctx: Context,
        work: Path,
        timer: StageTimer,
        signer: Signer | None,
        staged: StagedImage,
        decoded: bool,
    ) -> tuple[StagedImage, DirectWrite | None]:
        """The plugins in order, then the checks of their result. A conversion into the first
        store is returned as a DirectWrite to commit (discarded here if a check refuses)."""
        step_ctx = StepContext(
            image_id=image.id,
            work_dir=work,
            roles=ctx.roles,
            user_properties=frozenset(image.properties),
            is_admin=policy.is_admin(ctx),
            report=lambda note: log.info("image %s: %s", image.id, note),
        )
        direct: DirectWrite | None = None
        try:
            for index, step in enumerate(self.steps):
                if index == 0 and decoded and isinstance(step, Decompress):
                    log.info("image %s: plugin %s ran during the download", image.id, step.name)
                    continue
                log.info("image %s: running plugin %s", image.id, step.name)
                started = time.monotonic()
                target = self._direct_target(request, index) if isinstance(step, Convert) else None
                if isinstance(step, Convert) and target is not None:
                    checked, plan = await step.check(staged, step_ctx)
                    if plan is not None and step.can_convert_ranges(plan):
                        staged, direct = await convert_into_store(
                            step,
                            plan,
                            checked,
                            step_ctx,
                            target,
                            max_size=self.config.api.max_upload_bytes,
                            signed_hash=signer.hash_name if signer else None,
                            on_progress=functools.partial(self._hashed, task.id, plan.virtual_size),
                            timer=timer,
                        )
                    else:
                        with timer.stage(step.name):
                            staged = await step.run(staged, step_ctx)
                else:
                    with timer.stage(step.name):
                        staged = await step.run(staged, step_ctx)
                self._observe_plugin(step.name, time.monotonic() - started)
            with timer.stage("inspection"):
                # The converted file was inspected as it was hashed: the same inspector, once.
                done = direct.inspection if direct is not None and staged.path == direct.partial else None
                staged = await self._check_result(image, staged, done)
        except BaseException:
            if direct is not None:
                await asyncio.shield(direct.discard())
            raise
        return staged, direct

    def _hashed(self, task_id: str, total: int, done: int) -> None:
        self.progress[task_id] = (done, total)  # from a hashing thread: one assignment

    async def _check_result(self, image: Image, staged: StagedImage, inspected: Inspection | None) -> StagedImage:
        """What the plugins made, checked as an upload would be: property quota, formats set,
        the final inspection of the data (`inspected`: done already, on every byte)."""
        added = set(staged.properties) - set(image.properties)
        if added:  # injected properties count against image_property_quota, as in Glance
            try:
                self._images.check_property_quota({*image.properties, *added})
            except TooLarge as exc:
                raise ImportFailed("Properties the import would add were refused: %s" % exc) from None
        if not staged.disk_format or not staged.container_format:  # a PATCH raced the import's start
            raise ImportFailed("Properties disk_format, container_format must be set prior to saving data.")
        found = inspected
        if found is None:
            try:
                found = await asyncio.to_thread(
                    inspect_file,
                    str(staged.path),
                    staged.disk_format,
                    self.config.formats.max_virtual_size,
                    staged.container_format,
                )
            except ApplianceError as exc:
                raise ImportFailed("Image data refused: %s" % exc) from None
        if staged.size == 0:
            raise ImportFailed("Image data is empty")
        return staged.evolve(
            virtual_size=found.virtual_size,
            properties=introspected_properties(found, staged.properties, frozenset(image.properties)),
        )

    async def _write_stores(
        self,
        task: Task,
        image: Image,
        request: ImportRequest,
        timer: StageTimer,
        signer: Signer | None,
        staged: StagedImage,
        direct: DirectWrite | None,
    ) -> str:
        """One verified copy per target store; activate after the first (or the last)."""
        expected: Digest | None = None
        if request.method == "copy-image":
            expected = Digest(
                size=image.size or 0, checksum=image.checksum or "", os_hash_value=image.os_hash_value or ""
            )
        source = staged.path
        remaining = list(request.stores)
        written: list[str] = []
        last_error = ""
        active = request.method == "copy-image"
        for store_name in request.stores:
            store = self._stores[store_name]
            try:
                if direct is not None and direct.store is store:  # converted into it, hashed meanwhile
                    digest = direct.digest
                    with timer.stage("store:%s" % store_name):
                        await direct.commit(image.id)
                    source = store.path / image.id  # the partial file was renamed
                else:
                    with timer.stage("store:%s" % store_name):
                        digest = await store.write(
                            image.id,
                            file_chunks(source),
                            max_size=self.config.api.max_upload_bytes,
                            on_progress=lambda n: self.progress.__setitem__(task.id, (n, staged.size)),
                            background=True,
                            expected_size=staged.size,
                            signed_hash=signer.hash_name if signer else None,
                        )
                try:
                    if expected is not None:
                        verify(digest, expected)
                    if signer is not None:
                        await signer.verify(digest.signed_hash)
                except ApplianceError:
                    await store.delete(image.id)
                    raise
                expected = expected or digest
                written.append(store_name)
                location = Location.in_store(store_name, store.location_url(image.id))
                remaining.remove(store_name)
                if not active and (not request.all_stores_must_succeed or not remaining):
                    await self._activate(image, staged, digest, location)
                    active = True
                else:
                    await self._catalog.add_location(image.id, location, self.now())
                await self._catalog.edit_list_properties(
                    image.id, [ListEdit(IMPORTING_TO, remove=(store_name,))], self.now()
                )
                log.info("image %s: copy in store %s verified (%d bytes)", image.id, store_name, digest.size)
            except ApplianceError as exc:
                remaining.remove(store_name)
                await self._catalog.edit_list_properties(
                    image.id,
                    [ListEdit(IMPORTING_TO, remove=(store_name,)), ListEdit(FAILED_IMPORT, add=(store_name,))],
                    self.now(),
                )
                log.warning("image %s: store %s failed: %s", image.id, store_name, exc)
                if request.all_stores_must_succeed:
                    if request.method == "copy-image":  # revert: the new copies go again
                        for done in written:
                            await self._catalog.remove_location(image.id, done, self.now(), keep_last=False)
                            await self._stores[done].delete(image.id)
                    return "Import to store %s failed: %s" % (store_name, exc)
                last_error = "store %s: %s" % (store_name, exc)
        await self.forget_local_progress(image.id)
        await self._staging.delete(image.id)
        if not active:
            return "Import failed in every store; last error: %s" % last_error
        return ""

    async def _activate(self, image: Image, staged: StagedImage, digest: Digest, location: Location) -> None:
        columns: dict[str, Any] = {}
        if staged.disk_format != image.disk_format:
            columns["disk_format"] = staged.disk_format
        if staged.container_format != image.container_format:
            columns["container_format"] = staged.container_format
        if columns:
            await self._catalog.update_image(image.id, columns=columns, updated_at=self.now())
        if staged.properties:
            await self._catalog.update_image(image.id, set_properties=staged.properties, updated_at=self.now())
        await self._catalog.activate_image(
            image.id, digest.image_data(staged.virtual_size), location, from_status=IMPORTING, updated_at=self.now()
        )

    async def holder(self, image: Image) -> ImageStore | None:
        """A store of this site that holds the image's data (those with files first)."""
        stores = sorted((self._stores[s] for s in image.stores if s in self._stores), key=lambda s: s.kind != "file")
        for store in stores:
            if await asyncio.to_thread(store.holds, image.id):
                return store
        return None

    async def _copy_out(self, task: Task, image: Image, work: Path) -> Path:
        """A copy held by a store without files (RBD), read into the work dir to copy from."""
        holder = await self.holder(image)
        if holder is None:
            raise ImportFailed("No readable copy of image %s on this site to copy from" % image.id)
        path = work / "download"
        try:
            await _save(
                holder.read(image.id),
                path,
                lambda n: self.progress.__setitem__(task.id, (n, image.size)),
                self._staging.ensure_room,
            )
        except ApplianceError as exc:
            raise ImportFailed("Reading the copy in store %s failed: %s" % (holder.name, exc)) from None
        return path

    async def _acquire(self, task: Task, image: Image, request: ImportRequest, work: Path) -> tuple[StagedImage, bool]:
        """The data to import, as a file, and whether image_decompression already ran on it
        (a GZIP web-download is decoded as it arrives)."""
        if request.method == "glance-direct":
            path = self._staging.data_path(image.id)
            if path is None:
                raise ImportFailed("The staged data of image %s is gone" % image.id)
        elif request.method == "copy-image":
            path = self.local_copy(image) or await self._copy_out(task, image, work)
        elif request.method == "glance-download":
            if self._hub is None or request.glance_image_id is None:
                raise ImportFailed("glance-download needs a hub ([hub] url)")
            path = work / "download"
            try:
                source = await self._hub.pins.fetch(
                    request.glance_image_id,
                    path,
                    lambda done, total: self.progress.__setitem__(task.id, (done, total)),
                )
            except ApplianceError as exc:
                raise ImportFailed("Download of hub image %s failed: %s" % (request.glance_image_id, exc)) from None
            size = await asyncio.to_thread(os.path.getsize, path)
            staged = StagedImage(
                path=path,
                size=size,
                disk_format=image.disk_format or source.disk_format,
                container_format=image.container_format or source.container_format,
            )
            return staged, False
        else:
            path = work / "download"
            imp = self.config.imports
            try:
                # aclosing: a failed write releases the connection at once, not at GC time.
                async with (
                    open_download(
                        request.uri or "",
                        self.uri_filter,
                        max_bytes=imp.max_download_bytes,
                        idle_timeout=float(imp.download_idle_timeout),
                        total_timeout=float(imp.download_timeout) or None,
                    ) as (response, chunks),
                    self._images.quotas.metered(task.owner, image.id, STAGE_TOTAL) as meter,
                ):
                    total = response.content_length  # None when the source does not say
                    if total is not None:
                        self._staging.ensure_room(total)
                    first = self.steps[0] if self.steps else None
                    spooled = await spool(
                        meter.count(chunks) if meter else chunks,
                        path,
                        decompress=first if isinstance(first, Decompress) else None,
                        expected=total,
                        ensure_room=self._staging.ensure_room,
                        on_progress=lambda n: self.progress.__setitem__(task.id, (n, total)),
                    )
            except ApplianceError as exc:
                raise ImportFailed(str(exc)) from None
            staged = StagedImage(
                path=path, size=spooled.size, disk_format=image.disk_format, container_format=image.container_format
            )
            return staged, spooled.decoded is not None
        size = await asyncio.to_thread(os.path.getsize, path)
        staged = StagedImage(
            path=path, size=size, disk_format=image.disk_format, container_format=image.container_format
        )
        return staged, False
