"""The loop of every store's write: a stream of chunks, checked against the size cap, handed to
a DigestSink (which hashes and writes on its worker threads) in batches."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable

from appliance.digest import DigestSink
from appliance.errors import TooLarge

# Bytes handed to the worker threads at a time: large enough to amortise the hand-over (4 MiB
# took uploads from ~280 to ~320 MB/s on a 2-core VM, where the hashes leave no CPU to spare),
# small enough that PIPELINE_HIGH of them stay ~32 MiB per transfer.
BATCH_BYTES = 4 << 20


async def feed_batches(
    chunks: AsyncIterable[bytes],
    sink: DigestSink,
    *,
    max_size: int,
    io: Callable[[Awaitable[None]], Awaitable[None]],
    on_progress: Callable[[int], None] | None = None,
    before_batch: Callable[[int], None] | None = None,
) -> int:
    """Feed every chunk to `sink`; returns the byte count. `io` wraps each feed (turning the
    store's own errors into domain errors); errors raised by the source (client gone, upstream
    stalled) propagate unchanged. `before_batch(total)` runs before each batch (room checks)."""
    total = 0
    batch: list[bytes] = []
    batched = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > max_size:
            raise TooLarge("Image exceeds the maximum upload size of %d bytes" % max_size)
        batch.append(chunk)
        batched += len(chunk)
        if batched >= BATCH_BYTES:
            if before_batch is not None:
                before_batch(total)
            await io(sink.feed(batch))
            batch, batched = [], 0
            if on_progress is not None:
                on_progress(total)
    await io(sink.feed(batch))
    return total
