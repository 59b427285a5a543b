"""A config reload and Keystone: validated tokens stay cached when only cache settings change;
another Keystone or another identity for the appliance starts afresh (the old one is closed
with the authenticator)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from appliance import keystone
from appliance.auth import Authenticator
from appliance.config import Config, KeystoneConfig, parse_config

KEYSTONE = {"auth_url": "http://127.0.0.1:5000/v3", "username": "glance", "password": "secret"}


def config(tmp_path: Path, **changes: object) -> Config:
    return parse_config({"keystone": {**KEYSTONE, **changes}, "api": {"unix_socket": ""}}, tmp_path)


def authenticator(conf: Config) -> Authenticator:
    return Authenticator.from_config(conf, keystone.from_config(conf.keystone))


async def test_cache_settings_change_in_place(tmp_path: Path) -> None:
    auth = authenticator(config(tmp_path))
    validator = auth.keystone
    auth.replace_with(authenticator(config(tmp_path, token_cache_time=30, token_cache_size=5)))
    assert auth.keystone is validator
    assert isinstance(validator, keystone.KeystoneAuth)
    assert (validator.config.token_cache_time, validator.config.token_cache_size) == (30, 5)
    await auth.close()


async def test_another_keystone_or_identity_starts_afresh(tmp_path: Path) -> None:
    auth = authenticator(config(tmp_path))
    first = auth.keystone
    auth.replace_with(authenticator(config(tmp_path, password="rotated")))
    assert auth.keystone is not first and isinstance(auth.keystone, keystone.KeystoneAuth)
    assert auth.keystone.config.password == "rotated"
    auth.replace_with(Authenticator.from_config(parse_config({}, tmp_path)))
    assert auth.keystone is None
    await auth.close()


def test_no_auth_url_no_keystone() -> None:
    assert keystone.from_config(KeystoneConfig()) is None
    assert keystone.from_config(dataclasses.replace(KeystoneConfig(), **KEYSTONE)) is not None
