"""File helpers shared by whatever writes or reads image bytes on disk (stores, cache, imports,
bundles): one chunk reader, one durable rename."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

READ_CHUNK = 1 << 20


async def file_chunks(path: Path, size: int = READ_CHUNK) -> AsyncIterator[bytes]:
    """A file's bytes, read on worker threads so a slow disk never stalls the event loop."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk
    finally:
        await asyncio.to_thread(fh.close)


def replace_durably(src: Path, dest: Path) -> None:
    """Rename `src` over `dest`, then fsync the directory so the new name survives a power cut
    (the file's own bytes must already be on disk). Blocking: run it in a thread."""
    os.replace(src, dest)
    fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
