"""A real OpenStack Keystone (PyPI `keystone`, its own virtual environment `.venv-keystone`, made by
`make keystone`) on loopback, for tests of callers that carry Keystone tokens.

One process per test session (`keystone`): gunicorn serving `keystone.wsgi.api:application`,
SQLite, fernet tokens and credential keys made by `keystone-manage`, and `keystone-manage
bootstrap` with an admin (user `admin` in project `admin`, domain `Default`, roles admin, member
and reader) and the identity endpoint in region `RegionOne`. Helpers create projects, users,
tokens and the image endpoint through Keystone's own API, as an operator would.

gunicorn's access log names every request with its X-Subject-Token, so a test can count how
often a token was validated (`validations(token)`). Tests share the process: names are get-or-
create, so two tests asking for the same project get the same one; a test that stops Keystone
starts it again (`stopped()`, same port and database) before it ends.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.loopback import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
KEYSTONE_VENV = ROOT / ".venv-keystone"
REGION = "RegionOne"
DOMAIN = "default"
ADMIN_USER = "admin"
ADMIN_PASSWORD = "keystone-admin-secret"
ADMIN_PROJECT = "admin"

_CONF = """\
[DEFAULT]
log_file = {root}/keystone.log
debug = false

[database]
connection = sqlite:///{root}/keystone.sqlite

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = {root}/fernet-keys

[fernet_receipts]
key_repository = {root}/fernet-receipts

[credential]
key_repository = {root}/credential-keys

[identity]
# bcrypt's cheapest cost: a password check in a test must not take a quarter second.
password_hash_rounds = 4

[oslo_concurrency]
lock_path = {root}/locks
"""

# gunicorn's own config. Keystone parses the process's command line with oslo.config when the
# application loads, and would refuse gunicorn's arguments: the worker forgets them first.
_GUNICORN_CONF = """\
import sys

bind = "127.0.0.1:{port}"
workers = 1
threads = 8
accesslog = "{root}/access.log"
access_log_format = '%(m)s %(U)s %(s)s subject=%({{x-subject-token}}i)s'
errorlog = "{root}/gunicorn.log"
control_socket_disable = True


def post_fork(server, worker):
    del sys.argv[1:]
