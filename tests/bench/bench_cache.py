"""Cache benchmark (a benchmark, not a test). Prints, in one run on this machine:

  * cache-hit download throughput of a 1 GiB image beside nginx (sendfile) serving the very
    cache file (target >= 0.9x);
  * with the hub link rate-limited to a WAN-like 50 MB/s (a relay in front of the hub), the wall
    time for 20 concurrent curl clients of one uncached 512 MiB image beside a single client of
    another uncached image of the same size (target <= 1.1x), and the bytes the hub sent for the
    20 (target: exactly one image's worth).

Usage: python tests/bench/bench_cache.py [--hit-mib 1024] [--wan-mib 512] [--clients 20] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_transfer import create_image, curl_speed, run, start_daemon, start_nginx
from tests.bench.summary import summary
from tests.hubproxy import HubProxy


def random_file(path: Path, mib: int) -> Path:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))
    return path


def hub_image(url: str, token: str, path: Path, name: str) -> str:
    auth = ["-H", "X-Auth-Token: " + token]
    image_id = create_image(
        url, auth, {"name": name, "disk_format": "raw", "container_format": "bare", "visibility": "public"}
    )
    run(
        [
            "curl",
            "-sS",
            "--fail",
            *auth,
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            str(path),
            "%s/v2/images/%s/file" % (url, image_id),
        ]
    )
    return image_id


async def clients(url: str, token: str, image_id: str, n: int) -> float:
    """Wall time for n concurrent curl downloads of one image (each checked complete)."""
    started = time.perf_counter()
    procs = [
        await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--fail",
            "-o",
            "/dev/null",
            "-H",
            "X-Auth-Token: " + token,
            "%s/v2/images/%s/file" % (url, image_id),
        )
        for _ in range(n)
    ]
    codes = [await p.wait() for p in procs]
    if any(codes):
        raise SystemExit("a client failed: exit codes %s" % codes)
    return time.perf_counter() - started


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hit-mib", type=int, default=1024)
    ap.add_argument("--wan-mib", type=int, default=512)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rate-mb", type=float, default=50.0, help="hub link rate in MB/s (10^6 bytes)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cache-", dir=args.workdir))
    hub = edge = None
    proxy = None
    try:
        hub_state, edge_state = work / "hub", work / "edge"
        hub_state.mkdir()
        edge_state.mkdir()
        (work / "hub.toml").write_text('[site]\nname = "central"\nrole = "hub"\n')
        hub, hub_url, hub_token = start_daemon(hub_state, work / "hub.toml")
        proxy = await HubProxy(hub_url).start()
        (work / "edge.toml").write_text(
            '[site]\nname = "dcn0"\n[hub]\nurl = "%s"\ntoken_file = "%s"\n[cache]\nmax_size = %d\nmin_free_bytes = 0\n'
            % (proxy.url, hub_state / "admin-token", 8 << 30)
        )
        edge, edge_url, edge_token = start_daemon(edge_state, work / "edge.toml")
        auth = ["-H", "X-Auth-Token: " + edge_token]

        # 1. Cache hits beside nginx on the same file.
        big = hub_image(hub_url, hub_token, random_file(work / "big.raw", args.hit_mib), "big")
        (work / "big.raw").unlink()
        fill = await clients(edge_url, edge_token, big, 1)
        cached = edge_state / "cache" / "data" / big
        assert cached.stat().st_size == args.hit_mib << 20, "the image was not cached"
        ngx, ngx_url = start_nginx(cached.parent, work)
        try:
            hits, base = [], []
            for _ in range(args.runs):  # interleaved: both see the same machine state
                hits.append(
                    await asyncio.to_thread(
                        curl_speed, [*auth, "-o", "/dev/null", "%s/v2/images/%s/file" % (edge_url, big)]
                    )
                )
                base.append(await asyncio.to_thread(curl_speed, ["-o", "/dev/null", "%s/%s" % (ngx_url, big)]))
        finally:
            ngx.terminate()
            ngx.wait(10)
        run(["curl", "-sS", "--fail", "-X", "DELETE", *auth, "%s/v2/cache/%s" % (edge_url, big)])

        # 2. A boot storm over a 50 MB/s link, beside one client.
        proxy.rate = int(args.rate_mb * 1e6)
        wan = args.wan_mib << 20
        one_id = hub_image(hub_url, hub_token, random_file(work / "one.raw", args.wan_mib), "one")
        storm_id = hub_image(hub_url, hub_token, random_file(work / "storm.raw", args.wan_mib), "storm")
        before = proxy.body_bytes
        single = await clients(edge_url, edge_token, one_id, 1)
        single_bytes = proxy.body_bytes - before
        before = proxy.body_bytes
        storm = await clients(edge_url, edge_token, storm_id, args.clients)
        storm_bytes = proxy.body_bytes - before
        storm_requests = proxy.file_requests(storm_id)

        hit, ngx_speed = statistics.median(hits) / 1e6, statistics.median(base) / 1e6
        print(
            "cache hit : %8.1f MB/s   nginx sendfile (same file): %8.1f MB/s   ratio %.2fx   (target >= 0.90x)"
            % (hit, ngx_speed, hit / ngx_speed)
        )
        print("            first fill of %d MiB over the unshaped loopback link: %.1f s" % (args.hit_mib, fill))
        print(
            "boot storm: %d clients %.1f s   one client %.1f s   ratio %.2fx   "
            "(target <= 1.10x; link %.0f MB/s, %d MiB)"
            % (args.clients, storm, single, storm / single, args.rate_mb, args.wan_mib)
        )
        print(
            "hub bytes : %d for %d clients = %.3f images' worth, in %d request(s)   (one client: %d)   "
            "(target: exactly one image, %d bytes)"
            % (storm_bytes, args.clients, storm_bytes / wan, storm_requests, single_bytes, wan)
        )
        summary("cache hit", hit, ngx_speed, "MB/s", "nginx sendfile")
        summary("boot storm, %d clients" % args.clients, storm, single, "s", "one client", "lower")
        print(
            "all hit runs (MB/s): daemon %s | nginx %s"
            % (", ".join("%.0f" % (s / 1e6) for s in hits), ", ".join("%.0f" % (s / 1e6) for s in base))
        )
    finally:
        for proc in (edge, hub):
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
        if proxy is not None:
            await proxy.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
