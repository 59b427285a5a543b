"""Add-location benchmark (a benchmark, not a test): POST /v2/images/{id}/locations of an http URL
(nginx on loopback) to a queued image, timed until the daemon has read and hashed the data in the
background (os_hash_value set), against the baseline of the same work in one process: reading the
URL and computing MD5 + SHA-512 of it (urllib, hashlib), alternating, in one run.

Prints MB/s per kind (best of --rounds) and the ratio daemon / baseline.

Usage: python tests/bench/bench_location_add.py [--mib 256] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_signature import request  # noqa: E402
from bench_transfer import start_daemon, start_nginx  # noqa: E402

from tests.bench.summary import summary  # noqa: E402

CHUNK = 1 << 20


def baseline(url: str) -> float:
    started = time.perf_counter()
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha512()
    with urllib.request.urlopen(url, timeout=600) as resp:
        while chunk := resp.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return time.perf_counter() - started


def through_daemon(api: str, token: str, url: str) -> float:
    image = request(api, token, "POST", "/v2/images", {"disk_format": "raw", "container_format": "bare"})
    path = "/v2/images/%s" % image["id"]  # type: ignore[index]
    started = time.perf_counter()
    request(api, token, "POST", path + "/locations", {"url": url})
    while not request(api, token, "GET", path).get("os_hash_value"):  # type: ignore[union-attr]
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    request(api, token, "DELETE", path)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-locadd-", dir=args.workdir))
    www, state = work / "www", work / "state"
    www.mkdir()
    state.mkdir()
    with open(www / "disk.raw", "wb") as fh:
        for _ in range(args.mib):
            fh.write(os.urandom(CHUNK))
    nginx, base = start_nginx(www, work)
    port = int(base.rsplit(":", 1)[1])
    config = work / "site.toml"
    config.write_text('[import.uri_filter]\nallowed_hosts = ["127.0.0.0/8"]\nallowed_ports = [%d]\n' % port)
    daemon, api, token = start_daemon(state, config)
    url = base + "/disk.raw"
    try:
        best = {"baseline": float("inf"), "daemon": float("inf")}
        for _ in range(args.rounds):
            best["baseline"] = min(best["baseline"], baseline(url))
            best["daemon"] = min(best["daemon"], through_daemon(api, token, url))
        mb = args.mib * CHUNK / 1e6
        for kind, seconds in best.items():
            print("%-8s %7.1f MB/s  (%.2f s for %d MiB)" % (kind, mb / seconds, seconds, args.mib))
        print("ratio daemon / baseline (throughput): %.2f" % (best["baseline"] / best["daemon"]))
        summary("location add, hashed", mb / best["daemon"], mb / best["baseline"], "MB/s", "curl + MD5 + SHA-512")
        print("load: %s" % " ".join("%.2f" % v for v in os.getloadavg()))
    finally:
        daemon.terminate()
        daemon.wait(30)
        nginx.terminate()
        nginx.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
