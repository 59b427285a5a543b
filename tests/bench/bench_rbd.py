"""RBD store benchmark (a benchmark, not a test): the same random file uploaded to and downloaded
from the daemon's RBD store, beside `rbd import` / `rbd export` of that file into the same pool,
on a single-node Ceph cluster (tests/ceph.py: one monitor, one memstore OSD) in the same run.

  upload   : curl -T FILE PUT /v2/images/{id}/file (hash MD5 + SHA-512, write, snapshot, protect)
             vs rbd import FILE images/base
  download : curl GET /v2/images/{id}/file > /dev/null   vs   rbd export images/base - > /dev/null
  web-download qcow2.gz -> raw into RBD (the file's bytes as a gzip'd qcow2, served by nginx on
             loopback): POST /v2/images/{id}/import web-download, stores [ceph], plugins
             image_decompression + image_conversion (raw), timed from the request to `active`
             vs the naive chain: curl URL | gzip -dc > f.qcow2; qemu-img convert -O raw f.qcow2
             f.raw; rbd import f.raw images/chain, and the chain qemu-img convert -O raw f.qcow2
             rbd:images/chain2 (qemu writing into the pool itself)
Random data: nothing compresses and no zero run is skipped (the worst case for both).

Usage: python tests/bench/bench_rbd.py [--mib 1024] [--web-mib 1024] [--rounds 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transfer import start_daemon, start_nginx

from tests.bench.summary import summary
from tests.ceph import POOL, CephCluster
from tests.conftest import write_toml


def timed(argv: list[str], stdout: int | None = subprocess.DEVNULL) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=stdout)
    return time.perf_counter() - started


def timed_shell(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True)
    return time.perf_counter() - started


def curl_json(auth: list[str], url: str, body: dict[str, object] | None = None) -> dict[str, object]:
    argv = ["curl", "-sS", "-f", *auth]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    argv.append(url)
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out)) if out.strip() else {}


def web_download(auth: list[str], url: str, source: str) -> float:
    """Seconds from the web-download request to the image active in the RBD store."""
    image = curl_json(auth, url + "/v2/images", {"disk_format": "qcow2", "container_format": "bare", "name": "web"})
    image_url = "%s/v2/images/%s" % (url, image["id"])
    started = time.perf_counter()
    curl_json(auth, image_url + "/import", {"method": {"name": "web-download", "uri": source}, "stores": ["ceph"]})
    while True:
        shown = curl_json(auth, image_url)
        if shown.get("os_glance_failed_import"):
            raise SystemExit("web-download failed: %s" % shown)
        if shown["status"] == "active" and not shown.get("os_glance_importing_to_stores"):
            break
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    assert shown["disk_format"] == "raw" and shown["stores"] == "ceph", shown
    for _ in range(200):  # the task's end (its figures logged) before the delete
        tasks = curl_json(auth, image_url + "/tasks").get("tasks") or []
        if tasks and all(dict(t)["status"] != "processing" for t in tasks):  # type: ignore[call-overload]
            break
        time.sleep(0.05)
    subprocess.run(["curl", "-sS", "-f", *auth, "-X", "DELETE", image_url], check=True)
    return seconds


def naive_chain(source: str, work: Path, rbd: list[str]) -> float:
    """curl | gzip -dc > f.qcow2; qemu-img convert -O raw; rbd import: seconds, files removed."""
    qcow, raw = work / "chain.qcow2", work / "chain.raw"
    started = time.perf_counter()
    steps = [
        ("curl|gzip -dc", "curl -sS -f %s | gzip -dc > %s" % (source, qcow)),
        ("qemu-img convert", ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), str(raw)]),
        ("rbd import", [*rbd, "import", str(raw), "%s/chain" % POOL]),
    ]
    took = []
    for name, argv in steps:
        took.append("%s %.1f" % (name, timed(argv) if isinstance(argv, list) else timed_shell(argv)))
    seconds = time.perf_counter() - started
    print("  naive chain steps (s): %s" % ", ".join(took))
    qcow.unlink()
    raw.unlink()
    subprocess.run([*rbd, "rm", "%s/chain" % POOL], check=True)
    return seconds


def qemu_img_chain(source: str, work: Path, rbd: list[str], conf: Path, keyring: Path) -> float:
    """The issue's chain: curl | gzip -dc > f.qcow2; qemu-img convert -O raw f.qcow2 rbd:pool/x
    (qemu's own RBD driver writes into the pool, no raw file between): seconds, all removed."""
    qcow = work / "chain.qcow2"
    target = "rbd:%s/chain2:conf=%s:keyring=%s" % (POOL, conf, keyring)
    started = time.perf_counter()
    took = [
        "curl|gzip -dc %.1f" % timed_shell("curl -sS -f %s | gzip -dc > %s" % (source, qcow)),
        "qemu-img convert -> rbd %.1f" % timed(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow), target]),
    ]
    seconds = time.perf_counter() - started
    print("  qemu-img chain steps (s): %s" % ", ".join(took))
    qcow.unlink()
    subprocess.run([*rbd, "rm", "%s/chain2" % POOL], check=True)
    return seconds


