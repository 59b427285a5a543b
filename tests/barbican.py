"""A real OpenStack Barbican (PyPI `barbican`, its own virtual environment `.venv-barbican`, made by
`make barbican`) on loopback, for the signed-image tests that take certificates from its secrets API.

One process per test session (`barbican`): gunicorn serving Barbican's paste pipeline with
keystonemiddleware (`barbican-api-keystone`) against the session's Keystone (tests/keystone.py),
SQLite (created at start: db_auto_create), and the store_crypto secret store with the
simple_crypto plugin (a Fernet KEK made here). Barbican is registered in Keystone's catalog as the
`key-manager` service of the region, as an operator does, so a client can find it there.

Barbican reads its configuration from oslo.config's default places: HOME points at the
fixture's root, so `~/.barbican/barbican.conf` is this one and nothing under /etc is read first.
Helpers store secrets through Barbican's own API with a caller's Keystone token. A test that
stops Barbican starts it again (`stopped()`, tests/processes.py: same port and database) before
it ends.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.keystone import Keystone
from tests.loopback import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
BARBICAN_VENV = ROOT / ".venv-barbican"
SERVICE_TYPE = "key-manager"

_CONF = """\
[DEFAULT]
log_file = {root}/barbican.log
debug = false
host_href = {url}
db_auto_create = true

[database]
connection = sqlite:///{root}/barbican.sqlite

[secretstore]
namespace = barbican.secretstore.plugin
enabled_secretstore_plugins = store_crypto

[crypto]
namespace = barbican.crypto.plugin
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}

[oslo_policy]
enforce_new_defaults = true
enforce_scope = true

[keystone_authtoken]
www_authenticate_uri = {keystone_url}
auth_url = {keystone_url}
auth_type = password
username = {username}
password = {password}
project_name = {project}
user_domain_id = {domain}
project_domain_id = {domain}
region_name = {region}
"""

# Barbican's own pipeline file names /etc paths for its health check: the one used here is
# Barbican's with keystonemiddleware in front of the API and nothing else changed.
_PASTE = """\
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican-api-keystone

[pipeline:barbican_version]
pipeline = request_id http_proxy_to_wsgi microversion versionapp

[pipeline:barbican-api-keystone]
pipeline = request_id http_proxy_to_wsgi authtoken context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""

_WSGI = """\
from paste import deploy

application = deploy.loadapp("config:{root}/barbican-api-paste.ini")
"""

_GUNICORN_CONF = """\
bind = "127.0.0.1:{port}"
workers = 1
threads = 4
accesslog = "{root}/access.log"
access_log_format = '%(m)s %(U)s %(s)s service=%({{x-service-token}}i)s'
errorlog = "{root}/gunicorn.log"
control_socket_disable = True
"""


@dataclass
class Barbican(ServerProcess):
    """A Barbican process: `.url` (its root, as the catalog names it) and helpers that store and
    remove secrets with a caller's Keystone token."""

    LOG_FILES: ClassVar[tuple[str, ...]] = ("gunicorn.out", "gunicorn.log", "barbican.log")

    root: Path
    port: int
    keystone: Keystone
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def configure(self) -> None:
        conf_dir = self.root / ".barbican"
        conf_dir.mkdir(parents=True, exist_ok=True)
        ks = self.keystone
        (conf_dir / "barbican.conf").write_text(
            _CONF.format(
                root=self.root,
                url=self.url,
                kek=base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                keystone_url=ks.url,
                username=ks.admin_user,
                password=ks.admin_password,
                project=ks.admin_project,
                domain=ks.domain,
                region=ks.region,
            )
        )
        (self.root / "barbican-api-paste.ini").write_text(_PASTE)
        (self.root / "barbican_wsgi.py").write_text(_WSGI.format(root=self.root))
        (self.root / "gunicorn.conf.py").write_text(_GUNICORN_CONF.format(root=self.root, port=self.port))

    def register(self) -> None:
        """Barbican as the region's key-manager service in Keystone's catalog (all interfaces)."""
        ks = self.keystone
        ks.ensure_region(ks.region)
        services = ks._ok("GET", "/v3/services?type=%s" % SERVICE_TYPE)["services"]
        if services:
            service_id = services[0]["id"]
        else:
            service_id = ks._ok("POST", "/v3/services", {"service": {"type": SERVICE_TYPE, "name": "barbican"}})[
                "service"
            ]["id"]
        for endpoint in ks._ok("GET", "/v3/endpoints?service_id=%s" % service_id)["endpoints"]:
            ks._ok("DELETE", "/v3/endpoints/%s" % endpoint["id"])
        for interface in ("public", "internal", "admin"):
            ks._ok(
                "POST",
                "/v3/endpoints",
                {
                    "endpoint": {
                        "service_id": service_id,
                        "interface": interface,
                        "url": self.url,
                        "region_id": ks.region,
                    }
                },
            )

    def start(self, timeout: float = 120) -> None:
        self.spawn(
            [
                str(BARBICAN_VENV / "bin" / "gunicorn"),
                "--config",
                str(self.root / "gunicorn.conf.py"),
                "--chdir",
                str(self.root),
                "barbican_wsgi:application",
            ],
            {**os.environ, "HOME": str(self.root), "PATH": "%s/bin:/usr/bin:/bin" % BARBICAN_VENV},
        )
        self.wait_answering("barbican", timeout, interval=0.2)

    def answers(self) -> bool:
        """The API answers: an unauthenticated request is refused by keystonemiddleware (401),
        which means the whole pipeline (and the database behind it) loaded."""
        try:
            with urllib.request.urlopen(self.url + "/v1/secrets", timeout=2) as resp:
                return bool(resp.status < 500)
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code == 401
        except OSError:
            return False

    def requests_for(self, secret_id: str) -> list[str]:
        """gunicorn's access log lines of the requests that named `secret_id` (written after
        each answer): 'GET /v1/secrets/ID 200 service=X-Service-Token or -'."""
        path = self.root / "access.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return [line for line in lines if "/secrets/%s" % secret_id in line]

    # -- API ------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, token: str, body: Any = None, accept: str = "application/json"
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"X-Auth-Token": token, "Accept": accept, "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def store_secret(
        self, token: str, payload: bytes, *, secret_type: str = "certificate", name: str = "image signing"
    ) -> str:
        """Store `payload` (base64 on the wire, application/octet-stream) as the Glance guide's
        `openstack secret store --secret-type certificate ...` does; returns the secret's uuid."""
        status, raw = self.request(
            "POST",
            "/v1/secrets",
            token,
            {
                "name": name,
                "secret_type": secret_type,
                "payload": base64.b64encode(payload).decode(),
                "payload_content_type": "application/octet-stream",
                "payload_content_encoding": "base64",
            },
        )
        assert status == 201, "store secret → %s %s" % (status, raw[:500])
        return str(json.loads(raw)["secret_ref"]).rsplit("/", 1)[1]

    def delete_secret(self, token: str, secret_id: str) -> None:
        status, raw = self.request("DELETE", "/v1/secrets/%s" % secret_id, token)
        assert status == 204, "delete secret → %s %s" % (status, raw[:500])


@pytest.fixture(scope="session")
def barbican(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Barbican]:
    if not (BARBICAN_VENV / "bin" / "gunicorn").exists():
        pytest.fail("OpenStack Barbican is required: `make barbican` installs it into %s" % BARBICAN_VENV)
    server = Barbican(root=tmp_path_factory.mktemp("barbican"), port=free_port(), keystone=keystone)
    server.configure()
    server.start()
    server.register()
    try:
        yield server
    finally:
        server.stop(signal.SIGTERM)
