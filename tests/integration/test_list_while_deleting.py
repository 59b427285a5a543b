"""An image list is streamed batch by batch after its ids are read: images deleted in between
(a client's delete, or a hub deletion arriving through the change feed) are left out, and the
page stays valid JSON. A real daemon; the race is repeated."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.conftest import JSON_ERRORS, Daemon

ROUNDS = 30


async def test_a_list_while_its_images_are_deleted_is_valid_json(daemon: Daemon) -> None:
    headers = {"X-Auth-Token": daemon.token, **JSON_ERRORS}
    async with aiohttp.ClientSession(daemon.url, headers=headers) as session:

        async def create(i: int) -> str:
            body = {"name": "n%03d" % i, "disk_format": "raw", "container_format": "bare"}
            async with session.post("/v2/images", json=body) as resp:
                assert resp.status == 201
                return str((await resp.json())["id"])

        async def listing() -> list[str]:
            async with session.get("/v2/images?limit=1000") as resp:
                raw = await resp.read()
            try:
                return [i["id"] for i in json.loads(raw)["images"]]
            except ValueError as exc:
                raise AssertionError("the list is not JSON (%s): %r" % (exc, raw[:300])) from None

        async def delete(image_id: str) -> None:
            async with session.delete("/v2/images/%s" % image_id) as resp:
                assert resp.status in (204, 404)

        for _ in range(ROUNDS):
            ids = [await create(i) for i in range(12)]
            # Newest first: the list's first (smallest) batches are the images being deleted.
            results = await asyncio.gather(listing(), *(delete(i) for i in reversed(ids[-6:])))
            listed = results[0]
            assert listed is not None and set(ids[:6]) <= set(listed)
            for image_id in ids[:6]:
                await delete(image_id)
