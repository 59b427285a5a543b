"""`[auth] policy_file` on a real daemon: the seeds' overrides as written (uploads for
administrators only, copy-image by the image's owner), SIGHUP tightening and loosening a rule, an
invalid file refused with its line and rule while the running rules stay, an invalid file refusing
the start; and the real `edge-appliance policy list|check` commands."""

from __future__ import annotations

import io
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import JSON_ERRORS, VENV_BIN, Daemon, start_daemon, write_toml
from tests.waiting import eventually, wait_for

OCTET = {"Content-Type": "application/octet-stream"}

# role → (token, user, project, roles)
CALLERS: dict[str, tuple[str, str, str, list[str]]] = {
    "admin": ("tok-admin", "root", "admin", ["admin"]),
    "member": ("tok-member", "mia", "p1", ["member"]),
    "other": ("tok-other", "otto", "p2", ["member"]),
}

# As the seeds write them: Glance's rule names and oslo.policy's syntax.
SEEDS = """# Uploads go through the import workflow; only administrators PUT image data.
"upload_image": "role:admin"
# 17.1: the image's owner (or an administrator) copies it to another store.
"copy_image": "role:admin or (role:member and project_id:%(project_id)s)"
"""


def site_config(tmp_path: Path, policy_file: str = "policy.yaml") -> Path:
    return write_toml(
        tmp_path / "site.toml",
        {
            "site": {"name": "central", "role": "hub"},
            "stores": {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}},
            "import": {"enabled_methods": ["glance-direct", "copy-image"]},
            "auth": {
                "policy_file": policy_file,
                "tokens": [{"token": t, "user": u, "project": p, "roles": r} for t, u, p, r in CALLERS.values()],
            },
            "scrubber": {"enabled": False},
        },
    )


class Site:
    def __init__(self, daemon: Daemon, session: aiohttp.ClientSession) -> None:
        self.daemon = daemon
        self.session = session

    async def call(self, role: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        headers = {"X-Auth-Token": CALLERS[role][0], **JSON_ERRORS, **kw.pop("headers", {})}
        async with self.session.request(method, self.daemon.url + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            return resp.status, json.loads(raw) if resp.content_type == "application/json" and raw else raw

    async def ok(self, role: str, method: str, path: str, expect: int, **kw: Any) -> Any:
        status, body = await self.call(role, method, path, **kw)
        assert status == expect, (role, method, path, status, body)
        return body

    async def new_image(self, role: str, **body: Any) -> str:
        body = {"name": "img", "disk_format": "raw", "container_format": "bare", **body}
        return str((await self.ok(role, "POST", "/v2/images", 201, json=body))["id"])

    async def upload(self, role: str, image_id: str) -> tuple[int, Any]:
        return await self.call(role, "PUT", "/v2/images/%s/file" % image_id, data=io.BytesIO(b"bytes"), headers=OCTET)

    async def image(self, image_id: str) -> dict[str, Any]:
        return dict(await self.ok("admin", "GET", "/v2/images/%s" % image_id, 200))

    async def member_upload_status(self) -> int:
        return (await self.upload("member", await self.new_image("member")))[0]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
        yield s


async def test_seed_overrides_on_a_real_daemon(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], session: aiohttp.ClientSession
) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "policy.yaml").write_text(SEEDS)
    site = Site(daemon_factory("site", site_config(tmp_path)), session)
    assert "policy: 2 rule(s) from %s" % (tmp_path / "site" / "policy.yaml") in site.daemon.log.read_text()

    # upload_image: a member may no longer PUT data, even into its own project's image ...
    mine = await site.new_image("member")
    status, body = await site.upload("member", mine)
    assert status == 403, body
    assert "Policy doesn't allow upload_image to be performed" in body["message"]
    assert "(it needs role:admin)" in body["message"]
    assert (await site.image(mine))["status"] == "queued"
    # ... an administrator may ...
    assert (await site.upload("admin", await site.new_image("admin")))[0] == 204
    # ... and the member goes through the import workflow, which upload_image does not govern.
    await site.ok("member", "PUT", "/v2/images/%s/stage" % mine, 204, data=io.BytesIO(b"staged"), headers=OCTET)
    await site.ok("member", "POST", "/v2/images/%s/import" % mine, 202, json={"method": {"name": "glance-direct"}})
    await eventually(lambda: _has_status(site, mine, "active"), "the imported image active", within=20)

    # copy_image: the owner copies its image to another store (the default is administrators only) ...
    copy = {"method": {"name": "copy-image"}, "stores": ["fast"]}
    await site.ok("member", "POST", "/v2/images/%s/import" % mine, 202, json=copy)
    await eventually(lambda: _in_store(site, mine, "fast"), "the owner's copy in store fast", within=20)
    # ... another project's member may not copy an image it sees but does not own.
    public = await site.new_image("admin", visibility="public")
    assert (await site.upload("admin", public))[0] == 204
    status, body = await site.call("other", "POST", "/v2/images/%s/import" % public, json=copy)
    assert status == 403, body
    assert "Policy doesn't allow copy_image to be performed" in body["message"]
    assert "project_id:%(project_id)s" in body["message"]


