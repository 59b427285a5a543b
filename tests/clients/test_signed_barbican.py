"""Signed images whose certificates live in OpenStack Barbican ([signatures] key_manager =
"barbican"), against a real daemon, the session's real Keystone and a real Barbican
(tests/barbican.py), found through Keystone's catalog as Glance finds it through castellan.

The certificate is stored as a Barbican secret by its owner (secret_type certificate, as Glance's
guide stores it); the daemon reads it with the uploader's Keystone token, or with its own when
auth_type = "keystone_password". A certificate that cannot be had leaves the image out of
`active` with a message naming the check that failed and why.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.barbican import Barbican
from tests.barbican import barbican as barbican  # the session's Barbican
from tests.clients.test_keystone_auth import PASSWORD, SERVICE_PASSWORD, SERVICE_USER, cli
from tests.conftest import Daemon, write_toml
from tests.keystone import Keystone
from tests.signkit import make_cert, new_key, sign, signature_properties
from tests.waiting import wait_for

pytestmark = pytest.mark.clients

DATA_SIZE = 64 * 1024


def call(daemon: Daemon, method: str, path: str, token: str, body: Any = None, data: bytes | None = None) -> Any:
    """(status, JSON answer or None) of one request with `token`."""
    headers = {"X-Auth-Token": token, "Accept": "application/json"}
    payload = data
    if body is not None:
        payload, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif data is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(daemon.url + path, data=payload, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def users(keystone: Keystone) -> tuple[str, str]:
    """Tokens of two members of two projects: the certificate's owner and another."""
    keystone.create_user("bb-owner", PASSWORD, "bb-alpha", ["member", "reader"])
    keystone.create_user("bb-other", PASSWORD, "bb-beta", ["member", "reader"])
    return keystone.token("bb-owner", PASSWORD, "bb-alpha"), keystone.token("bb-other", PASSWORD, "bb-beta")


def barbican_site(
    daemon_factory: Callable[..., Daemon],
    keystone: Keystone,
    tmp_path: Path,
    user: tuple[str, str, tuple[str, ...]] = (SERVICE_USER, SERVICE_PASSWORD, ("service",)),
    **signatures: Any,
) -> Daemon:
    """A daemon validating Keystone tokens (its own `user` in project service), with
    certificates from Barbican (the catalog's key-manager unless `barbican_endpoint` is given)."""
    name, password, roles = user
    keystone.create_user(name, password, "service", roles)
    section = {
        "auth_url": keystone.auth_url,
        "username": name,
        "password": password,
        "project_name": "service",
        "region_name": keystone.region,
    }
    config = {"keystone": section, "signatures": {"key_manager": "barbican", **signatures}}
    return daemon_factory("site", write_toml(tmp_path / "appliance.toml", config))


def store_certificate(barbican: Barbican, token: str, key_type: str = "RSA-PSS", der: bool = False) -> str:
    cert = make_cert(new_key(key_type))
    encoding = serialization.Encoding.DER if der else serialization.Encoding.PEM
    return barbican.store_secret(token, cert.public_bytes(encoding))


def upload(daemon: Daemon, token: str, data: bytes, properties: dict[str, str]) -> tuple[str, int, Any]:
    status, image = call(
        daemon,
        "POST",
        "/v2/images",
        token,
        {"name": "signed", "disk_format": "raw", "container_format": "bare", **properties},
    )
    assert status == 201, image
    status, answer = call(daemon, "PUT", "/v2/images/%s/file" % image["id"], token, data=data)
    return image["id"], status, answer


def glance_direct(daemon: Daemon, token: str, data: bytes, properties: dict[str, str]) -> str:
    """Stage `data` and start its glance-direct import with `token`; returns the image id."""
    status, image = call(
        daemon,
        "POST",
        "/v2/images",
        token,
        {"name": "staged", "disk_format": "raw", "container_format": "bare", **properties},
    )
    assert status == 201, image
    assert call(daemon, "PUT", "/v2/images/%s/stage" % image["id"], token, data=data)[0] == 204
    body = {"method": {"name": "glance-direct"}}
    status, answer = call(daemon, "POST", "/v2/images/%s/import" % image["id"], token, body)
    assert status == 202, answer
    return str(image["id"])


def status_of(daemon: Daemon, token: str, image_id: str) -> str:
    status, image = call(daemon, "GET", "/v2/images/" + image_id, token)
    assert status == 200, image
    return str(image["status"])


