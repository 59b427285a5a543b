"""appliance.formats against images made by the real qemu-img (required, not skipped)."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from appliance.errors import FormatRejected
from appliance.formats import (
    CONTAINER_FORMATS,
    DISK_FORMATS,
    HEAD_SIZE,
    TAIL_SIZE,
    FormatInspector,
    Inspection,
    inspect_file,
)

QEMU_IMG = shutil.which("qemu-img") or "qemu-img"  # absence fails via the conftest qemu_img fixture
KiB = 1 << 10
MiB = 1 << 20

Chunk = bytes | bytearray | memoryview


def run_qemu_img(*args: str) -> str:
    return subprocess.run([QEMU_IMG, *args], check=True, capture_output=True, text=True).stdout


def qemu_virtual_size(path: Path, fmt: str) -> int:
    return int(json.loads(run_qemu_img("info", "-f", fmt, "--output=json", str(path)))["virtual-size"])


def mbr_entry(status: int, ptype: int, start: int, count: int) -> bytes:
    return struct.pack("<B3sB3sII", status, b"\0\0\0", ptype, b"\0\0\0", start, count)


def write_mbr(buf: bytearray, *entries: bytes) -> None:
    for i, entry in enumerate(entries):
        buf[446 + 16 * i : 462 + 16 * i] = entry
    buf[510:512] = b"\x55\xaa"


def make_iso(path: Path, hybrid: bool = False) -> None:
    data = bytearray(MiB)
    data[32768:32775] = b"\x01CD001\x01"  # primary volume descriptor
    data[34816:34823] = b"\xffCD001\x01"  # set terminator
    if hybrid:
        write_mbr(data, mbr_entry(0x80, 0x17, 1, 2047))
    path.write_bytes(data)


def make_gpt(path: Path) -> None:
    data = bytearray(2 * MiB)
    write_mbr(data, mbr_entry(0, 0xEE, 1, 4095))
    data[512:520] = b"EFI PART"
    path.write_bytes(data)


def make_mbr(path: Path) -> None:
    data = bytearray(2 * MiB)
    write_mbr(data, mbr_entry(0x80, 0x83, 2048, 2048))
    path.write_bytes(data)


# name -> (qemu-img create arguments or a builder, format for `qemu-img info -f`, detected format, matching claim)
IMAGES: dict[str, tuple[tuple[str, ...] | Callable[[Path], None], str, str, str]] = {
    "qcow2": (("-f", "qcow2", "5M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-v2": (("-f", "qcow2", "-o", "compat=0.10", "3M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-2M-clusters": (("-f", "qcow2", "-o", "cluster_size=2M", "5M"), "qcow2", "qcow2", "qcow2"),
    "vmdk-monolithicSparse": (("-f", "vmdk", "-o", "subformat=monolithicSparse", "5M"), "vmdk", "vmdk", "vmdk"),
    "vmdk-streamOptimized": (("-f", "vmdk", "-o", "subformat=streamOptimized", "5M"), "vmdk", "vmdk", "vmdk"),
    "vhd-dynamic": (("-f", "vpc", "5M"), "vpc", "vhd", "vhd"),
    "vhd-fixed": (("-f", "vpc", "-o", "subformat=fixed", "5M"), "vpc", "vhd", "vhd"),
    "vhdx": (("-f", "vhdx", "5M"), "vhdx", "vhdx", "vhdx"),
    "vhdx-3000M": (("-f", "vhdx", "3000M"), "vhdx", "vhdx", "vhdx"),
    "vhdx-fixed": (("-f", "vhdx", "-o", "subformat=fixed", "4M"), "vhdx", "vhdx", "vhdx"),
    "vdi": (("-f", "vdi", "5M"), "vdi", "vdi", "vdi"),
    "vdi-static": (("-f", "vdi", "-o", "static=on", "3M"), "vdi", "vdi", "vdi"),
    "raw": (("-f", "raw", "3M"), "raw", "raw", "raw"),
    "iso": (make_iso, "raw", "iso", "iso"),
    "iso-hybrid": (lambda p: make_iso(p, hybrid=True), "raw", "iso", "iso"),
    "gpt": (make_gpt, "raw", "gpt", "raw"),
    "mbr": (make_mbr, "raw", "mbr", "raw"),
}

# Images that must be refused, with qemu-img create arguments (a file name marks the output).
REFUSED: dict[str, tuple[str, ...]] = {
    "qcow2-backing": ("-f", "qcow2", "-b", "{dir}/base.raw", "-F", "raw", "{out}", "4M"),
    "qcow2-data-file": ("-f", "qcow2", "-o", "data_file={dir}/data.raw", "{out}", "4M"),
    "qcow2-data-file-raw": ("-f", "qcow2", "-o", "data_file={dir}/data2.raw,data_file_raw=on", "{out}", "4M"),
    "vmdk-base": ("-f", "vmdk", "{out}", "4M"),
    "vmdk-child": ("-f", "vmdk", "-b", "{dir}/vmdk-base", "-F", "vmdk", "{out}", "4M"),
    "vmdk-monolithicFlat": ("-f", "vmdk", "-o", "subformat=monolithicFlat", "{out}", "5M"),
    "vmdk-twoGbMaxExtentSparse": ("-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "{out}", "5M"),
    "vmdk-twoGbMaxExtentFlat": ("-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", "{out}", "5M"),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, qemu_img: str) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    paths: dict[str, Path] = {}
    for name, (recipe, _, _, _) in IMAGES.items():
        path = paths[name] = directory / name
        if callable(recipe):
            recipe(path)
        else:
            run_qemu_img("create", "-q", *recipe[:-1], str(path), recipe[-1])
    run_qemu_img("create", "-q", "-f", "raw", str(directory / "base.raw"), "4M")
    for name, args in REFUSED.items():
        paths[name] = directory / name
        run_qemu_img("create", "-q", *(a.format(dir=directory, out=directory / name) for a in args))
    # The sparse extent twoGbMaxExtentSparse points at, which has no descriptor of its own.
    paths["vmdk-extent-s001"] = directory / "vmdk-twoGbMaxExtentSparse-s001"
    return paths


def chunked(data: bytes, plan: str) -> Iterator[Chunk]:
    """The same bytes cut the ways an HTTP body can arrive, as bytes, bytearray and memoryview."""
    view = memoryview(data)
    if plan == "whole":
        yield data
    elif plan == "1MiB":
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]
    elif plan == "4KiB":
        for i in range(0, len(data), 4 * KiB):
            yield bytearray(view[i : i + 4 * KiB])
    elif plan == "7B-head":  # tiny chunks through the headers, then odd-sized big ones
        cut = min(len(data), 64 * KiB)
        for i in range(0, cut, 7):
            yield view[i : min(i + 7, cut)]
        for i in range(cut, len(data), MiB + 1):
            yield view[i : i + MiB + 1]
    elif plan == "odd":  # sizes straddling every structure boundary, down to single bytes
        sizes, i, n = (7, 1, 4093, 65537, 513, 300 * KiB), 0, 0
        while i < len(data):
            size = sizes[n % len(sizes)]
            yield view[i : i + size]
            i, n = i + size, n + 1
    else:
        raise AssertionError(plan)


PLANS = ("whole", "1MiB", "4KiB", "7B-head", "odd")


def inspect(data: bytes, claim: str | None, plan: str = "whole") -> Inspection:
    inspector = FormatInspector(claim)
    for chunk in chunked(data, plan):
        inspector.feed(chunk)
    return inspector.finish()


def refusal(data: bytes, claim: str | None, plan: str = "whole") -> str:
    with pytest.raises(FormatRejected) as info:
        inspect(data, claim, plan)
    return str(info.value)


@pytest.mark.parametrize("plan", PLANS)
@pytest.mark.parametrize("name", IMAGES)
def test_detects_real_images(images: dict[str, Path], name: str, plan: str) -> None:
    _, info_format, detected, claim = IMAGES[name]
    path = images[name]
    expected = Inspection(detected, qemu_virtual_size(path, info_format))
    data = path.read_bytes()
    assert inspect(data, None, plan) == expected
    assert inspect(data, claim, plan) == expected


@pytest.mark.parametrize("name", ["raw", "gpt", "mbr", "iso", "iso-hybrid"])
def test_raw_claim_accepts_partitioned_disks_and_isos(images: dict[str, Path], name: str) -> None:
    path = images[name]
    assert inspect(path.read_bytes(), "raw") == Inspection(IMAGES[name][2], path.stat().st_size)


@pytest.mark.parametrize(
    "name",
    ["qcow2", "qcow2-v2", "vmdk-monolithicSparse", "vmdk-streamOptimized", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi"],
)
@pytest.mark.parametrize("plan", ["whole", "4KiB"])
def test_raw_claim_refuses_header_formats(images: dict[str, Path], name: str, plan: str) -> None:
    detected = IMAGES[name][2]
    message = refusal(images[name].read_bytes(), "raw", plan)
    assert message == f"image data is {detected}, not raw as claimed (disk_format)"


@pytest.mark.parametrize(
    ("name", "claim", "message"),
    [
        ("qcow2", "vmdk", "image data is qcow2, not vmdk as claimed"),
        ("vmdk-monolithicSparse", "qcow2", "image data is vmdk, not qcow2 as claimed"),
        ("vdi", "vhdx", "image data is vdi, not vhdx as claimed"),
        ("vhdx", "vhd", "image data is vhdx, not vhd as claimed"),
        ("vhd-fixed", "iso", "image data is raw, not iso as claimed"),
        ("vhd-dynamic", "qcow2", "image data is vhd, not qcow2 as claimed"),
        ("raw", "qcow2", "image data is raw, not qcow2 as claimed"),
        ("raw", "vhd", "image data is raw, not vhd as claimed"),
        ("raw", "iso", "image data is raw, not iso as claimed"),
        ("iso", "qcow2", "image data is iso, not qcow2 as claimed"),
        ("gpt", "vdi", "image data is raw (GPT-partitioned), not vdi as claimed"),
        ("mbr", "vmdk", "image data is raw (MBR-partitioned), not vmdk as claimed"),
    ],
)
def test_claim_mismatch_names_both_formats(images: dict[str, Path], name: str, claim: str, message: str) -> None:
    assert refusal(images[name].read_bytes(), claim, "odd").startswith(message)


@pytest.mark.parametrize("claim", [None, "qcow2", "raw", "vmdk", "iso", "ami", "aki", "ploop"])
def test_qcow2_backing_file_refused_whatever_the_claim(images: dict[str, Path], claim: str | None) -> None:
    message = refusal(images["qcow2-backing"].read_bytes(), claim, "4KiB")
    base = images["qcow2"].parent / "base.raw"
    assert message == f'qcow2 image has a backing file ("{base}"); images that reference host files are refused'


@pytest.mark.parametrize("name", ["qcow2-data-file", "qcow2-data-file-raw"])
@pytest.mark.parametrize("claim", [None, "qcow2", "raw", "ari"])
def test_qcow2_external_data_file_refused(images: dict[str, Path], name: str, claim: str | None) -> None:
    message = refusal(images[name].read_bytes(), claim, "7B-head")
    assert message.startswith("qcow2 image uses an external data file (")
    assert str(images[name].parent) in message


def test_qcow2_data_file_extension_refused_without_feature_bit(images: dict[str, Path]) -> None:
    data = bytearray(images["qcow2-data-file"].read_bytes())
    data[79] &= ~0x04  # clear incompatible feature bit 2; the extension still names the file
    assert "external data file" in refusal(bytes(data), "qcow2")
    data = bytearray(images["qcow2"].read_bytes())
    data[79] |= 0x04  # the feature bit alone, without a name
    assert refusal(bytes(data), "qcow2").startswith("qcow2 image uses an external data file;")


@pytest.mark.parametrize("name", ["vmdk-monolithicFlat", "vmdk-twoGbMaxExtentSparse", "vmdk-twoGbMaxExtentFlat"])
@pytest.mark.parametrize("claim", [None, "vmdk", "raw", "ami"])
def test_vmdk_descriptor_files_refused(images: dict[str, Path], name: str, claim: str | None) -> None:
    message = refusal(images[name].read_bytes(), claim)
    assert message.startswith("image data is a VMDK descriptor file")


def test_vmdk_split_extent_without_create_type_refused(images: dict[str, Path]) -> None:
    assert refusal(images["vmdk-extent-s001"].read_bytes(), "vmdk") == "VMDK descriptor has no createType"


def test_vmdk_parent_refused(images: dict[str, Path]) -> None:
    base = images["vmdk-base"]
    assert inspect(base.read_bytes(), "vmdk") == Inspection("vmdk", 4 * MiB)
    message = refusal(images["vmdk-child"].read_bytes(), "vmdk", "7B-head")
    assert message == f'VMDK image references a parent file ("{base}"); images that reference host files are refused'


def descriptor_of(data: bytes) -> str:
    sector, sectors = struct.unpack_from("<QQ", data, 28)
    return data[sector * 512 : (sector + sectors) * 512].split(b"\0", 1)[0].decode()


def with_descriptor(data: bytes, text: str, sector: int = 1, sectors: int = 20) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<QQ", buf, 28, sector, sectors)
    area = text.encode().ljust(sectors * 512, b"\0")
    buf[sector * 512 : (sector + sectors) * 512] = area
    return bytes(buf)


@pytest.mark.parametrize("create_type", ["twoGbMaxExtentSparse", "vmfsSparse", "monolithicFlat", "custom"])
def test_vmdk_create_type_named_in_refusal(images: dict[str, Path], create_type: str) -> None:
    data = images["vmdk-monolithicSparse"].read_bytes()
    text = descriptor_of(data).replace('createType="monolithicSparse"', f'createType="{create_type}"')
    message = refusal(with_descriptor(data, text), "vmdk", "4KiB")
    assert message.startswith(f'VMDK image has createType "{create_type}"; only monolithicSparse')


def test_vmdk_parent_hint_where_qemu_looks_refused(images: dict[str, Path]) -> None:
    # qemu reads parentFileNameHint from sector 1 even when descriptorOffset points elsewhere.
    data = images["vmdk-monolithicSparse"].read_bytes()
    clean = descriptor_of(data)
    moved = with_descriptor(data, clean, sector=60, sectors=20)
    assert inspect(moved, "vmdk") == Inspection("vmdk", 5 * MiB)
    hidden = bytearray(moved)
    hint = b'parentFileNameHint="/etc/shadow"\n'
    hidden[512 : 512 + len(hint)] = hint
    assert refusal(bytes(hidden), "vmdk") == (
        'VMDK image references a parent file ("/etc/shadow"); images that reference host files are refused'
    )


def test_vmdk_extra_extents_refused(images: dict[str, Path]) -> None:
    data = images["vmdk-monolithicSparse"].read_bytes()
    text = descriptor_of(data)
    two = text.replace("# The Disk Data Base", 'RW 2048 FLAT "/dev/sda" 0\n# The Disk Data Base')
    assert refusal(with_descriptor(data, two), "vmdk") == (
        "VMDK descriptor lists extents of type SPARSE, FLAT; "
        "only single-file images with one SPARSE extent are accepted"
    )
    flat = text.replace("SPARSE", "FLAT")
    assert refusal(with_descriptor(data, flat), None).startswith("VMDK descriptor lists extents of type FLAT;")


@pytest.mark.parametrize(
    ("sector", "sectors"),
    [(4096, 1), (1, HEAD_SIZE // 512), (2**60, 20), (1, 2**63), (2**64 - 1, 2**64 - 1)],
)
def test_vmdk_descriptor_beyond_head_refused(images: dict[str, Path], sector: int, sectors: int) -> None:
    data = bytearray(images["vmdk-monolithicSparse"].read_bytes())
    struct.pack_into("<QQ", data, 28, sector, sectors)
    assert refusal(bytes(data), "vmdk").startswith("VMDK descriptor is outside the inspected header")


def test_vmdk_without_embedded_descriptor_refused(images: dict[str, Path]) -> None:
    data = bytearray(images["vmdk-monolithicSparse"].read_bytes())
    struct.pack_into("<QQ", data, 28, 0, 0)
    assert "no embedded descriptor" in refusal(bytes(data), None)


def test_vhd_differencing_refused(images: dict[str, Path]) -> None:
    data = bytearray(images["vhd-dynamic"].read_bytes())
    struct.pack_into(">I", data, 60, 4)
    struct.pack_into(">I", data, len(data) - 512 + 60, 4)
    assert refusal(bytes(data), "vhd").startswith("VHD image is a differencing disk")


def test_vhd_fixed_footer_split_over_tiny_chunks(images: dict[str, Path]) -> None:
    data = images["vhd-fixed"].read_bytes()
    inspector = FormatInspector("vhd")
    inspector.feed(data[:-700])
    for i in range(len(data) - 700, len(data)):
        inspector.feed(data[i : i + 1])
    assert inspector.finish() == Inspection("vhd", qemu_virtual_size(images["vhd-fixed"], "vpc"))


def vhdx_metadata_entry(data: bytes | bytearray, item: str) -> tuple[int, int]:
    """(absolute offset of the item, its length) in a well-formed VHDX."""
    metadata_guid = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    item_guid = uuid.UUID(item).bytes_le
    count = struct.unpack_from("<I", data, 0x30008)[0]
    for entry in range(0x30010, 0x30010 + 32 * count, 32):
        if data[entry : entry + 16] == metadata_guid:
            region = struct.unpack_from("<Q", data, entry + 16)[0]
            break
    items = struct.unpack_from("<H", data, region + 10)[0]
    for entry in range(region + 32, region + 32 + 32 * items, 32):
        if data[entry : entry + 16] == item_guid:
            offset, length = struct.unpack_from("<II", data, entry + 16)
            return region + offset, length
    raise AssertionError(item)


def test_vhdx_differencing_refused(images: dict[str, Path]) -> None:
    data = bytearray(images["vhdx"].read_bytes())
    offset, _ = vhdx_metadata_entry(data, "CAA16737-FA36-4D43-B3B6-33F0AA44E76B")  # file parameters
    data[offset + 4] |= 0x02  # HasParent
    assert refusal(bytes(data), "vhdx", "odd").startswith("VHDX image is a differencing disk")


def test_vhdx_truncated_before_metadata_refused(images: dict[str, Path]) -> None:
    data = images["vhdx"].read_bytes()
    assert refusal(data[: 2 * MiB], None) == "VHDX image is truncated: its metadata region is missing"
    assert refusal(data[: 3 * MiB + 100], "vhdx").startswith("VHDX image is truncated")
    assert refusal(data[: 200 * KiB], "vhdx") == "VHDX image is truncated: its region table is incomplete"


@pytest.mark.parametrize(
    ("data", "claim", "message"),
    [
        (b"", "qcow2", "image data is too short to be qcow2 (0 bytes)"),
        (bytes(10), "qcow2", "image data is too short to be qcow2 (10 bytes)"),
        (b"QFI\xfb" + bytes(6), "qcow2", "image data is too short to be qcow2 (10 bytes)"),
        (b"QFI\xfb" + bytes(6), None, "image data is too short to be qcow2 (10 bytes)"),
        (b"QFI\xfb\0\0\0\x03" + bytes(40), "raw", "image data is too short to be qcow2 (48 bytes)"),
        (b"QFI\xfb\0\0\0\x03" + bytes(12) + b"\0\0\0\x10" + bytes(1000), "qcow2", "qcow2 image is truncated"),
        (b"KDMV" + bytes(96), "vmdk", "image data is too short to be VMDK (100 bytes)"),
        (bytes(100), "vmdk", "image data is too short to be vmdk (100 bytes)"),
        (b"conectix" + bytes(100), "vhd", "image data is too short to be VHD (108 bytes)"),
        (b"vhdxfile" + bytes(1000), "vhdx", "VHDX image is truncated: its region table is incomplete"),
        (bytes(64) + struct.pack("<I", 0xBEDA107F), "vdi", "image data is too short to be VDI (68 bytes)"),
        (bytes(30000), "iso", "image data is too short to be iso (30000 bytes)"),
        (b"", "vhd", "image data is too short to be vhd (0 bytes)"),
    ],
)
def test_short_streams_refused(data: bytes, claim: str | None, message: str) -> None:
    assert refusal(data, claim).startswith(message)


@pytest.mark.parametrize("claim", [None, "raw", "ami"])
def test_empty_and_tiny_raw_streams(claim: str | None) -> None:
    size = None if claim == "ami" else 0
    assert inspect(b"", claim) == Inspection("raw", size)
    assert inspect(b"hello", claim, "odd") == Inspection("raw", None if claim == "ami" else 5)


@pytest.mark.parametrize(
    ("name", "claim", "detected"),
    [("raw", "ami", "raw"), ("qcow2", "ploop", "qcow2"), ("vdi", "aki", "vdi"), ("iso", "ari", "iso")],
)
def test_uninspected_claims_accept_without_size(images: dict[str, Path], name: str, claim: str, detected: str) -> None:
    assert inspect(images[name].read_bytes(), claim, "4KiB") == Inspection(detected, None)


@pytest.mark.parametrize(
    ("name", "claim", "fragment"),
    [
        ("qcow2-backing", "aki", "backing file"),
        ("vmdk-twoGbMaxExtentFlat", "ari", "VMDK descriptor file"),
        ("vmdk-child", "ploop", "parent file"),
        ("qcow2-data-file", "ami", "external data file"),
    ],
)
def test_uninspected_claims_still_safety_checked(images: dict[str, Path], name: str, claim: str, fragment: str) -> None:
    assert fragment in refusal(images[name].read_bytes(), claim)


def test_unknown_claim_refused() -> None:
    with pytest.raises(FormatRejected, match="qcow3"):
        FormatInspector("qcow3")
    assert set(CONTAINER_FORMATS).isdisjoint({"qcow2", "vmdk", "raw"})
    assert len(set(DISK_FORMATS)) == 11


def feed_until_refused(data: bytes, claim: str | None, size: int = 4 * KiB) -> tuple[int, FormatInspector]:
    """Bytes fed when feed() refused the stream; fails if only finish() would have."""
    inspector = FormatInspector(claim)
    for i in range(0, len(data), size):
        try:
            inspector.feed(data[i : i + size])
        except FormatRejected:
            return i + size, inspector
    raise AssertionError("feed() never refused the stream")


@pytest.mark.parametrize(
    ("name", "claim", "limit"),
    [
        ("qcow2", "raw", 64 * KiB),  # first cluster
        ("qcow2-backing", "qcow2", 64 * KiB),
        ("qcow2-data-file", None, 64 * KiB),
        ("vmdk-child", "vmdk", 12 * KiB),
        ("vmdk-twoGbMaxExtentSparse", "vmdk", 4 * KiB),
        ("raw", "qcow2", 40 * KiB),  # after the ISO probe
        ("iso", "vdi", 40 * KiB),
        ("vhdx", "vmdk", 256 * KiB),  # region table
        ("vdi", "raw", 4 * KiB),
    ],
)
def test_refusal_comes_early_and_sticks(images: dict[str, Path], name: str, claim: str | None, limit: int) -> None:
    fed, inspector = feed_until_refused(images[name].read_bytes(), claim)
    assert fed <= limit
    with pytest.raises(FormatRejected):
        inspector.feed(b"more")
    with pytest.raises(FormatRejected):
        inspector.finish()


def test_buffers_stay_bounded(images: dict[str, Path]) -> None:
    inspector = FormatInspector("raw")
    chunk = bytes(3 * MiB + 123)
    for _ in range(3):
        inspector.feed(chunk)
        assert len(inspector._head) <= HEAD_SIZE
        assert len(inspector._tail) <= TAIL_SIZE
    assert inspector.finish() == Inspection("raw", 3 * len(chunk))


def test_inspect_file(images: dict[str, Path]) -> None:
    assert inspect_file(str(images["qcow2"]), "qcow2") == Inspection("qcow2", 5 * MiB)
    assert inspect_file(str(images["vhdx-3000M"]), None) == Inspection("vhdx", 3000 * MiB)
    with pytest.raises(FormatRejected, match="backing file"):
        inspect_file(str(images["qcow2-backing"]), "qcow2")


def qcow2_header(**fields: int) -> bytearray:
    """A v3 qcow2 header with 64 KiB clusters in a 192 KiB stream, fields overridable."""
    values = {"version": 3, "backing_offset": 0, "backing_size": 0, "cluster_bits": 16, "size": MiB}
    values.update({k: v for k, v in fields.items() if k in values})
    data = bytearray(192 * KiB)
    struct.pack_into(">4sIQIIQ", data, 0, b"QFI\xfb", *values.values())
    struct.pack_into(">Q", data, 72, fields.get("incompatible", 0))
    struct.pack_into(">I", data, 100, fields.get("header_length", 104))
    return data


@pytest.mark.parametrize(
    ("fields", "extension", "message"),
    [
        ({}, b"", None),
        ({"version": 4}, b"", "qcow2 version 4 is not supported"),
        ({"cluster_bits": 0}, b"", "cluster size 2^0 is out of range"),
        ({"cluster_bits": 2**32 - 1}, b"", "out of range"),
        ({"header_length": 2**32 - 1}, b"", "header length 4294967295 is invalid"),
        ({"header_length": 8}, b"", "is invalid"),
        ({}, struct.pack(">II", 0x12345678, 2**32 - 1), "runs past the first cluster"),
        ({}, struct.pack(">II", 0x12345678, 64 * KiB - 111), "runs past the first cluster"),
        ({}, struct.pack(">II", 0x44415441, 4) + b"/x\0\0", 'external data file ("/x")'),
        ({"backing_offset": 2**64 - 1, "backing_size": 2**32 - 1}, b"", "backing file; images"),
        ({"backing_offset": 200, "backing_size": 2**32 - 1}, b"", 'backing file ("")'),
    ],
)
def test_qcow2_hostile_headers(fields: dict[str, int], extension: bytes, message: str | None) -> None:
    data = qcow2_header(**fields)
    data[104 : 104 + len(extension)] = extension
    if message is None:
        assert inspect(bytes(data), "qcow2") == Inspection("qcow2", MiB)
    else:
        assert message in refusal(bytes(data), "qcow2")


def test_qcow2_extensions_without_terminator_fill_the_cluster() -> None:
    # qemu stops at the end of the first cluster, so an unterminated list is acceptable.
    data = qcow2_header()
    for pos in range(104, 64 * KiB - 16, 16):
        struct.pack_into(">II", data, pos, 0x0BADF00D, 8)
    assert inspect(bytes(data), None) == Inspection("qcow2", MiB)


def break_signature(data: bytearray, *offsets: int) -> None:
    for offset in offsets:
        data[offset : offset + 4] = b"nope"


def vhdx_table_patches() -> dict[str, Callable[[bytearray, int], None]]:
    """Damage to a VHDX region table; each patch gets the image and its metadata region entry."""
    return {
        "huge-entry-count": lambda d, e: struct.pack_into("<I", d, 0x30008, 2**32 - 1),
        "first-table-bad": lambda d, e: break_signature(d, 0x30000),
        "both-tables-bad": lambda d, e: break_signature(d, 0x30000, 0x40000),
        "metadata-at-end-of-u64": lambda d, e: struct.pack_into("<Q", d, e + 16, 2**64 - 1),
        "metadata-length-0": lambda d, e: struct.pack_into("<I", d, e + 24, 0),
        "no-metadata-entry": lambda d, e: d.__setitem__(slice(e, e + 16), bytes(16)),
        "metadata-at-0": lambda d, e: struct.pack_into("<Q", d, e + 16, 0),
    }


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("huge-entry-count", "region table is too long"),
        ("first-table-bad", None),  # the second copy serves
        ("both-tables-bad", "no valid region table"),
        ("metadata-at-end-of-u64", "metadata region is missing"),
        ("metadata-length-0", "no metadata region"),
        ("no-metadata-entry", "no metadata region"),
        ("metadata-at-0", "metadata table is invalid"),
    ],
)
def test_vhdx_hostile_region_tables(images: dict[str, Path], patch: str, message: str | None) -> None:
    data = bytearray(images["vhdx"].read_bytes())
    metadata_guid = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
    entry = next(e for e in range(0x30010, 0x30100, 32) if data[e : e + 16] == metadata_guid)
    data[0x40000:0x50000] = data[0x30000:0x40000]
    vhdx_table_patches()[patch](data, entry)
    if message is None:
        assert inspect(bytes(data), "vhdx", "odd") == Inspection("vhdx", 5 * MiB)
    else:
        assert message in refusal(bytes(data), "vhdx", "odd")


@pytest.mark.parametrize(
    ("item_offset", "item_length", "count", "message"),
    [
        (2**32 - 1, 8, None, "lacks the disk size"),
        (2 * MiB, 8, None, "lacks the disk size"),  # beyond the 1 MiB kept of the region
        (64 * KiB + 8, 2**32 - 1, None, None),  # a long item still holds its first 8 bytes
        (64 * KiB, 4, None, "lacks the disk size"),
        (64 * KiB + 8, 8, 2**16 - 1, "metadata table is invalid"),
    ],
)
def test_vhdx_hostile_metadata_items(
    images: dict[str, Path], item_offset: int, item_length: int, count: int | None, message: str | None
) -> None:
    data = bytearray(images["vhdx"].read_bytes())
    region = 3 * MiB  # where qemu-img puts it
    item, _ = vhdx_metadata_entry(data, "2FA54224-CD1B-4876-B211-5DBED83BF4B8")  # virtual disk size
    entries = range(region + 32, region + 32 * 6, 32)
    entry = next(e for e in entries if struct.unpack_from("<I", data, e + 16)[0] == item - region)
    struct.pack_into("<II", data, entry + 16, item_offset, item_length)
    if count is not None:
        struct.pack_into("<H", data, region + 10, count)
    if message is None:
        size = struct.unpack_from("<Q", data, region + item_offset)[0]
        assert inspect(bytes(data), "vhdx", "4KiB") == Inspection("vhdx", size)
    else:
        assert message in refusal(bytes(data), "vhdx", "4KiB")


FUZZ_BASES = (
    "qcow2",
    "qcow2-v2",
    "qcow2-backing",
    "vmdk-monolithicSparse",
    "vmdk-streamOptimized",
    "vmdk-monolithicFlat",
    "vhd-dynamic",
    "vhd-fixed",
    "vhdx",
    "vdi",
    "iso-hybrid",
    "gpt",
    "mbr",
)
EXTREMES = (0, 1, 7, 0x1FF, 0x200, 0xFFFF, 2**31, 2**32 - 1, 2**63, 2**64 - 1)


def mutate(rng: random.Random, data: bytearray) -> bytearray:
    """Damage a real image where parsers look: headers, tables, descriptors, the footer."""
    hot_spots = [(0, 1024), (0x30000, 0x30100), (3 * MiB, 3 * MiB + 0x10100), (max(0, len(data) - 512), len(data))]
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(5)
        lo, hi = rng.choice(hot_spots)
        hi = min(hi, len(data))
        if lo >= hi:
            continue
        pos = rng.randrange(lo, hi)
        if action == 0:  # an extreme integer, either endianness
            fmt = rng.choice(("<Q", ">Q", "<I", ">I", "<H"))
            value = rng.choice(EXTREMES) & ((1 << (8 * struct.calcsize(fmt))) - 1)
            packed = struct.pack(fmt, value)
            data[pos : pos + len(packed)] = packed
        elif action == 1:  # random bytes after the magic
            n = rng.randint(1, 600)
            data[8 : 8 + n] = rng.randbytes(n)
        elif action == 2:  # a few flipped bytes
            data[pos : pos + 4] = rng.randbytes(4)
        elif action == 3:  # truncation anywhere
            del data[rng.randrange(len(data)) :]
            if not data:
                break
        else:  # a hostile VHD footer at the end
            footer = bytearray(b"conectix" + rng.randbytes(504))
            struct.pack_into(">I", footer, 60, rng.choice((2, 3, 4, 2**32 - 1)))
            data[len(data) - 512 :] = footer
    return data


def test_hostile_bytes_raise_only_format_rejected(images: dict[str, Path]) -> None:
    rng = random.Random(0x5EED)
    bases = [images[name].read_bytes()[: 4 * MiB] for name in FUZZ_BASES]
    bases.append(rng.randbytes(64 * KiB))
    claims = (None, *DISK_FORMATS)
    outcomes = {"accepted": 0, "refused": 0}
    for _ in range(400):
        data = mutate(rng, bytearray(rng.choice(bases)))
        inspector = FormatInspector(rng.choice(claims))
        size = rng.choice((97, 4096, 65536, 1 << 20, len(data) or 1))
        try:
            for i in range(0, len(data), size):
                inspector.feed(memoryview(data)[i : i + size])
            result = inspector.finish()
        except FormatRejected as exc:
            assert str(exc)
            outcomes["refused"] += 1
        else:
            assert isinstance(result, Inspection)
            outcomes["accepted"] += 1
    assert outcomes["accepted"] > 20 and outcomes["refused"] > 100
