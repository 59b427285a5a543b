"""The hub link and bundle commands with Keystone credentials instead of static tokens: a hub
and an edge as daemon processes that both validate tokens at the session's real Keystone; the
edge knows only Keystone's auth_url and finds the hub as the image endpoint of the hub's region.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import Daemon, start_daemon, write_toml
from tests.keystone import Keystone
from tests.waiting import wait_for

HUB_REGION = "HubRegion"
FAST = {"mirror_interval": 1, "heartbeat_interval": 1, "sync_interval": 1, "read_timeout": 5, "connect_timeout": 2}


def keystone_section(keystone: Keystone, user: str, password: str) -> dict[str, object]:
    return {
        "auth_url": keystone.auth_url,
        "username": user,
        "password": password,
        "project_name": "service",
        "interface": "internal",
    }


def get(daemon: Daemon, path: str, token: str) -> bytes:
    request = urllib.request.Request(daemon.url + path, headers={"X-Auth-Token": token, "Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return bytes(resp.read())


def test_an_edge_finds_its_hub_in_the_catalog_and_talks_to_it_with_keystone_tokens(
    keystone: Keystone, tmp_path: Path
) -> None:
    earlier = set(keystone.validated_subjects())  # the session's Keystone: other tests' tokens
    keystone.create_user("central-glance", "central-secret", "service", ["service"])
    keystone.create_user("dcn-ks", "dcn-secret", "service", ["admin", "service"])
    hub = start_daemon(
        tmp_path / "hub",
        write_toml(
            tmp_path / "hub.toml",
            {
                "site": {"name": "central", "role": "hub"},
                # The edge's token is asked about again after a second (the revocation below).
                "keystone": {**keystone_section(keystone, "central-glance", "central-secret"), "token_cache_time": 1},
                "hub": {"heartbeat_interval": 1},
                "scrubber": {"enabled": False},
            },
        ),
    )
    edge: Daemon | None = None
    try:
        keystone.register_image_endpoint(hub.url, HUB_REGION)
        data = os.urandom(200_000)
        admin = keystone.admin_token()
        request = urllib.request.Request(
            hub.url + "/v2/images",
            data=json.dumps({"name": "from-central", "disk_format": "raw", "container_format": "bare"}).encode(),
            headers={"X-Auth-Token": admin, "Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            image = json.loads(resp.read())
        upload = urllib.request.Request(
            hub.url + "/v2/images/%s/file" % image["id"],
            data=data,
            headers={"X-Auth-Token": admin, "Content-Type": "application/octet-stream"},
            method="PUT",
        )
        urllib.request.urlopen(upload, timeout=30).close()

        edge = start_daemon(
            tmp_path / "dcn0",
            write_toml(
                tmp_path / "dcn0.toml",
                {
                    "site": {"name": "dcn0"},
                    "keystone": keystone_section(keystone, "dcn-ks", "dcn-secret"),
                    "hub": {"keystone": True, "region_name": HUB_REGION, **FAST},
                    "cache": {"min_free_bytes": 0},
                    "scrubber": {"enabled": False},
                },
            ),
        )
        assert (edge.state_dir / "hub-endpoint").read_text().strip() == hub.url
        # The edge registered with the hub as its Keystone user, and mirrors the hub's images.
        wait_for(
            lambda: "dcn0" in [s["name"] for s in json.loads(get(hub, "/v2/edge/sites", admin))["sites"]],
            "the edge registers with the hub",
        )
        wait_for(lambda: b"from-central" in get(edge, "/v2/images", edge.token), "the edge mirrors the hub")
        # ... and pulls its data through with its Keystone token.
        assert get(edge, "/v2/images/%s/file" % image["id"], edge.token) == data
        (edge_token,) = set(keystone.validated_subjects()) - earlier - {admin}  # the hub validated it

        # A bundle exported from the hub found through the catalog, with password auth.
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update(keystone.os_env("admin", keystone.admin_password, "admin"))
        env["OS_REGION_NAME"] = HUB_REGION
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "edge-appliance"),
                "bundle",
                "export",
                image["id"],
                "-o",
                str(tmp_path / "central.bundle"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "1 image(s), %d bytes" % len(data) in result.stdout

        # The edge's own token revoked: the hub refuses it, and the edge takes a new one.
        known = set(keystone.validated_subjects())
        keystone.revoke(edge_token)
        wait_for(
            lambda: "refused this site's Keystone token" in edge.log.read_text(), "the hub refuses the revoked token"
        )
        wait_for(
            lambda: set(keystone.validated_subjects()) - known, "the edge authenticates to the hub with a new token"
        )
        wait_for(
            lambda: json.loads(get(hub, "/v2/edge/sites/dcn0", admin))["online"],
            "the edge's heartbeats reach the hub again",
        )
    finally:
        if edge is not None:
            edge.stop()
        hub.stop()
