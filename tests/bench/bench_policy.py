"""Policy benchmark (a benchmark, not a test): what one `policy.enforce` costs per request now that
rules are parsed oslo.policy check strings, beside work every image request does anyway.

  enforce : get_image (Glance's longest default: 9 checks), upload_image, copy_image by an
            owner through an operator's file (rule: aliases), and a refusal (Forbidden built)
  baseline: json.dumps of one image record as the API shows it, in the same run

Usage: python tests/bench/bench_policy.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance import policy
from appliance.auth import Context
from appliance.errors import Forbidden
from tests.bench.summary import summary

MEMBER = Context(user="mia", project="p1", roles=frozenset({"member", "reader"}))
READER = Context(user="rex", project="p2", roles=frozenset({"reader"}))
IMAGE = {"project_id": "p1", "owner": "p1", "visibility": "public", "id": "7c1f", "status": "active"}
FILE = """"owner": "project_id:%(project_id)s"
"owner_member": "role:member and rule:owner"
"copy_image": "rule:context_is_admin or rule:owner_member"
"""
RECORD = {
    "id": "7c1f4f0e-4a5b-4d1c-9a53-1b2f3c4d5e6f",
    "name": "debian-12",
    "status": "active",
    "visibility": "public",
    "owner": "p1",
    "disk_format": "qcow2",
    "container_format": "bare",
    "size": 1 << 30,
    "checksum": "0" * 32,
    "os_hash_algo": "sha512",
    "os_hash_value": "0" * 128,
    "tags": [],
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "self": "/v2/images/7c1f4f0e-4a5b-4d1c-9a53-1b2f3c4d5e6f",
    "file": "/v2/images/7c1f4f0e-4a5b-4d1c-9a53-1b2f3c4d5e6f/file",
    "schema": "/v2/schemas/image",
}


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def refused() -> None:
    try:
        policy.enforce(READER, "upload_image", IMAGE)
    except Forbidden:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=200_000)
    calls = parser.parse_args().calls
    baseline = per_call_us(lambda: json.dumps(RECORD), calls)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.yaml"
        path.write_text(FILE)
        with_file = policy.Policy.load(path)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("enforce get_image (default)", lambda: policy.enforce(MEMBER, "get_image", IMAGE)),
        ("enforce upload_image (default)", lambda: policy.enforce(MEMBER, "upload_image", IMAGE)),
        ("copy_image via 2 rule: aliases (file)", lambda: with_file.allows(MEMBER, "copy_image", IMAGE)),
        ("refusal: Forbidden with its message", refused),
    ]
    print("baseline json.dumps(image record): %.2f us" % baseline)
    for name, fn in cases:
        cost = per_call_us(fn, calls)
        print("%-40s %6.2f us  (%.2fx baseline)" % (name, cost, cost / baseline))
        summary("policy: " + name, cost, baseline, "us", "json.dumps(image record)", "lower")


if __name__ == "__main__":
    main()
