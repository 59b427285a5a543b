"""Disk-image format inspection of an upload while it streams.

Glance v2 refuses image data whose bytes do not match the claimed disk_format,
and images that would make a hypervisor host open other files (qcow2 backing
and data files, VMDK descriptors and parents, differencing disks).  The
inspector sees every chunk on the event loop, so it only keeps a bounded head
of the stream, its last 512 bytes (the VHD footer) and bounded windows onto a
few tables further on, and raises FormatRejected as soon as the head settles
the matter so a refused upload can stop early.

What it refuses (whatever the claim, unless a line says otherwise):
- empty image data;
- data that is not the claimed format; a raw claim accepts plain, GPT- and
  MBR-partitioned disks only, so qcow2, VMDK (binary or descriptor text),
  LUKS, ISO 9660/UDF and the other header formats claimed as raw are refused;
- LUKS volumes, and qcow2 images encrypted with AES or LUKS;
- qcow2: versions other than 2 and 3, a backing file (a path, a relative name
  or a json: pseudo-protocol specification), an external data file, the
  corrupt bit and incompatible feature bits it does not know (dirty,
  compression type and extended L2 are accepted), cluster sizes outside
  512 B..2 MiB, L1/refcount/snapshot tables larger than qemu accepts or lying
  (wholly or partly) beyond the end of the data, and L2 tables, refcount
  blocks or data clusters beyond it (a truncated image; see _Qcow2Scan);
- VMDK other than monolithicSparse and streamOptimized with an embedded
  descriptor of one SPARSE extent and nothing the parser does not know
  (see _check_vmdk_descriptor), parents, VMDK3 (COWD) extents, and a zero
  capacity (qemu would then read the descriptor as a descriptor file);
- VHD and VHDX differencing disks, VDI images other than normal and fixed;
- the other formats qemu opens, which no disk_format names (so they are refused
  under every inspected claim, raw included, and only their safety checks run
  under no claim and the uninspected ones): qcow version 1 with a backing file
  or encryption, QED with a backing file (whatever its feature bits say) or
  feature bits qemu does not know, Parallels/ploop (which has no references),
  bochs redologs other than growing ones (undoable and volatile ones record
  changes to a base image file), cloop, and DMG,
  recognised as qemu finds it, by the "koly" trailer in the last 1023 bytes
  (qemu itself only opens a file as DMG when told to or when its name ends in
  .dmg: there is no magic at the start);
- a virtual size above max_virtual_size (whatever the claim, uninspected ones
  included), and qcow2 L1 tables mapping more than it.
"""

from __future__ import annotations

import logging
import re
import struct
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from appliance.errors import FormatRejected

log = logging.getLogger(__name__)

DISK_FORMATS = ("ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop")
CONTAINER_FORMATS = ("ami", "ari", "aki", "bare", "ovf", "ova", "docker", "compressed")

# Start of the stream kept for parsing: covers the ISO volume descriptors (32 KiB+),
# VMDK embedded descriptors and the VHDX headers and region tables (up to 320 KiB).
HEAD_SIZE = 1 << 20
# End of the stream kept: a fixed VHD is raw data followed by a 512-byte footer, its only
# header, and qemu looks for a DMG's 512-byte "koly" trailer in the last 1023 bytes.
TAIL_SIZE = 1024
_VHD_FOOTER = 512
FILE_CHUNK = 1 << 20

# Claims Glance does not inspect; the safety checks still run on their bytes.
_UNINSPECTED = frozenset({"ami", "ari", "aki", "ploop"})
# Formats without a header of their own: their virtual size is the stream length.
_PLAIN = frozenset({"raw", "gpt", "mbr", "iso"})
# What a raw claim accepts: hypervisors read these as plain disks, so nothing in them is
# interpreted as a reference to another file.  An ISO is not a disk: it must be claimed as iso.
_RAW_ACCEPTS = frozenset({"raw", "gpt", "mbr"})
# Detected formats a refusal names as the --disk-format to pass (raw-looking data may be a
# format without a header at its start, such as DMG, so it gets no such advice).
_NAMED_HINT = frozenset(DISK_FORMATS) - _RAW_ACCEPTS
_DESCRIPTIONS = {"gpt": "raw (GPT-partitioned)", "mbr": "raw (MBR-partitioned)"}
# Smallest stream that can hold each claimed format's header, for a clearer message.
_MIN_SIZE = {"qcow2": 72, "vmdk": 512, "vhd": 512, "vhdx": 0x40000, "vdi": 376, "iso": 36870}

# Enough bytes to see every magic at offset 0 (VDI's signature sits at 64, cloop's
# shell-script preamble is 83 bytes long).
_MAGIC_BYTES = 128
# ISO 9660 / UDF volume descriptor identifiers, in sectors 16-18 of 2048 bytes.
_ISO_OFFSETS = (32769, 34817, 36865)
_ISO_IDS = (b"CD001", b"BEA01")
_ISO_PROBE_END = _ISO_OFFSETS[-1] + 5

_LUKS_MAGIC = b"LUKS\xba\xbe"

_QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_V2_HEADER = 72
_QCOW2_V3_HEADER = 104
_QCOW2_INCOMPAT_CORRUPT = 1 << 1
_QCOW2_INCOMPAT_DATA_FILE = 1 << 2
_QCOW2_INCOMPAT_EXTENDED_L2 = 1 << 4
# dirty (lazy refcounts, harmless read-only), corrupt, data file, compression type, extended L2.
_QCOW2_INCOMPAT_KNOWN = 0x1F
_QCOW2_COMPRESSION_TYPES = (0, 1)  # zlib, zstd
_QCOW2_CRYPT_METHODS = {1: "AES", 2: "LUKS"}
_QCOW2_EXT_DATA_FILE = 0x44415441
_QCOW2_MAX_NAME = 1023
# qemu's own limits (block/qcow2.h): beyond them it refuses to open the image.
_QCOW2_MAX_L1_ENTRIES = (32 << 20) // 8
_QCOW2_MAX_REFTABLE_BYTES = 8 << 20
_QCOW2_MAX_SNAPSHOTS = 65536
_QCOW2_MAX_REFCOUNT_ORDER = 6
_QCOW2_SNAPSHOT_ENTRY_MIN = 40  # fixed part of a snapshot table entry
_QCOW2_L1_OFFSET_MASK = 0x00FFFFFFFFFFFE00  # also standard L2 entries
_QCOW2_REFTABLE_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
_QCOW2_COMPRESSED = 1 << 62
# How much of the L1 and refcount tables is kept to check where their entries point
# (32768 entries: 16 TiB of a 64 KiB-cluster image's L1).
_QCOW2_TABLE_WINDOW = 256 << 10
# Work spent reading L2 tables per image, in bytes of table (three per byte for tables with
# compressed clusters, read entry by entry): 256 tables of 64 KiB, 128 GiB of virtual disk,
# and a bound of some 0.1 s of event-loop time for a stream of nothing but L2 tables.
_QCOW2_L2_BUDGET = 16 << 20
_QCOW2_SLOW_SCAN_COST = 3
_BYTE_AND_40 = bytes(b & 0x40 for b in range(256))  # bit 62 of a big-endian entry: compressed
_BYTE_AND_FE = bytes(b & 0xFE for b in range(256))

_VMDK_MAGIC = b"KDMV"
_VMDK3_MAGIC = b"COWD"  # ESX 2 sparse extents, which qemu still opens
_VMDK_TEXT = b"# Disk DescriptorFile"
_VMDK_ALLOWED = ("monolithicSparse", "streamOptimized")
# qemu looks for a parent at sector 1 (20 sectors) whatever descriptorOffset says.
_VMDK_QEMU_DESC = (512, 512 + 20 * 512)
# qemu probes this much of a file for a text descriptor.
_VMDK_PROBE = 2048
_VMDK_PARENT = re.compile(rb'parentFileNameHint\s*=\s*"?([^"\r\n]*)')
_VMDK_NO_PARENT = "ffffffff"
# The embedded descriptor grammar: comments, blank lines, these keys, ddb.* keys and extent lines.
_VMDK_KEY_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_.]*)\s*=\s*(.*)")
_VMDK_QUOTED = re.compile(r'"([^"]*)"')
_VMDK_VALUES = {
    "version": re.compile(r"[1-3]"),
    "encoding": re.compile(r"[A-Za-z0-9_.:-]*"),
    "CID": re.compile(r"[0-9a-fA-F]{1,8}"),
    "parentCID": re.compile(r"[0-9a-fA-F]{1,8}"),
    "createType": re.compile(r"[^\"]*"),
    "isNativeSnapshot": re.compile(r"no"),  # VMware writes it; "yes" marks a snapshot
}
_VMDK_EXTENT_LINE = re.compile(r"(?:RW|RDONLY|NOACCESS)\s+\d+\s+(\S+)(?:\s.*)?")
_VMDK_SPARSE_EXTENT = re.compile(r'(?:RW|RDONLY)\s+\d+\s+SPARSE\s+"[^"]*"')
_VMDK_LINE_SHOWN = 60

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
_VDI_NORMAL, _VDI_FIXED, _VDI_DIFFERENCING = 1, 2, 4

# qcow version 1 (block/qcow.c): the qcow2 magic with version 1; big-endian.
_QCOW1_HEADER = 48
_QCOW1_CRYPT_AES = 1

# QED (docs/interop/qed_spec.txt): little-endian header in the first header_size clusters.
_QED_MAGIC = b"QED\0"
_QED_HEADER = 64
_QED_F_BACKING_FILE = 0x01
_QED_F_NEED_CHECK = 0x02  # not closed cleanly: qemu checks it on open, harmless
_QED_F_BACKING_FORMAT_NO_PROBE = 0x04
_QED_FEATURES_KNOWN = _QED_F_BACKING_FILE | _QED_F_NEED_CHECK | _QED_F_BACKING_FORMAT_NO_PROBE
_QED_CLUSTER_SIZES = (4 << 10, 64 << 20)
_QED_TABLE_SIZES = (1, 16)

# Parallels (docs/interop/parallels.txt): both magics, version 2, little-endian.
_PARALLELS_MAGIC = b"WithoutFreeSpace"
_PARALLELS_MAGIC_EXT = b"WithouFreSpacExt"  # also Virtuozzo's ploop
_PARALLELS_HEADER = 64
_PARALLELS_VERSION = 2

# bochs redolog (block/bochs.c): a 512-byte little-endian header; qemu opens "Growing" ones.
_BOCHS_MAGIC = b"Bochs Virtual HD Image"
_BOCHS_HEADER = 512
_BOCHS_V1, _BOCHS_V2 = 0x00010000, 0x00020000

# cloop (block/cloop.c): a shell-script preamble, then block size and count (big-endian).
_CLOOP_MAGIC = b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && mount -r -t iso9660 /dev/cloop $1\n"
_CLOOP_HEADER = 136

# DMG (UDIF): a 512-byte trailer starting "koly", version 4, big-endian; qemu searches the
# last 1023 bytes for it (block/dmg.c, dmg_find_koly_offset).
_DMG_KOLY = b"koly"
_DMG_TRAILER = 512
_DMG_SEARCH = 1023
_DMG_VERSION = 4
_DMG_SECTOR_COUNT = 0x1EC

_HOST_FILES = "images that reference host files are refused"


@dataclass(frozen=True)
class Inspection:
    # detected: raw, qcow2, vmdk, vhd, vhdx, vdi, iso, gpt or mbr; with no claim or an
    # uninspected one also qcow, qed, parallels, bochs, cloop or dmg
    format: str
    virtual_size: int | None  # bytes; the stream length for raw, iso, gpt and mbr
    # VMDK only: createType and ddb.adapterType of the embedded descriptor, as written there.
    vmdk_create_type: str | None = None
    vmdk_adapter_type: str | None = None


