"""Import benchmark (a benchmark, not a test): web-download of a gzip-compressed qcow2 with the
decompression and conversion plugins, beside the naive chain measured in the same run.

  image     : qcow2, 2 GiB virtual, ~700 MiB of random data (incompressible), gzip -1, served by nginx
  naive     : curl to a file; gzip -dc; qemu-img convert -O raw; sha512sum; md5sum (sequential)
  daemon    : POST /v2/images/{id}/import (web-download) → active, decompress + convert + hash + store,
              with the seconds per stage the task reports (result.stage_seconds)
  latency   : GET /v2/images/{id} p50/p99 while two such imports run at once
  memory    : the daemon's peak RSS (VmHWM)

The chain and the daemon alternate `--runs` times in the same run; medians are compared
(target: daemon <= 0.6x the chain). The load average is printed: the machine may be shared.

Usage: python tests/bench/bench_import.py [--data-mib 700] [--virtual-gib 2] [--runs 3] [--no-pair]
                                          [--source FILE.qcow2.gz] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_transfer import peak_rss_mib, start_daemon, start_nginx, stop_all

from tests.bench.summary import summary

BIN = Path(sys.executable).parent


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def make_image(work: Path, data_mib: int, virtual_gib: int) -> Path:
    raw = work / "src.raw"
    with open(raw, "wb") as fh:
        fh.truncate(virtual_gib << 30)
        # Random data in 4 MiB runs spread over the disk; the rest stays zero (sparse).
        runs = data_mib // 4
        stride = (virtual_gib << 30) // runs
        for i in range(runs):
            fh.seek(i * stride)
            fh.write(os.urandom(4 << 20))
    sh("qemu-img convert -f raw -O qcow2 %s %s/disk.qcow2" % (raw, work))
    raw.unlink()
    sh("gzip -1 -c %s/disk.qcow2 > %s/disk.qcow2.gz" % (work, work))
    (work / "disk.qcow2").unlink()
    return work / "disk.qcow2.gz"


def start_importer(work: Path, port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    """A daemon in work/state whose imports decompress and convert, allowed to fetch from
    127.0.0.1:port (the nginx serving the source)."""
    state = work / "state"
    state.mkdir()
    (state / "appliance.toml").write_text(
        '[import]\nplugins = ["image_decompression", "image_conversion"]\n'
        '[import.uri_filter]\nallowed_hosts = ["127.0.0.0/8"]\nallowed_ports = [%d]\n' % port
    )
    return start_daemon(state, state / "appliance.toml")


class Client:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(self, method: str, path: str, body: object | None = None, ctype: str = "application/json") -> object:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"X-Auth-Token": self.token, "Content-Type": ctype, "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def import_web(self, name: str, uri: str) -> str:
        image = self.call("POST", "/v2/images", {"name": name, "disk_format": "qcow2", "container_format": "bare"})
        self.call("POST", "/v2/images/%s/import" % image["id"], {"method": {"name": "web-download", "uri": uri}})  # type: ignore[index]
        return image["id"]  # type: ignore[index]

    def wait(self, image_id: str, timeout: float = 900) -> tuple[dict, dict]:
        """(the image once active, its import task)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            tasks = self.call("GET", "/v2/images/%s/tasks" % image_id)["tasks"]  # type: ignore[index]
            if tasks and tasks[0]["status"] not in ("pending", "processing"):
                if tasks[0]["status"] != "success":
                    raise SystemExit("import failed: %s" % tasks[0]["message"])
                return self.call("GET", "/v2/images/%s" % image_id), tasks[0]  # type: ignore[return-value]
            time.sleep(0.05)
        raise SystemExit("import timed out")


