"""Upload/download benchmark for a 1 GiB random image (a benchmark, not a test).

Prints, for the same file in the same run:
  * upload throughput through `PUT /v2/images/{id}/file` (curl), beside the baseline of
    `sha512sum` + `md5sum` over the same file (the hashing any upload must do) and of MD5 and
    SHA-512 computed in two threads over the same buffers (the limit an upload is held to);
  * download throughput of `GET /v2/images/{id}/file` (curl), beside nginx (sendfile) serving
    the very file the daemon stored;
  * the daemon's peak RSS (VmHWM) after the upload and after the downloads;
  * where OpenStack Glance 33 is installed (`make glance`: .venv-glance), the same uploads and
    downloads against a real Glance (tests/glance_server.py: uWSGI, one filesystem store) on the
    same machine in the same run, printed beside ours with BENCH lines (ours / Glance's); its
    downloads come after one untimed read, which fills Glance's image cache.

Usage: python tests/bench/bench_transfer.py [--size-mib 1024] [--runs 3] [--workdir DIR] [--no-glance]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.summary import summary
from tests.glance_server import GLANCE_VENV, GlanceServer, running_glance

BIN = Path(sys.executable).parent


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def curl_speed(args: list[str]) -> float:
    """Run curl and return (bytes/s) as curl measured it, failing on an HTTP error."""
    out = run(["curl", "-sS", "--fail", "-w", "%{speed_upload} %{speed_download}", *args]).stdout.split()
    up, down = float(out[-2]), float(out[-1])
    return max(up, down)


def peak_rss_mib(pid: int) -> float:
    status = Path("/proc/%d/status" % pid).read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def start_daemon(state: Path, config: Path | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    log = open(state / "daemon.log", "wb")
    cmd = [str(BIN / "edge-appliance"), "serve", "--state-dir", str(state), "--host", "127.0.0.1", "--port", "0"]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (state / "daemon.log").read_text()
        m = re.search(r"serving the Image API on http://127\.0\.0\.1:(\d+)", text)
        if m and "ready;" in text:
            return proc, "http://127.0.0.1:%s" % m.group(1), (state / "admin-token").read_text().strip()
        if proc.poll() is not None:
            raise SystemExit("daemon exited:\n" + text)
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("daemon did not start")


def start_nginx(root: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        raise SystemExit("nginx is needed for the download baseline: run `make bench` (installs nginx-light)")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "nginx.conf"
    conf.write_text(
        """daemon off; worker_processes 1; %(user)s pid %(w)s/nginx.pid; error_log %(w)s/nginx.err;
events { worker_connections 64; }
http { access_log off; sendfile on; tcp_nopush on; client_body_temp_path %(w)s/cb;
  proxy_temp_path %(w)s/p; fastcgi_temp_path %(w)s/f; uwsgi_temp_path %(w)s/u; scgi_temp_path %(w)s/s;
  server { listen 127.0.0.1:%(p)d; root %(r)s; } }
