"""More write and read paths into RBD stores, against the session's real Ceph cluster and a real
daemon: the scrubber re-reading RBD images (a changed one quarantined), the inbox taking an image
file and a bundle into an RBD store."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path

from tests.bundlekit import record, write_bundle
from tests.ceph import POOL, CephCluster
from tests.conftest import Daemon, write_toml
from tests.integration.test_inbox import sidecar
from tests.integration.test_rbd_store import Http, assert_glance_layout, image_data
from tests.waiting import wait_for

MiB = 1 << 20


def metric(daemon: Daemon, name: str) -> float:
    with urllib.request.urlopen(daemon.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
    found = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(found.group(1)) if found else 0.0


def replace_rbd_image(ceph: CephCluster, image_id: str, data: bytes, tmp_path: Path) -> str:
    """Put other bytes under an image's name in Glance's layout (what a copy changed in the pool
    looks like to a reader); the original is renamed aside and its name returned."""
    aside, ready = "aside-%s" % image_id[:8], "new-%s" % image_id[:8]
    src = tmp_path / ("%s.raw" % ready)
    src.write_bytes(data)
    # Complete under another name first: the daemon (its scrubber) never sees a half-made one.
    ceph.rbd("import", "--no-progress", str(src), "%s/%s" % (POOL, ready))
    ceph.rbd("snap", "create", "%s/%s@snap" % (POOL, ready))
    ceph.rbd("snap", "protect", "%s/%s@snap" % (POOL, ready))
    ceph.rbd("rename", "%s/%s" % (POOL, image_id), "%s/%s" % (POOL, aside))
    ceph.rbd("rename", "%s/%s" % (POOL, ready), "%s/%s" % (POOL, image_id))
    return aside


def test_the_scrubber_rereads_rbd_images_and_quarantines_a_changed_one(
    tmp_path: Path, ceph: CephCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    config = write_toml(
        tmp_path / "scrub.toml",
        {
            "stores": {"default": "ceph", "ceph": ceph.store_config()},
            "scrubber": {"enabled": True, "interval": 1, "rate_mib_per_s": 64},
        },
    )
    daemon = daemon_factory("site", config)
    site = Http(daemon)
    good, changed = image_data(6 * MiB), image_data(6 * MiB)
    good_id, bad_id = site.create(name="good"), site.create(name="changed")
    site.upload(good_id, good)
    site.upload(bad_id, changed)
    # Every pass re-reads both RBD images (none was read before RBD stores were scrubbed).
    wait_for(lambda: metric(daemon, "appliance_scrub_checked_total") >= 4, "two scrubber passes", timeout=60)
    assert metric(daemon, "appliance_scrub_mismatches_total") == 0

    aside = replace_rbd_image(ceph, bad_id, bytes(reversed(changed)), tmp_path)
    wait_for(
        lambda: "image %s in store ceph does not match its recorded SHA-512" % bad_id in daemon.log.read_text(),
        "the scrubber to find the changed image",
        timeout=60,
    )
    assert metric(daemon, "appliance_scrub_mismatches_total") == 1
    # Quarantined: renamed aside in the pool (its name is free), never served again.
    quarantined = [n for n in ceph.images() if n.startswith(bad_id + ".quarantine.")]
    assert len(quarantined) == 1 and bad_id not in ceph.images(), ceph.images()
    assert site.json("GET", "/v2/images/%s/locations" % bad_id) == []
    status, body = site.download(bad_id)
    assert status == 204 and body == b"", status
    # The good one is untouched and still served.
    assert_glance_layout(ceph, site, good_id)
    assert site.download(good_id) == (200, good)
    # Deleting the image removes its quarantined copy from the pool too.
    status, raw, _ = site.call("DELETE", "/v2/images/%s" % bad_id)
    assert status == 204, raw
    wait_for(lambda: not any(n.startswith(bad_id) for n in ceph.images()), "the quarantined copy removed")
    ceph.rbd("snap", "unprotect", "%s/%s@snap" % (POOL, aside))
    ceph.rbd("snap", "purge", "%s/%s" % (POOL, aside))
    ceph.rbd("rm", "--no-progress", "%s/%s" % (POOL, aside))


def test_the_inbox_takes_an_image_file_and_a_bundle_into_an_rbd_store(
    tmp_path: Path, ceph: CephCluster, daemon_factory: Callable[..., Daemon]
) -> None:
    config = write_toml(
        tmp_path / "inbox.toml",
        {
            "stores": {"default": "local", "local": {"path": "images"}, "ceph": ceph.store_config()},
            "inbox": {"dir": "inbox", "settle_seconds": 1, "store": "ceph"},
        },
    )
    daemon = daemon_factory("site", config)
    site = Http(daemon)
    box = daemon.state_dir / "inbox"
    wait_for(lambda: (box / "done").is_dir(), "the inbox", timeout=60)

    data = image_data(5 * MiB)
    sidecar(box / "disk.raw", name="from-inbox")
    (box / "disk.raw").write_bytes(data)
    bundled = [image_data(3 * MiB), image_data(4 * MiB)]
    records = [record(d, name="bundled-%d" % i, owner="admin") for i, d in enumerate(bundled)]
    staged = tmp_path / "two.bundle"
    asyncio.run(write_bundle(staged, list(zip(records, bundled, strict=True))))
    staged.rename(box / "two.bundle")  # whole, at once: as a copy onto the box would finish

    def landed() -> dict[str, dict[str, object]] | None:
        found = {i["name"]: i for i in site.json("GET", "/v2/images?limit=100")["images"]}
        wanted = ("from-inbox", "bundled-0", "bundled-1")
        return found if all(found.get(n, {}).get("status") == "active" for n in wanted) else None

    found = wait_for(landed, "the inbox's file and bundle imported", timeout=90)
    for name, expected in [("from-inbox", data), ("bundled-0", bundled[0]), ("bundled-1", bundled[1])]:
        image_id = str(found[name]["id"])
        assert site.show(image_id)["stores"] == "ceph", name
        assert_glance_layout(ceph, site, image_id)
        assert not (daemon.state_dir / "images" / image_id).exists()
        assert site.download(image_id) == (200, expected)
        assert found[name]["os_hash_value"] == hashlib.sha512(expected).hexdigest()
    # A bundle keeps its images' ids, into RBD as anywhere else.
    assert {str(found["bundled-%d" % i]["id"]) for i in range(2)} == {r.id for r in records}
    assert json.loads(ceph.rbd("info", "%s/%s" % (POOL, records[0].id), "--format", "json"))["size"] == len(bundled[0])
