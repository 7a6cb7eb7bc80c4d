"""`FileBlobStore`: blobs as files in the data dir (the embedded shape).

Layout under `root`: `blobs/<id[:2]>/<id>` for committed blobs and `tmp/` for blobs being
written. Ids are random hex, never derived from a key. A blob is written to `tmp/`, fsync'd,
renamed into `blobs/` and the directory fsync'd before `commit` returns, so a crash leaves
either nothing or a whole blob (an unreferenced one at worst, never a torn one). Copies are
hard links: blobs are immutable, so sharing an inode is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from gureum.storage.base import Chunk, Hash

_ID = re.compile(r"[0-9a-f]{32}")
READ_CHUNK = 1024 * 1024
# Bytes a writer collects before a worker thread hashes and writes them out (one pass, while
# the bytes are in the CPU's cache), as the event loop goes on receiving: small at first (even
# a 1 MiB body is mostly on disk before it ends), then doubling up to the largest batch (few
# thread hops; memory per upload stays bounded: one batch being written plus one collected).
FIRST_WRITE_BATCH = 256 * 1024
MAX_WRITE_BATCH = 4 * 1024 * 1024


def _sync_file_range() -> Callable[[int], None] | None:
    """Linux's sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): start writing a file's dirty
    pages to disk without waiting for them (not a durability step; commit still fsyncs).
    The os module has no binding for it; ctypes releases the GIL around the call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start_writeback(fd: int) -> None:
        call(fd, 0, 0, 2)  # SYNC_FILE_RANGE_WRITE; a failure only means no head start

    return start_writeback


_START_WRITEBACK = _sync_file_range()
# preadv's flag to read only what the page cache holds (Linux 4.14+); None elsewhere
_NOWAIT: int | None = getattr(os, "RWF_NOWAIT", None)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _hash_batch(digest: Hash, batch: list[Chunk]) -> None:
    for chunk in batch:
        digest.update(chunk)  # hashlib and zlib release the GIL for chunks this large


async def _all(jobs: list[asyncio.Future[None]]) -> None:
    """Wait for every job, then raise the first failure: a writer's file is never closed
    while a job still uses it."""
    await asyncio.wait(jobs)
    for job in jobs:
        job.result()


class _FileWriter:
    """Collects chunks without copying them and hands each batch to worker threads, one job
    per hash and one that writes it, so an upload's hashing and writing use separate cores
    while the event loop collects the next batch (a batch starts once the previous one is
    done: hashes and file see the bytes in order). `commit` runs a large last batch the same
    way, then one more thread job (with a small last batch in it): `check`, fsync, rename,
    directory fsync."""

    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        self._tmp = store.tmp / secrets.token_hex(16)
        self._file: BinaryIO | None = None
        self._hashes: tuple[Hash, ...] = ()
        self._pending: list[Chunk] = []
        self._pending_size = 0
        self._batch_limit = FIRST_WRITE_BATCH
        self._writing: asyncio.Future[None] | None = None
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def hash_with(self, hashes: Sequence[Hash]) -> None:
        self._hashes = tuple(hashes)

    async def write(self, data: Chunk) -> None:
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._batch_limit:
            self._batch_limit = min(2 * self._batch_limit, MAX_WRITE_BATCH)
            batch = self._take()
            await self._wait_writing()
            self._writing = asyncio.ensure_future(self._process(batch, start_writeback=True))

    def _take(self) -> list[Chunk]:
        batch, self._pending, self._pending_size = self._pending, [], 0
        return batch

    async def _wait_writing(self) -> None:
        # shielded: a cancelled caller leaves the batch's jobs running, and `abort` waits for
        # them before it closes the file
        if self._writing is not None:
            await asyncio.shield(self._writing)
            self._writing = None

    def _process(self, batch: list[Chunk], *, start_writeback: bool) -> Awaitable[None]:
        loop = asyncio.get_running_loop()
        jobs = [loop.run_in_executor(None, _hash_batch, digest, batch) for digest in self._hashes]
        if batch:
            jobs.append(loop.run_in_executor(None, self._write_batch, batch, start_writeback))
        return _all(jobs) if jobs else asyncio.sleep(0)

    def _write_batch(self, batch: list[Chunk], start_writeback: bool) -> None:
        if self._file is None:
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        write = self._file.write
        for chunk in batch:
            write(chunk)
        if start_writeback and _START_WRITEBACK is not None:
            # the disk starts on this batch now, so commit's fsync has less left to wait for
            self._file.flush()
            _START_WRITEBACK(self._file.fileno())

    async def commit(self, check: Callable[[], None] | None = None) -> str:
        if self._done:
            raise RuntimeError("blob writer already finished")
        blob_id = secrets.token_hex(16)
        try:
            await self._wait_writing()
            large = self._pending_size > FIRST_WRITE_BATCH
            last = self._take()
            if large:  # hashed and written on separate cores first
                self._writing = asyncio.ensure_future(self._process(last, start_writeback=False))
                await self._wait_writing()
                last = []
            await asyncio.to_thread(self._commit_sync, last, blob_id, check)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return blob_id

    def _commit_sync(
        self, last: list[Chunk], blob_id: str, check: Callable[[], None] | None
    ) -> None:
        if last:  # a small last batch: in this one thread job, not three
            for digest in self._hashes:
                _hash_batch(digest, last)
            self._write_batch(last, start_writeback=False)
        if check is not None:
            check()
        if self._file is None:  # an empty blob
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed right below
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        target = self._store.path(blob_id)
        target.parent.mkdir(exist_ok=True)
        os.rename(self._tmp, target)
        _fsync_dir(target.parent)

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._pending = []
        with contextlib.suppress(Exception):
            await self._wait_writing()  # never close the file under a writing thread
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._tmp.unlink)