async def _has_status(site: Site, image_id: str, status: str) -> bool:
    return (await site.image(image_id))["status"] == status


async def _in_store(site: Site, image_id: str, store: str) -> bool:
    return store in (await site.image(image_id))["stores"].split(",")


def reloads(daemon: Daemon, outcome: str) -> int:
    return daemon.log.read_text().count(outcome)


def sighup(daemon: Daemon, outcome: str) -> str:
    """Send SIGHUP and wait until the daemon logs `outcome` once more; returns the log."""
    before = reloads(daemon, outcome)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: reloads(daemon, outcome) > before, "the daemon to log %r" % outcome)
    return daemon.log.read_text()


async def test_sighup_tightens_keeps_and_loosens(
    tmp_path: Path, daemon_factory: Callable[..., Daemon], session: aiohttp.ClientSession
) -> None:
    policy_file = tmp_path / "site" / "policy.yaml"
    policy_file.parent.mkdir()
    policy_file.write_text("# Glance's defaults for now\n")
    site = Site(daemon_factory("site", site_config(tmp_path)), session)
    assert await site.member_upload_status() == 204

    # tightened
    policy_file.write_text('"upload_image": "role:admin"\n')
    sighup(site.daemon, "reload applied")
    assert await site.member_upload_status() == 403

    # an invalid file (it would also loosen upload_image) is refused whole: the rules stay
    policy_file.write_text('"upload_image": ""\n"copy_image": "role:admin or (role:member and"\n')
    log = sighup(site.daemon, "reload refused")
    refused = [line for line in log.splitlines() if "reload refused" in line][-1]
    assert "policy file %s line 2: rule copy_image:" % policy_file in refused, refused
    assert "a check is missing after 'and'" in refused, refused
    assert await site.member_upload_status() == 403

    # an unknown rule: reference is refused too, naming the rule and its line
    policy_file.write_text('"upload_image": ""\n"deactivate": "rule:admins_only"\n')
    log = sighup(site.daemon, "reload refused")
    assert "policy file %s line 2: rule deactivate: rule:admins_only names no rule" % policy_file in log
    assert await site.member_upload_status() == 403

    # loosened; an entry naming no rule of ours is a warning, not an error
    policy_file.write_text('"upload_image": "role:member"\n"tasks_api_access": "role:admin"\n')
    log = sighup(site.daemon, "reload applied")
    assert "line 2: tasks_api_access is not a rule this appliance checks" in log
    assert await site.member_upload_status() == 204


def test_an_invalid_file_refuses_the_start(tmp_path: Path) -> None:
    state = tmp_path / "site"
    state.mkdir()
    (state / "policy.yaml").write_text('"upload_image": "role:admin"\n"copy_image": "role:admin role:member"\n')
    with pytest.raises(RuntimeError) as info:
        start_daemon(state, site_config(tmp_path))
    assert "daemon exited with 2" in str(info.value)
    expected = "policy file %s line 2: rule copy_image: expected 'and' or 'or' before 'role:member'" % (
        state / "policy.yaml"
    )
    assert expected in str(info.value)


# -- the CLI ----------------------------------------------------------------------------------

# 16.2's policy.json opened the metadata definitions to everyone; 17.1 closes writes to admins.
METADEF_OPEN = """{
    "add_metadef_namespace": "",
    "modify_metadef_namespace": "",
    "delete_metadef_namespace": "",
    "add_metadef_object": "",
    "add_metadef_property": "",
    "add_metadef_tag": "",
    "add_metadef_tags": "",
    "add_metadef_resource_type_association": ""
}
"""
METADEF_CLOSED = """"metadef_admin": "role:admin"
"add_metadef_namespace": "rule:metadef_admin"
"""


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_BIN / "edge-appliance"), "policy", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def listed(out: str) -> dict[str, tuple[str, str]]:
    """`policy list` lines: name → (check string, origin)."""
    rules = {}
    for line in out.splitlines():
        name, _, rest = line.partition(" ")
        text, _, origin = rest.strip().rpartition("  [")
        rules[name] = (text, origin.rstrip("]"))
    return rules


