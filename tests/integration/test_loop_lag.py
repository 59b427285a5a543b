"""The event-loop lag metric of a real daemon: appliance_event_loop_lag_* on /metrics and
event_loop_lag in /v2/edge/status. It moves when the loop really is held (the daemon's process
stopped with SIGSTOP for a moment: every timer it had is late by as much), and it stays small
while an upload streams through the daemon (the bytes are hashed and written on worker threads).
tests/bench/bench_latency.py measures it under heavier load."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import threading
import time
from typing import Any

from tests.bench.bench_memory import create_image, upload
from tests.conftest import Daemon
from tests.waiting import wait_for

LAG = "appliance_event_loop_lag_seconds"
MAX = "appliance_event_loop_lag_max_seconds"
SAMPLES = "appliance_event_loop_lag_sample_seconds"


def get(daemon: Daemon, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", int(daemon.url.rsplit(":", 1)[1]), timeout=30)
    try:
        conn.request("GET", path, headers={"X-Auth-Token": daemon.token})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, body
        return body
    finally:
        conn.close()


def scrape(daemon: Daemon) -> dict[str, Any]:
    """The lag series of /metrics, checked against the Prometheus text format as it is read."""
    text = get(daemon, "/metrics").decode()
    assert "# TYPE %s gauge\n" % LAG in text and "# TYPE %s gauge\n" % MAX in text
    assert "# TYPE %s histogram\n" % SAMPLES in text
    value = r"([0-9.e+-]+)"
    buckets = {
        float(le): float(n) for le, n in re.findall(r'^%s_bucket\{le="([^"]+)"\} %s$' % (SAMPLES, value), text, re.M)
    }
    found: dict[str, Any] = {"buckets": buckets}
    for name, key in ((LAG, "latest"), (MAX, "max"), (SAMPLES + "_count", "count"), (SAMPLES + "_sum", "sum")):
        m = re.search(r"^%s %s$" % (name, value), text, re.M)
        assert m, "%s missing from /metrics" % name
        found[key] = float(m.group(1))
    assert sorted(buckets) == list(buckets) and buckets[float("inf")] == found["count"]
    return found


def test_lag_is_sampled_and_moves_when_the_loop_is_held(daemon: Daemon) -> None:
    first = scrape(daemon)
    second = wait_for(lambda: (s := scrape(daemon))["count"] > first["count"] + 5 and s, "lag samples to go on")
    assert 0 <= second["latest"] < 1 and second["max"] >= second["latest"]

    # Hold the whole process for 0.6 s: the loop's next timer runs that late.
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(0.6)
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    held = wait_for(lambda: (s := scrape(daemon))["max"] >= 0.5 and s, "the held loop in the max")
    over = held["count"] - held["buckets"][0.5]
    assert over >= 1, held  # the histogram has the late sample beyond 0.5 s
    status = json.loads(get(daemon, "/v2/edge/status"))["event_loop_lag"]
    assert status["max_seconds"] >= 0.5 and status["window_seconds"] == 60
    assert 0 <= status["latest_seconds"] <= status["max_seconds"]


def test_lag_stays_small_while_an_upload_streams(daemon: Daemon) -> None:
    image_id = create_image(daemon, "lag")
    data = memoryview(os.urandom(256 << 20))
    errors: list[str] = []
    before = scrape(daemon)
    sender = threading.Thread(target=upload, args=(daemon, image_id, data, errors))
    sender.start()
    peaks = []
    while sender.is_alive():
        peaks.append(scrape(daemon)["latest"])
        time.sleep(0.05)
    sender.join()
    assert not errors, errors
    after = scrape(daemon)
    samples = after["count"] - before["count"]
    late = samples - (after["buckets"][0.05] - before["buckets"][0.05])
    # Most samples on time, none anywhere near the upload's length (it would be, with the
    # hashing or the writes on the loop). Generous: the test machine's cores are shared.
    assert samples >= 5 and late <= samples / 2, (samples, late, after)
    assert after["max"] < 1.0, after
    assert max(peaks) < 1.0, peaks
