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
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import BinaryIO

_ID = re.compile(r"[0-9a-f]{32}")
READ_CHUNK = 1024 * 1024
_WRITE_BUFFER = 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileWriter:
    def __init__(self, store: FileBlobStore) -> None:
        self._store = store
        self._tmp = store.tmp / secrets.token_hex(16)
        self._file: BinaryIO | None = None
        self._buffer = bytearray()
        self._size = 0
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    async def write(self, data: bytes) -> None:
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._size += len(data)
        self._buffer += data
        if len(self._buffer) >= _WRITE_BUFFER:
            await self._flush()

    async def _flush(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        await asyncio.to_thread(self._write_sync, data)

    def _write_sync(self, data: bytes) -> None:
        if self._file is None:
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        self._file.write(data)

    async def commit(self) -> str:
        if self._done:
            raise RuntimeError("blob writer already finished")
        await self._flush()
        blob_id = secrets.token_hex(16)
        try:
            await asyncio.to_thread(self._commit_sync, blob_id)
        except BaseException:
            await self.abort()
            raise
        self._done = True
        return blob_id

    def _commit_sync(self, blob_id: str) -> None:
        if self._file is None:
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
        self._buffer = bytearray()
        if self._file is not None:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


class _FileReader:
    """A `BlobReader` over an open file."""

    def __init__(self, file: BinaryIO, length: int | None) -> None:
        self._file = file
        self._length = length

    async def __aiter__(self) -> AsyncIterator[bytes]:
        remaining = self._length
        while remaining is None or remaining > 0:
            size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
            chunk = await asyncio.to_thread(self._file.read, size)
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk

    async def close(self) -> None:
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
        try:
            file = await asyncio.to_thread(open, self.path(blob_id), "rb")
        except FileNotFoundError:
            return None
        if start:
            file.seek(start)
        return _FileReader(file, length)

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

    async def close(self) -> None:
        return None
