"""RBD stores against a real single-node Ceph cluster (tests/ceph.py) and a real daemon: every
write path into the pool, Glance's layout as `rbd` shows it, Nova-style clones blocking delete,
byte-exact reads, capacity from the pool, and a cluster that goes away mid-upload."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.ceph import POOL, CephCluster
from tests.clients.test_glance_import import WebRoot  # a real HTTP server on loopback
from tests.clients.test_glance_import import web as web
from tests.conftest import Daemon, write_toml
from tests.waiting import wait_for

MiB = 1 << 20


class Http:
    """Plain HTTP to the daemon (blocking), as any Glance client speaks it."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        parts = urlsplit(daemon.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 60
    ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        hdrs = {"X-Auth-Token": self.daemon.token, "Accept": "application/json", **(headers or {})}
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read(), dict(resp.getheaders())
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None, expect: int = 200, **kw: Any) -> Any:
        status, raw, _ = self.call(method, path, body, **kw)
        assert status == expect, (status, raw)
        return json.loads(raw) if raw else None

    def create(self, **props: Any) -> str:
        body = {"disk_format": "raw", "container_format": "bare", "name": "rbd-test"} | props
        return str(self.json("POST", "/v2/images", body, expect=201)["id"])

    def upload(self, image_id: str, data: bytes, store: str | None = None) -> None:
        headers = {"Content-Type": "application/octet-stream"}
        if store:
            headers["X-Image-Meta-Store"] = store
        status, raw, _ = self.call("PUT", "/v2/images/%s/file" % image_id, data, headers)
        assert status == 204, (status, raw)

    def download(self, image_id: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        status, raw, _ = self.call("GET", "/v2/images/%s/file" % image_id, headers=headers)
        return status, raw

    def show(self, image_id: str) -> dict[str, Any]:
        return dict(self.json("GET", "/v2/images/%s" % image_id))

    def import_(self, image_id: str, body: dict[str, Any]) -> None:
        self.json("POST", "/v2/images/%s/import" % image_id, body, expect=202)

    def wait_active(self, image_id: str, timeout: float = 60) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            image = self.show(image_id)
            if image.get("os_glance_failed_import"):
                raise AssertionError("import failed: %s" % image)
            return image if image["status"] == "active" and not image.get("os_glance_importing_to_stores") else None

        return wait_for(done, "image %s active" % image_id, timeout=timeout)


def image_data(size: int) -> bytes:
    """Random bytes with a long zero run in the middle (what a thin store does not write)."""
    quarter = size // 4
    return os.urandom(quarter) + bytes(size - 2 * quarter) + os.urandom(quarter)


def rbd_config(tmp_path: Path, ceph: CephCluster, port: int | None = None, default: str = "ceph") -> Path:
    imp: dict[str, Any] = {
        "plugins": ["image_decompression", "image_conversion"],
        "output_format": "raw",
        "staging_min_free_bytes": 0,
    }
    if port is not None:
        imp["uri_filter"] = {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [port]}
    return write_toml(
        tmp_path / "rbd.toml",
        {
            "stores": {
                "default": default,
                "ceph": ceph.store_config(description="Ceph pool images"),
                "local": {"path": "images", "min_free_bytes": 0},
            },
            "import": imp,
        },
    )


@pytest.fixture
def site(tmp_path: Path, ceph: CephCluster, daemon_factory: Callable[..., Daemon], web: WebRoot) -> Http:
    return Http(daemon_factory("site", rbd_config(tmp_path, ceph, web.port)))


def assert_glance_layout(ceph: CephCluster, http_: Http, image_id: str) -> None:
    """An RBD image named after the id, a protected snapshot `snap`, the rbd:// location."""
    assert image_id in ceph.images()
    snaps = ceph.snaps(image_id)
    assert [(s["name"], s["protected"]) for s in snaps] == [("snap", "true")], snaps
    url = "rbd://%s/%s/%s/snap" % (ceph.fsid, POOL, image_id)
    locations = http_.json("GET", "/v2/images/%s/locations" % image_id)
    assert {"url": url, "metadata": {"store": "ceph"}} in locations, locations
    assert "ceph" in http_.show(image_id)["stores"].split(",")


def test_upload_layout_clone_blocks_delete_then_delete_leaves_nothing(site: Http, ceph: CephCluster) -> None:
    data = image_data(24 * MiB)
    image_id = site.create()
    site.upload(image_id, data)
    assert_glance_layout(ceph, site, image_id)
    image = site.show(image_id)
    assert image["checksum"] == hashlib.md5(data).hexdigest()
    assert image["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert image["size"] == len(data)
    # Thin: the zero run in the middle was never written.
    du = json.loads(ceph.rbd("du", "%s/%s" % (POOL, image_id), "--format", "json"))
    used = sum(i["used_size"] for i in du["images"] if i["name"] == image_id and i.get("snapshot") is None)
    assert du["images"][0]["provisioned_size"] == len(data)
    assert used <= len(data) // 2 + 8 * MiB, du

    status, body = site.download(image_id)
    assert status == 200 and body == data
    status, part = site.download(image_id, {"Range": "bytes=%d-%d" % (5 * MiB, 7 * MiB - 1)})
    assert status == 206 and part == data[5 * MiB : 7 * MiB]

    # Nova boots from it: a copy-on-write clone of the snapshot.
    child = "child-%s" % image_id[:8]
    ceph.rbd("clone", "%s/%s@snap" % (POOL, image_id), "%s/%s" % (POOL, child))
    status, raw, _ = site.call("DELETE", "/v2/images/%s" % image_id)
    assert status == 409, raw
    message = json.loads(raw)["message"] if raw.startswith(b"{") else raw.decode()
    assert "in use" in message and child in message, message
    assert site.show(image_id)["status"] == "active"
    assert_glance_layout(ceph, site, image_id)  # nothing was touched

    ceph.rbd("rm", "%s/%s" % (POOL, child))
    status, raw, _ = site.call("DELETE", "/v2/images/%s" % image_id)
    assert status == 204, raw
    assert image_id not in ceph.images()
    assert child not in ceph.images()


def test_glance_direct_and_web_download_with_plugins(
    site: Http, ceph: CephCluster, web: WebRoot, tmp_path: Path, qemu_img: str
) -> None:
    # glance-direct: stage, then import into the RBD store.
    data = image_data(12 * MiB)
    direct = site.create()
    status, raw, _ = site.call(
        "PUT", "/v2/images/%s/stage" % direct, data, {"Content-Type": "application/octet-stream"}
    )
    assert status == 204, raw
    site.import_(direct, {"method": {"name": "glance-direct"}, "stores": ["ceph"]})
    site.wait_active(direct)
    assert_glance_layout(ceph, site, direct)
    assert site.download(direct) == (200, data)

    # web-download of a gzip'd qcow2: decompressed, converted to raw, written into RBD.
    raw_file = tmp_path / "disk.raw"
    raw_file.write_bytes(image_data(16 * MiB))
    qcow = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw_file), str(qcow)], check=True)
    url = web.add("disk.qcow2.gz", gzip.compress(qcow.read_bytes(), compresslevel=1))
    fetched = site.create(disk_format="qcow2")
    site.import_(fetched, {"method": {"name": "web-download", "uri": url}, "stores": ["ceph"]})
    image = site.wait_active(fetched)
    assert image["disk_format"] == "raw"
    assert_glance_layout(ceph, site, fetched)
    assert site.download(fetched) == (200, raw_file.read_bytes())
    exported = tmp_path / "exported.raw"
    ceph.rbd("export", "%s/%s@snap" % (POOL, fetched), str(exported))
    assert exported.read_bytes() == raw_file.read_bytes()


