"""Catalog: the only module with SQL. aiosqlite, WAL, numbered schema migrations."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from appliance.errors import Conflict, Forbidden, NotFound, StorageFull, TooLarge
from appliance.model import (
    IMAGE_ATTRIBUTES,
    Assignment,
    CacheEntry,
    ChangePage,
    Image,
    ImageChange,
    ImageData,
    ImageId,
    Location,
    Member,
    MetadefItem,
    MetadefNamespace,
    MetadefResourceType,
    QueuedImage,
    Site,
    Task,
    TaskId,
)

log = logging.getLogger(__name__)

# Each entry moves the schema one version forward; never edit a released step, add one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        name TEXT,
        status TEXT NOT NULL,
        visibility TEXT NOT NULL,
        protected INTEGER NOT NULL DEFAULT 0,
        os_hidden INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        disk_format TEXT,
        container_format TEXT,
        min_disk INTEGER NOT NULL DEFAULT 0,
        min_ram INTEGER NOT NULL DEFAULT 0,
        size INTEGER,
        virtual_size INTEGER,
        checksum TEXT,
        os_hash_algo TEXT,
        os_hash_value TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX images_created ON images (created_at, id);
    CREATE INDEX images_owner ON images (owner);
    CREATE TABLE image_properties (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (image_id, name)
    );
    CREATE TABLE image_tags (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (image_id, tag)
    );
    CREATE TABLE image_locations (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        store TEXT NOT NULL,
        url TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'active',
        metadata TEXT NOT NULL DEFAULT '{}',
        position INTEGER NOT NULL,
        PRIMARY KEY (image_id, store)
    );
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        owner TEXT,
        image_id TEXT,
        input TEXT NOT NULL DEFAULT '{}',
        result TEXT,
        message TEXT NOT NULL DEFAULT '',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        expires_at TEXT,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        bytes_total INTEGER
    );
    CREATE INDEX tasks_image ON tasks (image_id);
    """,
    # 2: the image cache (copies of hub images) and its prefetch queue. Times are epoch
    # seconds, as Glance's cache API reports them.
    """
    CREATE TABLE cache_entries (
        image_id TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        cached_at REAL NOT NULL,
        last_accessed REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX cache_lru ON cache_entries (last_accessed);
    CREATE TABLE cache_queue (
        image_id TEXT PRIMARY KEY,
        queued_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        next_attempt_at REAL NOT NULL DEFAULT 0
    );
    """,
    # 3: the hub's edge sites and the work assigned to them (one pending action per site and
    # image). Site times are epoch seconds; assignments go with their image or site.
    """
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        registered_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        free_bytes INTEGER,
        total_bytes INTEGER,
        version TEXT NOT NULL DEFAULT '',
        api_url TEXT NOT NULL DEFAULT '',
        stores TEXT NOT NULL DEFAULT '[]',
        cache TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE site_assignments (
        site TEXT NOT NULL REFERENCES sites(name) ON DELETE CASCADE,
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        action TEXT NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (site, image_id)
    );
    CREATE INDEX site_assignments_image ON site_assignments (image_id);
    """,
    # 4: images a bundle import created and has not finished; start-up removes them. A row
    # goes with its image.
    """
    CREATE TABLE bundle_imports (
        image_id TEXT PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        started_at TEXT NOT NULL
    );
    """,
    # 5: which images are the hub's (records the hub link mirrored; before this, those with an
    # http location in the hub's pseudo-store `central`), and the hub's change feed: a serial
    # per image created, updated or deleted, written by triggers in the change's own transaction
    # while `change_feed` has its row (role "hub"). The newest 100000 changes are kept; an edge
    # whose serial is older than `pruned_through` reconciles in full.
    """
    ALTER TABLE images ADD COLUMN mirrored INTEGER NOT NULL DEFAULT 0;
    UPDATE images SET mirrored = 1 WHERE id IN
        (SELECT image_id FROM image_locations WHERE store = 'central' AND url LIKE 'http%');
    CREATE TABLE change_feed (feed_id TEXT NOT NULL, pruned_through INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE image_changes (
        serial INTEGER PRIMARY KEY AUTOINCREMENT,
        image_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        changed_at TEXT NOT NULL
    );
    CREATE TRIGGER image_created AFTER INSERT ON images WHEN EXISTS (SELECT 1 FROM change_feed) BEGIN
        INSERT INTO image_changes (image_id, kind, changed_at)
        VALUES (NEW.id, 'created', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
    END;
    CREATE TRIGGER image_updated AFTER UPDATE ON images WHEN EXISTS (SELECT 1 FROM change_feed) BEGIN
        INSERT INTO image_changes (image_id, kind, changed_at)
        VALUES (NEW.id, 'updated', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
    END;
    CREATE TRIGGER image_deleted AFTER DELETE ON images WHEN EXISTS (SELECT 1 FROM change_feed) BEGIN
        INSERT INTO image_changes (image_id, kind, changed_at)
        VALUES (OLD.id, 'deleted', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'));
    END;
    CREATE TRIGGER image_changes_pruned AFTER INSERT ON image_changes WHEN NEW.serial > 100000 BEGIN
        DELETE FROM image_changes WHERE serial <= NEW.serial - 100000;
        UPDATE change_feed SET pruned_through = MAX(pruned_through, NEW.serial - 100000);
    END;
    """,
    # 6: image members (the projects a shared image is shared with); they go with their image.
    """
    CREATE TABLE image_members (
        image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        member_id TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (image_id, member_id)
    );
    CREATE INDEX image_members_member ON image_members (member_id, status);
    """,
    # 7: metadata definitions (Glance's metadefs): namespaces, the objects, properties, tags and
    # resource type associations they hold (one table, each item's JSON body), resource types.
    """
    CREATE TABLE metadef_namespaces (
        namespace TEXT PRIMARY KEY,
        display_name TEXT,
        description TEXT,
        visibility TEXT NOT NULL,
        protected INTEGER NOT NULL DEFAULT 0,
        owner TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE metadef_items (
        namespace TEXT NOT NULL REFERENCES metadef_namespaces(namespace) ON DELETE CASCADE ON UPDATE CASCADE,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (namespace, kind, name)
    );
    CREATE TABLE metadef_resource_types (
        name TEXT PRIMARY KEY,
        protected INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    """,
)

# Columns a client may sort on (Glance's allowed sort keys).
SORT_KEYS = (
    "name",
    "status",
    "container_format",
    "disk_format",
    "size",
    "id",
    "created_at",
    "updated_at",
    "visibility",
    "owner",
    "virtual_size",
    "min_disk",
    "min_ram",
)
INT_COLUMNS = frozenset({"size", "virtual_size", "min_disk", "min_ram"})
# stream_images: target weight of one batch of image rows (their JSON columns), its largest
# count, and the weight past which rows are decoded in a worker thread. 256 plain images are
# ~3 ms of encoding on the event loop; smaller batches cost a page of 1,000 more database
# round trips and socket writes (each a wake-up of the loop) than the encoding they spread.
STREAM_BATCH_BYTES = 1 << 20
STREAM_MAX_BATCH = 256
STREAM_INLINE_BYTES = 256 << 10
BOOL_COLUMNS = frozenset({"protected", "os_hidden"})
# What SQLite's json_group_* give for no rows, decoded without the JSON parser.
_EMPTY_JSON: dict[str, Callable[[], Any]] = {"[]": list, "{}": dict}


@dataclass(frozen=True)
class ListEdit:
    """Add and remove items of a comma-separated image property (Glance's store lists), read and
    written in one transaction so concurrent imports and site reports never lose an update."""

    name: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    drop_empty: bool = False  # an empty list removes the property instead of leaving ""


