"""Pull-through from a real OpenStack Glance hub (a benchmark, not a test). One Glance (as in
tests/glance_server.py) and one edge daemon on loopback; one image of --mib MiB at Glance.

Prints MB/s for: the image read straight from Glance (the baseline, twice: the second read comes
from Glance's own image cache), the first read through the edge (the pull-through: Glance → edge
cache → client, verified), a second read through the edge (from its cache), and N clients at once
on another image (one transfer from Glance; the GETs Glance answered are counted in its log).

Usage: python tests/bench/bench_glance_hub.py [--mib 256] [--clients 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.summary import summary
from tests.conftest import start_daemon, write_toml
from tests.glance_server import GlanceServer, running_glance

MiB = 1 << 20


async def upload(session: aiohttp.ClientSession, glance: GlanceServer, path: Path, name: str) -> str:
    body = {"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "public"}
    async with session.post(glance.url + "/v2/images", json=body, headers=glance.headers()) as resp:
        assert resp.status == 201, await resp.text()
        image_id = str((await resp.json())["id"])
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        headers = {**glance.headers(), "Content-Type": "application/octet-stream"}
        async with session.put(glance.url + "/v2/images/%s/file" % image_id, data=fh, headers=headers) as resp:
            assert resp.status == 204, await resp.text()
    finally:
        fh.close()
    return image_id


async def read(session: aiohttp.ClientSession, url: str, token: str) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    async with session.get(url, headers={"X-Auth-Token": token}) as resp:
        assert resp.status == 200, await resp.text()
        async for chunk in resp.content.iter_chunked(MiB):
            n += len(chunk)
    return n, time.perf_counter() - start


def write_random(path: Path, mib: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(MiB))


def rate(n: int, seconds: float) -> float:
    return n / MiB / seconds


async def main(mib: int, clients: int) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        source = tmp / "disk.raw"
        await asyncio.to_thread(write_random, source, mib)
        with running_glance(tmp / "glance") as glance:
            timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                image_id = await upload(session, glance, source, "bench")
                crowd_id = await upload(session, glance, source, "bench-crowd")
                direct = glance.url + "/v2/images/%s/file" % image_id
                n, cold_direct = await read(session, direct, glance.token)
                _, warm_direct = await read(session, direct, glance.token)
                config = write_toml(
                    tmp / "edge.toml",
                    {
                        "site": {"name": "dcn0"},
                        "hub": {"url": glance.url, "token": glance.token, "mirror_interval": 1},
                        "cache": {"min_free_bytes": 0},
                        "scrubber": {"enabled": False},
                    },
                )
                edge = start_daemon(tmp / "edge", config)
                try:
                    via_edge = edge.url + "/v2/images/%s/file" % image_id
                    deadline = time.monotonic() + 60
                    while time.monotonic() < deadline:
                        async with session.get(
                            edge.url + "/v2/images/%s" % crowd_id, headers={"X-Auth-Token": edge.token}
                        ) as resp:
                            if resp.status == 200:
                                break
                        await asyncio.sleep(0.2)
                    _, cold_edge = await read(session, via_edge, edge.token)
                    _, warm_edge = await read(session, via_edge, edge.token)
                    start = time.perf_counter()
                    await asyncio.gather(
                        *(read(session, edge.url + "/v2/images/%s/file" % crowd_id, edge.token) for _ in range(clients))
                    )
                    crowd = time.perf_counter() - start
                finally:
                    edge.stop()
                gets = glance.data_gets(crowd_id)
    base = rate(n, warm_direct)
    print("image: %d MiB; Glance 33.0.0 under uWSGI, one edge daemon, loopback" % mib)
    print("Glance direct, first read:         %7.1f MB/s" % rate(n, cold_direct))
    print("Glance direct, second read (base): %7.1f MB/s" % base)
    cold, warm = rate(n, cold_edge), rate(n, warm_edge)
    print("edge pull-through (cold):          %7.1f MB/s  (%.2f x base)" % (cold, cold / base))
    print("edge from its cache (warm):        %7.1f MB/s  (%.2f x base)" % (warm, warm / base))
    summary("edge pull-through from Glance (cold)", cold, base, "MB/s", "OpenStack Glance direct")
    summary("edge from its cache (warm)", warm, base, "MB/s", "OpenStack Glance direct")
    total = rate(n * clients, crowd)
    print(
        "%d clients at once, cold:           %7.1f MB/s in all (%.2f x base); GETs of the data at Glance: %d"
        % (clients, total, total / base, gets)
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.clients))
