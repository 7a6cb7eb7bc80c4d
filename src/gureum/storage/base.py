"""The blob store contract: where object bodies live (files here; an S3 store in a cluster).

A blob is an immutable byte string under an opaque id the store picks. Object metadata (key,
ETag, headers) lives in the metadata store and names its blob; keys never reach this layer, so
no key can influence where bytes are written.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

# Bytes of a blob: a reader may hand out bytearrays it filled itself (no copy into a bytes);
# nobody changes them after.
Chunk = bytes | bytearray


class Hash(Protocol):
    """What `BlobWriter.hash_with` feeds: hashlib's objects, a CRC32 wrapper."""

    def update(self, data: Chunk, /) -> None: ...


class BlobWriter(Protocol):
    """A blob being written. Call `write` any number of times, then exactly one of `commit`
    (durable, returns the new id) or `abort` (discards everything). `abort` after `commit`, or
    twice, is a no-op, so `finally: await writer.abort()` is always safe. Nothing written is
    visible to `open` before `commit` returns."""

    @property
    def size(self) -> int:
        """Bytes written so far."""
        ...

    def hash_with(self, hashes: Sequence[Hash]) -> None:
        """Feed every byte written from now on to `hashes` as well, in order, where the store
        passes over the bytes anyway (files: in the thread that writes them, so one pass over
        a batch both hashes and writes it). Call before the first `write`. The hashes are
        complete only when `commit` calls its `check`."""
        ...

    async def write(self, data: Chunk) -> None: ...

    async def commit(self, check: Callable[[], None] | None = None) -> str:
        """Make the blob durable and return its id. `check` runs first, once every byte is
        written and hashed (possibly in a worker thread); if it raises, nothing is committed,
        the blob is discarded as by `abort`, and the exception propagates."""
        ...

    async def abort(self) -> None: ...


class BlobReader(Protocol):
    """An opened blob: iterate for its bytes in chunks (once), then `close()` — always, also
    when not iterating at all. `close()` is idempotent."""

    def __aiter__(self) -> AsyncIterator[Chunk]: ...

    async def close(self) -> None: ...


class BlobStore(Protocol):
    """Stores immutable blobs. Every method is safe to call concurrently with every other."""

    def writer(self) -> BlobWriter:
        """Start a new blob."""
        ...

    async def open(
        self, blob_id: str, start: int = 0, length: int | None = None
    ) -> BlobReader | None:
        """A reader of the blob's bytes from `start`, `length` of them (None: to the end); None
        when there is no such blob. A blob deleted after `open` returned still reads whole."""
        ...

    async def copy(self, blob_id: str) -> str | None:
        """A new blob with the same bytes (deleting either leaves the other); None if absent."""
        ...

    async def concat(self, blob_ids: Sequence[str]) -> str:
        """A new blob holding the given blobs' bytes in order; FileNotFoundError if one is
        missing (nothing is left behind then)."""
        ...

    async def delete(self, blob_id: str) -> None:
        """Remove a blob; a no-op when it does not exist."""
        ...

    async def unchanged_since(self, before: float) -> list[str]:
        """Ids of the committed blobs not created, linked or written since `before` (epoch
        seconds), and discard unfinished writes idle since then. For the sweeper: a blob no
        metadata names and unchanged for long is an orphan a crash left behind."""
        ...

    async def close(self) -> None:
        """Release resources; idempotent."""
        ...