"""
        % {"w": work, "p": port, "r": root, "user": "user root;" if os.getuid() == 0 else ""}
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(work)])
    time.sleep(0.5)
    return proc, "http://127.0.0.1:%d" % port


def stop_all(procs: Iterable[subprocess.Popen[bytes] | None], work: Path) -> None:
    """A benchmark's teardown: each process started (None: never started) stopped, its work
    directory removed."""
    for proc in procs:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    shutil.rmtree(work, ignore_errors=True)


def parallel_hash_rate(path: Path, runs: int) -> float:
    """Issue 19's limit for uploads: the bytes per second at which one thread computes MD5 while
    another computes SHA-512 over the same 4 MiB buffers (hashlib drops the GIL for them), with
    the data already in memory; median of `runs`."""
    chunks = []
    with open(path, "rb") as fh:
        while chunk := fh.read(4 << 20):
            chunks.append(chunk)
    size = sum(len(c) for c in chunks)

    def hash_all(algo: str) -> None:
        h = hashlib.new(algo)
        for c in chunks:
            h.update(c)

    rates = []
    for _ in range(runs):
        threads = [threading.Thread(target=hash_all, args=(algo,)) for algo in ("md5", "sha512")]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates.append(size / (time.perf_counter() - started))
    return statistics.median(rates)


def create_image(url: str, headers: list[str], body: dict[str, str]) -> str:
    """POST /v2/images with curl; the new image's id."""
    post = ["curl", "-sS", "--fail", *headers, "-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return str(json.loads(run([*post, url + "/v2/images"]).stdout)["id"])


def upload_runs(url: str, headers: list[str], image: Path, runs: int) -> tuple[list[float], str]:
    """`runs` uploads of `image` with curl -T, each to a new image (the previous one deleted);
    the speeds (bytes/s, as curl measured them) and the last image's id."""
    speeds: list[float] = []
    image_id = ""
    for _ in range(runs):
        if image_id:
            run(["curl", "-sS", "--fail", "-X", "DELETE", *headers, "%s/v2/images/%s" % (url, image_id)])
        image_id = create_image(url, headers, {"name": "bench", "disk_format": "raw", "container_format": "bare"})
        speeds.append(
            curl_speed(
                [
                    *headers,
                    "-H",
                    "Content-Type: application/octet-stream",
                    "-T",
                    str(image),
                    "%s/v2/images/%s/file" % (url, image_id),
                ]
            )
        )
    return speeds, image_id


def glance_if_installed(work: Path, wanted: bool) -> contextlib.AbstractContextManager[GlanceServer | None]:
    """A real Glance 33 for the comparison rows, or None where `make glance` has not installed it."""
    if not wanted:
        return contextlib.nullcontext(None)
    if not (GLANCE_VENV / "bin" / "uwsgi").exists():
        print("OpenStack Glance is not installed (`make glance`): no Glance rows")
        return contextlib.nullcontext(None)
    return running_glance(work / "glance")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--no-glance", action="store_true", help="leave OpenStack Glance out even if it is installed")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    try:
        image = work / "image.raw"
        with open(image, "wb") as fh:
            for _ in range(args.size_mib):
                fh.write(os.urandom(1 << 20))
        size = image.stat().st_size
        mb = size / 1e6
        print("image: %d MiB of random bytes, %d runs each, medians reported" % (args.size_mib, args.runs))

        timed(["cat", str(image)])  # warm the page cache for everyone
        base_up = statistics.median(
            timed(["sha512sum", str(image)]) + timed(["md5sum", str(image)]) for _ in range(args.runs)
        )

        limit_up = parallel_hash_rate(image, args.runs) / 1e6

        state = work / "state"
        state.mkdir()
        proc, url, token = start_daemon(state)
        auth = ["-H", "X-Auth-Token: " + token]
        up_speeds, image_id = upload_runs(url, auth, image, args.runs)
        rss_upload = peak_rss_mib(proc.pid)
        shown = json.loads(run(["curl", "-sS", "--fail", *auth, "%s/v2/images/%s" % (url, image_id)]).stdout)
        stored = state / "images" / image_id
        assert shown["status"] == "active" and stored.stat().st_size == size

        rss_all = 0.0
        glance_up: list[float] = []
        glance_down: list[float] = []
        glance_id = ""
        ngx, ngx_url = start_nginx(stored.parent, work)
        try:
            with glance_if_installed(work, not args.no_glance) as glance:
                if glance is not None:  # after ours, on the same file, daemon idle
                    glance_auth = ["-H", "X-Auth-Token: " + glance.token]
                    glance_up, glance_id = upload_runs(glance.url, glance_auth, image, args.runs)
                    # Untimed: Glance's first read of an image also fills its image cache.
                    glance_file = "%s/v2/images/%s/file" % (glance.url, glance_id)
                    curl_speed([*glance_auth, "-o", "/dev/null", glance_file])
                file_url = "%s/v2/images/%s/file" % (url, image_id)
                down, base_down = [], []
                for _ in range(args.runs):  # interleaved so all see the same machine state
                    down.append(curl_speed([*auth, "-o", "/dev/null", file_url]))
                    base_down.append(curl_speed(["-o", "/dev/null", "%s/%s" % (ngx_url, image_id)]))
                    if glance is not None:
                        glance_down.append(curl_speed([*glance_auth, "-o", "/dev/null", glance_file]))
                rss_all = peak_rss_mib(proc.pid)
        finally:
            ngx.terminate()
            ngx.wait(10)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

        # Medians: one lucky run on a shared VM should not decide a ratio.
        up = statistics.median(up_speeds) / 1e6
        dn, bdn = statistics.median(down) / 1e6, statistics.median(base_down) / 1e6
        print(
            "upload   : %8.1f MB/s   baseline sha512sum+md5sum: %8.1f MB/s   ratio %.2fx   (target >= 300 MB/s)"
            % (up, mb / base_up, up / (mb / base_up))
        )
        print(
            "download : %8.1f MB/s   baseline nginx sendfile  : %8.1f MB/s   ratio %.2fx   (target >= 0.90x)"
            % (dn, bdn, dn / bdn)
        )
        print(
            "peak RSS : %8.1f MiB after uploads, %.1f MiB after downloads   (target < 150 MiB)" % (rss_upload, rss_all)
        )
        print(
            "upload   : %8.1f MB/s   limit MD5 || SHA-512, 2 threads: %8.1f MB/s   ratio %.2fx   (target >= 0.80x)"
            % (up, limit_up, up / limit_up)
        )
        print("all upload runs (MB/s): %s" % ", ".join("%.1f" % (s / 1e6) for s in up_speeds))
        summary("upload (curl -T), median", up, mb / base_up, "MB/s", "sha512sum + md5sum")
        summary("upload (curl -T), median", up, limit_up, "MB/s", "MD5 || SHA-512 in two threads")
        summary("download, stored image, median", dn, bdn, "MB/s", "nginx sendfile")
        print(
            "all download runs (MB/s): daemon %s | nginx %s"
            % (", ".join("%.0f" % (s / 1e6) for s in down), ", ".join("%.0f" % (s / 1e6) for s in base_down))
        )
        if glance_up:
            gup, gdn = statistics.median(glance_up) / 1e6, statistics.median(glance_down) / 1e6
            print(
                "OpenStack Glance 33: upload %.1f MB/s (ours %.2fx; %.2fx of the MD5 || SHA-512 limit), "
                "download %.1f MB/s (ours %.2fx)" % (gup, up / gup, gup / limit_up, gdn, dn / gdn)
            )
            print(
                "all Glance runs (MB/s): upload %s | download %s"
                % (", ".join("%.1f" % (s / 1e6) for s in glance_up), ", ".join("%.0f" % (s / 1e6) for s in glance_down))
            )
            summary("upload (curl -T), median", up, gup, "MB/s", "OpenStack Glance 33")
            summary("download, stored image, median", dn, gdn, "MB/s", "OpenStack Glance 33")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
