"""A real OpenStack Glance API (PyPI `glance`, its own virtual environment `.venv-glance`, made by
`make glance`) on loopback, for tests of an edge whose hub is the real thing.

One process per test session (`openstack_glance`): uWSGI serving `glance.wsgi.api:application`
(Glance has no standalone server any more), SQLite through `glance-manage db_sync`, one
filesystem store `central` (multi-store, so images show `"stores": "central"`), the reserved
staging and tasks stores, the interoperable import (glance-direct, web-download, copy-image),
Glance's image cache, and small pages (`api_limit_max`) so listings go through `next` markers.

Auth without Keystone: the paste flavor `tokens+caching` is Glance's `keystone+caching` pipeline
with keystonemiddleware's auth_token replaced by tests/glance_tokens.py, which reads the identity
from the token itself (`user:project:role,role`) and hands it on as the headers auth_token sets
(X-Identity-Status, X-User-Id, X-Project-Id, X-Roles). Glance's own context middleware and
policies (its defaults) do the rest, so a reader token is refused what a reader may not do.
(Glance's `unauthenticated-context` flavor cannot import: tasks need a project.)

With Keystone (`keystone_glance`, a second session Glance on the session's tests/keystone.py):
the flavor `keystone+caching` and `[keystone_authtoken]` with Keystone's bootstrap admin as the
service user; `.token` is then a project-scoped Keystone token of that admin.

Tests share the process: each uses its own images, and one that stops Glance restarts it
(`stopped()`, same port and database) before it ends.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.loopback import die_with_parent, free_port

ROOT = Path(__file__).resolve().parent.parent
GLANCE_VENV = ROOT / ".venv-glance"
# `user:project:roles` (tests/glance_tokens.py): the admin of project `admin`.
ADMIN_TOKEN = "admin:admin:admin,member,reader"
# Small pages (Glance's own cap on `limit`), so that listings go through its `next` markers.
API_LIMIT_MAX = 5

_CONF = """\
[DEFAULT]
enabled_backends = {backends}
enabled_import_methods = [glance-direct,web-download,copy-image]
worker_self_reference_url = {url}
image_cache_dir = {root}/cache
api_limit_max = {limit}
limit_param_default = {limit}
debug = false
{options}

[glance_store]
default_backend = central

[central]
filesystem_store_datadir = {root}/images

[os_glance_staging_store]
filesystem_store_datadir = {root}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {root}/tasks

[database]
# SQLite's lock wait (pysqlite's default 5 s): concurrent imports write task progress on a busy machine.
connection = sqlite:///{root}/glance.sqlite?timeout=60

[paste_deploy]
flavor = {flavor}
config_file = {root}/glance-api-paste.ini

[import_filtering_opts]
allowed_ports =
{filtering}

