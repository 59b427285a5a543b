"""The bundle format: written and read back for real (files on tmp_path, the real zstd and tar
tools to show the format is standard), truncated and damaged copies, signatures."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from appliance.bundles.manifest import BundleError, ImageRecord, Manifest
from appliance.bundles.report import FAILED, OK
from appliance.bundles.signing import (
    BundleRefused,
    check_signature,
    enforce_signature_policy,
    generate_key,
    load_private_key,
    load_public_key,
    sign_manifest,
)
from appliance.bundles.stream import IMAGE_DIR, MANIFEST, BundleCorrupt, verify_bundle
from appliance.errors import ConfigError
from tests.bundlekit import record, write_bundle
from tests.ondisk import append

MiB = 1 << 20


@pytest.fixture
def three() -> list[tuple[ImageRecord, bytes]]:
    datas = [os.urandom(3 * MiB + 123), os.urandom(700_000), os.urandom(2 * MiB)]
    return [(record(d, name="img%d" % i), d) for i, d in enumerate(datas)]


async def test_round_trip_verifies_every_image(tmp_path: Path, three: list[tuple[ImageRecord, bytes]]) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    assert not (tmp_path / "b.bundle.partial").exists()
    report = await verify_bundle(path)
    assert report.ok and report.error == "" and report.signature == "unsigned"
    assert [(e.id, e.outcome) for e in report.entries] == [(r.id, OK) for r, _ in three]


async def test_bundle_is_a_standard_zstd_compressed_tar(tmp_path: Path, three: list[tuple[ImageRecord, bytes]]) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    await asyncio.to_thread(subprocess.run, ["zstd", "-q", "-t", str(path)], check=True)
    listing = (
        await asyncio.to_thread(
            subprocess.run, "zstd -dc %s | tar tf -" % path, shell=True, check=True, capture_output=True, text=True
        )
    ).stdout
    assert listing.split() == [MANIFEST] + [IMAGE_DIR + r.id for r, _ in three]
    out = tmp_path / "x"
    out.mkdir()
    await asyncio.to_thread(subprocess.run, "zstd -dc %s | tar xf - -C %s" % (path, out), shell=True, check=True)
    assert (out / IMAGE_DIR / three[1][0].id).read_bytes() == three[1][1]
    assert json.loads((out / MANIFEST).read_bytes())["images"][0]["id"] == three[0][0].id


async def test_sparse_image_stays_small(tmp_path: Path) -> None:
    data = bytearray(64 * MiB)
    data[5 * MiB : 5 * MiB + 4096] = os.urandom(4096)
    rec = record(bytes(data))
    path = await write_bundle(tmp_path / "sparse.bundle", [(rec, bytes(data))])
    assert path.stat().st_size < 64 * 1024
    assert (await verify_bundle(path)).ok


async def test_reading_holds_little_memory_whatever_the_expansion(tmp_path: Path) -> None:
    data = bytes(256 * MiB)  # compresses ~ 10,000:1
    path = await write_bundle(tmp_path / "zeros.bundle", [(record(data), data)])
    del data
    tracemalloc.start()
    try:
        report = await verify_bundle(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok
    assert peak < 24 * MiB, peak


@pytest.mark.parametrize("keep", [0.1, 0.3, 0.5, 0.8, 0.95, -40, -21, -20, -19, -4, -1])
async def test_truncated_bundle_is_detected(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]], keep: float
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    full = path.read_bytes()
    cut = int(len(full) * keep) if keep > 0 else len(full) + int(keep)
    path.write_bytes(full[:cut])
    try:
        report = await verify_bundle(path)
    except BundleCorrupt as exc:  # cut inside the manifest: nothing to report per image
        assert "truncated" in str(exc) or "damaged" in str(exc)
        return
    assert not report.ok
    assert "truncated" in report.error or "damaged" in report.error
    # Whatever is reported OK really was complete; the rest is failed, with the reason.
    for entry, (rec, _) in zip(report.entries, three, strict=False):  # a truncated report may list fewer
        assert entry.id == rec.id
        if entry.outcome == FAILED:
            assert "not read" in entry.message


async def test_data_appended_after_the_end_is_detected(tmp_path: Path, three: list[tuple[ImageRecord, bytes]]) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    await asyncio.to_thread(append, path, b"junk")
    report = await verify_bundle(path)
    assert all(e.outcome == OK for e in report.entries)
    assert not report.ok and ("end marker" in report.error or "damaged" in report.error)


async def test_bit_flip_in_image_data_fails_that_image_only(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]]
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    raw = bytearray(path.read_bytes())
    # Random data is stored in raw zstd blocks: find the second image's bytes in the file.
    needle = three[1][1][100_000:100_064]
    at = bytes(raw).index(needle)
    raw[at + 10] ^= 0x04
    path.write_bytes(bytes(raw))
    report = await verify_bundle(path)
    outcomes = [e.outcome for e in report.entries]
    assert outcomes == [OK, FAILED, OK]
    assert "does not match" in report.entries[1].message
    assert not report.ok  # the frame's own checksum also notices


@pytest.mark.parametrize("where", [0.2, 0.5, 0.7, 0.9])
async def test_bit_flip_in_compressed_data_is_detected(tmp_path: Path, where: float) -> None:
    data = bytes(8 * MiB)  # zeros: compressed blocks only; the manifest's frame comes first
    rec = record(data)
    path = await write_bundle(tmp_path / "z.bundle", [(rec, data)])
    raw = bytearray(path.read_bytes())
    raw[int(len(raw) * where)] ^= 0x10
    path.write_bytes(bytes(raw))
    try:
        report = await verify_bundle(path)
    except BundleCorrupt as exc:  # the manifest's frame: refused before any image is read
        assert "damaged" in str(exc)
        return
    assert not report.ok


async def test_damaged_manifest_is_refused_before_any_image(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]]
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    raw = bytearray(path.read_bytes())
    raw[300] ^= 0x01  # inside the first frame (the manifest's, a little over 1 KiB here)
    path.write_bytes(bytes(raw))
    with pytest.raises(BundleCorrupt, match="damaged"):
        await verify_bundle(path)


async def test_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "junk"
    path.write_bytes(os.urandom(10_000))
    with pytest.raises(BundleCorrupt, match="damaged"):
        await verify_bundle(path)


async def test_out_of_order_member_is_refused(tmp_path: Path, three: list[tuple[ImageRecord, bytes]]) -> None:
    manifest = Manifest(images=tuple(r for r, _ in reversed(three))).encode()
    path = await write_bundle(tmp_path / "b.bundle", three, manifest_raw=manifest)
    report = await verify_bundle(path)
    assert not report.ok and "expected" in report.error
    assert all(e.outcome == FAILED for e in report.entries)


async def test_writer_refuses_a_source_of_the_wrong_length(tmp_path: Path) -> None:
    data = os.urandom(MiB)
    for sent in (data[:-1], data + b"x"):
        with pytest.raises(BundleError):
            await write_bundle(tmp_path / "b.bundle", [(record(data), sent)])
        assert not (tmp_path / "b.bundle").exists() and not (tmp_path / "b.bundle.partial").exists()


# -- signatures ---------------------------------------------------------------------------


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    good, other = tmp_path / "site.key", tmp_path / "other.key"
    generate_key(good)
    generate_key(other)
    assert (good.stat().st_mode & 0o777) == 0o600
    return good, other


async def test_signed_bundle_by_a_trusted_key(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]], keys: tuple[Path, Path]
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three, key_file=keys[0])
    trusted = [load_public_key(keys[0].with_name("site.key.pub"))]
    report = await verify_bundle(path, trusted, require_signed=True)
    assert report.ok and "trusted" in report.signature and "not a trusted" not in report.signature


async def test_unsigned_bundle_refused_where_signatures_are_required(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]], keys: tuple[Path, Path]
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three)
    trusted = [load_public_key(keys[0].with_name("site.key.pub"))]
    with pytest.raises(BundleRefused, match="not signed"):
        await verify_bundle(path, trusted, require_signed=True)
    assert (await verify_bundle(path, trusted, require_signed=False)).ok


async def test_bundle_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]], keys: tuple[Path, Path]
) -> None:
    path = await write_bundle(tmp_path / "b.bundle", three, key_file=keys[1])
    trusted = [load_public_key(keys[0].with_name("site.key.pub"))]
    with pytest.raises(BundleRefused, match="not among them"):
        await verify_bundle(path, trusted, require_signed=True)


async def test_changed_manifest_breaks_the_signature_always(
    tmp_path: Path, three: list[tuple[ImageRecord, bytes]], keys: tuple[Path, Path]
) -> None:
    changed = Manifest(images=tuple(r for r, _ in three), source="evil").encode()
    path = await write_bundle(tmp_path / "b.bundle", three, key_file=keys[0], manifest_raw=changed)
    with pytest.raises(BundleRefused, match="does not verify"):
        await verify_bundle(path)  # even where signatures are not required


def test_signature_check_and_policy(keys: tuple[Path, Path]) -> None:
    manifest = b'{"x": 1}'
    sig = sign_manifest(manifest, load_private_key(keys[0]))
    pub = load_public_key(keys[0].with_name("site.key.pub"))
    assert check_signature(manifest, sig, [pub]).trusted
    assert not check_signature(manifest, sig, []).trusted
    assert not check_signature(manifest + b" ", sig, [pub]).valid
    assert not check_signature(manifest, b"not json", [pub]).valid
    enforce_signature_policy(check_signature(manifest, None, []), require_signed=False)
    with pytest.raises(BundleRefused):
        enforce_signature_policy(check_signature(manifest, None, [pub]), require_signed=True)


def test_key_files(tmp_path: Path, keys: tuple[Path, Path]) -> None:
    pub_pem = keys[0].with_name("site.key.pub")
    raw = load_public_key(pub_pem)
    (tmp_path / "raw.pub").write_bytes(raw)
    assert load_public_key(tmp_path / "raw.pub") == raw
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")], check=True)
    assert len(load_public_key(tmp_path / "ssh.pub")) == 32
    load_private_key(tmp_path / "ssh")
    (tmp_path / "bad.pub").write_text("nonsense")
    with pytest.raises(ConfigError, match=r"bad.pub"):
        load_public_key(tmp_path / "bad.pub")
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")


# -- records ------------------------------------------------------------------------------


def test_record_from_glance_keeps_properties_and_drops_server_fields() -> None:
    data = b"x" * 10
    body = {
        **record(data).to_json(),
        "status": "active",
        "self": "/v2/images/x",
        "file": "/f",
        "schema": "/s",
        "stores": "local",
        "os_glance_importing_to_stores": "",
        "created_at": "t",
        "updated_at": "t",
        "hw_disk_bus": "scsi",
    }
    props = body.pop("properties")
    body.update(props)
    rec = ImageRecord.from_glance(body)
    assert rec.properties == {"os_distro": "cirros", "hw_disk_bus": "scsi"}
    with pytest.raises(BundleError, match="only active"):
        ImageRecord.from_glance({**body, "status": "queued"})
    with pytest.raises(BundleError, match="SHA-512"):
        ImageRecord.from_glance({**body, "os_hash_algo": "sha256"})


@pytest.mark.parametrize(
    "change, message",
    [
        ({"id": "nope"}, "not a UUID"),
        ({"size": -1}, "negative"),
        ({"size": True}, "wrong type"),
        ({"checksum": "abc"}, "hex"),
        ({"properties": {"name": "x"}}, "cannot be a custom property"),
        ({"properties": {"k": 1}}, "strings"),
        ({"extra": 1}, "unknown key"),
    ],
)
def test_bad_records_are_refused(change: dict[str, Any], message: str) -> None:
    body = {**record(b"abc").to_json(), **change}
    with pytest.raises(BundleError, match=message):
        ImageRecord.from_json(body)


def test_manifest_refuses_other_versions_and_duplicates() -> None:
    rec = record(b"abc")
    raw = json.loads(Manifest(images=(rec,)).encode())
    with pytest.raises(BundleError, match="version"):
        Manifest.decode(json.dumps({**raw, "version": 2}).encode())
    with pytest.raises(BundleError, match="twice"):
        Manifest.decode(json.dumps({**raw, "images": raw["images"] * 2}).encode())
