"""Hub sites benchmark (a benchmark, not a test): a hub daemon process with 100 simulated edge
sites, each with its own service token, heartbeating every 15 s, spread evenly over the interval.

  idle      : the hub's CPU over the same length of time with the sites registered but silent
              (the baseline, measured in the same run)
  load      : the hub's CPU (utime + stime from /proc/<pid>/stat) over >= 60 s of heartbeats,
              as % of one core (target < 5 %)
  latency   : heartbeat round trip p50 / p99, as the sites see it

Usage: python tests/bench/bench_hub_sites.py [--sites 100] [--interval 15] [--seconds 60] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_transfer import start_daemon

from tests.bench.summary import summary
from tests.conftest import write_toml

ADMIN_TOKEN = "bench-admin"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def site_token(i: int) -> str:
    return "site-token-%03d" % i


def site_name(i: int) -> str:
    return "dcn%03d" % i


def hub_config(work: Path, sites: int, interval: int) -> Path:
    tokens = [{"token": ADMIN_TOKEN, "user": "admin", "project": "admin", "roles": ["admin", "member", "reader"]}]
    tokens += [
        {"token": site_token(i), "user": site_name(i), "project": "edge-sites", "roles": ["edge-site", "reader"]}
        for i in range(sites)
    ]
    return write_toml(
        work / "hub.toml",
        {
            "site": {"name": "hub", "role": "hub"},
            "stores": {"default": "central", "central": {"path": "images"}},
            "hub": {"heartbeat_interval": interval},
            "auth": {"tokens": tokens},
            "scrubber": {"enabled": False},
        },
    )


class SimulatedSite:
    def __init__(self, url: str, index: int) -> None:
        self.url, self.name = url, site_name(index)
        self.headers = {"X-Auth-Token": site_token(index), "Accept": "application/json"}
        # One connection per site, as each edge has its own link to the hub.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
        self.free = 8 << 30

    async def register(self) -> None:
        body = {
            "name": self.name,
            "stores": [{"id": "local", "description": "site store"}],
            "total_bytes": 10 << 30,
            "free_bytes": self.free,
            "version": "0.1.0",
            "api_url": "http://%s.example:9292" % self.name,
        }
        async with self.session.post(self.url + "/v2/edge/sites", json=body, headers=self.headers) as resp:
            assert resp.status == 200, await resp.text()

    async def heartbeat(self) -> float:
        self.free -= 4096
        body = {
            "free_bytes": self.free,
            "total_bytes": 10 << 30,
            "cache": {"entries": 12, "size": 3 << 30, "hits": 1000, "misses": 7},
        }
        started = time.perf_counter()
        async with self.session.post(
            self.url + "/v2/edge/sites/%s/heartbeat" % self.name, json=body, headers=self.headers
        ) as resp:
            await resp.read()
            assert resp.status == 200, resp.status
        return time.perf_counter() - started

    async def beat_until(self, offset: float, interval: float, stop_at: float, latencies: list[float]) -> None:
        await asyncio.sleep(offset)
        next_beat = time.monotonic()
        while next_beat < stop_at:
            latencies.append(await self.heartbeat())
            next_beat += interval
            await asyncio.sleep(max(0.0, next_beat - time.monotonic()))


async def measure(url: str, pid: int, sites: int, interval: float, seconds: float) -> None:
    fleet = [SimulatedSite(url, i) for i in range(sites)]
    try:
        for site in fleet:
            await site.register()
        async with aiohttp.ClientSession() as admin:
            async with admin.get(url + "/v2/edge/sites", headers={"X-Auth-Token": ADMIN_TOKEN}) as resp:
                listed = (await resp.json())["sites"]
        assert len(listed) == sites and all(s["online"] for s in listed)

        # Baseline: the same hub, the same sites registered, nobody talking.
        cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        idle_pct = 100 * (proc_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)

        # Load: every site beats every `interval` s, the sites spread evenly over it. The
        # window starts after one full interval so the measured part is steady state.
        latencies: list[float] = []
        start = time.monotonic()
        stop_at = start + interval + seconds
        beaters = [
            asyncio.create_task(site.beat_until(i * interval / sites, interval, stop_at, latencies))
            for i, site in enumerate(fleet)
        ]
        await asyncio.sleep(interval)
        measured_from = len(latencies)
        cpu0, t0 = proc_cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu1, t1 = proc_cpu_seconds(pid), time.monotonic()
        window = latencies[measured_from:]
        await asyncio.gather(*beaters)
    finally:
        for site in fleet:
            await site.session.close()
    load_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
    ms = sorted(x * 1000 for x in window)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))]
    print(
        "hub sites benchmark: %d sites, heartbeat every %.0f s, window %.0f s (%d heartbeats, %.1f/s)"
        % (sites, interval, t1 - t0, len(window), len(window) / (t1 - t0))
    )
    print("  hub CPU, sites silent (baseline): %.2f %% of one core" % idle_pct)
    print(
        "  hub CPU, heartbeating           : %.2f %% of one core (target < 5 %%): %s"
        % (load_pct, "met" if load_pct < 5 else "MISSED")
    )
    print("  CPU per heartbeat               : %.2f ms" % (1000 * (cpu1 - cpu0) / max(1, len(window))))
    print("  heartbeat latency               : p50 %.2f ms, p99 %.2f ms, max %.2f ms" % (p50, p99, ms[-1]))
    summary("hub CPU, %d sites heartbeating" % sites, load_pct, idle_pct, "% core", "sites silent", "lower")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--interval", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if args.seconds < 60:
        print("note: a window under 60 s is noisy", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-hub-", dir=args.workdir))
    try:
        state = work / "hub"
        state.mkdir()
        (state / "admin-token").write_text(ADMIN_TOKEN + "\n")
        proc, url, _token = start_daemon(state, hub_config(work, args.sites, args.interval))
        try:
            asyncio.run(measure(url, proc.pid, args.sites, float(args.interval), args.seconds))
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
