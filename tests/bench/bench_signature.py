"""Signed-image upload benchmark (a benchmark, not a test): PUT /v2/images/{id}/file of the same
random data to one daemon, unsigned and signed (img_signature_* set), alternating, in one run.

  unsigned : MD5 + SHA-512 while streaming (the baseline)
  signed   : the same, plus the signature's hash (SHA-256 and SHA-512 here, RSA-PSS), and the
             certificate and signature checks before the image turns active

Prints MB/s per kind (best of --rounds) and the ratio signed / unsigned.

Usage: python tests/bench/bench_signature.py [--mib 512] [--rounds 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import start_daemon, stop_all  # noqa: E402

from tests.bench.summary import summary  # noqa: E402
from tests.signkit import make_cert, new_key, save_cert, sign, signature_properties  # noqa: E402

CHUNK = 1 << 20


def request(url: str, token: str, method: str, path: str, body: object | None = None) -> object:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"X-Auth-Token": token, "Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    if resp.status >= 300:
        raise SystemExit("%s %s: %d %s" % (method, path, resp.status, raw[:300]))
    return json.loads(raw) if raw else None


def upload(url: str, token: str, source: Path, properties: dict[str, str]) -> float:
    """Seconds from the first byte sent to the 204 (the image is active then)."""
    image = request(url, token, "POST", "/v2/images", {"disk_format": "raw", "container_format": "bare", **properties})
    image_id = image["id"]  # type: ignore[index]
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    size = source.stat().st_size
    started = time.perf_counter()
    conn.putrequest("PUT", "/v2/images/%s/file" % image_id)
    conn.putheader("X-Auth-Token", token)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    with open(source, "rb") as fh:
        while chunk := fh.read(CHUNK):
            conn.send(chunk)
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if resp.status != 204:
        raise SystemExit("upload answered %d" % resp.status)
    shown = request(url, token, "GET", "/v2/images/" + image_id)
    if shown["status"] != "active":  # type: ignore[index]
        raise SystemExit("image not active: %s" % shown)
    request(url, token, "DELETE", "/v2/images/" + image_id)  # keep the disk use to one image
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-signature-", dir=args.workdir))
    proc = None
    try:
        source = work / "data.raw"
        with open(source, "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(CHUNK))
        data = source.read_bytes()
        key = new_key("RSA-PSS")
        save_cert(work / "certs", "bench", make_cert(key))
        config = work / "bench.toml"
        config.write_text(
            '[api]\nmax_upload_bytes = %d\n\n[signatures]\ncert_dir = "%s"\n' % (2 * len(data), work / "certs")
        )
        kinds: dict[str, dict[str, str]] = {"unsigned": {}}
        for method in ("SHA-256", "SHA-512"):
            kinds["signed " + method] = signature_properties("RSA-PSS", method, "bench", sign(key, method, data))
        del data
        state = work / "state"
        state.mkdir()
        proc, url, token = start_daemon(state, config)
        upload(url, token, source, {})  # warm-up: page cache, store directories, worker threads
        best: dict[str, float] = {}
        for _ in range(args.rounds):
            for kind, properties in kinds.items():  # alternating: drift hits every kind alike
                seconds = upload(url, token, source, properties)
                best[kind] = min(best.get(kind, seconds), seconds)
        base = args.mib / best["unsigned"]
        print("upload of %d MiB random data, best of %d rounds (one daemon, same run)" % (args.mib, args.rounds))
        for kind, seconds in best.items():
            rate = args.mib / seconds
            print("  %-16s %8.1f MiB/s   ratio to unsigned %.2f" % (kind, rate, rate / base))
            if kind != "unsigned":
                summary("upload, " + kind, rate, base, "MiB/s", "unsigned upload")
    finally:
        stop_all((proc,), work)


if __name__ == "__main__":
    main()
