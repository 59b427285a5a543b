"""The SQLite catalog: migrations, WAL, and keyset pagination over mixed sort orders."""

from __future__ import annotations

import logging
import random
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from appliance.catalog import MIGRATIONS, Catalog, ImageQuery
from appliance.errors import Conflict, Forbidden, NotFound
from appliance.model import Image, ImageData, ImageId, Location

STAMP = "2024-01-01T00:00:00Z"


def make_image(**fields: Any) -> Image:
    values: dict[str, Any] = dict(
        id=ImageId(str(uuid.uuid4())),
        name=None,
        status="queued",
        visibility="public",
        protected=False,
        os_hidden=False,
        owner="p",
        disk_format="raw",
        container_format="bare",
        min_disk=0,
        min_ram=0,
        size=None,
        virtual_size=None,
        checksum=None,
        os_hash_algo=None,
        os_hash_value=None,
        created_at=STAMP,
        updated_at=STAMP,
    )
    values.update(fields)
    return Image(**values)


# -- migrations ---------------------------------------------------------------------------


async def test_fresh_catalog_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "catalog.sqlite"
    async with Catalog.open(path) as catalog:
        assert await catalog.schema_version() == len(MIGRATIONS)
        assert await catalog.count_images() == 0
    assert path.is_file()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(len(MIGRATIONS),)]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"images", "image_properties", "image_tags", "image_locations", "tasks", "schema_version"} <= tables


async def test_reopening_does_not_migrate_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "catalog.sqlite"
    caplog.set_level(logging.INFO, logger="appliance.catalog")
    async with Catalog.open(path) as catalog:
        image = await catalog.create_image(make_image(name="kept", properties={"k": "v"}, tags=("t",)))
    migrated = [r for r in caplog.records if "migrating" in r.getMessage()]
    assert len(migrated) == len(MIGRATIONS)
    caplog.clear()
    async with Catalog.open(path) as catalog:
        assert await catalog.schema_version() == len(MIGRATIONS)
        again = await catalog.get_image(image.id)
    assert again == image
    assert [r for r in caplog.records if "migrating" in r.getMessage()] == []
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == 1


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    async with Catalog.open(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", [len(MIGRATIONS) + 1])
    with pytest.raises(RuntimeError, match="newer"):
        async with Catalog.open(path):
            pass


# -- records ------------------------------------------------------------------------------


async def test_round_trip_and_conflicts(tmp_path: Path) -> None:
    async with Catalog.open(tmp_path / "c.sqlite") as catalog:
        image = make_image(name="n", properties={"a": "1", "b": "2"}, tags=("x", "y"), protected=True)
        created = await catalog.create_image(image)
        assert created == image
        with pytest.raises(Conflict):
            await catalog.create_image(make_image(id=image.id))
        with pytest.raises(NotFound):
            await catalog.get_image(str(uuid.uuid4()))
        # state transitions are compare-and-set
        with pytest.raises(Conflict):
            await catalog.update_image(
                image.id, expect_status=["active"], columns={"status": "deactivated"}, updated_at=STAMP
            )
        saving = await catalog.update_image(
            image.id, expect_status=["queued"], columns={"status": "saving"}, updated_at="2024-01-02T00:00:00Z"
        )
        assert saving.status == "saving" and saving.updated_at == "2024-01-02T00:00:00Z"
        data = ImageData(size=3, checksum="c", os_hash_value="h", virtual_size=3)
        loc = Location(store="local", url="file:///x", metadata={"store": "local"})
        active = await catalog.activate_image(image.id, data, loc, from_status="saving", updated_at=STAMP)
        assert active.status == "active" and active.size == 3 and active.locations == (loc,)
        with pytest.raises(Conflict):
            await catalog.activate_image(image.id, data, loc, from_status="saving", updated_at=STAMP)
        with pytest.raises(Forbidden):
            await catalog.remove_location(image.id, "local", STAMP)  # the only copy
        await catalog.add_location(image.id, Location(store="other", url="file:///y"), STAMP)
        assert (await catalog.get_image(image.id)).stores == ("local", "other")
        await catalog.remove_location(image.id, "local", STAMP)
        assert (await catalog.get_image(image.id)).stores == ("other",)
        with pytest.raises(NotFound):
            await catalog.remove_location(image.id, "local", STAMP)
        await catalog.delete_image(image.id)
        with pytest.raises(NotFound):
            await catalog.delete_image(image.id)
    with sqlite3.connect(tmp_path / "c.sqlite") as db:  # children went with the image
        for table in ("image_properties", "image_tags", "image_locations"):
            assert db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0] == 0


