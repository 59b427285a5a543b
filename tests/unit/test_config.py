"""Config: the documented file equals the embedded defaults; every error names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from appliance.config import (
    ApiConfig,
    Config,
    StoreConfig,
    TokenConfig,
    load_config,
    parse_config,
)
from appliance.errors import ConfigError
from tests.conftest import write_toml

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FILE = ROOT / "config" / "appliance.toml"
CLI = Path(sys.executable).parent / "edge-appliance"


def error_of(data: dict[str, Any], tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data, tmp_path)
    return str(info.value)


def test_documented_file_is_exactly_the_defaults(tmp_path: Path) -> None:
    from_file = load_config(DEFAULT_FILE, tmp_path)
    embedded = load_config(None, tmp_path)
    assert from_file == embedded
    assert embedded == Config(state_dir=tmp_path.absolute())
    # a few values spelled out, so the comparison cannot pass vacuously
    assert embedded.api.port == 9292
    assert embedded.api.unix_socket == "appliance.sock"
    assert embedded.api.max_upload_bytes == 1 << 40
    assert embedded.stores.default == "local"
    assert embedded.stores.stores == (StoreConfig(name="local", path="images", description="Local filesystem store"),)
    assert embedded.auth.tokens == ()
    assert "raw" in embedded.formats.disk_formats and "bare" in embedded.formats.container_formats


def test_documented_file_names_every_key(tmp_path: Path) -> None:
    text = DEFAULT_FILE.read_text()
    for field in ApiConfig.__dataclass_fields__:
        assert "\n%s = " % field in text, field


def test_empty_file_is_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_config(empty, tmp_path) == load_config(None, tmp_path)


def test_paths_resolve_against_state_dir(tmp_path: Path) -> None:
    config = load_config(None, tmp_path / "state")
    assert config.state_dir == (tmp_path / "state").absolute()
    assert config.path("images") == (tmp_path / "state" / "images").absolute()
    assert config.path("/srv/images") == Path("/srv/images")


def test_cli_overrides_host_and_port(tmp_path: Path) -> None:
    config = load_config(None, tmp_path, host="0.0.0.0", port=0)
    assert config.api.host == "0.0.0.0" and config.api.port == 0
    assert load_config(None, tmp_path, host=None, port=None).api.port == 9292


def test_custom_stores_and_tokens(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        {
            "site": {"name": "hub-1", "role": "hub"},
            "stores": {
                "default": "fast",
                "fast": {"path": "/srv/fast", "thin_provisioning": True},
                "slow": {"path": "slow", "description": "Slow disks"},
            },
            "auth": {
                "tokens": [
                    {"token": "t1", "user": "nova", "project": "service"},
                    {"token_file": "nova.token", "user": "u", "project": "p", "roles": ["admin"]},
                ]
            },
        },
    )
    config = load_config(path, tmp_path)
    assert config.site.role == "hub"
    assert config.stores.default == "fast"
    assert config.stores.stores == (
        StoreConfig(name="fast", path="/srv/fast", thin_provisioning=True),
        StoreConfig(name="slow", path="slow", description="Slow disks"),
    )
    assert config.auth.tokens == (
        TokenConfig(token="t1", user="nova", project="service"),
        TokenConfig(token_file="nova.token", user="u", project="p", roles=("admin",)),
    )


def test_rbd_store(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "c.toml",
        {
            "stores": {
                "default": "ceph",
                "ceph": {"type": "rbd", "pool": "glance-images", "keyring": "/etc/ceph/k", "chunk_size": 4},
                "local": {"path": "images"},
            }
        },
    )
    config = load_config(path, tmp_path)
    assert config.stores.default == "ceph"
    assert config.stores.stores == (
        StoreConfig(
            name="ceph", type="rbd", pool="glance-images", user="glance", conf_file="/etc/ceph/ceph.conf",
            keyring="/etc/ceph/k", chunk_size=4,
        ),
        StoreConfig(name="local", path="images"),
    )  # fmt: skip


# -- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ({"bogus": {}}, ("bogus", "top level")),
        ({"api": {"bogus_key": 1}}, ("bogus_key", "api")),
        ({"site": {"nmae": "x"}}, ("nmae", "site")),
        ({"stores": {"local": {"path": "images", "thin": True}}}, ("thin", "stores.local")),
        ({"auth": {"admin_token": "x"}}, ("admin_token", "auth")),
        (
            {"auth": {"tokens": [{"token": "t", "user": "u", "project": "p", "role": "admin"}]}},
            ("role", "auth.tokens[0]"),
        ),
        ({"logging": {"file": "x"}}, ("file", "logging")),
    ],
)
def test_unknown_keys_are_named(tmp_path: Path, data: dict[str, Any], names: tuple[str, ...]) -> None:
    message = error_of(data, tmp_path)
    for name in names:
        assert name in message


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[api]\nport = 9393\nlisten = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="listen"):
        load_config(path, tmp_path)


# -- wrong types --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"api": {"port": "9292"}}, "api.port"),
        ({"api": {"port": True}}, "api.port"),
        ({"api": {"max_upload_bytes": 1.5}}, "api.max_upload_bytes"),
        ({"api": {"host": 127}}, "api.host"),
        ({"site": {"name": ["edge"]}}, "site.name"),
        ({"stores": {"local": {"path": 5}}}, "stores.local.path"),
        ({"stores": {"local": {"path": "x", "thin_provisioning": "yes"}}}, "stores.local.thin_provisioning"),
        ({"stores": {"default": 1}}, "stores.default"),
        ({"stores": {"local": "images"}}, "stores.local"),
        ({"formats": {"disk_formats": "raw"}}, "formats.disk_formats"),
        ({"formats": {"disk_formats": ["raw", 1]}}, "formats.disk_formats"),
        ({"auth": {"tokens": {"token": "t"}}}, "auth.tokens"),
        ({"auth": {"tokens": [{"token": "t", "user": "u", "project": "p", "roles": "admin"}]}}, "auth.tokens[0].roles"),
        ({"api": "not a table"}, "api"),
        ({"catalog": {"path": False}}, "catalog.path"),
    ],
)
def test_wrong_types_name_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    assert key in error_of(data, tmp_path)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"api": {"port": 70000}}, "api.port"),
        ({"api": {"max_upload_bytes": 0}}, "api.max_upload_bytes"),
        ({"api": {"default_page_size": 2000}}, "api.default_page_size"),
        ({"api": {"default_page_size": 0}}, "api.default_page_size"),
        ({"site": {"name": ""}}, "site.name"),
        ({"logging": {"level": "verbose"}}, "logging.level"),
        ({"formats": {"disk_formats": ["raw", "floppy"]}}, "floppy"),
        ({"formats": {"container_formats": []}}, "formats.container_formats"),
        ({"stores": {"bad name": {"path": "x"}}}, "stores.bad name"),
        ({"stores": {"local": {"description": "no path"}}}, "stores.local.path"),
        ({"stores": {"ceph": {"type": "s3"}}}, "stores.ceph.type"),
        ({"stores": {"ceph": {"type": "rbd", "chunk_size": 3}}}, "stores.ceph.chunk_size"),
        ({"stores": {"ceph": {"type": "rbd", "path": "images"}}}, "'path'"),
        ({"stores": {"ceph": {"type": "rbd", "pool": 5}}}, "stores.ceph.pool"),
        ({"cache": {"store": "nowhere"}}, "cache.store"),
        ({"stores": {"default": "local", "local": {"path": "images"}}, "cache": {"store": "local"}}, "cache.store"),
        ({"auth": {"tokens": [{"user": "u", "project": "p"}]}}, "auth.tokens[0]"),
        ({"auth": {"tokens": [{"token": "t", "token_file": "f", "user": "u", "project": "p"}]}}, "auth.tokens[0]"),
        ({"auth": {"tokens": [{"token": "t", "project": "p"}]}}, "auth.tokens[0]"),
        ({"keystone": {"auth_url": "keystone:5000"}}, "keystone.auth_url"),
        ({"keystone": {"auth_url": "http://k/v3"}}, "keystone: auth_url needs the appliance's own credentials"),
        ({"keystone": {"interface": "private"}}, "keystone.interface"),
        ({"keystone": {"token_cache_time": 0}}, "keystone.token_cache_time"),
        ({"keystone": {"application_credential_id": "x"}}, "application_credential_secret"),
        ({"hub": {"keystone": True}}, "hub.keystone"),
        ({"hub": {"keystone": True, "token": "t"}}, "hub: keystone = true"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    assert key in error_of(data, tmp_path)


def test_invalid_role(tmp_path: Path) -> None:
    message = error_of({"site": {"role": "spoke"}}, tmp_path)
    assert "site.role" in message and "spoke" in message
    assert "edge" in message and "hub" in message


def test_default_store_must_be_configured(tmp_path: Path) -> None:
    message = error_of({"stores": {"default": "fast", "local": {"path": "images"}}}, tmp_path)
    assert "stores.default" in message and "fast" in message and "local" in message
    # the built-in store counts when no store table is given
    message = error_of({"stores": {"default": "fast"}}, tmp_path)
    assert "stores.default" in message


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[api\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", tmp_path)


# -- the CLI ------------------------------------------------------------------------------


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CLI), "check-config", str(path)], capture_output=True, text=True, timeout=60)


def test_check_config_cli_accepts_default_file() -> None:
    result = check_config(DEFAULT_FILE)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_cli_rejects_bad_file(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", {"site": {"role": "spoke"}})
    result = check_config(bad)
    assert result.returncode == 2
    assert "config error" in result.stderr and "site.role" in result.stderr
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[stores.local]\npath = "images"\nsize = 5\n')
    result = check_config(unknown)
    assert result.returncode == 2
    assert "size" in result.stderr and "stores.local" in result.stderr
    result = check_config(tmp_path / "missing.toml")
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    bad = write_toml(tmp_path / "bad.toml", {"api": {"port": "x"}})
    result = subprocess.run(
        [str(CLI), "serve", "--config", str(bad), "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "api.port" in result.stderr
