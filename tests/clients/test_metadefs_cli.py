"""Metadata definitions through the stock clients: `glance md-*` and `openstack image metadef
namespace ...` against a real daemon (admin and a member's static tokens)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.test_metadefs import ADMIN, TOKENS, md_config
from tests.clients.test_glance_cli import Glance, as_dict, as_records
from tests.conftest import VENV_BIN, Daemon, write_toml

pytestmark = [pytest.mark.clients, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]


@pytest.fixture
def site(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory("site", write_toml(tmp_path / "md.toml", md_config(tmp_path / "site")))


def test_glance_md_commands(site: Daemon) -> None:
    glance = Glance(site)
    shown = as_dict(
        glance.ok(
            "md-namespace-create",
            "OS::Test::CLI",
            "--display-name",
            "CLI test",
            "--description",
            "made by glance",
            "--visibility",
            "public",
        )
    )
    assert shown["namespace"] == "OS::Test::CLI" and shown["visibility"] == "public"
    listed = as_records(glance.ok("md-namespace-list"))
    assert [r["namespace"] for r in listed] == ["OS::Test::CLI"]
    updated = as_dict(glance.ok("md-namespace-update", "OS::Test::CLI", "--description", "changed"))
    assert updated["description"] == "changed"

    glance.ok("md-object-create", "OS::Test::CLI", "--name", "Obj", "--schema", '{"description": "an object"}')
    assert [r["name"] for r in as_records(glance.ok("md-object-list", "OS::Test::CLI"))] == ["Obj"]
    assert as_dict(glance.ok("md-object-show", "OS::Test::CLI", "Obj"))["description"] == "an object"
    glance.ok("md-object-update", "OS::Test::CLI", "Obj", "--name", "Obj2")
    glance.ok("md-object-delete", "OS::Test::CLI", "Obj2")
    assert "Obj2" in glance.fails("md-object-show", "OS::Test::CLI", "Obj2")

    glance.ok(
        "md-property-create",
        "OS::Test::CLI",
        "--name",
        "speed",
        "--title",
        "Speed",
        "--type",
        "integer",
        "--schema",
        "{}",
    )
    assert [r["name"] for r in as_records(glance.ok("md-property-list", "OS::Test::CLI"))] == ["speed"]
    assert as_dict(glance.ok("md-property-show", "OS::Test::CLI", "speed"))["type"] == "integer"
    glance.ok("md-property-update", "OS::Test::CLI", "speed", "--title", "Velocity")
    assert as_dict(glance.ok("md-property-show", "OS::Test::CLI", "speed"))["title"] == "Velocity"
    glance.ok("md-property-delete", "OS::Test::CLI", "speed")

    # (This glanceclient's --append sends a boolean header value, which its own HTTP layer cannot
    # encode, so appending is tested over HTTP in tests/api/test_metadefs.py.)
    glance.ok("md-tag-create-multiple", "OS::Test::CLI", "--names", "two,three", "--delim", ",")
    glance.ok("md-tag-create", "OS::Test::CLI", "--name", "one")
    # Newest first, as Glance lists a namespace's tags by default (created_at, descending).
    assert [r["name"] for r in as_records(glance.ok("md-tag-list", "OS::Test::CLI"))] == ["one", "three", "two"]
    glance.ok("md-tag-update", "OS::Test::CLI", "one", "--name", "uno")
    assert as_dict(glance.ok("md-tag-show", "OS::Test::CLI", "uno"))["name"] == "uno"
    glance.ok("md-tag-delete", "OS::Test::CLI", "uno")
    # Without --append the names given replace the namespace's tags.
    glance.ok("md-tag-create-multiple", "OS::Test::CLI", "--names", "four", "--delim", ",")
    assert [r["name"] for r in as_records(glance.ok("md-tag-list", "OS::Test::CLI"))] == ["four"]

    glance.ok("md-resource-type-associate", "OS::Test::CLI", "--name", "OS::Glance::Image", "--prefix", "t_")
    assert "OS::Glance::Image" in [r["name"] for r in as_records(glance.ok("md-resource-type-list"))]
    assocs = as_records(glance.ok("md-namespace-resource-type-list", "OS::Test::CLI"))
    assert [(r["name"], r["prefix"]) for r in assocs] == [("OS::Glance::Image", "t_")]
    glance.ok("md-resource-type-deassociate", "OS::Test::CLI", "OS::Glance::Image")

    # A member reads the public namespace and is refused a change (17.1: administrators only).
    member = TOKENS["alpha"][0]
    assert glance.run("md-namespace-show", "OS::Test::CLI", token=member).returncode == 0
    refused = glance.run("md-namespace-create", "mine", token=member)
    assert refused.returncode != 0 and "403" in refused.stderr, refused.stderr

    glance.ok("md-namespace-delete", "OS::Test::CLI")
    assert as_records(glance.ok("md-namespace-list")) == []


def openstack(site: Daemon, *args: str, token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    cmd = [
        str(VENV_BIN / "openstack"),
        "--os-auth-type",
        "admin_token",
        "--os-endpoint",
        site.url + "/v2",  # with admin_token, the SDK takes the endpoint as the versioned base
        "--os-token=" + token,  # one argument: a token may start with "-"
        "--os-image-api-version",
        "2",
        *args,
    ]
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)


def osc_ok(site: Daemon, *args: str) -> str:
    result = openstack(site, *args)
    assert result.returncode == 0, "openstack %s failed:\n%s%s" % (" ".join(args), result.stdout, result.stderr)
    return result.stdout


def test_openstack_image_metadef_namespace_commands(site: Daemon) -> None:
    created = json.loads(
        osc_ok(
            site,
            "image",
            "metadef",
            "namespace",
            "create",
            "--public",
            "--description",
            "by osc",
            "-f",
            "json",
            "OS::Test::OSC",
        )
    )
    assert created["namespace"] == "OS::Test::OSC"
    listed = json.loads(osc_ok(site, "image", "metadef", "namespace", "list", "-f", "json"))
    assert [n["namespace"] for n in listed] == ["OS::Test::OSC"]
    shown = json.loads(osc_ok(site, "image", "metadef", "namespace", "show", "-f", "json", "OS::Test::OSC"))
    assert shown["description"] == "by osc" and shown["visibility"] == "public"
    osc_ok(site, "image", "metadef", "namespace", "delete", "OS::Test::OSC")
    assert json.loads(osc_ok(site, "image", "metadef", "namespace", "list", "-f", "json")) == []
