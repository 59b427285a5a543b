"""Keystone tokens against a real daemon and the session's real Keystone (tests/keystone.py).

The daemon validates callers' tokens with its own service user; the `openstack` and `glance`
CLIs and openstacksdk authenticate with passwords and find the daemon in Keystone's catalog, as
on a real site. Keystone's access log tells how often a token was validated.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openstack
import pytest

from appliance.keystone import token_context
from tests.conftest import Daemon, start_daemon, write_toml
from tests.keystone import Keystone

pytestmark = [
    pytest.mark.clients,
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
]

BIN = Path(sys.executable).parent
SERVICE_USER, SERVICE_PASSWORD = "edge-appliance", "edge-appliance-secret"
PASSWORD = "user-secret"
UNREACHABLE = "identity service (Keystone at"


def site_config(path: Path, keystone: Keystone, **keystone_overrides: Any) -> Path:
    keystone.create_user(SERVICE_USER, SERVICE_PASSWORD, "service", ["service"])
    section = {
        "auth_url": keystone.auth_url,
        "username": SERVICE_USER,
        "password": SERVICE_PASSWORD,
        "project_name": "service",
        "region_name": keystone.region,
        **keystone_overrides,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_toml(path, {"keystone": section})


@pytest.fixture(scope="module")
def site(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module's tests that keep the default cache time; the catalog's image
    endpoint (RegionOne) is this daemon."""
    root = tmp_path_factory.mktemp("keystone-site")
    daemon = start_daemon(root / "state", site_config(root / "appliance.toml", keystone))
    keystone.register_image_endpoint(daemon.url)
    try:
        yield daemon
    finally:
        daemon.stop()


