"""Basic lifecycle through the in-process API."""

from __future__ import annotations

import hashlib

from tests.conftest import Api


async def test_create_upload_download_roundtrip(api: Api) -> None:
    image = await api.create(name="cirros")
    assert image["status"] == "queued"
    data = b"x" * (3 << 20) + b"tail"
    resp = await api.upload(image["id"], data)
    assert resp.status == 204, await resp.text()
    resp = await api.client.get("/v2/images/%s" % image["id"], headers=api.headers())
    shown = await resp.json()
    assert shown["status"] == "active"
    assert shown["size"] == len(data)
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["stores"] == "local"
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers())
    assert resp.status == 200
    assert resp.headers["Content-MD5"] == shown["checksum"]
    assert await resp.read() == data


async def test_edge_status_and_events(api: Api) -> None:
    image = await api.create(name="evented")
    resp = await api.client.get("/v2/edge/status", headers=api.headers())
    assert resp.status == 200
    status = await resp.json()
    assert status["site"] == {"name": "edge", "role": "edge"}
    assert status["images"] == {"queued": 1}
    assert [s["id"] for s in status["stores"]] == ["local"]
    assert status["stores"][0]["total_bytes"] > 0
    resp = await api.client.get("/v2/edge/events", headers=api.headers())
    events = (await resp.json())["events"]
    assert any(image["id"] in e["message"] and "created" in e["message"] for e in events)
    last = events[-1]["seq"]
    resp = await api.client.get("/v2/edge/events?since=%d" % last, headers=api.headers())
    assert (await resp.json())["events"] == []
