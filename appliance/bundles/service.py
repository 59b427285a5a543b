"""BundleService: imports a bundle into this site's catalog and stores.

Each image of the bundle is created with its id and metadata (validated by the same rules as
an image-create request), its data written through the store and inspected by the format
inspector on the way (the safety rules apply), and it turns active only after the store's
digest matches the record's size, MD5 and SHA-512. An image already here with the same hash
is skipped; one that fails leaves the catalog as it was for it. Bundled images are taken byte
for byte: import plugins, which would change the data and so its hash, do not run on them.

Crash safety: an image is created (status `saving`) together with a row in the catalog's
bundle-import ledger, and the row goes when the image is active. At start-up `recover()`
removes every image a bundle import left unfinished, with its data.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from pathlib import Path

from appliance import policy
from appliance.auth import Context
from appliance.bundles.manifest import ImageRecord
from appliance.bundles.report import FAILED, IMPORTED, SKIPPED, BundleReport, EntryResult
from appliance.bundles.signing import check_signature, enforce_signature_policy, load_public_key
from appliance.bundles.stream import BundleCorrupt, BundleReader, Entry, walk
from appliance.catalog import Catalog
from appliance.clock import timestamp
from appliance.config import Config
from appliance.errors import ApplianceError, BadRequest, ConfigError, Conflict, NotFound, StoreReadOnly
from appliance.formats import FormatInspector
from appliance.imagerules import require_formats
from appliance.images import ImageService
from appliance.model import ACTIVE, DEACTIVATED, SAVING, Image, ImageData, Location
from appliance.stores.base import ImageStore

log = logging.getLogger(__name__)


def load_trusted_keys(config: Config) -> frozenset[bytes]:
    """The [bundles] trusted_keys, read now (an unreadable key is a configuration error)."""
    conf = config.bundles
    if conf.require_signed and not conf.trusted_keys:
        raise ConfigError(
            "bundles.require_signed is true but bundles.trusted_keys is empty: no bundle could be accepted"
        )
    return frozenset(load_public_key(config.path(p)) for p in conf.trusted_keys)


class BundleService:
    def __init__(
        self, config: Config, catalog: Catalog, stores: Mapping[str, ImageStore], images: ImageService
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._stores = stores
        self._images = images
        self._trusted = load_trusted_keys(config)

    def apply_config(self, config: Config) -> None:
        """Take a reloaded config (trusted keys and require_signed change live)."""
        self._trusted = load_trusted_keys(config)
        self._config = config

    async def recover(self) -> None:
        """Remove what interrupted bundle imports left: images created but never activated."""
        for image_id in await self._catalog.bundle_imports():
            try:
                image = await self._catalog.get_image(image_id)
            except NotFound:
                continue
            if image.status in (ACTIVE, DEACTIVATED):  # stopped between activation and the ledger
                await self._catalog.finish_bundle_import(image_id)
                continue
            await self._discard(image_id)
            log.warning(
                "recovery: bundle import of image %s was interrupted; the unfinished image was removed", image_id
            )

    # -- import ---------------------------------------------------------------------------

    @staticmethod
    def authorize(ctx: Context) -> None:
        """Refuse a caller before its bundle is read (`edge:bundle_import`)."""
        policy.enforce(ctx, "edge:bundle_import")

    async def import_stream(self, ctx: Context, chunks: AsyncIterable[bytes], store: str | None) -> BundleReport:
        """Import a bundle arriving as a byte stream (POST /v2/edge/bundles)."""
        self.authorize(ctx)
        target = self._target(store)
        return await self._import(ctx, await BundleReader.from_chunks(chunks), target, background=False)

    async def import_file(self, ctx: Context, path: Path, store: str | None) -> BundleReport:
        """Import a bundle file (the inbox)."""
        self.authorize(ctx)
        target = self._target(store)
        fh = await asyncio.to_thread(open, path, "rb")
        try:
            return await self._import(ctx, await BundleReader.from_file(fh), target, background=True)
        finally:
            await asyncio.to_thread(fh.close)

    def _target(self, name: str | None) -> ImageStore:
        name = name or self._images.default_store
        store = self._stores.get(name)
        if store is None:
            raise BadRequest("Unknown store %r (stores of this site: %s)" % (name, ", ".join(self._stores)))
        reason = store.usage().reason
        if reason:
            raise StoreReadOnly("Store %s is read-only: %s" % (name, reason))
        return store

    async def _import(self, ctx: Context, reader: BundleReader, store: ImageStore, *, background: bool) -> BundleReport:
        """background: hash below the event loop's priority (the inbox; nobody waits on it),
        else at normal priority, like an upload (an operator is waiting)."""
        verdict = check_signature(reader.manifest_bytes, reader.signature, self._trusted)
        enforce_signature_policy(verdict, self._config.bundles.require_signed)
        log.info(
            "bundle import of %d image(s) into store %s (%s)",
            len(reader.manifest.images),
            store.name,
            verdict.describe(),
        )

        async def handle(entry: Entry) -> EntryResult:
            return await self._import_entry(ctx, entry, store, background)

        report = await walk(reader, handle, verdict.describe())
        counts = {o: sum(1 for e in report.entries if e.outcome == o) for o in (IMPORTED, SKIPPED, FAILED)}
        log.log(
            logging.INFO if report.ok else logging.WARNING,
            "bundle import done: %d imported, %d skipped, %d failed%s",
            counts[IMPORTED],
            counts[SKIPPED],
            counts[FAILED],
            "; " + report.error if report.error else "",
        )
        return report

    async def _import_entry(self, ctx: Context, entry: Entry, store: ImageStore, background: bool) -> EntryResult:
        record = entry.record

        def result(outcome: str, message: str = "") -> EntryResult:
            return EntryResult(record.id, record.name, record.size, outcome, message)

        try:
            existing: Image | None = await self._catalog.get_image(record.id)
        except NotFound:
            existing = None
        if existing is not None:
            same = existing.os_hash_value == record.os_hash_value and existing.status in (ACTIVE, DEACTIVATED)
            if same and any(s in self._stores for s in existing.stores):
                return result(SKIPPED, "already here with the same data")
            if same:  # known here (mirrored from the hub) but with no copy in a store of this site
                return await self._add_copy(existing, entry, store, background)
            return result(
                FAILED,
                "an image with this ID is already here (%s%s); delete it to import this one"
                % (existing.status, ", with other data" if existing.os_hash_value else ""),
            )
        cap = self._config.api.max_upload_bytes
        if record.size > cap:
            return result(
                FAILED, "%d bytes is more than this site's maximum image size of %d bytes" % (record.size, cap)
            )
        try:
            image = self._images.new_record(ctx, record.create_body(), status=SAVING)
            await self._catalog.create_image(image, bundle_import=True)
        except ApplianceError as exc:
            return result(FAILED, "refused: %s" % exc)
        try:
            await self._store_data(image, entry.chunks, store, record, background)
        except BaseException as exc:
            await asyncio.shield(self._discard(image.id))
            if isinstance(exc, BundleCorrupt) or not isinstance(exc, ApplianceError):
                raise
            log.warning("bundle image %s failed: %s", image.id, exc)
            return result(FAILED, str(exc))
        await self._catalog.finish_bundle_import(image.id)
        log.info("bundle image %s (%s) imported into store %s", image.id, record.name, store.name)
        return result(IMPORTED)

    async def _add_copy(self, image: Image, entry: Entry, store: ImageStore, background: bool) -> EntryResult:
        """A verified copy of an image the catalog already holds (no metadata changes)."""
        record = entry.record
        try:
            await self._write(image, entry.chunks, store, record, background)
            await self._catalog.add_location(image.id, _location(store, image.id), timestamp(self._images.clock.now()))
        except BaseException as exc:
            await asyncio.shield(store.delete(image.id))
            if isinstance(exc, BundleCorrupt) or not isinstance(exc, ApplianceError):
                raise
            return EntryResult(record.id, record.name, record.size, FAILED, str(exc))
        log.info("bundle image %s (%s): copy added in store %s", image.id, record.name, store.name)
        return EntryResult(record.id, record.name, record.size, IMPORTED, "a copy of the image this site knew")

    async def _write(
        self, image: Image, chunks: AsyncIterator[bytes], store: ImageStore, record: ImageRecord, background: bool
    ) -> ImageData:
        """Write the data to the store, inspected on the way; raises unless it is the record's."""
        require_formats(image)  # as for an upload: without them the data could not be inspected
        inspector = FormatInspector(
            image.disk_format, self._config.formats.max_virtual_size, container_format=image.container_format
        )

        async def inspected() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                inspector.feed(chunk)
                yield chunk

        signer = await self._images.signatures.prepare(image.id, image.properties)
        digest = await store.write(
            image.id,
            inspected(),
            max_size=self._config.api.max_upload_bytes,
            background=background,
            expected_size=record.size,
            signed_hash=signer.hash_name if signer else None,
        )
        record.check(digest)  # before anything becomes visible
        if signer is not None:
            await signer.verify(digest.signed_hash)
        found = inspector.finish()
        return digest.image_data(found.virtual_size)

    async def _store_data(
        self, image: Image, chunks: AsyncIterator[bytes], store: ImageStore, record: ImageRecord, background: bool
    ) -> None:
        data = await self._write(image, chunks, store, record, background)
        location = _location(store, image.id)
        try:
            await self._catalog.activate_image(
                image.id, data, location, from_status=SAVING, updated_at=timestamp(self._images.clock.now())
            )
        except Conflict:
            raise Conflict("image %s was changed or deleted while its data was being imported" % image.id) from None

    async def _discard(self, image_id: str) -> None:
        """Forget an unfinished bundle image: its record (and ledger row) and any data written."""
        try:
            await self._catalog.delete_image(image_id)
        except NotFound:
            pass
        for store in self._stores.values():
            await store.delete(image_id)


def _location(store: ImageStore, image_id: str) -> Location:
    return Location.in_store(store.name, store.location_url(image_id))