def test_policy_list_shows_every_rule_and_its_origin(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(SEEDS)
    config = site_config(tmp_path)
    done = cli("list", "--config", config, "--state-dir", tmp_path)
    assert done.returncode == 0, done.stderr
    rules = listed(done.stdout)
    path = tmp_path / "policy.yaml"
    assert rules["upload_image"] == ("role:admin", "%s:2" % path)
    assert rules["copy_image"] == ("role:admin or (role:member and project_id:%(project_id)s)", "%s:4" % path)
    assert rules["modify_image"] == ("rule:context_is_admin or (role:member and project_id:%(project_id)s)", "default")
    assert rules["default"] == ('""', "default")
    assert rules["context_is_admin"] == ("role:admin", "default")
    assert rules["edge:site_heartbeat"][1] == "default"
    assert rules["add_metadef_namespace"] == ("rule:metadef_admin", "default")
    assert len(rules) > 60  # Glance's image, member, task, cache, discovery and metadef rules and ours


def test_metadef_overrides_parse_and_show(tmp_path: Path) -> None:
    opened = tmp_path / "metadef-open.json"
    opened.write_text(METADEF_OPEN)
    closed = tmp_path / "metadef-closed.yaml"
    closed.write_text(METADEF_CLOSED)
    rules = listed(cli("list", "--policy-file", opened).stdout)
    assert rules["add_metadef_namespace"] == ('""', "%s:2" % opened)
    assert rules["add_metadef_resource_type_association"] == ('""', "%s:9" % opened)
    assert rules["get_metadef_namespace"][1] == "default"
    member = ("--roles", "member,reader", "--project", "p1")
    assert cli("check", "add_metadef_namespace", *member, "--policy-file", opened).returncode == 0
    rules = listed(cli("list", "--policy-file", closed).stdout)
    assert rules["metadef_admin"] == ("role:admin", "%s:1" % closed)
    assert rules["add_metadef_namespace"] == ("rule:metadef_admin", "%s:2" % closed)
    assert cli("check", "add_metadef_namespace", *member, "--policy-file", closed).returncode == 1


def test_policy_check_answers_allow_or_deny(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(SEEDS)
    source = ("--config", str(site_config(tmp_path)), "--state-dir", str(tmp_path))
    denied = cli("check", "upload_image", "--roles", "member", "--project", "p1", *source)
    assert (denied.returncode, denied.stdout.split()[0]) == (1, "deny"), denied
    assert "upload_image: role:admin  [%s:2]" % (tmp_path / "policy.yaml") in denied.stdout
    allowed = cli("check", "upload_image", "--roles", "admin", "--project", "p1", *source)
    assert (allowed.returncode, allowed.stdout.split()[0]) == (0, "allow"), allowed
    # without the file: Glance's default lets the project's member upload
    assert cli("check", "upload_image", "--roles", "member", "--project", "p1").returncode == 0
    # a target: copy_image on p1's image, by p1's member and by p2's
    owner = cli("check", "copy_image", "--roles", "member", "--project", "p1", "--target", "project_id=p1", *source)
    assert owner.returncode == 0, owner
    stranger = cli("check", "copy_image", "--roles", "member", "--project", "p2", "--target", "project_id=p1", *source)
    assert stranger.returncode == 1, stranger
    # --user: a site's own token is the site
    site = ("--roles", "edge-site", "--project", "edge-sites", "--user", "dcn0", "--target", "site=dcn0")
    assert cli("check", "edge:site_heartbeat", *site).returncode == 0


def test_policy_check_refusals_exit_2(tmp_path: Path) -> None:
    unknown = cli("check", "upload_images", "--roles", "admin", "--project", "p1")
    assert unknown.returncode == 2
    assert "upload_images is not a rule" in unknown.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text('"upload_image": "role:admin"\n"deactivate": "rule:nobody"\n')
    for args in (("list",), ("check", "upload_image", "--roles", "admin", "--project", "p1")):
        done = cli(*args, "--policy-file", bad)
        assert done.returncode == 2, done
        assert "policy file %s line 2: rule deactivate: rule:nobody names no rule" % bad in done.stderr
        assert done.stdout == ""
    target = cli("check", "copy_image", "--roles", "admin", "--project", "p1", "--target", "project_id")
    assert target.returncode == 2 and "expected KEY=VALUE" in target.stderr
