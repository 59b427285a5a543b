"""The ovf_process import plugin (Glance's OVF processing) on a real daemon: real OVA tars made
here (tarfile, an OVF descriptor with CIM_ProcessorAllocationSettingData elements, disks made
by qemu-img), imported with the real `glance` CLI by glance-direct and web-download, and
hostile OVAs that must each fail their task with the reason and leave nothing behind."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_glance_import import (
    Glance,
    WebRoot,
    created_id,
    download,
    wait_import,
    web,  # noqa: F401  (the fixture)
)
from tests.conftest import VENV_BIN, Daemon, start_daemon, write_toml
from tests.waiting import wait_for

pytestmark = pytest.mark.clients

ADMIN, MEMBER = "ova-admin-token", "ova-member-token"
PASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ProcessorAllocationSettingData"
CPU = {
    "ProcessorArchitecture": "x86",
    "InstructionSet": "x86:64",
    "InstructionSetExtensionName": "x86:SSE2 x86:SSE3 x86:SSSE3",
    "ResourceType": "3",  # not listed in ovf-metadata.json: not recorded
}
LISTED = ["ProcessorArchitecture", "InstructionSet", "InstructionSetExtensionName"]


def ovf(disks: list[tuple[str, str]], cpu: dict[str, str] = CPU, prolog: str = "", body: str = "") -> bytes:
    """An OVF descriptor: References and DiskSection for `disks` (file id, href), a virtual
    CPU's rasd Item and a CIM_ProcessorAllocationSettingData Item."""
    files = "".join('<File ovf:id="%s" ovf:href="%s"/>' % d for d in disks)
    disk_elements = "".join(
        '<Disk ovf:diskId="vmdisk%d" ovf:fileRef="%s" ovf:capacity="4" ovf:capacityAllocationUnits="byte * 2^20"/>'
        % (i, file_id)
        for i, (file_id, _) in enumerate(disks)
    )
    pasd = "".join("<pasd:%s> %s </pasd:%s>" % (k, v, k) for k, v in cpu.items())
    return (
        """<?xml version="1.0" encoding="UTF-8"?>%s
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:pasd="%s">
  <References>%s</References>
  <DiskSection><Info>Virtual disks</Info>%s</DiskSection>
  <VirtualSystem ovf:id="edge-vm">
    <Info>A virtual machine</Info>%s
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <Item>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>1</rasd:VirtualQuantity>
      </Item>
      <Item>%s</Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
        % (prolog, PASD, files, disk_elements, body, pasd)
    ).encode()


def ova(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    """A real tar: (name, data) members, or TarInfo headers as given (links, devices)."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                tar.addfile(member)
            else:
                info = tarfile.TarInfo(member[0])
                info.size = len(member[1])
                tar.addfile(info, io.BytesIO(member[1]))
    return path


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def qemu(qemu_img: str, *args: str) -> None:
    subprocess.run([qemu_img, *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def disks(tmp_path: Path, qemu_img: str) -> dict[str, Path]:
    """A raw disk with data, and that disk as qcow2 and as VMDK, made by qemu-img."""
    raw = tmp_path / "disk.raw"
    qemu(qemu_img, "create", "-f", "raw", str(raw), "4M")
    with open(raw, "r+b") as fh:
        fh.write(b"OVA-DISK" * 8192)  # 64 KiB of data at the start, zeros after
    made = {"raw": raw}
    for fmt in ("qcow2", "vmdk"):
        made[fmt] = tmp_path / ("disk." + fmt)
        qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, str(raw), str(made[fmt]))
    return made


class Site:
    """A daemon with ovf_process then image_conversion (to qcow2), an admin and a member token."""

    def __init__(self, daemon: Daemon, root: WebRoot) -> None:
        self.daemon = daemon
        self.web = root
        self.glance = _Glance(daemon)

    def call(self, method: str, path: str, body: Any = None, token: str = ADMIN, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        ctype = "application/octet-stream" if raw is not None else "application/json"
        req = urllib.request.Request(
            self.daemon.url + path,
            data=data,
            method=method,
            headers={"X-Auth-Token": token, "Content-Type": ctype, "Accept": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read()
        return json.loads(text) if text else None

    def import_ova(self, data: bytes, method: str = "glance-direct", token: str = ADMIN) -> str:
        """Create a qcow2/ova image, import `data` into it, wait: the image id."""
        image = self.call(
            "POST", "/v2/images", {"name": "ova", "disk_format": "qcow2", "container_format": "ova"}, token
        )
        if method == "glance-direct":
            self.call("PUT", "/v2/images/%s/stage" % image["id"], raw=data, token=token)
            body: dict[str, Any] = {"method": {"name": "glance-direct"}}
        else:
            name = "hostile-%s.ova" % image["id"]
            body = {"method": {"name": "web-download", "uri": self.web.add(name, data)}}
        self.call("POST", "/v2/images/%s/import" % image["id"], body, token)
        deadline = time.monotonic() + 45
        while not [t for t in self.tasks(image["id"]) if t["status"] in ("success", "failure")]:
            assert time.monotonic() < deadline, "the import did not finish"
            time.sleep(0.05)
        return str(image["id"])

    def tasks(self, image_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", "/v2/images/%s/tasks" % image_id)["tasks"])

    def scratch(self, image_id: str) -> list[Path]:
        """Files the image left in the staging area or the imports' scratch space."""
        staged = self.daemon.state_dir / "staging" / "staged" / image_id
        work = self.daemon.state_dir / "staging" / "work"
        return ([staged] if staged.exists() else []) + (sorted(work.iterdir()) if work.exists() else [])

    def leftovers(self, image_id: str) -> list[Path]:
        """... and in the store."""
        stored = self.daemon.state_dir / "images" / image_id
        return ([stored] if stored.exists() else []) + self.scratch(image_id)


class _Glance(Glance):
    def run(self, *args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return super().run(*args, token=token or ADMIN, timeout=timeout)


def site_config(tmp_path: Path, root: WebRoot, metadata: dict[str, Any] | None) -> tuple[Path, Path]:
    state = tmp_path / "site"
    state.mkdir()
    (state / "admin-token").write_text(ADMIN)
    (state / "admin-token").chmod(0o600)
    if metadata is not None:
        (state / "ovf-metadata.json").write_text(json.dumps(metadata))
    config = write_toml(
        tmp_path / "ova.toml",
        {
            "import": {
                "plugins": ["ovf_process", "image_conversion"],
                "output_format": "qcow2",
                "uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [root.port]},
            },
            "auth": {
                "tokens": [
                    # The admin's token in the file test helpers read (Daemon.token).
                    {
                        "token_file": "admin-token",
                        "user": "admin",
                        "project": "admin",
                        "roles": ["admin", "member", "reader"],
                    },
                    {"token": MEMBER, "user": "alice", "project": "alpha", "roles": ["member", "reader"]},
                ]
            },
        },
    )
    return state, config


@pytest.fixture
def site(tmp_path: Path, web: WebRoot) -> Iterator[Site]:  # noqa: F811
    state, config = site_config(tmp_path, web, {"cim_pasd": LISTED})
    daemon = start_daemon(state, config)
    try:
        yield Site(daemon, web)
    finally:
        daemon.proc.kill()
        daemon.proc.wait(10)


def test_glance_direct_ova_via_cli(site: Site, disks: dict[str, Path], tmp_path: Path) -> None:
    qcow2 = disks["qcow2"].read_bytes()
    source = ova(tmp_path / "vm.ova", [("vm.ovf", ovf([("file1", "disk1.qcow2")])), ("disk1.qcow2", qcow2)])
    glance = site.glance
    out = glance.ok(
        "image-create-via-import",
        "--import-method",
        "glance-direct",
        "--file",
        str(source),
        "--name",
        "appliance",
        "--disk-format",
        "qcow2",
        "--container-format",
        "ova",
    )
    image_id = created_id(out)
    shown, tasks = wait_import(glance, image_id)
    assert shown["status"] == "active", tasks
    # The disk is the image; the container is gone, the disk format is the one declared.
    assert (shown["container_format"], shown["disk_format"]) == ("bare", "qcow2")
    assert shown["size"] == str(len(qcow2))
    assert download(glance, image_id, tmp_path) == qcow2
    # The listed CIM_ProcessorAllocationSettingData elements, stripped; nothing else.
    for name in LISTED:
        assert shown["cim_pasd_" + name] == CPU[name]
    assert "cim_pasd_ResourceType" not in shown
    assert site.scratch(image_id) == []


def test_web_download_ova_with_vmdk_converted_via_cli(
    site: Site, disks: dict[str, Path], tmp_path: Path, qemu_img: str
) -> None:
    # A disk name past tar's 100 characters: tarfile writes a pax header for it.
    long_name = "edge-appliance-" + "x" * 100 + ".vmdk"
    source = ova(
        tmp_path / "vmdk.ova",
        [
            ("vm.ovf", ovf([("f1", long_name)])),
            ("vm.mf", b"SHA256(vm.ovf)= 00\n"),
            (long_name, disks["vmdk"].read_bytes()),
        ],
    )
    url = site.web.add("vmdk.ova", source.read_bytes())
    image_id = created_id(
        site.glance.ok(
            "image-create-via-import",
            "--import-method",
            "web-download",
            "--uri",
            url,
            "--name",
            "from-web",
            "--disk-format",
            "vmdk",
            "--container-format",
            "ova",
        )
    )
    shown, tasks = wait_import(site.glance, image_id)
    assert shown["status"] == "active", tasks
    # image_conversion ran on the extracted VMDK, not on the tar.
    assert (shown["container_format"], shown["disk_format"]) == ("bare", "qcow2")
    assert shown["cim_pasd_InstructionSet"] == "x86:64"
    got = tmp_path / "got.qcow2"
    got.write_bytes(download(site.glance, image_id, tmp_path))
    qemu(qemu_img, "convert", "-f", "qcow2", "-O", "raw", str(got), str(tmp_path / "got.raw"))
    assert (tmp_path / "got.raw").read_bytes() == disks["raw"].read_bytes()


ENTITY_BOMB = '<!DOCTYPE Envelope [<!ENTITY a "%s">%s]>' % (
    "a" * 64,
    "".join('<!ENTITY %s "%s">' % (chr(98 + i), ("&%s;" % chr(97 + i)) * 16) for i in range(8)),
)


def hostile(disk: bytes) -> dict[str, tuple[list[Any], str]]:
    """name → (tar members, what the task's message must say)."""
    one = ovf([("file1", "disk1.qcow2")])
    return {
        "two disks": (
            [
                ("vm.ovf", ovf([("file1", "disk1.qcow2"), ("file2", "disk2.qcow2")])),
                ("disk1.qcow2", disk),
                ("disk2.qcow2", disk),
            ],
            "OVF descriptor lists 2 disks; OVA packages containing multiple disks are not supported",
        ),
        "no descriptor": ([("disk1.qcow2", disk)], "no OVF descriptor (*.ovf) in the tar archive"),
        "entity bomb": (
            [
                ("vm.ovf", ovf([("file1", "disk1.qcow2")], prolog=ENTITY_BOMB, body="<Annotation>&i;</Annotation>")),
                ("disk1.qcow2", disk),
            ],
            "has a document type declaration (<!DOCTYPE Envelope>); DTDs are refused",
        ),
        "undeclared entity": (
            [("vm.ovf", ovf([("file1", "disk1.qcow2")], body="<Annotation>&xxe;</Annotation>")), ("disk1.qcow2", disk)],
            "'vm.ovf' is not well-formed XML: undefined entity",
        ),
        "dot-dot member": (
            [("vm.ovf", one), ("../x", b"escape"), ("disk1.qcow2", disk)],
            "tar member '../x' has '..' in its path",
        ),
        "symlink disk": (
            [("vm.ovf", one), special("disk1.qcow2", tarfile.SYMTYPE, "/etc/passwd")],
            "tar member 'disk1.qcow2' is a symbolic link; only regular files are accepted",
        ),
        "hard link": (
            [("vm.ovf", one), ("disk0", disk), special("disk1.qcow2", tarfile.LNKTYPE, "disk0")],
            "tar member 'disk1.qcow2' is a hard link",
        ),
        "device": ([("vm.ovf", one), special("disk1.qcow2", tarfile.CHRTYPE)], "is a character device"),
        "absolute name": ([("vm.ovf", one), ("/etc/cron.d/x", disk)], "has an absolute path"),
        "missing disk": ([("vm.ovf", one), ("other.qcow2", disk)], "holds no disk file 'disk1.qcow2'"),
        "two descriptors": ([("a.ovf", one), ("b.ovf", one), ("disk1.qcow2", disk)], "has 2 OVF descriptors"),
    }


def test_hostile_ovas_fail_with_their_reason(site: Site, disks: dict[str, Path], tmp_path: Path) -> None:
    disk = disks["qcow2"].read_bytes()
    cases = hostile(disk)
    for index, (name, (members, reason)) in enumerate(cases.items()):
        data = ova(tmp_path / ("hostile-%d.ova" % index), members).read_bytes()
        # Every other case by web-download: both methods run the plugin on the whole data.
        method = "web-download" if index % 2 else "glance-direct"
        image_id = site.import_ova(data, method)
        [task] = site.tasks(image_id)
        assert task["status"] == "failure", name
        assert reason in task["message"], (name, task["message"])
        shown = site.daemon.show(image_id)
        assert shown["status"] == "queued", name
        assert not [k for k in shown if k.startswith("cim_pasd_")], name
        assert site.leftovers(image_id) == [], name

    # Not a tar at all, and the CLI shows the task's message.
    image_id = site.import_ova(disk)
    [task] = site.tasks(image_id)
    assert "the data is not a tar archive" in task["message"]
    assert "the data is not a tar archive" in site.glance.ok("--verbose", "image-tasks", image_id)


def test_ova_extract_is_limited_to_admin(site: Site, disks: dict[str, Path], tmp_path: Path) -> None:
    good = ova(
        tmp_path / "vm.ova", [("vm.ovf", ovf([("file1", "disk1.qcow2")])), ("disk1.qcow2", disks["qcow2"].read_bytes())]
    )
    image_id = site.import_ova(good.read_bytes(), token=MEMBER)
    [task] = site.tasks(image_id)
    assert (task["status"], task["message"]) == ("failure", "OVA extract is limited to admin")
    assert site.leftovers(image_id) == []
    # A bare image of the same member imports as before: the plugin leaves it alone.
    image = site.call("POST", "/v2/images", {"name": "b", "disk_format": "qcow2", "container_format": "bare"}, MEMBER)
    site.call("PUT", "/v2/images/%s/stage" % image["id"], raw=disks["qcow2"].read_bytes(), token=MEMBER)
    site.call("POST", "/v2/images/%s/import" % image["id"], {"method": {"name": "glance-direct"}}, MEMBER)
    deadline = time.monotonic() + 45
    while site.daemon.show(image["id"])["status"] != "active":
        assert time.monotonic() < deadline, site.tasks(image["id"])
        time.sleep(0.05)


def check_config(tmp_path: Path, plugins: list[str], metadata_file: str | None, content: str | None) -> str:
    """`edge-appliance check-config` on a config with these plugins and metadata file."""
    if content is not None:
        (tmp_path / (metadata_file or "ovf-metadata.json")).write_text(content)
    imp: dict[str, Any] = {"plugins": plugins}
    if metadata_file is not None:
        imp["ovf_metadata_file"] = metadata_file
    config = write_toml(tmp_path / "check.toml", {"import": imp})
    result = subprocess.run(
        [str(VENV_BIN / "edge-appliance"), "check-config", str(config)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return ("ok " if result.returncode == 0 else "refused ") + result.stdout + result.stderr


@pytest.mark.parametrize(
    "plugins,metadata_file,content,expected",
    [
        (["ovf_process"], None, None, "ok"),  # Glance's default file may be absent
        (["ovf_process"], "conf/ovf.json", None, "import.ovf_metadata_file: {tmp}/conf/ovf.json does not exist"),
        (["ovf_process"], None, "{not json", "is not valid JSON"),
        (["ovf_process"], None, '{"cim_pasd": "InstructionSet"}', "cim_pasd must be a list of element names"),
        (["ovf_process"], None, '{"cim_pasd": ["a b"]}', "'a b' not an XML element name"),
        (["ovf_process"], None, '{"cim_pasd": [], "other": 1}', "unknown key 'other'"),
        (["image_conversion", "ovf_process"], None, None, "ovf_process must come before image_conversion"),
    ],
)
def test_check_config_refuses_bad_ovf_settings(
    tmp_path: Path, plugins: list[str], metadata_file: str | None, content: str | None, expected: str
) -> None:
    out = check_config(tmp_path, plugins, metadata_file, content)
    assert (
        out.startswith("ok")
        if expected == "ok"
        else (out.startswith("refused") and expected.replace("{tmp}", str(tmp_path)) in out)
    ), out


def test_no_metadata_file_extracts_the_disk_only(
    tmp_path: Path,
    web: WebRoot,  # noqa: F811
    disks: dict[str, Path],
) -> None:
    state, config = site_config(tmp_path, web, None)
    daemon = start_daemon(state, config)
    try:
        site = Site(daemon, web)
        good = ova(
            tmp_path / "vm.ova",
            [("vm.ovf", ovf([("file1", "disk1.qcow2")])), ("disk1.qcow2", disks["qcow2"].read_bytes())],
        )
        image_id = site.import_ova(good.read_bytes())
        shown = daemon.show(image_id)
        assert (shown["status"], shown["container_format"]) == ("active", "bare"), site.tasks(image_id)
        assert not [k for k in shown if k.startswith("cim_pasd_")]
        assert 'OVF properties config file "%s/ovf-metadata.json" was not found' % state in daemon.log.read_text()
    finally:
        daemon.proc.kill()
        daemon.proc.wait(10)


def test_glance_image_import_conf_names_ovf_process(tmp_path: Path) -> None:
    """Glance's glance-image-import.conf: image_import_plugins takes ovf_process, in an order
    that extracts before converting."""
    ini = tmp_path / "glance-image-import.conf"
    config = write_toml(tmp_path / "glance.toml", {"import": {"glance_conf": str(ini)}})

    def check(plugins: str) -> subprocess.CompletedProcess[str]:
        ini.write_text("[image_import_opts]\nimage_import_plugins = %s\n" % plugins)
        return subprocess.run(
            [str(VENV_BIN / "edge-appliance"), "check-config", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert check("['ovf_process', 'image_conversion']").returncode == 0
    refused = check("['image_conversion', 'ovf_process']")
    assert refused.returncode == 2 and "ovf_process must come before image_conversion" in refused.stderr


def test_delete_during_extraction_leaves_nothing(site: Site, tmp_path: Path) -> None:
    """The image is deleted while its disk is being copied out of the OVA (the extraction's
    file seen in the import's scratch space), right after the import starts, and once it is
    active: each time the image goes and no file is left, repeated."""
    disk = tmp_path / "big.raw"
    with open(disk, "wb") as fh:
        fh.truncate(128 << 20)
    source = tmp_path / "big.ova"
    with tarfile.open(source, "w") as tar:
        tar.addfile(_info("vm.ovf", ovf([("file1", "big.raw")])), io.BytesIO(ovf([("file1", "big.raw")])))
        tar.add(str(disk), arcname="big.raw")
    data = source.read_bytes()
    work = site.daemon.state_dir / "staging" / "work"
    seen_mid_extraction = 0
    for round_ in range(6):
        image = site.call("POST", "/v2/images", {"name": "race", "disk_format": "raw", "container_format": "ova"})
        image_id = image["id"]
        site.call("PUT", "/v2/images/%s/stage" % image_id, raw=data)
        site.call("POST", "/v2/images/%s/import" % image_id, {"method": {"name": "glance-direct"}})
        if round_ % 2 == 0:  # mid-extraction (three tries: one must land)
            deadline = time.monotonic() + 20
            while not list(work.glob("*/ova-disk-*")) and time.monotonic() < deadline:
                if site.daemon.show(image_id)["status"] == "active":
                    break
                time.sleep(0.002)
            seen_mid_extraction += bool(list(work.glob("*/ova-disk-*")))
        elif round_ != 1:  # once active (round 1: right after the import started)
            wait_for(lambda i=image_id: site.daemon.show(i)["status"] == "active", "active", timeout=45)
        site.call("DELETE", "/v2/images/%s" % image_id)
        wait_for(lambda i=image_id: site.leftovers(i) == [], "no file left of %s" % image_id, timeout=30)
        with pytest.raises(urllib.error.HTTPError) as gone:
            site.call("GET", "/v2/images/%s" % image_id)
        gone.value.close()
        assert gone.value.code == 404
    assert seen_mid_extraction, "no deletion landed while a disk was being extracted"


def _info(name: str, data: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info
