"""Signed images (Glance's img_signature_* properties) against a real daemon: uploads over HTTP
and with the `glance` CLI, glance-direct and web-download imports, copy-image and bundles.

Keys and certificates are made by the tests (tests/signkit.py). A failure must leave the image
out of `active` (an upload: queued again with a 400 answer; an import: a failed task) with a
message naming the check that failed.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.bundlekit import record, write_bundle
from tests.clients.test_glance_cli import as_dict
from tests.clients.test_glance_import import (  # noqa: F401  (web: the loopback HTTP server fixture)
    Glance,
    WebRoot,
    created_id,
    site_config,
    wait_import,
    web,
)
from tests.conftest import VENV_BIN, Daemon, write_toml
from tests.integration.test_full_disk import call
from tests.signkit import (
    DAY,
    HASHES,
    KEY_TYPES,
    make_ca,
    make_cert,
    new_key,
    save_cert,
    sign,
    signature_properties,
)

pytestmark = pytest.mark.clients

DATA_SIZE = 96 * 1024


def upload(daemon: Daemon, data: bytes, properties: dict[str, str]) -> tuple[str, int, Any]:
    """Create an image with `properties` and PUT `data`: (image id, PUT status, answer)."""
    status, image = call(
        daemon,
        "POST",
        "/v2/images",
        body={"name": "signed", "disk_format": "raw", "container_format": "bare", **properties},
    )
    assert status == 201, image
    status, answer = call(
        daemon, "PUT", "/v2/images/%s/file" % image["id"], data=data, content_type="application/octet-stream"
    )
    return image["id"], status, answer


def status_of(daemon: Daemon, image_id: str) -> str:
    status, image = call(daemon, "GET", "/v2/images/" + image_id)
    assert status == 200, image
    return str(image["status"])


def signatures_config(tmp_path: Path, cert_dir: Path, **more: Any) -> Path:
    return write_toml(tmp_path / "signatures.toml", {"signatures": {"cert_dir": str(cert_dir), **more}})


def random_disk(size: int = DATA_SIZE) -> bytes:
    return b"RAWDISK\0" + os.urandom(size - 8)


def test_every_key_type_and_hash(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    for key_type in KEY_TYPES:
        save_cert(cert_dir, "cert-" + key_type, make_cert(new_key(key_type)))
    daemon = daemon_factory("site", signatures_config(tmp_path, cert_dir))
    for key_type in KEY_TYPES:
        key = new_key(key_type)
        for hash_method in HASHES:
            data = random_disk()
            good = signature_properties(key_type, hash_method, "cert-" + key_type, sign(key, hash_method, data))
            image_id, status, answer = upload(daemon, data, good)
            assert status == 204, (key_type, hash_method, answer)
            assert status_of(daemon, image_id) == "active"

            # The same properties over other data (one byte changed): refused, queued again.
            tampered = bytearray(data)
            tampered[DATA_SIZE // 2] ^= 1
            image_id, status, answer = upload(daemon, bytes(tampered), good)
            assert status == 400, (key_type, hash_method, answer)
            assert "bad signature" in answer["message"] and image_id in answer["message"], answer
            assert status_of(daemon, image_id) == "queued"
            assert call(daemon, "GET", "/v2/images/%s/file" % image_id)[0] == 204  # no data kept


def test_refusals_name_the_failed_check(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    rsa_key = new_key("RSA-PSS")
    save_cert(cert_dir, "rsa", make_cert(rsa_key))
    daemon = daemon_factory("site", signatures_config(tmp_path, cert_dir))
    data = random_disk()
    good = signature_properties("RSA-PSS", "SHA-256", "rsa", sign(rsa_key, "SHA-256", data))
    cases: list[tuple[dict[str, str], str]] = [
        ({**good, "img_signature_certificate_uuid": "no-such-cert"}, "missing certificate"),
        ({**good, "img_signature_certificate_uuid": "../certs/rsa"}, "missing certificate"),
        ({**good, "img_signature_hash_method": "SHA-1"}, "unsupported hash method"),
        ({**good, "img_signature_key_type": "ECC_SECP192R1"}, "unsupported key type"),
        ({**good, "img_signature_key_type": "DSA"}, "invalid public key type for signature key type DSA"),
        ({**good, "img_signature": "not base64!"}, "not properly encoded using base64"),
        ({k: v for k, v in good.items() if k != "img_signature_key_type"}, "incomplete signature properties"),
        ({**good, "img_signature": sign(rsa_key, "SHA-512", data)}, "bad signature"),  # signed with another hash
    ]
    for properties, check in cases:
        image_id, status, answer = upload(daemon, data, properties)
        assert status == 400, (check, answer)
        assert check in answer["message"], (check, answer)
        assert status_of(daemon, image_id) == "queued", check
    image_id, status, answer = upload(daemon, data, good)
    assert status == 204, answer


def test_certificate_validation(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    cert_dir, ca_dir = tmp_path / "certs", tmp_path / "ca"
    trusted, stranger = make_ca("trusted CA"), make_ca("other CA", variant=1)
    save_cert(ca_dir, "trusted", trusted.cert)
    key = new_key("ECC_SECP384R1")
    now = datetime.datetime.now(datetime.UTC)
    save_cert(cert_dir, "good", make_cert(key, trusted))
    save_cert(cert_dir, "untrusted", make_cert(key, stranger))
    save_cert(cert_dir, "self-signed", make_cert(key))
    save_cert(cert_dir, "expired", make_cert(key, trusted, not_before=now - 10 * DAY, not_after=now - DAY))
    save_cert(cert_dir, "future", make_cert(key, trusted, not_before=now + DAY, not_after=now + 10 * DAY))
    daemon = daemon_factory(
        "site", signatures_config(tmp_path, cert_dir, enable_certificate_validation=True, trusted_ca=str(ca_dir))
    )
    data = random_disk()
    signature = sign(key, "SHA-384", data)
    for cert_id, check in (
        ("untrusted", "untrusted certificate"),
        ("self-signed", "untrusted certificate"),
        ("expired", "certificate expired is expired"),
        ("future", "certificate future is not yet valid"),
    ):
        image_id, status, answer = upload(
            daemon, data, signature_properties("ECC_SECP384R1", "SHA-384", cert_id, signature)
        )
        assert status == 400, (cert_id, answer)
        assert check in answer["message"], (cert_id, answer)
        assert status_of(daemon, image_id) == "queued"
    image_id, status, answer = upload(daemon, data, signature_properties("ECC_SECP384R1", "SHA-384", "good", signature))
    assert status == 204, answer
    assert status_of(daemon, image_id) == "active"


def test_glance_cli_upload(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    key = new_key("RSA-PSS")
    save_cert(cert_dir, "rsa", make_cert(key))
    glance = Glance(daemon_factory("site", signatures_config(tmp_path, cert_dir)))
    data = random_disk(1 << 20)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)

    def create(signature: str, cert_id: str = "rsa") -> subprocess.CompletedProcess[str]:
        props = signature_properties("RSA-PSS", "SHA-256", cert_id, signature)
        args = [a for k, v in props.items() for a in ("--property", "%s=%s" % (k, v))]
        return glance.run(
            "image-create", "--name", "cli", "--disk-format", "raw", "--container-format", "bare", *args,
            "--file", str(source),
        )  # fmt: skip

    good = create(sign(key, "SHA-256", data))
    assert good.returncode == 0, good.stderr
    assert as_dict(good.stdout)["status"] == "active"
    for signature, cert_id, check in (
        (sign(key, "SHA-256", data[:-1]), "rsa", "bad signature"),
        (sign(key, "SHA-256", data), "gone", "missing certificate"),
    ):
        bad = create(signature, cert_id)
        assert bad.returncode != 0 and check in bad.stderr, (bad.stdout, bad.stderr)
    listed = call(glance.daemon, "GET", "/v2/images")[1]["images"]
    assert sorted(i["status"] for i in listed) == ["active", "queued", "queued"]


def import_site(tmp_path: Path, cert_dir: Path, port: int) -> Path:
    base = site_config(tmp_path, port).read_text()
    path = tmp_path / "import-signed.toml"
    path.write_text(base + '\n[signatures]\ncert_dir = "%s"\n' % cert_dir)
    return path


def test_imports_verify_the_signature(
    daemon_factory: Callable[..., Daemon],
    tmp_path: Path,
    web: WebRoot,  # noqa: F811
) -> None:
    cert_dir = tmp_path / "certs"
    key = new_key("ECC_SECP521R1")
    save_cert(cert_dir, "ecc", make_cert(key))
    glance = Glance(daemon_factory("site", import_site(tmp_path, cert_dir, web.port)))
    data = random_disk(2 << 20)
    url = web.add("disk.raw", data)
    source = tmp_path / "disk.raw"
    source.write_bytes(data)

    def via_import(method: str, signature: str) -> str:
        props = signature_properties("ECC_SECP521R1", "SHA-512", "ecc", signature)
        args = [a for k, v in props.items() for a in ("--property", "%s=%s" % (k, v))]
        where = ["--uri", url] if method == "web-download" else ["--file", str(source)]
        out = glance.ok(
            "image-create-via-import", "--import-method", method, *where, "--name", method,
            "--disk-format", "raw", "--container-format", "bare", *args,
        )  # fmt: skip
        return created_id(out)

    for method in ("glance-direct", "web-download"):
        image_id = via_import(method, sign(key, "SHA-512", data))
        shown, tasks = wait_import(glance, image_id)
        assert shown["status"] == "active", (method, tasks)

        image_id = via_import(method, sign(key, "SHA-512", data + b"x"))
        shown, tasks = wait_import(glance, image_id)
        assert shown["status"] == "queued", (method, shown)
        assert [t["Status"] for t in tasks] == ["failure"], tasks
        assert "bad signature" in tasks[0]["Message"] and image_id in tasks[0]["Message"], tasks
        assert not shown.get("stores"), shown

    # copy-image checks its source against the signature: a certificate replaced under the same
    # id (another key) makes the copy fail, and the image stays active in its first store.
    image_id = via_import("glance-direct", sign(key, "SHA-512", data))
    assert wait_import(glance, image_id)[0]["status"] == "active"
    save_cert(cert_dir, "ecc", make_cert(new_key("ECC_SECP521R1", variant=1)))
    glance.ok("image-import", image_id, "--import-method", "copy-image", "--stores", "fast", "--allow-failure", "false")
    shown, tasks = wait_import(glance, image_id)
    assert shown["status"] == "active" and shown["stores"] == "local", shown
    copy = [t for t in tasks if "copy-image" in t["Input"]]
    assert [t["Status"] for t in copy] == ["failure"] and "bad signature" in copy[0]["Message"], tasks


def test_bundle_import_verifies_signatures(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    key = new_key("DSA")
    save_cert(cert_dir, "dsa", make_cert(key))
    daemon = daemon_factory(
        "edge",
        write_toml(
            tmp_path / "edge.toml",
            {"api": {"unix_socket": "appliance.sock"}, "signatures": {"cert_dir": str(cert_dir)}},
        ),
    )
    good_data, bad_data = random_disk(), random_disk()
    good = record(good_data, properties=signature_properties("DSA", "SHA-224", "dsa", sign(key, "SHA-224", good_data)))
    bad = record(bad_data, properties=signature_properties("DSA", "SHA-224", "dsa", sign(key, "SHA-224", good_data)))
    bundle = asyncio.run(write_bundle(tmp_path / "signed.bundle", [(good, good_data), (bad, bad_data)]))
    out = subprocess.run(
        [
            str(VENV_BIN / "edge-appliance"),
            "bundle",
            "import",
            str(bundle),
            "--socket",
            str(daemon.state_dir / "appliance.sock"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "imported %s" % good.id in " ".join(out.stdout.split()), out.stdout
    assert "bad signature" in out.stdout, out.stdout
    assert status_of(daemon, good.id) == "active"
    assert call(daemon, "GET", "/v2/images/" + bad.id)[0] == 404  # an unfinished bundle image is removed
