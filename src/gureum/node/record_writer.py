"""Invocation records on SQLite are written by a process of their own.

    python -I .../gureum/node/record_writer.py DB_PATH INSERT MAX_ROWS   (`RecordWriter` runs it)

Why a process: a thread inserting records beside the gateway's event loop competes with it for
the GIL. With the writes moved here, the gateway process (all its threads) spent 91-97 instead
of 105-122 us of CPU per request on bench/gateway.py's route at 32 connections, and served
9,200-10,200 instead of 8,300-9,900 req/s (six 5 s runs each, alternating, on one machine);
this process adds about 10 us per record on the other core.

The protocol, over the child's stdin and stdout. The parent sends a frame per batch: `>I`
length, then a msgpack array of rows, each an array of the record's column values in the order
of INSERT (the one-row statement, `?` placeholders). The child writes each batch in one
transaction (multi-row statements of at most MAX_ROWS rows, `synchronous=FULL`: on disk when
answered) and answers each batch, in order, with one line: `ok`, or `error <message>`. The
statement skips a row whose request id is already stored (INSERT OR IGNORE): a batch sent
again, because its child died before answering, is written once. The child exits at end of
input; it ignores SIGINT, so a Ctrl-C in a terminal leaves the parent to close it in order.

Standard library and msgspec only, so that it starts in some 80 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import sqlite3
import struct
import sys
from typing import Any, BinaryIO

import msgspec

FRAME = struct.Struct(">I")
# gureum.store.database.SQLITE_PRAGMAS (importing it would import SQLAlchemy here)
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)
CLOSE_WAIT_S = 10.0


class RecordWriterError(Exception):
    """A batch was not written: the child said why, or it died before answering."""


def chunks(count: int, most: int) -> list[tuple[int, int]]:
    """(start, size) pieces of a batch of `count` records: `most` (a power of two) at a time,
    then powers of two, so that a few statements, each prepared once (sqlite3 keeps them by
    their text), write any batch."""
    pieces = []
    start = 0
    while count - start >= most:
        pieces.append((start, most))
        start += most
    size = most
    while start < count:
        size //= 2
        if count - start >= size:
            pieces.append((start, size))
            start += size
    return pieces


@functools.lru_cache(maxsize=32)
def repeat_values(one_row: str, rows: int) -> str:
    """The one-row INSERT `one_row` (`... VALUES (?, ...)`) as a statement of `rows` rows.

    One statement for many rows rather than an executemany: SQLite's driver releases and
    retakes the GIL for every row it steps (beside a busy event loop, 20,000 rows took 118 s as
    an executemany, 10,000 took 0.24 s as statements of 500 rows); and built from the one-row
    text, not compiled by SQLAlchemy as a many-row insert (0.43 s for 512 rows)."""
    head, values, group = one_row.partition(" VALUES ")
    return head + values + ", ".join([group] * rows)


def statements(one_row: str, most: int, rows: list[Any]) -> list[tuple[str, tuple[Any, ...]]]:
    """The statements, of at most `most` rows each, and their parameters that insert `rows`."""
    return [
        (repeat_values(one_row, size), tuple(v for row in rows[at : at + size] for v in row))
        for at, size in chunks(len(rows), most)
    ]


# ---- the child ------------------------------------------------------------------------------


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def serve(db_path: str, one_row: str, most: int, source: BinaryIO, answers: BinaryIO) -> None:
    """Write the batches read from `source` until its end, answering each on `answers`."""
    conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    decoder = msgspec.msgpack.Decoder()
    try:
        while (prefix := _read_exactly(source, FRAME.size)) is not None:
            body = _read_exactly(source, FRAME.unpack(prefix)[0])
            if body is None:
                return  # the parent went away mid-frame: nobody to answer
            try:
                rows = decoder.decode(body)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for sql, params in statements(one_row, most, rows):
                        conn.execute(sql, params)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, msgspec.DecodeError, TypeError, ValueError) as exc:
                message = " ".join(f"{type(exc).__name__}: {exc}".split())
                answers.write(b"error " + message.encode(errors="replace") + b"\n")
            else:
                answers.write(b"ok\n")
            answers.flush()
    finally:
        conn.close()


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SCHED_BATCH, as the instances: woken by a batch, it waits for the running task's slice
    # instead of cutting the gateway off mid-request (where refused, it runs as before)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    db_path, one_row, most = argv
    serve(db_path, one_row, int(most), sys.stdin.buffer, sys.stdout.buffer)


# ---- the parent -----------------------------------------------------------------------------


class RecordWriter:
    """The parent's end: starts the child on first use, and again after it died.

    `write()` returns once the batch is on disk and raises RecordWriterError when it is not;
    one batch at a time (the recorder's flush lock sees to that). A caller cancelled while its
    batch is out waits for the answer, and returns normally if it was written (as
    `gureum.store.Database.write` does). `close()` ends the child; it is safe to call twice,
    and a later `write()` starts a new child.
    """

    def __init__(self, db_path: str, one_row: str, most: int) -> None:
        self._args = (db_path, one_row, str(most))
        self._process: asyncio.subprocess.Process | None = None
        self._encoder = msgspec.msgpack.Encoder()

    async def start(self) -> None:
        """Start the child now rather than on the first `write()`."""
        await self._child()

    async def _child(self) -> asyncio.subprocess.Process:
        process = self._process
        if process is None or process.returncode is not None:
            # this file run as a script (-I: nothing from the environment or the working
            # directory): the gureum package's imports would cost the start ~160 ms
            process = self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                __file__,
                *self._args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
        return process

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        exchange = asyncio.ensure_future(self._exchange(self._encoder.encode(rows)))
        cancelled = False
        while not exchange.done():  # the child writes the batch or not regardless: learn which
            try:
                await asyncio.shield(exchange)
            except asyncio.CancelledError:
                cancelled = True
        error = exchange.exception()
        if error is not None:
            raise asyncio.CancelledError if cancelled else error
        # written: a cancelled caller goes on as if it had not been cancelled

    async def _exchange(self, body: bytes) -> None:
        process = await self._child()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(FRAME.pack(len(body)) + body)
            await process.stdin.drain()
            answer = await process.stdout.readline()
        except ConnectionError:  # it died: the pipe is broken
            answer = b""
        if not answer.endswith(b"\n"):  # it died: a new child takes the next batch
            await self._stop(process)
            raise RecordWriterError("the record writer exited before answering")
        if answer != b"ok\n":
            raise RecordWriterError(answer[len(b"error ") :].decode(errors="replace").strip())

    async def _stop(self, process: asyncio.subprocess.Process) -> None:
        if self._process is process:
            self._process = None
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), CLOSE_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()

    async def close(self) -> None:
        if self._process is not None:
            await self._stop(self._process)


if __name__ == "__main__":
    main(sys.argv[1:])
