"""The real `glance` CLI (python-glanceclient) against a real daemon process.

Every command runs as a subprocess with `--os-image-url/--os-auth-token`, as an operator would
type it; assertions are on the tables the CLI prints (this glanceclient has no JSON output), on
exit codes and on what it writes to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon, write_toml

pytestmark = pytest.mark.clients

GLANCE = Path(sys.executable).parent / "glance"
TWO_STORES = {"stores": {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}}
# What glanceclient prints when it cannot read an error body (the daemon once answered it with a
# JSON shape it does not understand); a failing command must say why instead.
CLIENT_CRASH = "object has no attribute"


class Glance:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon

    def run(self, *args: str, token: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        cmd = [
            str(GLANCE),
            "--os-image-api-version",
            "2",
            "--os-image-url",
            self.daemon.url,
            # One argument: a generated token may start with "-", which argparse takes for an option.
            "--os-auth-token=" + (token if token is not None else self.daemon.token),
            *args,
        ]
        # stdin must not be a pipe: image-create without --file would upload whatever it holds.
        return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    def ok(self, *args: str) -> str:
        result = self.run(*args)
        assert result.returncode == 0, "glance %s failed (%d):\n%s%s" % (
            " ".join(args),
            result.returncode,
            result.stdout,
            result.stderr,
        )
        return result.stdout

    def fails(self, *args: str) -> str:
        """Run a command that must fail cleanly: non-zero exit, a message on stderr, no crash."""
        result = self.run(*args)
        assert result.returncode != 0, "glance %s unexpectedly succeeded:\n%s" % (" ".join(args), result.stdout)
        assert result.stderr.strip(), "glance %s failed without a message" % " ".join(args)
        assert CLIENT_CRASH not in result.stderr and "Traceback" not in result.stderr, result.stderr
        return result.stderr

    def show(self, image_id: str) -> dict[str, str]:
        return as_dict(self.ok("image-show", "--max-column-width", "4096", image_id))


def table(out: str) -> tuple[list[str], list[list[str]]]:
    """Parse a prettytable: (header, rows). Lines whose first cell is empty continue the row
    above (prettytable wraps long values at whitespace); their fragments are joined by a space."""
    rows: list[list[list[str]]] = []
    for line in out.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line[1:-1].split("|")]
        if rows and cells[0] == "":
            for frags, cell in zip(rows[-1], cells, strict=False):
                if cell:
                    frags.append(cell)
        else:
            rows.append([[c] if c else [] for c in cells])
    assert rows, "no table in output:\n%s" % out
    joined = [[" ".join(frags) for frags in row] for row in rows]
    return joined[0], joined[1:]


def as_dict(out: str) -> dict[str, str]:
    header, rows = table(out)
    assert header == ["Property", "Value"], header
    return {k: v for k, v in rows}


def as_records(out: str) -> list[dict[str, str]]:
    header, rows = table(out)
    return [dict(zip(header, row, strict=False)) for row in rows]


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(os.urandom(3 << 20) + b"tail")  # not a multiple of any chunk size
    return path


@pytest.fixture
def glance(daemon: Daemon) -> Glance:
    return Glance(daemon)


@pytest.fixture
def two_store_glance(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Glance:
    return Glance(daemon_factory("site", write_toml(tmp_path / "two-stores.toml", TWO_STORES)))


def create(glance: Glance, name: str, image_file: Path, *extra: str) -> str:
    created = as_dict(
        glance.ok(
            "image-create",
            "--name",
            name,
            "--disk-format",
            "raw",
            "--container-format",
            "bare",
            "--file",
            str(image_file),
            *extra,
        )
    )
    assert created["name"] == name
    assert created["status"] == "active"
    return created["id"]


def test_image_lifecycle(glance: Glance, image_file: Path, tmp_path: Path) -> None:
    data = image_file.read_bytes()
    image_id = create(glance, "cirros-cli", image_file, "--property", "os_distro=cirros")

    listed = as_records(glance.ok("image-list"))
    assert {"ID": image_id, "Name": "cirros-cli"} in listed

    shown = glance.show(image_id)
    assert shown["status"] == "active"
    assert shown["size"] == str(len(data))
    assert shown["checksum"] == hashlib.md5(data).hexdigest()
    assert shown["os_hash_algo"] == "sha512"
    assert shown["os_hash_value"] == hashlib.sha512(data).hexdigest()
    assert shown["disk_format"] == "raw" and shown["container_format"] == "bare"
    assert shown["os_distro"] == "cirros"
    assert shown["stores"] == "local"

    out = tmp_path / "downloaded.raw"
    glance.ok("image-download", "--file", str(out), image_id)  # glanceclient verifies the sha512 too
    assert out.read_bytes() == data

    updated = as_dict(glance.ok("image-update", "--property", "edge_site=dcn0", "--min-ram", "256", image_id))
    assert updated["edge_site"] == "dcn0" and updated["min_ram"] == "256"
    shown = glance.show(image_id)
    assert shown["edge_site"] == "dcn0" and shown["min_ram"] == "256" and shown["os_distro"] == "cirros"
    glance.ok("image-update", "--remove-property", "os_distro", image_id)
    assert "os_distro" not in glance.show(image_id)

    glance.ok("image-tag-update", image_id, "gold")
    glance.ok("image-tag-update", image_id, "edge")
    assert sorted(json.loads(glance.show(image_id)["tags"])) == ["edge", "gold"]
    assert [r["ID"] for r in as_records(glance.ok("image-list", "--tag", "gold"))] == [image_id]
    glance.ok("image-tag-delete", image_id, "gold")
    assert json.loads(glance.show(image_id)["tags"]) == ["edge"]
    err = glance.fails("image-tag-delete", image_id, "gold")
    assert "404" in err and "gold" in err

    glance.ok("image-deactivate", image_id)
    assert glance.show(image_id)["status"] == "deactivated"
    # The CLI runs as admin, and admins may still download a deactivated image.
    out.unlink()
    glance.ok("image-download", "--file", str(out), image_id)
    assert out.read_bytes() == data
    glance.ok("image-reactivate", image_id)
    assert glance.show(image_id)["status"] == "active"

    glance.ok("image-delete", image_id)
    err = glance.fails("image-show", image_id)
    assert "404" in err and image_id in err
    err = glance.fails("image-delete", image_id)
    assert "No image with an ID of '%s' exists." % image_id in err
    assert image_id not in {r["ID"] for r in as_records(glance.ok("image-list"))}


def test_bad_token_is_refused_with_a_message(glance: Glance) -> None:
    result = glance.run("image-list", token="not-the-token")
    assert result.returncode != 0
    assert "Invalid OpenStack Identity credentials" in result.stderr
    assert CLIENT_CRASH not in result.stderr


def test_stores_info(two_store_glance: Glance) -> None:
    stores = json.loads(as_dict(two_store_glance.ok("stores-info"))["stores"])
    assert {s["id"] for s in stores} == {"local", "fast"}
    default = [s["id"] for s in stores if s.get("default")]
    assert default == ["local"]

    detail = json.loads(as_dict(two_store_glance.ok("stores-info", "--detail"))["stores"])
    by_id: dict[str, Any] = {s["id"]: s for s in detail}
    assert set(by_id) == {"local", "fast"}
    assert by_id["local"].get("default") is True and "default" not in by_id["fast"]
    for store in by_id.values():
        assert store["type"] == "file"
        assert {"datadir", "total_bytes", "free_bytes"} <= set(store["properties"])


def test_upload_to_named_store_and_stores_delete_refusals(
    two_store_glance: Glance, image_file: Path, tmp_path: Path
) -> None:
    glance = two_store_glance
    data = image_file.read_bytes()
    image_id = create(glance, "fast-one", image_file, "--store", "fast")
    assert glance.show(image_id)["stores"] == "fast"
    listed = as_records(glance.ok("image-list", "--include-stores"))
    assert {"ID": image_id, "Name": "fast-one", "Stores": "fast"} in listed

    # The only copy cannot be removed: Glance wants the image deleted instead.
    err = glance.fails("stores-delete", "--store", "fast", image_id)
    assert "Unable to delete image '%s' from store 'fast'" % image_id in err
    assert "only" in err
    # A store that does not hold the image, and a store this site does not have.
    glance.fails("stores-delete", "--store", "local", image_id)
    err = glance.fails("stores-delete", "--store", "atlantis", image_id)
    assert "atlantis" in err and "not available" in err

    # Nothing was touched by the refusals.
    shown = glance.show(image_id)
    assert shown["status"] == "active" and shown["stores"] == "fast"
    out = tmp_path / "out.raw"
    glance.ok("image-download", "--file", str(out), image_id)
    assert out.read_bytes() == data
