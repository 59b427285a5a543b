"""Hub deletions reaching an edge (a benchmark, not a test). A hub daemon holds a catalog of N
image records; an edge daemon mirrors it through a counting relay (tests/hubproxy.py). Each round
deletes one image at the hub with the stock `glance image-delete` and times, from the moment the
CLI returns, until the edge answers 404 for it; the relay counts what the edge asked the hub meanwhile.

* feed: an appliance hub (role "hub"); the edge follows its change feed every mirror_interval
  (1 s here) and reconciles only hourly. Target: 404 within mirror_interval + 1 s, and records
  fetched per deletion that do not grow with the catalog.
* baseline, in the same run: a hub without the feed (the appliance in role "edge", which answers
  the edge as a plain Glance v2 does); deletions are found by the full reconcile, every
  reconcile_interval (5 s here; 3600 s by default), which lists the whole catalog.

Usage: python tests/bench/bench_deletion_feed.py [--sizes 50 500] [--deletions 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.bench_mirror import create_images
from tests.bench.summary import summary
from tests.clients.test_glance_cli import Glance
from tests.conftest import Daemon, start_daemon, write_toml
from tests.hubproxy import HubProxy

MIRROR_INTERVAL = 1
BASELINE_RECONCILE = 5
HUB_TOKEN = "bench-hub-admin-token"


@dataclass
class Round:
    cli_seconds: float  # the glance CLI's own run (process start, request, exit)
    seconds: float  # from the CLI's return to the edge's first 404
    record_gets: int  # records fetched one by one (other than the deleted image's own lookups)
    listed: int  # records the edge read in catalog listings meanwhile
    requests: int  # every request the edge made to the hub meanwhile


async def give_data(url: str, ids: list[str]) -> None:
    """A few bytes each, so the records are active (a record still waiting for its data is asked
    of the hub on every show, which would count the poll's own requests)."""
    headers = {"X-Auth-Token": HUB_TOKEN, "Content-Type": "application/octet-stream"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one(image_id: str) -> None:
            async with session.put(url + "/v2/images/%s/file" % image_id, data=b"\0" * 1024) as resp:
                assert resp.status == 204, await resp.text()

        for start in range(0, len(ids), 50):
            await asyncio.gather(*(one(i) for i in ids[start : start + 50]))


async def wait_listed(session: aiohttp.ClientSession, edge: Daemon, n: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        async with session.get(edge.url + "/v2/images?limit=1000", headers={"X-Auth-Token": edge.token}) as resp:
            if resp.status == 200 and len((await resp.json())["images"]) >= n:
                return
        await asyncio.sleep(0.5)
    raise SystemExit("the edge never mirrored %d records" % n)


async def wait_settled(edge: Daemon, hub: Daemon, session: aiohttp.ClientSession, feed: bool) -> None:
    """Feed: until the edge has applied the whole feed. Baseline: a full reconcile period."""
    if not feed:
        await asyncio.sleep(BASELINE_RECONCILE + 1)
        return
    async with session.get(hub.url + "/v2/edge/changes?limit=0", headers={"X-Auth-Token": hub.token}) as resp:
        latest = (await resp.json())["latest"]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state_file = edge.state_dir / "hub-mirror.json"
        if state_file.exists() and (json.loads(state_file.read_text()).get("serial") or 0) >= latest:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("the edge never caught up with the feed")


def listed_since(edge: Daemon, offset: int) -> int:
    """Records the edge read in full listings since `offset` of its log (its own report)."""
    text = edge.log.read_bytes()[offset:].decode(errors="replace")
    return sum(int(n) for n in re.findall(r"mirrored (\d+) image record\(s\) \(full reconcile\)", text))


async def scenario(work: Path, size: int, feed: bool, deletions: int) -> list[Round]:
    name = "%s-%d" % ("feed" if feed else "reconcile", size)
    root = work / name
    (root / "hub").mkdir(parents=True)
    (root / "hub" / "admin-token").write_text(HUB_TOKEN + "\n")
    hub_conf = {
        "site": {"name": "central", "role": "hub" if feed else "edge"},
        "stores": {"default": "central", "central": {"path": "images"}},
        "scrubber": {"enabled": False},
    }
    hub = start_daemon(root / "hub", write_toml(root / "hub.toml", hub_conf))
    proxy = await HubProxy(hub.url).start()
    edge: Daemon | None = None
    try:
        ids = await create_images(hub.url, HUB_TOKEN, size, disk_format="raw")
        await give_data(hub.url, ids)
        edge_conf = {
            "site": {"name": "dcn0"},
            "hub": {
                "url": proxy.url,
                "token": HUB_TOKEN,
                "mirror_interval": MIRROR_INTERVAL,
                "reconcile_interval": 3600 if feed else BASELINE_RECONCILE,
            },
            "scrubber": {"enabled": False},
        }
        edge = start_daemon(root / "dcn0", write_toml(root / "dcn0.toml", edge_conf))
        async with aiohttp.ClientSession() as session:
            await wait_listed(session, edge, size)
            await wait_settled(edge, hub, session, feed)
            rounds = []
            for image_id in ids[:deletions]:
                proxy.requests.clear()
                log_at = edge.log.stat().st_size
                start = time.perf_counter()
                await asyncio.to_thread(Glance(hub).ok, "image-delete", image_id)
                deleted = time.perf_counter()
                while True:
                    async with session.get(
                        edge.url + "/v2/images/%s" % image_id, headers={"X-Auth-Token": edge.token}
                    ) as resp:
                        if resp.status == 404:
                            break
                    await asyncio.sleep(0.02)
                seconds = time.perf_counter() - deleted
                record_gets = sum(
                    n
                    for (method, path), n in proxy.requests.items()
                    if method == "GET" and re.fullmatch(r"/v2/images/[0-9a-f-]{36}", path) and image_id not in path
                )
                rounds.append(
                    Round(
                        cli_seconds=deleted - start,
                        seconds=seconds,
                        record_gets=record_gets,
                        listed=listed_since(edge, log_at),
                        requests=sum(proxy.requests.values()),
                    )
                )
                await asyncio.sleep(0.5)
        return rounds
    finally:
        if edge is not None:
            edge.stop()
        hub.stop()
        await proxy.close()


def report(label: str, size: int, rounds: list[Round]) -> tuple[float, float]:
    times = [r.seconds for r in rounds]
    fetched = statistics.mean(r.record_gets + r.listed for r in rounds)
    print(
        "%-9s catalog %4d: 404 at the edge median %.2f s, max %.2f s after the CLI returned (%.2f s, %.2f s "
        "from its start); "
        "records fetched per deletion %.1f (listed %.1f, one by one %.1f); hub requests per deletion %.1f"
        % (
            label,
            size,
            statistics.median(times),
            max(times),
            statistics.median(r.cli_seconds + r.seconds for r in rounds),
            max(r.cli_seconds + r.seconds for r in rounds),
            fetched,
            statistics.mean(r.listed for r in rounds),
            statistics.mean(r.record_gets for r in rounds),
            statistics.mean(r.requests for r in rounds),
        )
    )
    return statistics.median(times), fetched


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[50, 500])
    ap.add_argument("--deletions", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-deletion-feed-"))
    try:
        figures: dict[tuple[str, int], tuple[float, float]] = {}
        for size in args.sizes:
            for feed in (True, False):
                label = "feed" if feed else "reconcile"
                rounds = await scenario(work, size, feed, args.deletions)
                figures[label, size] = report(label, size, rounds)
        print(
            "target: feed 404 within mirror_interval + 1 s = %d s; baseline reconcile_interval %d s (default 3600)"
            % (MIRROR_INTERVAL + 1, BASELINE_RECONCILE)
        )
        small, large = min(args.sizes), max(args.sizes)
        if small != large:
            for label in ("feed", "reconcile"):
                print(
                    "%-9s records per deletion, catalog %d vs %d: %.1f vs %.1f"
                    % (label, large, small, figures[label, large][1], figures[label, small][1])
                )
        for size in args.sizes:
            feed_time, feed_fetched = figures["feed", size]
            base_time, base_fetched = figures["reconcile", size]
            summary("deletion feed to 404, %d images" % size, feed_time, base_time, "s", "reconcile", "lower")
            print(
                "catalog %4d: the feed is %.1fx faster to 404 and fetches %s the records of the reconcile"
                % (
                    size,
                    base_time / feed_time if feed_time else float("inf"),
                    "1/%.0f" % (base_fetched / feed_fetched) if feed_fetched else "none of",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
