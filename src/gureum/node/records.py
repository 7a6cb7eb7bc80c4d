"""Invocation records and logs: written in batches off the request path, queried for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import sqlite3
import time
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.node.record_writer import RecordWriter, statements
from gureum.store import Database
from gureum.store.database import sqlite_statement
from gureum.store.schema import invocations

log = logging.getLogger(__name__)
MAX_STORED_LOG = 256 * 1024  # per invocation; the tail is kept
FLUSH_INTERVAL_S = 0.05
FLUSH_BATCH = 500
# Records per INSERT statement on SQLite at most (x18 columns: within its limit of 32,766
# parameters per statement), and before SQLite 3.32 (999 parameters).
MAX_ROWS_PER_INSERT = 512
MAX_ROWS_PER_INSERT_OLD_SQLITE = 32


def new_request_id() -> str:
    """A fresh request id: a UUID of version 7 (RFC 9562), 48 bits of Unix time in ms, then
    74 random bits. Ids made close in time sort close together, so the records' unique index
    on them grows at its end instead of dirtying a random page per record (random UUIDs made
    a batch of records rewrite one index page each). The random bits are unique, not secret:
    they come from `random` (seeded from the OS, reseeded in a forked child), which spares
    every request a getrandom system call."""
    random_bits = random.getrandbits(74)
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (random_bits >> 62) << 64
        | 0b10 << 62
        | random_bits & ((1 << 62) - 1)
    )
    digits = f"{value:032x}"
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def _max_rows() -> int:
    """Records per INSERT on this SQLite (only SQLite's records are written as multi-row
    INSERTs)."""
    if sqlite3.sqlite_version_info < (3, 32, 0):
        return MAX_ROWS_PER_INSERT_OLD_SQLITE
    return MAX_ROWS_PER_INSERT


@functools.lru_cache(maxsize=4)
def _one_row_insert(or_ignore: bool) -> str:
    """The INSERT of one record, as SQLite text with qmark parameters in record order; with
    `or_ignore`, a row whose request id is stored already is skipped (see record_writer)."""
    statement = invocations.insert()
    if or_ignore:
        statement = statement.prefix_with("OR IGNORE", dialect="sqlite")
    text, names = sqlite_statement(statement, InvocationRecord._fields)
    assert names == InvocationRecord._fields, names
    return text


class InvocationLog:
    """One invocation's log as AWS prints it (START, the function's output, END, REPORT).

    Holds the pieces only: the text is composed the first time `text` is read (for a Tail, or
    when the record is written), since most invocations' logs are never looked at on the
    request path.
    """

    __slots__ = (
        "_text",
        "billed_ms",
        "cold",
        "init_log",
        "init_ms",
        "max_memory_mb",
        "memory_mb",
        "output",
        "request_id",
        "run_ms",
        "version",
    )

    def __init__(
        self,
        request_id: str,
        version: str,
        init_log: bytes,
        output: bytes,
        *,
        run_ms: float,
        billed_ms: int,
        memory_mb: int,
        max_memory_mb: int,
        init_ms: float,
        cold: bool,
    ) -> None:
        self.request_id = request_id
        self.version = version
        self.init_log = init_log
        self.output = output
        self.run_ms = run_ms
        self.billed_ms = billed_ms
        self.memory_mb = memory_mb
        self.max_memory_mb = max_memory_mb
        self.init_ms = init_ms
        self.cold = cold
        self._text: str | None = None

    @property
    def text(self) -> str:
        """The whole log text; composed once, then cached."""
        if self._text is None:
            self._text = self._compose()
        return self._text

    def _compose(self) -> str:
        request_id = self.request_id
        report = (
            f"REPORT RequestId: {request_id}\tDuration: {self.run_ms:.2f} ms\t"
            f"Billed Duration: {self.billed_ms} ms\tMemory Size: {self.memory_mb} MB\t"
            f"Max Memory Used: {self.max_memory_mb} MB\t"
        )
        if self.cold:
            report += f"Init Duration: {self.init_ms:.2f} ms\t"
        raw = self.init_log + self.output if self.init_log else self.output
        body = raw.decode(errors="replace")
        if body and not body.endswith("\n"):
            body += "\n"
        return (
            f"START RequestId: {request_id} Version: {self.version}\n{body}"
            f"END RequestId: {request_id}\n{report}\n"
        )

    def __str__(self) -> str:
        return self.text


class InvocationRecord(NamedTuple):
    """Everything metering and `gureum invocations` need about one invocation.

    A tuple in the order of the `invocations` columns it fills, so that writing a batch is one
    plain executemany with no per-row conversion.
    """

    request_id: str
    account_id: str
    function_name: str
    version: str
    trigger: str  # "sync" | "event"
    started_at: float  # epoch seconds, when the request was admitted
    ended_at: float
    queue_ms: float
    init_ms: float
    run_ms: float
    billed_ms: int
    memory_mb: int
    max_memory_mb: int
    gb_seconds: float
    cold: bool
    status: str  # "success" | "error" | "timeout" | "crash" | "init_error"
    error_type: str | None
    log: InvocationLog

    @staticmethod
    def billed(run_ms: float, init_ms: float) -> int:
        """Billed duration: run plus init (on a cold start), rounded up to 1 ms."""
        return max(1, math.ceil(run_ms + init_ms))

    def to_public(self) -> dict[str, Any]:
        data = self._asdict()
        data.pop("log")
        return data

    def row(self) -> tuple[Any, ...]:
        """The values to insert, in `InvocationRecord._fields` order, log tail included."""
        return (*self[:-1], self.log.text[-MAX_STORED_LOG:])


class InvocationRecorder:
    """Buffers records and writes them in one transaction per batch (on SQLite in a file, from
    a process of its own: `gureum.node.record_writer`).

    A record added is written within about FLUSH_INTERVAL_S (sooner once FLUSH_BATCH are
    pending). `flush()` writes everything pending now; `query()` flushes first, so it sees every
    record added before it was called. `close()` stops the background writer and flushes; it is
    safe to call twice.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._buffer: list[InvocationRecord] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        path = db.engine.url.database if db.dialect == "sqlite" else None
        # SQLite in a file: a process of its own writes the records (record_writer)
        self._writer = (
            RecordWriter(path, _one_row_insert(True), _max_rows())
            if path and path != ":memory:"
            else None
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, record: InvocationRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= FLUSH_BATCH:
            self._wakeup.set()

    async def flush(self) -> None:
        """Write every record added so far. Flushes are serialised, so a caller never returns
        while an earlier batch (taken by the background writer) is still being committed."""
        async with self._flush_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            try:
                await self._write([record.row() for record in batch])
            except Exception:
                log.exception("could not write %d invocation records; retrying", len(batch))
                self._buffer[:0] = batch
                raise

    async def _write(self, rows: list[tuple[Any, ...]]) -> None:
        if self.db.dialect != "sqlite":  # asyncpg's executemany pipelines the rows
            values = [dict(zip(InvocationRecord._fields, row, strict=True)) for row in rows]

            async def insert_all(conn: AsyncConnection) -> None:
                await conn.execute(invocations.insert(), values)

            await self.db.write(insert_all)
            return
        if self._writer is not None:
            await self._writer.write(rows)
            return
        # an in-memory database is the engine's connection's own: only it can write there
        pieces = statements(_one_row_insert(False), _max_rows(), rows)

        async def insert(conn: AsyncConnection) -> None:
            for sql, params in pieces:
                await conn.exec_driver_sql(sql, params)

        await self.db.write(insert)

    async def _run(self) -> None:
        if self._writer is not None:
            try:
                await self._writer.start()  # not on the first batch's time
            except OSError:
                log.exception("could not start the record writer; the first batch will retry")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), FLUSH_INTERVAL_S)
            self._wakeup.clear()
            try:
                await self.flush()
            except Exception:
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        try:
            await self.flush()
        finally:
            if self._writer is not None:
                await self._writer.close()

    async def query(
        self,
        account: str,
        function_name: str | None = None,
        *,
        request_id: str | None = None,
        after_seq: int = 0,
        limit: int = 50,
        newest_first: bool = True,
        with_log: bool = False,
    ) -> list[dict[str, Any]]:
        """Stored records (flushing pending ones first), each with its `seq` cursor."""
        await self.flush()
        columns = [c for c in invocations.c if with_log or c.name != "log"]
        query = sa.select(*columns).where(invocations.c.account_id == account)
        if function_name is not None:
            query = query.where(invocations.c.function_name == function_name)
        if request_id is not None:
            query = query.where(invocations.c.request_id == request_id)
        if after_seq:
            query = query.where(invocations.c.seq > after_seq)
        order = invocations.c.seq.desc() if newest_first else invocations.c.seq
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(order).limit(limit))).mappings().all()
        return [dict(r) for r in rows]
