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


async def test_metrics_count_requests_and_bytes(api: Api) -> None:
    image = await api.create(name="metered")
    data = b"m" * 5000
    assert (await api.upload(image["id"], data)).status == 204
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers())
    assert await resp.read() == data
    resp = await api.client.get("/v2/images/%s/file" % image["id"], headers=api.headers(Range="bytes=0-99"))
    assert resp.status == 206 and len(await resp.read()) == 100
    resp = await api.client.get("/metrics")  # no token needed for scrapes
    assert resp.status == 200
    text = await resp.text()
    assert 'appliance_bytes_served_total{source="store"} 5100.0' in text
    assert 'appliance_bytes_received_total{kind="upload"} 5000.0' in text
    assert 'appliance_http_requests_total{method="GET",route="/v2/images/{image_id}/file",status="200"} 1.0' in text
    assert 'appliance_http_requests_total{method="GET",route="/v2/images/{image_id}/file",status="206"} 1.0' in text
    assert 'appliance_images{status="active"} 1.0' in text
    assert 'appliance_store_free_bytes{store="local"}' in text
