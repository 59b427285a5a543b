"""GET /v2/edge/image-rows, the operator's table of images, on a real daemon: the same images,
order and values as Glance's list for the same query and caller, its own page size, and the
list's errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from appliance.catalog import IMAGE_ROW_COLUMNS
from tests.conftest import JSON_ERRORS, Daemon, write_toml

TOKENS = {
    "admin": ("tok-admin", "root", "admin", ["admin"]),
    "member": ("tok-member", "mia", "p1", ["member", "reader"]),
    "other": ("tok-other", "otto", "p2", ["member", "reader"]),
}
COLUMNS = list(IMAGE_ROW_COLUMNS)


class Site:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.daemon, self.session = daemon, session

    async def call(self, who: str, method: str, path: str, expect: int, **kw: Any) -> Any:
        headers = {"X-Auth-Token": TOKENS[who][0], **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, self.daemon.url + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            assert resp.status == expect, (method, path, resp.status, raw[:500])
            return json.loads(raw) if raw and resp.content_type == "application/json" else raw

    async def image(self, who: str, name: str, data: bytes | None = None, **extra: Any) -> str:
        body = {"name": name, "disk_format": "raw", "container_format": "bare", **extra}
        image_id = str((await self.call(who, "POST", "/v2/images", 201, json=body))["id"])
        if data is not None:
            headers = {"Content-Type": "application/octet-stream"}
            await self.call(who, "PUT", "/v2/images/%s/file" % image_id, 204, data=data, headers=headers)
        return image_id

    async def rows(self, who: str, query: str) -> list[dict[str, Any]]:
        """Every row, following `next`."""
        found: list[dict[str, Any]] = []
        path: str | None = "/v2/edge/image-rows?" + query
        while path is not None:
            page = await self.call(who, "GET", path, 200)
            assert page["columns"] == COLUMNS
            found.extend(dict(zip(page["columns"], row, strict=True)) for row in page["rows"])
            path = page.get("next")
        return found

    async def listed(self, who: str, query: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        path: str | None = "/v2/images?" + query
        while path is not None:
            page = await self.call(who, "GET", path, 200)
            found.extend(page["images"])
            path = page.get("next")
        return found


@pytest.fixture
async def site(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> AsyncIterator[Site]:
    config = write_toml(
        tmp_path / "site.toml",
        {
            "site": {"name": "central", "role": "hub"},
            "auth": {"tokens": [{"token": t, "user": u, "project": p, "roles": r} for t, u, p, r in TOKENS.values()]},
            "api": {"max_page_size": 2, "default_page_size": 2},
            "scrubber": {"enabled": False},
        },
    )
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Site(daemon_factory("site", config), session)


async def test_rows_are_the_lists_images_with_the_callers_visibility(site: Site) -> None:
    public = await site.image("admin", "pub [red]é", b"public bytes", visibility="public", protected=True)
    mine = await site.image("member", "mine", b"12345")
    theirs = await site.image("other", "theirs")
    queued = await site.image("member", "later")
    expected = {"member": {public, mine, queued}, "other": {public, theirs}, "admin": {public, mine, theirs, queued}}
    for who, ids in expected.items():
        for query in ("sort_key=name,id&sort_dir=asc,asc", "sort_key=updated_at&sort_dir=desc&limit=3"):
            rows = await site.rows(who, query)
            listed = await site.listed(who, query.replace("&limit=3", ""))
            assert [r["id"] for r in rows] == [i["id"] for i in listed]
            assert {r["id"] for r in rows} == ids
            for row, image in zip(rows, listed, strict=True):
                # The list leaves `stores` out where no store holds a copy; the rows say null.
                assert row == {c: image.get(c) for c in COLUMNS}
    rows = {r["id"]: r for r in await site.rows("member", "sort_key=name&sort_dir=asc")}
    assert rows[mine]["stores"] == "local" and rows[mine]["size"] == 5 and rows[mine]["status"] == "active"
    assert rows[public]["protected"] is True and rows[mine]["protected"] is False
    assert rows[public]["name"] == "pub [red]é"  # data, returned as sent
    assert rows[queued]["stores"] is None and rows[queued]["status"] == "queued"


async def test_a_page_of_rows_is_not_held_to_the_lists_page_size(site: Site) -> None:
    for n in range(5):
        await site.image("admin", "img-%d" % n)
    # The list answers at most max_page_size (2 here) a page; the rows up to 10,000.
    assert len((await site.call("admin", "GET", "/v2/images?limit=5", 200))["images"]) == 2
    page = await site.call("admin", "GET", "/v2/edge/image-rows?limit=5&sort_key=name&sort_dir=asc", 200)
    assert [r[1] for r in page["rows"]] == ["img-%d" % n for n in range(5)] and "next" not in page
    page = await site.call("admin", "GET", "/v2/edge/image-rows?limit=3&sort_key=name&sort_dir=asc", 200)
    assert [r[1] for r in page["rows"]] == ["img-0", "img-1", "img-2"]
    rest = await site.call("admin", "GET", page["next"], 200)
    assert [r[1] for r in rest["rows"]] == ["img-3", "img-4"] and "next" not in rest


async def test_the_lists_errors(site: Site) -> None:
    unknown = "/v2/edge/image-rows?marker=3c5d4bd6-1b7b-4b53-9a60-3f4f4b0d6a10"
    assert "marker" in (await site.call("admin", "GET", unknown, 400))["message"]
    assert "limit" in (await site.call("admin", "GET", "/v2/edge/image-rows?limit=-1", 400))["message"]
    assert "sort" in (await site.call("admin", "GET", "/v2/edge/image-rows?sort_key=nope", 400))["message"]
    async with site.session.get(site.daemon.url + "/v2/edge/image-rows") as resp:
        assert resp.status == 401
