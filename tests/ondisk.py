"""Changes tests make to files behind a component's back: a failing disk, a copy still being
written. Plain blocking calls: async tests run them with asyncio.to_thread."""

from __future__ import annotations

from pathlib import Path


def flip_bit(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset`, as a failing disk would."""
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