def test_copy_image_between_filesystem_and_rbd(site: Http, ceph: CephCluster) -> None:
    # filesystem → rbd
    data = image_data(10 * MiB)
    from_file = site.create()
    site.upload(from_file, data, store="local")
    assert from_file not in ceph.images()
    site.import_(from_file, {"method": {"name": "copy-image"}, "stores": ["ceph"]})
    wait_for(lambda: "ceph" in site.show(from_file)["stores"].split(","), "copy into ceph", timeout=60)
    assert_glance_layout(ceph, site, from_file)
    exported = site.daemon.state_dir / "exported"
    ceph.rbd("export", "%s/%s@snap" % (POOL, from_file), str(exported))
    assert exported.read_bytes() == data

    # rbd → filesystem (read back out of the pool)
    other = image_data(6 * MiB)
    from_rbd = site.create()
    site.upload(from_rbd, other)  # the default store: ceph
    assert not (site.daemon.state_dir / "images" / from_rbd).exists()
    site.import_(from_rbd, {"method": {"name": "copy-image"}, "stores": ["local"]})
    wait_for(lambda: "local" in site.show(from_rbd)["stores"].split(","), "copy into local", timeout=60)
    assert (site.daemon.state_dir / "images" / from_rbd).read_bytes() == other

    # One copy removed: DELETE /v2/stores/ceph/ID takes the RBD image away, the file stays.
    status, raw, _ = site.call("DELETE", "/v2/stores/ceph/%s" % from_rbd)
    assert status == 204, raw
    assert from_rbd not in ceph.images()
    assert site.download(from_rbd) == (200, other)


