"""The filesystem store on a real filesystem: digests, atomic commit, sparse files, limits."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from appliance.errors import StoreReadOnly, TooLarge
from appliance.stores.filesystem import PARTIAL_DIR, FilesystemStore

MiB = 1 << 20


async def feed(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def pieces_of(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    out, pos = [], 0
    sizes = list(sizes)
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


def make_store(tmp_path: Path, name: str = "local", thin: bool = False) -> FilesystemStore:
    store = FilesystemStore(name, tmp_path / name, thin_provisioning=thin, description="d")
    store.prepare()
    return store


def partial_files(store: FilesystemStore) -> list[str]:
    return sorted(p.name for p in (store.path / PARTIAL_DIR).iterdir())


async def test_write_computes_md5_and_sha512(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    data = os.urandom(5 * MiB + 12345)
    progress: list[int] = []
    digest = await store.write(
        "img", feed(pieces_of(data, [1, 4096, 777777, 65536, 3 * MiB])), max_size=1 << 30, on_progress=progress.append
    )
    assert digest.size == len(data)
    assert digest.checksum == hashlib.md5(data).hexdigest()
    assert digest.os_hash_value == hashlib.sha512(data).hexdigest()
    assert digest.os_hash_algo == "sha512"
    assert (store.path / "img").read_bytes() == data
    assert store.data_path("img") == store.path / "img"
    assert store.image_files() == {"img"}
    assert partial_files(store) == []
    assert progress and progress[-1] == len(data)
    assert progress == sorted(progress)
    assert store.location_url("img") == "file://%s" % (store.path.absolute() / "img")


async def test_empty_write(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    digest = await store.write("empty", feed([]), max_size=10)
    assert digest.size == 0
    assert digest.checksum == hashlib.md5(b"").hexdigest()
    assert digest.os_hash_value == hashlib.sha512(b"").hexdigest()
    assert (store.path / "empty").read_bytes() == b""


SOURCE_ERRORS = [
    RuntimeError("decoder broke"),
    ConnectionResetError("client went away"),
    TimeoutError("upstream stalled"),
]


def broken_source(store: FilesystemStore, exc: BaseException) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield os.urandom(MiB)
        assert partial_files(store)  # a partial file exists while the write runs
        raise exc

    return gen()


@pytest.mark.parametrize("exc", SOURCE_ERRORS, ids=lambda e: type(e).__name__)
async def test_source_raising_midstream_leaves_nothing(tmp_path: Path, exc: BaseException) -> None:
    store = make_store(tmp_path)
    with pytest.raises(type(exc)):
        await store.write("img", broken_source(store, exc), max_size=1 << 30)
    assert not (store.path / "img").exists()
    assert store.data_path("img") is None
    assert store.image_files() == set()
    assert partial_files(store) == []


@pytest.mark.parametrize("exc", SOURCE_ERRORS, ids=lambda e: type(e).__name__)
async def test_source_errors_propagate_unchanged(tmp_path: Path, exc: BaseException) -> None:
    """A failing source (a client that disconnects, an upstream that stalls) is not a store
    failure: its exception reaches the caller as raised, not as a StorageError of this store."""
    store = make_store(tmp_path)
    with pytest.raises(type(exc)) as info:
        await store.write("img", broken_source(store, exc), max_size=1 << 30)
    assert info.value is exc


async def test_failed_write_keeps_an_existing_copy(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await store.write("img", feed([b"old data"]), max_size=100)

    async def broken() -> AsyncIterator[bytes]:
        yield b"new"
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await store.write("img", broken(), max_size=100)
    assert (store.path / "img").read_bytes() == b"old data"
    assert partial_files(store) == []


async def test_max_size_is_too_large(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(TooLarge, match="1048576"):
        await store.write("img", feed([os.urandom(64 << 10)] * 17), max_size=MiB)
    assert store.image_files() == set()
    assert partial_files(store) == []
    # exactly max_size is accepted
    digest = await store.write("img", feed([bytes(64 << 10)] * 16), max_size=MiB)
    assert digest.size == MiB


def sparse_sample() -> bytes:
    head = os.urandom(MiB)
    middle = os.urandom(100)
    return head + bytes(32 * MiB) + middle + bytes(7 * MiB + 5) + os.urandom(3) + bytes(16 * MiB)


async def test_thin_provisioning_makes_sparse_identical_files(tmp_path: Path) -> None:
    data = sparse_sample()
    thin = make_store(tmp_path, "thin", thin=True)
    digest = await thin.write("img", feed(pieces_of(data, [MiB, 333333, 4 * MiB])), max_size=1 << 30)
    path = thin.path / "img"
    st = path.stat()
    assert st.st_size == len(data)
    assert st.st_blocks * 512 < len(data) // 8  # ~1 MiB of 56 MiB allocated
    assert hashlib.sha512(path.read_bytes()).hexdigest() == hashlib.sha512(data).hexdigest()
    assert digest.os_hash_value == hashlib.sha512(data).hexdigest()
    assert digest.checksum == hashlib.md5(data).hexdigest()
    assert partial_files(thin) == []

    # Without thin provisioning the same bytes are all allocated: the flag makes the difference.
    thick = make_store(tmp_path, "thick")
    await thick.write("img", feed([data]), max_size=1 << 30)
    assert (thick.path / "img").stat().st_blocks * 512 >= len(data) // 2
    assert (thick.path / "img").read_bytes() == data


async def test_thin_provisioning_all_zero_image(tmp_path: Path) -> None:
    thin = make_store(tmp_path, "thin", thin=True)
    await thin.write("zeros", feed([bytes(MiB)] * 20), max_size=1 << 30)
    st = (thin.path / "zeros").stat()
    assert st.st_size == 20 * MiB
    assert st.st_blocks * 512 < MiB
    assert (thin.path / "zeros").read_bytes() == bytes(20 * MiB)


async def test_read_only_store(tmp_path: Path) -> None:
    store = FilesystemStore("ro", Path("/proc/edge-appliance-test/images"))
    store.prepare()  # logs, does not raise
    usage = store.usage()
    assert usage.read_only is True
    assert "/proc/edge-appliance-test/images" in usage.reason
    assert store.read_only_reason() == usage.reason
    with pytest.raises(StoreReadOnly, match="read-only"):
        await store.write("img", feed([b"data"]), max_size=100)
    assert store.data_path("img") is None
    assert store.image_files() == set()
    assert await store.delete("img") is False


async def test_writable_store_usage(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    usage = store.usage()
    assert usage.read_only is False and usage.reason == ""
    assert usage.total_bytes > 0 and 0 < usage.free_bytes <= usage.total_bytes
    assert usage.used_bytes == 0
    await store.write("img", feed([os.urandom(MiB)]), max_size=1 << 30)
    assert store.usage().used_bytes >= MiB


async def test_delete_and_clean_partial(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    await store.write("img", feed([b"x"]), max_size=10)
    assert await store.delete("img") is True
    assert await store.delete("img") is False
    assert not (store.path / "img").exists()
    (store.path / PARTIAL_DIR / "img.1234abcd").write_bytes(b"left over")
    (store.path / PARTIAL_DIR / "other.5678").write_bytes(b"left over")
    assert store.image_files() == set()  # partial files are not images
    assert store.clean_partial() == 2
    assert partial_files(store) == []
    assert store.clean_partial() == 0