def _read_cached(fd: int, offset: int, size: int) -> bytearray | None:
    """Up to `size` bytes at `offset` that the page cache holds, read without waiting for
    the disk (preadv with RWF_NOWAIT); None when the first of them is not cached, or where
    the kernel or file system cannot tell (then a worker thread reads them)."""
    if _NOWAIT is None:
        return None
    buffer = bytearray(size)
    try:
        got = os.preadv(fd, [buffer], offset, _NOWAIT)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
            return None
        raise
    if got == 0:
        return None  # not at the end (the caller knows the length): nothing cached
    if got < size:
        del buffer[got:]
    return buffer


def _read(fd: int, offset: int, size: int) -> bytes:
    return os.pread(fd, size, offset)


class _FileReader:
    """A `BlobReader` over an open file: each chunk of up to `READ_CHUNK` is read on the
    event loop when the page cache holds it (a cached MiB takes ~0.1 ms, less than the
    thread hop it saves), else in a worker thread, which never blocks the loop on the disk.
    A chunk is read when the caller asks for it, so a chunk the disk must provide is read
    while the server still sends the one before."""

    def __init__(self, fd: int, start: int, length: int) -> None:
        self._fd: int | None = fd
        self._offset = start
        self._remaining = length
        self._reading: asyncio.Future[bytes] | None = None

    def __aiter__(self) -> _FileReader:
        return self

    async def __anext__(self) -> Chunk:
        if self._fd is None or self._remaining <= 0:
            raise StopAsyncIteration
        size = min(READ_CHUNK, self._remaining)
        chunk: Chunk | None = _read_cached(self._fd, self._offset, size)
        if chunk is None:
            self._reading = asyncio.get_running_loop().run_in_executor(
                None, _read, self._fd, self._offset, size
            )
            # shielded: if the caller is cancelled, the read still ends before `close`
            # closes its fd
            chunk = await asyncio.shield(self._reading)
            self._reading = None
        if not chunk:  # shorter than its length: cannot happen to an immutable blob
            raise StopAsyncIteration
        self._offset += len(chunk)
        self._remaining -= len(chunk)
        return chunk

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        reading, self._reading = self._reading, None
        if fd is None:
            return
        if reading is None or reading.done():
            os.close(fd)
            return

        def close_after_read(read: asyncio.Future[bytes]) -> None:
            if not read.cancelled():
                read.exception()  # seen: a failed read of a reader closed early is no news
            os.close(fd)

        reading.add_done_callback(close_after_read)  # never close the fd under a thread


class FileBlobStore:
    """Blobs as files under `root` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self._blobs = str(self.blobs)
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        # blobs being written when a previous process died are garbage now
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, blob_id: str) -> Path:
        return Path(self._file(blob_id))

    def _file(self, blob_id: str) -> str:
        """`path` as a string, built without pathlib (on every GET)."""
        if not _ID.fullmatch(blob_id):
            raise ValueError(f"not a blob id: {blob_id!r}")
        return f"{self._blobs}/{blob_id[:2]}/{blob_id}"

    def writer(self) -> _FileWriter:
        return _FileWriter(self)

    async def open(
        self, blob_id: str, start: int = 0, length: int | None = None
    ) -> _FileReader | None:
        # opened on the event loop: a recently used blob's inode is cached (like nginx's
        # open without its thread pool); its bytes are read as `_FileReader` says
        try:
            fd = os.open(self._file(blob_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
        except BaseException:
            os.close(fd)
            raise
        wanted = max(0, size - start) if length is None else length
        return _FileReader(fd, start, wanted)

    async def copy(self, blob_id: str) -> str | None:
        new_id = secrets.token_hex(16)
        target = self.path(new_id)
        try:
            target.parent.mkdir(exist_ok=True)
            await asyncio.to_thread(os.link, self.path(blob_id), target)
        except FileNotFoundError:
            return None
        await asyncio.to_thread(_fsync_dir, target.parent)
        return new_id

    async def concat(self, blob_ids: Sequence[str]) -> str:
        writer = self.writer()
        try:
            for blob_id in blob_ids:
                reader = await self.open(blob_id)
                if reader is None:
                    raise FileNotFoundError(blob_id)
                try:
                    async for chunk in reader:
                        await writer.write(chunk)
                finally:
                    await reader.close()
            return await writer.commit()
        finally:
            await writer.abort()

    async def delete(self, blob_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.path(blob_id).unlink)

    async def unchanged_since(self, before: float) -> list[str]:
        return await asyncio.to_thread(self._unchanged_since, before)

    def _unchanged_since(self, before: float) -> list[str]:
        found = []
        for shard in os.scandir(self.blobs):
            if not shard.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(shard.path):
                # ctime: a hard-linked copy shares its source's mtime, not its ctime
                with contextlib.suppress(FileNotFoundError):
                    if _ID.fullmatch(entry.name) and entry.stat().st_ctime < before:
                        found.append(entry.name)
        for entry in os.scandir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < before:
                    os.unlink(entry.path)
        return found

    async def close(self) -> None:
        return None