def disk() -> bytes:
    return b"RAWDISK\0" + os.urandom(DATA_SIZE - 8)


def signed(cert_id: str, data: bytes, key_type: str = "RSA-PSS", hash_method: str = "SHA-256") -> dict[str, str]:
    return signature_properties(key_type, hash_method, cert_id, sign(new_key(key_type), hash_method, data))


def refused(daemon: Daemon, token: str, cert_id: str, *checks: str) -> str:
    """Upload a signed image that must be refused with every one of `checks` in the message;
    the image stays queued without data. Returns the message."""
    data = disk()
    image_id, status, answer = upload(daemon, token, data, signed(cert_id, data))
    assert status == 400, answer
    message = str(answer["message"])
    for check in (image_id, *checks):
        assert check in message, (check, message)
    assert status_of(daemon, token, image_id) == "queued"
    return message


def test_certificate_from_barbican_verifies_uploads_and_imports(
    daemon_factory: Callable[..., Daemon], keystone: Keystone, barbican: Barbican, tmp_path: Path
) -> None:
    owner, _other = users(keystone)
    daemon = barbican_site(daemon_factory, keystone, tmp_path)
    for key_type, der in (("RSA-PSS", False), ("ECC_SECP384R1", True)):  # PEM and DER payloads
        cert_id = store_certificate(barbican, owner, key_type, der=der)
        data = disk()
        image_id, status, answer = upload(daemon, owner, data, signed(cert_id, data, key_type, "SHA-384"))
        assert status == 204, (key_type, answer)
        assert status_of(daemon, owner, image_id) == "active"
        # The same signature over other data: the certificate is found, the signature is not right.
        image_id, status, answer = upload(daemon, owner, disk(), signed(cert_id, data, key_type, "SHA-384"))
        assert status == 400 and "bad signature" in answer["message"], answer
        assert status_of(daemon, owner, image_id) == "queued"

    # glance-direct: the import task reads the certificate with the importer's token.
    cert_id = store_certificate(barbican, owner)
    data = disk()
    image_id = glance_direct(daemon, owner, data, signed(cert_id, data))
    wait_for(lambda: status_of(daemon, owner, image_id) == "active", "the signed import to go active", 60)

    # The stock glance CLI, password auth at Keystone, the image API at this daemon.
    (tmp_path / "disk.raw").write_bytes(data)
    props = [arg for name, value in signed(cert_id, data).items() for arg in ("--property", "%s=%s" % (name, value))]
    # fmt: off
    out = cli(
        keystone, "glance", "--os-image-url", daemon.url, "image-create", "--disk-format", "raw",
        "--container-format", "bare", *props, "--file", str(tmp_path / "disk.raw"), name="bb-owner", project="bb-alpha",
    )
    # fmt: on
    assert re.search(r"\| status\s+\| active", out), out


def test_missing_secret_and_caller_without_access(
    daemon_factory: Callable[..., Daemon], keystone: Keystone, barbican: Barbican, tmp_path: Path
) -> None:
    owner, other = users(keystone)
    daemon = barbican_site(daemon_factory, keystone, tmp_path)
    # No such secret: Glance's words for a certificate that is not there.
    unknown = str(uuid.uuid4())
    refused(daemon, owner, unknown, "missing certificate", "Certificate not found with ID: %s" % unknown)
    # A secret that was removed from Barbican is gone at once (nothing is kept here).
    cert_id = store_certificate(barbican, owner)
    barbican.delete_secret(owner, cert_id)
    refused(daemon, owner, cert_id, "Certificate not found with ID: %s" % cert_id)
    # Not a Barbican id at all: refused without asking.
    refused(daemon, owner, "../../v1/secrets", "Certificate not found with ID: ../../v1/secrets")

    # Another project's member may not read the owner's secret: Barbican's refusal, named.
    cert_id = store_certificate(barbican, owner)
    refused(
        daemon,
        other,
        cert_id,
        "Unable to retrieve certificate with ID: %s" % cert_id,
        "refused the caller's token (HTTP 403",
        "Secret retrieval attempt not allowed",
    )
    # A secret that is not a certificate.
    opaque = barbican.store_secret(owner, b"not a certificate", secret_type="opaque")
    refused(daemon, owner, opaque, "Invalid certificate format", "opaque secret, not a certificate")
    # A static token (the daemon's own admin token) is no Keystone token: Barbican cannot be asked.
    refused(daemon, daemon.token, cert_id, "has no Keystone token to present to Barbican")
    # The owner still can.
    data = disk()
    assert upload(daemon, owner, data, signed(cert_id, data))[1] == 204