def call(
    daemon: Daemon, path: str, token: str, method: str = "GET", body: Any = None, **headers: str
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        daemon.url + path,
        data=data,
        method=method,
        headers={"X-Auth-Token": token, "Accept": "application/json", "Content-Type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def user(keystone: Keystone, name: str, project: str, roles: tuple[str, ...] = ("member", "reader")) -> str:
    """A new token of `name`, made with `roles` in `project`."""
    keystone.create_user(name, PASSWORD, project, roles)
    return keystone.token(name, PASSWORD, project)


def cli(keystone: Keystone, tool: str, *args: str, name: str, project: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(keystone.os_env(name, PASSWORD, project))
    result = subprocess.run(
        [str(BIN / tool), *args], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, "%s %s failed (%d):\n%s%s" % (
        tool,
        " ".join(args),
        result.returncode,
        result.stdout,
        result.stderr,
    )
    return result.stdout


def test_openstack_cli_lists_creates_and_saves_through_the_catalog(
    keystone: Keystone, site: Daemon, tmp_path: Path
) -> None:
    keystone.create_user("cli-operator", PASSWORD, "cli-project", ["member", "reader"])
    keystone.register_image_endpoint(site.url)
    data = os.urandom(300_000)
    (tmp_path / "disk.raw").write_bytes(data)
    args = {"name": "cli-operator", "project": "cli-project"}
    created = json.loads(
        cli(
            keystone,
            "openstack",
            "image",
            "create",
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--private",
            "--file",
            str(tmp_path / "disk.raw"),
            "-f",
            "json",
            "ks-cli-image",
            **args,
        )
    )
    assert created["owner"] == keystone.project_id("cli-project")
    listed = json.loads(cli(keystone, "openstack", "image", "list", "-f", "json", **args))
    assert created["id"] in [row["ID"] for row in listed]
    cli(keystone, "openstack", "image", "save", "--file", str(tmp_path / "back.raw"), created["id"], **args)
    assert hashlib.sha256((tmp_path / "back.raw").read_bytes()).digest() == hashlib.sha256(data).digest()
    # python-glanceclient, the same way (password auth, endpoint from the catalog)
    out = cli(keystone, "glance", "image-show", created["id"], **args)
    assert "ks-cli-image" in out and "active" in out
    assert created["id"] in cli(keystone, "glance", "image-list", **args)


def test_openstacksdk_with_auth_url(keystone: Keystone, site: Daemon) -> None:
    keystone.create_user("sdk-user", PASSWORD, "sdk-project", ["member", "reader"])
    keystone.register_image_endpoint(site.url)
    conn = openstack.connect(
        auth_url=keystone.auth_url,
        username="sdk-user",
        password=PASSWORD,
        project_name="sdk-project",
        user_domain_id="default",
        project_domain_id="default",
        region_name=keystone.region,
        load_yaml_config=False,
        load_envvars=False,
    )
    try:
        image = conn.image.create_image(
            name="ks-sdk-image", disk_format="raw", container_format="bare", data=b"x" * 4096
        )
        assert image.owner_id == keystone.project_id("sdk-project")
        assert image.id in [i.id for i in conn.image.images()]
        assert conn.image.download_image(image).content == b"x" * 4096
    finally:
        conn.close()


def test_roles_and_projects_come_from_keystone(keystone: Keystone, site: Daemon) -> None:
    reader = user(keystone, "alpha-reader", "alpha", ("reader",))
    member_a = user(keystone, "alpha-member", "alpha")
    member_b = user(keystone, "beta-member", "beta")
    admin = keystone.admin_token()
    body = {"name": "alpha-private", "disk_format": "raw", "container_format": "bare", "visibility": "private"}

    status, refused = call(site, "/v2/images", reader, "POST", body)
    assert status == 403, refused
    status, image = call(site, "/v2/images", member_a, "POST", body)
    assert status == 201, image
    assert image["owner"] == keystone.project_id("alpha")
    assert call(site, "/v2/images/%s" % image["id"], reader)[0] == 200  # a reader reads in its project
    assert call(site, "/v2/images/%s" % image["id"], member_b)[0] == 404
    status, listing = call(site, "/v2/images", member_b)
    assert status == 200 and image["id"] not in [i["id"] for i in listing["images"]]
    assert call(site, "/v2/images/%s" % image["id"], admin)[0] == 200  # Keystone's admin role


def test_a_token_stops_working_when_it_expires_unless_a_service_acts_for_it(keystone: Keystone, site: Daemon) -> None:
    keystone.create_user("short-lived", PASSWORD, "alpha", ["member", "reader"])
    token = keystone.token_expiring("short-lived", PASSWORD, "alpha", seconds=6)
    assert call(site, "/v2/images", token)[0] == 200
    nova = user(keystone, "nova", "service", ("service",))
    time.sleep(7)  # far less than the cache time (300 s): the expiry alone ends it
    status, body = call(site, "/v2/images", token)
    assert status == 401, body
    # ... except for a service acting for the user (keystonemiddleware's allow_expired)
    assert call(site, "/v2/images", token, **{"X-Service-Token": nova})[0] == 200
    assert call(site, "/v2/images", token)[0] == 401


@pytest.fixture(scope="module")
def short_cache(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A daemon that trusts a validation for CACHE_TIME seconds and remembers two tokens."""
    root = tmp_path_factory.mktemp("keystone-short-cache")
    config = site_config(root / "appliance.toml", keystone, token_cache_time=CACHE_TIME, token_cache_size=2)
    daemon = start_daemon(root / "state", config)
    try:
        yield daemon
    finally:
        daemon.stop()


CACHE_TIME = 2


def test_a_revoked_token_is_refused_after_the_cache_time(keystone: Keystone, short_cache: Daemon) -> None:
    token = user(keystone, "revoked-user", "alpha")
    assert call(short_cache, "/v2/images", token)[0] == 200
    keystone.revoke(token)
    assert call(short_cache, "/v2/images", token)[0] == 200  # cached: Keystone is not asked again yet
    time.sleep(CACHE_TIME + 0.5)
    status, body = call(short_cache, "/v2/images", token)
    assert status == 401, body
    assert keystone.validations(token) == 2


def test_a_validated_token_outlives_its_cache_time_while_keystone_is_down(
    keystone: Keystone, short_cache: Daemon
) -> None:
    token = user(keystone, "stale-user", "alpha")
    assert call(short_cache, "/v2/images", token)[0] == 200
    with keystone.stopped():
        time.sleep(CACHE_TIME + 0.5)  # past the cache time: Keystone would be asked, and cannot be
        assert call(short_cache, "/v2/images", token)[0] == 200


def test_the_token_cache_is_bounded(keystone: Keystone, short_cache: Daemon) -> None:
    """token_cache_size = 2: a third token pushes out the least recently used one."""
    keystone.create_user("lru-user", PASSWORD, "alpha", ["member", "reader"])
    first, second, third = (keystone.token("lru-user", PASSWORD, "alpha") for _ in range(3))
    for token in (first, second, first, third):  # `second` is now the least recently used
        assert call(short_cache, "/v2/images", token)[0] == 200
    assert call(short_cache, "/v2/images", first)[0] == 200
    assert call(short_cache, "/v2/images", second)[0] == 200  # forgotten: validated again
    assert [keystone.validations(t) for t in (first, second, third)] == [1, 2, 1]


def test_keystone_answers_map_into_the_context(keystone: Keystone) -> None:
    """Real validation bodies (project-scoped, system-scoped) become Glance's request context."""
    keystone.create_user("mapped-user", PASSWORD, "alpha", ["member", "reader"])
    token = keystone.token("mapped-user", PASSWORD, "alpha")
    _status, _headers, body = keystone.request("GET", "/v3/auth/tokens", headers={"X-Subject-Token": token})
    ctx, expires = token_context(token, body)
    assert ctx.user == body["token"]["user"]["id"]
    assert ctx.project == keystone.project_id("alpha")
    assert ctx.roles == {"member", "reader"}
    assert (ctx.user_domain, ctx.project_domain, ctx.system_scope) == ("default", "default", None)
    assert ctx.token == token and expires > time.time()
    system = keystone.token(keystone.admin_user, keystone.admin_password, system=True)
    _status, _headers, body = keystone.request("GET", "/v3/auth/tokens", headers={"X-Subject-Token": system})
    ctx, _expires = token_context(system, body)
    assert ctx.system_scope == "all" and ctx.project == "" and "admin" in ctx.roles


def test_keystone_outage_keeps_validated_tokens_and_answers_503_for_new_ones(keystone: Keystone, site: Daemon) -> None:
    known = user(keystone, "outage-known", "alpha")
    fresh = user(keystone, "outage-fresh", "alpha")
    assert call(site, "/v2/images", known)[0] == 200
    with keystone.stopped():
        assert call(site, "/v2/images", known)[0] == 200  # validated before: works until it expires
        status, body = call(site, "/v2/images", fresh)
        assert status == 503, body
        assert UNREACHABLE in body["message"] and "unreachable" in body["message"], body
        assert call(site, "/v2/images", site.token)[0] == 200  # the static admin token: break-glass
        assert call(site, "/v2/images", "gAAAAA-never-issued")[0] == 503  # not 401: nobody can tell
        # What an operator sees: the glance CLI (with the token it has) names the cause.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        shown = subprocess.run(
            [
                str(BIN / "glance"),
                "--os-image-api-version",
                "2",
                "--os-image-url",
                site.url,
                "--os-auth-token",
                fresh,
                "image-list",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shown.returncode != 0 and "503" in shown.stderr, shown.stderr
        assert "identity service (Keystone at" in shown.stderr and "unreachable" in shown.stderr, shown.stderr
    assert call(site, "/v2/images", fresh)[0] == 200  # Keystone back: the new token is validated


def test_a_bad_token_is_401_with_keystones_challenge(keystone: Keystone, site: Daemon) -> None:
    request = urllib.request.Request(
        site.url + "/v2/images", headers={"X-Auth-Token": "not-a-token", "Accept": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    refused.value.close()
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == 'Keystone uri="%s"' % keystone.auth_url


def test_one_keystone_request_per_token_per_cache_period(keystone: Keystone, site: Daemon) -> None:
    """Concurrent first requests with one token share one validation (the race, repeated)."""
    keystone.create_user("burst-user", PASSWORD, "alpha", ["member", "reader"])
    for _round in range(5):
        token = keystone.token("burst-user", PASSWORD, "alpha")
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(lambda _i, t=token: call(site, "/v2/images", t)[0], range(32)))
        assert statuses == [200] * 32
        assert [call(site, "/v2/images", token)[0] for _ in range(10)] == [200] * 10
        assert keystone.validations(token) == 1


def test_service_tokens_are_validated(keystone: Keystone, tmp_path: Path) -> None:
    daemon = start_daemon(
        tmp_path / "state", site_config(tmp_path / "appliance.toml", keystone, service_token_roles_required=True)
    )
    try:
        caller = user(keystone, "served-user", "alpha")
        nova = user(keystone, "nova", "service", ("service",))
        plain = user(keystone, "not-a-service", "alpha")
        assert call(daemon, "/v2/images", caller, **{"X-Service-Token": nova})[0] == 200
        assert call(daemon, "/v2/images", caller, **{"X-Service-Token": "forged"})[0] == 401
        assert call(daemon, "/v2/images", caller, **{"X-Service-Token": plain})[0] == 401  # no service role
    finally:
        daemon.stop()
