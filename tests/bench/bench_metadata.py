"""Metadata benchmark (a benchmark, not a test): the largest image list the metadata limits allow,
against a real daemon, with /healthcheck timed on its own connection throughout.

  idle   : /healthcheck p50 / p99 with nothing else running (baseline)
  small  : GET /v2/images?limit=PAGE over PAGE images with 128 short properties (baseline)
  large  : the same list over PAGE images with image_property_quota (128) properties of
           max_property_value_length characters each: the largest page the limits allow
For each list: its time, the bytes answered, /healthcheck p50 / p99 / max while it ran, and the
daemon's RSS after it and its peak (VmHWM), from /proc.

Usage: python tests/bench/bench_metadata.py [--page 64] [--value 16384] [--rounds 3] [--workdir DIR]
(the defaults keep the catalog near 130 MiB; --page 1000 --value 65535 is the stock config's
worst case, about 8 GiB of metadata.)
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_transfer import start_daemon

from tests.bench.summary import summary
from tests.conftest import write_toml

PROPS = 128


class Probe(threading.Thread):
    """GET /healthcheck every 10 ms on one keep-alive connection; keeps every latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self._host = url.split("//", 1)[1]
        self.latencies: list[float] = []
        self._done = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self._host, timeout=30)
        while not self._done.is_set():
            started = time.perf_counter()
            conn.request("GET", "/healthcheck")
            conn.getresponse().read()
            self.latencies.append(time.perf_counter() - started)
            self._done.wait(0.01)
        conn.close()

    def stop(self) -> list[float]:
        self._done.set()
        self.join(30)
        return self.latencies


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def rss(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/%d/status" % pid).read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def request(url: str, token: str, method: str, path: str, body: Any = None) -> bytes:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"X-Auth-Token": token, "Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        return resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=int, default=64, help="api.max_page_size, and the images per kind")
    parser.add_argument("--value", type=int, default=16384, help="limits.max_property_value_length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-metadata-"))
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    config = write_toml(
        work / "bench.toml",
        {
            "api": {
                "unix_socket": "",
                "max_page_size": args.page,
                "max_json_bytes": PROPS * args.value * 2 + (1 << 20),
            },
            "limits": {"max_property_value_length": args.value},
        },
    )
    proc, url, token = start_daemon(state, config)
    try:
        probe = Probe(url)
        probe.start()
        time.sleep(3)
        idle = probe.stop()
        print(
            "idle        /healthcheck p50 %6.1f ms  p99 %6.1f ms  (%d probes)"
            % (pct(idle, 50), pct(idle, 99), len(idle))
        )

        def make(kind: str, i: int) -> None:
            size = args.value if kind == "large" else 16
            props = {"p%03d" % k: chr(97 + (i + k) % 26) * size for k in range(PROPS)}
            request(
                url,
                token,
                "POST",
                "/v2/images",
                {
                    "name": "%s-%d" % (kind, i),
                    "disk_format": "raw",
                    "container_format": "bare",
                    "tags": [kind],
                    **props,
                },
            )

        for kind in ("small", "large"):
            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(partial(make, kind), range(args.page)))
            print(
                "created %d %s images in %.1f s; RSS %.0f MiB"
                % (args.page, kind, time.perf_counter() - started, rss(proc.pid)[0])
            )
        catalog = sum(p.stat().st_size for p in state.glob("catalog.sqlite*"))
        print("catalog: %.0f MiB" % (catalog / (1 << 20)))
        best: dict[str, float] = {}
        for kind in ("small", "large"):
            for round_ in range(args.rounds):
                probe = Probe(url)
                probe.start()
                time.sleep(0.3)
                started = time.perf_counter()
                body = request(url, token, "GET", "/v2/images?tag=%s&limit=%d" % (kind, args.page))
                took = time.perf_counter() - started
                best[kind] = min(best.get(kind, took), took)
                time.sleep(0.3)
                lat = probe.stop()
                now, peak = rss(proc.pid)
                print(
                    "%-5s list #%d: %6.2f s  %8.1f MiB answered  /healthcheck p50 %6.1f ms  p99 %6.1f ms  max %6.1f ms"
                    "  RSS %5.0f MiB (peak %5.0f MiB)"
                    % (
                        kind,
                        round_ + 1,
                        took,
                        len(body) / (1 << 20),
                        pct(lat, 50),
                        pct(lat, 99),
                        max(lat) * 1000,
                        now,
                        peak,
                    )
                )
                assert len(json.loads(body)["images"]) == args.page
                del body
        summary("image-list of %d, large properties" % args.page, best["large"], best["small"], "s", "small", "lower")
    finally:
        proc.terminate()
        proc.wait(30)
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
