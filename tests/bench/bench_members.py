"""Image sharing benchmark (a benchmark, not a test): what membership costs reads, on a real daemon.

One project (alpha) owns --images shared images, each shared with --members projects; beta has
accepted every one. Measured interleaved request by request on keep-alive connections, so the
machine's noise falls on both sides of each ratio:

  show  : GET /v2/images/{id} by the owner (baseline) and by the member (visibility through its
          membership, and the image's members loaded with the record)
  list  : GET /v2/images?limit=100 by the owner (its own images, baseline) and by the member
          (the same images, found through the members table), and with member_status=all

Printed: p50 / p99 of each and the member/owner p99 ratios.

Usage: python tests/bench/bench_members.py [--images 200] [--members 20] [--requests 1000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.summary import summary
from tests.conftest import start_daemon, write_toml

TOKENS = {"alpha": "bench-alpha", "beta": "bench-beta"}


def call(conn: http.client.HTTPConnection, who: str, method: str, path: str, body: Any = None) -> tuple[float, Any]:
    started = time.perf_counter()
    headers = {"X-Auth-Token": TOKENS[who], "Accept": "application/json", "Content-Type": "application/json"}
    conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
    resp = conn.getresponse()
    raw = resp.read()
    elapsed = time.perf_counter() - started
    if resp.status >= 300:
        raise SystemExit("%s %s answered %d: %s" % (method, path, resp.status, raw[:200]))
    return elapsed, json.loads(raw) if raw else None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--members", type=int, default=20, help="projects each image is shared with")
    parser.add_argument("--requests", type=int, default=1000, help="requests per kind")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-members-", dir=args.workdir))
    tokens = [
        {"token": token, "user": who, "project": who, "roles": ["member", "reader"]} for who, token in TOKENS.items()
    ]
    config = write_toml(work / "site.toml", {"auth": {"tokens": tokens}, "scrubber": {"enabled": False}})
    daemon = start_daemon(work / "site", config)
    try:
        host, port = daemon.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        ids = []
        for i in range(args.images):
            body = {"name": "shared-%d" % i, "disk_format": "raw", "container_format": "bare", "visibility": "shared"}
            image_id = call(conn, "alpha", "POST", "/v2/images", body)[1]["id"]
            for m in range(args.members - 1):
                call(conn, "alpha", "POST", "/v2/images/%s/members" % image_id, {"member": "project-%d" % m})
            call(conn, "alpha", "POST", "/v2/images/%s/members" % image_id, {"member": "beta"})
            call(conn, "beta", "PUT", "/v2/images/%s/members/beta" % image_id, {"status": "accepted"})
            ids.append(image_id)
        kinds: dict[str, list[float]] = {k: [] for k in ("show owner", "show member", "list owner", "list member")}
        kinds["list member, member_status=all"] = []
        for n in range(args.requests):
            path = "/v2/images/%s" % ids[n % len(ids)]
            kinds["show owner"].append(call(conn, "alpha", "GET", path)[0])
            kinds["show member"].append(call(conn, "beta", "GET", path)[0])
            listed = call(conn, "alpha", "GET", "/v2/images?limit=100")
            kinds["list owner"].append(listed[0])
            shared = call(conn, "beta", "GET", "/v2/images?limit=100")
            kinds["list member"].append(shared[0])
            kinds["list member, member_status=all"].append(
                call(conn, "beta", "GET", "/v2/images?limit=100&member_status=all")[0]
            )
            if n == 0 and {i["id"] for i in listed[1]["images"]} != {i["id"] for i in shared[1]["images"]}:
                raise SystemExit("the member's list differs from the owner's")
        print("%d shared images, %d members each, %d requests per kind" % (args.images, args.members, args.requests))
        for kind, values in kinds.items():
            print("  %-32s p50 %7.2f ms   p99 %7.2f ms" % (kind, pct(values, 0.5), pct(values, 0.99)))
        for what in ("show", "list"):
            ratio = pct(kinds["%s member" % what], 0.99) / pct(kinds["%s owner" % what], 0.99)
            print("  %s: member/owner p99 ratio %.2f" % (what, ratio))
            summary(
                "%s p99, member" % what,
                pct(kinds["%s member" % what], 0.99),
                pct(kinds["%s owner" % what], 0.99),
                "ms",
                "owner",
                "lower",
            )
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