@dataclass(frozen=True)
class ImageQuery:
    """What a list request asks for. The catalog applies Glance's visibility rules from
    `admin`, `project` and `visibility`: an admin sees every image, anyone else public ones and
    their project's own (plus community ones with visibility "all")."""

    project: str | None = None
    admin: bool = False
    filters: tuple[tuple[str, Any], ...] = ()  # (column, value) equality on image columns
    property_filters: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    visibility: str | None = None  # explicit visibility filter, or "all"
    # Shared images listed to a member: those whose membership has this status, or "all".
    member_status: str = "accepted"
    os_hidden: bool = False
    size_min: int | None = None
    size_max: int | None = None
    # (column, SQL operator, timestamp): Glance's created_at / updated_at filters
    time_filters: tuple[tuple[str, str, str], ...] = ()
    sort: tuple[tuple[str, str], ...] = (("created_at", "desc"),)
    limit: int = 25
    marker: str | None = None


@dataclass(frozen=True)
class ProjectUsage:
    """What a project holds, for its quotas (Glance's unified limits)."""

    images: int  # images it owns, in any status
    stored_bytes: int  # image data in the stores asked about, each copy counted (as Glance does)
    uploading: tuple[ImageId, ...]  # its images being uploaded, staged or imported


class Catalog:
    """Image and task records in one SQLite database."""

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._db = db
        # One connection serves every coroutine: transactions must not interleave on it.
        self._write_lock = asyncio.Lock()
        # image-show and image-list read on a second connection, which WAL lets read beside the
        # writer and which sees committed data only: they never wait behind a write transaction
        # (under transfer load, each of its statements is a slow hop to the database thread).
        self._reader = reader

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Catalog]:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            await cls(db, db)._migrate()
            reader = await aiosqlite.connect(str(path), isolation_level=None)
            try:
                await reader.execute("PRAGMA query_only=ON")
                await reader.execute("PRAGMA busy_timeout=5000")
                yield cls(db, reader)
            finally:
                await reader.close()
        finally:
            await db.close()

    async def _migrate(self) -> None:
        await self._db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with self._db.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] if row else 0
        if current > len(MIGRATIONS):
            raise RuntimeError("catalog schema version %d is newer than this daemon (%d)" % (current, len(MIGRATIONS)))
        for version in range(current, len(MIGRATIONS)):
            log.info("catalog: migrating schema to version %d", version + 1)
            script = "BEGIN;\n%s\nDELETE FROM schema_version;\nINSERT INTO schema_version VALUES (%d);\nCOMMIT;" % (
                MIGRATIONS[version],
                version + 1,
            )
            await self._db.executescript(script)

    async def schema_version(self) -> int:
        async with self._db.execute("SELECT version FROM schema_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            try:
                try:
                    await asyncio.shield(self._db.execute("BEGIN IMMEDIATE"))
                except asyncio.CancelledError:
                    # The BEGIN runs on the database thread all the same: undo it there (queued
                    # after it), or the connection stays inside a transaction that no one ends and
                    # every later write fails ("cannot start a transaction within a transaction").
                    await asyncio.shield(self._rollback())
                    raise
                try:
                    yield self._db
                except BaseException:
                    await asyncio.shield(self._rollback())
                    raise
                else:
                    try:
                        await asyncio.shield(self._db.execute("COMMIT"))
                    except sqlite3.Error:
                        await asyncio.shield(self._rollback())  # SQLite may have rolled back already
                        raise
            except sqlite3.OperationalError as exc:
                # A full filesystem is the operator's to fix, not a server bug: 507, and the
                # transaction is rolled back, so the catalog stays consistent.
                if exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL:
                    raise StorageFull(
                        "The catalog's filesystem is full (%s); nothing was changed. Free space "
                        "on it (deleting images frees space)" % exc
                    ) from exc
                raise

    async def _rollback(self) -> None:
        try:
            await self._db.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # no transaction left to roll back (SQLite rolled it back on the error)

    # -- images ---------------------------------------------------------------------------

    async def create_image(self, image: Image, *, bundle_import: bool = False) -> Image:
        """Insert a new image. With bundle_import, also its row in the bundle-import ledger (in
        the same transaction, so a crash never leaves an unfinished bundle image unlisted)."""
        values = [getattr(image, c) for c in IMAGE_ATTRIBUTES]
        async with self._transaction() as db:
            try:
                await db.execute(
                    "INSERT INTO images (%s) VALUES (%s)"
                    % (", ".join(IMAGE_ATTRIBUTES), ", ".join("?" * len(IMAGE_ATTRIBUTES))),
                    values,
                )
            except aiosqlite.IntegrityError as exc:
                raise Conflict("Image with identifier %s already exists!" % image.id) from exc
            await db.executemany(
                "INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)",
                [(image.id, k, v) for k, v in image.properties.items()],
            )
            await db.executemany(
                "INSERT INTO image_tags (image_id, tag) VALUES (?, ?)", [(image.id, t) for t in image.tags]
            )
            if bundle_import:
                await db.execute(
                    "INSERT INTO bundle_imports (image_id, started_at) VALUES (?, ?)", [image.id, image.created_at]
                )
        return await self.get_image(image.id)

    async def bundle_imports(self) -> list[ImageId]:
        """Images whose bundle import has not finished (see create_image)."""
        async with self._db.execute("SELECT image_id FROM bundle_imports ORDER BY started_at") as cur:
            return [ImageId(r[0]) for r in await cur.fetchall()]

    async def finish_bundle_import(self, image_id: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM bundle_imports WHERE image_id = ?", [image_id])

    async def has_image(self, image_id: str) -> bool:
        async with self._db.execute("SELECT 1 FROM images WHERE id = ?", [image_id]) as cur:
            return await cur.fetchone() is not None

    async def get_image(self, image_id: str) -> Image:
        images = await self._load_images([image_id])
        if not images:
            raise NotFound("No image found with ID %s" % image_id)
        return images[0]

    async def _load_images(self, ids: Sequence[str]) -> list[Image]:
        """Images with their properties, tags and locations, in one query (one round trip to
        the database thread: what keeps image-show fast while the cores are busy)."""
        return self._rows_to_images(ids, await self._image_rows(ids))

    async def stream_images(
        self, ids: Sequence[str], weights: Mapping[str, int] | None = None
    ) -> AsyncIterator[list[Image]]:
        """The images of `ids` in that order, in batches planned from what their rows weigh
        (one query for the whole page): up to STREAM_BATCH_BYTES and STREAM_MAX_BATCH images a
        batch, a heavier image alone, heavy rows decoded off the event loop. A page of images
        that carry megabytes of metadata each is never held whole, the loop is never held for
        long, and a page of ordinary images is read in a few round trips. `weights`: what
        list_image_page read with the ids (else read here)."""
        if weights is None:
            weights = await self._row_weights(ids)
        plan: list[tuple[Sequence[str], int]] = []
        start = 0
        while start < len(ids):
            end, weight = start, 0
            while end < len(ids) and end - start < STREAM_MAX_BATCH:
                more = weights.get(ids[end], 0)
                if end > start and weight + more > STREAM_BATCH_BYTES:
                    break
                weight, end = weight + more, end + 1
            plan.append((ids[start:end], weight))
            start = end
        # The next batch is read on the database thread while this one is decoded and encoded
        # here: two batches at most are held.
        ahead: asyncio.Future[dict[str, Any]] | None = None
        try:
            for n, (chunk, weight) in enumerate(plan):
                rows = await (ahead if ahead is not None else self._image_rows(chunk))
                ahead = asyncio.ensure_future(self._image_rows(plan[n + 1][0])) if n + 1 < len(plan) else None
                if weight > STREAM_INLINE_BYTES:
                    yield await asyncio.to_thread(self._rows_to_images, chunk, rows)
                else:
                    yield self._rows_to_images(chunk, rows)
        finally:  # the reader broke off: the batch read ahead is not wanted
            if ahead is not None and not ahead.cancel() and not ahead.cancelled():
                ahead.exception()  # retrieved, so that asyncio does not log it as lost

    async def _row_weights(self, ids: Sequence[str]) -> dict[str, int]:
        """About the bytes each image's properties, tags, locations and members take."""
        if not ids:
            return {}
        sql = "SELECT i.id, %s FROM images i WHERE i.id IN (%s)" % (_ROW_WEIGHT, ", ".join("?" * len(ids)))
        return {row[0]: int(row[1]) for row in await self._reader.execute_fetchall(sql, list(ids))}

    async def _image_rows(self, ids: Sequence[str]) -> dict[str, Any]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        sql = (
            "SELECT %s, "
            "(SELECT json_group_object(p.name, p.value) FROM image_properties p WHERE p.image_id = i.id), "
            "(SELECT json_group_array(t.tag) FROM "
            " (SELECT tag FROM image_tags WHERE image_id = i.id ORDER BY rowid) t), "
            "(SELECT json_group_array(json_array(l.store, l.url, l.status, l.metadata)) FROM "
            " (SELECT * FROM image_locations WHERE image_id = i.id ORDER BY position) l), "
            "(SELECT json_group_array(json_array(m.member_id, m.status, m.created_at, m.updated_at)) FROM "
            " (SELECT * FROM image_members WHERE image_id = i.id ORDER BY created_at, member_id) m) "
            "FROM images i WHERE i.id IN (%s)"
        ) % (", ".join("i.%s" % c for c in IMAGE_ATTRIBUTES), marks)
        # On the reader: on the writer's connection a read between two statements of an open
        # transaction would see it half done (an image row already active, its location not yet
        # written: the edge answered such a record 204 No Content). One hop: execute and fetch.
        return {row[0]: row for row in await self._reader.execute_fetchall(sql, list(ids))}

    @staticmethod
    def _rows_to_images(ids: Sequence[str], rows: dict[str, Any]) -> list[Image]:
        out = []
        n = len(IMAGE_ATTRIBUTES)
        for image_id in ids:
            row = rows.get(image_id)
            if row is None:
                continue
            rec = dict(zip(IMAGE_ATTRIBUTES, row[:n], strict=True))
            for col in BOOL_COLUMNS:
                rec[col] = bool(rec[col])
            # Most images have no tags, locations or members: skip decoding their "[]" (a page
            # of 1,000 decoded 4,000 JSON documents, a fifth of the list's time).
            props, tags, locs, members = (json.loads(v) if v not in _EMPTY_JSON else _EMPTY_JSON[v]() for v in row[n:])
            out.append(
                Image(
                    **rec,
                    properties=props,
                    tags=tuple(tags),
                    locations=tuple(
                        Location(store=st, url=url, status=status, metadata=json.loads(meta))
                        for st, url, status, meta in locs
                    ),
                    members=tuple(
                        Member(ImageId(image_id), member, status, created, updated)
                        for member, status, created, updated in members
                    ),
                )
            )
        return out

    async def list_images(self, query: ImageQuery) -> list[Image]:
        return await self._load_images(await self.list_image_ids(query))

    async def list_image_ids(self, query: ImageQuery) -> list[ImageId]:
        """The ids a list query selects, in order (the records: stream_images)."""
        return [ImageId(row[0]) for row in await self._list_rows(query, "")]

    async def list_image_page(self, query: ImageQuery) -> tuple[list[ImageId], dict[str, int]]:
        """list_image_ids, and what each image's rows weigh (for stream_images), in the same
        statement: SQLite weighs only the rows the LIMIT keeps, and a page costs one round trip
        to the database thread less."""
        rows = await self._list_rows(query, ", " + _ROW_WEIGHT)
        return [ImageId(row[0]) for row in rows], {row[0]: int(row[1]) for row in rows}

    async def list_image_rows(self, query: ImageQuery) -> list[tuple[Any, ...]]:
        """What a list query selects as IMAGE_ROW_COLUMNS, in one statement: the operator's
        table of every image, without building each image's record (properties, locations,
        members), which costs ten times as much per image."""
        return [tuple(row) for row in await self._list_rows(query, _IMAGE_ROW_SELECT)]

    async def _list_rows(self, query: ImageQuery, columns: str) -> Sequence[Any]:
        """`columns`: what to select after the id (empty, or starting with a comma)."""
        where: list[str] = []
        args: list[Any] = []
        # Visibility, as Glance's image_get_all: an admin sees every image; anyone else public
        # ones, their project's own, and the shared ones their project is a member of with
        # `member_status` (community ones only when asked for).
        shared_args: list[Any] = [query.project]
        if query.member_status != "all":
            shared_args.append(query.member_status)
        shared_with = "(i.visibility = 'shared' AND %s)" % (
            _MEMBER_OF % (" AND m.status = ?" if len(shared_args) > 1 else "")
        )
        if query.visibility == "community":
            where.append("i.visibility = 'community'")
        elif query.visibility and query.visibility != "all":
            where.append("i.visibility = ?")
            args.append(query.visibility)
            if not query.admin and query.visibility == "private":
                where.append("i.owner = ?")
                args.append(query.project)
            elif not query.admin and query.visibility == "shared":
                where.append("(i.owner = ? OR %s)" % shared_with)
                args.extend([query.project, *shared_args])
        elif not query.admin:
            public = (
                "i.visibility IN ('public', 'community')" if query.visibility == "all" else "i.visibility = 'public'"
            )
            where.append("(%s OR i.owner = ? OR %s)" % (public, shared_with))
            args.extend([query.project, *shared_args])
        # Glance: by default hidden images are left out; os_hidden=true lists only them.
        where.append("i.os_hidden = ?")
        args.append(int(query.os_hidden))
        for column, value in query.filters:
            where.append("i.%s = ?" % column)
            args.append(value)
        if query.ids:
            where.append("i.id IN (%s)" % ", ".join("?" * len(query.ids)))
            args.extend(query.ids)
        for name, value in query.property_filters:
            where.append(
                "EXISTS (SELECT 1 FROM image_properties p WHERE p.image_id = i.id AND p.name = ? AND p.value = ?)"
            )
            args.extend([name, value])
        for tag in query.tags:
            where.append("EXISTS (SELECT 1 FROM image_tags t WHERE t.image_id = i.id AND t.tag = ?)")
            args.append(tag)
        if query.size_min is not None:
            where.append("i.size >= ?")
            args.append(query.size_min)
        if query.size_max is not None:
            where.append("i.size <= ?")
            args.append(query.size_max)
        for column, op, stamp in query.time_filters:
            assert column in ("created_at", "updated_at") and op in ("<", "<=", "=", "!=", ">", ">=")
            where.append("i.%s %s ?" % (column, op))
            args.append(stamp)
        sort = list(query.sort)
        if not any(key == "id" for key, _ in sort):
            sort.append(("id", sort[-1][1] if sort else "desc"))  # a total order, so markers are exact
        if query.marker is not None:
            marker_row = await self._sort_values(
                query.marker, [k for k, _ in sort], None if query.admin else query.project
            )
            if marker_row is None:
                raise NotFound("marker %s not found" % query.marker)
            where.append(_after_marker(sort, marker_row, args))
        sql = "SELECT i.id%s FROM images i" % columns
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + ", ".join("%s %s" % (_sort_expr(k), d.upper()) for k, d in sort)
        sql += " LIMIT ?"
        args.append(query.limit)
        return list(await self._reader.execute_fetchall(sql, args))

    async def _sort_values(self, image_id: str, keys: list[str], project: str | None) -> tuple[Any, ...] | None:
        """The marker's sort values; a marker the caller cannot see (`project` set: not an admin)
        is unknown, or its place in the order would tell about an image of another project."""
        sql = "SELECT %s FROM images i WHERE id = ?" % ", ".join(_sort_expr(k) for k in keys)
        args = [image_id]
        if project is not None:
            sql += (
                " AND (i.visibility IN ('public', 'community') OR i.owner = ? OR (i.visibility = 'shared' AND %s))"
                % (_MEMBER_OF % "")
            )
            args.extend([project, project])
        rows = list(await self._reader.execute_fetchall(sql, args))
        return tuple(rows[0]) if rows else None

    async def update_image(
        self,
        image_id: str,
        *,
        expect_status: Iterable[str] | None = None,
        columns: dict[str, Any] | None = None,
        set_properties: dict[str, str] | None = None,
        remove_properties: Iterable[str] = (),
        tags: Sequence[str] | None = None,
        updated_at: str,
    ) -> Image:
        """Change an image in one transaction; with `expect_status`, only from those states
        (Conflict otherwise), so concurrent requests cannot both win a state transition."""
        cols = dict(columns or {})
        cols["updated_at"] = updated_at
        bad = set(cols) - set(IMAGE_ATTRIBUTES)
        if bad:  # pragma: no cover - programming error
            raise ValueError(bad)
        async with self._transaction() as db:
            sql = "UPDATE images SET %s WHERE id = ?" % ", ".join("%s = ?" % c for c in cols)
            args = [*cols.values(), image_id]
            if expect_status is not None:
                expected = list(expect_status)
                sql += " AND status IN (%s)" % ", ".join("?" * len(expected))
                args.extend(expected)
            cur = await db.execute(sql, args)
            if cur.rowcount == 0:
                async with db.execute("SELECT status FROM images WHERE id = ?", [image_id]) as c2:
                    row = await c2.fetchone()
                if row is None:
                    raise NotFound("No image found with ID %s" % image_id)
                raise Conflict(
                    "Image %s is %s; this operation needs it to be %s"
                    % (image_id, row[0], " or ".join(expect_status or ()))
                )
            for name in remove_properties:
                await db.execute("DELETE FROM image_properties WHERE image_id = ? AND name = ?", [image_id, name])
            if set_properties:
                await db.executemany(
                    "INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (image_id, name) DO UPDATE SET value = excluded.value",
                    [(image_id, k, v) for k, v in set_properties.items()],
                )
            if tags is not None:
                await db.execute("DELETE FROM image_tags WHERE image_id = ?", [image_id])
                await db.executemany(
                    "INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?, ?)", [(image_id, t) for t in tags]
                )
        return await self.get_image(image_id)

    async def add_tag(self, image_id: str, tag: str, updated_at: str) -> None:
        async with self._transaction() as db:
            await db.execute("INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?, ?)", [image_id, tag])
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    async def remove_tag(self, image_id: str, tag: str, updated_at: str) -> bool:
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM image_tags WHERE image_id = ? AND tag = ?", [image_id, tag])
            if cur.rowcount:
                await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])
            return cur.rowcount > 0

    # -- image members ----------------------------------------------------------------------

    async def add_member(self, member: Member, quota: int) -> Image:
        """Share an image with a project, keeping the image within `quota` members (-1: no
        limit; counted in the same transaction, so concurrent adds cannot overshoot). The
        image's updated_at moves too: the hub's change feed and the edges' mirror follow it."""
        async with self._transaction() as db:
            async with db.execute("SELECT member_id FROM image_members WHERE image_id = ?", [member.image_id]) as cur:
                current = [r[0] for r in await cur.fetchall()]
            if member.member_id in current:
                raise Conflict("Member %s is duplicated for image %s" % (member.member_id, member.image_id))
            if 0 <= quota < len(current) + 1:
                raise TooLarge(
                    "Image member limit exceeded for image %s: The limit has been exceeded on the number of "
                    "allowed image members for this image. Attempted: %d, Maximum: %d:"
                    % (member.image_id, len(current) + 1, quota)
                )
            cur = await db.execute(
                "UPDATE images SET updated_at = ? WHERE id = ?", [member.updated_at, member.image_id]
            )
            if cur.rowcount == 0:
                raise NotFound("No image found with ID %s" % member.image_id)
            await db.execute(
                "INSERT INTO image_members (image_id, member_id, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [member.image_id, member.member_id, member.status, member.created_at, member.updated_at],
            )
        return await self.get_image(member.image_id)

    async def set_member_status(self, image_id: str, member_id: str, status: str, updated_at: str) -> Image:
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE image_members SET status = ?, updated_at = ? WHERE image_id = ? AND member_id = ?",
                [status, updated_at, image_id, member_id],
            )
            if cur.rowcount == 0:
                raise NotFound("%s not found in the member list of the image %s." % (member_id, image_id))
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])
        return await self.get_image(image_id)

    async def remove_member(self, image_id: str, member_id: str, updated_at: str) -> None:
        async with self._transaction() as db:
            cur = await db.execute(
                "DELETE FROM image_members WHERE image_id = ? AND member_id = ?", [image_id, member_id]
            )
            if cur.rowcount == 0:
                raise NotFound("%s not found in the member list of the image %s." % (member_id, image_id))
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    async def activate_image(
        self, image_id: str, data: ImageData, location: Location, *, from_status: str, updated_at: str
    ) -> Image:
        """Record uploaded data and its first location, and turn the image active, atomically."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE images SET status = 'active', size = ?, virtual_size = ?, checksum = ?, "
                "os_hash_algo = ?, os_hash_value = ?, updated_at = ? WHERE id = ? AND status = ?",
                [
                    data.size,
                    data.virtual_size,
                    data.checksum,
                    data.os_hash_algo,
                    data.os_hash_value,
                    updated_at,
                    image_id,
                    from_status,
                ],
            )
            if cur.rowcount == 0:
                raise Conflict("Image %s changed state during the upload (deleted or reset)" % image_id)
            await self._insert_location(db, image_id, location)
        return await self.get_image(image_id)

    async def _insert_location(self, db: aiosqlite.Connection, image_id: str, location: Location) -> None:
        await db.execute(
            "INSERT INTO image_locations (image_id, store, url, status, metadata, position) VALUES "
            "(?, ?, ?, ?, ?, (SELECT COALESCE(MAX(position), 0) + 1 FROM image_locations WHERE image_id = ?)) "
            "ON CONFLICT (image_id, store) DO UPDATE SET url = excluded.url, status = excluded.status, "
            "metadata = excluded.metadata",
            [image_id, location.store, location.url, location.status, json.dumps(location.metadata), image_id],
        )

    async def add_location(self, image_id: str, location: Location, updated_at: str) -> None:
        async with self._transaction() as db:
            await self._insert_location(db, image_id, location)
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    async def remove_location(self, image_id: str, store: str, updated_at: str, *, keep_last: bool = True) -> None:
        """Forget one store's copy. With keep_last, refuse to drop the only copy of an image."""
        async with self._transaction() as db:
            async with db.execute("SELECT store FROM image_locations WHERE image_id = ?", [image_id]) as cur:
                stores = [r[0] for r in await cur.fetchall()]
            if store not in stores:
                raise NotFound("Image %s has no data in store %s" % (image_id, store))
            if keep_last and len(stores) == 1:
                # Glance answers 403 here; the message says what to do instead.
                raise Forbidden(
                    "Cannot delete image data from the only store containing it: store %s holds the only "
                    "copy of image %s; delete the image instead" % (store, image_id)
                )
            await db.execute("DELETE FROM image_locations WHERE image_id = ? AND store = ?", [image_id, store])
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    async def set_location_status(self, image_id: str, store: str, status: str, updated_at: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE image_locations SET status = ? WHERE image_id = ? AND store = ?", [status, image_id, store]
            )
            await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    async def servable_copies(self) -> list[tuple[str, str, int | None, str | None]]:
        """(image id, store, size, sha512) of every active copy of an image that has data."""
        async with self._db.execute(
            "SELECT l.image_id, l.store, i.size, i.os_hash_value "
            "FROM image_locations l JOIN images i ON i.id = l.image_id "
            "WHERE l.status = 'active' AND i.status IN ('active', 'deactivated') ORDER BY l.image_id, l.position"
        ) as cur:
            return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]

    async def delete_image(self, image_id: str) -> None:
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM images WHERE id = ?", [image_id])
            if cur.rowcount == 0:
                raise NotFound("No image found with ID %s" % image_id)

    async def images_in_status(self, status: str) -> list[ImageId]:
        async with self._db.execute("SELECT id FROM images WHERE status = ?", [status]) as cur:
            return [ImageId(r[0]) for r in await cur.fetchall()]

    async def image_ids_in_store(self, store: str) -> set[str]:
        async with self._db.execute("SELECT image_id FROM image_locations WHERE store = ?", [store]) as cur:
            return {r[0] for r in await cur.fetchall()}

    async def image_counts(self) -> dict[str, int]:
        """Number of images per status."""
        async with self._db.execute("SELECT status, COUNT(*) FROM images GROUP BY status") as cur:
            return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def project_usage(self, project: str, stores: Sequence[str]) -> ProjectUsage:
        async with self._db.execute(
            "SELECT COUNT(*), group_concat(CASE WHEN status IN ('saving', 'uploading', 'importing') THEN id END), "
            "(SELECT COALESCE(SUM(i.size), 0) FROM image_locations l JOIN images i ON i.id = l.image_id "
            " WHERE i.owner = ?1 AND i.size IS NOT NULL AND l.store IN (SELECT value FROM json_each(?2))) "
            "FROM images WHERE owner = ?1",
            [project, json.dumps(list(stores))],
        ) as cur:
            row = await cur.fetchone()
        assert row is not None
        return ProjectUsage(
            images=int(row[0]),
            stored_bytes=int(row[2]),
            uploading=tuple(ImageId(i) for i in (row[1] or "").split(",") if i),
        )

    async def task_counts(self) -> dict[str, int]:
        """Number of tasks per status."""
        async with self._db.execute("SELECT status, COUNT(*) FROM tasks GROUP BY status") as cur:
            return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def count_images(self) -> int:
        async with self._db.execute("SELECT COUNT(*) FROM images") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def edit_list_properties(self, image_id: str, edits: Sequence[ListEdit], updated_at: str) -> None:
        async with self._transaction() as db:
            await self._edit_lists(db, image_id, edits, updated_at)

    async def _edit_lists(
        self, db: aiosqlite.Connection, image_id: str, edits: Sequence[ListEdit], updated_at: str
    ) -> None:
        for edit in edits:
            async with db.execute(
                "SELECT value FROM image_properties WHERE image_id = ? AND name = ?", [image_id, edit.name]
            ) as cur:
                row = await cur.fetchone()
            items = [v for v in (row[0].split(",") if row else []) if v]
            items = [v for v in dict.fromkeys([*items, *edit.add]) if v not in edit.remove]
            if not items and edit.drop_empty:
                await db.execute("DELETE FROM image_properties WHERE image_id = ? AND name = ?", [image_id, edit.name])
            else:
                await db.execute(
                    "INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (image_id, name) DO UPDATE SET value = excluded.value",
                    [image_id, edit.name, ",".join(items)],
                )
        await db.execute("UPDATE images SET updated_at = ? WHERE id = ?", [updated_at, image_id])

    # -- edge sites (hub) -------------------------------------------------------------------

    async def register_site(self, site: Site, *, keep_cache: bool = False) -> Site:
        """Insert or refresh a site; a re-registration keeps the first registration time (and,
        with keep_cache, the cache figures of the last heartbeat)."""
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO sites "
                "(name, registered_at, last_seen, free_bytes, total_bytes, version, api_url, stores, cache) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET last_seen = excluded.last_seen, "
                "free_bytes = excluded.free_bytes, total_bytes = excluded.total_bytes, version = excluded.version, "
                "api_url = excluded.api_url, stores = excluded.stores, "
                "cache = CASE WHEN ? THEN sites.cache ELSE excluded.cache END",
                [
                    site.name,
                    site.registered_at,
                    site.last_seen,
                    site.free_bytes,
                    site.total_bytes,
                    site.version,
                    site.api_url,
                    json.dumps(list(site.stores)),
                    json.dumps(site.cache),
                    keep_cache,
                ],
            )
        return await self.get_site(site.name)

    async def set_location_urls(self, store: str, urls: dict[str, str]) -> None:
        """Point a store's locations at new URLs (image id → url): a site moved its API."""
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE image_locations SET url = ? WHERE image_id = ? AND store = ?",
                [(url, image_id, store) for image_id, url in urls.items()],
            )

    async def site_heartbeat(self, name: str, last_seen: float, changes: dict[str, Any]) -> None:
        """Record a heartbeat; `changes` holds the reported free_bytes/total_bytes/cache."""
        cols = {"last_seen": last_seen, **{k: json.dumps(v) if k == "cache" else v for k, v in changes.items()}}
        if set(cols) - {"last_seen", "free_bytes", "total_bytes", "cache"}:  # pragma: no cover - programming error
            raise ValueError(cols)
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE sites SET %s WHERE name = ?" % ", ".join("%s = ?" % c for c in cols), [*cols.values(), name]
            )
            if cur.rowcount == 0:
                raise NotFound(
                    "No site named %s is registered with this hub; register it first (POST /v2/edge/sites)" % name
                )

    async def get_site(self, name: str) -> Site:
        sites = await self._sites("WHERE name = ?", [name])
        if not sites:
            raise NotFound("No site named %s is registered with this hub" % name)
        return sites[0]

    async def list_sites(self) -> list[Site]:
        return await self._sites("ORDER BY name", [])

    async def _sites(self, tail: str, args: list[Any]) -> list[Site]:
        async with self._db.execute(
            "SELECT name, registered_at, last_seen, free_bytes, total_bytes, version, api_url, stores, cache "
            "FROM sites " + tail,
            args,
        ) as cur:
            rows = await cur.fetchall()
        return [
            Site(
                name=r[0],
                registered_at=r[1],
                last_seen=r[2],
                free_bytes=r[3],
                total_bytes=r[4],
                version=r[5],
                api_url=r[6],
                stores=tuple(json.loads(r[7])),
                cache=json.loads(r[8]),
            )
            for r in rows
        ]

    async def delete_site(self, name: str, list_names: Sequence[str], updated_at: str) -> None:
        """Forget a site: its locations, its assignments, and its name in the images' store lists."""
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM sites WHERE name = ?", [name])  # assignments cascade
            if cur.rowcount == 0:
                raise NotFound("No site named %s is registered with this hub" % name)
            await db.execute("DELETE FROM image_locations WHERE store = ?", [name])
            async with db.execute(
                "SELECT DISTINCT image_id FROM image_properties WHERE name IN (%s) AND ',' || value || ',' LIKE ?"
                % ", ".join("?" * len(list_names)),
                [*list_names, "%%,%s,%%" % name],
            ) as cur:
                ids = [r[0] for r in await cur.fetchall()]
            for image_id in ids:
                await self._edit_lists(
                    db, image_id, [ListEdit(n, remove=(name,), drop_empty=True) for n in list_names], updated_at
                )

    async def site_assignments(self, site: str) -> list[Assignment]:
        return await self._assignments("WHERE site = ? ORDER BY created_at, rowid", [site])

    async def image_assignments(self, image_id: str) -> list[Assignment]:
        return await self._assignments("WHERE image_id = ? ORDER BY site", [image_id])

    async def _assignments(self, tail: str, args: list[Any]) -> list[Assignment]:
        async with self._db.execute(
            "SELECT site, image_id, action, created_at FROM site_assignments " + tail, args
        ) as cur:
            return [
                Assignment(site=r[0], image_id=ImageId(r[1]), action=r[2], created_at=r[3])
                for r in await cur.fetchall()
            ]

    async def assign(
        self,
        image_id: str,
        sites: Sequence[str],
        action: str,
        created_at: str,
        edits: Sequence[ListEdit],
        *,
        remove_locations: bool = False,
    ) -> None:
        """Give each site `action` for the image (replacing what was pending), optionally drop the
        sites' locations, and edit the progress lists: all at once."""
        async with self._transaction() as db:
            try:
                await db.executemany(
                    "INSERT INTO site_assignments (site, image_id, action, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (site, image_id) DO UPDATE SET "
                    "action = excluded.action, created_at = excluded.created_at",
                    [(site, image_id, action, created_at) for site in sites],
                )
            except aiosqlite.IntegrityError as exc:  # the image or a site went away meanwhile
                raise NotFound("Image %s or site %s no longer exists" % (image_id, ", ".join(sites))) from exc
            if remove_locations:
                await db.executemany(
                    "DELETE FROM image_locations WHERE image_id = ? AND store = ?", [(image_id, site) for site in sites]
                )
            await self._edit_lists(db, image_id, edits, created_at)

    async def finish_assignment(
        self,
        site: str,
        image_id: str,
        action: str,
        edits: Sequence[ListEdit],
        updated_at: str,
        *,
        location: Location | None = None,
    ) -> None:
        """Close a pending assignment (Conflict if there is none with that action): record the
        site's new location if any and edit the progress lists, atomically."""
        async with self._transaction() as db:
            cur = await db.execute(
                "DELETE FROM site_assignments WHERE site = ? AND image_id = ? AND action = ?", [site, image_id, action]
            )
            if cur.rowcount == 0:
                raise Conflict("No pending %s assignment of image %s for site %s" % (action, image_id, site))
            if location is not None:
                await self._insert_location(db, image_id, location)
            await self._edit_lists(db, image_id, edits, updated_at)

    # -- tasks ----------------------------------------------------------------------------

    async def create_task(self, task: Task) -> Task:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO tasks (id, type, status, owner, image_id, input, result, message, created_at, "
                "updated_at, expires_at, bytes_done, bytes_total) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    task.id,
                    task.type,
                    task.status,
                    task.owner,
                    task.image_id,
                    json.dumps(task.input),
                    None if task.result is None else json.dumps(task.result),
                    task.message,
                    task.created_at,
                    task.updated_at,
                    task.expires_at,
                    task.bytes_done,
                    task.bytes_total,
                ],
            )
        return await self.get_task(task.id)

    async def get_task(self, task_id: str) -> Task:
        tasks = await self._tasks("WHERE id = ?", [task_id])
        if not tasks:
            raise NotFound("Task with the given ID %s not found" % task_id)
        return tasks[0]

    async def list_tasks(self, image_id: str | None = None, limit: int = 100) -> list[Task]:
        if image_id is None:
            return await self._tasks("ORDER BY created_at DESC, rowid DESC LIMIT ?", [limit])
        return await self._tasks("WHERE image_id = ? ORDER BY created_at DESC, rowid DESC LIMIT ?", [image_id, limit])

    async def _tasks(self, tail: str, args: list[Any]) -> list[Task]:
        async with self._db.execute(
            "SELECT id, type, status, owner, image_id, input, result, message, created_at, updated_at, "
            "expires_at, bytes_done, bytes_total FROM tasks " + tail,
            args,
        ) as cur:
            rows = await cur.fetchall()
        return [
            Task(
                id=TaskId(r[0]),
                type=r[1],
                status=r[2],
                owner=r[3],
                image_id=r[4],
                input=json.loads(r[5]),
                result=None if r[6] is None else json.loads(r[6]),
                message=r[7],
                created_at=r[8],
                updated_at=r[9],
                expires_at=r[10],
                bytes_done=r[11],
                bytes_total=r[12],
            )
            for r in rows
        ]

    async def update_task(self, task_id: str, updated_at: str, **changes: Any) -> None:
        allowed = {"status", "result", "message", "expires_at", "bytes_done", "bytes_total"}
        if set(changes) - allowed:  # pragma: no cover - programming error
            raise ValueError(set(changes) - allowed)
        if "result" in changes and changes["result"] is not None:
            changes["result"] = json.dumps(changes["result"])
        changes["updated_at"] = updated_at
        async with self._transaction() as db:
            await db.execute(
                "UPDATE tasks SET %s WHERE id = ?" % ", ".join("%s = ?" % k for k in changes),
                [*changes.values(), task_id],
            )

    # -- mirrored images (records whose data lives at the hub) ------------------------------

    async def upsert_mirrored_images(self, images: Sequence[Image], hub_store: str) -> None:
        """Insert or refresh hub image records in one transaction. Columns, properties and
        tags follow the hub; the `hub_store` location is set from the record; the
        site's own locations (pinned copies) are never touched. An image created here and
        copied to the hub stays this site's: the hub's record of it is not taken."""
        if not images:
            return
        cols = [c for c in IMAGE_ATTRIBUTES if c != "id"]
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id FROM images WHERE mirrored = 0 AND id IN (%s)" % ", ".join("?" * len(images)),
                [image.id for image in images],
            ) as cur:
                own = {r[0] for r in await cur.fetchall()}
            images = [image for image in images if image.id not in own]
            # A new record is marked mirrored.
            await db.executemany(
                "INSERT INTO images (%s, mirrored) VALUES (%s, 1) ON CONFLICT (id) DO UPDATE SET %s"
                % (
                    ", ".join(IMAGE_ATTRIBUTES),
                    ", ".join("?" * len(IMAGE_ATTRIBUTES)),
                    ", ".join("%s = excluded.%s" % (c, c) for c in cols),
                ),
                [[getattr(image, c) for c in IMAGE_ATTRIBUTES] for image in images],
            )
            ids = [(image.id,) for image in images]
            await db.executemany("DELETE FROM image_properties WHERE image_id = ?", ids)
            await db.executemany("DELETE FROM image_tags WHERE image_id = ?", ids)
            await db.executemany(
                "INSERT INTO image_properties (image_id, name, value) VALUES (?, ?, ?)",
                [(image.id, k, v) for image in images for k, v in image.properties.items()],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO image_tags (image_id, tag) VALUES (?, ?)",
                [(image.id, t) for image in images for t in image.tags],
            )
            await db.executemany(
                "DELETE FROM image_locations WHERE image_id = ? AND store = ?",
                [(image.id, hub_store) for image in images],
            )
            for image in images:
                for location in image.locations:
                    if location.store == hub_store:
                        await self._insert_location(db, image.id, location)
            # The members follow the hub's record too: who may see a shared image is the hub's word.
            await db.executemany("DELETE FROM image_members WHERE image_id = ?", ids)
            await db.executemany(
                "INSERT OR IGNORE INTO image_members (image_id, member_id, status, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    (image.id, m.member_id, m.status, m.created_at, m.updated_at)
                    for image in images
                    for m in image.members
                ],
            )

    async def is_mirrored(self, image_id: str) -> bool:
        """The record came from the hub (the hub link wrote it), as opposed to an image created
        here, even one since copied to the hub."""
        async with self._db.execute("SELECT mirrored FROM images WHERE id = ?", [image_id]) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound("No image found with ID %s" % image_id)
        return bool(row[0])

    async def image_ids_with_location(self, store: str) -> list[str]:
        async with self._db.execute(
            "SELECT image_id FROM image_locations WHERE store = ? ORDER BY image_id", [store]
        ) as cur:
            return [r[0] for r in await cur.fetchall()]

    # -- change feed (hub) ------------------------------------------------------------------

    async def keep_change_feed(self, keep: bool, feed_id: str) -> None:
        """Start recording image changes (`feed_id` names the new feed; a running one keeps its
        id), or stop and drop them: a feed with a hole in it must not be offered again under the
        same id."""
        async with self._transaction() as db:
            async with db.execute("SELECT 1 FROM change_feed") as cur:
                running = await cur.fetchone() is not None
            if keep and not running:
                await db.execute("DELETE FROM image_changes")
                await db.execute("INSERT INTO change_feed (feed_id) VALUES (?)", [feed_id])
            elif not keep and running:
                await db.execute("DELETE FROM change_feed")
                await db.execute("DELETE FROM image_changes")

    async def changes(self, since: int, limit: int) -> ChangePage:
        """The changes after serial `since`, oldest first, at most `limit` (NotFound: no feed is kept)."""
        async with self._write_lock:  # one consistent view of the feed and its changes
            async with self._db.execute("SELECT feed_id, pruned_through FROM change_feed") as cur:
                feed = await cur.fetchone()
            if feed is None:
                raise NotFound("This appliance keeps no change feed (it runs as an edge, not as a hub)")
            async with self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'image_changes'") as cur:
                latest = await cur.fetchone()
            async with self._db.execute(
                "SELECT serial, image_id, kind, changed_at FROM image_changes WHERE serial > ? ORDER BY serial LIMIT ?",
                [since, limit + 1],
            ) as cur:
                rows = list(await cur.fetchall())
        return ChangePage(
            feed=feed[0],
            pruned_through=int(feed[1]),
            latest=int(latest[0]) if latest else 0,
            changes=tuple(ImageChange(int(r[0]), r[1], r[2], r[3]) for r in rows[:limit]),
            more=len(rows) > limit,
        )

    # -- cache ------------------------------------------------------------------------------

    async def cache_entries(self) -> list[CacheEntry]:
        async with self._db.execute(
            "SELECT image_id, size, cached_at, last_accessed, hits FROM cache_entries ORDER BY last_accessed"
        ) as cur:
            return [CacheEntry(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]

    async def put_cache_entry(self, entry: CacheEntry) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO cache_entries (image_id, size, cached_at, last_accessed, hits) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (image_id) DO UPDATE SET size = excluded.size, cached_at = excluded.cached_at, "
                "last_accessed = excluded.last_accessed, hits = excluded.hits",
                [entry.image_id, entry.size, entry.cached_at, entry.last_accessed, entry.hits],
            )
            await db.execute("DELETE FROM cache_queue WHERE image_id = ?", [entry.image_id])

    async def touch_cache_entry(self, image_id: str, accessed: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE cache_entries SET last_accessed = ?, hits = hits + 1 WHERE image_id = ?", [accessed, image_id]
            )

    async def delete_cache_entries(self, image_ids: Sequence[str]) -> None:
        async with self._transaction() as db:
            await db.executemany("DELETE FROM cache_entries WHERE image_id = ?", [(i,) for i in image_ids])

    async def queued_for_cache(self) -> list[QueuedImage]:
        async with self._db.execute(
            "SELECT image_id, queued_at, attempts, last_error, next_attempt_at FROM cache_queue ORDER BY queued_at"
        ) as cur:
            return [QueuedImage(r[0], r[1], r[2], r[3], r[4]) for r in await cur.fetchall()]

    async def queue_for_cache(self, image_id: str, queued_at: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR IGNORE INTO cache_queue (image_id, queued_at) VALUES (?, ?)", [image_id, queued_at]
            )

    async def set_queue_failure(self, image_id: str, error: str, next_attempt_at: float) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE cache_queue SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE image_id = ?",
                [error, next_attempt_at, image_id],
            )

    async def dequeue_from_cache(self, image_ids: Sequence[str]) -> None:
        async with self._transaction() as db:
            await db.executemany("DELETE FROM cache_queue WHERE image_id = ?", [(i,) for i in image_ids])

    # -- metadata definitions ---------------------------------------------------------------------

    async def metadef_namespaces(self) -> list[MetadefNamespace]:
        async with self._db.execute("SELECT %s FROM metadef_namespaces" % _NS_COLUMNS) as cur:
            return [_namespace(r) for r in await cur.fetchall()]

    async def get_metadef_namespace(self, name: str) -> MetadefNamespace:
        async with self._db.execute(
            "SELECT %s FROM metadef_namespaces WHERE namespace = ?" % _NS_COLUMNS, [name]
        ) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound("Metadata definition namespace=%s was not found." % name)
        return _namespace(row)

    async def metadef_items(self, namespace: str | None, kind: str) -> list[MetadefItem]:
        """The items of one kind, of `namespace` or (None) of every namespace, by name."""
        where, args = "kind = ?", [kind]
        if namespace is not None:
            where, args = where + " AND namespace = ?", [kind, namespace]
        async with self._db.execute(
            "SELECT namespace, kind, name, body, created_at, updated_at FROM metadef_items WHERE %s "
            "ORDER BY namespace, created_at, rowid" % where,
            args,
        ) as cur:
            return [_item(r) for r in await cur.fetchall()]

    async def create_metadef_namespace(self, ns: MetadefNamespace, items: Sequence[MetadefItem]) -> None:
        async with self._transaction() as db:
            try:
                await db.execute(
                    "INSERT INTO metadef_namespaces (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % _NS_COLUMNS, _ns_row(ns)
                )
            except sqlite3.IntegrityError:
                raise Conflict("The metadata definition namespace=%s already exists." % ns.namespace) from None
            for item in items:
                await self._insert_item(db, item)

    async def replace_metadef_namespace(self, ns: MetadefNamespace, items: Sequence[MetadefItem]) -> None:
        """`ns` with exactly `items`, whether it existed or not (a mirror or a load)."""
        async with self._transaction() as db:
            await db.execute("DELETE FROM metadef_namespaces WHERE namespace = ?", [ns.namespace])
            await db.execute(
                "INSERT INTO metadef_namespaces (%s) VALUES (?, ?, ?, ?, ?, ?, ?, ?)" % _NS_COLUMNS, _ns_row(ns)
            )
            for item in items:
                await self._insert_item(db, item)

    async def update_metadef_namespace(self, old_name: str, ns: MetadefNamespace) -> None:
        """Saves `ns` over `old_name` (a rename takes the namespace's items along)."""
        async with self._transaction() as db:
            try:
                cur = await db.execute(
                    "UPDATE metadef_namespaces SET namespace = ?, display_name = ?, description = ?, "
                    "visibility = ?, protected = ?, owner = ?, created_at = ?, updated_at = ? WHERE namespace = ?",
                    [*_ns_row(ns), old_name],
                )
            except sqlite3.IntegrityError:
                raise Conflict("The metadata definition namespace=%s already exists." % ns.namespace) from None
            if cur.rowcount == 0:
                raise NotFound("Metadata definition namespace=%s was not found." % old_name)

    async def delete_metadef_namespace(self, name: str) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM metadef_namespaces WHERE namespace = ?", [name])

    async def put_metadef_item(self, item: MetadefItem, *, old_name: str | None = None) -> None:
        """Adds `item` (old_name None; Conflict if its name is taken) or saves it over `old_name`."""
        async with self._transaction() as db:
            if old_name is not None:
                cur = await db.execute(
                    "DELETE FROM metadef_items WHERE namespace = ? AND kind = ? AND name = ?",
                    [item.namespace, item.kind, old_name],
                )
                if cur.rowcount == 0:
                    raise NotFound("Metadata definition %s=%s was not found." % (item.kind, old_name))
            await self._insert_item(db, item)

    async def replace_metadef_items(self, namespace: str, kind: str, items: Sequence[MetadefItem]) -> None:
        async with self._transaction() as db:
            await db.execute("DELETE FROM metadef_items WHERE namespace = ? AND kind = ?", [namespace, kind])
            for item in items:
                await self._insert_item(db, item)

    async def delete_metadef_items(self, namespace: str, kind: str, name: str | None = None) -> int:
        """Deletes one item (`name`) or every item of `kind`; returns how many went."""
        sql, args = "DELETE FROM metadef_items WHERE namespace = ? AND kind = ?", [namespace, kind]
        if name is not None:
            sql, args = sql + " AND name = ?", [*args, name]
        async with self._transaction() as db:
            cur = await db.execute(sql, args)
            return cur.rowcount

    async def _insert_item(self, db: aiosqlite.Connection, item: MetadefItem) -> None:
        if item.kind == "resource_type":
            # An association names a resource type; one first named here comes into being.
            await db.execute(
                "INSERT OR IGNORE INTO metadef_resource_types (name, protected, created_at, updated_at) "
                "VALUES (?, 0, ?, ?)",
                [item.name, item.created_at, item.created_at],
            )
        if item.kind == "tag":  # Glance's tag names are unique whatever their case
            async with db.execute(
                "SELECT 1 FROM metadef_items WHERE namespace = ? AND kind = 'tag' AND lower(name) = lower(?)",
                [item.namespace, item.name],
            ) as cur:
                if await cur.fetchone() is not None:
                    raise Conflict(
                        "A metadata tag with name=%s already exists in namespace=%s. (Please note that metadata "
                        "tag names are case insensitive)." % (item.name, item.namespace)
                    )
        try:
            await db.execute(
                "INSERT INTO metadef_items (namespace, kind, name, body, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [item.namespace, item.kind, item.name, json.dumps(item.body), item.created_at, item.updated_at],
            )
        except sqlite3.IntegrityError:
            what = {"resource_type": "resource type association"}.get(item.kind, item.kind)
            raise Conflict(
                "A metadata definition %s with name=%s already exists in namespace=%s."
                % (what, item.name, item.namespace)
            ) from None

    async def metadef_resource_types(self) -> list[MetadefResourceType]:
        async with self._db.execute(
            "SELECT name, protected, created_at, updated_at FROM metadef_resource_types ORDER BY name"
        ) as cur:
            return [MetadefResourceType(r[0], bool(r[1]), r[2], r[3]) for r in await cur.fetchall()]

    async def add_metadef_resource_types(self, types: Sequence[MetadefResourceType]) -> None:
        async with self._transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO metadef_resource_types (name, protected, created_at, updated_at) "
                "VALUES (?, ?, ?, ?)",
                [(t.name, int(t.protected), t.created_at, t.updated_at) for t in types],
            )


