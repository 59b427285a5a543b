"""Tail latency, event-loop lag and memory of a real daemon under transfer load (a benchmark,
not a test; issue 19's targets are printed beside each figure).

Phases, in one run against one daemon:
  idle     : image-show and image-list (25 images) sampled on a quiet daemon: the baseline
  upload   : the same while one 1 GiB upload of random bytes runs (curl -T)
  combined : the same while two web-download imports (a gzip'd qcow2 of random data, served by
             nginx, decompressed and converted to raw) run, with one 1 GiB upload in flight
             all along (the next starts when one ends)
For each phase: p50/p99 of both requests, the event loop's lag (appliance_event_loop_lag_*
from /metrics), the daemon's peak RSS (VmHWM, reset between phases) and its RSS once the
phase has ended and settled, against the idle RSS. The machine's load is printed too.

Usage: python tests/bench/bench_latency.py [--upload-mib 1024] [--import-data-mib 700]
       [--virtual-gib 2] [--idle-seconds 10] [--timeout 900] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_import import make_image
from bench_transfer import start_nginx

from tests.bench.summary import summary
from tests.conftest import Daemon, start_daemon

LIST_SIZE = 25
PACE = 0.02  # seconds between two sampled requests
SETTLE = 3.0  # after a phase, before its "after" RSS: the memory trimmer runs 1 s after transfers end


def status_kib(pid: int, field: str) -> int:
    text = Path("/proc/%d/status" % pid).read_text()
    return int(re.search(r"%s:\s+(\d+) kB" % field, text).group(1))  # type: ignore[union-attr]


def reset_peak(pid: int) -> None:
    Path("/proc/%d/clear_refs" % pid).write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def loop_thread_times(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of the daemon's main thread,
    which runs the event loop: the wait is what the machine's load costs the loop."""
    run, wait, _slices = Path("/proc/%d/task/%d/schedstat" % (pid, pid)).read_text().split()
    return int(run) / 1e9, int(wait) / 1e9


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


