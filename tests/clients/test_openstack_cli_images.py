"""Images through `openstack image ...` (python-openstackclient) against a real daemon."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

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
