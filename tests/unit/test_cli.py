"""The edge-appliance command line, run as the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import write_toml

CLI = str(Path(sys.executable).parent / "edge-appliance")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=60)


def test_check_uri_refuses_metadata_address() -> None:
    result = run("check-uri", "http://169.254.169.254/latest/meta-data")
    assert result.returncode == 1
    assert result.stdout.startswith("refuse: ")
    assert "metadata" in result.stdout


def test_check_uri_follows_the_documented_port_rule(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "a.toml",
        {
            "import": {
                "uri_filter": {
                    "allowed_schemes": ["http", "https"],
                    "allowed_hosts": ["203.0.113.0/24"],
                    "allowed_ports": [443],
                }
            }
        },
    )
    # No port named: the port rule does not apply (Glance's documented example).
    assert run("check-uri", "--config", str(config), "http://203.0.113.5/r").stdout.strip() == "accept"
    refused = run("check-uri", "--config", str(config), "http://203.0.113.5:80/r")
    assert refused.returncode == 1 and "port 80" in refused.stdout


def test_ftp_in_allowed_schemes_is_refused_up_front(tmp_path: Path) -> None:
    """Glance's filter names ftp, but nothing here downloads it: the config is refused with the
    reason rather than accepting ftp URLs that every import would then fail on."""
    config = write_toml(tmp_path / "ftp.toml", {"import": {"uri_filter": {"allowed_schemes": ["http", "ftp"]}}})
    result = run("check-uri", "--config", str(config), "ftp://203.0.113.5/r")
    assert result.returncode == 2
    assert "import.uri_filter.allowed_schemes: 'ftp' cannot be downloaded (only http, https)" in result.stderr


def test_check_uri_with_a_bad_config_exits_2(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "bad.toml", {"import": {"uri_filter": {"allowed_ports": ["eighty"]}}})
    result = run("check-uri", "--config", str(config), "http://203.0.113.5/")
    assert result.returncode == 2
    assert "import.uri_filter.allowed_ports" in result.stderr


def test_glance_import_conf_is_read(tmp_path: Path) -> None:
    ini = tmp_path / "glance-image-import.conf"
    ini.write_text(
        "[image_import_opts]\nimage_import_plugins = ['image_decompression', 'image_conversion']\n"
        "[image_conversion]\noutput_format = qcow2\n"
        "[inject_metadata_properties]\ninject = owner_site:edge-1,tier:gold\nignore_user_roles = admin\n"
        "[import_filtering_opts]\nallowed_ports = [8080]\nallowed_hosts = 203.0.113.0/24\n"
    )
    from appliance.config import load_config

    config = write_toml(tmp_path / "c.toml", {"import": {"glance_conf": str(ini)}})
    imports = load_config(config, tmp_path).imports
    assert imports.plugins == ("image_decompression", "image_conversion")
    assert imports.output_format == "qcow2"
    assert dict(imports.inject) == {"owner_site": "edge-1", "tier": "gold"}
    assert imports.uri_filter.allowed_ports == (8080,)
    assert imports.uri_filter.allowed_hosts == ("203.0.113.0/24",)
    assert run("check-uri", "--config", str(config), "http://203.0.113.7:8080/x").stdout.strip() == "accept"
    assert run("check-uri", "--config", str(config), "http://203.0.113.7/x").returncode == 0  # no port named
    assert run("check-uri", "--config", str(config), "http://203.0.113.7:80/x").returncode == 1