# -- keyset pagination --------------------------------------------------------------------


def expected_order(images: list[Image], sort: list[tuple[str, str]]) -> list[str]:
    """What the catalog promises: the sort keys (NULL as the smallest value), then id in the
    last key's direction."""
    keys = list(sort)
    if not any(k == "id" for k, _ in keys):
        keys.append(("id", keys[-1][1]))
    out = list(images)
    for key, direction in reversed(keys):  # stable sorts, least significant key first

        def value(i: Image, key: str = key) -> Any:
            v = getattr(i, key)
            if v is None:
                return -1 if key in ("size", "virtual_size", "min_disk", "min_ram") else ""
            return v

        out.sort(key=value, reverse=direction == "desc")
    return [i.id for i in out]


async def paginate(catalog: Catalog, sort: list[tuple[str, str]], limit: int, **query: Any) -> list[str]:
    ids: list[str] = []
    marker = None
    for _ in range(1000):
        page = await catalog.list_images(ImageQuery(admin=True, sort=tuple(sort), limit=limit, marker=marker, **query))
        assert len(page) <= limit
        ids.extend(i.id for i in page)
        if len(page) < limit:
            return ids
        marker = page[-1].id
    raise AssertionError("pagination does not end")


@pytest.fixture
async def catalog_with_ties(tmp_path: Path) -> tuple[Catalog, list[Image]]:
    """40 images with many equal sort values and NULLs, so only the id can break ties."""
    rng = random.Random(7)
    images = []
    async with Catalog.open(tmp_path / "c.sqlite") as catalog:
        for _ in range(40):
            image = make_image(
                name=rng.choice([None, "a", "b", "c"]),
                size=rng.choice([None, 0, 10, 10, 200]),
                min_ram=rng.choice([0, 512]),
                created_at=rng.choice([STAMP, "2024-01-02T00:00:00Z"]),
                status=rng.choice(["queued", "active"]),
            )
            images.append(await catalog.create_image(image))
        yield catalog, images


SORTS = [
    [("created_at", "desc")],
    [("created_at", "asc")],
    [("name", "asc")],
    [("name", "desc")],
    [("size", "asc")],
    [("size", "desc")],
    [("name", "asc"), ("created_at", "desc")],
    [("name", "desc"), ("size", "asc")],
    [("min_ram", "asc"), ("name", "desc"), ("size", "asc")],
    [("status", "desc"), ("id", "asc")],
    [("id", "desc"), ("name", "asc")],
]


@pytest.mark.parametrize("sort", SORTS, ids=lambda s: ",".join("%s:%s" % kd for kd in s))
@pytest.mark.parametrize("limit", [1, 3, 7, 40, 41])
async def test_keyset_pagination_visits_each_image_once_in_order(
    catalog_with_ties: tuple[Catalog, list[Image]], sort: list[tuple[str, str]], limit: int
) -> None:
    catalog, images = catalog_with_ties
    ids = await paginate(catalog, sort, limit)
    assert len(ids) == len(set(ids)) == len(images)
    assert ids == expected_order(images, sort)


