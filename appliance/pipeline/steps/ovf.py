"""ovf_process: the disk inside an OVA becomes the image, and the CPU requirements its OVF
descriptor states become properties (Glance's OVF processing, glance.async_.flows.ovf_process).

As in Glance: only images with container_format ova are touched, and only for administrators
("OVA extract is limited to admin"); the descriptor's DiskSection must list exactly one Disk,
whose fileRef names a File in References whose href is the tar member extracted; every
element of the CIM_ProcessorAllocationSettingData namespace whose name ovf-metadata.json lists
under "cim_pasd" becomes a property cim_pasd_<Name> (its text, stripped); the image goes on as
container_format bare with its disk_format unchanged, so the disk is then inspected against the
claimed format (and converted by image_conversion when that comes after).

Beyond Glance: the tar is read by appliance.pipeline.steps.ovatar (bounded headers, regular
files only, no '..' or absolute names), the descriptor is parsed by expat with any DTD refused
(so no entity can be declared, let alone expanded) and its size bounded, and the disk is copied
out in chunks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO
from xml.parsers import expat

from appliance.errors import ConfigError
from appliance.pipeline.base import ImportFailed, StagedImage, StepContext
from appliance.pipeline.steps.ovatar import Member, read_members

log = logging.getLogger(__name__)

CIM_PASD_NS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ProcessorAllocationSettingData"
PROPERTY_PREFIX = "cim_pasd_"
DEFAULT_METADATA_FILE = "ovf-metadata.json"
MAX_DESCRIPTOR_BYTES = 4 << 20
MAX_METADATA_BYTES = 1 << 20
_MAX_DEPTH = 256
_CHUNK = 1 << 20
_SEP = " "  # expat's namespace separator: "URI local" (a URI holds no space)
# An XML element name (NCName), as the metadata file lists them.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9._-]*")


class _Stopped(Exception):
    """The task awaiting the extraction was cancelled."""


def _refuse(message: str) -> ImportFailed:
    return ImportFailed("OVA refused: " + message)


def load_ovf_metadata(path: Path, required: bool) -> tuple[str, ...] | None:
    """The CIM_ProcessorAllocationSettingData names ovf-metadata.json lists under "cim_pasd"
    (Glance's file format), or None when the file is absent and not `required`."""
    key = "import.ovf_metadata_file"
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_METADATA_BYTES + 1)
    except FileNotFoundError:
        if required:
            raise ConfigError("%s: %s does not exist" % (key, path)) from None
        return None
    except OSError as exc:
        raise ConfigError("%s: cannot read %s: %s" % (key, path, exc.strerror)) from None
    if len(raw) > MAX_METADATA_BYTES:
        raise ConfigError("%s: %s is larger than %d bytes" % (key, path, MAX_METADATA_BYTES))
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError("%s: %s is not valid JSON: %s" % (key, path, exc)) from None
    if not isinstance(data, dict):
        raise ConfigError('%s: %s must hold a JSON object, e.g. {"cim_pasd": ["InstructionSet"]}' % (key, path))
    unknown = sorted(set(data) - {"cim_pasd"})
    if unknown:
        raise ConfigError("%s: %s: unknown key %s (allowed: cim_pasd)" % (key, path, ", ".join(map(repr, unknown))))
    names = data.get("cim_pasd", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError("%s: %s: cim_pasd must be a list of element names" % (key, path))
    bad = [n for n in names if not _NAME.fullmatch(n) or len(PROPERTY_PREFIX + n) > 255]
    if bad:
        raise ConfigError(
            "%s: %s: cim_pasd: %s not an XML element name (of at most %d characters)"
            % (key, path, ", ".join(map(repr, bad)), 255 - len(PROPERTY_PREFIX))
        )
    return tuple(dict.fromkeys(names))


class OvfProcess:
    name = "ovf_process"

    def __init__(self, cim_pasd: Iterable[str] = (), max_value_length: int = 65535) -> None:
        self.cim_pasd = frozenset(cim_pasd)
        self.max_value_length = max_value_length

    async def run(self, staged: StagedImage, ctx: StepContext) -> StagedImage:
        if staged.container_format != "ova":
            return staged  # Glance's plugin expects ova and leaves anything else as it is
        if not ctx.is_admin:
            raise ImportFailed("OVA extract is limited to admin")
        stop = threading.Event()
        try:
            path, member, properties = await asyncio.to_thread(self._extract, staged.path, ctx.work_dir, stop)
        except asyncio.CancelledError:
            stop.set()  # the thread notices at its next chunk and removes its partial output
            raise
        log.info(
            "image %s: extracted disk %r (%d bytes) from the OVA; properties from its OVF descriptor: %s",
            ctx.image_id,
            member.name,
            member.size,
            ", ".join(sorted(properties)) or "none",
        )
        ctx.report("extracted disk %r (%d bytes) from the OVA" % (member.name, member.size))
        return staged.evolve(
            path=path,
            size=member.size,
            container_format="bare",
            properties={**staged.properties, **properties},
        )

    def _extract(self, source: Path, work_dir: Path, stop: threading.Event) -> tuple[Path, Member, dict[str, str]]:
        with open(source, "rb") as src:
            members = read_members(src, os.fstat(src.fileno()).st_size)
            descriptors = [m for m in members if m.name.lower().endswith(".ovf")]
            if not descriptors:
                raise _refuse("no OVF descriptor (*.ovf) in the tar archive")
            if len(descriptors) > 1:
                raise _refuse(
                    "the tar archive has %d OVF descriptors (%s); an OVA has one"
                    % (len(descriptors), ", ".join(repr(m.name) for m in descriptors[:5]))
                )
            descriptor = descriptors[0]
            parsed = self._parse(src, descriptor)
            disk = _disk_member(parsed, members, descriptor)
            fd, name = tempfile.mkstemp(prefix="ova-disk-", dir=work_dir)
            out = Path(name)
            try:
                with open(fd, "wb") as dst:
                    _copy_range(src, dst, disk, stop)
            except BaseException:
                out.unlink(missing_ok=True)
                raise
        return out, disk, parsed.properties

    def _parse(self, src: BinaryIO, descriptor: Member) -> _Descriptor:
        if descriptor.size > MAX_DESCRIPTOR_BYTES:
            raise _refuse(
                "the OVF descriptor %r is %d bytes (the most accepted is %d)"
                % (descriptor.name, descriptor.size, MAX_DESCRIPTOR_BYTES)
            )
        parsed = _Descriptor(self.cim_pasd, self.max_value_length)
        parser = expat.ParserCreate(namespace_separator=_SEP)
        parser.StartDoctypeDeclHandler = parsed.refuse_dtd
        parser.EntityDeclHandler = parsed.refuse_entity
        parser.ExternalEntityRefHandler = parsed.refuse_external
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        parser.StartElementHandler = parsed.start
        parser.EndElementHandler = parsed.end
        parser.CharacterDataHandler = parsed.text
        src.seek(descriptor.offset)
        left = descriptor.size
        try:
            while left:
                chunk = src.read(min(left, 64 << 10))
                if not chunk:
                    raise _refuse("the tar archive is truncated (member %r)" % descriptor.name)
                left -= len(chunk)
                parser.Parse(chunk, False)
            parser.Parse(b"", True)
        except expat.ExpatError as exc:
            raise _refuse(
                "the OVF descriptor %r is not well-formed XML: %s (line %d)"
                % (descriptor.name, expat.ErrorString(exc.code), exc.lineno)
            ) from None
        return parsed


class _Descriptor:
    """What the OVF processing takes from the descriptor, gathered by expat's callbacks."""

    def __init__(self, cim_pasd: frozenset[str], max_value_length: int) -> None:
        self._cim_pasd = cim_pasd
        self._max_value_length = max_value_length
        self._stack: list[str] = []  # local names of the open elements
        self._text: list[str] | None = None  # the text of a wanted element being read
        self._text_length = 0
        self.properties: dict[str, str] = {}
        self.disk_refs: list[str | None] = []  # each Disk's fileRef, across DiskSections
        self.files: dict[str, dict[str, str]] = {}  # References' File elements by ovf:id

    def refuse_dtd(self, name: str, *_: object) -> None:
        raise _refuse("the OVF descriptor has a document type declaration (<!DOCTYPE %s>); DTDs are refused" % name)

    def refuse_entity(self, name: str, *_: object) -> None:
        raise _refuse("the OVF descriptor declares an entity (%s); entities are refused" % name)

    def refuse_external(self, *_: object) -> int:
        raise _refuse("the OVF descriptor references an external entity; entities are refused")

    def start(self, name: str, attributes: dict[str, str]) -> None:
        ns, _, local = name.rpartition(_SEP)
        parent = self._stack[-1] if self._stack else ""
        self._stack.append(local)
        if len(self._stack) > _MAX_DEPTH:
            raise _refuse("the OVF descriptor nests elements more than %d deep" % _MAX_DEPTH)
        wanted = ns == CIM_PASD_NS and local in self._cim_pasd
        self._text, self._text_length = ([] if wanted else None), 0
        if parent == "DiskSection" and local == "Disk":
            self.disk_refs.append(_local(attributes).get("fileRef"))
        elif parent == "References" and local == "File":
            attrs = _local(attributes)
            file_id = attrs.get("id")
            if file_id is not None:
                if file_id in self.files:
                    raise _refuse("the OVF descriptor's References list the File id %r twice" % file_id)
                self.files[file_id] = attrs

    def end(self, name: str) -> None:
        local = self._stack.pop()
        if self._text is not None:  # a wanted element with no child element: the last one wins
            self.properties[PROPERTY_PREFIX + local] = "".join(self._text).strip()
        self._text = None

    def text(self, data: str) -> None:
        if self._text is None:
            return
        self._text_length += len(data)
        if self._text_length > self._max_value_length:
            raise _refuse(
                "the OVF descriptor's %s value is longer than %d characters" % (self._stack[-1], self._max_value_length)
            )
        self._text.append(data)


def _local(attributes: dict[str, str]) -> dict[str, str]:
    """Attributes by local name (ovf:fileRef and fileRef alike), as Glance matches them."""
    return {key.rpartition(_SEP)[2]: value for key, value in attributes.items()}


def _disk_member(parsed: _Descriptor, members: list[Member], descriptor: Member) -> Member:
    """The tar member the descriptor's one Disk refers to."""
    if not parsed.disk_refs:
        raise _refuse("the OVF descriptor %r has no DiskSection with a Disk (the disk to import)" % descriptor.name)
    if len(parsed.disk_refs) > 1:
        raise _refuse(
            "the OVF descriptor lists %d disks; OVA packages containing multiple disks are not supported"
            % len(parsed.disk_refs)
        )
    ref = parsed.disk_refs[0]
    if not ref:
        raise _refuse("the OVF descriptor's Disk has no ovf:fileRef")
    file = parsed.files.get(ref)
    if file is None:
        raise _refuse("the Disk's fileRef %r names no File in the OVF descriptor's References" % ref)
    href = file.get("href")
    if not href:
        raise _refuse("the OVF descriptor's File %r has no ovf:href" % ref)
    if file.get("compression", "identity") not in ("", "identity"):
        raise _refuse(
            "the disk file %r is compressed (%s); only uncompressed disk files are supported"
            % (href, file["compression"])
        )
    if "chunkSize" in file:
        raise _refuse("the disk file %r is split in chunks (ovf:chunkSize); only whole disk files are supported" % href)
    if "://" in href:
        raise _refuse("the disk file %r is outside the OVA; only a disk inside it can be imported" % href)
    while href.startswith("./"):
        href = href[2:]
    disk = next((m for m in members if m.name == href), None)
    if disk is None or disk is descriptor:
        raise _refuse("the tar archive holds no disk file %r (the file the OVF descriptor names)" % href)
    if disk.size == 0:
        raise _refuse("the disk file %r is empty" % href)
    return disk


def _copy_range(src: BinaryIO, dst: BinaryIO, member: Member, stop: threading.Event) -> None:
    src.seek(member.offset)
    left = member.size
    while left:
        if stop.is_set():
            raise _Stopped
        chunk = src.read(min(left, _CHUNK))
        if not chunk:
            raise _refuse("the tar archive is truncated (member %r)" % member.name)
        dst.write(chunk)
        left -= len(chunk)
