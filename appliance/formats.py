"""Disk-image format inspection of an upload while it streams.

Glance v2 refuses image data whose bytes do not match the claimed disk_format,
and images that would make a hypervisor host open other files (qcow2 backing
and data files, VMDK descriptors and parents, differencing disks).  The
inspector sees every chunk on the event loop, so it only keeps a bounded head
of the stream and its last 512 bytes (the VHD footer), and raises
FormatRejected as soon as the head settles the matter so a refused upload can
stop early.
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
from dataclasses import dataclass

from appliance.errors import FormatRejected

log = logging.getLogger(__name__)

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")

# Start of the stream kept for parsing: covers the ISO volume descriptors (32 KiB+),
# VMDK embedded descriptors and the VHDX headers and region tables (up to 320 KiB).
HEAD_SIZE = 1 << 20
# A fixed VHD is raw data followed by a 512-byte footer, its only header.
TAIL_SIZE = 512
FILE_CHUNK = 1 << 20

# Claims Glance does not inspect; the safety checks still run on their bytes.
_UNINSPECTED = frozenset({"ami", "ari", "aki", "ploop"})
# What a raw claim accepts: hypervisors read these as plain bytes, so nothing in
# them is interpreted as a reference to another file.
_RAW_LIKE = frozenset({"raw", "gpt", "mbr", "iso"})
_DESCRIPTIONS = {"gpt": "raw (GPT-partitioned)", "mbr": "raw (MBR-partitioned)"}
# Smallest stream that can hold each claimed format's header, for a clearer message.
_MIN_SIZE = {"qcow2": 72, "vmdk": 512, "vhd": 512, "vhdx": 0x40000, "vdi": 376, "iso": 36870}

# Enough bytes to see every magic at offset 0 (VDI's signature sits at 64).
_MAGIC_BYTES = 72
# ISO 9660 / UDF volume descriptor identifiers, in sectors 16-18 of 2048 bytes.
_ISO_OFFSETS = (32769, 34817, 36865)
_ISO_IDS = (b"CD001", b"BEA01")
_ISO_PROBE_END = _ISO_OFFSETS[-1] + 5

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_V2_HEADER = 72
_QCOW2_V3_HEADER = 104
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_MAX_NAME = 1023

_VMDK_MAGIC = b"KDMV"
_VMDK_TEXT = b"# Disk DescriptorFile"
_VMDK_ALLOWED = ("monolithicSparse", "streamOptimized")
# qemu looks for a parent at sector 1 (20 sectors) whatever descriptorOffset says.
_VMDK_QEMU_DESC = (512, 512 + 20 * 512)
_VMDK_CREATE_TYPE = re.compile(r'createType\s*=\s*"?([^"\r\n]*)')
_VMDK_PARENT = re.compile(rb'parentFileNameHint\s*=\s*"?([^"\r\n]*)')
_VMDK_EXTENT = re.compile(r"^\s*(?:RW|RDONLY|NOACCESS)\s+\d+\s+(\S+)", re.MULTILINE)

_VHD_COOKIE = b"conectix"
_VHD_DIFFERENCING = 4

_VHDX_MAGIC = b"vhdxfile"
_VHDX_REGION_TABLES = (0x30000, 0x40000)
_VHDX_TABLE_SIZE = 64 * 1024
_VHDX_MAX_ENTRIES = 2047
# The metadata table and its items sit at the start of the region; qemu and
# Hyper-V make the region 1 MiB, so this bounds what is kept of it.
_VHDX_METADATA_WINDOW = 1 << 20
_VHDX_METADATA_REGION = uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E").bytes_le
_VHDX_FILE_PARAMETERS = uuid.UUID("CAA16737-FA36-4D43-B3B6-33F0AA44E76B").bytes_le
_VHDX_DISK_SIZE = uuid.UUID("2FA54224-CD1B-4876-B211-5DBED83BF4B8").bytes_le
_VHDX_PARENT_LOCATOR = uuid.UUID("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C").bytes_le
_VHDX_HAS_PARENT = 1 << 1

_VDI_SIGNATURE = 0xBEDA107F

_HOST_FILES = "images that reference host files are refused"


@dataclass(frozen=True)
class Inspection:
    format: str  # detected: raw, qcow2, vmdk, vhd, vhdx, vdi, iso, gpt or mbr
    virtual_size: int | None  # bytes; the stream length for raw, iso, gpt and mbr


@dataclass(frozen=True)
class _Header:
    virtual_size: int | None
    follow: tuple[int, int] | None = None  # stream range still to collect (VHDX metadata)


class _Window:
    """Stream bytes [start, end) collected as they pass, for structures beyond the head."""

    __slots__ = ("buf", "end", "start")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
        self.buf = bytearray()

    @property
    def full(self) -> bool:
        return self.start + len(self.buf) >= self.end

    def take(self, offset: int, data: memoryview) -> None:
        """Copy what `data`, found at stream `offset`, holds of the missing part."""
        pos = self.start + len(self.buf)
        if offset > pos:  # bytes went by uncollected; the window can never fill
            return
        lo, hi = pos - offset, min(self.end - offset, len(data))
        if lo < hi:
            self.buf += data[lo:hi]


class FormatInspector:
    """Fed an upload chunk by chunk; checks its bytes against the claimed disk_format."""

    def __init__(self, claimed_disk_format: str | None) -> None:
        if claimed_disk_format is not None and claimed_disk_format not in DISK_FORMATS:
            raise FormatRejected(f'disk_format "{claimed_disk_format}" is not one of: {", ".join(DISK_FORMATS)}')
        self._claim = claimed_disk_format
        self._size = 0
        self._head = bytearray()
        self._tail = b""
        self._kind: str | None = None  # format the head shows, once known
        self._settled = False  # head checks done
        self._virtual_size: int | None = None
        self._metadata: _Window | None = None  # VHDX metadata region still to come
        self._failure: str | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """May raise FormatRejected as soon as enough header bytes have arrived to know the
        stream is unacceptable (so the upload can stop early)."""
        if self._failure is not None:
            raise FormatRejected(self._failure)
        try:
            self._feed(chunk)
        except FormatRejected as exc:
            self._refused(exc)
            raise

    def finish(self) -> Inspection:
        """Called after the last chunk; runs the remaining checks (e.g. VHD footer at the tail),
        raises FormatRejected or returns the Inspection."""
        if self._failure is not None:
            raise FormatRejected(self._failure)
        try:
            return self._finish()
        except FormatRejected as exc:
            self._refused(exc)
            raise

    def _refused(self, exc: FormatRejected) -> None:
        self._failure = str(exc)
        log.info("image data refused (claimed %s, %d bytes seen): %s", self._claim, self._size, exc)

    def _feed(self, chunk: bytes | bytearray | memoryview) -> None:
        data = memoryview(chunk)
        if data.ndim != 1 or data.itemsize != 1:
            data = data.cast("B")
        n = len(data)
        if not n:
            return
        offset = self._size
        self._size = offset + n
        # Only the end of the chunk matters for the tail: no copy of big chunks.
        if n >= TAIL_SIZE:
            self._tail = bytes(data[n - TAIL_SIZE :])
        else:
            self._tail = (self._tail + bytes(data))[-TAIL_SIZE:]
        if offset < HEAD_SIZE:
            self._head += data[: HEAD_SIZE - offset]
            if not self._settled:
                self._inspect_head(final=False)
        meta = self._metadata
        if meta is not None:
            meta.take(offset, data)
            if meta.full:
                self._close_metadata(meta)

    def _finish(self) -> Inspection:
        if not self._settled:
            self._inspect_head(final=True)
        if self._metadata is not None:
            self._close_metadata(self._metadata)
        detected = self._kind or "raw"
        virtual_size = self._virtual_size
        if detected in _RAW_LIKE:
            if self._size >= TAIL_SIZE and self._tail.startswith(_VHD_COOKIE):
                detected, virtual_size = "vhd", _vhd_footer(self._tail)
            else:
                virtual_size = self._size
        self._judge(detected, ended=True)
        if self._claim in _UNINSPECTED:
            virtual_size = None
        log.debug("image data is %s, virtual size %s (claimed %s)", detected, virtual_size, self._claim)
        return Inspection(detected, virtual_size)

    def _inspect_head(self, final: bool) -> None:
        head = self._head
        # No more head bytes will come: the stream ended or the head is full.
        complete = final or len(head) >= HEAD_SIZE
        if self._kind is None:
            if len(head) < _MAGIC_BYTES and not complete:
                return
            kind = _magic_format(head)
            if kind is None:
                if len(head) < _ISO_PROBE_END and not complete:
                    return
                kind = _raw_flavour(head)
            self._kind = kind
        kind = self._kind
        if kind in _RAW_LIKE:
            self._settled = True
            # A fixed VHD is only recognisable by its footer, so raw and vhd claims wait.
            if self._claim not in ("raw", "vhd"):
                self._judge(kind, ended=final)
            return
        header = _HEADER_PARSERS[kind](head, complete)
        if header is None:
            return
        self._settled = True
        self._virtual_size = header.virtual_size
        if header.follow is not None:
            meta = self._metadata = _Window(*header.follow)
            with memoryview(head) as view:
                meta.take(0, view)
            if meta.full:
                self._close_metadata(meta)
        self._judge(kind, ended=final)

    def _close_metadata(self, meta: _Window) -> None:
        self._metadata = None
        self._virtual_size = _vhdx_metadata(meta.buf, truncated=not meta.full)

    def _judge(self, detected: str, ended: bool) -> None:
        claim = self._claim
        if claim is None or claim in _UNINSPECTED:
            return
        if detected == claim or (claim == "raw" and detected in _RAW_LIKE):
            return
        if ended and detected in _RAW_LIKE and self._size < _MIN_SIZE.get(claim, 0):
            raise FormatRejected(f"image data is too short to be {claim} ({self._size} bytes)")
        described = _DESCRIPTIONS.get(detected, detected)
        raise FormatRejected(f"image data is {described}, not {claim} as claimed (disk_format)")


def inspect_file(path: str, claimed_disk_format: str | None) -> Inspection:
    """Convenience for whole files (reads in 1 MiB chunks)."""
    inspector = FormatInspector(claimed_disk_format)
    with open(path, "rb") as f:
        while chunk := f.read(FILE_CHUNK):
            inspector.feed(chunk)
    return inspector.finish()


def _magic_format(head: bytearray) -> str | None:
    if head.startswith(_QCOW2_MAGIC):
        return "qcow2"
    if head.startswith(_VMDK_MAGIC) or head.startswith(_VMDK_TEXT):
        return "vmdk"
    if head.startswith(_VHDX_MAGIC):
        return "vhdx"
    if head.startswith(_VHD_COOKIE):  # a dynamic VHD starts with a copy of its footer
        return "vhd"
    if len(head) >= 68 and struct.unpack_from("<I", head, 64)[0] == _VDI_SIGNATURE:
        return "vdi"
    return None


def _raw_flavour(head: bytearray) -> str:
    # ISO first: hybrid ISOs also carry an MBR (and often a GPT) to boot from USB.
    for offset in _ISO_OFFSETS:
        if head[offset : offset + 5] in _ISO_IDS:
            return "iso"
    if head[512:520] == b"EFI PART":
        return "gpt"
    if _is_mbr(head):
        return "mbr"
    return "raw"


def _is_mbr(head: bytearray) -> bool:
    # The 0x55AA signature alone also ends FAT boot sectors; demand a plausible table.
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    used = 0
    for entry in range(446, 510, 16):
        status, ptype = head[entry], head[entry + 4]
        if status not in (0x00, 0x80):
            return False
        if ptype:
            start, count = struct.unpack_from("<II", head, entry + 8)
            if not start or not count:
                return False
            used += 1
    return used > 0


def _need(head: bytearray, n: int, complete: bool, name: str, part: str | None = None) -> bool:
    """Whether the head holds n bytes; False means wait, and rejects when none will come."""
    if len(head) >= n:
        return True
    if not complete:
        return False
    if len(head) >= HEAD_SIZE:
        raise FormatRejected(
            f"{name} {part or 'header'} is outside the inspected header (the first {HEAD_SIZE // 1024} KiB)"
        )
    if part is None:
        raise FormatRejected(f"image data is too short to be {name} ({len(head)} bytes)")
    raise FormatRejected(f"{name} image is truncated: its {part} is incomplete")


def _printable(raw: bytes | bytearray) -> str:
    """Text from a header, made safe and short enough for a user-facing message."""
    text = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= 200 else text[:200] + "..."


def _quoted(raw: bytes | bytearray) -> str:
    return f' ("{_printable(raw)}")'


def _parse_qcow2(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _QCOW2_V2_HEADER, complete, "qcow2"):
        return None
    version, backing_offset, backing_size, cluster_bits, size = struct.unpack_from(">IQIIQ", head, 4)
    if version not in (2, 3):
        raise FormatRejected(f"qcow2 version {version} is not supported")
    if not 9 <= cluster_bits <= 21:
        raise FormatRejected(f"qcow2 header is corrupt: cluster size 2^{cluster_bits} is out of range")
    cluster = 1 << cluster_bits
    # The header, its extensions and the backing file name all live in the first cluster.
    if not _need(head, min(cluster, HEAD_SIZE), complete, "qcow2", "first cluster"):
        return None
    if backing_offset:
        end = backing_offset + min(backing_size, _QCOW2_MAX_NAME)
        name = _quoted(head[backing_offset:end]) if backing_size > 0 and end <= len(head) else ""
        raise FormatRejected(f"qcow2 image has a backing file{name}; {_HOST_FILES}")
    extensions_start, incompatible = _QCOW2_V2_HEADER, 0
    if version == 3:
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        extensions_start = struct.unpack_from(">I", head, 100)[0]
        if not _QCOW2_V3_HEADER <= extensions_start <= cluster:
            raise FormatRejected(f"qcow2 header is corrupt: header length {extensions_start} is invalid")
    # qemu reads extensions up to the end of the first cluster, terminator or not.
    limit = min(cluster, len(head))
    pos, data_file = extensions_start, None
    while pos + 8 <= limit:
        ext_type, ext_len = struct.unpack_from(">II", head, pos)
        pos += 8
        if ext_type == 0:
            break
        if ext_len > limit - pos:
            if limit < cluster:
                raise FormatRejected("qcow2 header extensions are outside the inspected header")
            raise FormatRejected("qcow2 header is corrupt: a header extension runs past the first cluster")
        if ext_type == _QCOW2_EXT_DATA_FILE:
            data_file = head[pos : pos + ext_len]
        pos += (ext_len + 7) & ~7
    else:
        if limit < cluster:
            raise FormatRejected("qcow2 header extensions are outside the inspected header")
    if data_file is not None or incompatible & _QCOW2_INCOMPAT_DATA_FILE:
        name = _quoted(data_file) if data_file else ""
        raise FormatRejected(f"qcow2 image uses an external data file{name}; {_HOST_FILES}")
    return _Header(size)


def _parse_vmdk(head: bytearray, complete: bool) -> _Header | None:
    if head.startswith(_VMDK_TEXT):
        raise FormatRejected(
            "image data is a VMDK descriptor file, which only points at other files; "
            "upload a single-file VMDK (monolithicSparse or streamOptimized) instead"
        )
    if not _need(head, 512, complete, "VMDK"):
        return None
    version = struct.unpack_from("<I", head, 4)[0]
    if version not in (1, 2, 3):
        raise FormatRejected(f"VMDK version {version} is not supported")
    capacity, _grain, desc_sector, desc_sectors = struct.unpack_from("<QQQQ", head, 12)
    if not desc_sector or not desc_sectors:
        raise FormatRejected("VMDK image has no embedded descriptor, so its createType cannot be checked")
    start = desc_sector * 512
    end = start + desc_sectors * 512
    if end > HEAD_SIZE:
        raise FormatRejected(f"VMDK descriptor is outside the inspected header (the first {HEAD_SIZE // 1024} KiB)")
    if not _need(head, end, complete, "VMDK", "descriptor"):
        return None
    if len(head) < _VMDK_QEMU_DESC[1] and not complete:
        return None
    descriptor = bytes(head[start:end]).split(b"\0", 1)[0]
    text = descriptor.decode("utf-8", "replace")
    match = _VMDK_CREATE_TYPE.search(text)
    if match is None:
        raise FormatRejected("VMDK descriptor has no createType")
    create_type = match.group(1).strip()
    if create_type not in _VMDK_ALLOWED:
        raise FormatRejected(
            f'VMDK image has createType "{_printable(create_type.encode())}"; only monolithicSparse '
            "and streamOptimized are accepted, other types reference more files"
        )
    qemu_area = bytes(head[_VMDK_QEMU_DESC[0] : _VMDK_QEMU_DESC[1]]).split(b"\0", 1)[0]
    for area in (descriptor, qemu_area):
        if b"parentFileNameHint" in area:
            parent = _VMDK_PARENT.search(area)
            name = _quoted(parent.group(1)) if parent and parent.group(1) else ""
            raise FormatRejected(f"VMDK image references a parent file{name}; {_HOST_FILES}")
    extents = _VMDK_EXTENT.findall(text)
    if len(extents) > 1 or any(kind != "SPARSE" for kind in extents):
        raise FormatRejected(
            f"VMDK descriptor lists extents of type {', '.join(extents)}; "
            "only single-file images with one SPARSE extent are accepted"
        )
    return _Header(capacity * 512)


def _vhd_footer(footer: bytes | bytearray) -> int:
    current_size: int = struct.unpack_from(">Q", footer, 48)[0]
    disk_type: int = struct.unpack_from(">I", footer, 60)[0]
    if disk_type == _VHD_DIFFERENCING:
        raise FormatRejected(f"VHD image is a differencing disk, which depends on a parent file; {_HOST_FILES}")
    return current_size


def _parse_vhd(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, 512, complete, "VHD"):
        return None
    return _Header(_vhd_footer(head))


def _parse_vhdx(head: bytearray, complete: bool) -> _Header | None:
    for table in _VHDX_REGION_TABLES:  # the second copy stands in for a damaged first
        if not _need(head, table + _VHDX_TABLE_SIZE, complete, "VHDX", "region table"):
            return None
        if head[table : table + 4] == b"regi":
            break
    else:
        raise FormatRejected("VHDX image is corrupt: it has no valid region table")
    count = struct.unpack_from("<I", head, table + 8)[0]
    if count > _VHDX_MAX_ENTRIES:
        raise FormatRejected("VHDX image is corrupt: its region table is too long")
    for entry in range(table + 16, table + 16 + 32 * count, 32):
        if head[entry : entry + 16] == _VHDX_METADATA_REGION:
            offset, length = struct.unpack_from("<QI", head, entry + 16)
            if length < 32:
                break
            return _Header(None, follow=(offset, offset + min(length, _VHDX_METADATA_WINDOW)))
    raise FormatRejected("VHDX image is corrupt: it has no metadata region")


def _vhdx_metadata(buf: bytearray, truncated: bool) -> int:
    """Virtual size from the VHDX metadata region, refusing differencing disks."""
    if truncated and len(buf) < 32:
        raise FormatRejected("VHDX image is truncated: its metadata region is missing")
    if buf[:8] != b"metadata":
        raise FormatRejected("VHDX image is corrupt: its metadata table is invalid")
    count = struct.unpack_from("<H", buf, 10)[0]
    if count > _VHDX_MAX_ENTRIES:
        raise FormatRejected("VHDX image is corrupt: its metadata table is invalid")
    if 32 + 32 * count > len(buf):
        if truncated:
            raise FormatRejected("VHDX image is truncated: its metadata region is incomplete")
        raise FormatRejected("VHDX image is corrupt: its metadata table is invalid")
    size: int | None = None
    has_parent, has_parameters = False, False
    for entry in range(32, 32 + 32 * count, 32):
        item = buf[entry : entry + 16]
        offset, length = struct.unpack_from("<II", buf, entry + 16)
        readable = length >= 8 and offset + 8 <= len(buf)
        if item == _VHDX_PARENT_LOCATOR:
            has_parent = True
        elif item == _VHDX_FILE_PARAMETERS and readable:
            has_parameters = True
            has_parent |= bool(struct.unpack_from("<I", buf, offset + 4)[0] & _VHDX_HAS_PARENT)
        elif item == _VHDX_DISK_SIZE and readable:
            size = struct.unpack_from("<Q", buf, offset)[0]
    if has_parent:
        raise FormatRejected(f"VHDX image is a differencing disk, which depends on a parent file; {_HOST_FILES}")
    if size is None or not has_parameters:
        if truncated:
            raise FormatRejected("VHDX image is truncated: its metadata region is incomplete")
        raise FormatRejected("VHDX image is corrupt: its metadata lacks the disk size or file parameters")
    return size


def _parse_vdi(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, 376, complete, "VDI"):
        return None
    version = struct.unpack_from("<I", head, 68)[0]
    if version >> 16 != 1:
        raise FormatRejected(f"VDI version {version >> 16}.{version & 0xFFFF} is not supported")
    return _Header(struct.unpack_from("<Q", head, 368)[0])


_HEADER_PARSERS = {
    "qcow2": _parse_qcow2,
    "vmdk": _parse_vmdk,
    "vhd": _parse_vhd,
    "vhdx": _parse_vhdx,
    "vdi": _parse_vdi,
}
