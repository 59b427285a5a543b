"""Import plugins against real archives and real qemu-img images (qemu-img required, not skipped).

LHA archives come from tests/fixtures (made with jLHA, see its README) and, for the refusals,
from level-0 headers with the stored method -lh0- built here by hand following the LHA header
layout: a malformed archive is easier to describe byte by byte than to coax out of a tool.
"""

from __future__ import annotations

import asyncio
import bz2
import gzip
import io
import json
import lzma
import os
import stat
import struct
import subprocess
import tarfile
import time
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

from appliance import formats as formats_module
from appliance.formats import Inspection
from appliance.pipeline.base import ImportFailed, StagedImage, StepContext
from appliance.pipeline.spool import spool
from appliance.pipeline.steps import convert as convert_module
from appliance.pipeline.steps.convert import Convert
from appliance.pipeline.steps.decompress import Decompress
from appliance.pipeline.steps.inject import InjectMetadata
from tests.waiting import eventually

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
KiB = 1 << 10
MiB = 1 << 20
FIXTURE_DATA = bytes(i % 251 for i in range(65536))  # the member of the .lzh fixtures


def payload(size: int = 3 * MiB + 123) -> bytes:
    """Partly compressible, partly not, and longer than one 1 MiB chunk."""
    block = os.urandom(64 * KiB) + bytes(64 * KiB) + FIXTURE_DATA
    return (block * (size // len(block) + 1))[:size]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def ctx(work: Path) -> StepContext:
    return StepContext(image_id="img-1", work_dir=work, roles=frozenset({"member"}))


def stage(tmp_path: Path, data: bytes, disk_format: str | None = "raw", name: str = "staged") -> StagedImage:
    path = tmp_path / name
    path.write_bytes(data)
    return StagedImage(path=path, size=len(data), disk_format=disk_format, container_format="bare")


def stage_file(path: Path, disk_format: str | None) -> StagedImage:
    return StagedImage(path=path, size=path.stat().st_size, disk_format=disk_format, container_format="bare")


async def refused(step: Any, staged: StagedImage, ctx: StepContext, match: str) -> ImportFailed:
    """The step refuses with a message matching `match` and leaves nothing in the work dir."""
    with pytest.raises(ImportFailed, match=match) as info:
        await step.run(staged, ctx)
    assert list(ctx.work_dir.iterdir()) == []
    return info.value


# --- archive builders ---------------------------------------------------------------------


def zip_bytes(*members: tuple[str | zipfile.ZipInfo, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def patch_zip(data: bytes, local: tuple[int, bytes], central: tuple[int, bytes]) -> bytes:
    """Overwrite a field in the (single) local header and in its central directory entry."""
    out = bytearray(data)
    for signature, (offset, value) in ((b"PK\x03\x04", local), (b"PK\x01\x02", central)):
        at = out.index(signature) + offset
        out[at : at + len(value)] = value
    return bytes(out)


def crc16(data: bytes) -> int:
    """CRC-16/ARC (reflected 0x8005, init 0), the checksum LHA stores per member."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def lha_member(
    name: bytes, data: bytes, method: bytes = b"-lh0-", original: int | None = None, crc: int | None = None
) -> bytes:
    """A level-0 header: size, checksum, method, packed size, original size, DOS time/date,
    attribute, level, name length, name, CRC-16 of the data; then the (stored) data."""
    dos_date = (2024 - 1980) << 9 | 1 << 5 | 1
    body = (
        method
        + struct.pack("<II", len(data), len(data) if original is None else original)
        + struct.pack("<HH", 0, dos_date)
        + bytes([0x20, 0, len(name)])
        + name
        + struct.pack("<H", crc16(data) if crc is None else crc)
    )
    return bytes([len(body), sum(body) & 0xFF]) + body + data


def lha_bytes(*members: bytes) -> bytes:
    return b"".join(members) + b"\0"  # a zero header size ends the archive


def tar_gz(data: bytes) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo("disk.img")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue())


# --- image_decompression: accepted --------------------------------------------------------


async def test_decompress_leaves_other_data_alone(tmp_path: Path, ctx: StepContext) -> None:
    staged = stage(tmp_path, payload(4 * KiB))
    assert await Decompress().run(staged, ctx) is staged
    assert list(ctx.work_dir.iterdir()) == []


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
async def test_decompress_zip(tmp_path: Path, ctx: StepContext, method: int) -> None:
    data = payload()
    staged = stage(tmp_path, zip_bytes(("disk.img", data), method=method), name="image.zip")
    result = await Decompress().run(staged, ctx)
    assert result.path.read_bytes() == data
    assert result.size == len(data)
    assert result.path.parent == ctx.work_dir and "disk.img" not in result.path.name
    assert (result.disk_format, result.container_format) == ("raw", "bare")
    assert staged.path.exists()  # the source is never touched


async def test_decompress_gzip(tmp_path: Path, ctx: StepContext) -> None:
    data = payload()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="../../evil.img", mode="wb", fileobj=buf) as gz:  # FNAME is never used
        gz.write(data)
    staged = stage(tmp_path, buf.getvalue(), name="disk.zip")  # the name is not what decides
    result = await Decompress().run(staged, ctx)
    assert result.path.read_bytes() == data and result.size == len(data)
    assert [p.name for p in ctx.work_dir.iterdir()] == [result.path.name]
    assert not (tmp_path.parent / "evil.img").exists()


@pytest.mark.parametrize("fixture", ["disk-lh5-level2.lzh", "disk-lh7-level1.lzh"])
async def test_decompress_lha_fixture(tmp_path: Path, ctx: StepContext, fixture: str) -> None:
    staged = stage(tmp_path, (FIXTURES / fixture).read_bytes())
    result = await Decompress().run(staged, ctx)
    assert result.path.read_bytes() == FIXTURE_DATA and result.size == len(FIXTURE_DATA)


async def test_decompress_lha_stored_level0(tmp_path: Path, ctx: StepContext) -> None:
    data = payload(200 * KiB)
    result = await Decompress().run(stage(tmp_path, lha_bytes(lha_member(b"images/disk.img", data))), ctx)
    assert result.path.read_bytes() == data


async def test_decompress_streams_big_lha_member(tmp_path: Path, ctx: StepContext) -> None:
    # Bigger than lzhlib's 64 KiB rounds and the 1 MiB chunks: output arrives piece by piece.
    data = payload(5 * MiB)
    result = await Decompress().run(stage(tmp_path, lha_bytes(lha_member(b"disk.img", data))), ctx)
    assert result.path.read_bytes() == data


# --- image_decompression: refused ---------------------------------------------------------


async def test_zip_with_two_members(tmp_path: Path, ctx: StepContext) -> None:
    staged = stage(tmp_path, zip_bytes(("a.img", b"a" * 600), ("b.img", b"b" * 600)))
    await refused(Decompress(), staged, ctx, "ZIP archive has 2 members; exactly one is supported")


async def test_zip_without_members(tmp_path: Path, ctx: StepContext) -> None:
    await refused(Decompress(), stage(tmp_path, zip_bytes()), ctx, "ZIP archive has no members")


async def test_zip_with_duplicate_names(tmp_path: Path, ctx: StepContext) -> None:
    with pytest.warns(UserWarning, match="Duplicate name"):
        data = zip_bytes(("disk.img", b"a" * 600), ("disk.img", b"b" * 600))
    await refused(Decompress(), stage(tmp_path, data), ctx, "duplicate member names")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../evil", "contains '..'"),
        ("images/../../evil", "contains '..'"),
        ("..\\evil", "contains '..'"),
        ("/etc/passwd", "absolute path"),
        ("\\evil", "absolute path"),
        ("C:evil", "absolute path"),
        ("images/", "directory"),
    ],
)
async def test_zip_with_bad_member_name(tmp_path: Path, ctx: StepContext, name: str, problem: str) -> None:
    await refused(Decompress(), stage(tmp_path, zip_bytes((name, b"x" * 600))), ctx, "ZIP member .*" + problem)
    assert not (tmp_path / "evil").exists() and not (ctx.work_dir.parent.parent / "evil").exists()


async def test_zip_with_symlink(tmp_path: Path, ctx: StepContext) -> None:
    info = zipfile.ZipInfo("disk.img")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    await refused(Decompress(), stage(tmp_path, zip_bytes((info, b"/etc/shadow"))), ctx, "symbolic link")


async def test_zip_with_dos_directory(tmp_path: Path, ctx: StepContext) -> None:
    info = zipfile.ZipInfo("disk.img")
    info.create_system = 0
    info.external_attr = 0x10
    await refused(Decompress(), stage(tmp_path, zip_bytes((info, b"x"))), ctx, "directory")


async def test_zip_with_encrypted_member(tmp_path: Path, ctx: StepContext) -> None:
    data = patch_zip(zip_bytes(("disk.img", payload(4 * KiB))), (6, b"\x01\x00"), (8, b"\x01\x00"))
    await refused(Decompress(), stage(tmp_path, data), ctx, "ZIP member is encrypted")


async def test_zip_with_bzip2_member(tmp_path: Path, ctx: StepContext) -> None:
    data = zip_bytes(("disk.img", payload(4 * KiB)), method=zipfile.ZIP_BZIP2)
    await refused(Decompress(), stage(tmp_path, data), ctx, "compression method 12; only stored and deflate")


async def test_zip_with_crc_mismatch(tmp_path: Path, ctx: StepContext) -> None:
    data = bytearray(zip_bytes(("disk.img", payload(4 * KiB)), method=zipfile.ZIP_STORED))
    data[100] ^= 0xFF  # inside the stored member data
    await refused(Decompress(), stage(tmp_path, bytes(data)), ctx, "ZIP archive is corrupt.*Bad CRC-32")


@pytest.mark.parametrize("delta", [+10, -10])
async def test_zip_member_size_differs_from_header(tmp_path: Path, ctx: StepContext, delta: int) -> None:
    data = payload(4 * KiB)
    size = struct.pack("<I", len(data) + delta)
    archive = patch_zip(zip_bytes(("disk.img", data), method=zipfile.ZIP_STORED), (22, size), (24, size))
    await refused(
        Decompress(),
        stage(tmp_path, archive),
        ctx,
        "ZIP (member holds 4096 bytes but its header says|archive is corrupt)",
    )


async def test_truncated_zip(tmp_path: Path, ctx: StepContext) -> None:
    data = zip_bytes(("disk.img", payload(64 * KiB)))
    await refused(Decompress(), stage(tmp_path, data[:-40]), ctx, "ZIP archive is corrupt or truncated")


async def test_zip_bomb_refused_from_its_header(tmp_path: Path, ctx: StepContext) -> None:
    data = zip_bytes(("disk.img", bytes(8 * MiB)))
    assert len(data) < 16 * KiB
    await refused(Decompress(max_ratio=100), stage(tmp_path, data), ctx, "ZIP member would expand more than 100 times")
    await refused(Decompress(max_output_bytes=MiB), stage(tmp_path, data), ctx, "over the limit of 1048576 bytes")


async def test_gzip_with_trailing_garbage(tmp_path: Path, ctx: StepContext) -> None:
    data = gzip.compress(payload(64 * KiB)) + b"garbage"
    await refused(Decompress(), stage(tmp_path, data), ctx, "GZIP file has trailing data after the compressed stream")


async def test_gzip_with_trailing_zeros(tmp_path: Path, ctx: StepContext) -> None:
    data = gzip.compress(payload(64 * KiB)) + bytes(512)  # the gzip module would skip these
    await refused(Decompress(), stage(tmp_path, data), ctx, "trailing data")


async def test_multi_member_gzip(tmp_path: Path, ctx: StepContext) -> None:
    data = gzip.compress(payload(64 * KiB)) + gzip.compress(b"second member")
    await refused(Decompress(), stage(tmp_path, data), ctx, "GZIP file has more than one member")


@pytest.mark.parametrize("cut", [1, 6, 300])
async def test_truncated_gzip(tmp_path: Path, ctx: StepContext, cut: int) -> None:
    data = gzip.compress(payload(256 * KiB))
    await refused(Decompress(), stage(tmp_path, data[:-cut]), ctx, "GZIP stream is truncated")


@pytest.mark.parametrize(("offset", "check"), [(-8, "incorrect data check"), (-4, "incorrect length check")])
async def test_gzip_trailer_mismatch(tmp_path: Path, ctx: StepContext, offset: int, check: str) -> None:
    data = bytearray(gzip.compress(payload(64 * KiB)))
    data[offset] ^= 0xFF  # CRC-32, then ISIZE (the real size differs from the recorded one)
    await refused(Decompress(), stage(tmp_path, bytes(data)), ctx, "GZIP stream is corrupt: .*" + check)


async def test_corrupt_gzip(tmp_path: Path, ctx: StepContext) -> None:
    data = bytearray(gzip.compress(payload(64 * KiB)))
    data[20:40] = bytes(range(200, 220))
    await refused(Decompress(), stage(tmp_path, bytes(data)), ctx, "GZIP stream is (corrupt|truncated)")


@pytest.mark.parametrize(
    "archive",
    [gzip.compress(b""), zip_bytes(("disk.img", b"")), lha_bytes(lha_member(b"disk.img", b""))],
    ids=["gzip", "zip", "lha"],
)
async def test_empty_result(tmp_path: Path, ctx: StepContext, archive: bytes) -> None:
    await refused(Decompress(), stage(tmp_path, archive), ctx, "decompressed image data is empty")


async def test_gzip_bomb_fails_fast(tmp_path: Path, ctx: StepContext) -> None:
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as gz:
        zeros = bytes(MiB)
        for _ in range(200):
            gz.write(zeros)
    assert path.stat().st_size < 400 * KiB
    start = time.monotonic()
    error = await refused(Decompress(max_ratio=100), stage_file(path, "raw"), ctx, "expands more than 100 times")
    assert time.monotonic() - start < 5
    assert "decompression bomb" in str(error)


async def test_gzip_over_max_output_bytes(tmp_path: Path, ctx: StepContext) -> None:
    data = gzip.compress(payload(3 * MiB))
    await refused(
        Decompress(max_output_bytes=2 * MiB), stage(tmp_path, data), ctx, "exceeds the limit of 2097152 bytes"
    )


@pytest.mark.parametrize(
    ("archive", "inner"),
    [
        (tar_gz(payload(64 * KiB)), "tar"),
        (gzip.compress(gzip.compress(payload(64 * KiB))), "gzip"),
        (gzip.compress(zip_bytes(("disk.img", payload(64 * KiB)))), "zip"),
        (zip_bytes(("disk.img.gz", gzip.compress(payload(64 * KiB)))), "gzip"),
        (zip_bytes(("disk.img.xz", lzma.compress(payload(64 * KiB)))), "xz"),
        (gzip.compress(bz2.compress(payload(64 * KiB))), "bzip2"),
        (gzip.compress(zstandard.ZstdCompressor().compress(payload(64 * KiB))), "zstd"),
        (lha_bytes(lha_member(b"disk.lzh", (FIXTURES / "disk-lh5-level2.lzh").read_bytes())), "lha"),
        (gzip.compress(gzip.compress(b"tiny")), "gzip"),  # shorter than the probed head
    ],
    ids=["tar.gz", "gz.gz", "zip.gz", "gz-in-zip", "xz-in-zip", "bz2.gz", "zst.gz", "lzh-in-lzh", "tiny-gz.gz"],
)
async def test_multi_layer_archives(tmp_path: Path, ctx: StepContext, archive: bytes, inner: str) -> None:
    await refused(
        Decompress(),
        stage(tmp_path, archive),
        ctx,
        "itself a %s archive: multi-layer archives \\(e.g. tar.gz\\) are not supported" % inner,
    )


async def test_lha_with_two_members(tmp_path: Path, ctx: StepContext) -> None:
    data = lha_bytes(lha_member(b"a.img", b"a" * 600), lha_member(b"b.img", b"b" * 600))
    await refused(Decompress(), stage(tmp_path, data), ctx, "LHA archive has 2 members")


async def test_lha_with_duplicate_names(tmp_path: Path, ctx: StepContext) -> None:
    data = lha_bytes(lha_member(b"a.img", b"a" * 600), lha_member(b"a.img", b"b" * 600))
    await refused(Decompress(), stage(tmp_path, data), ctx, "LHA archive has duplicate member names")


@pytest.mark.parametrize(
    ("name", "problem"),
    [(b"../evil", "contains '..'"), (b"a\\..\\..\\evil", "contains '..'"), (b"/etc/passwd", "absolute path")],
)
async def test_lha_with_bad_member_name(tmp_path: Path, ctx: StepContext, name: bytes, problem: str) -> None:
    await refused(
        Decompress(), stage(tmp_path, lha_bytes(lha_member(name, b"x" * 600))), ctx, "LHA member name .*" + problem
    )


async def test_lha_directory_member(tmp_path: Path, ctx: StepContext) -> None:
    data = lha_bytes(lha_member(b"images", b"", method=b"-lhd-"))
    await refused(Decompress(), stage(tmp_path, data), ctx, "LHA member is a directory or link")


async def test_lha_crc_mismatch(tmp_path: Path, ctx: StepContext) -> None:
    data = payload(8 * KiB)
    archive = lha_bytes(lha_member(b"disk.img", data, crc=crc16(data) ^ 0x5A5A))
    await refused(Decompress(), stage(tmp_path, archive), ctx, "LHA member data is corrupt: CRC mismatch")


async def test_lha_member_shorter_than_its_header(tmp_path: Path, ctx: StepContext) -> None:
    data = payload(8 * KiB)
    archive = lha_bytes(lha_member(b"disk.img", data, original=len(data) + 100))
    await refused(Decompress(), stage(tmp_path, archive), ctx, "LHA member holds 8192 bytes but its header says 8292")


@pytest.mark.parametrize("seed", range(6))
async def test_corrupt_lha_data(tmp_path: Path, ctx: StepContext, seed: int) -> None:
    data = bytearray((FIXTURES / "disk-lh5-level2.lzh").read_bytes())
    for i in range(8):
        data[60 + (seed * 37 + i * 61) % 500] ^= 0xA5 ^ seed
    await refused(Decompress(), stage(tmp_path, bytes(data)), ctx, "LHA member (data is corrupt|holds)")


async def test_truncated_lha(tmp_path: Path, ctx: StepContext) -> None:
    data = (FIXTURES / "disk-lh5-level2.lzh").read_bytes()[:-100]
    await refused(Decompress(), stage(tmp_path, data), ctx, "LHA archive is corrupt")


async def test_lha_with_unsupported_method(tmp_path: Path, ctx: StepContext) -> None:
    data = lha_bytes(lha_member(b"disk.img", b"x" * 600, method=b"-lz5-"))
    await refused(Decompress(), stage(tmp_path, data), ctx, "LHA archive is corrupt or uses an unsupported method")


async def test_lha_bomb_refused_before_decoding(tmp_path: Path, ctx: StepContext) -> None:
    archive = lha_bytes(lha_member(b"disk.img", b"x" * 1000, original=(1 << 32) - 1))
    await refused(
        Decompress(max_output_bytes=1 << 31), stage(tmp_path, archive), ctx, "over the limit of 2147483648 bytes"
    )
    archive = lha_bytes(lha_member(b"disk.img", b"x" * 1000, original=1 << 30))
    await refused(Decompress(), stage(tmp_path, archive), ctx, "LHA member would expand more than 1000 times")
    fixture = stage(tmp_path, (FIXTURES / "disk-lh5-level2.lzh").read_bytes())
    await refused(Decompress(max_ratio=50), fixture, ctx, "would expand more than 50 times")


async def test_cancelled_decompression_removes_partial_output(tmp_path: Path, ctx: StepContext) -> None:
    path = tmp_path / "big.gz"
    with gzip.open(path, "wb", compresslevel=1) as gz:
        chunk = payload(MiB)
        for _ in range(300):
            gz.write(chunk)
    task = asyncio.ensure_future(Decompress().run(stage_file(path, "raw"), ctx))

    async def output_started() -> bool:
        return bool(list(ctx.work_dir.iterdir()))

    async def output_gone() -> bool:
        return not list(ctx.work_dir.iterdir())

    await eventually(output_started, "the partial output", interval=0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(output_gone, "the partial output removed", within=10, interval=0.02)
    assert list(ctx.work_dir.iterdir()) == []


# --- image_conversion ---------------------------------------------------------------------


def qemu(qemu_img: str, *args: str) -> str:
    return subprocess.run([qemu_img, *args], check=True, capture_output=True, text=True).stdout


def raw_disk(path: Path, size: int = 8 * MiB) -> Path:
    """A sparse raw disk with data in a few places (a boot sector signature included)."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in (0, 1 * MiB + 4096, size - 64 * KiB):
            f.seek(offset)
            f.write(os.urandom(64 * KiB))
        f.seek(510)
        f.write(b"\x00\x00")  # no MBR signature: the inspector sees plain raw
    return path


def make_image(qemu_img: str, tmp_path: Path, fmt: str, *options: str) -> tuple[Path, Path]:
    """A raw disk and the same disk converted to `fmt` by qemu-img."""
    raw = raw_disk(tmp_path / "source.raw")
    out = tmp_path / ("source." + fmt)
    qemu(qemu_img, "convert", "-f", "raw", "-O", fmt, *options, str(raw), str(out))
    return raw, out


def assert_same_disk(qemu_img: str, a: Path, fmt_a: str, b: Path, fmt_b: str) -> None:
    subprocess.run([qemu_img, "compare", "-q", "-f", fmt_a, "-F", fmt_b, str(a), str(b)], check=True)


def forbid_qemu_img(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("qemu-img must not run: %r" % (args,))

    monkeypatch.setattr(convert_module.asyncio, "create_subprocess_exec", no_subprocess)


def fake_qemu_img(tmp_path: Path, body: str) -> str:
    path = tmp_path / "fake-qemu-img"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_convert_rejects_unknown_output_format() -> None:
    with pytest.raises(ValueError, match="vhd"):
        Convert(output_format="vhd")


@pytest.mark.parametrize(
    ("fmt", "options"), [("qcow2", ()), ("vdi", ()), ("vpc", ("-o", "subformat=fixed")), ("vhdx", ())]
)
async def test_convert_to_raw(
    tmp_path: Path, ctx: StepContext, qemu_img: str, fmt: str, options: tuple[str, ...]
) -> None:
    raw, image = make_image(qemu_img, tmp_path, fmt, *options)
    claim = {"vpc": "vhd"}.get(fmt, fmt)
    staged = stage_file(image, claim).evolve(container_format="ovf", properties={"a": "b"})
    result = await Convert(qemu_img=qemu_img).run(staged, ctx)
    assert result.path.parent == ctx.work_dir and result.path != image
    assert (result.disk_format, result.container_format) == ("raw", "bare")
    assert result.size == result.path.stat().st_size
    assert result.properties == {"a": "b"}
    virtual = json.loads(qemu(qemu_img, "info", "-f", fmt, "--output=json", str(image)))["virtual-size"]
    assert result.virtual_size == virtual
    # Byte for byte what qemu-img itself makes of the image.
    expected = tmp_path / "expected.raw"
    qemu(qemu_img, "convert", "-f", fmt, "-O", "raw", str(image), str(expected))
    assert result.path.read_bytes() == expected.read_bytes()
    if fmt != "vpc":  # a fixed VHD's size comes from its CHS geometry
        assert result.path.read_bytes() == raw.read_bytes()


@pytest.mark.parametrize("output", ["qcow2", "vmdk"])
async def test_convert_raw(tmp_path: Path, ctx: StepContext, qemu_img: str, output: str) -> None:
    raw = raw_disk(tmp_path / "disk.raw")
    result = await Convert(output_format=output, qemu_img=qemu_img).run(stage_file(raw, "raw"), ctx)
    assert result.disk_format == output and result.container_format == "bare"
    assert result.virtual_size == raw.stat().st_size
    assert result.size == result.path.stat().st_size < raw.stat().st_size  # sparse formats
    assert_same_disk(qemu_img, raw, "raw", result.path, output)


async def test_convert_vmdk_records_vmware_properties(tmp_path: Path, ctx: StepContext, qemu_img: str) -> None:
    raw, vmdk = make_image(qemu_img, tmp_path, "vmdk", "-o", "subformat=streamOptimized,adapter_type=lsilogic")
    result = await Convert(output_format="qcow2", qemu_img=qemu_img).run(stage_file(vmdk, "vmdk"), ctx)
    assert result.properties == {"vmware_disktype": "streamOptimized", "vmware_adaptertype": "lsiLogic"}
    assert_same_disk(qemu_img, raw, "raw", result.path, "qcow2")


async def test_vmdk_properties_the_user_set_are_kept(tmp_path: Path, work: Path, qemu_img: str) -> None:
    _, vmdk = make_image(qemu_img, tmp_path, "vmdk", "-o", "adapter_type=buslogic")
    ctx = StepContext(
        image_id="img-1", work_dir=work, roles=frozenset(), user_properties=frozenset({"vmware_adaptertype"})
    )
    result = await Convert(qemu_img=qemu_img).run(stage_file(vmdk, "vmdk"), ctx)
    assert result.properties == {"vmware_disktype": "sparse"}


async def test_vmdk_already_in_output_format(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, vmdk = make_image(qemu_img, tmp_path, "vmdk", "-o", "adapter_type=ide")
    forbid_qemu_img(monkeypatch)
    staged = stage_file(vmdk, "vmdk")
    result = await Convert(output_format="vmdk").run(staged, ctx)
    assert result.path == vmdk and result.size == staged.size and result.disk_format == "vmdk"
    assert result.virtual_size == 8 * MiB
    assert result.properties == {"vmware_disktype": "sparse", "vmware_adaptertype": "ide"}


async def test_vmware_properties_come_from_the_inspection(
    tmp_path: Path, ctx: StepContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # convert.py no longer reads the descriptor: what the inspector found is all it uses.
    data = bytearray(4 * KiB)
    data[:4] = b"KDMV"
    staged = stage(tmp_path, bytes(data), disk_format="vmdk")
    found = Inspection("vmdk", MiB, vmdk_create_type="streamOptimized", vmdk_adapter_type="LsiSAS1068")
    monkeypatch.setattr(convert_module, "inspect_file", lambda path, claimed, limit=None: found)
    forbid_qemu_img(monkeypatch)
    result = await Convert(output_format="vmdk").run(staged, ctx)
    assert result.properties == {"vmware_disktype": "streamOptimized", "vmware_adaptertype": "lsiLogicsas"}


@pytest.mark.parametrize(
    ("create_type", "adapter_type", "expected"),
    [
        ("monolithicSparse", None, {"vmware_disktype": "sparse"}),
        ("streamOptimized", "pvscsi", {"vmware_disktype": "streamOptimized", "vmware_adaptertype": "paraVirtual"}),
        ("monolithicSparse", "floppy", {"vmware_disktype": "sparse"}),  # unknown: left unset
        (None, None, {}),
    ],
)
def test_vmware_property_mapping(create_type: str | None, adapter_type: str | None, expected: dict[str, str]) -> None:
    found = Inspection("vmdk", MiB, create_type, adapter_type)
    assert formats_module.introspected_properties(found, {"a": "b"}, frozenset()) == {"a": "b", **expected}
    assert formats_module.introspected_properties(found, {}, frozenset({"vmware_disktype", "vmware_adaptertype"})) == {}


async def test_vmdk_with_unknown_descriptor_line_is_refused_before_qemu_img(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, vmdk = make_image(qemu_img, tmp_path, "vmdk")
    data = bytearray(vmdk.read_bytes())
    sector, sectors = struct.unpack_from("<QQ", data, 28)
    text = data[sector * 512 : (sector + sectors) * 512].split(b"\0", 1)[0] + b'extentFile="/etc/shadow"\n'
    data[sector * 512 : (sector + sectors) * 512] = text.ljust(sectors * 512, b"\0")
    vmdk.write_bytes(bytes(data))
    forbid_qemu_img(monkeypatch)
    await refused(Convert(), stage_file(vmdk, "vmdk"), ctx, 'does not understand: "extentFile="/etc/shadow""')


async def test_virtual_size_limit_applies_to_the_qcow2_l1_table(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header says 8 MiB, but the L1 table maps 3 x 512 MiB: the inspector sees it before qemu-img runs.
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    data = bytearray(qcow2.read_bytes())
    struct.pack_into(">I", data, 36, 3)
    qcow2.write_bytes(bytes(data) + bytes(16))
    forbid_qemu_img(monkeypatch)
    await refused(Convert(max_virtual_size=1 << 30), stage_file(qcow2, "qcow2"), ctx, "qcow2 L1 table has 3 entries")


async def test_truncated_qcow2_is_refused_before_qemu_img(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    data = qcow2.read_bytes()
    qcow2.write_bytes(data[: len(data) - 64 * KiB])
    forbid_qemu_img(monkeypatch)
    await refused(Convert(), stage_file(qcow2, "qcow2"), ctx, "qcow2 image is truncated or corrupt")


async def test_same_format_is_not_converted(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    forbid_qemu_img(monkeypatch)
    staged = stage_file(qcow2, "qcow2")
    assert await Convert(output_format="qcow2").run(staged, ctx) == staged.evolve(virtual_size=8 * MiB)
    raw = stage(tmp_path, payload(MiB))
    assert await Convert().run(raw, ctx) == raw.evolve(virtual_size=MiB)
    assert list(ctx.work_dir.iterdir()) == []


async def test_iso_stays_as_is(tmp_path: Path, ctx: StepContext, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytearray(64 * KiB)
    data[32769:32774] = b"CD001"
    forbid_qemu_img(monkeypatch)
    staged = stage(tmp_path, bytes(data), disk_format="iso")
    assert await Convert(output_format="qcow2").run(staged, ctx) == staged.evolve(virtual_size=64 * KiB)


async def test_uninspected_claims_stay_as_they_are(
    tmp_path: Path, ctx: StepContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_qemu_img(monkeypatch)
    staged = stage(tmp_path, payload(64 * KiB), disk_format="aki")
    assert await Convert(output_format="qcow2").run(staged, ctx) is staged


async def test_qcow2_claimed_as_raw_is_refused_before_qemu_img(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    forbid_qemu_img(monkeypatch)
    await refused(Convert(), stage_file(qcow2, "raw"), ctx, "image data is qcow2, not raw as claimed")


async def test_qcow2_with_backing_file_is_refused_before_qemu_img(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base = make_image(qemu_img, tmp_path, "qcow2")
    overlay = tmp_path / "overlay.qcow2"
    qemu(qemu_img, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(overlay))
    forbid_qemu_img(monkeypatch)
    await refused(Convert(), stage_file(overlay, "qcow2"), ctx, "backing file")


async def test_virtual_size_limit(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    big = tmp_path / "big.qcow2"
    qemu(qemu_img, "create", "-q", "-f", "qcow2", str(big), "1T")
    forbid_qemu_img(monkeypatch)
    await refused(
        Convert(max_virtual_size=1 << 30),
        stage_file(big, "qcow2"),
        ctx,
        "virtual size 1099511627776 bytes exceeds the limit of 1073741824",
    )


async def test_virtual_size_limit_of_0_is_no_limit(
    tmp_path: Path, ctx: StepContext, qemu_img: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    forbid_qemu_img(monkeypatch)
    staged = stage_file(qcow2, "qcow2")
    assert await Convert(output_format="qcow2", max_virtual_size=0).run(staged, ctx) == staged.evolve(
        virtual_size=8 * MiB
    )


async def test_qemu_img_failure_reports_its_stderr(tmp_path: Path, ctx: StepContext, qemu_img: str) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    data = bytearray(qcow2.read_bytes())
    data[40:48] = struct.pack(">Q", 12345)  # L1 table offset: not cluster aligned
    qcow2.write_bytes(bytes(data))
    await refused(
        Convert(qemu_img=qemu_img),
        stage_file(qcow2, "qcow2"),
        ctx,
        "qemu-img info failed \\(exit status 1\\): qemu-img: .*L1 table",
    )


async def test_failed_convert_leaves_no_output(tmp_path: Path, ctx: StepContext) -> None:
    script = fake_qemu_img(
        tmp_path,
        'if [ "$1" = info ]; then echo \'{"virtual-size": 1048576, "format": "raw"}\'; exit 0; fi\n'
        'echo partial > "$7"; echo "qemu-img: write failed: No space left" >&2; exit 1',
    )
    await refused(
        Convert(output_format="qcow2", qemu_img=script),
        stage(tmp_path, payload(MiB)),
        ctx,
        "qemu-img convert failed \\(exit status 1\\): qemu-img: write failed: No space left",
    )


async def test_converted_output_is_inspected(tmp_path: Path, ctx: StepContext) -> None:
    # A qemu-img that claims success but writes something that is not qcow2.
    script = fake_qemu_img(
        tmp_path,
        'if [ "$1" = info ]; then echo \'{"virtual-size": 1048576}\'; exit 0; fi\nprintf "QFI\\373" > "$7"; exit 0',
    )
    await refused(
        Convert(output_format="qcow2", qemu_img=script),
        stage(tmp_path, payload(MiB)),
        ctx,
        "converted image failed inspection: image data is too short to be qcow2",
    )


async def test_qemu_img_runs_under_resource_limits(tmp_path: Path, ctx: StepContext) -> None:
    limits = tmp_path / "limits"
    script = fake_qemu_img(tmp_path, 'cat /proc/$$/limits > %s; echo "qemu-img: stop here" >&2; exit 3' % limits)
    step = Convert(output_format="qcow2", qemu_img=script, cpu_seconds=7, memory_bytes=3 << 30)
    await refused(
        step, stage(tmp_path, payload(MiB)), ctx, "qemu-img info failed \\(exit status 3\\): qemu-img: stop here"
    )
    rows = {line[:26].strip(): line[26:].split() for line in limits.read_text().splitlines()[1:]}
    assert rows["Max cpu time"][:2] == ["7", "12"]  # SIGXCPU at 7 s, SIGKILL at 12 s
    assert rows["Max address space"][:2] == [str(3 << 30)] * 2


async def test_cpu_limit_stops_qemu_img(tmp_path: Path, ctx: StepContext) -> None:
    script = fake_qemu_img(tmp_path, "while :; do :; done")
    step = Convert(output_format="qcow2", qemu_img=script, cpu_seconds=1)
    await refused(step, stage(tmp_path, payload(MiB)), ctx, "killed by SIGXCPU: CPU time limit of 1 s reached")


async def test_memory_limit_applies_to_real_qemu_img(tmp_path: Path, ctx: StepContext, qemu_img: str) -> None:
    _, qcow2 = make_image(qemu_img, tmp_path, "qcow2")
    await refused(
        Convert(qemu_img=qemu_img, memory_bytes=16 * MiB), stage_file(qcow2, "qcow2"), ctx, "qemu-img info failed"
    )


async def test_cancel_kills_qemu_img(tmp_path: Path, ctx: StepContext) -> None:
    pid_file = tmp_path / "pid"
    script = fake_qemu_img(tmp_path, "echo $$ > %s.tmp; mv %s.tmp %s; exec sleep 60" % (pid_file, pid_file, pid_file))
    task = asyncio.ensure_future(
        Convert(output_format="qcow2", qemu_img=script).run(stage(tmp_path, payload(MiB)), ctx)
    )

    async def started() -> bool:
        return pid_file.exists()

    await eventually(started, "the fake qemu-img to start", interval=0.01)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert list(ctx.work_dir.iterdir()) == []


# --- inject_image_metadata ----------------------------------------------------------------

INJECT = {
    "site": "edge-1",
    "hw_disk_bus": "virtio",
    "os_glance_importing_to_stores": "x",
    "os_glance_failed_import": "y",
}


async def test_inject_for_members(tmp_path: Path, ctx: StepContext, caplog: pytest.LogCaptureFixture) -> None:
    staged = stage(tmp_path, b"x").evolve(properties={"kept": "1", "site": "old"})
    result = await InjectMetadata(INJECT).run(staged, ctx)
    assert result.properties == {"kept": "1", "site": "edge-1", "hw_disk_bus": "virtio"}
    assert staged.properties == {"kept": "1", "site": "old"}  # a new dict, not a mutation
    assert "os_glance_importing_to_stores" in caplog.text and "os_glance_failed_import" in caplog.text


@pytest.mark.parametrize("roles", [{"admin"}, {"member", "Admin"}])
async def test_inject_skips_ignored_roles(tmp_path: Path, work: Path, roles: set[str]) -> None:
    ctx = StepContext(image_id="img-1", work_dir=work, roles=frozenset(roles))
    staged = stage(tmp_path, b"x")
    assert await InjectMetadata(INJECT).run(staged, ctx) is staged


async def test_inject_with_custom_ignored_roles(tmp_path: Path, work: Path) -> None:
    step = InjectMetadata({"site": "edge-1"}, ignore_user_roles=["service"])
    admin = StepContext(image_id="img-1", work_dir=work, roles=frozenset({"admin"}))
    service = StepContext(image_id="img-1", work_dir=work, roles=frozenset({"service", "member"}))
    staged = stage(tmp_path, b"x")
    assert (await step.run(staged, admin)).properties == {"site": "edge-1"}
    assert await step.run(staged, service) is staged


# --- the same decoder fed as a download arrives (appliance.pipeline.spool) -----------------


async def _pieces(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in [*cuts, len(data)]:
        if cut > start:
            yield data[start:cut]
            start = cut


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (gzip.compress(payload(3 * MiB)), None),
        (gzip.compress(payload(64 * KiB)) + gzip.compress(b"second"), "more than one member"),
        (gzip.compress(payload(64 * KiB)) + b"g", "trailing data"),
        (gzip.compress(payload(256 * KiB))[:-6], "truncated"),
        (gzip.compress(bytes(8 * MiB)), "expands more than 100 times"),
    ],
    ids=["whole", "two-members", "trailing", "truncated", "bomb"],
)
async def test_spooled_gzip_is_refused_as_the_file_is(
    tmp_path: Path, ctx: StepContext, data: bytes, reason: str | None
) -> None:
    """Fed in pieces cut anywhere (one byte at a time around the end of the member), the
    streaming decoder gives the same bytes, or the same refusal, as the step on the file."""
    step = Decompress(max_ratio=100)
    end = len(data) - 12
    cuts = [1, 7, 4096, 70_000, *range(end - 4, len(data))]
    out = tmp_path / "spooled"
    if reason is None:
        got = await spool(
            _pieces(data, cuts),
            out,
            decompress=step,
            expected=None,
            ensure_room=lambda n: None,
            on_progress=lambda n: None,
        )
        assert got.decoded == "gzip" and got.received == len(data)
        assert out.read_bytes() == gzip.decompress(data) and got.size == out.stat().st_size
        assert (await step.run(stage(tmp_path, data), ctx)).path.read_bytes() == out.read_bytes()
        return
    with pytest.raises(ImportFailed, match=reason):
        await spool(
            _pieces(data, cuts),
            out,
            decompress=step,
            expected=None,
            ensure_room=lambda n: None,
            on_progress=lambda n: None,
        )
    await refused(step, stage(tmp_path, data), ctx, reason)
