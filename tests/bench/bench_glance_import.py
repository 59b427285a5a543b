"""Web-download import beside OpenStack Glance 33 (a benchmark, not a test; needs `make glance`).

The same gzip'd qcow2 (bench_import.make_image: incompressible data), served by nginx, imported
with web-download until active, decompressed and converted to raw: by the daemon (plugins
image_decompression and image_conversion) and by a real Glance 33 (tests/glance_server.py, with
the same two plugins in its glance-image-import.conf and `[image_conversion] output_format = raw`),
alternating `--runs` times in the same run; medians are compared. Then two imports at once on each,
one after the other, with `GET /v2/images/{id}` sampled all along: p50 and p99.

Known: on the test Glance (uWSGI, one process, SQLite), one of two concurrent imports stayed
`processing` with nothing in staging in two runs out of two; the pair then ends at --pair-timeout
and prints no latency comparison (the single-import rows stand).

Usage: python tests/bench/bench_glance_import.py [--data-mib 700] [--virtual-gib 2] [--runs 3] [--no-pair]
                                                 [--pair-timeout 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_import import Client, load, make_image, median, start_importer
from bench_transfer import start_nginx, stop_all

from tests.bench.summary import summary
from tests.glance_server import GLANCE_VENV, running_glance

PLUGINS = "['image_decompression', 'image_conversion']"


def active(client: Client, image_id: str, timeout: float = 900) -> dict:
    """The image once active."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        image: dict = client.call("GET", "/v2/images/%s" % image_id)  # type: ignore[assignment]
        if image["status"] == "active":
            return image
        raise_if_failed(client, image_id)
        time.sleep(0.05)
    raise SystemExit("import of %s timed out" % image_id)


def timed_import(client: Client, name: str, uri: str) -> tuple[float, dict]:
    t = time.perf_counter()
    image = active(client, client.import_web(name, uri))
    return time.perf_counter() - t, image


class Stuck(Exception):
    """Two concurrent imports did not both finish within the pair's timeout."""


def show_latency_during_pair(client: Client, shown: str, uri: str, timeout: float) -> tuple[float, float, float]:
    """Two imports at once; `GET /v2/images/{shown}` every 20 ms until both are active:
    (seconds for the pair, p50 ms, p99 ms)."""
    ids = [client.import_web("pair-%d" % i, uri) for i in range(2)]
    latencies: list[float] = []
    t = time.perf_counter()
    pending = set(ids)
    while pending:
        if time.perf_counter() - t > timeout:
            raise Stuck("import of %s still not active after %.0f s" % (", ".join(sorted(pending)), timeout))
        s = time.perf_counter()
        client.call("GET", "/v2/images/%s" % shown)
        latencies.append(time.perf_counter() - s)
        for image_id in list(pending):
            image: dict = client.call("GET", "/v2/images/%s" % image_id)  # type: ignore[assignment]
            if image["status"] == "active":
                pending.discard(image_id)
            else:
                raise_if_failed(client, image_id)
        time.sleep(0.02)
    pair = time.perf_counter() - t
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return pair, latencies[len(latencies) // 2] * 1000, p99 * 1000


def raise_if_failed(client: Client, image_id: str) -> None:
    """End the benchmark with the import task's message if it failed (Glance puts a failed
    web-download back to queued)."""
    tasks = client.call("GET", "/v2/images/%s/tasks" % image_id)["tasks"]  # type: ignore[index]
    if tasks and tasks[0]["status"] == "failure":
        raise SystemExit("import of %s failed: %s" % (image_id, tasks[0]["message"]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-mib", type=int, default=700)
    ap.add_argument("--virtual-gib", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-pair", action="store_true", help="skip the two concurrent imports")
    ap.add_argument("--pair-timeout", type=float, default=600, help="seconds the two concurrent imports may take")
    args = ap.parse_args()
    if not (GLANCE_VENV / "bin" / "uwsgi").exists():
        print("OpenStack Glance is not installed (`make glance`): nothing to compare with")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-glance-import-"))
    nginx = daemon = None
    try:
        src = make_image(work, args.data_mib, args.virtual_gib)
        print("image: %s, %.0f MiB; %s" % (src.name, src.stat().st_size / 2**20, load()))
        nginx, base = start_nginx(work, work)
        port = int(base.rsplit(":", 1)[1])
        uri = "%s/%s" % (base, src.name)

        daemon, url, token = start_importer(work, port)
        ours = Client(url, token)

        root = work / "glance"
        root.mkdir()
        (root / "glance-image-import.conf").write_text(
            "[image_import_opts]\nimage_import_plugins = %s\n[image_conversion]\noutput_format = raw\n" % PLUGINS
        )
        options = {
            "import_filtering_opts.allowed_hosts": "[127.0.0.1]",  # Glance refuses loopback unless listed
            "import_filtering_opts.allowed_ports": "[%d]" % port,
        }
        with running_glance(root, **options) as glance:
            theirs = Client(glance.url, glance.token)
            seconds: dict[str, list[float]] = {"ours": [], "glance": []}
            first: dict[str, dict] = {}
            for run in range(args.runs):  # alternating, so both see the same machine state
                for name, client in (("ours", ours), ("glance", theirs)):
                    took, image = timed_import(client, "single-%d" % run, uri)
                    assert image["disk_format"] == "raw" and image["size"] == image["virtual_size"], image
                    seconds[name].append(took)
                    first.setdefault(name, image)
                assert first["ours"]["os_hash_value"] == first["glance"]["os_hash_value"], "the raw images differ"
                print(
                    "run %d: daemon %.1f s, Glance %.1f s; %s"
                    % (run + 1, seconds["ours"][-1], seconds["glance"][-1], load())
                )
            mine, glances = median(seconds["ours"]), median(seconds["glance"])
            print("web-download qcow2.gz -> raw until active, median: daemon %.1f s, Glance %.1f s" % (mine, glances))
            summary("web-download qcow2.gz -> raw, median", mine, glances, "s", "OpenStack Glance 33", "lower")

            if not args.no_pair:
                pairs: dict[str, tuple[float, float, float]] = {}
                for name, client in (("ours", ours), ("glance", theirs)):
                    try:
                        pairs[name] = show_latency_during_pair(client, first[name]["id"], uri, args.pair_timeout)
                    except Stuck as exc:
                        print("%-6s two imports at once: %s; no latency comparison; %s" % (name, exc, load()))
                        continue
                    print(
                        "%-6s two imports at once: %.1f s; image-show p50 %.1f ms, p99 %.1f ms; %s"
                        % (name, *pairs[name], load())
                    )
                for i, pct in ((1, "p50"), (2, "p99")):
                    if len(pairs) == 2:
                        summary(
                            "image-show %s while 2 imports run" % pct,
                            pairs["ours"][i],
                            pairs["glance"][i],
                            "ms",
                            "OpenStack Glance 33",
                            "lower",
                        )
    finally:
        stop_all((daemon, nginx), work)


if __name__ == "__main__":
    main()
