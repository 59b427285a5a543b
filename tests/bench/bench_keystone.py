"""Keystone benchmark (a benchmark, not a test): what validating Keystone tokens costs a request,
against a real daemon and a real Keystone (tests/keystone.py; `make keystone` installs it).

  static   : GET /v2/images/{id} with a static [[auth.tokens]] token (baseline)
  keystone : the same request with a Keystone token already validated (cached)
Both run in the same process, interleaved request by request on two keep-alive connections, so
the machine's noise falls on both. Printed: p50 / p99 of each and the keystone/static p99 ratio
(target <= 1.1), then Keystone validations per token within one cache period: a fresh token
sent by --burst concurrent clients at once, then --rounds more requests (target: 1).

Usage: python tests/bench/bench_keystone.py [--requests 3000] [--burst 32] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.summary import summary
from tests.conftest import start_daemon, write_toml
from tests.keystone import Keystone, _free_port

PASSWORD = "bench-secret"
STATIC_TOKEN = "bench-static-token"


def get(conn: http.client.HTTPConnection, path: str, token: str) -> float:
    started = time.perf_counter()
    conn.request("GET", path, headers={"X-Auth-Token": token, "Accept": "application/json"})
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200:
        raise SystemExit("GET %s answered %d" % (path, resp.status))
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="image-shows per token kind")
    parser.add_argument("--burst", type=int, default=32, help="concurrent first requests with one fresh token")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-keystone-", dir=args.workdir))
    keystone = Keystone(root=work / "keystone", port=_free_port())
    keystone.root.mkdir()
    daemon = None
    try:
        keystone.configure()
        keystone.start()
        keystone.create_user("bench-appliance", PASSWORD, "service", ["service"])
        keystone.create_user("bench-user", PASSWORD, "bench", ["member", "reader"])
        project = keystone.project_id("bench")
        config = write_toml(
            work / "appliance.toml",
            {
                "keystone": {
                    "auth_url": keystone.auth_url,
                    "username": "bench-appliance",
                    "password": PASSWORD,
                    "project_name": "service",
                },
                "auth": {
                    "tokens": [
                        {"token": STATIC_TOKEN, "user": "static", "project": project, "roles": ["member", "reader"]}
                    ]
                },
                "scrubber": {"enabled": False},
            },
        )
        daemon = start_daemon(work / "site", config)
        host = daemon.url.split("//", 1)[1]
        ks_token = keystone.token("bench-user", PASSWORD, "bench")
        conn = http.client.HTTPConnection(host, timeout=30)
        conn.request(
            "POST",
            "/v2/images",
            body=json.dumps({"name": "bench", "disk_format": "raw", "container_format": "bare"}),
            headers={"X-Auth-Token": ks_token, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        image = json.loads(resp.read())
        path = "/v2/images/%s" % image["id"]

        static_conn = http.client.HTTPConnection(host, timeout=30)
        keystone_conn = http.client.HTTPConnection(host, timeout=30)
        for _ in range(200):  # warm both paths (and the validated token's cache entry)
            get(static_conn, path, STATIC_TOKEN)
            get(keystone_conn, path, ks_token)
        static, cached = [], []
        for i in range(args.requests):
            if i % 2:  # alternate which goes first, so neither always follows the other
                static.append(get(static_conn, path, STATIC_TOKEN))
                cached.append(get(keystone_conn, path, ks_token))
            else:
                cached.append(get(keystone_conn, path, ks_token))
                static.append(get(static_conn, path, STATIC_TOKEN))
        print("image-show, %d requests each (interleaved, keep-alive):" % args.requests)
        for name, values in (("static token", static), ("keystone token", cached)):
            print(
                "  %-15s p50 %6.2f ms  p99 %6.2f ms  mean %6.2f ms"
                % (name, pct(values, 0.5), pct(values, 0.99), statistics.mean(values) * 1000)
            )
        print("  keystone/static p99 ratio: %.2f (target <= 1.10)" % (pct(cached, 0.99) / pct(static, 0.99)))
        summary("image-show p99, Keystone token", pct(cached, 0.99), pct(static, 0.99), "ms", "static token", "lower")
        print("  Keystone validations of the cached token: %d" % keystone.validations(ks_token))

        fresh = keystone.token("bench-user", PASSWORD, "bench")

        def first(_i: int) -> float:
            c = http.client.HTTPConnection(host, timeout=60)
            try:
                return get(c, path, fresh)
            finally:
                c.close()

        with ThreadPoolExecutor(args.burst) as pool:
            burst = list(pool.map(first, range(args.burst)))
        for _ in range(100):
            get(keystone_conn, path, fresh)
        print(
            "fresh token: %d concurrent first requests (slowest %.1f ms) + 100 more → Keystone validations: %d "
            "(target 1 per token per cache period)" % (args.burst, max(burst) * 1000, keystone.validations(fresh))
        )
        for c in (conn, static_conn, keystone_conn):
            c.close()
    finally:
        if daemon is not None:
            daemon.stop()
        keystone.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
