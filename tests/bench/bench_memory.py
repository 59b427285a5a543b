"""Memory of a real daemon around concurrent uploads (a benchmark; tests/integration/
test_upload_memory.py asserts a generous bound with the same code).

Prints the daemon's RSS when idle, its peak (VmHWM) and its RSS a moment after N concurrent
uploads of M MiB of random data each have finished.

Usage: python -m tests.bench.bench_memory [--uploads 20] [--size-mib 64] [--rounds 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.summary import summary
from tests.conftest import Daemon, start_daemon

SEND_CHUNK = 1 << 20


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    status = Path("/proc/%d/status" % pid).read_text()
    return int(re.search(r"%s:\s+(\d+) kB" % field, status).group(1)) / 1024  # type: ignore[union-attr]


def _connection(daemon: Daemon) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=120)


def create_image(daemon: Daemon, name: str) -> str:
    conn = _connection(daemon)
    try:
        conn.request(
            "POST",
            "/v2/images",
            json.dumps({"name": name, "disk_format": "raw", "container_format": "bare"}),
            {"X-Auth-Token": daemon.token, "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 201, body
        return str(json.loads(body)["id"])
    finally:
        conn.close()


def upload(daemon: Daemon, image_id: str, data: memoryview, errors: list[str]) -> None:
    conn = _connection(daemon)
    try:
        conn.putrequest("PUT", "/v2/images/%s/file" % image_id)
        for key, value in (
            ("X-Auth-Token", daemon.token),
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(data))),
        ):
            conn.putheader(key, value)
        conn.endheaders()
        for pos in range(0, len(data), SEND_CHUNK):
            conn.send(data[pos : pos + SEND_CHUNK])
        resp = conn.getresponse()
        resp.read()
        if resp.status != 204:
            errors.append("%s: HTTP %d" % (image_id, resp.status))
    except OSError as exc:
        errors.append("%s: %s" % (image_id, exc))
    finally:
        conn.close()


@dataclass
class Memory:
    idle: float
    peak: float
    after: list[float]  # RSS after each round of uploads

    def report(self, uploads: int, size_mib: int) -> str:
        rounds = ", ".join("%.0f" % a for a in self.after)
        return (
            "RSS idle %.0f MiB, peak %.0f MiB, after %d concurrent uploads of %d MiB: %s MiB (%+.0f MiB over idle)"
            % (self.idle, self.peak, uploads, size_mib, rounds, self.after[-1] - self.idle)
        )


def measure(daemon: Daemon, uploads: int = 20, size_mib: int = 64, rounds: int = 1, settle: float = 2.0) -> Memory:
    pid = daemon.proc.pid
    # Warm up (imports, the catalog, the first request) before the idle figure.
    create_image(daemon, "warm-up")
    time.sleep(settle)
    idle = rss_mib(pid)
    data = memoryview(os.urandom(size_mib << 20))
    after = []
    for r in range(rounds):
        ids = [create_image(daemon, "m%d-%d" % (r, i)) for i in range(uploads)]
        errors: list[str] = []
        threads = [threading.Thread(target=upload, args=(daemon, image_id, data, errors)) for image_id in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        time.sleep(settle)
        after.append(rss_mib(pid))
    return Memory(idle=idle, peak=rss_mib(pid, "VmHWM"), after=after)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--uploads", type=int, default=20)
    p.add_argument("--size-mib", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        daemon = start_daemon(Path(work) / "site")
        try:
            memory = measure(daemon, args.uploads, args.size_mib, args.rounds)
            print(memory.report(args.uploads, args.size_mib))
            summary("RSS after %d uploads" % args.uploads, memory.after[-1], memory.idle, "MiB", "idle RSS", "lower")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
