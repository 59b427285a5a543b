"""appliance.formats against images made by the real qemu-img (required, not skipped)."""

from __future__ import annotations

import json
import random
import re
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
QEMU_IO = shutil.which("qemu-io") or "qemu-io"  # qemu-utils, like qemu-img
KiB = 1 << 10
MiB = 1 << 20

Chunk = bytes | bytearray | memoryview


def run_qemu_img(*args: str) -> str:
    for _ in range(10):
        done = subprocess.run([QEMU_IMG, *args], capture_output=True, text=True)
        # qemu times LUKS key derivation with the thread's CPU clock, whose ticks can be coarser
        # than its first trial run: it then gives up ("Unable to get accurate CPU usage").
        if done.returncode == 0 or "accurate CPU usage" not in done.stderr:
            break
    done.check_returncode()
    return done.stdout


def run_qemu_io(path: Path, *commands: str) -> None:
    args = [QEMU_IO, "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run([*args, str(path)], check=True, capture_output=True)


def qcow2_with_data(path: Path, size: str, *writes: str, options: str = "") -> None:
    """A qcow2 with real data clusters, written by qemu-io ("offset length" per write)."""
    run_qemu_img("create", "-q", "-f", "qcow2", *(("-o", options) if options else ()), str(path), size)
    run_qemu_io(path, *(f"write -P 0x{0x11 * (i + 1) & 0xFF:02x} {w}" for i, w in enumerate(writes)))


def qcow2_compressed(path: Path) -> None:
    source = path.with_name(path.name + ".source")
    qcow2_with_data(source, "1G", "0 2M", "700M 1M")
    run_qemu_img("convert", "-c", "-f", "qcow2", "-O", "qcow2", str(source), str(path))


def qcow2_resized(path: Path) -> None:
    """Grown after creation, so qemu moved the L1 table behind the L2 tables."""
    run_qemu_img("create", "-q", "-f", "qcow2", str(path), "1M")
    run_qemu_img("resize", "-q", "-f", "qcow2", str(path), "100G")
    run_qemu_io(path, "write -P 0x33 99G 1M")


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


def make_bochs(path: Path, subtype: bytes = b"Growing", version: int = 0x20000, disk: int = MiB) -> None:
    """A bochs redolog as block/bochs.c reads it: header, then a catalog of unallocated extents."""
    header, extent = bytearray(512), 64 * KiB
    header[0:22], header[32:39], header[48 : 48 + len(subtype)] = b"Bochs Virtual HD Image", b"Redolog", subtype
    struct.pack_into("<IIIII", header, 64, version, 512, disk // extent, extent // 512 // 8, extent)
    struct.pack_into("<Q", header, 84 if version == 0x10000 else 88, disk)
    path.write_bytes(bytes(header) + b"\xff" * (4 * (disk // extent)))


CLOOP_MAGIC = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"


def make_cloop(path: Path, block_size: int = 64 * KiB, blocks: int = 16) -> None:
    """A cloop image: the shell preamble, block size and count, then the (empty) blocks' offsets."""
    header = CLOOP_MAGIC.ljust(128, b"\0") + struct.pack(">II", block_size, blocks)
    start = len(header) + 8 * (blocks + 1)
    path.write_bytes(header + struct.pack(f">{blocks + 1}Q", *[start] * (blocks + 1)))


def make_dmg(path: Path, data_size: int = MiB) -> None:
    """A UDIF image qemu opens: data, an empty XML property list, then the 512-byte "koly" trailer
    (at an odd offset when data_size is odd, which qemu finds too)."""
    plist = b'<?xml version="1.0"?><plist version="1.0"><dict></dict></plist>'
    trailer = bytearray(512)
    trailer[0:4] = b"koly"
    struct.pack_into(">II", trailer, 4, 4, 512)
    struct.pack_into(">QQ", trailer, 0xD8, data_size, len(plist))
    struct.pack_into(">Q", trailer, 0x1EC, 2048)  # sectors: 1 MiB
    path.write_bytes(bytes(data_size) + plist + trailer)


def make_old_parallels(path: Path) -> None:
    """Parallels with the first magic ("WithoutFreeSpace"), which qemu-img no longer writes."""
    run_qemu_img("create", "-q", "-f", "parallels", str(path), "5M")
    data = bytearray(path.read_bytes())
    data[0:16] = b"WithoutFreeSpace"
    path.write_bytes(data)


# Formats qemu opens that no disk_format names: file name -> (qemu-img create arguments or a
# builder, detected format).  The names end as qemu wants them to probe DMG (by name only).
OTHER_FORMATS: dict[str, tuple[tuple[str, ...] | Callable[[Path], None], str]] = {
    "other.qed": (("-f", "qed", "5M"), "qed"),
    "other.qcow": (("-f", "qcow", "5M"), "qcow"),
    "other.parallels": (("-f", "parallels", "5M"), "parallels"),
    "other-old-magic.parallels": (make_old_parallels, "parallels"),
    "other.bochs": (make_bochs, "bochs"),
    "other-v1.bochs": (lambda p: make_bochs(p, version=0x10000), "bochs"),
    "other.cloop": (make_cloop, "cloop"),
    "other.dmg": (make_dmg, "dmg"),
    "other-unaligned.dmg": (lambda p: make_dmg(p, data_size=MiB + 77), "dmg"),
}

# name -> (qemu-img create arguments or a builder, format for `qemu-img info -f`, detected format, matching claim)
IMAGES: dict[str, tuple[tuple[str, ...] | Callable[[Path], None], str, str, str]] = {
    "qcow2": (("-f", "qcow2", "5M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-v2": (("-f", "qcow2", "-o", "compat=0.10", "3M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-2M-clusters": (("-f", "qcow2", "-o", "cluster_size=2M", "5M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-zstd": (("-f", "qcow2", "-o", "compression_type=zstd", "5M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-extended-l2": (("-f", "qcow2", "-o", "extended_l2=on", "5M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-empty-disk": (("-f", "qcow2", "0"), "qcow2", "qcow2", "qcow2"),
    # Real data clusters and L2 tables in several places (an L2 table maps 512 MiB at 64 KiB clusters).
    "qcow2-data": (lambda p: qcow2_with_data(p, "2G", "0 1M", "1500M 64k"), "qcow2", "qcow2", "qcow2"),
    "qcow2-data-512B-clusters": (
        lambda p: qcow2_with_data(p, "64M", "0 2M", "40M 1M", options="cluster_size=512"),
        "qcow2",
        "qcow2",
        "qcow2",
    ),
    "qcow2-data-extended-l2": (
        lambda p: qcow2_with_data(p, "1G", "0 3M", "900M 1M", options="extended_l2=on,cluster_size=128k"),
        "qcow2",
        "qcow2",
        "qcow2",
    ),
    "qcow2-preallocated": (("-f", "qcow2", "-o", "preallocation=metadata", "20M"), "qcow2", "qcow2", "qcow2"),
    "qcow2-compressed": (qcow2_compressed, "qcow2", "qcow2", "qcow2"),
    "qcow2-resized": (qcow2_resized, "qcow2", "qcow2", "qcow2"),
    "vmdk-monolithicSparse": (("-f", "vmdk", "-o", "subformat=monolithicSparse", "5M"), "vmdk", "vmdk", "vmdk"),
    "vmdk-streamOptimized": (("-f", "vmdk", "-o", "subformat=streamOptimized", "5M"), "vmdk", "vmdk", "vmdk"),
    "vmdk-lsilogic": (("-f", "vmdk", "-o", "adapter_type=lsilogic", "5M"), "vmdk", "vmdk", "vmdk"),
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

# What the inspector reads from the embedded descriptor of the VMDKs above.
VMDK_TYPES = {
    "vmdk-monolithicSparse": ("monolithicSparse", "ide"),
    "vmdk-streamOptimized": ("streamOptimized", "ide"),
    "vmdk-lsilogic": ("monolithicSparse", "lsilogic"),
}

SECRET = ("--object", "secret,id=sec0,data=abc")
JSON_BACKING = 'json:{"driver": "raw", "file": {"driver": "file", "filename": "/etc/passwd"}}'

# Images that must be refused, with qemu-img create arguments (a file name marks the output).
REFUSED: dict[str, tuple[str, ...]] = {
    "qcow2-backing": ("-f", "qcow2", "-b", "{dir}/base.raw", "-F", "raw", "{out}", "4M"),
    # -u: qemu-img does not open the backing file, so any name can be written.
    "qcow2-backing-relative": ("-f", "qcow2", "-u", "-b", "base.raw", "-F", "raw", "{out}", "4M"),
    "qcow2-backing-json": ("-f", "qcow2", "-u", "-b", JSON_BACKING, "-F", "raw", "{out}", "4M"),
    "qcow2-luks": (*SECRET, "-f", "qcow2", "-o", "encrypt.format=luks,encrypt.key-secret=sec0", "{out}", "4M"),
    "qcow2-aes": (*SECRET, "-f", "qcow2", "-o", "encrypt.format=aes,encrypt.key-secret=sec0", "{out}", "4M"),
    "luks": (*SECRET, "-f", "luks", "-o", "key-secret=sec0,iter-time=10", "{out}", "4M"),
    "qcow2-data-file": ("-f", "qcow2", "-o", "data_file={dir}/data.raw", "{out}", "4M"),
    "qcow2-data-file-raw": ("-f", "qcow2", "-o", "data_file={dir}/data2.raw,data_file_raw=on", "{out}", "4M"),
    "vmdk-base": ("-f", "vmdk", "{out}", "4M"),
    "vmdk-child": ("-f", "vmdk", "-b", "{dir}/vmdk-base", "-F", "vmdk", "{out}", "4M"),
    "vmdk-monolithicFlat": ("-f", "vmdk", "-o", "subformat=monolithicFlat", "{out}", "5M"),
    "vmdk-twoGbMaxExtentSparse": ("-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", "{out}", "5M"),
    "vmdk-twoGbMaxExtentFlat": ("-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat", "{out}", "5M"),
    # The other formats' references to host files (the issue's case: QED on /etc/shadow).
    "qed-backing": ("-f", "qed", "-u", "-b", "/etc/shadow", "-F", "raw", "{out}", "4M"),
    "qed-backing-probed": ("-f", "qed", "-u", "-b", "{dir}/base.qed", "-F", "qed", "{out}", "4M"),
    "qed-backing-json": ("-f", "qed", "-u", "-b", JSON_BACKING, "-F", "raw", "{out}", "4M"),
    "qcow-backing": ("-f", "qcow", "-u", "-b", "/etc/shadow", "-F", "raw", "{out}", "4M"),
    "qcow-aes": (*SECRET, "-f", "qcow", "-o", "encrypt.format=aes,encrypt.key-secret=sec0", "{out}", "4M"),
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
    run_qemu_img("create", "-q", "-f", "qed", str(directory / "base.qed"), "4M")
    for name, args in REFUSED.items():
        paths[name] = directory / name
        out = str(directory / name)
        run_qemu_img("create", "-q", *(a.replace("{dir}", str(directory)).replace("{out}", out) for a in args))
    for name, (recipe, _) in OTHER_FORMATS.items():
        path = paths[name] = directory / name
        if callable(recipe):
            recipe(path)
        else:
            run_qemu_img("create", "-q", *recipe[:-1], str(path), recipe[-1])
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
    expected = Inspection(detected, qemu_virtual_size(path, info_format), *VMDK_TYPES.get(name, ()))
    data = path.read_bytes()
    assert inspect(data, None, plan) == expected
    assert inspect(data, claim, plan) == expected


@pytest.mark.parametrize("name", ["raw", "gpt", "mbr"])
def test_raw_claim_accepts_partitioned_disks(images: dict[str, Path], name: str) -> None:
    path = images[name]
    assert inspect(path.read_bytes(), "raw") == Inspection(IMAGES[name][2], path.stat().st_size)


@pytest.mark.parametrize("name", ["iso", "iso-hybrid"])
@pytest.mark.parametrize("plan", ["whole", "7B-head"])
def test_raw_claim_refuses_isos(images: dict[str, Path], name: str, plan: str) -> None:
    # An ISO is not a disk; it must be claimed as iso (a hybrid one's MBR does not make it raw).
    data = images[name].read_bytes()
    assert refusal(data, "raw", plan) == (
        "image data is iso, not raw as claimed (disk_format); to keep it as iso, pass --disk-format iso"
    )
    assert inspect(data, "iso", plan) == Inspection("iso", len(data))


@pytest.mark.parametrize(
    "name",
    ["qcow2", "qcow2-v2", "vmdk-monolithicSparse", "vmdk-streamOptimized", "vhd-dynamic", "vhd-fixed", "vhdx", "vdi"],
)
@pytest.mark.parametrize("plan", ["whole", "4KiB"])
def test_raw_claim_refuses_header_formats(images: dict[str, Path], name: str, plan: str) -> None:
    detected = IMAGES[name][2]
    message = refusal(images[name].read_bytes(), "raw", plan)
    assert message == (
        f"image data is {detected}, not raw as claimed (disk_format); "
        f"to keep it as {detected}, pass --disk-format {detected}"
    )


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
    assert inspect(base.read_bytes(), "vmdk") == Inspection("vmdk", 4 * MiB, "monolithicSparse", "ide")
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
    assert inspect(moved, "vmdk") == Inspection("vmdk", 5 * MiB, "monolithicSparse", "ide")
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
        (b"", "qcow2", "image data is empty"),
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
        (b"", "vhd", "image data is empty"),
        (b"\0", "vhd", "image data is too short to be vhd (1 bytes)"),
    ],
)
def test_short_streams_refused(data: bytes, claim: str | None, message: str) -> None:
    assert refusal(data, claim).startswith(message)


@pytest.mark.parametrize("claim", [None, *DISK_FORMATS])
@pytest.mark.parametrize("chunks", [(), (b"",), (b"", bytearray(), memoryview(b""))])
def test_empty_stream_refused_whatever_the_claim(claim: str | None, chunks: tuple[Chunk, ...]) -> None:
    inspector = FormatInspector(claim)
    for chunk in chunks:
        inspector.feed(chunk)
    with pytest.raises(FormatRejected, match=r"^image data is empty$"):
        inspector.finish()


@pytest.mark.parametrize("claim", [None, "raw", "ami"])
def test_tiny_raw_streams(claim: str | None) -> None:
    assert inspect(b"hello", claim, "odd") == Inspection("raw", None if claim == "ami" else 5)
    assert inspect(b"\0", claim) == Inspection("raw", None if claim == "ami" else 1)


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
        ("iso", "raw", 40 * KiB),
        ("luks", None, 4 * KiB),
        ("qcow2-luks", "qcow2", 64 * KiB),
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


QCOW2_FIELDS = {  # name: (offset, struct format) in the header
    "version": (4, ">I"),
    "backing_offset": (8, ">Q"),
    "backing_size": (16, ">I"),
    "cluster_bits": (20, ">I"),
    "size": (24, ">Q"),
    "crypt_method": (32, ">I"),
    "l1_size": (36, ">I"),
    "l1_offset": (40, ">Q"),
    "reftable_offset": (48, ">Q"),
    "reftable_clusters": (56, ">I"),
    "nb_snapshots": (60, ">I"),
    "snapshots_offset": (64, ">Q"),
    "incompatible": (72, ">Q"),
    "refcount_order": (96, ">I"),
    "header_length": (100, ">I"),
}


def qcow2_field(data: bytes | bytearray, name: str) -> int:
    offset, fmt = QCOW2_FIELDS[name]
    return int(struct.unpack_from(fmt, data, offset)[0])


def patch_qcow2(data: bytes | bytearray, **fields: int) -> bytearray:
    buf = bytearray(data)
    for name, value in fields.items():
        offset, fmt = QCOW2_FIELDS[name]
        struct.pack_into(fmt, buf, offset, value)
    return buf


def qcow2_header(**fields: int) -> bytearray:
    """A v3 qcow2 with 64 KiB clusters in a 192 KiB stream (header, refcount table, L1 table
    of one empty entry), fields overridable."""
    values = {
        "version": 3, "cluster_bits": 16, "size": MiB, "l1_size": 1, "l1_offset": 128 * KiB,
        "reftable_offset": 64 * KiB, "reftable_clusters": 1, "refcount_order": 4, "header_length": 104,
    }  # fmt: skip
    return patch_qcow2(b"QFI\xfb".ljust(192 * KiB, b"\0"), **(values | fields))


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


# --- What safe means: every rule, table-driven over real and hand-patched images ------------


def real(name: str) -> Callable[[dict[str, Path]], bytes]:
    return lambda images: images[name].read_bytes()


def qcow2_patched(name: str, **fields: int) -> Callable[[dict[str, Path]], bytes]:
    return lambda images: bytes(patch_qcow2(images[name].read_bytes(), **fields))


def qcow2_l1_entry(data: bytes | bytearray, index: int = 0) -> int:
    return int(struct.unpack_from(">Q", data, qcow2_field(data, "l1_offset") + 8 * index)[0])


def qcow2_cut(name: str, where: Callable[[bytes], int]) -> Callable[[dict[str, Path]], bytes]:
    def build(images: dict[str, Path]) -> bytes:
        data = images[name].read_bytes()
        return data[: where(data)]

    return build


def bytes_patched(name: str, offset: Callable[[bytes], int], value: bytes) -> Callable[[dict[str, Path]], bytes]:
    def build(images: dict[str, Path]) -> bytes:
        data = bytearray(images[name].read_bytes())
        at = offset(bytes(data))
        data[at : at + len(value)] = value
        return bytes(data)

    return build


def last_l2_table(data: bytes) -> int:
    return max(qcow2_l1_entry(data, i) & 0x00FFFFFFFFFFFE00 for i in range(qcow2_field(data, "l1_size")))


def compressed_cluster_moved_out(images: dict[str, Path]) -> bytes:
    """The compressed image with one compressed cluster's host offset pointing past the end."""
    data = bytearray(images["qcow2-compressed"].read_bytes())
    assert qcow2_field(data, "cluster_bits") == 16
    offset_bits = 62 - (16 - 8)  # the rest of a compressed entry is its sector count and flags
    l2 = qcow2_l1_entry(data) & 0x00FFFFFFFFFFFE00
    for pos in range(l2, l2 + 64 * KiB, 8):
        entry = struct.unpack_from(">Q", data, pos)[0]
        if entry & (1 << 62):
            moved = (entry >> offset_bits << offset_bits) | (len(data) + 4096)
            struct.pack_into(">Q", data, pos, moved)
            return bytes(data)
    raise AssertionError("no compressed cluster")


TiB = 1 << 40

# (builder, claims that must all be refused, message): header-level refusals come for every
# claim, raw included; the truncation checks need the whole stream, so a raw claim is refused
# earlier as a mismatch and they are checked under qcow2, no claim and an uninspected claim.
EVERY_CLAIM = (None, "qcow2", "raw", "vmdk", "iso", "ami", "ploop")
STREAM_CLAIMS = (None, "qcow2", "aki")
UNSAFE: dict[str, tuple[Callable[[dict[str, Path]], bytes], tuple[str | None, ...], str]] = {
    # encryption
    "qcow2-luks": (
        real("qcow2-luks"),
        EVERY_CLAIM,
        "qcow2 image is encrypted (LUKS); encrypted qcow2 images are refused",
    ),
    "qcow2-aes": (real("qcow2-aes"), EVERY_CLAIM, "qcow2 image is encrypted (AES); encrypted qcow2 images are refused"),
    "qcow2-crypt-method-9": (
        qcow2_patched("qcow2", crypt_method=9),
        EVERY_CLAIM,
        "qcow2 image is encrypted (method 9)",
    ),
    "luks": (
        real("luks"),
        (*EVERY_CLAIM, "vhd", "vhdx", "vdi", "aki", "ari"),
        "image data is a LUKS-encrypted volume; encrypted images are refused",
    ),
    # backing files in any form
    "qcow2-backing-relative": (
        real("qcow2-backing-relative"),
        EVERY_CLAIM,
        'qcow2 image has a backing file ("base.raw"); images that reference host files are refused',
    ),
    "qcow2-backing-json": (
        real("qcow2-backing-json"),
        EVERY_CLAIM,
        "qcow2 image has a backing file given as a json: pseudo-protocol specification "
        f'("{JSON_BACKING}"); images that reference host files are refused',
    ),
    # versions, feature bits, limits
    # The qcow2 magic with version 1 is qcow version 1, here with a qcow2 header qemu cannot read as one.
    "qcow2-version-1": (qcow2_patched("qcow2", version=1), (None, "ami", "ploop"), "qcow (version 1) "),
    "qcow2-version-4": (qcow2_patched("qcow2", version=4), EVERY_CLAIM, "qcow2 version 4 is not supported"),
    "qcow2-corrupt-bit": (qcow2_patched("qcow2-data", incompatible=0b10), EVERY_CLAIM, "qcow2 image is marked corrupt"),
    "qcow2-unknown-bit-5": (
        qcow2_patched("qcow2", incompatible=1 << 5),
        EVERY_CLAIM,
        "qcow2 image has unknown incompatible feature bits 0x20",
    ),
    "qcow2-unknown-bit-63": (
        qcow2_patched("qcow2", incompatible=(1 << 63) | 0b11001),
        EVERY_CLAIM,
        "qcow2 image has unknown incompatible feature bits 0x8000000000000000",
    ),
    "qcow2-compression-type-2": (
        bytes_patched("qcow2", lambda d: 104, b"\x02"),
        EVERY_CLAIM,
        "qcow2 image uses unknown compression type 2",
    ),
    "qcow2-refcount-order-7": (
        qcow2_patched("qcow2", refcount_order=7),
        EVERY_CLAIM,
        "qcow2 header is corrupt: refcount order 7 is out of range",
    ),
    "qcow2-cluster-bits-8": (
        qcow2_patched("qcow2", cluster_bits=8),
        EVERY_CLAIM,
        "qcow2 header is corrupt: cluster size 2^8 is out of range",
    ),
    "qcow2-cluster-bits-22": (
        qcow2_patched("qcow2", cluster_bits=22),
        EVERY_CLAIM,
        "qcow2 header is corrupt: cluster size 2^22 is out of range",
    ),
    "qcow2-l1-too-large": (
        qcow2_patched("qcow2", l1_size=2**31),
        EVERY_CLAIM,
        "qcow2 L1 table is too large (2147483648 entries, at most 4194304)",
    ),
    "qcow2-l1-too-small": (
        qcow2_patched("qcow2", size=TiB),
        EVERY_CLAIM,
        "qcow2 header is corrupt: its L1 table (1 entries) is too small for its size",
    ),
    "qcow2-reftable-too-large": (
        qcow2_patched("qcow2", reftable_clusters=129),
        EVERY_CLAIM,
        "qcow2 refcount table is too large (129 clusters)",
    ),
    "qcow2-too-many-snapshots": (
        qcow2_patched("qcow2", nb_snapshots=65537),
        EVERY_CLAIM,
        "qcow2 image has too many snapshots (65537, at most 65536)",
    ),
    # tables outside the file
    "qcow2-l1-outside": (
        qcow2_patched("qcow2", l1_offset=TiB),
        STREAM_CLAIMS,
        f"qcow2 image is truncated or corrupt: its L1 table ends at byte {TiB + 8}, "
        "beyond the end of the data (196616 bytes)",
    ),
    "qcow2-reftable-outside": (
        qcow2_patched("qcow2", reftable_offset=4 * MiB),
        STREAM_CLAIMS,
        f"qcow2 image is truncated or corrupt: its refcount table ends at byte {4 * MiB + 64 * KiB}",
    ),
    "qcow2-snapshots-outside": (
        qcow2_patched("qcow2", nb_snapshots=1, snapshots_offset=196608),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: its snapshot table ends at byte 196648",
    ),
    "qcow2-l2-outside": (
        bytes_patched("qcow2-data", lambda d: qcow2_field(d, "l1_offset"), struct.pack(">Q", (1 << 63) | TiB)),
        STREAM_CLAIMS,
        f"qcow2 image is truncated or corrupt: it has an L2 table at byte {TiB}, beyond the end",
    ),
    "qcow2-refblock-outside": (
        bytes_patched("qcow2", lambda d: qcow2_field(d, "reftable_offset"), struct.pack(">Q", 8 * MiB)),
        STREAM_CLAIMS,
        f"qcow2 image is truncated or corrupt: it has a refcount block at byte {8 * MiB}",
    ),
    # truncated images (real data written by qemu-io, then cut)
    "qcow2-cut-in-l1": (
        qcow2_cut("qcow2-data", lambda d: qcow2_field(d, "l1_offset") + 4),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: its L1 table ends at byte",
    ),
    "qcow2-cut-before-last-l2": (
        qcow2_cut("qcow2-data", last_l2_table),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has an L2 table at byte",
    ),
    "qcow2-cut-last-data-cluster": (
        qcow2_cut("qcow2-data", lambda d: len(d) - 4096),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has a data cluster at byte",
    ),
    "qcow2-512B-clusters-cut": (
        qcow2_cut("qcow2-data-512B-clusters", lambda d: len(d) - 512),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has a data cluster at byte",
    ),
    "qcow2-extended-l2-cut": (
        qcow2_cut("qcow2-data-extended-l2", lambda d: len(d) - 1),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has a data cluster at byte",
    ),
    "qcow2-compressed-cut": (
        qcow2_cut("qcow2-compressed", lambda d: len(d) - 2048),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has an L2 table at byte",
    ),  # written last
    "qcow2-compressed-outside": (
        compressed_cluster_moved_out,
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: it has a compressed cluster at byte",
    ),
    "qcow2-resized-cut": (
        qcow2_cut("qcow2-resized", lambda d: qcow2_field(d, "l1_offset")),
        STREAM_CLAIMS,
        "qcow2 image is truncated or corrupt: its L1 table ends at byte",
    ),
    # VDI
    "vdi-differencing": (
        bytes_patched("vdi", lambda d: 76, struct.pack("<I", 4)),
        ("vdi", None, "raw", "ami"),
        "VDI image is a differencing disk, which depends on a parent file; "
        "images that reference host files are refused",
    ),
    "vdi-undo": (
        bytes_patched("vdi", lambda d: 76, struct.pack("<I", 3)),
        ("vdi", None, "raw", "ari"),
        "VDI image type 3 is not supported; only normal and fixed images are accepted",
    ),
    "vdi-type-0": (
        bytes_patched("vdi-static", lambda d: 76, struct.pack("<I", 0)),
        ("vdi", None),
        "VDI image type 0 is not supported",
    ),
    # VMDK
    "vmdk-cowd": (
        lambda images: b"COWD" + images["vmdk-monolithicSparse"].read_bytes()[4:],
        ("vmdk", None, "raw"),
        "VMDK3 (COWD) sparse images are not supported",
    ),
    "vmdk-capacity-0": (
        bytes_patched("vmdk-monolithicSparse", lambda d: 12, bytes(8)),
        ("vmdk", None, "raw"),
        "VMDK image has a capacity of 0, so qemu would take its descriptor for a descriptor file",
    ),
}


@pytest.mark.parametrize("case", UNSAFE)
def test_unsafe_images_refused(images: dict[str, Path], case: str) -> None:
    build, claims, message = UNSAFE[case]
    data = build(images)
    for claim in claims:
        for plan in ("whole", "odd"):
            assert refusal(data, claim, plan).startswith(message), (claim, plan)


INSPECTED_CLAIMS = tuple(c for c in DISK_FORMATS if c not in ("ami", "ari", "aki", "ploop"))
UNINSPECTED_CLAIMS = ("ami", "ari", "aki", "ploop")


@pytest.mark.parametrize("plan", ["whole", "7B-head", "odd"])
@pytest.mark.parametrize("name", OTHER_FORMATS)
def test_other_qemu_formats_detected_as_qemu_probes_them(images: dict[str, Path], name: str, plan: str) -> None:
    # qemu-img without -f probes the file as a hypervisor host would: by magic (DMG: by name).
    info = json.loads(run_qemu_img("info", "--output=json", str(images[name])))
    detected = OTHER_FORMATS[name][1]
    assert info["format"] == detected
    assert inspect(images[name].read_bytes(), None, plan) == Inspection(detected, int(info["virtual-size"]))


@pytest.mark.parametrize("name", OTHER_FORMATS)
def test_other_qemu_formats_refused_under_every_inspected_claim(images: dict[str, Path], name: str) -> None:
    data, detected = images[name].read_bytes(), OTHER_FORMATS[name][1]
    assert refusal(data, "raw", "4KiB") == f"image data is {detected}, not raw as claimed (disk_format)"
    for claim in INSPECTED_CLAIMS:
        # A DMG starts like raw data: claims that want a header refuse it as raw before its trailer.
        shown = "(raw|dmg)" if detected == "dmg" else detected
        assert re.fullmatch(rf"image data is {shown}, not {claim} as claimed \(disk_format\)", refusal(data, claim)), (
            claim
        )


@pytest.mark.parametrize("name", OTHER_FORMATS)
def test_other_qemu_formats_pass_uninspected_claims(images: dict[str, Path], name: str) -> None:
    for claim in UNINSPECTED_CLAIMS:
        assert inspect(images[name].read_bytes(), claim, "odd") == Inspection(OTHER_FORMATS[name][1], None)


def patched(name: str, offset: int, value: bytes) -> Callable[[dict[str, Path]], bytes]:
    def build(images: dict[str, Path]) -> bytes:
        data = bytearray(images[name].read_bytes())
        data[offset : offset + len(value)] = value
        return bytes(data)

    return build


def shadow_backing(fmt: str) -> str:
    return f'{fmt} image has a backing file ("/etc/shadow"); images that reference host files are refused'


# Refused whatever the claim (raw included, no claim, uninspected claims), with the message.
OTHER_UNSAFE: dict[str, tuple[Callable[[dict[str, Path]], bytes], str]] = {
    "qed-backing": (real("qed-backing"), shadow_backing("QED")),
    "qed-backing-probed": (real("qed-backing-probed"), 'QED image has a backing file ("'),
    "qed-backing-json": (real("qed-backing-json"), f'QED image has a backing file ("{JSON_BACKING}")'),
    # The name without the feature bit (qemu would ignore it), and the bit without a name.
    "qed-backing-name-only": (patched("qed-backing", 16, bytes(8)), shadow_backing("QED")),
    "qed-backing-bit-only": (
        patched("other.qed", 16, struct.pack("<Q", 1)),
        "QED image has a backing file; images that reference host files are refused",
    ),
    "qed-unknown-feature": (patched("other.qed", 16, struct.pack("<Q", 0x8)), "QED image has unknown feature bits 0x8"),
    "qed-cluster-size-0": (patched("other.qed", 4, bytes(4)), "QED header is corrupt: cluster size 0 is invalid"),
    "qcow-backing": (real("qcow-backing"), shadow_backing("qcow (version 1)")),
    "qcow-aes": (real("qcow-aes"), "qcow (version 1) image is encrypted (AES); encrypted images are refused"),
    "parallels-version-3": (
        patched("other.parallels", 16, struct.pack("<I", 3)),
        "Parallels image version 3 is not supported",
    ),
    "bochs-undoable": (
        lambda images: make_bochs_bytes(images, b"Undoable"),
        'bochs image is a "Undoable" redolog, which depends on a base image file; '
        "images that reference host files are refused",
    ),
    "bochs-volatile": (lambda images: make_bochs_bytes(images, b"Volatile"), 'bochs image is a "Volatile" redolog'),
    "bochs-version-3": (
        patched("other.bochs", 64, struct.pack("<I", 0x30000)),
        "bochs image version 0x30000 is not supported",
    ),
    "cloop-block-size-0": (patched("other.cloop", 128, bytes(4)), "cloop header is corrupt: block size 0 is invalid"),
}


def make_bochs_bytes(images: dict[str, Path], subtype: bytes) -> bytes:
    path = images["other.bochs"].with_name("bochs-" + subtype.decode())
    make_bochs(path, subtype)
    return path.read_bytes()


@pytest.mark.parametrize("case", OTHER_UNSAFE)
def test_other_qemu_formats_unsafe_images_refused_whatever_the_claim(images: dict[str, Path], case: str) -> None:
    build, message = OTHER_UNSAFE[case]
    data = build(images)
    for claim in (*EVERY_CLAIM, "aki", "vhd"):
        for plan in ("whole", "7B-head", "odd"):
            assert refusal(data, claim, plan).startswith(message), (claim, plan)


@pytest.mark.parametrize("name", ["qed-backing", "qcow-backing"])
def test_other_qemu_formats_backing_file_refused_early(images: dict[str, Path], name: str) -> None:
    fed, _ = feed_until_refused(images[name].read_bytes(), "raw")
    assert fed <= 4 * KiB


@pytest.mark.parametrize(
    ("case", "build"),
    [
        ("dirty-bit", qcow2_patched("qcow2-data", incompatible=0b1)),  # lazy refcounts: harmless read-only
        ("zstd-bit", real("qcow2-zstd")),
        ("extended-l2-bit", real("qcow2-data-extended-l2")),
        ("v2", real("qcow2-v2")),
        ("l1-larger-than-needed", qcow2_patched("qcow2", l1_size=1)),
        (
            "snapshot-table-inside",
            lambda images: (
                bytes(patch_qcow2(images["qcow2"].read_bytes(), nb_snapshots=1, snapshots_offset=196608)) + bytes(40)
            ),
        ),
    ],
)
def test_qcow2_accepted_features(images: dict[str, Path], case: str, build: Callable[[dict[str, Path]], bytes]) -> None:
    data = build(images)
    for plan in PLANS:
        assert inspect(data, "qcow2", plan).format == "qcow2"


def test_qcow2_truncated_anywhere_in_its_metadata_or_data_is_refused(images: dict[str, Path]) -> None:
    # Every cut of a real image with data is refused, down to one missing byte; the whole image passes.
    data = images["qcow2-data"].read_bytes()
    assert inspect(data, "qcow2").virtual_size == 2 << 30
    for cut in (
        72,
        4096,
        64 * KiB,
        qcow2_field(data, "l1_offset") + 8,
        *range(256 * KiB, len(data), 64 * KiB),
        len(data) - 1,
    ):
        message = refusal(data[:cut], "qcow2", "4KiB")
        assert message.startswith(("qcow2 image is truncated", "image data is too short")), (cut, message)


def test_qcow2_l2_tables_before_the_l1_table_are_found_in_the_head(images: dict[str, Path]) -> None:
    # Resized images have their L1 table behind the L2 tables; those in the first MiB are still checked.
    data = bytearray(images["qcow2-resized"].read_bytes())
    l1 = qcow2_field(data, "l1_offset")
    l2 = max(qcow2_l1_entry(data, i) & 0x00FFFFFFFFFFFE00 for i in range(qcow2_field(data, "l1_size")))
    assert l2 < l1 and l2 < HEAD_SIZE
    assert inspect(bytes(data), "qcow2", "odd").virtual_size == 100 << 30
    struct.pack_into(">Q", data, l2, len(data) + 64 * KiB)  # a data cluster beyond the end
    assert "it has a data cluster at byte" in refusal(bytes(data), "qcow2", "odd")


def test_qcow2_scan_stays_bounded() -> None:
    # The largest L1 table qemu accepts (32 MiB), 1 MiB in: only 256 KiB of it is kept.
    data = qcow2_header(l1_size=4 * MiB, l1_offset=MiB, size=MiB)
    inspector = FormatInspector("qcow2")
    inspector.feed(data)
    inspector.feed(bytes(HEAD_SIZE - len(data)))
    for _ in range(33):
        inspector.feed(bytes(MiB))
        scan = inspector._qcow2
        assert scan is not None and len(scan.l1.buf) <= 256 * KiB and len(scan.reftable.buf) <= 256 * KiB
    assert inspector.finish() == Inspection("qcow2", MiB)


def test_qcow2_l2_scan_has_a_budget() -> None:
    # 1024 L2 tables of 64 KiB back to back (64 MiB of nothing but tables): 256 are read (16 MiB),
    # the rest only have to lie inside the data.
    tables = 1024
    data = qcow2_header(l1_size=tables, l1_offset=128 * KiB, size=MiB)
    for i in range(tables):
        struct.pack_into(">Q", data, 128 * KiB + 8 * i, (1 << 63) | (256 * KiB + i * 64 * KiB))
    stream = bytes(data) + bytes(64 * KiB + tables * 64 * KiB)
    inspector = FormatInspector(None)
    for chunk in chunked(stream, "1MiB"):
        inspector.feed(chunk)
    scan = inspector._qcow2
    assert scan is not None and scan.l2_budget <= 0 and not scan.l2_pending
    assert inspector.finish() == Inspection("qcow2", MiB)
    assert refusal(stream[:-1], None).startswith("qcow2 image is truncated or corrupt: it has an L2 table at byte")


def test_qcow2_l2_scan_reads_standard_and_compressed_entries_alike(images: dict[str, Path]) -> None:
    # The vectorised path (no compressed cluster) and the entry-by-entry one agree with qemu's map.
    for name in ("qcow2-data", "qcow2-compressed", "qcow2-data-extended-l2", "qcow2-data-512B-clusters"):
        data = images[name].read_bytes()
        inspector = FormatInspector("qcow2")
        for chunk in chunked(data, "odd"):
            inspector.feed(chunk)
        inspector.finish()
        scan = inspector._qcow2
        assert scan is not None
        extents = json.loads(run_qemu_img("map", "-f", "qcow2", "--output=json", str(images[name])))
        ends = [e["offset"] + e["length"] for e in extents if "offset" in e]
        if name == "qcow2-compressed":  # qemu-img map gives no offset for compressed data
            assert scan.far_data == 0 and 0 < scan.far_compressed <= len(data)
        else:
            cluster = scan.cluster
            assert scan.far_data == -(-max(ends) // cluster) * cluster, name
            assert scan.far_compressed == 0


@pytest.mark.parametrize("plan", PLANS)
def test_vmdk_reports_create_and_adapter_type(images: dict[str, Path], plan: str) -> None:
    data = images["vmdk-lsilogic"].read_bytes()
    found = inspect(data, "vmdk", plan)
    assert (found.vmdk_create_type, found.vmdk_adapter_type) == ("monolithicSparse", "lsilogic")
    assert inspect(images["qcow2"].read_bytes(), "qcow2", plan).vmdk_create_type is None


VMWARE_DESCRIPTOR = (
    "# Disk DescriptorFile\r\n"
    "version=1\r\n"
    'encoding="UTF-8"\r\n'
    "CID=fffffffe\r\n"
    "parentCID=ffffffff\r\n"
    'isNativeSnapshot="no"\r\n'
    'createType="streamOptimized"\r\n'
    "\r\n"
    "# Extent description\r\n"
    'RDONLY 10240 SPARSE "disk-1.vmdk"\r\n'
    "\r\n"
    "# The Disk Data Base\r\n"
    "#DDB\r\n"
    "\r\n"
    'ddb.adapterType = "lsilogic"\r\n'
    'ddb.geometry.cylinders = "652"\r\n'
    'ddb.longContentID = "8f15b3d0009d9a3f456ff7b28d324d2a"\r\n'
    'ddb.uuid = "60 00 C2 9b 2f 6a 62 50-8d 3e 1b 94 0c 1c 4a 9f"\r\n'
    'ddb.virtualHWVersion = "7"\r\n'
)


def test_vmdk_descriptor_as_vmware_writes_it_accepted(images: dict[str, Path]) -> None:
    data = with_descriptor(images["vmdk-monolithicSparse"].read_bytes(), VMWARE_DESCRIPTOR)
    assert inspect(data, "vmdk", "7B-head") == Inspection("vmdk", 5 * MiB, "streamOptimized", "lsilogic")


LONG_LINE = "x" * 100
VMDK_DESCRIPTOR_EDITS: dict[str, tuple[Callable[[str], str], str]] = {
    "unknown-key": (
        lambda t: t.replace("ddb.virtualHWVersion", "foo"),
        'VMDK descriptor has a line the inspector does not understand: "foo = "4""',
    ),
    "free-text": (
        lambda t: t + "hello world\n",
        'VMDK descriptor has a line the inspector does not understand: "hello world"',
    ),
    "long-line-truncated": (
        lambda t: t + LONG_LINE + "\n",
        f'VMDK descriptor has a line the inspector does not understand: "{"x" * 60}..."',
    ),
    "native-snapshot": (
        lambda t: t.replace("version=1", 'version=1\nisNativeSnapshot="yes"'),
        'VMDK descriptor has a line the inspector does not understand: "isNativeSnapshot="yes""',
    ),
    "bad-cid": (
        lambda t: t.replace("CID=", "CID=zz", 1),
        'VMDK descriptor has a line the inspector does not understand: "CID=zz',
    ),
    "version-4": (
        lambda t: t.replace("version=1", "version=4"),
        'VMDK descriptor has a line the inspector does not understand: "version=4"',
    ),
    "noaccess-extent": (
        lambda t: t.replace("RW ", "NOACCESS "),
        'VMDK descriptor has a line the inspector does not understand: "NOACCESS 10240 SPARSE',
    ),
    "unquoted-extent": (
        lambda t: t.replace('"vmdk-monolithicSparse"', "vmdk-monolithicSparse"),
        'VMDK descriptor has a line the inspector does not understand: "RW 10240 SPARSE vmdk',
    ),
    "sparse-extent-offset": (
        lambda t: t.replace('"vmdk-monolithicSparse"', '"vmdk-monolithicSparse" 0'),
        "VMDK descriptor has a line the inspector does not understand",
    ),
    "parent-cid": (
        lambda t: t.replace("parentCID=ffffffff", "parentCID=1234abcd"),
        "VMDK image depends on a parent image (parentCID=1234abcd); images that reference host files are refused",
    ),
    "create-type-twice": (
        lambda t: t + 'createType="monolithicSparse"\n',
        "VMDK descriptor sets createType more than once",
    ),
    "no-extent": (
        lambda t: t.replace('RW 10240 SPARSE "vmdk-monolithicSparse"', ""),
        "VMDK descriptor lists no extent; only single-file images with one SPARSE extent are accepted",
    ),
    "two-sparse-extents": (
        lambda t: t.replace(
            'RW 10240 SPARSE "vmdk-monolithicSparse"',
            'RW 10240 SPARSE "vmdk-monolithicSparse"\nRW 10240 SPARSE "other.vmdk"',
        ),
        "VMDK descriptor lists extents of type SPARSE, SPARSE;",
    ),
    "zero-extent": (lambda t: t.replace("SPARSE", "ZERO"), "VMDK descriptor lists extents of type ZERO;"),
    "vmfs-extent": (
        lambda t: t.replace(
            'RW 10240 SPARSE "vmdk-monolithicSparse"',
            'RW 10240 SPARSE "vmdk-monolithicSparse"\nRW 10 VMFS "/vmfs/devices/disks/x"',
        ),
        "VMDK descriptor lists extents of type SPARSE, VMFS;",
    ),
}


@pytest.mark.parametrize("edit", VMDK_DESCRIPTOR_EDITS)
def test_vmdk_descriptor_grammar(images: dict[str, Path], edit: str) -> None:
    change, message = VMDK_DESCRIPTOR_EDITS[edit]
    data = images["vmdk-monolithicSparse"].read_bytes()
    text = descriptor_of(data)
    edited = change(text)
    assert edited != text
    for claim in ("vmdk", None, "ploop"):
        assert refusal(with_descriptor(data, edited), claim, "4KiB").startswith(message), claim


@pytest.mark.parametrize(
    "text",
    [
        'version=1\ncreateType="monolithicFlat"\nRW 2048 FLAT "/dev/sda" 0\n',
        '  \n# a comment\r\nversion=2\r\nRW 2048 FLAT "/etc/shadow" 0\r\n',
        "# Disk DescriptorFile\nversion=1\n",
    ],
)
@pytest.mark.parametrize("claim", [None, "raw", "vmdk", "iso", "ami"])
def test_vmdk_text_descriptors_refused_as_qemu_would_probe_them(text: str, claim: str | None) -> None:
    data = text.encode().ljust(64 * KiB, b"\0")
    assert refusal(data, claim).startswith("image data is a VMDK descriptor file, which only points at other files")


@pytest.mark.parametrize("text", ["hello\nversion=1\n", "version=1", "#version=1\n", "version=10\n"])
def test_text_that_qemu_would_not_probe_as_vmdk_stays_raw(text: str) -> None:
    data = text.encode().ljust(64 * KiB, b"\0")
    assert inspect(data, "raw") == Inspection("raw", 64 * KiB)


# (image, claim, limit, refusal or None for accepted)
LIMITS: list[tuple[str, str | None, int | None, str | None]] = [
    ("qcow2", "qcow2", None, None),
    ("qcow2", "qcow2", 0, None),  # 0: no limit, as in the config
    ("qcow2", "qcow2", 5 * MiB, None),  # the limit itself is allowed
    ("qcow2", "qcow2", 5 * MiB - 1, f"image virtual size {5 * MiB} bytes exceeds the limit of {5 * MiB - 1} bytes"),
    ("qcow2", None, 4 * MiB, f"image virtual size {5 * MiB} bytes exceeds the limit of {4 * MiB} bytes"),
    ("qcow2", "ami", 4 * MiB, f"image virtual size {5 * MiB} bytes exceeds the limit of {4 * MiB} bytes"),
    (
        "vmdk-streamOptimized",
        "vmdk",
        4 * MiB,
        f"image virtual size {5 * MiB} bytes exceeds the limit of {4 * MiB} bytes",
    ),
    ("vhdx-3000M", "vhdx", 1 << 30, f"image virtual size {3000 * MiB} bytes exceeds the limit of {1 << 30} bytes"),
    ("vhdx-3000M", "vhdx", 3000 * MiB, None),
    ("vdi", "vdi", MiB, f"image virtual size {5 * MiB} bytes exceeds the limit of {MiB} bytes"),
    ("vhd-dynamic", "vhd", MiB, "image virtual size"),
    ("raw", "raw", 3 * MiB, None),
    ("raw", "raw", MiB, f"image virtual size (more than {MiB} bytes of raw data) exceeds the limit of {MiB} bytes"),
    ("raw", None, MiB, f"image virtual size {3 * MiB} bytes exceeds the limit of {MiB} bytes"),
    ("iso", "iso", 512 * KiB, f"image virtual size (more than {512 * KiB} bytes of iso data) exceeds the limit"),
    ("gpt", "raw", MiB, "image virtual size (more than 1048576 bytes of gpt data)"),
]


@pytest.mark.parametrize(("name", "claim", "limit", "message"), LIMITS)
def test_max_virtual_size(
    images: dict[str, Path], name: str, claim: str | None, limit: int | None, message: str | None
) -> None:
    data = images[name].read_bytes()
    for plan in ("whole", "4KiB"):
        inspector = FormatInspector(claim, max_virtual_size=limit)
        try:
            for chunk in chunked(data, plan):
                inspector.feed(chunk)
            found = inspector.finish()
        except FormatRejected as exc:
            assert message is not None and str(exc).startswith(message), (plan, str(exc))
        else:
            assert message is None, plan
            assert found.format == IMAGES[name][2]
    if message is not None:
        with pytest.raises(FormatRejected, match="exceeds the limit"):
            inspect_file(str(images[name]), claim, max_virtual_size=limit)
    else:
        assert inspect_file(str(images[name]), claim, limit).format == IMAGES[name][2]


def test_raw_over_the_limit_is_refused_while_streaming(images: dict[str, Path]) -> None:
    fed, _ = feed_until_refused_with(images["raw"].read_bytes(), "raw", MiB)
    assert fed <= MiB + 4 * KiB


def test_fixed_vhd_at_the_limit_is_not_refused_for_its_footer(images: dict[str, Path]) -> None:
    # The stream is 512 bytes longer than the virtual size; a vhd claim waits for the footer.
    path = images["vhd-fixed"]
    size = qemu_virtual_size(path, "vpc")
    assert path.stat().st_size > size
    assert inspect_file(str(path), "vhd", max_virtual_size=size) == Inspection("vhd", size)


@pytest.mark.parametrize(
    ("l1_size", "limit", "refused"), [(3, 1 << 30, True), (3, 1536 * MiB, False), (2, 1 << 30, False)]
)
def test_qcow2_l1_table_mapping_beyond_the_limit_refused(
    images: dict[str, Path], l1_size: int, limit: int, refused: bool
) -> None:
    # 64 KiB clusters: one L1 entry maps 512 MiB, whatever the header's size says.
    data = bytes(patch_qcow2(images["qcow2"].read_bytes(), l1_size=l1_size)) + bytes(64)
    if refused:
        assert refusal_with(data, "qcow2", limit) == (
            f"qcow2 L1 table has {l1_size} entries, mapping {l1_size * 512 * MiB} bytes, "
            f"beyond the virtual size limit of {limit} bytes"
        )
    else:
        assert inspect_with(data, "qcow2", limit) == Inspection("qcow2", 5 * MiB)


def test_negative_limit_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="max_virtual_size"):
        FormatInspector("raw", max_virtual_size=-1)


def inspect_with(data: bytes, claim: str | None, limit: int | None) -> Inspection:
    inspector = FormatInspector(claim, max_virtual_size=limit)
    for chunk in chunked(data, "odd"):
        inspector.feed(chunk)
    return inspector.finish()


def refusal_with(data: bytes, claim: str | None, limit: int | None) -> str:
    with pytest.raises(FormatRejected) as info:
        inspect_with(data, claim, limit)
    return str(info.value)


def feed_until_refused_with(
    data: bytes, claim: str | None, limit: int, size: int = 4 * KiB
) -> tuple[int, FormatInspector]:
    inspector = FormatInspector(claim, max_virtual_size=limit)
    for i in range(0, len(data), size):
        try:
            inspector.feed(data[i : i + size])
        except FormatRejected:
            return i + size, inspector
    raise AssertionError("feed() never refused the stream")


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
    *OTHER_FORMATS,
    "qed-backing",
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


def _tar(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("chunk", [7, 512, 1 << 20])
def test_ova_is_a_tar_with_a_descriptor_whatever_the_disk_format(chunk: int) -> None:
    # A manifest ahead of the descriptor, whose data spans chunks; the disk format is not held
    # against the tar (Glance inspects only bare containers).
    data = _tar({"a.mf": b"SHA256(a.ovf)= 00\n" * 100, "a.ovf": b"<Envelope/>", "disk.vmdk": b"KDMV" + bytes(4000)})
    inspector = FormatInspector("vmdk", None, container_format="ova")
    for i in range(0, len(data), chunk):
        inspector.feed(data[i : i + chunk])
    assert inspector.finish() == Inspection("ova", None)
    without = _tar({"disk.vmdk": bytes(4000)})
    inspector = FormatInspector("vmdk", None, container_format="ova")
    with pytest.raises(FormatRejected, match=r"no OVF descriptor \(\*\.ovf\) in a tar archive"):
        inspector.feed(without)
        inspector.finish()
    # Other containers: no claim check, no virtual size, the safety checks still apply.
    assert FormatInspector("qcow2", None, container_format="docker").feed(data) is None
