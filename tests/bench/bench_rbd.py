"""RBD store benchmark (a benchmark, not a test): the same random file uploaded to and downloaded
from the daemon's RBD store, beside `rbd import` / `rbd export` of that file into the same pool,
on a single-node Ceph cluster (tests/ceph.py: one monitor, one memstore OSD) in the same run.

  upload   : curl -T FILE PUT /v2/images/{id}/file (hash MD5 + SHA-512, write, snapshot, protect)
             vs rbd import FILE images/base
  download : curl GET /v2/images/{id}/file > /dev/null   vs   rbd export images/base - > /dev/null

Usage: python tests/bench/bench_rbd.py [--mib 1024] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import start_daemon

from tests.ceph import POOL, CephCluster
from tests.conftest import write_toml


def timed(argv: list[str], stdout: int | None = subprocess.DEVNULL) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=stdout)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="size of the random file (default 1 GiB)")
    ap.add_argument("--rounds", type=int, default=2, help="best of N rounds")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-rbd-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "random.raw"
    with open(src, "wb") as fh:
        for _ in range(args.mib):
            fh.write(os.urandom(1 << 20))
    size = src.stat().st_size
    cluster = CephCluster(work / "ceph")
    daemon = None
    try:
        t = time.monotonic()
        cluster.create()
        print("ceph cluster up in %.1f s" % (time.monotonic() - t))
        state = work / "site"
        state.mkdir()
        config = write_toml(
            work / "site.toml",
            {"stores": {"default": "ceph", "ceph": cluster.store_config(), "local": {"path": "images"}}},
        )
        daemon, url, token = start_daemon(state, config)
        auth = ["-H", "X-Auth-Token: %s" % token]
        best: dict[str, float] = {}

        def keep(name: str, seconds: float) -> None:
            best[name] = min(best.get(name, seconds), seconds)

        for _ in range(args.rounds):
            created = subprocess.run(
                ["curl", "-sS", "-f", *auth, "-H", "Content-Type: application/json", "-d",
                 '{"disk_format": "raw", "container_format": "bare", "name": "bench"}', url + "/v2/images"],
                check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            image_id = created.split('"id": "', 1)[1].split('"', 1)[0]
            file_url = "%s/v2/images/%s/file" % (url, image_id)
            keep(
                "upload",
                timed(
                    [
                        "curl",
                        "-sS",
                        "-f",
                        *auth,
                        "-H",
                        "Content-Type: application/octet-stream",
                        "-T",
                        str(src),
                        file_url,
                    ]
                ),
            )
            with open(os.devnull, "wb") as null:
                keep("download", timed(["curl", "-sS", "-f", *auth, file_url], stdout=null.fileno()))
            subprocess.run(
                ["curl", "-sS", "-f", *auth, "-X", "DELETE", "%s/v2/images/%s" % (url, image_id)], check=True
            )

            rbd = ["rbd", "--no-progress", "-c", str(cluster.conf), "--keyring", str(cluster.admin_keyring)]
            keep("rbd import", timed([*rbd, "import", str(src), "%s/base" % POOL]))
            with open(os.devnull, "wb") as null:
                keep("rbd export", timed([*rbd, "export", "%s/base" % POOL, "-"], stdout=null.fileno()))
            cluster.rbd("rm", "%s/base" % POOL)

        mb = size / 1e6
        print("file: %d MiB of random data, best of %d rounds" % (args.mib, args.rounds))
        for ours, base in (("upload", "rbd import"), ("download", "rbd export")):
            print(
                "%-8s daemon %7.1f MB/s   %-10s %7.1f MB/s   ratio %.2f"
                % (ours, mb / best[ours], base, mb / best[base], best[base] / best[ours])
            )
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        cluster.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
