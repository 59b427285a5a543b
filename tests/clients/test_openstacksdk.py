"""openstacksdk (and keystoneauth underneath) against a real daemon process.

There is no Keystone: the SDK authenticates with keystoneauth's `admin_token` plugin, which
sends the given token as X-Auth-Token on every request. `image_endpoint_override` points the
image service at the daemon's unversioned URL, so the SDK runs its usual version discovery
(GET / → 300 and a versions document) to find /v2/.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import openstack
import pytest
from openstack import exceptions
from openstack.connection import Connection

from tests.conftest import Daemon, write_toml

pytestmark = [
    pytest.mark.clients,
    # pyproject ignores openstack's DeprecationWarnings; openstacksdk 4.22 also raises its
    # RemovedInSDK5x/6xWarning (PendingDeprecationWarning) from its own internals: on every
    # connect (InfluxDB: its parsed influxdb_config is a truthy dict of Nones) and on every request
    # (Proxy._extract_name is passed service_type by Proxy itself).
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning:openstack"),
]

TWO_STORES = {"stores": {"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}}}


def connect(daemon: Daemon, token: str | None = None) -> Connection:
    return openstack.connect(
        auth_type="admin_token",
        auth={"endpoint": daemon.url, "token": token if token is not None else daemon.token},
        image_endpoint_override=daemon.url,
        load_yaml_config=False,
        load_envvars=False,
    )


@pytest.fixture
def site(tmp_path: Path, daemon_factory: Callable[..., Daemon]) -> Daemon:
    return daemon_factory("site", write_toml(tmp_path / "two-stores.toml", TWO_STORES))


@pytest.fixture
def conn(site: Daemon) -> Iterator[Connection]:
    c = connect(site)
    yield c
    c.close()


@pytest.fixture
def data() -> bytes:
    return os.urandom(3 << 20) + b"tail"


@pytest.fixture
def image_file(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "disk.raw"
    path.write_bytes(data)
    return path


def test_version_discovery_finds_v2(conn: Connection, site: Daemon) -> None:
    assert conn.image.get_endpoint().rstrip("/") == site.url + "/v2"
    assert conn.image.get_api_major_version()[0] == 2
    assert list(conn.image.images()) == []


def test_a_wrong_token_is_refused(site: Daemon) -> None:
    c = connect(site, token="not-the-token")
    try:
        with pytest.raises(exceptions.HttpException) as err:
            list(c.image.images())
        assert err.value.status_code == 401
        assert "token is not valid" in str(err.value)
    finally:
        c.close()


def test_upload_download_update_tag_delete(conn: Connection, data: bytes, tmp_path: Path) -> None:
    # The proxy's create_image: POST /v2/images, then a plain PUT .../file (use_import defaults
    # to False; the daemon offers no import methods yet). Data as bytes, so that the SDK can
    # compare the checksum the daemon reports with its own.
    created = conn.image.create_image(
        name="cirros-sdk",
        data=data,
        disk_format="raw",
        container_format="bare",
        validate_checksum=True,
        wait=True,
        timeout=30,
    )
    image = conn.image.get_image(created.id)
    assert image.status == "active"
    assert image.size == len(data)
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert image.hash_algo == "sha512"
    assert image.hash_value == hashlib.sha512(data).hexdigest()
    assert image.disk_format == "raw" and image.container_format == "bare"
    assert image.properties["stores"] == "local"
    assert conn.image.find_image("cirros-sdk").id == image.id

    # Download: into memory (the SDK checks Content-MD5 against the checksum), to a file, streamed.
    assert conn.image.download_image(image).content == data
    out = tmp_path / "out.raw"
    conn.image.download_image(image, output=str(out))
    assert out.read_bytes() == data
    resp = conn.image.download_image(image, stream=True)
    try:
        assert b"".join(resp.iter_content(1 << 20)) == data
    finally:
        resp.close()

    # Base attributes, then custom properties (update_image_properties keeps the others; a bare
    # update_image(image, k=v) would replace the whole property set, read-only `stores` included).
    updated = conn.image.update_image(image, min_ram=256, min_disk=1)
    assert (updated.min_ram, updated.min_disk) == (256, 1)
    assert conn.image.update_image_properties(image, meta={"edge_site": "dcn0"}, os_distro="cirros")
    image = conn.image.get_image(image.id)
    assert (image.min_ram, image.min_disk, image.os_distro) == (256, 1, "cirros")
    assert image.properties["edge_site"] == "dcn0"

    conn.image.add_tag(image, "gold")
    conn.image.add_tag(image, "edge")
    assert sorted(conn.image.get_image(image.id).tags) == ["edge", "gold"]
    assert [i.id for i in conn.image.images(tag="gold")] == [image.id]
    conn.image.remove_tag(image, "gold")
    assert conn.image.get_image(image.id).tags == ["edge"]
    with pytest.raises(exceptions.NotFoundException):
        conn.image.remove_tag(image, "gold")

    conn.image.deactivate_image(image)
    assert conn.image.get_image(image.id).status == "deactivated"
    conn.image.reactivate_image(image)
    assert conn.image.get_image(image.id).status == "active"

    conn.image.delete_image(image, ignore_missing=False)
    with pytest.raises(exceptions.NotFoundException) as err:
        conn.image.get_image(image.id)
    assert "No image found" in str(err.value)
    assert conn.image.find_image("cirros-sdk") is None
    conn.image.delete_image(image, ignore_missing=True)
    with pytest.raises(exceptions.NotFoundException):
        conn.image.delete_image(image, ignore_missing=False)


def test_cloud_layer_create_image_waits_for_active(conn: Connection, image_file: Path, data: bytes) -> None:
    # The cloud layer's create_image (as `openstack image create` uses it) also takes the plain
    # upload path here, and waits for the image to turn active. An open file rather than
    # filename=: given a filename, openstacksdk 4.22 opens it and never closes it.
    with image_file.open("rb") as fh:
        image = conn.create_image(
            "cloud-layer",
            data=fh,
            disk_format="raw",
            container_format="bare",
            wait=True,
            timeout=30,
        )
    assert image.status == "active"
    assert image.checksum == hashlib.md5(data).hexdigest()
    assert [i.name for i in conn.list_images()] == ["cloud-layer"]
    assert conn.get_image("cloud-layer").id == image.id
    assert conn.delete_image("cloud-layer", wait=True, timeout=30)
    assert conn.get_image("cloud-layer") is None


def test_stores(conn: Connection, site: Daemon, data: bytes) -> None:
    stores = {s.id: s for s in conn.image.stores()}
    assert set(stores) == {"local", "fast"}
    assert stores["local"].is_default is True
    assert not stores["fast"].is_default
    detail = {s.id: s for s in conn.image.stores(details=True)}
    assert Path(detail["local"].properties["datadir"]) == site.state_dir / "images"
    assert Path(detail["fast"].properties["datadir"]) == site.state_dir / "fast"

    image = conn.image.create_image(name="one-copy", data=data, disk_format="raw", container_format="bare")
    image = conn.image.get_image(image.id)
    assert image.status == "active" and image.properties["stores"] == "local"
    # Removing the only copy is refused (Glance: 403; the daemon answers 409), as is removing a
    # copy from a store that does not hold one, or from a store this site does not have.
    with pytest.raises(exceptions.HttpException) as err:
        conn.image.delete_image(image, store="local", ignore_missing=False)
    assert err.value.status_code in (403, 409) and "only" in str(err.value)
    with pytest.raises(exceptions.HttpException) as err:
        conn.image.delete_image(image, store="fast", ignore_missing=False)
    assert err.value.status_code in (403, 404)
    with pytest.raises(exceptions.ConflictException) as err:
        conn.image.delete_image(image, store="atlantis", ignore_missing=False)
    assert "not available" in str(err.value)
    image = conn.image.get_image(image.id)
    assert image.status == "active" and image.properties["stores"] == "local"
    assert conn.image.download_image(image).content == data


def test_import_info(conn: Connection) -> None:
    methods = conn.image.get_import_info().import_methods
    assert methods["type"] == "array"
    assert isinstance(methods["value"], list)
    assert set(methods["value"]) <= {"glance-direct", "web-download", "copy-image", "glance-download"}