[oslo_concurrency]
lock_path = {root}/locks
"""


@dataclass
class GlanceServer:
    """A Glance API process: `.url`, `.token` (an admin's), `.headers(token)`."""

    root: Path
    port: int
    token: str = ADMIN_TOKEN
    options: dict[str, str] = field(default_factory=dict)  # more [DEFAULT] options
    keystone: Any = None  # a tests.keystone.Keystone: validate tokens there (flavor keystone+caching)
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "glance.log"

    @property
    def url(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"X-Auth-Token": token or self.token}

    def configure(self) -> None:
        for name in ("images", "staging", "tasks", "cache", "locks"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        _write_paste(self.root / "glance-api-paste.ini")
        shutil.copy(Path(__file__).with_name("glance_tokens.py"), self.root / "glance_tokens.py")
        (self.root / "glance-api.conf").write_text(
            _CONF.format(
                url=self.url,
                root=self.root,
                limit=API_LIMIT_MAX,
                # enabled_backends (default central:file) may name more, e.g. web:http for http locations
                backends=self.options.get("enabled_backends", "central:file"),
                # import_filtering_opts.NAME: an option of that section (allowed_hosts for loopback)
                filtering="\n".join(
                    "%s = %s" % (k.split(".", 1)[1], v)
                    for k, v in self.options.items()
                    if k.startswith("import_filtering_opts.")
                ),
                options="\n".join(
                    "%s = %s" % kv for kv in self.options.items() if kv[0] != "enabled_backends" and "." not in kv[0]
                ),
                flavor="tokens+caching" if self.keystone is None else "keystone+caching",
            )
            + ("" if self.keystone is None else _authtoken(self.keystone))
        )
        subprocess.run(
            [
                str(GLANCE_VENV / "bin" / "glance-manage"),
                "--config-file",
                str(self.root / "glance-api.conf"),
                "db_sync",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )

    def start(self, timeout: float = 60) -> None:
        fh = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [
                str(GLANCE_VENV / "bin" / "uwsgi"),
                "--http11-socket",
                "127.0.0.1:%d" % self.port,
                "--module",
                "glance.wsgi.api:application",
                "--pythonpath",
                str(self.root),  # glance_tokens
                "--master",
                "--processes",
                "1",
                "--threads",
                "8",
                "--enable-threads",
                "--need-app",
                "--die-on-term",
                "--http-auto-chunked",
                "--buffer-size",
                "65535",
                "--chunked-input-limit",
                str(64 << 20),
                # Under uWSGI sys.executable is uwsgi itself; oslo_concurrency runs qemu-img under
                # `sys.executable -m oslo_concurrency.prlimit` (image_conversion, import inspection).
                "--py-sys-executable",
                str(GLANCE_VENV / "bin" / "python"),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            start_new_session=True,  # its own process group: stop() ends master and worker
            preexec_fn=die_with_parent,
            env={**os.environ, "OS_GLANCE_CONFIG_DIR": str(self.root), "PATH": "%s/bin:/usr/bin:/bin" % GLANCE_VENV},
        )
        fh.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("glance exited with %s:\n%s" % (self.proc.returncode, self.log_text()[-5000:]))
            if self.answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("glance did not answer within %ss:\n%s" % (timeout, self.log_text()[-5000:]))

    def answers(self) -> bool:
        try:
            request = urllib.request.Request(self.url + "/v2/images?limit=1", headers=self.headers())
            with urllib.request.urlopen(request, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, sig: int = signal.SIGTERM, grace: float = 3) -> None:
        """End the server (SIGKILL: as a crash). The worker waits for Glance's task pool on
        SIGTERM; after `grace` seconds the process group is killed."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Glance down for the block (killed, as a lost link or a crash), up again after it."""
        self.stop(signal.SIGKILL)
        try:
            yield
        finally:
            self.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def data_gets(self, image_id: str) -> int:
        """How many GETs of the image's data Glance answered (uWSGI's request log)."""
        return len(re.findall(r"\bGET /v2/images/%s/file\b" % re.escape(image_id), self.log_text()))


def _write_paste(path: Path) -> None:
    """Glance's own paste file plus the flavor `tokens+caching` (see the module's docstring)."""
    paste = configparser.ConfigParser(interpolation=None)
    paste.optionxform = str  # type: ignore[assignment,method-assign]
    paste.read(GLANCE_VENV / "etc" / "glance" / "glance-api-paste.ini")
    keystone = paste["composite:api"]["keystone+caching"]
    paste["composite:api"]["tokens+caching"] = keystone.replace("authtoken", "tokens")
    paste["composite:glance-api-tokens+caching"] = dict(paste["composite:glance-api-keystone+caching"])
    paste["filter:tokens"] = {"paste.filter_factory": "glance_tokens:filter_factory"}
    with open(path, "w") as fh:
        paste.write(fh)


@contextlib.contextmanager
def running_glance(root: Path, keystone: Any = None, **options: str) -> Iterator[GlanceServer]:
    """A Glance of one's own (about 6 s to set up), with more [DEFAULT] options, validating
    tokens at `keystone` (a tests.keystone.Keystone) if one is given; stopped after."""
    if not (GLANCE_VENV / "bin" / "uwsgi").exists():
        pytest.fail("OpenStack Glance is required: `make glance` installs it into %s" % GLANCE_VENV)
    server = GlanceServer(root=root, port=free_port(), options=options, keystone=keystone)
    if keystone is not None:
        server.token = keystone.admin_token()
    server.configure()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def openstack_glance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GlanceServer]:
    with running_glance(tmp_path_factory.mktemp("glance")) as server:
        yield server


@pytest.fixture(scope="session")
def keystone_glance(tmp_path_factory: pytest.TempPathFactory, keystone: Any) -> Iterator[GlanceServer]:
    with running_glance(tmp_path_factory.mktemp("glance-keystone"), keystone=keystone) as server:
        yield server


def _authtoken(keystone: Any) -> str:
    """keystonemiddleware's section: Keystone's bootstrap admin validates the callers' tokens."""
    return (
        "\n[keystone_authtoken]\n"
        "www_authenticate_uri = %s\n"
        "auth_url = %s\n"
        "auth_type = password\n"
        "username = %s\n"
        "password = %s\n"
        "project_name = %s\n"
        "user_domain_id = %s\n"
        "project_domain_id = %s\n"
        "region_name = %s\n"
        % (
            keystone.url,
            keystone.url,
            keystone.admin_user,
            keystone.admin_password,
            keystone.admin_project,
            keystone.domain,
            keystone.domain,
            keystone.region,
        )
    )