class Api:
    def __init__(self, daemon: Daemon) -> None:
        self.port = int(daemon.url.rsplit(":", 1)[1])
        self.token = daemon.token
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def call(self, method: str, path: str, body: object | None = None) -> Any:
        headers = {"X-Auth-Token": self.token, "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        self.conn.request(method, path, data, headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise RuntimeError("%s %s: HTTP %d %s" % (method, path, resp.status, raw[:200]))
        return json.loads(raw) if raw else None

    def metrics(self) -> str:
        self.conn.request("GET", "/metrics")
        return self.conn.getresponse().read().decode()

    def close(self) -> None:
        self.conn.close()


def lag_histogram(text: str) -> dict[float, float]:
    """Cumulative bucket counts of appliance_event_loop_lag_sample_seconds."""
    found = re.findall(r'appliance_event_loop_lag_sample_seconds_bucket\{le="([^"]+)"\} (\S+)', text)
    return {float(le): float(n) for le, n in found}


@dataclass
class Phase:
    name: str
    show: list[float] = field(default_factory=list)
    listing: list[float] = field(default_factory=list)
    lag_max: float = 0.0  # the largest appliance_event_loop_lag_max_seconds seen (60 s window)
    lag_samples: float = 0
    lag_over: dict[float, float] = field(default_factory=dict)  # threshold → samples above it
    peak_mib: float = 0.0
    loop_cpu: float = 0.0  # seconds the loop's thread ran
    loop_waited: float = 0.0  # seconds it was runnable but had no CPU
    after_mib: float = 0.0
    seconds: float = 0.0


class Sampler(threading.Thread):
    """image-show / image-list alternately on one keep-alive connection, and /metrics once a
    second on another, until stopped."""

    def __init__(self, daemon: Daemon, image_id: str, phase: Phase) -> None:
        super().__init__(daemon=True)
        self.api, self.scraper = Api(daemon), Api(daemon)
        self.image_id, self.phase = image_id, phase
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            before = lag_histogram(self.scraper.metrics())
            scraped = 0.0
            while not self.stop.is_set():
                for target, path in (
                    (self.phase.show, "/v2/images/%s" % self.image_id),
                    (self.phase.listing, "/v2/images?limit=%d" % LIST_SIZE),
                ):
                    t = time.perf_counter()
                    self.api.call("GET", path)
                    target.append(time.perf_counter() - t)
                    time.sleep(PACE)
                if time.monotonic() - scraped >= 1:
                    scraped = time.monotonic()
                    self._lag_max(self.scraper.metrics())
            text = self.scraper.metrics()
            self._lag_max(text)
            after = lag_histogram(text)
            inf = float("inf")
            self.phase.lag_samples = after[inf] - before.get(inf, 0)
            for le in (0.01, 0.02, 0.05, 0.1):
                self.phase.lag_over[le] = self.phase.lag_samples - (after[le] - before.get(le, 0))
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.api.close()
            self.scraper.close()

    def _lag_max(self, text: str) -> None:
        m = re.search(r"^appliance_event_loop_lag_max_seconds (\S+)$", text, re.M)
        if m:
            self.phase.lag_max = max(self.phase.lag_max, float(m.group(1)))


class Uploads(threading.Thread):
    """1 GiB uploads with curl -T, one at a time, until stopped (or after `count`)."""

    def __init__(self, daemon: Daemon, source: Path, count: int | None) -> None:
        super().__init__(daemon=True)
        self.daemon_, self.source, self.count = daemon, source, count
        self.stop = threading.Event()
        self.done: list[float] = []  # MB/s of each upload
        self.error: BaseException | None = None

    def run(self) -> None:
        api = Api(self.daemon_)
        try:
            while not self.stop.is_set() and (self.count is None or len(self.done) < self.count):
                image = api.call(
                    "POST", "/v2/images", {"name": "upload", "disk_format": "raw", "container_format": "bare"}
                )
                t = time.perf_counter()
                subprocess.run(
                    [
                        "curl",
                        "-sS",
                        "--fail",
                        "-o",
                        "/dev/null",
                        "-T",
                        str(self.source),
                        "-H",
                        "X-Auth-Token: " + self.daemon_.token,
                        "-H",
                        "Content-Type: application/octet-stream",
                        "%s/v2/images/%s/file" % (self.daemon_.url, image["id"]),
                    ],
                    check=True,
                )
                self.done.append(self.source.stat().st_size / 1e6 / (time.perf_counter() - t))
                api.call("DELETE", "/v2/images/%s" % image["id"])  # keep the disk use bounded
        except BaseException as exc:
            self.error = exc
        finally:
            api.close()


def run_phase(
    daemon: Daemon, image_id: str, phase: Phase, load: threading.Thread | None, until: Any, timeout: float
) -> Phase:
    pid = daemon.proc.pid
    reset_peak(pid)
    sampler = Sampler(daemon, image_id, phase)
    cpu, waited = loop_thread_times(pid)
    t = time.monotonic()
    sampler.start()
    if load is not None:
        load.start()
    deadline = t + timeout
    while not until() and time.monotonic() < deadline:
        if sampler.error is not None or (load is not None and getattr(load, "error", None) is not None):
            break
        time.sleep(0.2)
    phase.seconds = time.monotonic() - t
    cpu_end, waited_end = loop_thread_times(pid)
    phase.loop_cpu, phase.loop_waited = cpu_end - cpu, waited_end - waited
    if load is not None:
        load.stop.set()  # type: ignore[attr-defined]
        load.join(timeout)
    sampler.stop.set()
    sampler.join(60)
    for err in (sampler.error, getattr(load, "error", None)):
        if err is not None:
            raise SystemExit("%s phase failed: %s" % (phase.name, err))
    if time.monotonic() >= deadline:
        raise SystemExit("%s phase did not finish within %.0f s" % (phase.name, timeout))
    phase.peak_mib = status_kib(pid, "VmHWM") / 1024
    time.sleep(SETTLE)
    phase.after_mib = status_kib(pid, "VmRSS") / 1024
    return phase


def task_done(api: Api, image_id: str) -> bool:
    tasks = api.call("GET", "/v2/images/%s/tasks" % image_id)["tasks"]
    if tasks and tasks[0]["status"] == "failure":
        raise SystemExit("import failed: %s" % tasks[0]["message"])
    return bool(tasks) and tasks[0]["status"] == "success"


def report(phases: list[Phase], idle_mib: float, uploads: list[float], load_before: str, load_after: str) -> str:
    idle = phases[0]
    lines = ["load before: %s" % load_before, "load after : %s" % load_after]
    lines.append(
        "%-30s %18s %18s %18s  %s"
        % ("figure (ms; MiB)", *("%s (%.0f s)" % (p.name, p.seconds) for p in phases), "target")
    )

    def row(label: str, cells: list[str], target: str) -> None:
        lines.append("%-30s %18s %18s %18s  %s" % (label, *cells, target))

    for label, pick, target in (
        ("image-show p50 / p99", lambda p: p.show, "p99 < 20 ms under load"),
        ("image-list (%d) p50 / p99" % LIST_SIZE, lambda p: p.listing, "p99 < 30 ms under load"),
    ):
        row(
            label,
            ["%.1f / %.1f" % (1000 * percentile(pick(p), 0.5), 1000 * percentile(pick(p), 0.99)) for p in phases],
            target,
        )
    for label, pick in (
        ("  p99 / idle p99: show", lambda p: percentile(p.show, 0.99) / percentile(idle.show, 0.99)),
        ("  p99 / idle p99: list", lambda p: percentile(p.listing, 0.99) / percentile(idle.listing, 0.99)),
    ):
        row(label, ["%.2fx" % pick(p) for p in phases], "")
    row("requests sampled (show+list)", ["%d" % (len(p.show) + len(p.listing)) for p in phases], "")
    row("loop lag max (60 s window)", ["%.1f" % (1000 * p.lag_max) for p in phases], "")
    row(
        "loop lag samples >10/>20/>50",
        ["%d/%d/%d" % (p.lag_over[0.01], p.lag_over[0.02], p.lag_over[0.05]) for p in phases],
        "of %s" % "/".join("%d" % p.lag_samples for p in phases),
    )
    row(
        "loop thread: CPU / wait for CPU",
        ["%.0f%% / %.0f%%" % (100 * p.loop_cpu / p.seconds, 100 * p.loop_waited / p.seconds) for p in phases],
        "of the phase's time",
    )
    row("peak RSS (VmHWM)", ["%.0f" % p.peak_mib for p in phases], "upload < 150, combined < 200")
    row(
        "RSS after, vs idle %.0f" % idle_mib,
        ["%.0f (%+.0f)" % (p.after_mib, p.after_mib - idle_mib) for p in phases],
        "within +10 of idle",
    )
    if uploads:
        lines.append("uploads: %s MB/s" % ", ".join("%.0f" % u for u in uploads))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upload-mib", type=int, default=1024)
    ap.add_argument("--import-data-mib", type=int, default=700)
    ap.add_argument("--virtual-gib", type=int, default=2)
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--timeout", type=float, default=900, help="per phase")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-latency-", dir=args.workdir))
    nginx = daemon = None
    try:
        source = work / "upload.raw"
        with open(source, "wb") as fh:
            for _ in range(args.upload_mib):
                fh.write(os.urandom(1 << 20))
        served = work / "served"
        served.mkdir()
        disk = make_image(served, args.import_data_mib, args.virtual_gib)
        nginx, base = start_nginx(served, work)
        port = int(base.rsplit(":", 1)[1])
        config = work / "appliance.toml"
        config.write_text(
            '[import]\nplugins = ["image_decompression", "image_conversion"]\n'
            '[import.uri_filter]\nallowed_hosts = ["127.0.0.0/8"]\nallowed_ports = [%d]\n' % port
        )
        daemon = start_daemon(work / "state", config, timeout=60)
        api = Api(daemon)
        ids = [
            api.call(
                "POST",
                "/v2/images",
                {
                    "name": "listed-%02d" % i,
                    "disk_format": "qcow2",
                    "container_format": "bare",
                    "tags": ["bench", "t%d" % i],
                    "os_distro": "debian",
                    "hw_disk_bus": "virtio",
                },
            )["id"]
            for i in range(LIST_SIZE)
        ]
        for _ in range(20):  # warm up the routes, the catalog and the policy caches
            api.call("GET", "/v2/images/%s" % ids[0])
            api.call("GET", "/v2/images?limit=%d" % LIST_SIZE)
        time.sleep(SETTLE)
        idle_mib = status_kib(daemon.proc.pid, "VmRSS") / 1024
        load_before = Path("/proc/loadavg").read_text().strip()

        phases = []
        started = time.monotonic()
        phases.append(
            run_phase(daemon, ids[0], Phase("idle"), None, lambda: time.monotonic() - started > args.idle_seconds, 60)
        )
        one = Uploads(daemon, source, count=1)
        phases.append(run_phase(daemon, ids[0], Phase("upload"), one, lambda: bool(one.done), args.timeout))

        imports = []
        for i in range(2):
            image = api.call(
                "POST", "/v2/images", {"name": "import-%d" % i, "disk_format": "qcow2", "container_format": "bare"}
            )
            imports.append(image["id"])
        uploads = Uploads(daemon, source, count=None)
        for image_id in imports:
            api.call(
                "POST",
                "/v2/images/%s/import" % image_id,
                {"method": {"name": "web-download", "uri": "%s/%s" % (base, disk.name)}},
            )
        pending = set(imports)

        def imports_done() -> bool:
            for image_id in list(pending):
                if task_done(api, image_id):
                    pending.discard(image_id)
            return not pending

        phases.append(run_phase(daemon, ids[0], Phase("combined"), uploads, imports_done, args.timeout))
        api.close()
        print(report(phases, idle_mib, one.done + uploads.done, load_before, Path("/proc/loadavg").read_text().strip()))
        idle, combined = phases[0], phases[-1]
        for label, pick in (("image-show", lambda p: p.show), ("image-list (%d)" % LIST_SIZE, lambda p: p.listing)):
            summary(
                "%s p99, 2 imports + upload" % label,
                1000 * percentile(pick(combined), 0.99),
                1000 * percentile(pick(idle), 0.99),
                "ms",
                "idle p99",
                "lower",
            )
        summary("peak RSS, 2 imports + upload", combined.peak_mib, idle_mib, "MiB", "idle RSS", "lower")
    finally:
        if daemon is not None:
            daemon.stop()
        if nginx is not None:
            nginx.terminate()
            nginx.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
