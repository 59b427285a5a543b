"""The OVA tar reader's bounds, on archives made by tarfile and headers altered by hand."""

from __future__ import annotations

import io
import tarfile

import pytest

from appliance.pipeline.base import ImportFailed
from appliance.pipeline.steps.ovatar import MAX_EXTENDED_HEADER, MAX_MEMBERS, read_members


def tar(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT, pax: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax or {}) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def members(data: bytes) -> list[tuple[str, int, bytes]]:
    found = read_members(io.BytesIO(data), len(data))
    return [(m.name, m.size, data[m.offset : m.offset + m.size]) for m in found]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_reads_members_of_each_tar_format(fmt: int) -> None:
    name = "dir/disk.vmdk" if fmt == tarfile.USTAR_FORMAT else "./" + "d" * 150 + ".vmdk"
    data = tar([("vm.ovf", b"<x/>"), (name, b"disk" * 300)], fmt)
    assert members(data) == [("vm.ovf", 4, b"<x/>"), (name.removeprefix("./"), 1200, b"disk" * 300)]


def test_an_oversized_extended_header_is_refused_before_it_is_read() -> None:
    data = tar([("vm.ovf", b"<x/>")], pax={"comment": "c" * (MAX_EXTENDED_HEADER + 1)})
    record = "%d comment=%s\n" % (MAX_EXTENDED_HEADER + 16, "c" * (MAX_EXTENDED_HEADER + 1))  # pax's own length
    with pytest.raises(ImportFailed, match="an extended tar header of %d bytes" % len(record)):
        members(data)


def test_a_corrupt_header_a_truncated_member_and_too_many_members_are_refused() -> None:
    data = bytearray(tar([("vm.ovf", b"<x/>" * 200)]))
    data[0] ^= 0x01  # the name changes, the stored checksum does not
    with pytest.raises(ImportFailed, match="fails its checksum"):
        members(bytes(data))
    whole = tar([("vm.ovf", b"<x/>" * 200)])
    with pytest.raises(ImportFailed, match="truncated"):
        members(whole[:700])
    with pytest.raises(ImportFailed, match="more than %d members" % MAX_MEMBERS):
        members(tar([("m%d" % i, b"") for i in range(MAX_MEMBERS + 1)]))
    with pytest.raises(ImportFailed, match="two members named 'a'"):
        members(tar([("a", b"1"), ("./a", b"2")]))
