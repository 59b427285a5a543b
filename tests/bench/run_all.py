"""Run every benchmark in tests/bench/ and print one table (`make bench`).

Each benchmark runs as its own process, with small sizes where it has flags for them (QUICK), so
the whole run ends in bounded time on a shared 2-core machine; its output goes by as it runs, and
the `BENCH name | figure | baseline | ratio | better` lines it prints (tests/bench/summary.py) are
gathered into one table at the end: each figure, its baseline from the same run and the ratio.
OpenStack Glance joins the table through bench_glance_hub, bench_transfer and bench_glance_import (a
real Glance 33 from `make glance`, on the same machine in the same run).

Usage: python tests/bench/run_all.py [--full] [--only bench_policy bench_members ...] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.summary import PREFIX, SEP

HERE = Path(__file__).resolve().parent
# Small sizes per benchmark: same figures and baselines, fewer bytes and rounds.
QUICK: dict[str, list[str]] = {
    "bench_barbican": ["--uploads", "10"],
    "bench_bundle": ["--size-mib", "128"],
    "bench_cache": ["--hit-mib", "128", "--wan-mib", "64", "--clients", "8", "--runs", "2"],
    "bench_deletion_feed": ["--sizes", "50", "--deletions", "3"],
    "bench_glance_hub": ["--mib", "64", "--clients", "4"],
    "bench_glance_import": ["--data-mib", "128", "--virtual-gib", "1", "--runs", "1", "--pair-timeout", "240"],
    "bench_hostile_bodies": ["--seconds", "4"],
    "bench_hub_sites": ["--sites", "100", "--interval", "5", "--seconds", "20"],
    "bench_import": ["--data-mib", "128", "--virtual-gib", "1", "--runs", "1", "--no-pair"],
    "bench_keystone": ["--requests", "500", "--burst", "16"],
    "bench_latency": ["--upload-mib", "256", "--import-data-mib", "128", "--virtual-gib", "1", "--idle-seconds", "5"],
    "bench_location_add": ["--mib", "64", "--rounds", "2"],
    "bench_members": ["--images", "50", "--members", "10", "--requests", "200"],
    "bench_memory": ["--uploads", "8", "--size-mib", "32"],
    "bench_metadata": ["--page", "32", "--rounds", "1"],
    "bench_mirror": ["--images", "1000"],
    "bench_ova": ["--mib", "128", "--runs", "1"],
    "bench_policy": ["--calls", "20000"],
    "bench_rbd": ["--mib", "128", "--web-mib", "128", "--rounds", "1"],
    "bench_signature": ["--mib", "128", "--rounds", "2"],
    "bench_transfer": ["--size-mib", "256", "--runs", "3"],
    "bench_tui": ["--images", "200", "--many", "2000", "--idle-seconds", "3", "--cached", "10"],
}


def run(name: str, args: list[str], timeout: float) -> tuple[list[list[str]], str]:
    """Run one benchmark, echoing its output; its BENCH rows and how it ended."""
    rows: list[list[str]] = []
    print("\n== %s %s" % (name, " ".join(args)), flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / ("%s.py" % name)), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=HERE.parents[1],
        start_new_session=True,  # a timeout ends the benchmark's daemons with it
    )
    assert proc.stdout is not None
    deadline = started + timeout
    try:
        for line in proc.stdout:
            print("   " + line, end="", flush=True)
            if line.startswith(PREFIX):
                rows.append([name, *(cell.strip() for cell in line[len(PREFIX) :].split(SEP.strip()))])
            if time.monotonic() > deadline:
                raise TimeoutError
        rc = proc.wait(max(1.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, 9)
        proc.wait(30)
        return rows, "timed out after %.0f s" % timeout
    took = time.monotonic() - started
    if rc != 0:
        return rows, "failed (exit %d) after %.0f s" % (rc, took)
    return rows, "%.0f s" % took


def table(rows: list[list[str]]) -> str:
    head = ["benchmark", "figure", "this run", "baseline (same run)", "ratio", "better"]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true", help="each benchmark's own default sizes (hours)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="these benchmarks only (bench_policy ...)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per benchmark")
    args = ap.parse_args()
    names = args.only or sorted(p.stem for p in HERE.glob("bench_*.py"))
    load_before = Path("/proc/loadavg").read_text().strip()
    rows: list[list[str]] = []
    ended: dict[str, str] = {}
    for name in names:
        found, ended[name] = run(name, [] if args.full else QUICK.get(name, []), args.timeout)
        if not found:
            found = [[name, "(no figure)", "-", "-", "-", "-"]]
        rows.extend(found)
    print("\nload before: %s; after: %s" % (load_before, Path("/proc/loadavg").read_text().strip()))
    print(table(rows))
    for name, how in ended.items():
        print("  %-22s %s" % (name, how))
    if any(how.startswith(("failed", "timed out")) for how in ended.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
