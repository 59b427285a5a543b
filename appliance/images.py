"""ImageService: the rules of Glance's image API (policy, state transitions; value rules: imagerules)."""

from __future__ import annotations

import asyncio
import builtins  # ImageService.list shadows list in the class body
import dataclasses
import logging
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from appliance import imagerules, policy
from appliance.auth import Context
from appliance.cache import ImageCache
from appliance.catalog import Catalog, ImageQuery
from appliance.clock import SYSTEM_CLOCK, Clock, timestamp
from appliance.config import Config
from appliance.download import Download, span
from appliance.errors import BadRequest, Conflict, Forbidden, HubUnreachable, NotFound, RangeNotSatisfiable, TooLarge
from appliance.formats import FormatInspector, introspected_properties
from appliance.hub.lookup import HubRecords
from appliance.hub.records import is_hub_image
from appliance.ids import parse_uuid
from appliance.imagework import ImageWork
from appliance.locationadd import LocationImports
from appliance.locations import Locations
from appliance.model import (
    ACTIVE,
    DEACTIVATED,
    QUEUED,
    SAVING,
    Image,
    ImageId,
    Location,
)
from appliance.quotas import SIZE_TOTAL, Quotas
from appliance.signature import SignatureVerifier
from appliance.sites import SiteService
from appliance.storenames import StoreNames
from appliance.stores.base import ImageStore, StoreUsage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    ids: list[ImageId]
    # The records of `ids`, in order, a few at a time (Catalog.stream_images): a page of images
    # at the metadata limits weighs gigabytes and is never loaded whole.
    batches: AsyncIterator[list[Image]]
    next_marker: str | None