async def test_pagination_with_filters(catalog_with_ties: tuple[Catalog, list[Image]]) -> None:
    catalog, images = catalog_with_ties
    ids = await paginate(catalog, [("size", "desc")], 4, filters=(("status", "active"),))
    wanted = [i for i in images if i.status == "active"]
    assert ids == expected_order(wanted, [("size", "desc")])
    ids = await paginate(catalog, [("name", "asc")], 2, size_min=10, size_max=10)
    assert ids == expected_order([i for i in images if i.size == 10], [("name", "asc")])


async def test_marker_edge_cases(catalog_with_ties: tuple[Catalog, list[Image]]) -> None:
    catalog, images = catalog_with_ties
    order = expected_order(images, [("created_at", "desc")])
    last = await catalog.list_images(ImageQuery(admin=True, limit=10, marker=order[-1]))
    assert last == []
    after_first = await catalog.list_images(ImageQuery(admin=True, limit=3, marker=order[0]))
    assert [i.id for i in after_first] == order[1:4]
    with pytest.raises(NotFound):
        await catalog.list_images(ImageQuery(admin=True, limit=3, marker=str(uuid.uuid4())))
    assert await catalog.list_images(ImageQuery(admin=True, limit=0)) == []


async def test_list_visibility_scopes(tmp_path: Path) -> None:
    async with Catalog.open(tmp_path / "c.sqlite") as catalog:
        made = {}
        for vis in ("public", "private", "shared", "community"):
            for owner in ("a", "b"):
                made[vis, owner] = (await catalog.create_image(make_image(visibility=vis, owner=owner))).id
        hidden = (await catalog.create_image(make_image(visibility="public", owner="a", os_hidden=True))).id

        async def ids(**q: Any) -> set[str]:
            return {i.id for i in await catalog.list_images(ImageQuery(limit=100, **q))}

        assert await ids(project="a") == {
            made["public", "a"],
            made["public", "b"],
            made["private", "a"],
            made["shared", "a"],
            made["community", "a"],
        }
        assert await ids(project="a", visibility="community") == {made["community", "a"], made["community", "b"]}
        assert await ids(project="a", visibility="private") == {made["private", "a"]}
        assert await ids(admin=True) == set(made.values())
        assert await ids(admin=True, os_hidden=True) == {hidden}


async def test_concurrent_writers_do_not_interleave_transactions(tmp_path: Path) -> None:
    import asyncio as _asyncio

    async with Catalog.open(tmp_path / "c.sqlite") as catalog:
        images = [make_image() for _ in range(40)]
        # Forty coroutines writing at once on the one connection: each transaction is whole.
        await _asyncio.gather(*(catalog.create_image(image) for image in images))
        await _asyncio.gather(*(catalog.add_tag(image.id, "t%d" % i, STAMP) for i, image in enumerate(images)))
        assert await catalog.count_images() == 40
        loaded = [await catalog.get_image(image.id) for image in images]
        assert [img.tags for img in loaded] == [("t%d" % i,) for i in range(40)]


async def test_a_write_cancelled_at_any_moment_leaves_the_catalog_writable(tmp_path: Path) -> None:
    """A delete cancels an import's catalog write at whatever await it has reached; cancelled
    while its BEGIN was on the database thread, the transaction used to stay open for good and
    every later write failed ('cannot start a transaction within a transaction')."""
    import asyncio as _asyncio

    async with Catalog.open(tmp_path / "c.sqlite") as catalog:
        image = make_image()
        await catalog.create_image(image)
        for steps in range(40):  # cancel after 0..39 turns of the loop: every await is hit
            writer = _asyncio.ensure_future(catalog.add_tag(image.id, "cancelled-%d" % steps, STAMP))
            for _ in range(steps):
                await _asyncio.sleep(0)
            writer.cancel()
            try:
                await writer
            except _asyncio.CancelledError:
                pass
            await catalog.add_tag(image.id, "after-%d" % steps, STAMP)  # raised OperationalError
        tags = set((await catalog.get_image(image.id)).tags)
        assert {"after-%d" % n for n in range(40)} <= tags
