"""The members of an OVA's tar archive, read header by header from the file with every size
bounded: regular files only, names that cannot leave a directory, nothing loaded but headers.

Python's tarfile reads a pax header of any size into memory and accepts links and devices;
an OVA holds a descriptor, a manifest and disks, so this reader accepts exactly that much.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import BinaryIO

from appliance.pipeline.base import ImportFailed

BLOCK = 512
# An OVA holds a descriptor, a manifest, a certificate and its disk files (DSP0243).
MAX_MEMBERS = 64
# pax and GNU long-name records are read into memory: a path and a size fit in far less.
MAX_EXTENDED_HEADER = 64 << 10

_REGULAR = (b"0", b"\0")
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
    b"7": "a contiguous file",
    b"S": "a GNU sparse file",
    b"D": "a GNU directory dump",
    b"M": "a GNU multi-volume continuation",
    b"V": "a GNU volume header",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # where its data starts in the archive
    size: int


def _refuse(message: str) -> ImportFailed:
    return ImportFailed("OVA refused: " + message)


def _shown(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


def _number(field: bytes, what: str) -> int:
    """A tar numeric field: octal text, or GNU's base-256 for sizes past 8 GiB."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise _refuse("a tar header has a negative %s" % what)
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text or b"0", 8)
    except ValueError:
        raise _refuse("a tar header is corrupt (its %s is not a number)" % what) from None


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    # Some old tars summed signed bytes; both are accepted, as tar does.
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored in (unsigned, signed)


def _pax_records(payload: bytes) -> dict[str, str]:
    """A pax extended header: records `LENGTH key=value\\n`."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(payload) and payload[pos] != 0:
        space = payload.find(b" ", pos, pos + 20)
        try:
            length = int(payload[pos:space]) if space > pos else 0
        except ValueError:
            length = 0
        record = payload[pos : pos + length]
        if length <= space - pos or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise _refuse("a pax extended tar header is corrupt")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        try:
            records[key.decode()] = value.decode()
        except UnicodeDecodeError:
            raise _refuse("a pax extended tar header is not UTF-8") from None
        pos += length
    return records


def _check_name(name: str) -> str:
    """The member's name as the OVF descriptor would reference it, or a refusal: it is never
    used on a filesystem, but a name that could leave a directory marks a hostile archive."""
    if not name:
        raise _refuse("a tar member has no name")
    if _CONTROL.search(name):
        raise _refuse("tar member %s has control characters in its name" % _shown(name))
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise _refuse("tar member %s has an absolute path" % _shown(name))
    parts = re.split(r"[/\\]", name)
    if ".." in parts:
        raise _refuse("tar member %s has '..' in its path" % _shown(name))
    if name.endswith(("/", "\\")):
        raise _refuse("tar member %s is a directory; only regular files are accepted" % _shown(name))
    while name.startswith("./"):
        name = name[2:]
    return name


def read_members(f: BinaryIO, total: int) -> list[Member]:
    """Every member of the tar archive in `f` (`total` bytes), refusing links, devices,
    directories, names with '..' or an absolute path, duplicates and more than MAX_MEMBERS."""
    members: list[Member] = []
    seen: set[str] = set()
    pos = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        f.seek(pos)
        block = f.read(BLOCK)
        if not block and members:
            break  # no end-of-archive blocks: tolerated, as tar does
        if len(block) < BLOCK:
            raise _refuse("the tar archive is truncated" if pos else "the data is not a tar archive")
        if block == bytes(BLOCK):
            break  # end of archive
        if block[257:262] != b"ustar":
            raise _refuse(
                "a tar header at offset %d is corrupt" % pos
                if pos
                else "the data is not a tar archive (container_format ova needs a tar with an OVF descriptor)"
            )
        if not _checksum_ok(block):
            raise _refuse("the tar header at offset %d fails its checksum" % pos)
        kind = block[156:157]
        size = _number(block[124:136], "size")
        data = pos + BLOCK
        if kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
            if size > MAX_EXTENDED_HEADER:
                raise _refuse(
                    "an extended tar header of %d bytes (the most accepted is %d)" % (size, MAX_EXTENDED_HEADER)
                )
            f.seek(data)
            payload = f.read(size)
            if len(payload) < size:
                raise _refuse("the tar archive is truncated")
            if kind == _PAX:
                pax = _pax_records(payload)
            elif kind == _GNU_LONGNAME:
                long_name = payload.split(b"\0", 1)[0].decode("utf-8", "replace")
            # A global header names no one member, and link targets are refused with the link.
            pos = data + -(-size // BLOCK) * BLOCK
            continue
        raw = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0":  # POSIX: a prefix field (GNU keeps times there)
            prefix = block[345:500].split(b"\0", 1)[0]
            raw = prefix + b"/" + raw if prefix else raw
        try:
            name = pax.get("path") or long_name or raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse(
                "tar member %s has a name that is not UTF-8" % _shown(raw.decode("utf-8", "replace"))
            ) from None
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise _refuse("a pax extended tar header is corrupt (size)") from None
        sparse = any(key.startswith("GNU.sparse") for key in pax)
        pax, long_name = {}, None
        if kind not in _REGULAR or sparse:
            what = "a GNU sparse file" if sparse else _KINDS.get(kind, "of tar type %r" % kind.decode("latin-1"))
            raise _refuse("tar member %s is %s; only regular files are accepted" % (_shown(name), what))
        name = _check_name(name)
        if name in seen:
            raise _refuse("the tar archive has two members named %s" % _shown(name))
        if len(members) == MAX_MEMBERS:
            raise _refuse("the tar archive has more than %d members" % MAX_MEMBERS)
        if data + size > total:
            raise _refuse("the tar archive is truncated (member %s)" % _shown(name))
        seen.add(name)
        members.append(Member(name=name, offset=data, size=size))
        pos = data + -(-size // BLOCK) * BLOCK
    return members