def test_stores_detail_reports_the_pool(site: Http, ceph: CephCluster) -> None:
    stores = {s["id"]: s for s in site.json("GET", "/v2/info/stores/detail")["stores"]}
    rbd = stores["ceph"]
    assert rbd["type"] == "rbd" and rbd.get("default") is True and "read-only" not in rbd
    props = rbd["properties"]
    assert props["pool"] == POOL and props["chunk_size"] == 8 * MiB and props["thin_provisioning"] is True
    df = json.loads(ceph.run("ceph", "df", "--format", "json"))
    assert props["total_bytes"] == df["stats"]["total_bytes"] > 0
    assert 0 < props["free_bytes"] <= props["total_bytes"]
    assert stores["local"]["type"] == "file"


class SlowBody:
    """An upload body that sends `size` bytes in 1 MiB pieces, calling `at_half` half-way."""

    def __init__(self, data: bytes, at_half: Callable[[], None]) -> None:
        self.data, self.at_half = data, at_half

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.data) // 2
        for pos in range(0, len(self.data), MiB):
            if pos == half:
                self.at_half()
            yield self.data[pos : pos + MiB]


def test_cluster_lost_mid_upload_leaves_no_half_image(site: Http, ceph: CephCluster) -> None:
    data = os.urandom(32 * MiB)
    image_id = site.create()
    stopped = threading.Event()

    def lose_cluster() -> None:
        ceph.stop()
        stopped.set()

    result: dict[str, Any] = {}

    def upload() -> None:
        try:
            result["answer"] = site.call(
                "PUT",
                "/v2/images/%s/file" % image_id,
                SlowBody(data, lose_cluster),
                {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
                timeout=300,
            )
        except OSError as exc:
            result["error"] = exc

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        assert stopped.wait(60)
        # The daemon stays up and answers at once while librbd waits on the cluster.
        # (a bound well under librados' 10 s timeout, with room for a loaded 2-core test machine)
        started = time.monotonic()
        assert site.call("GET", "/healthcheck", timeout=5)[0] == 200
        assert time.monotonic() - started < 3
        # The upload took ~100 s to fail on a loaded 2-core machine (librbd's in-flight writes
        # time out, then the abort drains them): the bound is well above that.
        uploader.join(300)
        assert not uploader.is_alive()
        assert "error" in result or result["answer"][0] >= 500, result
        assert site.show(image_id)["status"] == "queued"
        detail = {s["id"]: s for s in site.json("GET", "/v2/info/stores/detail")["stores"]}["ceph"]
        assert detail.get("read-only") == "true" and "Ceph cluster" in detail["properties"]["read_only_reason"], detail
        status, raw, _ = site.call("PUT", "/v2/images/%s/file" % image_id, b"x" * 1024)
        assert status == 409 and b"read-only" in raw, (status, raw)  # as a filesystem store
    finally:
        ceph.start()
    # Back: the half image is gone (removed once the cluster answers), writes work again. The
    # removal is retried every health check and may have to wait for the OSD to drop a stale watch
    # of the writer's handle (osd_client_watch_timeout, 30 s): the bound leaves room for that.
    wait_for(lambda: image_id not in ceph.images() and not _read_only(site), "half image removed", timeout=120)
    site.upload(image_id, data)
    assert_glance_layout(ceph, site, image_id)
    assert site.download(image_id) == (200, data)


def _read_only(site: Http) -> bool:
    return any(s["id"] == "ceph" and s.get("read-only") for s in site.json("GET", "/v2/info/stores")["stores"])
