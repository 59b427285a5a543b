"""OVA benchmark (a benchmark, not a test): what the ovf_process plugin costs a glance-direct
import, against the same disk imported bare by the same daemon, and against `tar -xOf`.

  ova      : a tar of an OVF descriptor and a raw disk of --mib MiB (random data), staged, then
             POST /import → active: read the tar headers, parse the descriptor, copy the disk
             out, inspect, hash, store (the task's stage_seconds say where the time went)
  bare     : the same disk staged and imported as container_format bare (no extraction)
  tar -xOf : GNU tar writing the member to a file, then sha512sum (the shell's way)

Runs alternate in the same daemon (--runs each); medians and the ratios are printed with the
load average: the machine may be shared.

Usage: python tests/bench/bench_ova.py [--mib 512] [--runs 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_import import Client, load, median
from bench_transfer import start_daemon

from tests.bench.summary import summary

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:pasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ProcessorAllocationSettingData">
  <References><File ovf:id="f1" ovf:href="disk.raw"/></References>
  <DiskSection><Info>disk</Info><Disk ovf:diskId="d1" ovf:fileRef="f1" ovf:capacity="1"/></DiskSection>
  <VirtualSystem ovf:id="vm"><Info>vm</Info><VirtualHardwareSection><Info>hw</Info>
    <Item><pasd:InstructionSet>x86:64</pasd:InstructionSet></Item>
  </VirtualHardwareSection></VirtualSystem>
</Envelope>
"""


def stage_and_import(client: Client, path: Path, container: str) -> tuple[float, dict[str, float]]:
    """Seconds from POST /import to active (the staging upload is not counted), and the
    task's seconds per stage."""
    image = client.call("POST", "/v2/images", {"name": container, "disk_format": "raw", "container_format": container})
    image_id = image["id"]  # type: ignore[index]
    with open(path, "rb") as fh:
        req = urllib.request.Request(
            "%s/v2/images/%s/stage" % (client.url, image_id),
            data=fh,
            method="PUT",
            headers={
                "X-Auth-Token": client.token,
                "Content-Type": "application/octet-stream",
                "Content-Length": str(path.stat().st_size),
            },
        )
        urllib.request.urlopen(req, timeout=600).close()
    started = time.perf_counter()
    client.call("POST", "/v2/images/%s/import" % image_id, {"method": {"name": "glance-direct"}})
    shown, task = client.wait(image_id)
    seconds = time.perf_counter() - started
    if container == "ova" and shown.get("cim_pasd_InstructionSet") != "x86:64":
        raise SystemExit("the OVA's property was not recorded: %s" % shown)
    client.call("DELETE", "/v2/images/%s" % image_id)
    return seconds, dict(task.get("result", {}).get("stage_seconds", {}))


def tar_extract(ova: Path, work: Path) -> float:
    out = work / "tar-out.raw"
    started = time.perf_counter()
    with open(out, "wb") as fh:
        subprocess.run(["tar", "-xOf", str(ova), "disk.raw"], check=True, stdout=fh)
    subprocess.run(["sha512sum", str(out)], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    out.unlink()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ova-", dir=args.workdir))
    daemon = None
    try:
        disk = work / "disk.raw"
        with open(disk, "wb") as fh:
            for _ in range(args.mib):
                fh.write(os.urandom(1 << 20))
        ova = work / "vm.ova"
        with tarfile.open(ova, "w") as tar:
            info = tarfile.TarInfo("vm.ovf")
            info.size = len(OVF.encode())
            tar.addfile(info, io.BytesIO(OVF.encode()))
            tar.add(str(disk), arcname="disk.raw")
        state = work / "state"
        state.mkdir()
        (state / "ovf-metadata.json").write_text('{"cim_pasd": ["InstructionSet"]}')
        (state / "appliance.toml").write_text('[import]\nplugins = ["ovf_process"]\n')
        daemon, url, token = start_daemon(state, state / "appliance.toml")
        client = Client(url, token)
        print("disk: %d MiB of random data; %s" % (args.mib, load()))
        times: dict[str, list[float]] = {"ova": [], "bare": [], "tar -xOf": []}
        stages: list[dict[str, float]] = []
        for _ in range(args.runs):
            seconds, stage = stage_and_import(client, ova, "ova")
            times["ova"].append(seconds)
            stages.append(stage)
            times["bare"].append(stage_and_import(client, disk, "bare")[0])
            times["tar -xOf"].append(tar_extract(ova, work))
        base = median(times["bare"])
        for name, values in times.items():
            m = median(values)
            print(
                "%-9s median %6.2f s  %7.1f MiB/s  ratio to bare %.2f  (runs: %s)"
                % (name, m, args.mib / m, m / base, ", ".join("%.2f" % v for v in values))
            )
        print("ova stage seconds (last run): %s" % stages[-1])
        summary("ova import (median)", median(times["ova"]), base, "s", "bare import", "lower")
        print("after: %s" % load())
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
