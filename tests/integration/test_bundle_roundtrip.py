"""Hub → bundle → air-gapped edge with real daemon processes and the real `edge-appliance
bundle` command: byte-identical images with the same ids and metadata; damaged bundles through
the CLI; a site that requires signatures."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import VENV_BIN, Daemon, write_toml

MiB = 1 << 20
# What must arrive unchanged (created_at/updated_at are the importing site's own).
KEPT = (
    "id",
    "name",
    "disk_format",
    "container_format",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "min_disk",
    "min_ram",
    "size",
    "virtual_size",
    "checksum",
    "os_hash_algo",
    "os_hash_value",
    "tags",
    "os_distro",
    "hw_disk_bus",
)


def call(daemon: Daemon, method: str, path: str, body: Any = None, data: bytes | None = None) -> Any:
    headers = {"X-Auth-Token": daemon.token, "Accept": "application/json"}
    if body is not None:
        data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
    elif data is not None:
        headers["Content-Type"] = "application/octet-stream"
    req = urllib.request.Request(daemon.url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(req, timeout=60) as resp:
        raw = resp.read()
    return json.loads(raw) if raw and resp.headers.get("Content-Type", "").startswith("application/json") else raw


def add_image(daemon: Daemon, data: bytes, **body: Any) -> dict[str, Any]:
    image = call(daemon, "POST", "/v2/images", {"container_format": "bare", **body})
    call(daemon, "PUT", "/v2/images/%s/file" % image["id"], data=data)
    return call(daemon, "GET", "/v2/images/%s" % image["id"])


def bundle_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "edge-appliance"), "bundle", *args], capture_output=True, text=True, timeout=300
    )


def socket_of(daemon: Daemon) -> str:
    return str(daemon.state_dir / "appliance.sock")


def image_count(daemon: Daemon) -> int:
    """Every image, hidden ones too (a plain list leaves those out)."""
    return sum(len(call(daemon, "GET", "/v2/images?limit=1000&os_hidden=%s" % h)["images"]) for h in ("false", "true"))


@pytest.fixture
def hub_with_images(
    daemon_factory: Callable[..., Daemon], tmp_path: Path, qemu_img: str
) -> tuple[Daemon, dict[str, bytes]]:
    hub = daemon_factory(
        "hub",
        write_toml(
            tmp_path / "hub.toml",
            {"site": {"name": "central", "role": "hub"}, "api": {"unix_socket": "appliance.sock"}},
        ),
    )
    raw = os.urandom(2 * MiB + 17)
    source = tmp_path / "src.raw"
    source.write_bytes(os.urandom(MiB) + bytes(7 * MiB))
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", "qcow2", str(source), str(qcow2)], check=True)
    sparse = bytearray(64 * MiB)
    sparse[40 * MiB : 40 * MiB + 4096] = os.urandom(4096)
    datas = {}
    for data, body in (
        (
            raw,
            {
                "name": "random",
                "disk_format": "raw",
                "visibility": "public",
                "os_distro": "cirros",
                "hw_disk_bus": "scsi",
                "tags": ["edge", "boot"],
                "min_disk": 1,
                "min_ram": 256,
            },
        ),
        (
            qcow2.read_bytes(),
            {"name": "qcow", "disk_format": "qcow2", "visibility": "private", "os_hidden": True, "owner": "project-b"},
        ),
        (bytes(sparse), {"name": "sparse", "disk_format": "raw", "visibility": "community", "protected": True}),
    ):
        datas[add_image(hub, data, **body)["id"]] = data
    return hub, datas


def test_hub_to_bundle_to_air_gapped_edge(
    hub_with_images: tuple[Daemon, dict[str, bytes]], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    hub, datas = hub_with_images
    edge = daemon_factory("edge", write_toml(tmp_path / "edge.toml", {"api": {"unix_socket": "appliance.sock"}}))
    bundle = tmp_path / "media" / "images.bundle"
    bundle.parent.mkdir()
    out = bundle_cli("export", *datas, "-o", str(bundle), "--url", hub.url, "--token=" + hub.token)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in bundle.parent.iterdir()) == ["images.bundle"]  # no partial left
    # The sparse 64 MiB image and the random ones: the bundle is about the size of the real data.
    assert bundle.stat().st_size < 4 * MiB + 2 * MiB

    out = bundle_cli("verify", str(bundle))
    assert out.returncode == 0 and out.stdout.count("ok ") == 3, out.stdout

    out = bundle_cli("import", str(bundle), "--socket", socket_of(edge))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("imported ") == 3
    for image_id, data in datas.items():
        there, here = call(hub, "GET", "/v2/images/" + image_id), call(edge, "GET", "/v2/images/" + image_id)
        assert {k: here.get(k) for k in KEPT} == {k: there.get(k) for k in KEPT}
        assert here["status"] == "active"
        assert call(edge, "GET", "/v2/images/%s/file" % image_id) == data

    again = bundle_cli("import", str(bundle), "--socket", socket_of(edge))
    assert again.returncode == 0 and again.stdout.count("skipped ") == 3, again.stdout


def test_export_from_the_local_daemon_socket(hub_with_images: tuple[Daemon, dict[str, bytes]], tmp_path: Path) -> None:
    hub, datas = hub_with_images
    first = next(iter(datas))
    out = bundle_cli("export", first, "-o", str(tmp_path / "one.bundle"), "--socket", socket_of(hub))
    assert out.returncode == 0, out.stderr
    assert bundle_cli("verify", str(tmp_path / "one.bundle")).returncode == 0
    missing = bundle_cli(
        "export", "8a5bd5a3-53b4-4b83-8f39-0f2d8e8a3e11", "-o", str(tmp_path / "no.bundle"), "--socket", socket_of(hub)
    )
    assert missing.returncode == 1 and "404" in missing.stderr
    assert not list(tmp_path.glob("no.bundle*"))
    queued = call(hub, "POST", "/v2/images", {"name": "empty", "disk_format": "raw", "container_format": "bare"})
    out = bundle_cli("export", queued["id"], "-o", str(tmp_path / "q.bundle"), "--socket", socket_of(hub))
    assert out.returncode == 1 and "only active images" in out.stderr


def test_damaged_bundles_through_the_cli(
    hub_with_images: tuple[Daemon, dict[str, bytes]], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    hub, datas = hub_with_images
    ids = list(datas)
    bundle = tmp_path / "all.bundle"
    assert bundle_cli("export", *ids, "-o", str(bundle), "--url", hub.url, "--token=" + hub.token).returncode == 0
    full = bundle.read_bytes()

    flipped = bytearray(full)
    flipped[full.index(datas[ids[0]][MiB : MiB + 64]) + 5] ^= 0x01  # inside the first image's data
    (tmp_path / "flipped.bundle").write_bytes(bytes(flipped))
    truncated = tmp_path / "truncated.bundle"
    truncated.write_bytes(full[: int(len(full) * 0.7)])  # inside the second image (the qcow2)

    out = bundle_cli("verify", str(tmp_path / "flipped.bundle"))
    assert out.returncode == 1 and "failed   %s" % ids[0] in out.stdout, out.stdout
    out = bundle_cli("verify", str(truncated))
    assert out.returncode == 1 and "truncated" in out.stdout, out.stdout

    edge = daemon_factory("edge", write_toml(tmp_path / "edge.toml", {"api": {"unix_socket": "appliance.sock"}}))
    out = bundle_cli("import", str(tmp_path / "flipped.bundle"), "--socket", socket_of(edge))
    assert out.returncode == 1
    assert "failed   %s" % ids[0] in out.stdout and out.stdout.count("imported ") == 2, out.stdout
    with pytest.raises(urllib.error.HTTPError) as err:
        call(edge, "GET", "/v2/images/" + ids[0])
    err.value.close()
    assert err.value.code == 404
    assert image_count(edge) == 2

    edge2 = daemon_factory("edge2", write_toml(tmp_path / "edge2.toml", {"api": {"unix_socket": "appliance.sock"}}))
    out = bundle_cli("import", str(truncated), "--socket", socket_of(edge2))
    assert out.returncode == 1 and "truncated" in out.stdout
    assert [i["id"] for i in call(edge2, "GET", "/v2/images")["images"]] == [ids[0]]
    assert not any((edge2.state_dir / "images" / ".partial").iterdir())


def test_site_that_requires_signed_bundles(
    hub_with_images: tuple[Daemon, dict[str, bytes]], daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    hub, datas = hub_with_images
    first = next(iter(datas))
    for name in ("hub.key", "other.key"):
        assert bundle_cli("keygen", str(tmp_path / name)).returncode == 0
    edge = daemon_factory(
        "edge",
        write_toml(
            tmp_path / "edge.toml",
            {
                "api": {"unix_socket": "appliance.sock"},
                "bundles": {"require_signed": True, "trusted_keys": [str(tmp_path / "hub.key.pub")]},
            },
        ),
    )
    for name, sign in (
        ("unsigned", []),
        ("other", ["--sign", str(tmp_path / "other.key")]),
        ("signed", ["--sign", str(tmp_path / "hub.key")]),
    ):
        out = bundle_cli(
            "export", first, "-o", str(tmp_path / (name + ".bundle")), "--url", hub.url, "--token=" + hub.token, *sign
        )
        assert out.returncode == 0, out.stderr

    out = bundle_cli("import", str(tmp_path / "unsigned.bundle"), "--socket", socket_of(edge))
    assert out.returncode == 1 and "requires signed bundles" in out.stderr and "nothing was imported" in out.stderr
    out = bundle_cli("import", str(tmp_path / "other.bundle"), "--socket", socket_of(edge))
    assert out.returncode == 1 and "not among them" in out.stderr
    assert image_count(edge) == 0
    out = bundle_cli("import", str(tmp_path / "signed.bundle"), "--socket", socket_of(edge))
    assert out.returncode == 0 and "(trusted)" in out.stdout, out.stdout + out.stderr
    assert image_count(edge) == 1

    out = bundle_cli("verify", str(tmp_path / "unsigned.bundle"), "--trusted-key", str(tmp_path / "hub.key.pub"))
    assert out.returncode == 1 and "not signed" in out.stderr
    out = bundle_cli("verify", str(tmp_path / "signed.bundle"), "--trusted-key", str(tmp_path / "hub.key.pub"))
    assert out.returncode == 0
