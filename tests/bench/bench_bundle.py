"""Bundle benchmark (a benchmark, not a test): export and import throughput for a 1 GiB image,
beside `zstd -T0` on the same data in the same run.

  export : `edge-appliance bundle export ID -o FILE --url HUB` from a hub daemon (HTTP on
           loopback, hashing MD5 + SHA-512 while compressing)
           baseline: `zstd -T0` (and `zstd -1 -T0`) compressing the image file; for context,
           `sha512sum` + `md5sum` of it (the hashing an export and an import must do)
  import : `edge-appliance bundle import FILE` into a second daemon over its Unix socket
           (decompress, inspect, hash, write, verify before activation)
           baseline: `zstd -d -T0` decompressing the bundle to a file
  memory : peak RSS of the export and import commands and of the importing daemon

Usage: python tests/bench/bench_bundle.py [--size-mib 1024] [--kind random|sparse|mixed] [--workdir DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_import import Client
from bench_transfer import peak_rss_mib, start_daemon

from tests.bench.summary import summary

BIN = Path(sys.executable).parent
MiB = 1 << 20


def make_image(path: Path, size_mib: int, kind: str) -> None:
    """random: incompressible (a compressed qcow2, an encrypted disk); sparse: 1 MiB of data
    every 64 MiB, zeros elsewhere; mixed: half random, half zeros, in 4 MiB runs."""
    with open(path, "wb") as fh:
        fh.truncate(size_mib * MiB)
        for i in range(0, size_mib, 4):
            if kind == "random" or (kind == "mixed" and (i // 4) % 2 == 0) or (kind == "sparse" and i % 64 == 0):
                fh.seek(i * MiB)
                fh.write(os.urandom(4 * MiB if kind != "sparse" else MiB))


def timed(cmd: list[str], stdout: object = subprocess.DEVNULL) -> tuple[float, float]:
    """Run a command; returns (seconds, peak RSS in MiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit("%s failed: %s" % (" ".join(cmd), proc.stderr.read().decode() if proc.stderr else ""))
    return elapsed, usage.ru_maxrss / 1024


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--kind", choices=("random", "sparse", "mixed"), default="random")
    p.add_argument("--runs", type=int, default=1, help="export/import rounds (the best is shown)")
    p.add_argument("--workdir", type=Path)
    args = p.parse_args()
    zstd = shutil.which("zstd")
    if zstd is None:
        raise SystemExit("zstd is needed for the baseline: run `make bench` (installs it)")
    work = Path(tempfile.mkdtemp(prefix="bench-bundle-", dir=args.workdir))
    procs = []
    try:
        image = work / "disk.raw"
        make_image(image, args.size_mib, args.kind)
        size = image.stat().st_size
        hub_state, edge_state = work / "hub", work / "edge"
        hub_state.mkdir()
        edge_state.mkdir()
        (work / "hub.toml").write_text('[site]\nname = "central"\nrole = "hub"\n')
        hub, hub_url, hub_token = start_daemon(hub_state, work / "hub.toml")
        procs.append(hub)
        client = Client(hub_url, hub_token)
        image_id = client.call(
            "POST", "/v2/images", {"name": "bench", "disk_format": "raw", "container_format": "bare"}
        )["id"]  # type: ignore[index]
        subprocess.run(
            [
                "curl",
                "-sS",
                "--fail",
                "-T",
                str(image),
                "-H",
                "X-Auth-Token: " + hub_token,
                "-H",
                "Content-Type: application/octet-stream",
                "%s/v2/images/%s/file" % (hub_url, image_id),
            ],
            check=True,
        )
        print("image: %d MiB, %s data" % (args.size_mib, args.kind))

        # Baselines first (they also warm the page cache for the image file).
        zstd3, _ = timed([zstd, "-q", "-f", "-T0", str(image), "-o", str(work / "plain.zst")])
        zstd1, _ = timed([zstd, "-q", "-f", "-1", "-T0", str(image), "-o", str(work / "plain1.zst")])
        hashes = timed(["sha512sum", str(image)])[0] + timed(["md5sum", str(image)])[0]

        bundle = work / "disk.bundle"
        exports, imports = [], []
        edge = None
        for _ in range(args.runs):
            bundle.unlink(missing_ok=True)
            exports.append(
                timed(
                    [
                        str(BIN / "edge-appliance"),
                        "bundle",
                        "export",
                        image_id,
                        "-o",
                        str(bundle),
                        "--url",
                        hub_url,
                        "--token=" + hub_token,
                    ]
                )
            )
            if edge is not None:
                edge.terminate()
                edge.wait(30)
                shutil.rmtree(edge_state)
                edge_state.mkdir()
            edge, _, _ = start_daemon(edge_state)
            procs.append(edge)
            imports.append(
                timed(
                    [
                        str(BIN / "edge-appliance"),
                        "bundle",
                        "import",
                        str(bundle),
                        "--socket",
                        str(edge_state / "appliance.sock"),
                    ]
                )
            )
        assert edge is not None
        daemon_rss = peak_rss_mib(edge.pid)
        unzstd, _ = timed([zstd, "-q", "-d", "-f", "-T0", str(bundle), "-o", str(work / "out.tar")])

        export_s, export_rss = min(exports)
        import_s, import_rss = min(imports)
        print(
            "bundle: %.1f MiB (zstd -T0: %.1f MiB, zstd -1 -T0: %.1f MiB)"
            % (
                bundle.stat().st_size / MiB,
                (work / "plain.zst").stat().st_size / MiB,
                (work / "plain1.zst").stat().st_size / MiB,
            )
        )
        print(
            "export (hub -> bundle file, hashed): %7.1f MB/s  %.2f s  peak RSS %.1f MiB"
            % (rate(size, export_s), export_s, export_rss)
        )
        print(
            "  zstd -T0 (level 3) compress:        %7.1f MB/s  %.2f s  -> export %.2fx"
            % (rate(size, zstd3), zstd3, zstd3 / export_s)
        )
        print(
            "  zstd -1 -T0 compress:               %7.1f MB/s  %.2f s  -> export %.2fx"
            % (rate(size, zstd1), zstd1, zstd1 / export_s)
        )
        print("  sha512sum + md5sum (context):       %7.1f MB/s  %.2f s" % (rate(size, hashes), hashes))
        print(
            "import (bundle -> edge, verified):    %7.1f MB/s  %.2f s  client peak RSS %.1f MiB, daemon %.1f MiB"
            % (rate(size, import_s), import_s, import_rss, daemon_rss)
        )
        print(
            "  zstd -d -T0 decompress:             %7.1f MB/s  %.2f s  -> import %.2fx"
            % (rate(size, unzstd), unzstd, unzstd / import_s)
        )
        summary("bundle export (hashed)", rate(size, export_s), rate(size, zstd3), "MB/s", "zstd -T0")
        summary("bundle import (verified)", rate(size, import_s), rate(size, unzstd), "MB/s", "zstd -d -T0")
        if args.runs > 1:
            print(
                "runs: export %s s; import %s s"
                % (", ".join("%.2f" % e[0] for e in exports), ", ".join("%.2f" % i[0] for i in imports))
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
