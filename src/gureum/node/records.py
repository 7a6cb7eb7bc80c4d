"""Invocation records and logs: written in batches off the request path, queried for the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa

from gureum.store import Database
from gureum.store.schema import invocations

log = logging.getLogger(__name__)
MAX_STORED_LOG = 256 * 1024  # per invocation; the tail is kept
FLUSH_INTERVAL_S = 0.05
FLUSH_BATCH = 500


@dataclass(frozen=True)
class InvocationRecord:
    """Everything metering and `gureum invocations` need about one invocation."""

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
    log: str

    @staticmethod
    def billed(run_ms: float, init_ms: float) -> int:
        """Billed duration: run plus init (on a cold start), rounded up to 1 ms."""
        return max(1, math.ceil(run_ms + init_ms))

    def to_public(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("log")
        return data


class InvocationRecorder:
    """Buffers records and writes them in one transaction per batch. `close()` flushes."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._buffer: list[InvocationRecord] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushed = asyncio.Condition()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def add(self, record: InvocationRecord) -> None:
        self._buffer.append(record)
        if len(self._buffer) >= FLUSH_BATCH:
            self._wakeup.set()

    async def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer, []
            rows = [asdict(r) | {"log": r.log[-MAX_STORED_LOG:]} for r in batch]
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(invocations.insert(), rows)
            except Exception:
                log.exception("could not write %d invocation records; retrying", len(rows))
                self._buffer[:0] = batch
                raise

    async def _run(self) -> None:
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
        await self.flush()

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
