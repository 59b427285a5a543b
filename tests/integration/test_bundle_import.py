"""BundleService on real services (catalog, stores on tmp_path): ids and metadata kept, data
verified before activation, skips, damaged bundles that leave the catalog as it was for the
images that failed, the format inspector's safety rules, signatures, crash recovery; and the
/v2/edge/bundles API."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.app import build_app
from appliance.auth import LOCAL_ADMIN, Context
from appliance.bundles.manifest import ImageRecord
from appliance.bundles.report import FAILED, IMPORTED, SKIPPED
from appliance.bundles.signing import BundleRefused, generate_key
from appliance.clock import timestamp
from appliance.config import Config
from appliance.errors import Forbidden, NotFound
from appliance.model import SAVING, ImageData, Location
from appliance.services import Services, open_services
from appliance.stores.filesystem import PARTIAL_DIR
from tests.bundlekit import record, write_bundle
from tests.conftest import JSON_ERRORS

MiB = 1 << 20
MEMBER = Context(user="u", project="p", roles=frozenset({"member"}))


@pytest.fixture
async def site(make_config: Callable[..., Config]) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Any] = []

    async def open_(**sections: Any) -> Services:
        cm = open_services(make_config(**sections))
        opened.append(cm)
        return await cm.__aenter__()

    yield open_
    for cm in reversed(opened):
        await cm.__aexit__(None, None, None)


def images_of(n: int = 3) -> list[tuple[ImageRecord, bytes]]:
    out = []
    for i in range(n):
        data = os.urandom(MiB + 1000 * i)
        out.append(
            (
                record(
                    data,
                    name="img%d" % i,
                    visibility=["public", "private", "community"][i % 3],
                    owner="project-%d" % i,
                    min_disk=i,
                    min_ram=64 * i,
                    os_hidden=i == 2,
                    properties={"os_distro": "cirros", "n": str(i)},
                    tags=["t%d" % i, "x"],
                ),
                data,
            )
        )
    return out


def store_files(services: Services) -> set[str]:
    store = services.stores["local"]
    return store.image_files() | {p.name for p in (store.path / PARTIAL_DIR).iterdir()}


async def test_import_keeps_ids_metadata_and_bytes(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site()
    images = images_of()
    report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", images), None)
    assert report.ok, report.lines()
    assert [e.outcome for e in report.entries] == [IMPORTED] * 3
    for rec, data in images:
        image = await services.catalog.get_image(rec.id)
        assert image.status == "active"
        assert (image.name, image.visibility, image.owner, image.min_disk, image.min_ram, image.os_hidden) == (
            rec.name,
            rec.visibility,
            rec.owner,
            rec.min_disk,
            rec.min_ram,
            rec.os_hidden,
        )
        assert (image.size, image.checksum, image.os_hash_value) == (rec.size, rec.checksum, rec.os_hash_value)
        assert image.properties == rec.properties and image.tags == rec.tags
        assert image.stores == ("local",)
        assert services.stores["local"].data_path(rec.id).read_bytes() == data  # type: ignore[union-attr]
    assert await services.catalog.bundle_imports() == []


async def test_second_import_skips_what_is_there(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site()
    path = await write_bundle(tmp_path / "b", images_of(2))
    await services.bundles.import_file(LOCAL_ADMIN, path, None)
    report = await services.bundles.import_file(LOCAL_ADMIN, path, None)
    assert report.ok and [e.outcome for e in report.entries] == [SKIPPED, SKIPPED]


async def test_same_id_with_other_data_is_not_touched(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site()
    rec, data = images_of(1)[0]
    await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "a", [(rec, data)]), None)
    other = os.urandom(len(data))
    forged = record(other, id=rec.id, name="other")
    report = await services.bundles.import_file(
        LOCAL_ADMIN, await write_bundle(tmp_path / "b", [(forged, other)]), None
    )
    assert report.entries[0].outcome == FAILED and "other data" in report.entries[0].message
    image = await services.catalog.get_image(rec.id)
    assert image.name == rec.name and image.os_hash_value == rec.os_hash_value


async def test_bit_flipped_image_is_not_imported(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site()
    images = images_of()
    path = await write_bundle(tmp_path / "b", images)
    raw = bytearray(path.read_bytes())
    raw[bytes(raw).index(images[1][1][5000:5064]) + 3] ^= 0x20
    path.write_bytes(bytes(raw))
    report = await services.bundles.import_file(LOCAL_ADMIN, path, None)
    assert [e.outcome for e in report.entries] == [IMPORTED, FAILED, IMPORTED]
    assert "SHA-512" in report.entries[1].message or "MD5" in report.entries[1].message
    assert not report.ok
    assert await services.catalog.count_images() == 2
    assert images[1][0].id not in store_files(services)
    assert await services.catalog.bundle_imports() == []


@pytest.mark.parametrize("keep", [0.4, 0.75, 0.999])
async def test_truncated_bundle_imports_only_complete_images(
    site: Callable[..., Any], tmp_path: Path, keep: float
) -> None:
    services = await site()
    images = images_of()
    path = await write_bundle(tmp_path / "b", images)
    full = path.read_bytes()
    path.write_bytes(full[: int(len(full) * keep)])
    report = await services.bundles.import_file(LOCAL_ADMIN, path, None)
    assert not report.ok and "truncated" in report.error
    for entry, (rec, data) in zip(report.entries, images, strict=False):  # a truncated report may list fewer
        if entry.outcome == IMPORTED:
            assert services.stores["local"].data_path(rec.id).read_bytes() == data  # type: ignore[union-attr]
        else:
            assert entry.outcome == FAILED and "truncated" in entry.message
            with pytest.raises(NotFound):
                await services.catalog.get_image(rec.id)
            assert rec.id not in store_files(services)
    assert report.entries[-1].outcome == FAILED
    assert await services.catalog.bundle_imports() == []


async def test_format_inspection_applies(site: Callable[..., Any], tmp_path: Path, qemu_img: str) -> None:
    services = await site()
    backed = tmp_path / "backed.qcow2"
    await asyncio.to_thread(
        subprocess.run,
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", str(backed), "1M"],
        check=True,
    )
    qcow2_data = backed.read_bytes()
    raw = os.urandom(MiB)
    good = tmp_path / "good.qcow2"
    await asyncio.to_thread(subprocess.run, [qemu_img, "create", "-q", "-f", "qcow2", str(good), "16M"], check=True)
    images = [
        (record(qcow2_data, disk_format="qcow2", name="backing-file"), qcow2_data),
        (record(raw, disk_format="qcow2", name="lies"), raw),
        (record(good.read_bytes(), disk_format="qcow2", name="good", virtual_size=None), good.read_bytes()),
    ]
    report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", images), None)
    assert [e.outcome for e in report.entries] == [FAILED, FAILED, IMPORTED], report.lines()
    assert "backing" in report.entries[0].message
    assert await services.catalog.count_images() == 1
    assert (await services.catalog.get_image(images[2][0].id)).virtual_size == 16 * MiB
    assert store_files(services) == {images[2][0].id}


async def test_other_qemu_formats_and_formatless_records_refused(
    site: Callable[..., Any], tmp_path: Path, qemu_img: str
) -> None:
    services = await site()
    shadow = tmp_path / "shadow.qed"
    await asyncio.to_thread(
        subprocess.run,
        [qemu_img, "create", "-q", "-f", "qed", "-u", "-b", "/etc/shadow", "-F", "raw", str(shadow), "1M"],
        check=True,
    )
    plain = tmp_path / "plain.qed"
    await asyncio.to_thread(subprocess.run, [qemu_img, "create", "-q", "-f", "qed", str(plain), "1M"], check=True)
    raw = os.urandom(4096)
    images = [
        (record(shadow.read_bytes(), name="qed-on-shadow"), shadow.read_bytes()),
        (record(plain.read_bytes(), name="qed-as-raw"), plain.read_bytes()),
        (record(raw, name="no-formats", disk_format=None, container_format=None), raw),
    ]
    report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", images), None)
    assert [(e.outcome, e.message) for e in report.entries] == [
        (FAILED, 'QED image has a backing file ("/etc/shadow"); images that reference host files are refused'),
        (FAILED, "image data is qed, not raw as claimed (disk_format)"),
        (FAILED, "Properties disk_format, container_format must be set prior to saving data."),
    ], report.lines()
    assert await services.catalog.count_images() == 0
    assert store_files(services) == set()


async def test_site_rules_for_records_apply(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site(formats={"disk_formats": ["qcow2", "raw"]})
    data = os.urandom(4096)
    images = [
        (record(data, disk_format="vhd", name="not-enabled"), data),
        (record(data, properties={"os_glance_x": "1"}, name="reserved"), data),
    ]
    report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", images), None)
    assert [e.outcome for e in report.entries] == [FAILED, FAILED]
    assert "vhd" in report.entries[0].message and "reserved" in report.entries[1].message
    assert await services.catalog.count_images() == 0


async def test_only_admins_import(site: Callable[..., Any], tmp_path: Path) -> None:
    services = await site()
    with pytest.raises(Forbidden):
        await services.bundles.import_file(MEMBER, await write_bundle(tmp_path / "b", images_of(1)), None)


async def test_signature_policy(site: Callable[..., Any], tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    generate_key(key)
    services = await site(bundles={"require_signed": True, "trusted_keys": [str(key) + ".pub"]})
    unsigned = await write_bundle(tmp_path / "u", images_of(1))
    with pytest.raises(BundleRefused, match="not signed"):
        await services.bundles.import_file(LOCAL_ADMIN, unsigned, None)
    assert await services.catalog.count_images() == 0
    signed = await write_bundle(tmp_path / "s", images_of(1), key_file=key)
    report = await services.bundles.import_file(LOCAL_ADMIN, signed, None)
    assert report.ok and "trusted" in report.signature


async def test_recovery_removes_unfinished_bundle_images(make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config()
    rec, data = images_of(1)[0]
    done, _ = images_of(1)[0]
    async with open_services(config) as services:
        # What a crash leaves: an image created for a bundle, its data written, not activated...
        image = services.images.new_record(LOCAL_ADMIN, rec.create_body(), status=SAVING)
        await services.catalog.create_image(image, bundle_import=True)
        await services.stores["local"].write(rec.id, _once(data), max_size=1 << 30)
        # ...and one stopped between its activation and the ledger.
        report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", [(done, _)]), None)
        assert report.ok
        await services.catalog.create_image(services.images.new_record(LOCAL_ADMIN, {"name": "plain"}))
        await services.catalog._db.execute(
            "INSERT INTO bundle_imports (image_id, started_at) VALUES (?, ?)", [done.id, timestamp()]
        )
    async with open_services(config) as services:
        with pytest.raises(NotFound):
            await services.catalog.get_image(rec.id)
        assert services.stores["local"].data_path(rec.id) is None
        assert (await services.catalog.get_image(done.id)).status == "active"
        assert await services.catalog.bundle_imports() == []
        assert await services.catalog.count_images() == 2


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# -- the API --------------------------------------------------------------------------------


async def test_api_import_and_refusals(site: Callable[..., Any], tmp_path: Path, aiohttp_client: Any) -> None:
    key = tmp_path / "hub.key"
    generate_key(key)
    services = await site(
        auth={
            "tokens": [
                {"token": "adm", "user": "a", "project": "admin", "roles": ["admin"]},
                {"token": "mem", "user": "m", "project": "p", "roles": ["member"]},
            ]
        },
        stores={"default": "local", "local": {"path": "images"}, "fast": {"path": "fast"}},
    )
    client = await aiohttp_client(build_app(services), headers=JSON_ERRORS)
    images = images_of(2)
    body = (await write_bundle(tmp_path / "b", images)).read_bytes()

    def post(token: str, data: bytes, **params: str) -> Any:
        return client.post(
            "/v2/edge/bundles",
            data=io.BytesIO(data),
            params=params,
            headers={"X-Auth-Token": token, "Content-Type": "application/octet-stream"},
        )

    resp = await post("mem", body)
    assert resp.status == 403
    resp = await post("adm", body, store="nope")
    assert resp.status == 400 and "nope" in (await resp.json())["message"]
    resp = await post("adm", os.urandom(4096))
    assert resp.status == 400 and "damaged" in (await resp.json())["message"]
    resp = await post("adm", body, store="fast")
    assert resp.status == 200
    report = await resp.json()
    assert report["ok"] and [i["outcome"] for i in report["images"]] == [IMPORTED, IMPORTED]
    assert (await services.catalog.get_image(images[0][0].id)).stores == ("fast",)
    resp = await post("adm", body)
    assert [i["outcome"] for i in (await resp.json())["images"]] == [SKIPPED, SKIPPED]


async def test_image_known_without_a_local_copy_gets_one(site: Callable[..., Any], tmp_path: Path) -> None:
    # An edge that mirrors its hub's catalog holds records whose data is only at the hub.
    services = await site()
    rec, data = images_of(1)[0]
    mirrored = services.images.new_record(LOCAL_ADMIN, rec.create_body(), status="active")
    await services.catalog.create_image(mirrored)
    await services.catalog.activate_image(
        rec.id,
        ImageData(size=rec.size, checksum=rec.checksum, os_hash_value=rec.os_hash_value),
        Location(store="central", url="http://hub/v2/images/%s/file" % rec.id),
        from_status="active",
        updated_at=timestamp(),
    )
    report = await services.bundles.import_file(LOCAL_ADMIN, await write_bundle(tmp_path / "b", [(rec, data)]), None)
    assert report.entries[0].outcome == IMPORTED, report.lines()
    image = await services.catalog.get_image(rec.id)
    assert set(image.stores) == {"central", "local"}
    assert services.stores["local"].data_path(rec.id).read_bytes() == data  # type: ignore[union-attr]
    again = await services.bundles.import_file(LOCAL_ADMIN, tmp_path / "b", None)
    assert again.entries[0].outcome == SKIPPED