_NS_COLUMNS = "namespace, display_name, description, visibility, protected, owner, created_at, updated_at"


def _namespace(row: Any) -> MetadefNamespace:
    return MetadefNamespace(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])


def _ns_row(ns: MetadefNamespace) -> list[Any]:
    return [
        ns.namespace,
        ns.display_name,
        ns.description,
        ns.visibility,
        int(ns.protected),
        ns.owner,
        ns.created_at,
        ns.updated_at,
    ]


def _item(row: Any) -> MetadefItem:
    return MetadefItem(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5])


# About the bytes image `i`'s properties, tags, locations and members take (Catalog._row_weights).
_ROW_WEIGHT = (
    "coalesce((SELECT sum(length(name) + length(value)) FROM image_properties WHERE image_id = i.id), 0)"
    " + coalesce((SELECT sum(length(tag)) FROM image_tags WHERE image_id = i.id), 0)"
    " + coalesce((SELECT sum(length(url) + coalesce(length(metadata), 0) + 32)"
    " FROM image_locations WHERE image_id = i.id), 0)"
    " + 96 * (SELECT count(*) FROM image_members WHERE image_id = i.id)"
)
# list_image_rows: the columns of an operator's image table; `stores`: those holding a servable
# copy (as Image.stores), comma-separated, in location order; then the two properties in which
# Glance keeps a copy-image's progress (the copies on their way to stores and sites, and those
# that failed).
ROW_ATTRIBUTES = (
    "id",
    "name",
    "status",
    "disk_format",
    "container_format",
    "size",
    "virtual_size",
    "visibility",
    "protected",
    "owner",
    "updated_at",
)
ROW_PROPERTIES = ("os_glance_importing_to_stores", "os_glance_failed_import")
IMAGE_ROW_COLUMNS = (*ROW_ATTRIBUTES, "stores", *ROW_PROPERTIES)
_IMAGE_ROW_SELECT = (
    "".join(", i.%s" % c for c in ROW_ATTRIBUTES[1:]) + ", (SELECT group_concat(l.store, ',') FROM"
    " (SELECT store FROM image_locations WHERE image_id = i.id AND status = 'active' ORDER BY position) l)"
    + "".join(
        ", (SELECT value FROM image_properties WHERE image_id = i.id AND name = '%s')" % name for name in ROW_PROPERTIES
    )
)
# The caller's project (the first argument) is a member of image `i`; %s: more conditions on `m`.
_MEMBER_OF = "EXISTS (SELECT 1 FROM image_members m WHERE m.image_id = i.id AND m.member_id = ?%s)"


def _sort_expr(key: str) -> str:
    # NULLs sort as the smallest value of their kind so keyset comparisons stay well defined.
    if key in INT_COLUMNS:
        return "COALESCE(i.%s, -1)" % key
    return "COALESCE(i.%s, '')" % key


def _after_marker(sort: list[tuple[str, str]], marker: tuple[Any, ...], args: list[Any]) -> str:
    """Keyset condition: rows strictly after the marker row in the (mixed-direction) sort order."""
    ors = []
    for i, (key, direction) in enumerate(sort):
        ands = []
        for j in range(i):
            ands.append("%s = ?" % _sort_expr(sort[j][0]))
            args.append(marker[j])
        ands.append("%s %s ?" % (_sort_expr(key), "<" if direction == "desc" else ">"))
        args.append(marker[i])
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")"
