"""Glance's location API through the stock `glance` CLI against a real daemon: `locations` and
`direct_url` in image-show under show_multiple_locations / show_image_direct_url (owner and
administrators only), location-add of an http URL that downloads then read through, and
location-delete of the site's own copy."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.clients.test_glance_cli import Glance, as_dict
from tests.clients.test_glance_import import WebRoot, web  # noqa: F401  (the fixture)
from tests.conftest import Daemon, write_toml
from tests.ondisk import flip_bit
from tests.waiting import wait_for

pytestmark = pytest.mark.clients

TOKENS = {
    "admin": ("tok-admin", "root", "admin", ["admin", "member", "reader"]),
    "owner": ("tok-owner", "mia", "p1", ["member", "reader"]),
    "other": ("tok-other", "otto", "p2", ["member", "reader"]),
    "service": ("tok-service", "cinder", "service", ["service"]),  # Glance's service_api
}


class As(Glance):
    """The CLI with one of TOKENS."""

    def __init__(self, daemon: Daemon, who: str) -> None:
        super().__init__(daemon)
        self.token = TOKENS[who][0]

    def run(self, *args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return super().run(*args, token=token or self.token, timeout=timeout)


def config(tmp_path: Path, port: int, scrub_every: int = 86400, **api: bool) -> Path:
    return write_toml(
        tmp_path / ("loc-%s.toml" % "-".join(sorted(k for k, v in api.items() if v)) or "off"),
        {
            "stores": {"default": "local", "local": {"path": "images"}},
            "auth": {"tokens": [{"token": t, "user": u, "project": p, "roles": r} for t, u, p, r in TOKENS.values()]},
            "import": {"uri_filter": {"allowed_hosts": ["127.0.0.0/8"], "allowed_ports": [port]}},
            "api": api,
            "scrubber": {"interval": scrub_every, "rate_mib_per_s": 1000},
        },
    )


def shown(glance: As, image_id: str) -> dict[str, str]:
    return as_dict(glance.ok("image-show", "--max-column-width", "4096", image_id))


def create(glance: As, path: Path, *extra: str) -> str:
    out = glance.ok(
        "image-create",
        "--name",
        "loc",
        "--disk-format",
        "raw",
        "--container-format",
        "bare",
        "--file",
        str(path),
        *extra,
    )
    return as_dict(out)["id"]


def download(glance: As, image_id: str, tmp_path: Path) -> bytes:
    out = tmp_path / ("dl-%s" % os.urandom(4).hex())
    glance.ok("image-download", "--file", str(out), image_id)  # glanceclient checks the checksums
    return out.read_bytes()


def test_locations_shown_added_read_through_and_deleted(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    daemon = daemon_factory(
        "site", config(tmp_path, web.port, show_multiple_locations=True, show_image_direct_url=True)
    )
    admin, owner, other = As(daemon, "admin"), As(daemon, "owner"), As(daemon, "other")
    data = b"RAWDISK\0" + os.urandom((1 << 20) + 17)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    image_id = create(owner, path, "--visibility", "community")

    # The owner sees its copy's location and direct_url; another project sees none.
    mine = shown(owner, image_id)
    store_url = mine["direct_url"]
    assert store_url.startswith("file://") and store_url.endswith(image_id), mine
    assert json.loads(mine["locations"]) == [{"url": store_url, "metadata": {"store": "local"}}]
    theirs = shown(other, image_id)
    assert theirs["locations"] == "[]" and "direct_url" not in theirs, theirs

    # An http location must serve the image's bytes, and pass the URI filter.
    url = web.add("disk.raw", data)
    short = web.add("short.raw", data[:-1])
    assert "serves %d bytes, but image %s has %d" % (len(data) - 1, image_id, len(data)) in admin.fails(
        "location-add", "--url", short, image_id
    )
    refused = admin.fails("location-add", "--url", "http://169.254.169.254/d", image_id)
    assert "Location http://169.254.169.254/d refused ([import.uri_filter]): host 169.254.169.254 is not in" in refused
    assert "No store can serve" in admin.fails("location-add", "--url", "swift://c/o", image_id)
    admin.ok("location-add", "--url", url, "--metadata", '{"mirror": "web"}', image_id)
    both = shown(owner, image_id)
    assert json.loads(both["locations"]) == [
        {"url": store_url, "metadata": {"store": "local"}},
        {"url": url, "metadata": {"mirror": "web", "store": "http"}},
    ]
    assert set(both["stores"].split(",")) == {"local", "http"}

    # Deleting a location is the administrator's (delete_image_location), and deletes the copy.
    assert "delete_image_location" in owner.fails("location-delete", "--url", store_url, image_id)
    admin.ok("location-delete", "--url", store_url, image_id)
    left = shown(owner, image_id)
    assert left["direct_url"] == url and left["stores"] == "http", left
    assert not Path(urlsplit(store_url).path).exists()
    # The last location stays (Glance: 403).
    assert "Cannot remove last location in the image." in admin.fails("location-delete", "--url", url, image_id)

    # The bytes now come through the http location, ranges cut from the stream.
    assert download(other, image_id, tmp_path) == data
    req = urllib.request.Request(
        "%s/v2/images/%s/file" % (daemon.url, image_id),
        headers={"X-Auth-Token": TOKENS["other"][0], "Range": "bytes=1000-70000"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 206 and resp.headers["Content-Range"] == "bytes 1000-70000/%d" % len(data)
        assert resp.read() == data[1000:70001]
    assert hashlib.sha512(data).hexdigest() == left["os_hash_value"]

    # The site's own store URL comes back only where its data is.
    assert "holds no data of image" in admin.fails("location-add", "--url", store_url, image_id)
    owner.ok("image-delete", image_id)  # an http location is no store's to clean up
    assert "404 Not Found" in owner.fails("image-show", image_id)


def test_locations_hidden_and_unchangeable_by_default(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    daemon = daemon_factory("site", config(tmp_path, web.port))
    admin = As(daemon, "admin")
    path = tmp_path / "disk.raw"
    path.write_bytes(b"RAWDISK\0" + os.urandom(4096))
    image_id = create(admin, path)
    body = shown(admin, image_id)
    assert "locations" not in body and "direct_url" not in body, body
    url = web.add("disk.raw", path.read_bytes())
    err = admin.fails("location-add", "--url", url, image_id)
    assert "It's not allowed to add locations if locations are invisible." in err


def test_a_quarantined_copy_leaves_the_image_at_once(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    """The scrubber finds a flipped bit: the copy leaves locations and stores; with another copy
    (an http location) the image is read from it, and an image whose only copy it was has no
    data (Glance answers 204, which the CLI reports as no data)."""
    daemon = daemon_factory("site", config(tmp_path, web.port, scrub_every=1, show_multiple_locations=True))
    admin = As(daemon, "admin")
    data = b"RAWDISK\0" + os.urandom(300_000)
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    mirrored, alone = create(admin, path), create(admin, path)
    admin.ok("location-add", "--url", web.add("disk.raw", data), mirrored)
    for image_id in (mirrored, alone):
        flip_bit(Path(urlsplit(_store_url(admin, image_id)).path), 4321)
    wait_for(
        lambda: all(_api_show(daemon, i).get("stores", "") in ("http", "") for i in (mirrored, alone)), "quarantine"
    )
    left = shown(admin, mirrored)
    assert left["stores"] == "http" and [loc["url"] for loc in json.loads(left["locations"])] == [web.url("disk.raw")]
    assert download(admin, mirrored, tmp_path) == data
    gone = shown(admin, alone)
    assert gone["status"] == "active" and "stores" not in gone and gone["locations"] == "[]", gone
    result = admin.run("image-download", "--file", str(tmp_path / "none"), alone)
    assert result.returncode != 0 and "has no data" in result.stderr, result


def _store_url(glance: As, image_id: str) -> str:
    return str(json.loads(shown(glance, image_id)["locations"])[0]["url"])


def _api_show(daemon: Daemon, image_id: str) -> dict[str, Any]:
    req = urllib.request.Request(
        "%s/v2/images/%s" % (daemon.url, image_id), headers={"X-Auth-Token": TOKENS["admin"][0]}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.load(resp))
