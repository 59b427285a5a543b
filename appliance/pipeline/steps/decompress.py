"""image_decompression: unpack a single-member ZIP, GZIP or LHA archive (Glance's plugin).

The archive kind comes from magic bytes only, never from a name. Exactly one regular member is
accepted; its name is checked but never used on the filesystem. Output is streamed in bounded
chunks and counted as it is written, so a decompression bomb fails early and cleanly.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
import struct
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import lhafile
import lzhlib  # lhafile's decoder extension

from appliance.pipeline.base import ImportFailed, StagedImage, StepContext

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# Enough of the result to see every nested-archive magic (tar's "ustar" sits at 257-261).
_NESTED_HEAD = 262
_MULTI_LAYER = "multi-layer archives (e.g. tar.gz) are not supported"

_ZIP_MEMBER = b"PK\x03\x04"
_ZIP_EMPTY = b"PK\x05\x06"  # end of central directory at offset 0: an archive with no members
_GZIP = b"\x1f\x8b"
_BZIP2 = re.compile(rb"BZh[1-9](1AY&SY|\x17rE8P\x90)")
_XZ = b"\xfd7zXZ\x00"
_ZSTD = b"\x28\xb5\x2f\xfd"
_TAR_MAGIC = (257, b"ustar")

# zipfile bounds each deflate read; bzip2 and lzma members are decompressed a whole input
# chunk at a time (4 KiB of bzip2 can expand to gigabytes in memory), so they are refused.
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_ENCRYPTED = 0x1 | 0x40  # traditional and strong encryption flag bits
_ZIP_UNIX = 3
_DOS_DIRECTORY = 0x10
_LHA_DIRECTORY = b"-lhd-"


T = TypeVar("T")


class _Stopped(Exception):
    """The task awaiting the extraction was cancelled."""


class Decompress:
    name = "image_decompression"

    def __init__(self, max_output_bytes: int = 1 << 40, max_ratio: float = 1000.0) -> None:
        if max_output_bytes <= 0 or max_ratio <= 0:
            raise ValueError("max_output_bytes and max_ratio must be positive")
        self.max_output_bytes = max_output_bytes
        self.max_ratio = max_ratio

    async def run(self, staged: StagedImage, ctx: StepContext) -> StagedImage:
        stop = threading.Event()
        try:
            result = await asyncio.to_thread(self._extract, staged.path, ctx.work_dir, stop)
        except asyncio.CancelledError:
            stop.set()  # the thread notices at its next chunk and removes its partial output
            raise
        if result is None:
            return staged
        kind, path, size = result
        log.info("image %s: decompressed %s archive, %d -> %d bytes", ctx.image_id, kind, staged.size, size)
        ctx.report("decompressed %s archive (%d bytes)" % (kind, size))
        return staged.evolve(path=path, size=size)

    def _extract(self, source: Path, work_dir: Path, stop: threading.Event) -> tuple[str, Path, int] | None:
        with open(source, "rb") as src:
            kind = archive_kind(src.read(_NESTED_HEAD))
            if kind is None:
                return None
            archive_size = os.fstat(src.fileno()).st_size
            src.seek(0)
            fd, name = tempfile.mkstemp(prefix="decompressed-", dir=work_dir)
            out = Path(name)
            try:
                with open(fd, "wb") as f:
                    sink = OutputSink(f, self.max_output_bytes, self.max_ratio, archive_size, stop)
                    if kind == "zip":
                        self._unzip(src, sink)
                    elif kind == "gzip":
                        _gunzip(src, sink)
                    else:
                        self._unlha(src, sink)
                    sink.close()
            except BaseException:
                out.unlink(missing_ok=True)
                raise
        return kind, out, sink.written

    def _check_declared(self, kind: str, size: int, compressed: int) -> None:
        """Refuse a bomb from its header sizes before decompressing anything."""
        if size > self.max_output_bytes:
            raise ImportFailed(
                "%s member would decompress to %d bytes, over the limit of %d bytes"
                % (kind, size, self.max_output_bytes)
            )
        if size > self.max_ratio * max(compressed, 1):
            raise ImportFailed(
                "%s member would expand more than %g times (%d -> %d bytes); refusing a likely "
                "decompression bomb" % (kind, self.max_ratio, compressed, size)
            )

    def _unzip(self, src: BinaryIO, sink: OutputSink) -> None:
        with _zip_errors():
            archive = zipfile.ZipFile(src)
        with archive:
            infos = archive.infolist()
            info = _single(infos, [i.filename for i in infos], "ZIP")
            _check_zip_member(info)
            self._check_declared("ZIP", info.file_size, info.compress_size)
            with _zip_errors():
                member = archive.open(info)
            with member:
                while True:
                    with _zip_errors():
                        data = member.read(CHUNK)
                    if not data:
                        break
                    sink.write(data)
        if sink.written != info.file_size:
            raise ImportFailed("ZIP member holds %d bytes but its header says %d" % (sink.written, info.file_size))

    def _unlha(self, src: BinaryIO, sink: OutputSink) -> None:
        try:
            # lhafile is a pure-Python header parser that fails in many ways on bad input.
            infos = lhafile.LhaFile(src).infolist()
        except Exception as exc:
            raise ImportFailed(
                "LHA archive is corrupt or uses an unsupported method: %s" % (str(exc) or type(exc).__name__)
            ) from None
        info = _single(infos, [i.filename for i in infos], "LHA")
        if info.compress_type == _LHA_DIRECTORY:
            raise ImportFailed("LHA member is a directory or link, not a file")
        _check_member_name(info.filename, "LHA")
        # LhaFile.read() buffers the packed and the unpacked member in memory, so a big member
        # could exhaust it: refuse by the header's original size first, then drive lhafile's
        # own decoder session chunk by chunk into the counting sink instead.
        self._check_declared("LHA", info.file_size, info.compress_size)
        src.seek(info.file_offset)
        reader, writer = _LhaInput(src, info.compress_size), _LhaOutput(sink)
        session = lzhlib.LZHDecodeSession(reader, writer, info)
        try:
            while not session.do_next() and writer.error is None and reader.error is None:
                pass
        except RuntimeError as exc:
            raise ImportFailed("LHA member data is corrupt: %s" % exc) from None
        for error in (writer.error, reader.error):
            if error is not None:
                raise error
        if session.output_pos != info.file_size:
            raise ImportFailed(
                "LHA member holds %d bytes but its header says %d" % (session.output_pos, info.file_size)
            )
        if session.crc16 != info.CRC:
            raise ImportFailed("LHA member data is corrupt: CRC mismatch")


def archive_kind(head: bytes) -> str | None:
    """The archive kind the Decompress step unpacks, from the first bytes of the data."""
    if head.startswith(_ZIP_MEMBER) or head.startswith(_ZIP_EMPTY):
        return "zip"
    if head.startswith(_GZIP):
        return "gzip"
    # The method id ("-lh5-", "-lz4-", ...) sits at offset 2 of the first header.
    if len(head) >= 7 and head[2:4] == b"-l" and head[4:5] in (b"h", b"z") and head[6:7] == b"-":
        return "lha"
    return None


def nested_kind(head: bytes) -> str | None:
    """Any archive or compressed-stream format the decompressed result may itself be."""
    kind = archive_kind(head)
    if kind is not None:
        return kind
    if _BZIP2.match(head):
        return "bzip2"
    if head.startswith(_XZ):
        return "xz"
    if head.startswith(_ZSTD):
        return "zstd"
    offset, magic = _TAR_MAGIC
    if head[offset : offset + len(magic)] == magic:
        return "tar"
    return None


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class OutputSink:
    """Writes decompressed bytes to the output file, enforcing the limits before each write."""

    def __init__(self, f: Writable, max_bytes: int, max_ratio: float, archive_size: int, stop: threading.Event) -> None:
        self._f = f
        self._max_bytes = max_bytes
        self._max_ratio = max_ratio
        self._ratio_limit = max_ratio * max(archive_size, 1)
        self._stop = stop
        self._head = bytearray()
        self.written = 0

    def archive_grew(self, archive_size: int) -> None:
        """The archive is a download still arriving: the ratio is taken against what came so far."""
        self._ratio_limit = max(self._ratio_limit, self._max_ratio * archive_size)

    def write(self, data: bytes) -> None:
        if self._stop.is_set():
            raise _Stopped
        total = self.written + len(data)
        if total > self._max_bytes:
            raise ImportFailed("decompressed data exceeds the limit of %d bytes" % self._max_bytes)
        if total > self._ratio_limit:
            raise ImportFailed(
                "decompressed data expands more than %g times its archive; refusing a likely decompression bomb"
                % self._max_ratio
            )
        if len(self._head) < _NESTED_HEAD:
            self._head += data[: _NESTED_HEAD - len(self._head)]
            if len(self._head) == _NESTED_HEAD:
                self._check_nested()
        self._f.write(data)
        self.written = total

    def close(self) -> None:
        if not self.written:
            raise ImportFailed("decompressed image data is empty")
        if len(self._head) < _NESTED_HEAD:
            self._check_nested()

    def _check_nested(self) -> None:
        kind = nested_kind(bytes(self._head))
        if kind is not None:
            raise ImportFailed("decompressed data is itself a %s archive: %s" % (kind, _MULTI_LAYER))


def _single(members: Sequence[T], names: Sequence[str], kind: str) -> T:
    if not members:
        raise ImportFailed("%s archive has no members" % kind)
    if len(set(names)) != len(names):
        raise ImportFailed("%s archive has duplicate member names" % kind)
    if len(members) > 1:
        raise ImportFailed("%s archive has %d members; exactly one is supported" % (kind, len(members)))
    return members[0]


@contextmanager
def _zip_errors() -> Iterator[None]:
    """zipfile's many ways of failing on a bad archive (kept away from the sink's own errors)."""
    try:
        yield
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        OSError,
        zlib.error,
        struct.error,
        ValueError,
        OverflowError,
        NotImplementedError,
    ) as exc:
        raise ImportFailed("ZIP archive is corrupt or truncated: %s" % (str(exc) or type(exc).__name__)) from None


def _check_member_name(name: str, kind: str) -> None:
    parts = re.split(r"[/\\]", name)
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise ImportFailed("%s member name is an absolute path" % kind)
    if ".." in parts:
        raise ImportFailed("%s member name contains '..'" % kind)
    if not name or name.endswith(("/", "\\")):
        raise ImportFailed("%s member is a directory, not a file" % kind)


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    if info.flag_bits & _ZIP_ENCRYPTED:
        raise ImportFailed("ZIP member is encrypted")
    _check_member_name(info.filename, "ZIP")
    mode = info.external_attr >> 16 if info.create_system == _ZIP_UNIX else 0
    if stat.S_ISLNK(mode):
        raise ImportFailed("ZIP member is a symbolic link, not a file")
    if stat.S_ISDIR(mode) or info.external_attr & _DOS_DIRECTORY:
        raise ImportFailed("ZIP member is a directory, not a file")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):
        raise ImportFailed("ZIP member is not a regular file")
    if info.compress_type not in _ZIP_METHODS:
        raise ImportFailed(
            "ZIP member uses compression method %d; only stored and deflate are supported" % info.compress_type
        )


def _gunzip(src: BinaryIO, sink: OutputSink) -> None:
    stream = GunzipStream(sink)
    while data := src.read(CHUNK):
        stream.feed(data)
    stream.finish()


class GunzipStream:
    """Incremental decoding of exactly one GZIP member into a OutputSink: `feed` the compressed
    bytes as they come (from a file, or from a download as it arrives), then `finish`."""

    def __init__(self, sink: OutputSink) -> None:
        # zlib rather than the gzip module: gzip silently joins members and skips zero padding,
        # and one layer of exactly one member is all that is accepted.
        self._inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._sink = sink
        self._after = b""  # the first bytes after the end of the stream

    def feed(self, data: bytes) -> None:
        inflater = self._inflater
        try:
            while data and not inflater.eof:
                out = inflater.decompress(data, CHUNK)  # bounded output per call
                data = inflater.unconsumed_tail
                if out:
                    self._sink.write(out)
        except zlib.error as exc:
            # zlib checks the CRC-32 and the length in the trailer.
            raise ImportFailed("GZIP stream is corrupt: %s" % exc) from None
        if inflater.eof:
            self._trailing((inflater.unused_data if not self._after else b"") + data, final=False)

    def finish(self) -> None:
        inflater = self._inflater
        try:
            while not inflater.eof:  # output zlib still holds from input already fed
                out = inflater.decompress(b"", CHUNK)
                if not out:
                    raise ImportFailed("GZIP stream is truncated")
                self._sink.write(out)
        except zlib.error as exc:
            raise ImportFailed("GZIP stream is corrupt: %s" % exc) from None
        self._trailing(inflater.unused_data if not self._after else b"", final=True)

    def _trailing(self, data: bytes, final: bool) -> None:
        self._after = (self._after + data)[:2]
        if len(self._after) < 2 and not final:
            return  # not yet enough to tell a second member from other trailing bytes
        if self._after.startswith(_GZIP):
            raise ImportFailed("GZIP file has more than one member; only a single stream is supported")
        if self._after:
            raise ImportFailed("GZIP file has trailing data after the compressed stream")


class _LhaInput:
    """The packed member for lzhlib's decoder; errors are kept, never raised (see _LhaOutput)."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self._f = f
        self._left = size
        self.error: Exception | None = None

    def read(self, n: int) -> bytes:
        if self.error is not None or self._left <= 0:
            return b""
        try:
            data = self._f.read(min(n, self._left))
        except Exception as exc:
            self.error = exc
            return b""
        self._left -= len(data)
        return data


class _LhaOutput:
    """Where lzhlib's decoder writes. An exception raised from this callback crashes the
    interpreter (seen with lhafile 0.3.1), so errors are kept and re-raised after the session."""

    def __init__(self, sink: OutputSink) -> None:
        self._sink = sink
        self.error: Exception | None = None

    def write(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            self._sink.write(data)
        except Exception as exc:
            self.error = exc