def run_chain(work: Path, uri: str) -> tuple[float, str, str]:
    chain = work / "chain"
    chain.mkdir()
    try:
        t = time.perf_counter()
        sh("curl -sS --fail -o %s/d.gz %s" % (chain, uri))
        sh("gzip -dc %s/d.gz > %s/d.qcow2" % (chain, chain))
        sh("qemu-img convert -f qcow2 -O raw %s/d.qcow2 %s/d.raw" % (chain, chain))
        sha = subprocess.run(["sha512sum", str(chain / "d.raw")], check=True, capture_output=True).stdout.split()[0]
        md5 = subprocess.run(["md5sum", str(chain / "d.raw")], check=True, capture_output=True).stdout.split()[0]
        return time.perf_counter() - t, sha.decode(), md5.decode()
    finally:
        shutil.rmtree(chain)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-mib", type=int, default=700)
    ap.add_argument("--virtual-gib", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-pair", action="store_true", help="skip the two concurrent imports")
    ap.add_argument("--source", type=Path, default=None, help="a .qcow2.gz to use instead of making one")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=args.workdir))
    nginx = daemon = None
    try:
        if args.source is not None:
            src = work / "disk.qcow2.gz"
            shutil.copy(args.source, src)
        else:
            src = make_image(work, args.data_mib, args.virtual_gib)
        print("image: %s, %.0f MiB; %s" % (src.name, src.stat().st_size / 2**20, load()))
        nginx, base = start_nginx(work, work)
        port = int(base.rsplit(":", 1)[1])
        uri = "%s/%s" % (base, src.name)

        daemon, url, token = start_importer(work, port)
        client = Client(url, token)

        chains: list[float] = []
        singles: list[float] = []
        stages: list[dict[str, float]] = []
        first: dict = {}
        for run in range(args.runs):
            naive, sha, md5 = run_chain(work, uri)
            chains.append(naive)
            t = time.perf_counter()
            image, task = client.wait(client.import_web("single-%d" % run, uri))
            singles.append(time.perf_counter() - t)
            stages.append(task["result"]["stage_seconds"])
            assert image["os_hash_value"] == sha and image["checksum"] == md5, "the daemon's hashes differ"
            assert image["disk_format"] == "raw" and image["size"] == image["virtual_size"]
            print(
                "run %d: chain %.1f s, daemon %.1f s (%.2fx); %s"
                % (run + 1, naive, singles[-1], singles[-1] / naive, load())
            )
            if run:
                client.call("DELETE", "/v2/images/%s" % image["id"])
            else:
                first = image

        naive, single = median(chains), median(singles)
        print()
        print("naive chain (curl; gzip -dc; qemu-img convert; sha512sum; md5sum), median: %6.1f s" % naive)
        print(
            "daemon web-download + decompress + convert + hash + store, median : %6.1f s   "
            "ratio %.2fx of the chain (target <= 0.60x)" % (single, single / naive)
        )
        summary("web-download qcow2.gz -> raw, median", single, naive, "s", "naive chain", "lower")
        print("seconds per stage (task result stage_seconds; overlapping stages each count in full):")
        for name in stages[0]:
            print("  %-28s %s" % (name, "  ".join("%6.2f" % s.get(name, 0.0) for s in stages)))

        if not args.no_pair:
            # Two imports at once, with image-show latency sampled all along.
            ids = [client.import_web("pair-%d" % i, uri) for i in range(2)]
            latencies = []
            t = time.perf_counter()
            pending = set(ids)
            while pending:
                s = time.perf_counter()
                client.call("GET", "/v2/images/%s" % first["id"])
                latencies.append(time.perf_counter() - s)
                for image_id in list(pending):
                    tasks = client.call("GET", "/v2/images/%s/tasks" % image_id)["tasks"]  # type: ignore[index]
                    if tasks and tasks[0]["status"] != "processing":
                        assert tasks[0]["status"] == "success", tasks[0]["message"]
                        pending.discard(image_id)
                time.sleep(0.02)
            pair = time.perf_counter() - t
            latencies.sort()
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
            print("two imports at once                                           : %6.1f s" % pair)
            print(
                "image-show latency during two imports: p50 %.1f ms, p99 %.1f ms over %d requests (target p99 < 20 ms)"
                % (p50, p99, len(latencies))
            )
        print("daemon peak RSS: %.1f MiB (target < 200 MiB); %s" % (peak_rss_mib(daemon.pid), load()))
    finally:
        stop_all((daemon, nginx), work)


if __name__ == "__main__":
    main()
