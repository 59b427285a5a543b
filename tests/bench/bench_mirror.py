"""Catalog mirror benchmark (a benchmark, not a test). A hub daemon process holds 10,000 image
records; an edge's hub link (in this process, on its own catalog) mirrors them. Prints the initial
full sync time, then incremental syncs after 0, 10 and 100 changes at the hub (target: the 10-change
sync under 1 s, and growing with the changes, not with the catalog).

Usage: python tests/bench/bench_mirror.py [--images 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.config import parse_config
from appliance.services import open_services
from tests.bench.bench_transfer import start_daemon
from tests.bench.summary import summary

PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


async def create_images(url: str, token: str, n: int, disk_format: str = "qcow2") -> list[str]:
    ids: list[str] = []
    headers = {"X-Auth-Token": token}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(i: int) -> None:
            body = {
                "name": "image-%05d" % i,
                "disk_format": disk_format,
                "container_format": "bare",
                "visibility": "public",
                "os_distro": "ubuntu",
                "hw_disk_bus": "scsi",
            }
            async with session.post(url + "/v2/images", json=body) as resp:
                assert resp.status == 201, await resp.text()
                ids.append((await resp.json())["id"])

        for start in range(0, n, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
    return ids


async def change(url: str, token: str, ids: list[str], tag: str) -> None:
    async with aiohttp.ClientSession(headers={"X-Auth-Token": token, **PATCH}) as session:
        for image_id in ids:
            async with session.patch(
                url + "/v2/images/%s" % image_id, json=[{"op": "add", "path": "/bench_note", "value": tag}]
            ) as resp:
                assert resp.status == 200, await resp.text()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=10000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-mirror-"))
    hub = None
    try:
        (work / "hub").mkdir()
        (work / "hub.toml").write_text('[site]\nname = "central"\nrole = "hub"\n[scrubber]\nenabled = false\n')
        hub, hub_url, token = start_daemon(work / "hub", work / "hub.toml")
        t = time.perf_counter()
        ids = await create_images(hub_url, token, args.images)
        print("hub: %d image records created in %.1f s" % (len(ids), time.perf_counter() - t))
        # The edge side: the daemon's own services, driven directly so each sync is timed alone.
        config = parse_config(
            {"site": {"name": "dcn0"}, "api": {"unix_socket": ""}, "hub": {"url": hub_url, "token": token}},
            work / "edge",
        )
        async with open_services(config) as services:
            link = services.hub
            assert link is not None
            t = time.perf_counter()
            written = await link.mirror_once(full=True)
            initial = time.perf_counter() - t
            assert written == args.images and await services.catalog.count_images() == args.images
            print("initial full sync : %6.2f s for %d records (%.0f records/s)" % (initial, written, written / initial))
            await asyncio.sleep(2.1)  # the hub's clock moves past the marker's second
            results = []
            for n in (0, 10, 100):
                await change(hub_url, token, ids[:n], "round-%d" % n)
                t = time.perf_counter()
                written = await link.mirror_once()
                took = time.perf_counter() - t
                results.append((n, took, written))
                await asyncio.sleep(2.1)
            for n, took, written in results:
                print(
                    "incremental sync  : %6.3f s after %3d change(s) at the hub (%d record(s) fetched)%s"
                    % (took, n, written, "   (target < 1 s)" if n == 10 else "")
                )
            t = time.perf_counter()
            await link.mirror_once(full=True)
            full = time.perf_counter() - t
            print(
                "full reconcile    : %6.2f s (re-reads all %d records; runs every reconcile_interval)"
                % (full, args.images)
            )
            summary(
                "mirror incremental sync, 10 changes in %d" % args.images,
                next(took for n, took, _ in results if n == 10),
                full,
                "s",
                "full reconcile",
                "lower",
            )
    finally:
        if hub is not None:
            hub.send_signal(signal.SIGTERM)
            hub.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
