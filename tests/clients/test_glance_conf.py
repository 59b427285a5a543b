"""A Glance glance-api.conf given as [import] glance_conf: the options with an equivalent here
take effect in a real daemon (seen through the `glance` CLI); a file with options that have none
is refused by check-config and by the daemon, with those options named."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clients.test_glance_cli import Glance, as_dict
from tests.conftest import Daemon, write_toml

pytestmark = pytest.mark.clients

CLI = str(Path(sys.executable).parent / "edge-appliance")

GLANCE_API_CONF = """\
[DEFAULT]
show_multiple_locations = True
show_image_direct_url = True
image_tag_quota = 2

[image_format]
disk_formats = raw,qcow2
"""


def test_glance_api_conf_options_take_effect(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> None:
    conf = tmp_path / "glance-api.conf"
    conf.write_text(GLANCE_API_CONF)
    daemon = daemon_factory("site", write_toml(tmp_path / "site.toml", {"import": {"glance_conf": str(conf)}}))
    glance = Glance(daemon)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"RAWDISK\0" + os.urandom(4096))
    created = as_dict(
        glance.ok("image-create", "--disk-format", "raw", "--container-format", "bare", "--file", str(disk))
    )
    shown = as_dict(glance.ok("image-show", "--max-column-width", "4096", created["id"]))
    assert shown["direct_url"].startswith("file://") and shown["direct_url"] in shown["locations"]
    glance.ok("image-tag-update", created["id"], "a")
    glance.ok("image-tag-update", created["id"], "b")
    assert "Maximum: 2" in glance.fails("image-tag-update", created["id"], "c")
    assert "vmdk" in glance.fails("image-create", "--disk-format", "vmdk", "--container-format", "bare")


def test_glance_api_conf_with_options_without_equivalent_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "glance-api.conf"
    conf.write_text(
        GLANCE_API_CONF.replace("[DEFAULT]\n", "[DEFAULT]\nbind_port = 9292\n")
        + "\n[glance_store]\nstores = file,http\n"
    )
    config = write_toml(tmp_path / "site.toml", {"import": {"glance_conf": str(conf)}})
    result = subprocess.run([CLI, "check-config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sets options this appliance has no equivalent for: [image_format] disk_formats" not in result.stderr
    assert "has no equivalent for: [DEFAULT] bind_port, [glance_store] stores;" in result.stderr, result.stderr
    server = subprocess.run(
        [CLI, "serve", "--config", str(config), "--state-dir", str(tmp_path / "state")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert server.returncode != 0 and "[glance_store] stores" in server.stderr
