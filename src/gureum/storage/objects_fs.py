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
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

from gureum.storage.base import Hash

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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter:
    """Collects chunks without copying them and hashes and writes each batch in a worker
    thread; one batch is written while the next is collected (writes stay in order). `commit`
    is one more thread job: the last batch, `check`, fsync, rename, directory fsync."""

    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        self._tmp = store.tmp / secrets.token_hex(16)
        self._file: BinaryIO | None = None
        self._hashes: tuple[Hash, ...] = ()
        self._pending: list[bytes] = []
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

    async def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._size += len(data)
        self._pending.append(data)
        self._pending_size += len(data)
        if self._pending_size >= self._batch_limit:
            self._batch_limit = min(2 * self._batch_limit, MAX_WRITE_BATCH)
            batch = self._take()
            await self._wait_writing()
            self._writing = asyncio.get_running_loop().run_in_executor(
                None, self._write_batch, batch
            )

    def _take(self) -> list[bytes]:
        batch, self._pending, self._pending_size = self._pending, [], 0
        return batch

    async def _wait_writing(self) -> None:
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    def _write_sync(self, batch: list[bytes]) -> BinaryIO:
        if self._file is None:
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        write, hashes = self._file.write, self._hashes
        for chunk in batch:
            for digest in hashes:
                digest.update(chunk)
            write(chunk)
        return self._file

    def _write_batch(self, batch: list[bytes]) -> None:
        file = self._write_sync(batch)
        if _START_WRITEBACK is not None:
            # the disk starts on this batch now, so commit's fsync has less left to wait for
            file.flush()
            _START_WRITEBACK(file.fileno())

    async def commit(self, check: Callable[[], None] | None = None) -> str:
        if self._done:
            raise RuntimeError("blob writer already finished")
        blob_id = secrets.token_hex(16)
        try:
            await self._wait_writing()
            await asyncio.to_thread(self._commit_sync, self._take(), blob_id, check)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return blob_id

    def _commit_sync(
        self, batch: list[bytes], blob_id: str, check: Callable[[], None] | None
    ) -> None:
        self._write_sync(batch)
        if check is not None:
            check()
        assert self._file is not None
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


class _FileReader:
    """A `BlobReader` over an open file: reads `READ_CHUNK`s in a worker thread, the next one
    while the caller sends the current one."""

    def __init__(self, file: BinaryIO, length: int, first: bytes) -> None:
        self._file = file
        self._remaining = length - len(first)
        self._first: bytes | None = first
        self._next: asyncio.Future[bytes] | None = None

    def _read(self) -> bytes:
        chunk = self._file.read(min(READ_CHUNK, self._remaining))
        self._remaining -= len(chunk)
        return chunk

    def __aiter__(self) -> _FileReader:
        return self

    async def __anext__(self) -> bytes:
        if self._first is not None:
            chunk, self._first = self._first, None
        elif self._next is not None:
            following, self._next = self._next, None
            chunk = await following
        else:
            chunk = b""
        if not chunk:
            raise StopAsyncIteration
        if self._remaining > 0:
            self._next = asyncio.get_running_loop().run_in_executor(None, self._read)
        return chunk

    async def close(self) -> None:
        following, self._next = self._next, None
        if following is not None:
            with contextlib.suppress(Exception):
                await following  # never close the file under a reading thread
        self._file.close()


class FileBlobStore:
    """Blobs as files under `root` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        # blobs being written when a previous process died are garbage now
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, blob_id: str) -> Path:
        if not _ID.fullmatch(blob_id):
            raise ValueError(f"not a blob id: {blob_id!r}")
        return self.blobs / blob_id[:2] / blob_id

    def writer(self) -> _FileWriter:
        return _FileWriter(self)

    async def open(
        self, blob_id: str, start: int = 0, length: int | None = None
    ) -> _FileReader | None:
        path = self.path(blob_id)

        def open_and_read() -> tuple[BinaryIO, int, bytes]:
            file = open(path, "rb")  # noqa: SIM115 - the reader closes it
            try:
                size = os.fstat(file.fileno()).st_size
                wanted = max(0, size - start) if length is None else length
                if start:
                    file.seek(start)
                return file, wanted, file.read(min(READ_CHUNK, wanted))
            except BaseException:
                file.close()
                raise

        try:
            file, wanted, first = await asyncio.to_thread(open_and_read)
        except FileNotFoundError:
            return None
        return _FileReader(file, wanted, first)

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
