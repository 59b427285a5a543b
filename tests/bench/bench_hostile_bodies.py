"""Benchmark: /healthcheck latency while clients send empty, short and abandoned bodies.

Starts a real daemon, measures /healthcheck p50/p99 idle (the baseline), then while 4 client
threads loop over empty-body PUTs to /stage and /file, 1 MiB-announced bodies that stop after
10 bytes (half-closed), and clients that vanish mid-body. Prints the figures and the ratio.

    .venv/bin/python tests/bench/bench_hostile_bodies.py [--seconds 10]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.summary import summary
from tests.conftest import start_daemon
from tests.integration.test_request_bodies import (
    JSON,
    OCTETS,
    HealthProbe,
    head,
    new_image,
    raw_exchange,
    request,
)


def hostile_client(daemon, stop: threading.Event, counts: list[int]) -> None:  # type: ignore[no-untyped-def]
    url = urlsplit(daemon.url)
    while not stop.is_set():
        image_id = new_image(daemon)
        request(daemon, "PUT", "/v2/images/%s/stage" % image_id, b"", OCTETS)
        request(daemon, "PUT", "/v2/images/%s/stage" % image_id, b"", OCTETS)
        request(daemon, "PUT", "/v2/images/%s/file" % new_image(daemon), b"", OCTETS)
        request(daemon, "POST", "/v2/images", b"", JSON)
        raw_exchange(daemon, head(daemon, "PUT", "/v2/images/%s/file" % image_id, OCTETS, 1 << 20), b"0123456789", True)
        sock = socket.create_connection((url.hostname, url.port), timeout=5)
        sock.sendall(
            head(daemon, "PUT", "/v2/images/%s/file" % new_image(daemon), OCTETS, 1 << 20).encode() + b"x" * 10
        )
        sock.close()
        counts[0] += 9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        daemon = start_daemon(Path(tmp) / "site")
        try:
            with HealthProbe(daemon.url) as idle:
                time.sleep(args.seconds / 2)
            stop, counts = threading.Event(), [0]
            clients = [threading.Thread(target=hostile_client, args=(daemon, stop, counts)) for _ in range(4)]
            with HealthProbe(daemon.url) as busy:
                for c in clients:
                    c.start()
                time.sleep(args.seconds)
                stop.set()
                for c in clients:
                    c.join(30)
        finally:
            daemon.stop()
    base_p99, p99 = percentile(idle.latencies, 0.99), percentile(busy.latencies, 0.99)
    print(
        "idle:    /healthcheck p50 %.1f ms, p99 %.1f ms (%d probes)"
        % (statistics.median(idle.latencies) * 1e3, base_p99 * 1e3, len(idle.latencies))
    )
    print(
        "hostile: /healthcheck p50 %.1f ms, p99 %.1f ms, max %.1f ms (%d probes; %d hostile requests)"
        % (
            statistics.median(busy.latencies) * 1e3,
            p99 * 1e3,
            max(busy.latencies) * 1e3,
            len(busy.latencies),
            counts[0],
        )
    )
    print("p99 ratio hostile/idle: %.2f" % (p99 / base_p99))
    summary("/healthcheck p99 under hostile bodies", p99 * 1e3, base_p99 * 1e3, "ms", "idle p99", "lower")


if __name__ == "__main__":
    main()