def test_service_token_reads_the_sites_certificates(
    daemon_factory: Callable[..., Daemon], keystone: Keystone, barbican: Barbican, tmp_path: Path
) -> None:
    """auth_type = "keystone_password": the appliance's own user (a member of its project) reads
    the certificates an operator stored in that project, for any uploader (a static token too);
    a user's own secret is not the appliance's to read."""
    owner, other = users(keystone)
    appliance = ("bb-appliance", PASSWORD, ("service", "member", "reader"))
    daemon = barbican_site(daemon_factory, keystone, tmp_path, appliance, auth_type="keystone_password")
    keystone.create_user("bb-operator", PASSWORD, "service", ["member", "reader"])
    cert_id = store_certificate(barbican, keystone.token("bb-operator", PASSWORD, "service"))
    for token in (other, daemon.token):
        data = disk()
        image_id, status, answer = upload(daemon, token, data, signed(cert_id, data))
        assert status == 204, answer
        assert status_of(daemon, token, image_id) == "active"
    users_secret = store_certificate(barbican, owner)
    refused(daemon, owner, users_secret, "refused this appliance's token (HTTP 403")


def logged_requests(barbican: Barbican, secret_id: str, count: int) -> list[str]:
    """Barbican's access log lines for `secret_id`, once there are `count` (gunicorn writes a
    line after its answer)."""

    def lines() -> list[str] | None:
        found = barbican.requests_for(secret_id)
        return found if len(found) >= count else None

    return wait_for(lines, "%d requests for secret %s in Barbican's log" % (count, secret_id))


def test_service_user_token_rides_along(
    daemon_factory: Callable[..., Daemon], keystone: Keystone, barbican: Barbican, tmp_path: Path
) -> None:
    """send_service_user_token: the uploader's token reads the secret, and the appliance's own
    token goes with it as X-Service-Token (castellan's option); without it, none is sent."""
    owner, _other = users(keystone)
    for send in (True, False):
        cert_id = store_certificate(barbican, owner)
        (tmp_path / str(send)).mkdir()
        daemon = barbican_site(daemon_factory, keystone, tmp_path / str(send), send_service_user_token=send)
        data = disk()
        assert upload(daemon, owner, data, signed(cert_id, data))[1] == 204
        lines = logged_requests(barbican, cert_id, 2)
        services = {line.rsplit(" service=", 1)[1] for line in lines}
        assert (services != {"-"}) is send and len(services) == 1, lines
        daemon.stop()


def test_barbican_down(
    daemon_factory: Callable[..., Daemon], keystone: Keystone, barbican: Barbican, tmp_path: Path
) -> None:
    owner, _other = users(keystone)
    cert_id = store_certificate(barbican, owner)
    # The endpoint configured (not from the catalog), with its version, as castellan allows.
    daemon = barbican_site(daemon_factory, keystone, tmp_path, barbican_endpoint=barbican.url + "/v1")
    data = disk()
    assert upload(daemon, owner, data, signed(cert_id, data))[1] == 204
    with barbican.stopped():
        refused(
            daemon,
            owner,
            cert_id,
            "Unable to retrieve certificate with ID: %s" % cert_id,
            "the key manager (Barbican at %s/v1) is unreachable" % barbican.url,
        )
        # An import fails its task with the same reason; the image is not active.
        image_id = glance_direct(daemon, owner, data, signed(cert_id, data))

        def failed_task() -> Any:
            status, tasks = call(daemon, "GET", "/v2/images/%s/tasks" % image_id, owner)
            assert status == 200, tasks
            done = [t for t in tasks["tasks"] if t["status"] == "failure"]
            return done[0] if done else None

        task = wait_for(failed_task, "the import to fail", 60)
        assert "is unreachable" in task["message"] and cert_id in task["message"], task
        assert status_of(daemon, owner, image_id) == "queued"
    # Barbican back: the same upload verifies.
    data = disk()
    assert upload(daemon, owner, data, signed(cert_id, data))[1] == 204
