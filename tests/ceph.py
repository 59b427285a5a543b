"""A real single-node Ceph cluster on loopback for the RBD store tests: one monitor, one OSD on
memstore, one manager (without it the pool statistics read as zeros), a pool `images` of size 1,
and a `client.glance` user with the caps Glance's RBD guide gives. Everything lives in one tmp
dir with its own ceph.conf and keyrings; `stop()`/`start()` take the whole cluster away and back.
Installed by `make test` (the `ceph` target)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POOL = "images"
USER = "glance"
# The OSD's memory-backed store: big enough for the 1 GiB benchmark file and a copy of it.
MEMSTORE_BYTES = 6 << 30


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class CephCluster:
    root: Path
    fsid: str = field(default_factory=lambda: str(uuid.uuid4()))
    port: int = field(default_factory=_free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def admin_keyring(self) -> Path:
        return self.root / "keyring"

    @property
    def keyring(self) -> Path:
        """client.glance's keyring (what the appliance is configured with)."""
        return self.root / "glance.keyring"

    def store_config(self, name: str = "ceph", **kw: object) -> dict[str, object]:
        """The [stores.NAME] table of an rbd store on this cluster."""
        return {
            "type": "rbd",
            "pool": POOL,
            "user": USER,
            "conf_file": str(self.conf),
            "keyring": str(self.keyring),
        } | kw

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """A Ceph CLI (ceph, rbd, rados) as client.admin against this cluster."""
        result = subprocess.run(
            [argv[0], "-c", str(self.conf), "--keyring", str(self.admin_keyring), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError("%s failed (%d): %s" % (" ".join(argv), result.returncode, result.stderr))
        return result.stdout

    def rbd(self, *argv: str, check: bool = True) -> str:
        return self.run("rbd", *argv, check=check)

    def images(self) -> list[str]:
        return sorted(json.loads(self.rbd("ls", "-p", POOL, "--format", "json")))

    def snaps(self, image: str) -> list[dict[str, object]]:
        return list(json.loads(self.rbd("snap", "ls", "%s/%s" % (POOL, image), "--format", "json")))

    # -- life cycle ----------------------------------------------------------------------

    def create(self) -> None:
        (self.root / "run").mkdir(parents=True)
        (self.root / "log").mkdir()
        self.conf.write_text(
            "[global]\n"
            "fsid = %(fsid)s\n"
            "mon host = v2:127.0.0.1:%(port)d\n"
            "public addr = 127.0.0.1\n"
            "ms bind msgr1 = false\n"
            "auth cluster required = cephx\nauth service required = cephx\nauth client required = cephx\n"
            "run dir = %(root)s/run\n"
            "admin socket = %(root)s/run/$name.asok\n"
            "log file = %(root)s/log/$name.log\n"
            "mon data = %(root)s/mon\n"
            "osd data = %(root)s/osd\n"
            "mgr data = %(root)s/mgr\n"
            "keyring = %(root)s/keyring\n"
            "osd objectstore = memstore\n"
            "memstore device bytes = %(mem)d\n"
            "osd pool default size = 1\nosd pool default min size = 1\n"
            "mon allow pool size one = true\nmon allow pool delete = true\n"
            "mon warn on pool no redundancy = false\n"
            "osd crush chooseleaf type = 0\n"
            "mon osd down out interval = 0\n"
            "osd max object name len = 256\nosd max object namespace len = 64\n"
            "mgr initial modules = \n"
            % {"fsid": self.fsid, "port": self.port, "root": self.root, "mem": MEMSTORE_BYTES}
        )
        tool = ["ceph-authtool", str(self.admin_keyring)]
        subprocess.run([*tool, "--create-keyring", "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"], check=True)
        caps = ["--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"]
        subprocess.run([*tool, "--gen-key", "-n", "client.admin", *caps], check=True)
        monmap = self.root / "monmap"
        subprocess.run(
            [
                "monmaptool",
                "--create",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                "[v2:127.0.0.1:%d]" % self.port,
                str(monmap),
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(monmap)],
            check=True,
            capture_output=True,
        )
        self._spawn("mon", ["ceph-mon", "-i", "a"])
        osd_uuid = str(uuid.uuid4())
        (self.root / "osd").mkdir()
        osd_keyring = self.root / "osd" / "keyring"
        subprocess.run(["ceph-authtool", str(osd_keyring), "--create-keyring", "--gen-key", "-n", "osd.0"], check=True)
        self.run(
            "ceph",
            "auth",
            "add",
            "osd.0",
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "mgr",
            "allow profile osd",
            "-i",
            str(osd_keyring),
        )
        self.run("ceph", "osd", "new", osd_uuid, "0")
        subprocess.run(
            [
                "ceph-osd",
                "-c",
                str(self.conf),
                "-i",
                "0",
                "--mkfs",
                "--osd-uuid",
                osd_uuid,
                "--keyring",
                str(osd_keyring),
            ],
            check=True,
            capture_output=True,
        )
        (self.root / "mgr").mkdir()
        self.run(
            "ceph",
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "-o",
            str(self.root / "mgr" / "keyring"),
        )
        self.run(
            "ceph", "auth", "get-or-create", "client.%s" % USER,
            "mon", "profile rbd", "osd", "profile rbd pool=%s" % POOL, "mgr", "profile rbd pool=%s" % POOL,
            "-o", str(self.keyring),
        )  # fmt: skip
        self._start_osd_mgr()
        self.run("ceph", "osd", "pool", "create", POOL, "8")
        self.run("ceph", "osd", "pool", "set", POOL, "size", "1", "--yes-i-really-mean-it")
        self.rbd("pool", "init", POOL)
        self.wait_healthy()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / ("%s.out" % name), "ab")
        self.procs[name] = subprocess.Popen([argv[0], "-f", "-c", str(self.conf), *argv[1:]], stdout=log, stderr=log)
        log.close()

    def _start_osd_mgr(self) -> None:
        self._spawn("osd", ["ceph-osd", "-i", "0", "--keyring", str(self.root / "osd" / "keyring")])
        self._spawn("mgr", ["ceph-mgr", "-i", "x", "--keyring", str(self.root / "mgr" / "keyring")])

    def wait_healthy(self, timeout: float = 120) -> None:
        """Until the OSD is up, the pool's PGs are active and the manager reports capacity."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError("ceph %s exited (%s); see %s/log" % (name, proc.returncode, self.root))
            try:
                status = json.loads(self.run("ceph", "status", "--format", "json", timeout=20))
                df = json.loads(self.run("ceph", "df", "--format", "json", timeout=20))
            except (AssertionError, subprocess.TimeoutExpired, json.JSONDecodeError) as exc:
                last = str(exc)
            else:
                pgs = status["pgmap"]
                active = sum(s["count"] for s in pgs.get("pgs_by_state", []) if s["state_name"] == "active+clean")
                last = "osds up %s, pgs %s/%s, total %s" % (
                    status["osdmap"].get("num_up_osds"),
                    active,
                    pgs.get("num_pgs"),
                    df["stats"]["total_bytes"],
                )
                if (
                    status["osdmap"].get("num_up_osds") == 1
                    and active == pgs.get("num_pgs", -1) > 0
                    and df["stats"]["total_bytes"] > 0
                ):
                    return
            time.sleep(0.5)
        raise AssertionError("ceph cluster not healthy after %ds: %s" % (timeout, last))

    def stop(self) -> None:
        """The whole cluster goes silent (every daemon frozen with SIGSTOP: to a client, exactly a
        cluster that went away; a memstore OSD cannot be restarted with its data)."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGSTOP)

    def start(self) -> None:
        """The cluster comes back (SIGCONT) and is healthy again."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)
        self.wait_healthy()

    def shutdown(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


@pytest.fixture(scope="session")
def ceph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    root = tmp_path_factory.mktemp("ceph")
    for tool in ("ceph-mon", "ceph-osd", "ceph-mgr", "rbd"):
        assert shutil.which(tool), "%s is missing: run `make ceph` (make test installs it)" % tool
    cluster = CephCluster(root)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.shutdown()