def write_random(path: Path, mib: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024, help="size of the random file (default 1 GiB)")
    ap.add_argument("--web-mib", type=int, default=1024, help="size of the web-download disk (0: skip)")
    ap.add_argument("--rounds", type=int, default=2, help="best of N rounds")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-rbd-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "random.raw"
    write_random(src, args.mib)
    size = src.stat().st_size
    www = work / "www"
    www.mkdir()
    if args.web_mib:  # the web-download source: random bytes as a qcow2, gzip'd
        disk = work / "web.raw"
        write_random(disk, args.web_mib)
        subprocess.run(
            ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(www / "disk.qcow2")], check=True
        )
        disk.unlink()
        subprocess.run(["gzip", "-1", str(www / "disk.qcow2")], check=True)
    nginx, web_url = start_nginx(www, work)
    source = web_url + "/disk.qcow2.gz"
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
            {
                "stores": {"default": "ceph", "ceph": cluster.store_config(), "local": {"path": "images"}},
                "import": {
                    "plugins": ["image_decompression", "image_conversion"],
                    "output_format": "raw",
                    "staging_min_free_bytes": 0,
                    "uri_filter": {"allowed_hosts": ["127.0.0.1"], "allowed_ports": [int(web_url.rsplit(":", 1)[1])]},
                },
            },
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
            if args.web_mib:
                keep("web-download", web_download(auth, url, source))
                stages = re.findall(r"seconds per stage: (\{.*\})", (state / "daemon.log").read_text())
                if stages:  # the import's own breakdown, where the daemon logs one
                    print("  web-download stages (s): %s" % stages[-1])
                keep("naive chain", naive_chain(source, work, rbd))
                keep("qemu-img chain", qemu_img_chain(source, work, rbd, cluster.conf, cluster.admin_keyring))

        mb = size / 1e6
        print("file: %d MiB of random data, best of %d rounds" % (args.mib, args.rounds))
        for ours, base in (("upload", "rbd import"), ("download", "rbd export")):
            print(
                "%-8s daemon %7.1f MB/s   %-10s %7.1f MB/s   ratio %.2f"
                % (ours, mb / best[ours], base, mb / best[base], best[base] / best[ours])
            )
            summary("RBD " + ours, mb / best[ours], mb / best[base], "MB/s", base)
        if args.web_mib:
            gz = (www / "disk.qcow2.gz").stat().st_size
            print(
                "web-download qcow2.gz (%d MiB raw, %.0f MB gzip'd) -> raw in RBD: daemon %.1f s, naive chain %.1f s "
                "(curl|gzip -dc, qemu-img convert, rbd import), ratio %.2f (raw MB/s %.1f vs %.1f)"
                % (
                    args.web_mib,
                    gz / 1e6,
                    best["web-download"],
                    best["naive chain"],
                    best["naive chain"] / best["web-download"],
                    args.web_mib * (1 << 20) / 1e6 / best["web-download"],
                    args.web_mib * (1 << 20) / 1e6 / best["naive chain"],
                )
            )
            print(
                "  against curl|gzip -dc; qemu-img convert -O raw f rbd:%s/x: %.1f s, ratio %.2f"
                % (POOL, best["qemu-img chain"], best["qemu-img chain"] / best["web-download"])
            )
            summary(
                "web-download qcow2.gz -> raw in RBD",
                best["web-download"],
                best["naive chain"],
                "s",
                "naive chain",
                "lower",
            )
            summary(
                "web-download qcow2.gz -> raw in RBD (qemu-img into the pool)",
                best["web-download"],
                best["qemu-img chain"],
                "s",
                "qemu-img chain",
                "lower",
            )
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(30)
        nginx.terminate()
        nginx.wait(30)
        cluster.shutdown()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