"""


@dataclass
class Keystone(ServerProcess):
    """A Keystone process: `.auth_url` (…/v3), the admin's credentials, and helpers that change
    what Keystone holds through its API with an admin token."""

    LOG_FILES: ClassVar[tuple[str, ...]] = ("gunicorn.out", "gunicorn.log", "keystone.log")

    root: Path
    port: int
    region: str = REGION
    admin_user: str = ADMIN_USER
    admin_password: str = ADMIN_PASSWORD
    admin_project: str = ADMIN_PROJECT
    domain: str = DOMAIN
    proc: subprocess.Popen[bytes] | None = None
    _admin_token: str | None = field(default=None, repr=False)
    _passwords: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    @property
    def auth_url(self) -> str:
        return self.url + "/v3"

    # -- process --------------------------------------------------------------------------

    def _manage(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(self.root / "keystone.conf"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    @staticmethod
    def _wait(*procs: subprocess.Popen[bytes]) -> None:
        for proc in procs:
            out, _ = proc.communicate(timeout=300)
            if proc.returncode != 0:
                raise RuntimeError("%s failed:\n%s" % (" ".join(map(str, proc.args)), out.decode(errors="replace")))

    def configure(self) -> None:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        (self.root / "keystone.conf").write_text(_CONF.format(root=self.root))
        (self.root / "gunicorn.conf.py").write_text(_GUNICORN_CONF.format(root=self.root, port=self.port))
        owner = ["--keystone-user", str(os.getuid()), "--keystone-group", str(os.getgid())]
        # The key repositories do not need the database: made while the schema is.
        self._wait(
            self._manage("db_sync"), self._manage("fernet_setup", *owner), self._manage("credential_setup", *owner)
        )
        bootstrap = self._manage(
            "bootstrap",
            "--bootstrap-password",
            self.admin_password,
            "--bootstrap-username",
            self.admin_user,
            "--bootstrap-project-name",
            self.admin_project,
            "--bootstrap-region-id",
            self.region,
            "--bootstrap-admin-url",
            self.auth_url,
            "--bootstrap-internal-url",
            self.auth_url,
            "--bootstrap-public-url",
            self.auth_url,
        )
        self._wait(bootstrap)

    def start(self, timeout: float = 60) -> None:
        self.spawn(
            [
                str(KEYSTONE_VENV / "bin" / "gunicorn"),
                "--config",
                str(self.root / "gunicorn.conf.py"),
                "keystone.wsgi.api:application",
            ],
            {
                **os.environ,
                "OS_KEYSTONE_CONFIG_FILES": str(self.root / "keystone.conf"),
                "PATH": "%s/bin:/usr/bin:/bin" % KEYSTONE_VENV,
            },
        )
        self.wait_answering("keystone", timeout)

    def answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.auth_url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def validations(self, token: str) -> int:
        """How many times Keystone was asked to validate `token` (GET /v3/auth/tokens). gunicorn
        logs a request after answering it: the count is read until it holds still for 0.2 s."""
        count = self._validations(token)
        while True:
            time.sleep(0.2)
            again = self._validations(token)
            if again == count:
                return count
            count = again

    def _validations(self, token: str) -> int:
        return self.validated_subjects().count(token)

    def validated_subjects(self) -> list[str]:
        """Every token Keystone was asked to validate, in order (repeats included)."""
        path = self.root / "access.log"
        if not path.exists():
            return []
        return [
            line.rsplit(" subject=", 1)[1]
            for line in path.read_text(errors="replace").splitlines()
            if line.startswith("GET /v3/auth/tokens ") and " subject=" in line
        ]

    # -- API ------------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """One call to Keystone's API (with the admin's token unless one is given) → (status,
        headers, JSON body or None)."""
        data = json.dumps(body).encode() if body is not None else None
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if token is not None or path != "/v3/auth/tokens" or method != "POST":
            all_headers["X-Auth-Token"] = token or self.admin_token()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                raw = resp.read()
                return resp.status, dict(resp.headers), json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = raw.decode(errors="replace")
            return exc.code, dict(exc.headers), payload

    def _ok(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        status, _headers, payload = self.request(method, path, body, token)
        assert status < 300, "%s %s → %s %s" % (method, path, status, payload)
        return payload

    def _issue(self, auth: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        status, headers, payload = self.request("POST", "/v3/auth/tokens", {"auth": auth})
        assert status == 201, "token request → %s %s" % (status, payload)
        return headers["X-Subject-Token"], payload["token"]

    def admin_token(self) -> str:
        """A project-scoped token of the bootstrap admin (kept; a new one if Keystone restarted
        with other keys is never needed: the keys live in the root directory)."""
        if self._admin_token is None:
            self._admin_token = self.token(self.admin_user, self.admin_password, self.admin_project)
        return self._admin_token

    def token(self, user: str, password: str, project: str | None = None, system: bool = False) -> str:
        """A new token for `user` (password auth): scoped to `project` (a name in the Default
        domain), or system-scoped (`system=True`), or unscoped."""
        auth: dict[str, Any] = {
            "identity": {
                "methods": ["password"],
                "password": {"user": {"name": user, "domain": {"id": self.domain}, "password": password}},
            }
        }
        if project is not None:
            auth["scope"] = {"project": {"name": project, "domain": {"id": self.domain}}}
        elif system:
            auth["scope"] = {"system": {"all": True}}
        return self._issue(auth)[0]

    def token_expiring(self, user: str, password: str, project: str, seconds: float) -> str:
        """A token that expires in `seconds`: Keystone ends a token no later than the application
        credential it came from, so this makes one that expires then and authenticates with it."""
        user_token, body = self._issue(
            {
                "identity": {
                    "methods": ["password"],
                    "password": {"user": {"name": user, "domain": {"id": self.domain}, "password": password}},
                },
                "scope": {"project": {"name": project, "domain": {"id": self.domain}}},
            }
        )
        user_id = body["user"]["id"]
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
        cred = self._ok(
            "POST",
            "/v3/users/%s/application_credentials" % user_id,
            {
                "application_credential": {
                    "name": "expiring-%d" % time.monotonic_ns(),
                    "expires_at": expires.strftime("%Y-%m-%dT%H:%M:%S.%f"),
                }
            },
            token=user_token,
        )["application_credential"]
        return self._issue(
            {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {"id": cred["id"], "secret": cred["secret"]},
                }
            }
        )[0]

    def revoke(self, token: str) -> None:
        status, _h, payload = self.request("DELETE", "/v3/auth/tokens", headers={"X-Subject-Token": token})
        assert status == 204, "revoke → %s %s" % (status, payload)

    def _find(self, collection: str, name: str, **query: str) -> dict[str, Any] | None:
        params = urllib.parse.urlencode({"name": name, **query})
        found = self._ok("GET", "/v3/%s?%s" % (collection, params))[collection]
        return dict(found[0]) if found else None

    def role_id(self, name: str) -> str:
        role = self._find("roles", name) or self._ok("POST", "/v3/roles", {"role": {"name": name}})["role"]
        return str(role["id"])

    def project_id(self, name: str) -> str:
        return self.create_project(name)

    def create_project(self, name: str) -> str:
        """The id of project `name` (Default domain), made if missing."""
        project = (
            self._find("projects", name, domain_id=self.domain)
            or self._ok("POST", "/v3/projects", {"project": {"name": name, "domain_id": self.domain}})["project"]
        )
        return str(project["id"])

    def create_user(
        self, name: str, password: str, project: str, roles: tuple[str, ...] | list[str] = ("member", "reader")
    ) -> str:
        """The id of user `name` (Default domain) with `password` and `roles` on `project` (both
        made if missing; an existing user gets these roles added, and this password if it had
        another: which revokes that user's tokens, so a second call with the same password
        changes nothing)."""
        project_id = self.create_project(project)
        user = self._find("users", name, domain_id=self.domain)
        if user is None:
            user = self._ok(
                "POST",
                "/v3/users",
                {
                    "user": {
                        "name": name,
                        "password": password,
                        "domain_id": self.domain,
                        "default_project_id": project_id,
                    }
                },
            )["user"]
        elif self._passwords.get(name) != password:
            self._ok("PATCH", "/v3/users/%s" % user["id"], {"user": {"password": password}})
        self._passwords[name] = password
        for role in roles:
            self._ok("PUT", "/v3/projects/%s/users/%s/roles/%s" % (project_id, user["id"], self.role_id(role)))
        return str(user["id"])

    def ensure_region(self, region: str) -> None:
        status, _h, _p = self.request("GET", "/v3/regions/%s" % region)
        if status == 404:
            self._ok("POST", "/v3/regions", {"region": {"id": region}})

    def register_image_endpoint(self, url: str, region: str = REGION) -> None:
        """Make `url` the image service (`image`, Glance) of `region` on all three interfaces,
        replacing the image endpoints that region had (one image service per region)."""
        self.ensure_region(region)
        services = self._ok("GET", "/v3/services?type=image")["services"]
        if services:
            service_id = services[0]["id"]
        else:
            service_id = self._ok("POST", "/v3/services", {"service": {"type": "image", "name": "glance"}})["service"][
                "id"
            ]
        old = self._ok("GET", "/v3/endpoints?service_id=%s&region_id=%s" % (service_id, region))["endpoints"]
        for endpoint in old:
            self._ok("DELETE", "/v3/endpoints/%s" % endpoint["id"])
        for interface in ("public", "internal", "admin"):
            self._ok(
                "POST",
                "/v3/endpoints",
                {"endpoint": {"service_id": service_id, "interface": interface, "url": url, "region_id": region}},
            )

    def os_env(self, user: str, password: str, project: str) -> dict[str, str]:
        """OS_* variables for the `openstack` / `glance` CLIs (password auth through the catalog)."""
        return {
            "OS_AUTH_URL": self.auth_url,
            "OS_AUTH_TYPE": "password",
            "OS_IDENTITY_API_VERSION": "3",
            "OS_USERNAME": user,
            "OS_PASSWORD": password,
            "OS_PROJECT_NAME": project,
            "OS_USER_DOMAIN_ID": self.domain,
            "OS_PROJECT_DOMAIN_ID": self.domain,
            "OS_REGION_NAME": self.region,
            "OS_INTERFACE": "public",
            "OS_IMAGE_API_VERSION": "2",
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def keystone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keystone]:
    if not (KEYSTONE_VENV / "bin" / "gunicorn").exists():
        pytest.fail("OpenStack Keystone is required: `make keystone` installs it into %s" % KEYSTONE_VENV)
    server = Keystone(root=tmp_path_factory.mktemp("keystone"), port=_free_port())
    server.configure()
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGTERM)
