"""Locations that give a queued image its data, as Glance 33 takes them, through the stock
`glance` CLI and openstacksdk against a real daemon and a real web server: `location-add` (PATCH)
on a queued image, several http locations on one image, and the add-location API (POST
/v2/images/ID/locations, `glance add-location`, `add_image_location`) with its background hashing
and validation data; GET /locations for service users (`fetch_image_location`)."""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clients.test_glance_import import WebRoot, web  # noqa: F401  (the fixture)
from tests.clients.test_glance_locations import TOKENS, As, config, download, shown
from tests.clients.test_openstacksdk import connect
from tests.conftest import Daemon
from tests.waiting import wait_for

pytestmark = [pytest.mark.clients, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack")]


def call(daemon: Daemon, who: str, method: str, path: str, body: Any = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    hdrs = {"X-Auth-Token": TOKENS[who][0], "Accept": "application/json", **headers}
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(daemon.url + path, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def queued(daemon: Daemon, who: str = "owner", visibility: str = "private") -> str:
    body = {"name": "q", "disk_format": "raw", "container_format": "bare", "visibility": visibility}
    status, doc = call(daemon, who, "POST", "/v2/images", body)
    assert status == 201, doc
    return str(doc["id"])


def image(daemon: Daemon, image_id: str) -> dict[str, Any]:
    status, doc = call(daemon, "admin", "GET", "/v2/images/%s" % image_id)
    assert status == 200, doc
    return dict(doc)


PATCH = {"Content-Type": "application/openstack-images-v2.1-json-patch"}


def add_patch(url: str, **validation: str) -> list[dict[str, Any]]:
    value: dict[str, Any] = {"url": url, "metadata": {}}
    if validation:
        value["validation_data"] = validation
    return [{"op": "add", "path": "/locations/-", "value": value}]


def test_a_queued_image_takes_an_http_location_as_its_data(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    daemon = daemon_factory("site", config(tmp_path, web.port, show_multiple_locations=True))
    owner, admin = As(daemon, "owner"), As(daemon, "admin")
    data = b"RAWDISK\0" + os.urandom(200_000)
    url = web.add("disk.raw", data)

    # glance location-add on a queued image: active at once, the size the URL serves, no checksums.
    image_id = queued(daemon)
    owner.ok("location-add", "--url", url, image_id)
    body = shown(owner, image_id)
    assert body["status"] == "active" and body["size"] == str(len(data)), body
    assert json.loads(body["locations"]) == [{"url": url, "metadata": {"store": "http"}}]
    assert download(owner, image_id, tmp_path) == data

    # Several http locations, as Glance allows; the same URL twice is refused.
    second = web.add("copy.raw", data)
    admin.ok("location-add", "--url", second, image_id)
    assert [loc["url"] for loc in json.loads(shown(owner, image_id)["locations"])] == [url, second]
    assert "The location %s already exists" % second in admin.fails("location-add", "--url", second, image_id)
    admin.ok("location-delete", "--url", url, image_id)
    assert [loc["url"] for loc in json.loads(shown(owner, image_id)["locations"])] == [second]
    assert download(owner, image_id, tmp_path) == data  # read through the other one

    # With validation data (glance location-add --checksum --hash-algo --hash-value) the image
    # takes those checksums; Glance's checks on them are 409s.
    md5, sha512 = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()
    checked = queued(daemon)
    owner.ok("location-add", "--url", url, "--checksum", md5, "--hash-algo", "sha512", "--hash-value", sha512, checked)
    got = image(daemon, checked)
    assert (got["status"], got["checksum"], got["os_hash_algo"], got["os_hash_value"]) == (
        "active",
        md5,
        "sha512",
        sha512,
    )
    assert download(owner, checked, tmp_path) == data  # glanceclient verifies the checksums it was given
    refused = queued(daemon)
    for validation, message in (
        ({"os_hash_algo": "sha256", "os_hash_value": hashlib.sha256(data).hexdigest()}, "os_hash_algo must be sha512"),
        ({"os_hash_algo": "sha512", "os_hash_value": "zz"}, "is not a valid hexadecimal value"),
        ({"os_hash_algo": "sha512", "os_hash_value": md5}, "is not the correct size for sha512"),
        ({"checksum": "x" * 32, "os_hash_algo": "sha512", "os_hash_value": sha512}, "is not a valid hexadecimal"),
    ):
        status, doc = call(daemon, "owner", "PATCH", "/v2/images/%s" % refused, add_patch(url, **validation), **PATCH)
        assert status == 409 and message in doc["message"], (validation, status, doc)
    status, doc = call(
        daemon,
        "owner",
        "PATCH",
        "/v2/images/%s" % checked,
        add_patch(second, checksum="0" * 32, os_hash_algo="sha512", os_hash_value=sha512),
        **PATCH,
    )
    assert status == 409 and "checksum is already set with a different value" in doc["message"], doc
    assert image(daemon, refused)["status"] == "queued"

    # A URL that serves nothing cannot be a queued image's data; the image stays queued.
    status, doc = call(daemon, "owner", "PATCH", "/v2/images/%s" % refused, add_patch(web.url("missing.raw")), **PATCH)
    assert status == 400, doc
    left = image(daemon, refused)
    assert left["status"] == "queued" and left["locations"] == [] and left["size"] is None, left


def test_concurrent_location_adds_to_one_queued_image_give_it_one_location(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    # Two adds race for one queued image: one wins, the other is 409, never two data sources
    # with one size, or an image left importing. Repeated.
    import concurrent.futures

    daemon = daemon_factory("site", config(tmp_path, web.port, show_multiple_locations=True))
    data = os.urandom(100_000)
    urls = [web.add("a.raw", data), web.add("b.raw", data)]
    for _ in range(5):
        image_id = queued(daemon)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            answers = list(
                pool.map(
                    lambda url, i=image_id: call(
                        daemon, "owner", "PATCH", "/v2/images/%s" % i, add_patch(url), **PATCH
                    )[0],
                    urls,
                )
            )
        assert sorted(answers) in ([200, 200], [200, 409]), answers
        body = image(daemon, image_id)
        assert body["status"] == "active" and body["size"] == len(data), body
        assert len(body["locations"]) == answers.count(200), body


def test_the_add_location_api_hashes_the_data_in_the_background(
    tmp_path: Path,
    daemon_factory: Callable[..., Daemon],
    web: WebRoot,  # noqa: F811
) -> None:
    daemon = daemon_factory("site", config(tmp_path, web.port))
    data = b"RAWDISK\0" + os.urandom(3 << 20)
    url = web.add("disk.raw", data)
    md5, sha512 = hashlib.md5(data).hexdigest(), hashlib.sha512(data).hexdigest()

    # The stock CLI (image API 2.17): active, then its checksums computed from the data.
    owner = As(daemon, "owner")
    image_id = queued(daemon)
    owner.ok("add-location", "--url", url, image_id)
    wait_for(lambda: image(daemon, image_id).get("os_hash_value") == sha512, "the background hash")
    got = image(daemon, image_id)
    assert (got["status"], got["size"], got["checksum"], got["os_hash_algo"]) == ("active", len(data), md5, "sha512")
    assert download(owner, image_id, tmp_path) == data

    # openstacksdk's add_image_location with validation data: importing while it is hashed,
    # active if the hash matches.
    conn = connect(daemon, TOKENS["owner"][0])
    sha256 = hashlib.sha256(data).hexdigest()
    checked = queued(daemon)
    conn.image.add_image_location(checked, url, validation_data={"os_hash_algo": "sha256", "os_hash_value": sha256})
    wait_for(lambda: image(daemon, checked)["status"] == "active", "the checked location to go active")
    got = image(daemon, checked)
    assert (got["os_hash_algo"], got["os_hash_value"], got["checksum"]) == ("sha256", sha256, md5)

    # A hash that does not match: queued again, without the location.
    wrong = queued(daemon)
    status, doc = call(
        daemon,
        "owner",
        "POST",
        "/v2/images/%s/locations" % wrong,
        {"url": url, "validation_data": {"os_hash_algo": "sha256", "os_hash_value": "0" * 64}},
    )
    assert status == 202 and doc is None, doc
    wait_for(lambda: image(daemon, wrong)["status"] == "queued", "the mismatch to put the image back")
    assert image(daemon, wrong).get("size") is None

    # Glance's refusals.
    path = "/v2/images/%s/locations" % wrong
    for who, body, expect, message in (
        ("owner", {"url": url}, 409, None),  # checked below on an active image
        ("owner", {"url": "file:///etc/passwd"}, 403, "http store must be enabled to use location API by normal user."),
        ("owner", {"url": "http://127.0.0.1:1/d"}, 400, "URI for add location does not pass filtering"),
        ("owner", {"url": url, "validation_data": {"os_hash_algo": "sha256"}}, 400, "go together"),
        ("owner", {"url": url, "validation_data": {"os_hash_algo": "md4", "os_hash_value": "00"}}, 400, "md4"),
        ("owner", {"url": url, "validation_data": {"os_hash_algo": "md5", "os_hash_value": "00"}}, 400, "correct size"),
        ("owner", {"url": url, "validation_data": {"checksum": md5}}, 400, "validation_data"),
        ("other", {"url": url}, 404, None),  # a private image of another project
        ("service", {"url": url}, 404, None),
    ):
        target = "/v2/images/%s/locations" % image_id if expect == 409 else path
        status, doc = call(daemon, who, "POST", target, body)
        assert status == expect, (who, body, status, doc)
        if message:
            assert message in doc["message"], (message, doc)
    assert (
        "It's not allowed to add locations if image status is active."
        in call(daemon, "owner", "POST", "/v2/images/%s/locations" % image_id, {"url": url})[1]["message"]
    )
    community = queued(daemon, visibility="community")
    status, doc = call(daemon, "other", "POST", "/v2/images/%s/locations" % community, {"url": url})
    assert status == 403 and "add_image_location" in doc["message"], doc

    # GET /locations: service users (fetch_image_location) and the owner's readers; not others.
    status, listed = call(daemon, "service", "GET", "/v2/images/%s/locations" % image_id)
    assert status == 404  # a private image: a service user of another project does not see it
    shared = queued(daemon, visibility="community")
    call(daemon, "owner", "POST", "/v2/images/%s/locations" % shared, {"url": url})
    wait_for(lambda: image(daemon, shared)["status"] == "active", "the community image to go active")
    status, listed = call(daemon, "service", "GET", "/v2/images/%s/locations" % shared)
    assert status == 200 and listed == [{"url": url, "metadata": {"store": "http"}}], listed
    assert [loc.url for loc in conn.image.image_locations(shared)] == [url]
    assert call(daemon, "other", "GET", "/v2/images/%s/locations" % shared)[0] == 403
