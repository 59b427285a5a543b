"""Barbican certificate benchmark (a benchmark, not a test): what reading a signed image's
certificate from a real Barbican costs an upload, against real daemons, Keystone and Barbican
(tests/keystone.py, tests/barbican.py; `make keystone barbican` installs them).

Two daemons validating the same Keystone user's token, uploads interleaved in one run:
  unsigned  : PUT /file of --kib random bytes, no signature (the baseline)
  cert_dir  : the same, signed (RSA-PSS, SHA-256), the certificate from [signatures] cert_dir
  barbican  : the same, signed, the certificate read from Barbican with the uploader's token
              (secret metadata + payload; Barbican validates the token at Keystone)
Printed: p50 / p90 of each (ms, POST + PUT until the 204), and the ratios to cert_dir and unsigned.

Usage: python tests/bench/bench_barbican.py [--uploads 40] [--kib 256] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from cryptography.hazmat.primitives import serialization

from tests.barbican import BARBICAN_VENV, Barbican
from tests.bench.summary import summary
from tests.conftest import Daemon, start_daemon, write_toml
from tests.keystone import Keystone
from tests.loopback import free_port
from tests.signkit import make_cert, new_key, save_cert, sign, signature_properties

PASSWORD = "bench-secret"


def call(conn: http.client.HTTPConnection, method: str, path: str, token: str, body: bytes, kind: str) -> Any:
    conn.request(method, path, body=body, headers={"X-Auth-Token": token, "Content-Type": kind})
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status >= 300:
        raise SystemExit("%s %s answered %d: %s" % (method, path, resp.status, raw[:300]))
    return json.loads(raw) if raw else None


def upload(daemon: Daemon, token: str, data: bytes, properties: dict[str, str]) -> float:
    """Seconds from the image's creation to the upload's 204 (the image is active then)."""
    conn = http.client.HTTPConnection(daemon.url.split("//", 1)[1], timeout=60)
    try:
        started = time.perf_counter()
        body = json.dumps({"disk_format": "raw", "container_format": "bare", **properties}).encode()
        image = call(conn, "POST", "/v2/images", token, body, "application/json")
        call(conn, "PUT", "/v2/images/%s/file" % image["id"], token, data, "application/octet-stream")
        elapsed = time.perf_counter() - started
        call(conn, "DELETE", "/v2/images/" + image["id"], token, b"", "application/json")
        return elapsed
    finally:
        conn.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=40, help="uploads per kind")
    parser.add_argument("--kib", type=int, default=256, help="image size")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if not (BARBICAN_VENV / "bin" / "gunicorn").exists():
        raise SystemExit("Barbican is needed: run `make barbican`")
    work = Path(tempfile.mkdtemp(prefix="bench-barbican-", dir=args.workdir))
    keystone = Keystone(root=work / "keystone", port=free_port())
    barbican = Barbican(root=work / "barbican", port=free_port(), keystone=keystone)
    keystone.root.mkdir()
    barbican.root.mkdir()
    daemons: list[Daemon] = []
    try:
        keystone.configure()
        keystone.start()
        barbican.configure()
        barbican.start()
        barbican.register()
        keystone.create_user("bench-appliance", PASSWORD, "service", ["service"])
        keystone.create_user("bench-user", PASSWORD, "bench", ["member", "reader"])
        token = keystone.token("bench-user", PASSWORD, "bench")
        key = new_key("RSA-PSS")
        cert = make_cert(key)
        save_cert(work / "certs", "bench", cert)
        secret = barbican.store_secret(token, cert.public_bytes(serialization.Encoding.PEM))
        section = {
            "auth_url": keystone.auth_url,
            "username": "bench-appliance",
            "password": PASSWORD,
            "project_name": "service",
            "region_name": keystone.region,
        }
        for name, signatures in (
            ("files", {"cert_dir": str(work / "certs")}),
            ("barbican", {"key_manager": "barbican"}),
        ):
            config = {"keystone": section, "signatures": signatures, "scrubber": {"enabled": False}}
            daemons.append(start_daemon(work / name, write_toml(work / ("%s.toml" % name), config)))
        files, keyed = daemons
        data = os.urandom(args.kib * 1024)
        signature = sign(key, "SHA-256", data)
        kinds = {
            "unsigned": (files, {}),
            "cert_dir": (files, signature_properties("RSA-PSS", "SHA-256", "bench", signature)),
            "barbican": (keyed, signature_properties("RSA-PSS", "SHA-256", secret, signature)),
        }
        for daemon, properties in kinds.values():  # warm-up: tokens validated, stores made
            upload(daemon, token, data, properties)
        times: dict[str, list[float]] = {kind: [] for kind in kinds}
        for i in range(args.uploads):
            order = list(kinds.items())
            for kind, (daemon, properties) in order[i % 3 :] + order[: i % 3]:  # each leads in turn
                times[kind].append(upload(daemon, token, data, properties))
        print("signed upload of %d KiB, %d uploads per kind (interleaved, same run)" % (args.kib, args.uploads))
        for kind, values in times.items():
            print("  %-9s p50 %7.2f ms  p90 %7.2f ms" % (kind, pct(values, 0.5), pct(values, 0.9)))
        base, plain = pct(times["cert_dir"], 0.5), pct(times["unsigned"], 0.5)
        summary("signed upload p50, Barbican cert", pct(times["barbican"], 0.5), base, "ms", "cert_dir p50", "lower")
        print(
            "  barbican p50: %.2fx cert_dir, %.2fx unsigned (+%.1f ms per signed upload)"
            % (
                pct(times["barbican"], 0.5) / base,
                pct(times["barbican"], 0.5) / plain,
                pct(times["barbican"], 0.5) - base,
            )
        )
    finally:
        for daemon in daemons:
            daemon.stop()
        barbican.stop()
        keystone.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
