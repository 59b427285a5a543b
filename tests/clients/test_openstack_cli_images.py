"""Images through `openstack image ...` (python-openstackclient) against a real daemon."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.clients.test_glance_cli import Glance, as_dict
from tests.clients.test_metadefs_cli import openstack
from tests.conftest import Daemon

pytestmark = [pytest.mark.clients, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]


def test_create_without_disk_format_names_the_format_to_pass(daemon: Daemon, qemu_img: str, tmp_path: Path) -> None:
    """The client sends disk_format=raw when none is given: a qcow2 file is still refused, and
    the message says which --disk-format would keep it."""
    disk = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    refused = openstack(daemon, "image", "create", "--file", str(disk), "no-format", token=daemon.token)
    assert refused.returncode != 0
    assert "image data is qcow2, not raw as claimed (disk_format); to keep it as qcow2, pass --disk-format qcow2" in (
        refused.stderr
    ), refused.stderr
    named = openstack(
        daemon,
        "image",
        "create",
        "--file",
        str(disk),
        "--disk-format",
        "qcow2",
        "-f",
        "json",
        "qcow2-named",
        token=daemon.token,
    )
    assert named.returncode == 0, named.stderr
    assert json.loads(named.stdout)["disk_format"] == "qcow2"


def _ova(tmp_path: Path, qemu_img: str, members: list[str]) -> Path:
    """A tar of the named members: *.ovf a descriptor, *.vmdk a streamOptimized disk."""
    vmdk = tmp_path / "disk1.vmdk"
    subprocess.run(
        [qemu_img, "create", "-q", "-f", "vmdk", "-o", "subformat=streamOptimized", str(vmdk), "8M"], check=True
    )
    ovf = tmp_path / "appliance.ovf"
    ovf.write_text('<?xml version="1.0"?><Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"/>')
    path = tmp_path / ("%s.ova" % "-".join(members))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name in members:
            tar.add(ovf if name.endswith(".ovf") else vmdk, arcname=name)
    return path


def test_ova_container_is_checked_as_a_tar_with_a_descriptor(daemon: Daemon, qemu_img: str, tmp_path: Path) -> None:
    """Glance inspects the disk format only in bare containers: an OVA (a tar) declared with its
    VMDK's disk format goes active; one without an OVF descriptor, or not a tar, is refused."""
    glance = Glance(daemon)
    base = ("image-create", "--disk-format", "vmdk", "--container-format", "ova", "--file")
    good = _ova(tmp_path, qemu_img, ["appliance.ovf", "disk1.vmdk"])
    created = as_dict(glance.ok(*base, str(good), "--name", "ova"))
    assert created["status"] == "active" and created["size"] == str(good.stat().st_size)
    assert created["virtual_size"] == "Not available"  # the tar is not the disk
    no_descriptor = _ova(tmp_path, qemu_img, ["disk1.vmdk"])
    assert "image data is not an OVA: no OVF descriptor (*.ovf) in a tar archive" in glance.fails(
        *base, str(no_descriptor), "--name", "no-ovf"
    )
    plain = tmp_path / "disk1.vmdk"
    assert "container_format ova needs a tar archive with an OVF descriptor" in glance.fails(
        *base, str(plain), "--name", "not-a-tar"
    )