@dataclass(frozen=True)
class _Qcow2Layout:
    """Where a qcow2 header says its tables are."""

    cluster_bits: int
    extended_l2: bool
    l1_offset: int
    l1_entries: int
    reftable_offset: int
    reftable_clusters: int
    snapshots_offset: int
    snapshots: int

    @property
    def l1_maps(self) -> int:
        """Bytes of virtual disk one L1 entry maps: a cluster of L2 entries, 8 or 16 bytes each."""
        return (1 << self.cluster_bits) // (16 if self.extended_l2 else 8) << self.cluster_bits


@dataclass(frozen=True)
class _Header:
    virtual_size: int | None
    follow: tuple[int, int] | None = None  # stream range still to collect (VHDX metadata)
    qcow2: _Qcow2Layout | None = None
    vmdk_create_type: str | None = None
    vmdk_adapter_type: str | None = None


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
    """Fed an upload chunk by chunk; checks its bytes against the claimed disk_format.

    max_virtual_size (bytes; None or 0: no limit) refuses images whose virtual size, or
    whose qcow2 L1 table, exceeds it."""

    def __init__(
        self, claimed_disk_format: str | None, max_virtual_size: int | None = None, container_format: str | None = None
    ) -> None:
        if claimed_disk_format is not None and claimed_disk_format not in DISK_FORMATS:
            raise FormatRejected(f'disk_format "{claimed_disk_format}" is not one of: {", ".join(DISK_FORMATS)}')
        if max_virtual_size is not None and max_virtual_size < 0:
            raise ValueError("max_virtual_size must not be negative")
        # As in Glance, the disk format is held against the data only in a bare container (an
        # OVA's data is a tar, a docker image's too); the safety checks still run on any data,
        # and an OVA must be a tar with an OVF descriptor.
        self._container = container_format if container_format not in (None, "bare") else None
        self._ova = _OvaScan() if container_format == "ova" else None
        if self._container is not None:
            claimed_disk_format = None
        self._claim = claimed_disk_format
        self._limit = max_virtual_size or None
        self._size = 0
        self._head = bytearray()
        self._tail = b""
        self._kind: str | None = None  # format the head shows, once known
        self._settled = False  # head checks done
        self._header: _Header | None = None
        self._virtual_size: int | None = None
        self._metadata: _Window | None = None  # VHDX metadata region still to come
        self._qcow2: _Qcow2Scan | None = None
        self._failure: str | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """May raise FormatRejected as soon as enough header bytes have arrived to know the
        stream is unacceptable (so the upload can stop early)."""
        if self._failure is not None:
            raise FormatRejected(self._failure)
        try:
            if self._ova is not None:
                self._ova.feed(chunk)
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
            found = self._finish()
            if self._ova is not None:
                self._ova.finish()
                return Inspection("ova", None)
            # Outside a bare container the data is not the disk: no virtual size (Glance's too).
            return found if self._container is None else Inspection(found.format, None)
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
        if self._qcow2 is not None:
            self._qcow2.take(offset, data)
        limit = self._limit
        # Plain data's virtual size is its length.  Under other claims it may still turn
        # out to be a fixed VHD (whose footer gives the size), so those wait for the end.
        if limit is not None and self._size > limit and self._kind in _PLAIN and self._claim in ("raw", "iso"):
            raise FormatRejected(
                f"image virtual size (more than {limit} bytes of {self._kind} data) exceeds the limit of {limit} bytes"
            )

    def _finish(self) -> Inspection:
        if not self._size:
            raise FormatRejected("image data is empty")
        if not self._settled:
            self._inspect_head(final=True)
        if self._metadata is not None:
            self._close_metadata(self._metadata)
        detected = self._kind or "raw"
        virtual_size = self._virtual_size
        if detected in _PLAIN:
            footer = self._tail[-_VHD_FOOTER:]
            if self._size >= _VHD_FOOTER and footer.startswith(_VHD_COOKIE):
                detected, virtual_size = "vhd", _vhd_footer(footer)
            elif (dmg_size := _dmg_trailer(self._tail)) is not None:
                detected, virtual_size = "dmg", dmg_size
            else:
                virtual_size = self._size
        self._judge(detected, ended=True)
        if self._qcow2 is not None:
            self._qcow2.check(self._size)
        self._check_limit(virtual_size)
        if self._claim in _UNINSPECTED:
            virtual_size = None
        log.debug("image data is %s, virtual size %s (claimed %s)", detected, virtual_size, self._claim)
        header = self._header
        if header is None or detected != "vmdk":
            return Inspection(detected, virtual_size)
        return Inspection(detected, virtual_size, header.vmdk_create_type, header.vmdk_adapter_type)

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
                kind = "vmdk" if _is_vmdk_text(head) else _raw_flavour(head)
            self._kind = kind
        kind = self._kind
        if kind in _PLAIN:
            self._settled = True
            # A fixed VHD is only recognisable by its footer, so vhd claims wait, and so do raw
            # claims of what raw accepts (a VHD footer would make it a mismatch).
            if self._claim == "vhd" or (self._claim == "raw" and kind in _RAW_ACCEPTS):
                return
            self._judge(kind, ended=final)
            return
        header = _HEADER_PARSERS[kind](head, complete)
        if header is None:
            return
        self._settled = True
        self._header = header
        self._virtual_size = header.virtual_size
        self._judge(kind, ended=final)
        self._check_limit(header.virtual_size)
        if header.qcow2 is not None:
            self._check_l1_size(header.qcow2)
            self._qcow2 = _Qcow2Scan(header.qcow2, head)
        if header.follow is not None:
            meta = self._metadata = _Window(*header.follow)
            with memoryview(head) as view:
                meta.take(0, view)
            if meta.full:
                self._close_metadata(meta)

    def _close_metadata(self, meta: _Window) -> None:
        self._metadata = None
        self._virtual_size = _vhdx_metadata(meta.buf, truncated=not meta.full)
        self._check_limit(self._virtual_size)

    def _check_limit(self, virtual_size: int | None) -> None:
        limit = self._limit
        if limit is not None and virtual_size is not None and virtual_size > limit:
            raise FormatRejected(f"image virtual size {virtual_size} bytes exceeds the limit of {limit} bytes")

    def _check_l1_size(self, layout: _Qcow2Layout) -> None:
        # An L1 table is sized for the virtual size, so one that maps more than the limit
        # (rounded up to whole entries) is out of proportion whatever the header's size says.
        limit, entries, maps = self._limit, layout.l1_entries, layout.l1_maps
        if limit is not None and entries > -(-limit // maps):
            raise FormatRejected(
                f"qcow2 L1 table has {entries} entries, mapping {entries * maps} bytes, "
                f"beyond the virtual size limit of {limit} bytes"
            )

    def _judge(self, detected: str, ended: bool) -> None:
        claim = self._claim
        if claim is None or claim in _UNINSPECTED:
            return
        if detected == claim or (claim == "raw" and detected in _RAW_ACCEPTS):
            return
        if ended and detected in _PLAIN and self._size < _MIN_SIZE.get(claim, 0):
            raise FormatRejected(f"image data is too short to be {claim} ({self._size} bytes)")
        described = _DESCRIPTIONS.get(detected, detected)
        # Clients send raw when no format is named (openstack image create --file): say what to pass.
        hint = f"; to keep it as {detected}, pass --disk-format {detected}" if detected in _NAMED_HINT else ""
        raise FormatRejected(f"image data is {described}, not {claim} as claimed (disk_format){hint}")


def inspect_file(
    path: str, claimed_disk_format: str | None, max_virtual_size: int | None = None, container_format: str | None = None
) -> Inspection:
    """Convenience for whole files (reads in 1 MiB chunks)."""
    inspector = FormatInspector(claimed_disk_format, max_virtual_size, container_format)
    with open(path, "rb") as f:
        while chunk := f.read(FILE_CHUNK):
            inspector.feed(chunk)
    return inspector.finish()


def _magic_format(head: bytearray) -> str | None:
    if head.startswith(_QCOW2_MAGIC):
        return "qcow" if head[4:8] == b"\0\0\0\1" else "qcow2"
    if head.startswith(_QED_MAGIC):
        return "qed"
    if head.startswith((_PARALLELS_MAGIC, _PARALLELS_MAGIC_EXT)):
        return "parallels"
    if head.startswith(_BOCHS_MAGIC):
        return "bochs"
    if head.startswith(_CLOOP_MAGIC):
        return "cloop"
    if head.startswith((_VMDK_MAGIC, _VMDK3_MAGIC, _VMDK_TEXT)):
        return "vmdk"
    if head.startswith(_VHDX_MAGIC):
        return "vhdx"
    if head.startswith(_VHD_COOKIE):  # a dynamic VHD starts with a copy of its footer
        return "vhd"
    if head.startswith(_LUKS_MAGIC):
        return "luks"
    if len(head) >= 68 and struct.unpack_from("<I", head, 64)[0] == _VDI_SIGNATURE:
        return "vdi"
    return None


def _is_vmdk_text(head: bytearray) -> bool:
    """qemu's probe for a VMDK text descriptor, a little wider: the first line that is neither
    blank nor a comment says version=1, 2 or 3."""
    lines = bytes(head[:_VMDK_PROBE]).split(b"\n")
    for line in lines[:-1]:  # the last piece has no newline: qemu does not match it either
        line = line.lstrip(b" ").rstrip(b"\r")
        if not line or line.startswith(b"#"):
            continue
        return line in (b"version=1", b"version=2", b"version=3")
    return False


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


def _printable(raw: bytes | bytearray, limit: int = 200) -> str:
    """Text from a header, made safe and short enough for a user-facing message."""
    text = bytes(raw).split(b"\0", 1)[0].decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _quoted(raw: bytes | bytearray) -> str:
    return f' ("{_printable(raw)}")'


def _parse_luks(head: bytearray, complete: bool) -> _Header | None:
    raise FormatRejected("image data is a LUKS-encrypted volume; encrypted images are refused")


def _parse_qcow2(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _QCOW2_V2_HEADER, complete, "qcow2"):
        return None
    (
        version, backing_offset, backing_size, cluster_bits, size, crypt_method,
        l1_entries, l1_offset, reftable_offset, reftable_clusters, snapshots, snapshots_offset,
    ) = struct.unpack_from(">IQIIQIIQQIIQ", head, 4)  # fmt: skip
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
        name = head[backing_offset:end] if backing_size > 0 and end <= len(head) else b""
        if name.startswith(b"json:"):
            raise FormatRejected(
                f"qcow2 image has a backing file given as a json: pseudo-protocol specification"
                f"{_quoted(name)}; {_HOST_FILES}"
            )
        shown = _quoted(name) if backing_size > 0 and end <= len(head) else ""
        raise FormatRejected(f"qcow2 image has a backing file{shown}; {_HOST_FILES}")
    if crypt_method:
        method = _QCOW2_CRYPT_METHODS.get(crypt_method, f"method {crypt_method}")
        raise FormatRejected(f"qcow2 image is encrypted ({method}); encrypted qcow2 images are refused")
    extensions_start, incompatible, refcount_order, compression = _QCOW2_V2_HEADER, 0, 4, 0
    if version == 3:
        incompatible = struct.unpack_from(">Q", head, 72)[0]
        refcount_order, extensions_start = struct.unpack_from(">II", head, 96)
        if not _QCOW2_V3_HEADER <= extensions_start <= cluster:
            raise FormatRejected(f"qcow2 header is corrupt: header length {extensions_start} is invalid")
        if extensions_start > _QCOW2_V3_HEADER:
            compression = head[_QCOW2_V3_HEADER]
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
        shown = _quoted(data_file) if data_file else ""
        raise FormatRejected(f"qcow2 image uses an external data file{shown}; {_HOST_FILES}")
    if incompatible & _QCOW2_INCOMPAT_CORRUPT:
        raise FormatRejected("qcow2 image is marked corrupt; repair it (qemu-img check -r all) before uploading")
    unknown = incompatible & ~_QCOW2_INCOMPAT_KNOWN
    if unknown:
        raise FormatRejected(f"qcow2 image has unknown incompatible feature bits 0x{unknown:x}")
    if compression not in _QCOW2_COMPRESSION_TYPES:
        raise FormatRejected(f"qcow2 image uses unknown compression type {compression}")
    if refcount_order > _QCOW2_MAX_REFCOUNT_ORDER:
        raise FormatRejected(f"qcow2 header is corrupt: refcount order {refcount_order} is out of range")
    layout = _Qcow2Layout(
        cluster_bits, bool(incompatible & _QCOW2_INCOMPAT_EXTENDED_L2), l1_offset, l1_entries,
        reftable_offset, reftable_clusters, snapshots_offset, snapshots,
    )  # fmt: skip
    if l1_entries > _QCOW2_MAX_L1_ENTRIES:
        raise FormatRejected(f"qcow2 L1 table is too large ({l1_entries} entries, at most {_QCOW2_MAX_L1_ENTRIES})")
    if l1_entries < -(-size // layout.l1_maps):
        raise FormatRejected(f"qcow2 header is corrupt: its L1 table ({l1_entries} entries) is too small for its size")
    if reftable_clusters * cluster > _QCOW2_MAX_REFTABLE_BYTES:
        raise FormatRejected(f"qcow2 refcount table is too large ({reftable_clusters} clusters)")
    if snapshots > _QCOW2_MAX_SNAPSHOTS:
        raise FormatRejected(f"qcow2 image has too many snapshots ({snapshots}, at most {_QCOW2_MAX_SNAPSHOTS})")
    return _Header(size, qcow2=layout)


class _Qcow2Scan:
    """Follows a qcow2 image through the stream to tell, once its length is known, whether it is
    whole: its L1, refcount and snapshot tables lie inside the data, and so do the clusters that
    the L1 table (L2 tables), the refcount table (refcount blocks) and the L2 tables (data)
    point at.  Keeps at most the first 256 KiB of the L1 and refcount tables and one L2 table.
    Unchecked: the data of L2 tables that went by before the L1 table was complete (beyond the
    first MiB), or after _QCOW2_L2_BUDGET was spent, and of those the L1 window does not reach."""

    def __init__(self, layout: _Qcow2Layout, head: bytearray) -> None:
        self.layout = layout
        self.cluster = 1 << layout.cluster_bits
        self.head = head  # the inspector's head buffer (it only grows, up to HEAD_SIZE)
        l1_bytes, reftable_bytes = layout.l1_entries * 8, layout.reftable_clusters * self.cluster
        self.l1 = _Window(layout.l1_offset, layout.l1_offset + min(l1_bytes, _QCOW2_TABLE_WINDOW))
        self.reftable = _Window(
            layout.reftable_offset, layout.reftable_offset + min(reftable_bytes, _QCOW2_TABLE_WINDOW)
        )
        self.l2_pending: deque[int] | None = None  # L2 tables still to come, once the L1 table is known
        self.l2: _Window | None = None  # the L2 table being collected
        self.l2_budget = _QCOW2_L2_BUDGET
        # Furthest byte each kind of cluster reaches; compressed data may end in a partial sector.
        self.far_data = self.far_compressed = 0
        # For a compressed L2 entry: the bits holding the host offset.
        self.compressed_offset_mask = (1 << (62 - (layout.cluster_bits - 8))) - 1
        with memoryview(head) as view:
            self.take(0, view)

    def take(self, offset: int, data: memoryview) -> None:
        for window in (self.l1, self.reftable):
            if not window.full:
                window.take(offset, data)
        if self.l2_pending is None:
            if not self.l1.full:
                return
            self._queue_l2(offset)
        if self.l2_pending:
            self._collect_l2(offset, data)

    def _queue_l2(self, offset: int) -> None:
        """The L2 tables the L1 table names that are in the head or still to come."""
        buf = self.l1.buf
        tables = {entry & _QCOW2_L1_OFFSET_MASK for entry in struct.unpack_from(f">{len(buf) // 8}Q", buf)}
        tables.discard(0)
        self.l2_pending = deque(sorted(t for t in tables if t >= offset or t < len(self.head)))

    def _collect_l2(self, offset: int, data: memoryview) -> None:
        pending = self.l2_pending
        end = offset + len(data)
        while pending and pending[0] < end:
            window = self.l2
            if window is None:
                start = pending[0]
                window = self.l2 = _Window(start, start + self.cluster)
                if start < len(self.head):
                    with memoryview(self.head) as view:
                        window.take(0, view)
            window.take(offset, data)
            if window.full:
                self._scan_l2(window.buf)
                if self.l2_budget <= 0:
                    log.debug("qcow2 L2 scan budget spent; %d L2 tables left unchecked", len(pending) - 1)
                    pending.clear()
                    self.l2 = None
                    return
            elif window.start + len(window.buf) >= end:
                return  # the table continues in the next chunk
            # Scanned, or it went by uncollected (a table overlapping the one before).
            pending.popleft()
            self.l2 = None

    def _scan_l2(self, table: bytearray) -> None:
        if self.layout.extended_l2:  # each entry is followed by its subcluster bitmap: drop those
            packed = bytearray(len(table) // 2)
            for i in range(8):
                packed[i::8] = table[i::16]
            table = packed
        count = len(table) // 8
        if not bytes(table[0::8]).translate(_BYTE_AND_40).strip(b"\0"):
            # No compressed cluster: clear the flag and reserved bits of every entry at once,
            # which leaves the host offsets, then take the largest.
            self.l2_budget -= len(table)
            table[0::8] = bytes(count)
            table[7::8] = bytes(count)
            table[6::8] = bytes(table[6::8]).translate(_BYTE_AND_FE)
            data = max(struct.unpack_from(f">{count}Q", table), default=0)
            if data:
                self.far_data = max(self.far_data, data + self.cluster)
            return
        self.l2_budget -= len(table) * _QCOW2_SLOW_SCAN_COST
        entries = struct.unpack_from(f">{count}Q", table)
        data = max((e & _QCOW2_L1_OFFSET_MASK for e in entries if not e & _QCOW2_COMPRESSED), default=0)
        if data:
            self.far_data = max(self.far_data, data + self.cluster)
        mask = self.compressed_offset_mask
        compressed = max((e & mask for e in entries if e & _QCOW2_COMPRESSED), default=-1)
        if compressed >= 0:
            self.far_compressed = max(self.far_compressed, compressed + 1)

    def check(self, size: int) -> None:
        layout, cluster = self.layout, self.cluster
        for name, start, length in (
            ("L1 table", layout.l1_offset, layout.l1_entries * 8),
            ("refcount table", layout.reftable_offset, layout.reftable_clusters * cluster),
            ("snapshot table", layout.snapshots_offset, layout.snapshots * _QCOW2_SNAPSHOT_ENTRY_MIN),
        ):
            if length and start + length > size:
                _truncated(f"its {name} ends at byte {start + length}", size)
        for window, mask, points_at in (
            (self.l1, _QCOW2_L1_OFFSET_MASK, "an L2 table"),
            (self.reftable, _QCOW2_REFTABLE_OFFSET_MASK, "a refcount block"),
        ):
            buf = window.buf
            furthest = max((e & mask for e in struct.unpack_from(f">{len(buf) // 8}Q", buf)), default=0)
            if furthest and furthest + cluster > size:
                _truncated(f"it has {points_at} at byte {furthest}", size)
        if self.far_data > size:
            _truncated(f"it has a data cluster at byte {self.far_data - cluster}", size)
        if self.far_compressed > size:
            _truncated(f"it has a compressed cluster at byte {self.far_compressed - 1}", size)


def _truncated(what: str, size: int) -> None:
    raise FormatRejected(f"qcow2 image is truncated or corrupt: {what}, beyond the end of the data ({size} bytes)")


def _parse_vmdk(head: bytearray, complete: bool) -> _Header | None:
    if head.startswith(_VMDK3_MAGIC):
        raise FormatRejected("VMDK3 (COWD) sparse images are not supported")
    if not head.startswith(_VMDK_MAGIC):
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
    if not capacity:
        raise FormatRejected(
            f"VMDK image has a capacity of 0, so qemu would take its descriptor for a descriptor file "
            f"that points at other files; {_HOST_FILES}"
        )
    start = desc_sector * 512
    end = start + desc_sectors * 512
    if end > HEAD_SIZE:
        raise FormatRejected(f"VMDK descriptor is outside the inspected header (the first {HEAD_SIZE // 1024} KiB)")
    if not _need(head, end, complete, "VMDK", "descriptor"):
        return None
    if len(head) < _VMDK_QEMU_DESC[1] and not complete:
        return None
    descriptor = bytes(head[start:end]).split(b"\0", 1)[0]
    qemu_area = bytes(head[_VMDK_QEMU_DESC[0] : _VMDK_QEMU_DESC[1]]).split(b"\0", 1)[0]
    create_type, adapter_type = _check_vmdk_descriptor(descriptor, qemu_area)
    return _Header(capacity * 512, vmdk_create_type=create_type, vmdk_adapter_type=adapter_type)


def _check_vmdk_descriptor(descriptor: bytes, qemu_area: bytes) -> tuple[str, str | None]:
    """Check an embedded descriptor line by line; returns its createType and ddb.adapterType.

    Understood: blank lines, comments (#...), version=, encoding=, CID=, parentCID=ffffffff,
    createType=, isNativeSnapshot="no", ddb.* keys and extent lines `RW|RDONLY N SPARSE "file"`
    (values may be quoted).  Anything else, a key given twice and an extent of another type
    are refused; so is every parentFileNameHint, also in the sectors where qemu looks."""
    keys: dict[str, str] = {}
    extents: list[str] = []
    unknown: str | None = None
    repeated: str | None = None
    for raw_line in descriptor.decode("utf-8", "replace").split("\n"):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        extent = _VMDK_EXTENT_LINE.fullmatch(line)
        if extent is not None:
            extents.append(extent.group(1))
            if extent.group(1) == "SPARSE" and not _VMDK_SPARSE_EXTENT.fullmatch(line):
                unknown = unknown or line
            continue
        match = _VMDK_KEY_LINE.fullmatch(line)
        if match is None or (match.group(1) not in _VMDK_VALUES and not match.group(1).startswith("ddb.")):
            unknown = unknown or line
            continue
        key, value = match.group(1), match.group(2).strip()
        quoted = _VMDK_QUOTED.fullmatch(value)
        value = quoted.group(1) if quoted is not None else value
        if key in keys:
            if not key.startswith("ddb."):
                repeated = repeated or key
            continue
        pattern = _VMDK_VALUES.get(key)
        if pattern is not None and not pattern.fullmatch(value):
            unknown = unknown or line
        keys[key] = value
    create_type = keys.get("createType")
    if create_type is None:
        raise FormatRejected("VMDK descriptor has no createType")
    if create_type not in _VMDK_ALLOWED:
        raise FormatRejected(
            f'VMDK image has createType "{_printable(create_type.encode())}"; only monolithicSparse '
            "and streamOptimized are accepted, other types reference more files"
        )
    for area in (descriptor, qemu_area):
        if b"parentFileNameHint" in area:
            parent = _VMDK_PARENT.search(area)
            name = _quoted(parent.group(1)) if parent and parent.group(1) else ""
            raise FormatRejected(f"VMDK image references a parent file{name}; {_HOST_FILES}")
    parent_cid = keys.get("parentCID", _VMDK_NO_PARENT)
    if parent_cid.lower() != _VMDK_NO_PARENT and _VMDK_VALUES["parentCID"].fullmatch(parent_cid):
        raise FormatRejected(f"VMDK image depends on a parent image (parentCID={parent_cid}); {_HOST_FILES}")
    if repeated is not None:
        raise FormatRejected(f"VMDK descriptor sets {repeated} more than once")
    if unknown is not None:
        shown = _printable(unknown.encode(), _VMDK_LINE_SHOWN)
        raise FormatRejected(f'VMDK descriptor has a line the inspector does not understand: "{shown}"')
    if extents != ["SPARSE"]:
        listed = f"extents of type {', '.join(extents)}" if extents else "no extent"
        raise FormatRejected(
            f"VMDK descriptor lists {listed}; only single-file images with one SPARSE extent are accepted"
        )
    return create_type, keys.get("ddb.adapterType")


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
    image_type = struct.unpack_from("<I", head, 76)[0]
    if image_type == _VDI_DIFFERENCING:
        raise FormatRejected(f"VDI image is a differencing disk, which depends on a parent file; {_HOST_FILES}")
    if image_type not in (_VDI_NORMAL, _VDI_FIXED):
        raise FormatRejected(f"VDI image type {image_type} is not supported; only normal and fixed images are accepted")
    return _Header(struct.unpack_from("<Q", head, 368)[0])


def _backing_file(fmt: str, head: bytearray, offset: int, size: int) -> FormatRejected:
    """The backing-file safety check's refusal, naming the file when the head holds its name."""
    end = offset + min(size, _QCOW2_MAX_NAME)
    name = head[offset:end] if offset and size and end <= len(head) else b""
    return FormatRejected(f"{fmt} image has a backing file{_quoted(name) if name else ''}; {_HOST_FILES}")


def _parse_qcow(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _QCOW1_HEADER, complete, "qcow"):
        return None
    backing_offset, backing_size, _mtime, size, cluster_bits, l2_bits, _pad, crypt_method = struct.unpack_from(
        ">QIIQBBHI", head, 8
    )
    if backing_offset or backing_size:
        if len(head) < min(backing_offset + backing_size, HEAD_SIZE) and not complete:
            return None  # wait for the name, to show it
        raise _backing_file("qcow (version 1)", head, backing_offset, backing_size)
    if crypt_method:
        method = "AES" if crypt_method == _QCOW1_CRYPT_AES else f"method {crypt_method}"
        raise FormatRejected(f"qcow (version 1) image is encrypted ({method}); encrypted images are refused")
    if not 9 <= cluster_bits <= 16 or not 9 <= l2_bits <= 16:  # what qemu accepts
        raise FormatRejected(f"qcow (version 1) header is corrupt: cluster bits {cluster_bits}, L2 bits {l2_bits}")
    return _Header(size)


def _parse_qed(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _QED_HEADER, complete, "QED"):
        return None
    (
        cluster_size,
        table_size,
        header_clusters,
        features,
        _compat,
        _autoclear,
        _l1,
        size,
        backing_offset,
        backing_size,
    ) = struct.unpack_from("<IIIQQQQQII", head, 4)
    # Checked whatever the feature bit says: a name in the header is enough to refuse.
    if features & (_QED_F_BACKING_FILE | _QED_F_BACKING_FORMAT_NO_PROBE) or backing_offset or backing_size:
        if len(head) < min(backing_offset + backing_size, HEAD_SIZE) and not complete:
            return None  # wait for the name, to show it
        raise _backing_file("QED", head, backing_offset, backing_size)
    unknown = features & ~_QED_FEATURES_KNOWN
    if unknown:
        raise FormatRejected(f"QED image has unknown feature bits 0x{unknown:x}")
    lo, hi = _QED_CLUSTER_SIZES
    if not lo <= cluster_size <= hi or cluster_size & (cluster_size - 1):
        raise FormatRejected(f"QED header is corrupt: cluster size {cluster_size} is invalid")
    lo, hi = _QED_TABLE_SIZES
    if not lo <= table_size <= hi or table_size & (table_size - 1) or not header_clusters:
        raise FormatRejected("QED header is corrupt: its table or header size is invalid")
    return _Header(size)


def _parse_parallels(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _PARALLELS_HEADER, complete, "Parallels"):
        return None
    version, _heads, _cylinders, tracks, _bat_entries, sectors = struct.unpack_from("<IIIIIQ", head, 16)
    if version != _PARALLELS_VERSION:
        raise FormatRejected(f"Parallels image version {version} is not supported")
    if not tracks:
        raise FormatRejected("Parallels header is corrupt: its cluster size is 0")
    if head.startswith(_PARALLELS_MAGIC):  # the old format counts sectors in 32 bits
        sectors &= 0xFFFFFFFF
    return _Header(sectors * 512)


def _parse_bochs(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _BOCHS_HEADER, complete, "bochs"):
        return None
    kind, subtype = (bytes(head[start : start + 16]).split(b"\0", 1)[0] for start in (32, 48))
    if kind != b"Redolog":
        raise FormatRejected(f'bochs image of type "{_printable(kind)}" is not supported')
    if subtype != b"Growing":
        # Undoable and volatile redologs record changes to a separate base image.
        raise FormatRejected(
            f'bochs image is a "{_printable(subtype)}" redolog, which depends on a base image file; {_HOST_FILES}'
        )
    version = struct.unpack_from("<I", head, 64)[0]
    if version not in (_BOCHS_V1, _BOCHS_V2):
        raise FormatRejected(f"bochs image version 0x{version:x} is not supported")
    return _Header(struct.unpack_from("<Q", head, 84 if version == _BOCHS_V1 else 88)[0])


def _parse_cloop(head: bytearray, complete: bool) -> _Header | None:
    if not _need(head, _CLOOP_HEADER, complete, "cloop"):
        return None
    block_size, blocks = struct.unpack_from(">II", head, 128)
    if not block_size or block_size % 512:
        raise FormatRejected(f"cloop header is corrupt: block size {block_size} is invalid")
    return _Header(block_size * blocks)


def _dmg_trailer(tail: bytes) -> int | None:
    """The virtual size a DMG's "koly" trailer gives, if the tail holds one where qemu looks."""
    window = tail[-_DMG_SEARCH:]
    at = window.find(_DMG_KOLY)
    while at >= 0:
        trailer = window[at : at + _DMG_TRAILER]
        if len(trailer) == _DMG_TRAILER and struct.unpack_from(">II", trailer, 4) == (_DMG_VERSION, _DMG_TRAILER):
            return int(struct.unpack_from(">Q", trailer, _DMG_SECTOR_COUNT)[0]) * 512
        at = window.find(_DMG_KOLY, at + 1)
    return None


_HEADER_PARSERS = {
    "qcow2": _parse_qcow2,
    "vmdk": _parse_vmdk,
    "vhd": _parse_vhd,
    "vhdx": _parse_vhdx,
    "vdi": _parse_vdi,
    "luks": _parse_luks,
    "qcow": _parse_qcow,
    "qed": _parse_qed,
    "parallels": _parse_parallels,
    "bochs": _parse_bochs,
    "cloop": _parse_cloop,
}


# Descriptor values → the values Nova's VMware driver and Glance's metadefs use.
VMWARE_DISKTYPES = {"monolithicsparse": "sparse", "streamoptimized": "streamOptimized"}
VMWARE_ADAPTERTYPES = {
    "ide": "ide",
    "buslogic": "busLogic",
    "lsilogic": "lsiLogic",
    "lsisas1068": "lsiLogicsas",
    "pvscsi": "paraVirtual",
}


def introspected_properties(
    found: Inspection, properties: Mapping[str, str], user_set: frozenset[str]
) -> dict[str, str]:
    """The properties plus vmware_disktype/vmware_adaptertype from the createType and
    ddb.adapterType the inspector read in the VMDK's embedded descriptor, unless the user (or an
    earlier step) set them."""
    result = dict(properties)
    for key, found_value, values in (
        ("vmware_disktype", found.vmdk_create_type, VMWARE_DISKTYPES),
        ("vmware_adaptertype", found.vmdk_adapter_type, VMWARE_ADAPTERTYPES),
    ):
        if key in user_set or key in result or not found_value:
            continue  # not a VMDK (or no such line): nothing to record
        value = values.get(found_value.strip().lower())
        if value is None:
            log.info("VMDK descriptor value %r has no known %s equivalent", found_value, key)
        else:
            result[key] = value
    return result


_TAR_BLOCK = 512
# Members looked at for the descriptor: an OVA puts it first (DSP0243); a few more are allowed
# for packers that put a manifest or a long-name record ahead of it.
_OVA_MAX_MEMBERS = 16


class _OvaScan:
    """Walks the tar headers of a stream until it finds the OVF descriptor (a member named
    *.ovf), as Glance's OVF processing looks for it; the member data in between is skipped."""

    def __init__(self) -> None:
        self._pos = 0  # bytes seen
        self._next = 0  # offset of the next tar header
        self._header = bytearray()
        self._members = 0
        self.descriptor: str | None = None
        self._failure: str | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk)
        while view and self.descriptor is None and self._failure is None:
            if self._pos < self._next:  # inside a member's data
                skip = min(len(view), self._next - self._pos)
                view, self._pos = view[skip:], self._pos + skip
                continue
            take = min(len(view), _TAR_BLOCK - len(self._header))
            self._header += view[:take]
            view, self._pos = view[take:], self._pos + take
            if len(self._header) == _TAR_BLOCK:
                self._read_header(bytes(self._header))
                self._header.clear()
        if self._failure is not None:
            raise FormatRejected(self._failure)

    def _read_header(self, block: bytes) -> None:
        if block == bytes(_TAR_BLOCK) or block[257:262] != b"ustar":
            self._failure = (
                "image data is not an OVA: no OVF descriptor (*.ovf) in a tar archive"
                if self._members
                else "image data is not an OVA: container_format ova needs a tar archive with an OVF descriptor"
            )
            return
        self._members += 1
        name = block[0:100].split(b"\0", 1)[0]
        prefix = block[345:500].split(b"\0", 1)[0]
        full = (prefix + b"/" + name if prefix else name).decode("utf-8", "replace")
        try:
            size = int(block[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            self._failure = "image data is not an OVA: a tar header is corrupt (member %r)" % full[:100]
            return
        if full.lower().endswith(".ovf") and block[156:157] in (b"0", b"\0"):
            self.descriptor = full
            return
        if self._members >= _OVA_MAX_MEMBERS:
            self._failure = "image data is not an OVA: no OVF descriptor among its first %d members" % _OVA_MAX_MEMBERS
            return
        self._next = self._pos + -(-size // _TAR_BLOCK) * _TAR_BLOCK

    def finish(self) -> None:
        if self._failure is not None:
            raise FormatRejected(self._failure)
        if self.descriptor is None:
            raise FormatRejected("image data is not an OVA: no OVF descriptor (*.ovf) in a tar archive")
