"""`edge-appliance cache ...`: the documented glance-cache-manage verbs, plus `stats`, against
the running daemon (its Unix socket, or --url and a token)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import aiohttp

from appliance.clock import timestamp
from appliance.commands import target as target_options
from appliance.commands.target import Target, target_from_args
from appliance.errors import ConfigError

VERBS = (
    "list-cached",
    "list-queued",
    "queue-image",
    "delete-cached-image",
    "delete-all-cached-images",
    "delete-queued-image",
    "delete-all-queued-images",
    "stats",
)
NEEDS_ID = ("queue-image", "delete-cached-image", "delete-queued-image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("verb", choices=VERBS)
    p.add_argument(
        "image_id", nargs="?", metavar="ID", help="for queue-image, delete-cached-image, delete-queued-image"
    )
    target_options.add_arguments(p)


def _when(stamp: float) -> str:
    return timestamp(stamp) if stamp else "-"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1024
    return str(n)  # pragma: no cover


async def _call(target: Target, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    hdrs = {"Accept": "application/json", **(headers or {})}
    if target.token:
        hdrs["X-Auth-Token"] = target.token
    async with target.session() as session:
        async with session.request(method, target.base + path, headers=hdrs) as resp:
            body = await resp.read()
            if resp.status >= 400:
                try:
                    message = (await resp.json(content_type=None))["message"]
                except (ValueError, KeyError, TypeError):
                    message = body.decode(errors="replace").strip()
                raise CacheCommandFailed("%s %s: %d %s" % (method, path, resp.status, message))
            return await resp.json(content_type=None) if body else None


class CacheCommandFailed(Exception):
    pass


async def _run(target: Target, verb: str, image_id: str | None) -> int:
    if verb == "list-cached":
        view = await _call(target, "GET", "/v2/edge/cache")
        print("%-36s  %10s  %5s  %-20s  %-20s" % ("ID", "Size", "Hits", "Last accessed", "Cached at"))
        for e in view["entries"]:
            print(
                "%-36s  %10s  %5d  %-20s  %-20s"
                % (e["image_id"], _size(e["size"]), e["hits"], _when(e["last_accessed"]), _when(e["cached_at"]))
            )
        for f in view["fills"]:
            print("%-36s  filling: %s of %s" % (f["image_id"], _size(f["bytes_done"]), _size(f["bytes_total"])))
    elif verb == "list-queued":
        view = await _call(target, "GET", "/v2/edge/cache")
        print("%-36s  %-20s  %8s  %-20s  %s" % ("ID", "Queued at", "Attempts", "Next attempt", "Last error"))
        for q in view["queue"]:
            print(
                "%-36s  %-20s  %8d  %-20s  %s"
                % (
                    q["image_id"],
                    _when(q["queued_at"]),
                    q["attempts"],
                    _when(q["next_attempt_at"]),
                    q["last_error"] or "-",
                )
            )
    elif verb == "queue-image":
        await _call(target, "PUT", "/v2/cache/%s" % image_id)
        print("image %s queued for caching" % image_id)
    elif verb in ("delete-cached-image", "delete-queued-image"):
        which = "cache" if verb == "delete-cached-image" else "queue"
        await _call(target, "DELETE", "/v2/cache/%s" % image_id, {"x-image-cache-clear-target": which})
        print("image %s removed from the %s" % (image_id, which))
    elif verb in ("delete-all-cached-images", "delete-all-queued-images"):
        which = "cache" if verb == "delete-all-cached-images" else "queue"
        await _call(target, "DELETE", "/v2/cache", {"x-image-cache-clear-target": which})
        print("%s cleared" % which)
    else:
        view = await _call(target, "GET", "/v2/edge/cache")
        stats = view["stats"]
        rows = [
            ("enabled", str(view["enabled"]).lower()),
            (
                "size",
                "%s of %s (high mark %d%%, low mark %d%%)"
                % (_size(view["used_bytes"]), _size(view["max_size"]), view["high_watermark"], view["low_watermark"]),
            ),
            ("entries", str(view["entries_count"])),
            ("fills in progress", str(view["fills_count"])),
            ("queued", str(len(view["queue"]))),
            ("hits", str(stats["hits"])),
            ("misses", str(stats["misses"])),
            ("hit ratio", "%.1f%%" % (100 * stats["hit_ratio"])),
            ("bytes served from cache", _size(stats["bytes_from_cache"])),
            ("bytes fetched from upstream", _size(stats["bytes_from_upstream"])),
            ("evictions", str(stats["evictions"])),
            ("invalid fills", str(stats["invalid"])),
            ("served uncached", str(stats["uncached"])),
        ]
        for key, value in rows:
            print("%-28s %s" % (key, value))
    return 0


def run(args: argparse.Namespace) -> int:
    """`edge-appliance cache VERB`: exit 0 on success, 1 if the daemon refused or could not be
    reached, 2 for bad arguments."""
    try:
        target = target_from_args(args)
    except ConfigError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    if args.verb in NEEDS_ID and not args.image_id:
        print("cache %s: an image ID is required" % args.verb, file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(target, args.verb, args.image_id))
    except CacheCommandFailed as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    except (aiohttp.ClientError, OSError) as exc:
        print("error: cannot reach the daemon at %s: %s" % (target.describe(), exc), file=sys.stderr)
        return 1
