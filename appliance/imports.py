"""ImportService: Glance's interoperable import workflow (glance-direct, web-download,
copy-image) with multi-store targets, import plugins and tasks.

The service parses and refuses requests, stages data, starts imports and lists their tasks;
each import runs as a background asyncio task of `appliance.importjob.ImportRunner`. Progress
is visible in `os_glance_importing_to_stores` / `os_glance_failed_import` and in the task;
failures say why in the task message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from appliance import policy
from appliance.auth import Context
from appliance.catalog import Catalog, ListEdit
from appliance.clock import timestamp
from appliance.config import Config
from appliance.errors import BadRequest, Conflict, NotFound, TooLarge
from appliance.hub.records import HUB_STORE
from appliance.hublink import HubLink
from appliance.ids import parse_uuid
from appliance.imagerules import require_formats
from appliance.images import ImageService
from appliance.importjob import ImportRequest, ImportRunner
from appliance.model import (
    ACTIVE,
    COPY,
    FAILED_IMPORT,
    IMPORTING,
    IMPORTING_TO,
    QUEUED,
    UPLOADING,
    Image,
    Task,
    TaskId,
)
from appliance.pipeline.base import ImportStep
from appliance.pipeline.steps.convert import Convert
from appliance.pipeline.steps.decompress import Decompress
from appliance.pipeline.steps.inject import InjectMetadata
from appliance.pipeline.steps.ovf import DEFAULT_METADATA_FILE, OvfProcess, load_ovf_metadata
from appliance.quotas import SIZE_TOTAL, STAGE_TOTAL
from appliance.sites import SiteService
from appliance.stores.base import ImageStore
from appliance.stores.filesystem import FilesystemStore
from appliance.urifilter import FETCHABLE_SCHEMES, Decision, UriFilter

log = logging.getLogger(__name__)

TASK_TYPE = "api_image_import"


def build_steps(config: Config) -> list[ImportStep]:
    """The configured plugins, in order (Glance's image_import_plugins)."""
    imp = config.imports
    made: dict[str, ImportStep] = {
        "image_decompression": Decompress(
            max_output_bytes=imp.max_decompressed_bytes, max_ratio=float(imp.max_expansion_ratio)
        ),
        "image_conversion": Convert(output_format=imp.output_format, max_virtual_size=config.formats.max_virtual_size),
        "inject_image_metadata": InjectMetadata(dict(imp.inject), imp.ignore_user_roles),
    }
    if "ovf_process" in imp.plugins:
        made["ovf_process"] = ovf_process_step(config)
    return [made[name] for name in imp.plugins]


def ovf_process_step(config: Config) -> OvfProcess:
    """The OVF processing with the names its metadata file lists (checked when the config was
    loaded); no file at the default path extracts none, as in Glance."""
    name = config.imports.ovf_metadata_file
    path = config.path(name)
    names = load_ovf_metadata(path, required=name != DEFAULT_METADATA_FILE)
    if names is None:
        log.warning('OVF properties config file "%s" was not found; no OVF properties are extracted', path)
    elif not names:
        log.warning(
            'OVF metadata of interest was not specified in %s: set "cim_pasd" to a list of '
            "CIM_ProcessorAllocationSettingData properties",
            path,
        )
    return OvfProcess(names or (), max_value_length=config.limits.max_property_value_length)


def build_uri_filter(config: Config) -> UriFilter:
    return UriFilter(config.imports.uri_filter)


class ImportService:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        stores: dict[str, ImageStore],
        images: ImageService,
        steps: Sequence[ImportStep],
        uri_filter: UriFilter,
        observe_plugin: Callable[[str, float], None] = lambda name, seconds: None,
        sites: SiteService | None = None,
        hub: HubLink | None = None,
    ) -> None:
        # On a hub, edge sites are stores too: copy-image to a site becomes an assignment.
        self._sites = sites
        # On an edge with a hub: glance-download, and copy-image to `central` (the hub).
        self._hub = hub
        self._config = config
        self._catalog = catalog
        self._stores = stores
        self._images = images
        self._staging_root = config.path(config.imports.staging_dir)
        self._staging = FilesystemStore(
            "staging", self._staging_root / "staged", min_free_bytes=config.imports.staging_min_free_bytes
        )
        self._job = ImportRunner(
            config, catalog, stores, images, self._staging, self._staging_root, steps, uri_filter, observe_plugin, hub
        )
        images.quotas.count_staged_with(self._staged_bytes)
        images.work.add_cleaner(self._staging.purge)  # a deleted image's staged data goes with it
        self._running: dict[str, asyncio.Task[None]] = {}

    def _now(self) -> str:
        return timestamp(self._images.clock.now())  # the image records' clock

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config: methods, plugins and their options, URI filter, limits.
        Imports already running keep what they started with."""
        self._config = config
        self._job.reconfigure(config, build_steps(config), build_uri_filter(config))
        self._staging.min_free_bytes = config.imports.staging_min_free_bytes

    def running_count(self) -> int:
        return len(self._running)

    def _forget(self, image_id: str, _job: asyncio.Task[None]) -> None:
        self._running.pop(image_id, None)

    def progress(self, task_id: str) -> tuple[int, int | None] | None:
        return self._job.progress.get(task_id)

    @property
    def uri_filter(self) -> UriFilter:
        return self._job.uri_filter

    async def wait(self, task: Task) -> Task:
        """The task once its import has finished (for callers that start imports themselves
        and act on the outcome, such as the inbox)."""
        job = self._running.get(task.image_id or "")
        if job is not None:
            await asyncio.wait([job])
        return await self._catalog.get_task(task.id)

    @property
    def enabled_methods(self) -> tuple[str, ...]:
        methods = self._config.imports.enabled_methods
        return methods if self._hub is not None else tuple(m for m in methods if m != "glance-download")

    # -- start-up / shutdown ---------------------------------------------------------------

    async def recover(self) -> None:
        """Imports interrupted by a crash or stop are failed cleanly: the image goes back to
        queued (or stays active for copy-image), progress properties are cleared, scratch
        space is emptied. Nothing is left `importing`."""
        self._staging.prepare()
        shutil.rmtree(self._staging_root / "work", ignore_errors=True)
        await asyncio.to_thread(self._staging.clean_partial)
        for task in await self._catalog.list_tasks(limit=10_000):
            if task.status not in ("pending", "processing"):
                continue
            if task.image_id is not None and not await self._catalog.has_image(task.image_id):
                await self._job.deleted(task)
                continue
            await self._catalog.update_task(
                task.id,
                self._now(),
                status="failure",
                message="Import interrupted: the daemon stopped before it finished; run the import again",
            )
            if task.image_id is None:
                continue
            try:
                image = await self._catalog.get_image(task.image_id)
            except NotFound:
                continue
            status = await self._release(image)
            await self._staging.delete(image.id)
            log.warning("recovery: import of image %s was interrupted; image is %s", image.id, status)
        # Images stuck without an unfinished task: `importing` when the stop came between the
        # status change and the task's creation; `uploading` with nothing staged when it came
        # in the middle of a PUT /stage (the partial file was just removed above).
        for image_id in await self._catalog.images_in_status(IMPORTING):
            status = await self._release(await self._catalog.get_image(image_id))
            log.warning("recovery: image %s was left importing; image is %s", image_id, status)
        # Staged data of images deleted while the daemon was down (or killed mid-delete).
        for staged_id in sorted(await asyncio.to_thread(self._staging.image_files)):
            if not await self._catalog.has_image(staged_id):
                await self._staging.purge(staged_id)
                log.warning("recovery: removed the staged data of %s: the image is gone", staged_id)
        for image_id in await self._catalog.images_in_status(UPLOADING):
            if self._staging.data_path(image_id) is None:
                await self._catalog.update_image(
                    image_id, expect_status=[UPLOADING], columns={"status": QUEUED}, updated_at=self._now()
                )
                log.warning("recovery: staging of image %s was interrupted; it is queued again", image_id)

    async def _release(self, image: Image) -> str:
        """Put an image whose import was interrupted back in a usable state; returns its status.
        An image still `importing` was never activated (activation makes it active), so copies
        already written for an all-stores-must-succeed import are removed with their locations
        and the image is queued again; an active one (copy-image, or a first store done with
        allow-failure) keeps its verified copies."""
        if image.status not in (IMPORTING, UPLOADING):
            await self._job.forget_local_progress(image.id)
            return image.status
        for location in image.locations:
            await self._catalog.remove_location(image.id, location.store, self._now(), keep_last=False)
            if location.store in self._stores:
                await self._stores[location.store].delete(image.id)
        await self._catalog.update_image(
            image.id, columns={"status": QUEUED}, remove_properties=[IMPORTING_TO], updated_at=self._now()
        )
        return QUEUED

    async def close(self) -> None:
        """Stop running imports and fail them cleanly now (image back to queued, scratch
        space emptied), so a stopped daemon never leaves an image `importing`."""
        running = list(self._running.values())
        for task in running:
            task.cancel()
        if running:
            await asyncio.gather(*running, return_exceptions=True)
            await self.recover()

    # -- queries --------------------------------------------------------------------------

    async def image_tasks(self, ctx: Context, image_id: str) -> list[Task]:
        """An image's tasks, as Glance lists them: only the caller's project's (all for an admin).
        A task's input (an import URI, signed query strings included) is its project's business,
        even when the image is public."""
        image = await self._images.get(ctx, image_id)
        return [t for t in await self._catalog.list_tasks(image.id) if _sees_task(ctx, t)]

    async def list_tasks(self, ctx: Context) -> list[Task]:
        policy.enforce(ctx, "get_tasks")
        return [t for t in await self._catalog.list_tasks() if _sees_task(ctx, t)]

    async def get_task(self, ctx: Context, task_id: str) -> Task:
        task = await self._catalog.get_task(task_id)
        if not _sees_task(ctx, task):
            raise NotFound("Task with the given ID %s not found" % task_id)
        policy.enforce(ctx, "get_task", {"project_id": task.owner})
        return task

    def uri_checker(self, ctx: Context) -> Callable[[str], Awaitable[Decision]]:
        """The web-download filter's verdict on a URL, without fetching anything, for a caller
        allowed to ask (`edge:check_uri`): refused before the request body is read."""
        policy.enforce(ctx, "edge:check_uri")
        return self.uri_filter.check

    # -- staging (glance-direct) ---------------------------------------------------------

    async def stage(self, ctx: Context, image_id: str, chunks: AsyncIterator[bytes], size: int | None) -> None:
        if "glance-direct" not in self.enabled_methods:
            raise NotFound("The glance-direct import method is not enabled on this site")
        image = await self._images.authorized(ctx, image_id, "modify_image")  # as Glance's stage
        require_formats(image)
        cap = self._config.api.max_upload_bytes
        if size is not None and size > cap:
            raise TooLarge("Image size %d exceeds the maximum upload size of %d bytes" % (size, cap))
        async with self._images.quotas.transfer(
            ctx.project,
            image.id,
            STAGE_TOTAL,
            size,
            start=lambda: self._catalog.update_image(
                image.id, expect_status=[QUEUED], columns={"status": UPLOADING}, updated_at=self._now()
            ),
        ) as meter:
            with self._images.work.track(image.id, "staging") as job:
                await self._receive_staged(image, job.guard(meter.count(chunks) if meter else chunks), size)
                if job.deleted:  # deleted while the staged file was being committed
                    await self._staging.purge(image.id)
                    job.check()

    async def _receive_staged(self, image: Image, chunks: AsyncIterable[bytes], size: int | None) -> None:
        """Write staged data (the image is `uploading`), or put the image back to queued."""
        try:
            digest = await self._staging.write(
                image.id, chunks, max_size=self._config.api.max_upload_bytes, expected_size=size
            )
            if size is not None and digest.size != size:
                raise BadRequest("Staging ended after %d of the %d bytes announced" % (digest.size, size))
        except BaseException:
            await self._staging.delete(image.id)
            try:
                await asyncio.shield(
                    self._catalog.update_image(
                        image.id, expect_status=[UPLOADING], columns={"status": QUEUED}, updated_at=self._now()
                    )
                )
            except (NotFound, Conflict):
                pass  # deleted (or reset) meanwhile: the client hears why staging stopped, not this
            raise
        log.info("image %s: staged %d bytes", image.id, digest.size)

    # -- import ---------------------------------------------------------------------------

    def parse_request(self, body: Any) -> ImportRequest:
        if not isinstance(body, dict) or not isinstance(body.get("method"), dict):
            raise BadRequest('The import body must look like {"method": {"name": "..."}, "stores": [...]}')
        method = body["method"].get("name")
        if method not in self.enabled_methods:
            raise BadRequest(
                "Import method %r is not enabled (enabled: %s)" % (method, ", ".join(self.enabled_methods))
            )
        uri = body["method"].get("uri")
        if method == "web-download" and not isinstance(uri, str):
            raise BadRequest("web-download needs method.uri, the URL to import from")
        source = body["method"].get("glance_image_id")
        if method == "glance-download":
            if not isinstance(source, str):
                raise BadRequest("glance-download needs method.glance_image_id, the id of the hub image to import")
            source = parse_uuid(source, "glance_image_id")
        stores = body.get("stores")
        all_stores = body.get("all_stores", False)
        if not isinstance(all_stores, bool):
            raise BadRequest("all_stores must be true or false")
        if stores is not None and all_stores:
            raise BadRequest("Give either 'stores' or 'all_stores', not both")
        if stores is not None and (
            not isinstance(stores, list) or not all(isinstance(s, str) for s in stores) or not stores
        ):
            raise BadRequest("'stores' must be a non-empty list of store names")
        must = body.get("all_stores_must_succeed", True)
        if not isinstance(must, bool):
            raise BadRequest("all_stores_must_succeed must be true or false")
        names = self._images.stores
        unknown = [s for s in stores or () if s not in names.all()]
        if unknown:
            raise Conflict(
                "Unknown store(s) %s (stores of this site: %s)" % (", ".join(unknown), ", ".join(names.all()))
            )
        if all_stores:
            # Edge sites receive images by copy-image only (an image exists here before it goes out).
            chosen: tuple[str, ...] = names.local() + (names.sites() if method == "copy-image" else ())
        else:
            chosen = tuple(dict.fromkeys(stores)) if stores else (self._images.default_store,)
        return ImportRequest(
            method=method,
            uri=uri,
            stores=chosen,
            all_stores_must_succeed=must,
            glance_image_id=source if method == "glance-download" else None,
        )

    async def start(self, ctx: Context, image_id: str, body: Any) -> Task:
        """Validate and start an import; everything refusable is refused here, synchronously."""
        request = self.parse_request(body)
        image = await self._images.find(ctx, image_id)
        if request.method == "copy-image":
            policy.enforce_image(ctx, "copy_image", image)
            if image.status != ACTIVE:
                raise Conflict("Image %s is %s; copy-image needs an active image" % (image.id, image.status))
            pending = await self._sites.pending(image.id) if self._sites is not None else {}
            copying = [s for s in request.stores if pending.get(s) == COPY]
            held = [s for s in request.stores if s in image.stores]
            if body.get("all_stores"):
                request = replace(
                    request, stores=tuple(s for s in request.stores if s not in image.stores and s not in copying)
                )
                if not request.stores:
                    raise BadRequest("Image %s is already in every store of this site" % image.id)
            elif held:
                raise BadRequest("Image %s is already in store(s) %s" % (image.id, ", ".join(held)))
            elif copying:
                raise Conflict(
                    "Image %s is already being copied to site(s) %s (see %s)"
                    % (image.id, ", ".join(copying), IMPORTING_TO)
                )
            if any(s not in self._stores for s in request.stores) and not any(s in self._stores for s in image.stores):
                raise Conflict(
                    "Image %s has no copy in a store of this hub, and edge sites pull from one: copy it to a "
                    "store here first" % image.id
                )
        else:
            if any(s not in self._stores for s in request.stores):
                raise BadRequest(
                    "Edge sites (%s) receive images by copy-image only: import into a store of this hub "
                    "first, then copy it" % ", ".join(s for s in request.stores if s not in self._stores)
                )
            policy.enforce_image(ctx, "modify_image", image)
            if request.method in ("web-download", "glance-download") and image.status != QUEUED:
                raise Conflict("Image %s is %s; %s needs a queued image" % (image.id, image.status, request.method))
            if request.method == "glance-direct" and (
                image.status != UPLOADING or self._staging.data_path(image.id) is None
            ):
                raise Conflict(
                    "Image %s has no staged data (status %s); stage it with PUT /v2/images/%s/stage first"
                    % (image.id, image.status, image.id)
                )
            if request.method != "glance-download":  # which takes them from the hub's image
                require_formats(image)
            if request.method == "web-download":
                decision = await self.uri_filter.check(request.uri or "")
                if not decision.allowed:
                    raise BadRequest("URI refused: %s" % decision.reason)
                scheme = decision.url.split(":", 1)[0].lower()
                if scheme not in FETCHABLE_SCHEMES:  # an empty allowed_schemes lets the filter pass it
                    raise BadRequest(
                        "URI refused: scheme %r cannot be downloaded (only %s)" % (scheme, ", ".join(FETCHABLE_SCHEMES))
                    )
        to_hub = HUB_STORE in request.stores and self._hub is not None
        sites = tuple(s for s in request.stores if s not in self._stores and not (to_hub and s == HUB_STORE))
        request = replace(request, stores=tuple(s for s in request.stores if s in self._stores))
        for store_name in request.stores:
            usage = self._stores[store_name].usage()
            if usage.read_only:
                raise Conflict("Store %s is read-only: %s" % (store_name, usage.reason))
        if request.stores and image.id in self._running:
            raise Conflict("Image %s is already being imported; wait for that import to finish" % image.id)
        if self._sites is not None and sites:
            await self._sites.assign_copies(image, sites)
        if to_hub:
            if request.stores or sites:
                raise BadRequest(
                    "Copy an image to %s on its own: it goes to the hub first, then to other sites" % HUB_STORE
                )
            return await self._start_push(ctx, image, body)
        if request.stores:
            await self._check_quotas(ctx, image, request)
        if request.method != "copy-image":
            # The record from here on: a PATCH may have changed its formats while it was queued,
            # and they are fixed from now on.
            image = await self._catalog.update_image(
                image.id,
                expect_status=[QUEUED, UPLOADING],
                columns={"status": IMPORTING},
                set_properties={IMPORTING_TO: ",".join(request.stores), FAILED_IMPORT: ""},
                updated_at=self._now(),
            )
        elif request.stores:  # added to what may still be pending (sites), as Glance does
            await self._catalog.edit_list_properties(
                image.id,
                [ListEdit(IMPORTING_TO, add=request.stores), ListEdit(FAILED_IMPORT, remove=request.stores)],
                self._now(),
            )
        stamp = self._now()
        # Glance's contract: progress is read from the image properties. The task records the
        # hand-over to the sites and runs on for the stores of this hub, if any.
        handed = (
            (
                "Copy handed to edge site(s) %s: each pulls the image on its next sync and reports back; progress is "
                "in %s and %s" % (", ".join(sites), IMPORTING_TO, FAILED_IMPORT)
            )
            if sites
            else ""
        )
        task = await self._catalog.create_task(
            Task(
                id=TaskId(str(uuid.uuid4())),
                type=TASK_TYPE,
                status="processing" if request.stores else "success",
                owner=ctx.project,
                image_id=image.id,
                input={"image_id": image.id, "import_req": body, "backend": [*request.stores, *sites]},
                result=None if request.stores else {"image_id": image.id},
                message=handed,
                created_at=stamp,
                updated_at=stamp,
            )
        )
        if not request.stores:
            log.info("image %s: copy-image handed to site(s) %s (task %s)", image.id, ", ".join(sites), task.id)
            return task
        job = asyncio.create_task(self._job.run(task, image, request, ctx), name="import-%s" % image.id)
        self._images.work.watch(image.id, job, "import")
        self._running[image.id] = job
        job.add_done_callback(functools.partial(self._forget, image.id))
        log.info(
            "image %s: %s import started to %s (task %s)", image.id, request.method, ",".join(request.stores), task.id
        )
        return task

    async def _check_quotas(self, ctx: Context, image: Image, request: ImportRequest) -> None:
        """Glance checks an import's quotas as it starts: one more upload; the bytes it adds to
        the stores where they are known (staged data, a copy); for a download, the staging
        space the project already holds."""
        adds = {SIZE_TOTAL: 0}
        if request.method == "glance-direct":
            path = self._staging.data_path(image.id)
            staged = await asyncio.to_thread(os.path.getsize, path) if path is not None else 0
            adds[SIZE_TOTAL] = staged * len(request.stores)
        elif request.method == "copy-image":
            adds[SIZE_TOTAL] = (image.size or 0) * len(request.stores)
        else:
            adds[STAGE_TOTAL] = 0
        await self._images.quotas.check(ctx.project, image.id, adds)

    async def _staged_bytes(self, image_ids: Iterable[str]) -> int:
        def total() -> int:
            found = 0
            for image_id in image_ids:
                path = self._staging.data_path(image_id)
                try:
                    found += path.stat().st_size if path is not None else 0
                except FileNotFoundError:
                    pass  # imported or deleted meanwhile
            return found

        return await asyncio.to_thread(total)

    async def _start_push(self, ctx: Context, image: Image, body: Any) -> Task:
        """copy-image to `central` at an edge: the image goes to the hub under the same id (the
        documented rule: an edge-created image reaches central before other edges)."""
        assert self._hub is not None
        holder = await self._job.holder(image)
        if holder is None:
            raise Conflict("Image %s has no readable copy in a store of this site to send to the hub" % image.id)
        if image.id in self._running:
            raise Conflict("Image %s is already being imported; wait for that import to finish" % image.id)
        await self._catalog.edit_list_properties(
            image.id,
            [ListEdit(IMPORTING_TO, add=(HUB_STORE,)), ListEdit(FAILED_IMPORT, remove=(HUB_STORE,))],
            self._now(),
        )
        stamp = self._now()
        task = await self._catalog.create_task(
            Task(
                id=TaskId(str(uuid.uuid4())),
                type=TASK_TYPE,
                status="processing",
                owner=ctx.project,
                image_id=image.id,
                input={"image_id": image.id, "import_req": body, "backend": [HUB_STORE]},
                result=None,
                message="",
                created_at=stamp,
                updated_at=stamp,
            )
        )
        job = asyncio.create_task(self._job.push(task, image, holder), name="push-%s" % image.id)
        self._images.work.watch(image.id, job, "copy to the hub")
        self._running[image.id] = job
        job.add_done_callback(functools.partial(self._forget, image.id))
        log.info("image %s: copy to the hub (%s) started (task %s)", image.id, HUB_STORE, task.id)
        return task


def _sees_task(ctx: Context, task: Task) -> bool:
    # Glance's task visibility: an administrator, or the project that started the task.
    return "admin" in ctx.roles or task.owner == ctx.project