class ImageService:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        stores: Mapping[str, ImageStore],
        cache: ImageCache | None = None,
        *,
        sites: SiteService | None = None,
        hub_records: HubRecords | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._config = config
        self.clock = clock  # created_at / updated_at
        self._catalog = catalog
        self._stores = stores
        self._cache = cache  # None: no hub, or [cache] enabled = false
        self._hub_records = hub_records  # None: no hub
        self._sites = sites  # the hub's edge sites, which are stores in Glance's words
        self.stores = StoreNames(stores, sites, hub=hub_records is not None)  # the one list of store names
        self.default_store = config.stores.default
        self.quotas = Quotas(config.quotas, catalog, stores)
        self.work = ImageWork()  # uploads, staging, imports: a delete stops them first
        self.location_rules = Locations(config, catalog, stores, self._now)  # Glance's location API
        self.location_imports = LocationImports(self.location_rules)  # POST /locations
        self.signatures = SignatureVerifier(config)  # signed images (img_signature_*)

    @property
    def config(self) -> Config:
        return self._config

    def _now(self) -> str:
        return timestamp(self.clock.now())

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config (page sizes, upload cap, enabled formats change live)."""
        self._config = config
        self.quotas.apply_config(config.quotas)
        self.location_rules.apply_config(config)
        self.signatures.apply_config(config)

    # -- start-up -------------------------------------------------------------------------

    async def recover(self) -> None:
        """Undo what a crash left: uploads that were in flight go back to queued, and store
        files the catalog does not reference (written but never recorded) are removed."""
        for store in self._stores.values():
            await asyncio.to_thread(store.clean_partial)
        for image_id in await self._catalog.images_in_status(SAVING):
            image = await self._catalog.get_image(image_id)
            if image.locations:
                continue
            await self._catalog.update_image(
                image_id, expect_status=[SAVING], columns={"status": QUEUED}, updated_at=self._now()
            )
            log.warning("recovery: image %s was being uploaded when the daemon stopped; it is queued again", image_id)
        for name, store in self._stores.items():
            known = await self._catalog.image_ids_in_store(name)
            files = await asyncio.to_thread(store.image_files)  # type: ignore[attr-defined]
            for orphan in sorted(files - known):
                await store.delete(orphan)
                log.warning("recovery: removed %s from store %s: no image records it", orphan, name)
            # Pulls of images deleted while the daemon was down (or killed mid-delete).
            for orphan in sorted(await asyncio.to_thread(store.pull_ids)):  # type: ignore[attr-defined]
                if not await self._catalog.has_image(orphan):
                    await store.purge(orphan)
                    log.warning("recovery: removed the pull of %s from store %s: the image is gone", orphan, name)

    # -- records --------------------------------------------------------------------------

    async def get(self, ctx: Context, image_id: str) -> Image:
        """An image the caller may read (`get_image`)."""
        return await self.authorized(ctx, image_id, "get_image")

    async def locations(self, ctx: Context, image_id: str) -> tuple[Location, ...]:
        """Where the bytes are (server paths and site URLs): for service users, the owner's
        readers and administrators (Locations.listed), not every viewer."""
        return tuple(self.location_rules.listed(ctx, await self.find(ctx, image_id)))

    async def add_location(self, ctx: Context, image_id: str, body: Any) -> None:
        """POST /locations (Glance's add-location API): a queued image's data by URL; a hub
        image's is added at the hub."""
        image = await self.find(ctx, image_id)
        at_hub = await self.at_hub(ctx, image)
        if at_hub is not None:
            hub, token = at_hub
            await hub.add_location(token, image.id, body)
            return
        await self.location_imports.add(ctx, image, body)

    async def authorized(self, ctx: Context, image_id: str, rule: str) -> Image:
        """An image the caller sees (else NotFound) and may act on under `rule` (else Forbidden)."""
        image = await self.find(ctx, image_id)
        policy.enforce(ctx, rule, policy.caller_image_target(ctx, image))
        return image

    async def find(self, ctx: Context, image_id: str) -> Image:
        """An image the caller sees, with no rule checked yet: invisible is NotFound."""
        try:
            image_id = parse_uuid(image_id)
        except BadRequest:
            # Glance answers 404 here, and clients rely on it: openstacksdk's find_image()
            # tries the name as an id first and falls back to a name search on 404.
            raise NotFound("No image found with ID %s (not a valid image ID)" % image_id) from None
        # An id this site has not seen may be a hub image: HubRecords asks the hub.
        image = await (
            self._hub_records.lookup(image_id, asker=ctx.project)
            if self._hub_records is not None
            else self._catalog.get_image(image_id)
        )
        policy.check_visible(ctx, image)
        return image

    async def create(self, ctx: Context, body: Any) -> Image:
        policy.enforce(ctx, "add_image")  # into the caller's project; another owner is checked as a change of owner
        record = self.new_record(ctx, body)
        created = await self.quotas.admit_image(record.owner, lambda: self._catalog.create_image(record))
        log.info("image %s created by %s/%s", created.id, ctx.project, ctx.user)
        return created

    def new_record(self, ctx: Context, body: Any, status: str = QUEUED) -> Image:
        """Validate an image-create body into the record to insert (nothing is stored yet)."""
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object describing the image")
        for key in body:
            imagerules.check_writable_key(key)
        image_id = parse_uuid(body["id"]) if "id" in body and body["id"] is not None else str(uuid.uuid4())
        columns: dict[str, Any] = {
            "visibility": "shared",
            "protected": False,
            "os_hidden": False,
            "owner": ctx.project,
            "name": None,
            "disk_format": None,
            "container_format": None,
            "min_disk": 0,
            "min_ram": 0,
        }
        props: dict[str, str] = {}
        tags: list[str] = []
        for key, value in body.items():
            if key == "id":
                continue
            if key == "tags":
                tags = imagerules.validate_tags(self._config.limits, value)
            elif key in columns:
                columns[key] = imagerules.validate_attribute(ctx, self._config.formats, key, value)
            else:
                props[key] = imagerules.validate_property(self._config.limits, key, value)
        self.check_property_quota(props)
        stamp = self._now()
        return Image(
            id=ImageId(image_id),
            status=status,
            size=None,
            virtual_size=None,
            checksum=None,
            os_hash_algo=None,
            os_hash_value=None,
            created_at=stamp,
            updated_at=stamp,
            properties=props,
            tags=tuple(dict.fromkeys(tags)),
            **columns,
        )

    async def list(self, ctx: Context, query: ImageQuery) -> Page:
        """A page of the images `query` (parsed by the API layer) asks for, among those the
        caller sees; `query.limit` is the page size."""
        limit = query.limit
        try:
            ids, weights = await self._catalog.list_image_page(self._scoped(ctx, query))
        except NotFound as exc:
            raise BadRequest(str(exc)) from None  # Glance: an unknown marker is a bad request
        more = len(ids) > limit
        ids = ids[:limit]
        batches = self._catalog.stream_images(ids, weights)
        return Page(ids=ids, batches=batches, next_marker=ids[-1] if more and ids else None)

    async def rows(self, ctx: Context, query: ImageQuery) -> tuple[builtins.list[tuple[Any, ...]], str | None]:
        """The images `query` selects among those the caller sees, as the operator's table
        shows them (catalog.IMAGE_ROW_COLUMNS), and the next page's marker (None: the last)."""
        try:
            rows = await self._catalog.list_image_rows(self._scoped(ctx, query))
        except NotFound as exc:
            raise BadRequest(str(exc)) from None
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return rows, str(rows[-1][0]) if more and rows else None

    @staticmethod
    def _scoped(ctx: Context, query: ImageQuery) -> ImageQuery:
        """A list query as the caller may ask it: their project, whether they see every image,
        and one image more than the page (it tells whether a next page exists)."""
        policy.enforce(ctx, "get_images")
        return dataclasses.replace(
            query, project=ctx.project, admin=policy.sees_every_image(ctx), limit=query.limit + 1
        )

    async def at_hub(self, ctx: Context, image: Image) -> tuple[HubRecords, str] | None:
        """Where a write to `image` is made: None for this site's own images (created here, even
        if since copied to the hub); for the hub's, the hub and the caller's own token, since a
        change made only here would be undone by the next mirror round. Without a token to
        forward (a static token), refused, saying where to make the change."""
        if self._hub_records is None or not await self._catalog.is_mirrored(image.id):
            return None
        if ctx.token is None:
            raise Conflict(
                "Image %s belongs to the hub %s; this site only mirrors it. Make the change at the hub, or "
                "authenticate here with a Keystone token, which this site forwards to the hub"
                % (image.id, self._hub_records.hub_url)
            )
        return self._hub_records, ctx.token

    async def update(self, ctx: Context, image_id: str, patch: Any) -> Image:
        image = await self.authorized(ctx, image_id, "modify_image")
        if not isinstance(patch, list):
            raise BadRequest("A JSON patch must be a JSON array of operations")
        at_hub = await self.at_hub(ctx, image)
        if at_hub is not None:
            hub, token = at_hub
            updated = await hub.update(token, image.id, patch)
            log.info("image %s updated at the hub for %s/%s", image.id, ctx.project, ctx.user)
            return updated
        location_ops = [op for op in patch if self.location_rules.is_location_op(op)]
        if location_ops:
            if len(location_ops) != len(patch):
                raise BadRequest("Send location changes (/locations) in a patch of their own")
            await self.location_rules.edit(ctx, image, location_ops)
            return await self._catalog.get_image(image.id)
        columns: dict[str, Any] = {}
        set_props: dict[str, str] = {}
        removed: set[str] = set()
        tags: list[str] | None = None
        current = dict(image.properties)
        for op in patch:
            name, key, value = imagerules.parse_patch_op(op)
            imagerules.check_writable_key(key)
            if key == "id":
                raise Forbidden("Attribute 'id' is read-only.")
            if key == "tags":
                if name == "remove":
                    raise Forbidden("Attribute 'tags' cannot be removed; set it to []")
                tags = imagerules.validate_tags(self._config.limits, value)
            elif key in imagerules.BASE_ATTRIBUTES:
                if name == "remove":
                    raise Forbidden("Attribute '%s' is a base attribute and cannot be removed" % key)
                if key in imagerules.FORMAT_ATTRIBUTES and image.status != QUEUED:
                    # The data was (or is being) inspected against them.
                    raise Forbidden("Attribute %s can be only replaced for a queued image." % key)
                columns[key] = imagerules.validate_attribute(ctx, self._config.formats, key, value)
            elif name == "remove":
                if key not in current:
                    raise Conflict("Property %s does not exist." % key)
                del current[key]
                removed.add(key)
                set_props.pop(key, None)
            else:
                if name == "replace" and key not in current:
                    raise Conflict("Property %s does not exist." % key)
                current[key] = set_props[key] = imagerules.validate_property(self._config.limits, key, value)
                removed.discard(key)
        if set(current) - set(image.properties):  # Glance counts only when a patch adds properties
            self.check_property_quota(current)
        updated = await self._catalog.update_image(
            image.id,
            columns=columns,
            set_properties=set_props,
            remove_properties=removed,
            tags=tags,
            updated_at=self._now(),
            # Atomic with the check above: an upload that starts meanwhile makes this a Conflict.
            expect_status=[QUEUED] if imagerules.FORMAT_ATTRIBUTES & columns.keys() else None,
        )
        log.info(
            "image %s updated (%s)",
            image.id,
            ", ".join(sorted({*columns, *set_props, *removed} | ({"tags"} if tags is not None else set()))),
        )
        return updated

    async def delete(self, ctx: Context, image_id: str) -> None:
        image = await self.authorized(ctx, image_id, "delete_image")
        if image.protected:
            raise Forbidden("Image %s is protected and cannot be deleted." % image.id)
        await self.check_not_in_use(image, image.stores)
        at_hub = await self.at_hub(ctx, image)
        if at_hub is not None:
            hub, token = at_hub
            await hub.delete(token, image.id)
        await self.remove(image)
        log.info("image %s deleted by %s/%s", image.id, ctx.project, ctx.user)

    async def remove(self, image: Image) -> None:
        """Drop an image's record and every copy this site holds (stores and cache); no policy
        here: callers decide (a client's delete, or the hub having deleted it). The image's
        running work stops first, so no byte written for it outlives the delete."""
        async with self.work.stopped(image.id):
            await self._catalog.delete_image(image.id)
            for store in self._stores.values():  # every store: a write may have landed after the record was read
                await store.purge(image.id)
            if self._cache is not None:
                await self._cache.purge(image.id)

    async def _act_at_hub(self, ctx: Context, image: Image, method: str, path: str) -> bool:
        """A tag or status change of a hub image, made at the hub (True); False for this site's own."""
        at_hub = await self.at_hub(ctx, image)
        if at_hub is None:
            return False
        hub, token = at_hub
        await hub.act(token, image.id, method, path)
        log.info("image %s: %s %s made at the hub for %s/%s", image.id, method, path, ctx.project, ctx.user)
        return True

    async def add_tag(self, ctx: Context, image_id: str, tag: str) -> None:
        image = await self.authorized(ctx, image_id, "modify_image")
        if await self._act_at_hub(ctx, image, "PUT", "/v2/images/%s/tags/%s" % (image.id, quote(tag, safe=""))):
            return
        imagerules.validate_tags(self._config.limits, [tag])
        if tag not in image.tags:
            imagerules.check_tag_quota(self._config.limits, len(image.tags) + 1)
        await self._catalog.add_tag(image.id, tag, self._now())

    async def remove_tag(self, ctx: Context, image_id: str, tag: str) -> None:
        image = await self.authorized(ctx, image_id, "modify_image")
        if await self._act_at_hub(ctx, image, "DELETE", "/v2/images/%s/tags/%s" % (image.id, quote(tag, safe=""))):
            return
        if not await self._catalog.remove_tag(image.id, tag, self._now()):
            raise NotFound("Tag %s not found on image %s" % (tag, image.id))

    async def deactivate(self, ctx: Context, image_id: str) -> None:
        image = await self.authorized(ctx, image_id, "deactivate")
        if await self._act_at_hub(ctx, image, "POST", "/v2/images/%s/actions/deactivate" % image.id):
            return
        if image.status == DEACTIVATED:
            return
        if image.status != ACTIVE:
            raise Forbidden("Not allowed to deactivate image in status '%s'" % image.status)
        await self._catalog.update_image(
            image.id, expect_status=[ACTIVE], columns={"status": DEACTIVATED}, updated_at=self._now()
        )
        log.info("image %s deactivated", image.id)

    async def reactivate(self, ctx: Context, image_id: str) -> None:
        image = await self.authorized(ctx, image_id, "reactivate")
        if await self._act_at_hub(ctx, image, "POST", "/v2/images/%s/actions/reactivate" % image.id):
            return
        if image.status == ACTIVE:
            return
        if image.status != DEACTIVATED:
            raise Forbidden("Not allowed to reactivate image in status '%s'" % image.status)
        await self._catalog.update_image(
            image.id, expect_status=[DEACTIVATED], columns={"status": ACTIVE}, updated_at=self._now()
        )
        log.info("image %s reactivated", image.id)

    # -- data -----------------------------------------------------------------------------

    async def upload(
        self, ctx: Context, image_id: str, chunks: AsyncIterable[bytes], *, size: int | None, store_name: str | None
    ) -> Image:
        """Plain upload (`PUT /file`): queued → saving → active, or back to queued on failure."""
        image = await self.authorized(ctx, image_id, "upload_image")
        store = self._store(store_name)
        cap = self._config.api.max_upload_bytes
        if size is not None and size > cap:
            raise TooLarge("Image size %d exceeds the maximum upload size of %d bytes" % (size, cap))
        if image.status != QUEUED:
            raise Conflict("Image %s is %s; data can only be uploaded to a queued image" % (image.id, image.status))
        imagerules.require_formats(image)
        with self.work.track(image.id, "upload") as job:  # a delete stops it at the next chunk
            async with self.quotas.transfer(
                ctx.project,
                image.id,
                SIZE_TOTAL,
                size,
                start=lambda: self._catalog.update_image(
                    image.id, expect_status=[QUEUED], columns={"status": SAVING}, updated_at=self._now()
                ),
            ) as meter:
                chunks = job.guard(meter.count(chunks) if meter else chunks)
                return await self._receive(image, store, chunks, size, ctx.token)

    async def _receive(
        self, image: Image, store: ImageStore, chunks: AsyncIterable[bytes], size: int | None, token: str | None
    ) -> Image:
        """Store an upload's bytes and activate the image (it is `saving`), or put it back to queued."""
        cap = self._config.api.max_upload_bytes

        async def inspected(inspector: FormatInspector) -> AsyncIterator[bytes]:
            async for chunk in chunks:
                inspector.feed(chunk)
                yield chunk

        written = False
        try:
            # The formats as they are now that the image is `saving` and they can no longer change
            # (a PATCH may have changed them while it was queued).
            image = await self._catalog.get_image(image.id)
            imagerules.require_formats(image)
            inspector = FormatInspector(
                image.disk_format, self._config.formats.max_virtual_size, container_format=image.container_format
            )
            signer = await self.signatures.prepare(image.id, image.properties, token)
            digest = await store.write(
                image.id,
                inspected(inspector),
                max_size=cap,
                expected_size=size,
                signed_hash=signer.hash_name if signer else None,
            )
            written = True
            if size is not None and digest.size != size:
                raise BadRequest("Upload ended after %d of the %d bytes announced" % (digest.size, size))
            if signer is not None:
                await signer.verify(digest.signed_hash)
            found = inspector.finish()
            data = digest.image_data(found.virtual_size)
            location = Location.in_store(store.name, store.location_url(image.id))
            learned = introspected_properties(found, {}, frozenset(image.properties))
            if learned:
                await self._catalog.update_image(image.id, set_properties=learned, updated_at=self._now())
            active = await self._catalog.activate_image(
                image.id, data, location, from_status=SAVING, updated_at=self._now()
            )
        except BaseException as exc:
            if written:
                await store.delete(image.id)
            await self._reset_after_failed_upload(image.id, exc)
            raise
        log.info("image %s uploaded to store %s: %d bytes, format %s", image.id, store.name, data.size, found.format)
        return active

    async def _reset_after_failed_upload(self, image_id: ImageId, exc: BaseException) -> None:
        # Shielded: a client that disconnects cancels the handler, but the image must not
        # stay in `saving`.
        async def reset() -> None:
            try:
                await self._catalog.update_image(
                    image_id, expect_status=[SAVING], columns={"status": QUEUED}, updated_at=self._now()
                )
            except (NotFound, Conflict):
                return  # deleted meanwhile
            log.warning("image %s: upload failed (%s: %s); back to queued", image_id, type(exc).__name__, exc)

        await asyncio.shield(reset())

    async def open_download(self, ctx: Context, image_id: str, byte_range: slice | None = None) -> Download | None:
        """Where the bytes come from, in order: a store of this site, the cache (a committed
        entry, or a fill from the hub that every client follows), or None if the image has no
        data yet (Glance answers 204). `byte_range` is the request's Range, if any."""
        image = await self.authorized(ctx, image_id, "download_image")
        if image.status == DEACTIVATED and "admin" not in ctx.roles:
            raise Forbidden("The requested image has been deactivated. Image data download is forbidden.")
        if (
            self._hub_records is not None
            and is_hub_image(image)
            and (image.status not in (ACTIVE, DEACTIVATED) or image.size is None)
        ):
            # A hub image is never answered 204: it has (or will have) data at the hub.
            image = await self._hub_records.servable(image)
        if image.status not in (ACTIVE, DEACTIVATED) or not image.stores:
            # No data, or only quarantined copies: Glance's answer for an image whose data is gone.
            return None
        for store_name in self._preferred_stores(image):
            store = self._stores[store_name]
            path = store.data_path(image.id)
            if path is not None:
                return Download(image=image, path=path)
            if image.size is not None and await asyncio.to_thread(store.holds, image.id):
                return self._streamed(store, image, byte_range)
        if self._cache is not None and self._cache.serves(image):
            try:
                return await self._cache.open(image, byte_range)
            except HubUnreachable as exc:
                raise HubUnreachable(
                    "Image %s is not cached at this site and the hub is unreachable: %s" % (image.id, exc)
                ) from None
        url = self.location_rules.http_url(image)
        if url is not None:
            return await self.location_rules.read_through(image, url, byte_range)
        raise NotFound("Image %s has no readable data in any store of this site" % image.id)

    @staticmethod
    def _streamed(store: ImageStore, image: Image, byte_range: slice | None) -> Download:
        """The bytes of a store that holds no file (RBD), streamed; a range is answered 206."""
        assert image.size is not None
        start, stop = span(byte_range, image.size)
        if start >= stop and byte_range is not None:
            raise RangeNotSatisfiable("Requested range not satisfiable: the image has %d bytes" % image.size)
        return Download(
            image=image,
            chunks=store.read(image.id, start, stop),
            length=stop - start,
            content_range="bytes %d-%d/%d" % (start, stop - 1, image.size) if byte_range is not None else None,
        )

    async def check_not_in_use(self, image: Image, store_names: Iterable[str]) -> None:
        """Conflict if a store's copy is in use outside the appliance (RBD clones: Nova's and
        Cinder's disks), as Glance answers 409 for InUseByStore; nothing is deleted then."""
        for name in store_names:
            store = self._stores.get(name)
            reason = await store.in_use(image.id) if store is not None else ""
            if reason:
                raise Conflict("Image %s could not be deleted because it is in use: %s" % (image.id, reason))

    def _preferred_stores(self, image: Image) -> builtins.list[str]:
        names = [s for s in image.stores if s in self._stores]
        names.sort(key=lambda s: s != self.default_store)
        return names

    async def counts(self) -> dict[str, dict[str, int]]:
        return {"images": await self._catalog.image_counts(), "tasks": await self._catalog.task_counts()}

    async def site_counts(self, ctx: Context) -> dict[str, dict[str, int]]:
        """The counts, for the operator's status view (`edge:status`)."""
        policy.enforce(ctx, "edge:status")
        return await self.counts()

    # -- stores ---------------------------------------------------------------------------

    async def stores_info(self) -> builtins.list[tuple[ImageStore, StoreUsage]]:
        """Each store's usage, found on a worker thread: a filesystem store lists and stats its
        files, which must not hold the event loop however many images it has."""
        return await asyncio.to_thread(lambda: [(store, store.usage()) for store in self._stores.values()])

    async def stores_detail(self, ctx: Context) -> builtins.list[tuple[ImageStore, StoreUsage]]:
        """stores_info, for a caller allowed the detail (`stores_info_detail`: paths and usage)."""
        policy.enforce(ctx, "stores_info_detail")
        return await self.stores_info()

    async def delete_from_store(self, ctx: Context, store_name: str, image_id: str) -> None:
        image = await self.authorized(ctx, image_id, "delete_image_location")
        sites = self.stores.sites()
        if store_name not in self._stores and store_name not in sites:
            # Glance: 409, not 404 (which glanceclient reports as "multi-store not enabled").
            raise Conflict("The selected store %s is not available on this node." % store_name)
        if image.status != ACTIVE:
            raise Conflict(
                "Image %s is %s; a store copy can be removed from an active image only" % (image.id, image.status)
            )
        if self._sites is not None and store_name in sites:
            await self._sites.remove_copy(image, store_name)
            return
        at_sites = [s for s in image.stores if s in sites]
        if at_sites and [s for s in image.stores if s in self._stores] == [store_name]:
            raise Forbidden(
                "Cannot delete image data from the only store of this hub containing it: edge sites (%s) "
                "pull image %s from store %s; copy it to another store first, or delete the image"
                % (", ".join(at_sites), image.id, store_name)
            )
        await self.check_not_in_use(image, [store_name])
        await self._catalog.remove_location(image.id, store_name, self._now())
        await self._stores[store_name].delete(image.id)
        log.info("image %s removed from store %s", image.id, store_name)

    # -- validation -----------------------------------------------------------------------

    def _store(self, name: str | None) -> ImageStore:
        name = name or self.default_store
        store = self._stores.get(name)
        if store is None:
            raise BadRequest("Unknown store %r (stores of this site: %s)" % (name, ", ".join(self._stores)))
        return store

    def check_property_quota(self, names: Iterable[str]) -> None:
        """The custom properties an image would have (see imagerules.check_property_quota)."""
        imagerules.check_property_quota(self._config.limits, names)
