"""Durable `Event` invocations: committed to the metadata store before the 202, then run.

Each event is a row in `async_events`. Workers claim due events by taking a lease (state
`running`, `lease_until`); an event whose lease ran out — its worker or the whole process died
— is due again, so every accepted event runs at least once, also across restarts. Function
errors are retried with exponential backoff and jitter up to `max_attempts`; then the event is
`failed` (dead-lettered, kept for inspection). Throttling is retried without using an attempt.

Per function, `InvokeConfigs` set the retries (0-2), the maximum event age and the on-success
and on-failure destinations; the destination record is delivered before the event is settled,
so it too is delivered at least once. An idempotency key makes a repeated enqueue within the
window return the first request's id instead of running again. `redrive()` sends dead letters
through again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa

from gureum.errors import ResourceNotFound, TooManyRequests
from gureum.events.invoke_configs import InvokeConfigs
from gureum.node.dispatcher import Dispatcher, InvocationResult
from gureum.store import Database
from gureum.store.schema import async_events

log = logging.getLogger(__name__)
DEFAULT_MAX_ATTEMPTS = 3  # the first try plus AWS's default of 2 retries
MAX_EVENT_AGE_S = 6 * 3600.0
LEASE_GRACE_S = 60.0
# (event row, condition, result or None, attempts) -> None; raises when it could not deliver
DestinationSink = Callable[[dict[str, Any], str, InvocationResult | None, int], Awaitable[None]]


class AsyncInvoker:
    """Accepts events durably and runs them on the dispatcher with `workers` concurrent tasks."""

    def __init__(
        self,
        db: Database,
        dispatcher: Dispatcher,
        *,
        workers: int,
        retry_base_s: float,
        poll_s: float,
        idempotency_window_s: float = 24 * 3600.0,
    ) -> None:
        self.db = db
        self.configs = InvokeConfigs(db)
        self.idempotency_window_s = idempotency_window_s
        # set by the EventHub: delivers destination records (queues, functions, topics)
        self.destinations: DestinationSink | None = None
        self._idempotency_lock = asyncio.Lock()
        self.dispatcher = dispatcher
        self.workers = workers
        self.retry_base_s = retry_base_s
        self.poll_s = poll_s
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._claim_lock = asyncio.Lock()
        self._committer = GroupCommitter(db, async_events)

    async def start(self, *, sole_owner: bool) -> None:
        """Start the workers. `sole_owner`: no other process uses this store (the embedded
        shape), so events left running by a crashed predecessor are due again right away."""
        if sole_owner:
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    async_events.update()
                    .where(async_events.c.state == "running")
                    .values(state="pending", lease_until=None, not_before=time.time())
                )
            if result.rowcount:
                log.warning("redelivering %d interrupted async events", result.rowcount)
        self._committer.start()
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    def row(
        self,
        account: str,
        name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_age_s: float | None = None,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """A new pending event's row (for callers that insert it in their own transaction,
        such as the scheduler; call `wake()` after their commit)."""
        now = time.time()
        return {
            "request_id": str(uuid.uuid4()),
            "account_id": account,
            "function_name": name,
            "qualifier": qualifier or "",
            "payload": payload,
            "state": "pending",
            "attempts": 0,
            "max_attempts": max_attempts,
            "not_before": now,
            "created_at": now,
            "updated_at": now,
            "max_age_s": max_age_s,
            "idempotency_key": idempotency_key,
            "source": source,
        }

    def wake(self) -> None:
        self._wakeup.set()

    async def enqueue(
        self,
        account: str,
        name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> str:
        """Write the event durably and return its request id. Returns only once committed.
        With an `idempotency_key` seen for this function within the window, return the first
        event's request id and enqueue nothing."""
        config = await self.configs.lookup(account, name, qualifier)
        row = self.row(
            account,
            name,
            qualifier,
            payload,
            max_attempts=config.retries + 1,
            max_age_s=config.max_age_s,
            idempotency_key=idempotency_key,
            source=source,
        )
        if idempotency_key is None:
            await self._committer.insert(row)
        else:
            async with self._idempotency_lock, self.db.engine.begin() as conn:
                first = await conn.scalar(
                    sa.select(async_events.c.request_id)
                    .where(
                        async_events.c.account_id == account,
                        async_events.c.idempotency_key == idempotency_key,
                        async_events.c.function_name == name,
                        async_events.c.created_at >= time.time() - self.idempotency_window_s,
                    )
                    .limit(1)
                )
                if first is not None:
                    return str(first)
                await conn.execute(async_events.insert().values(**row))
        self._wakeup.set()
        return str(row["request_id"])

    async def redrive(self, account: str, request_id: str | None = None) -> int:
        """Send dead-lettered (failed) events — one, or all of the account's — through again."""
        now = time.time()
        query = async_events.update().where(
            async_events.c.account_id == account, async_events.c.state == "failed"
        )
        if request_id is not None:
            query = query.where(async_events.c.request_id == request_id)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                query.values(
                    state="pending", attempts=0, not_before=now, created_at=now, updated_at=now
                )
            )
        self._wakeup.set()
        return int(result.rowcount)

    async def _claim(self) -> dict[str, Any] | None:
        now = time.time()
        due = sa.or_(
            sa.and_(async_events.c.state == "pending", async_events.c.not_before <= now),
            sa.and_(async_events.c.state == "running", async_events.c.lease_until < now),
        )
        async with self._claim_lock, self.db.engine.begin() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(async_events).where(due).order_by(async_events.c.id).limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            # generous lease: the longest a function may run, plus a margin
            await conn.execute(
                async_events.update()
                .where(async_events.c.id == row["id"])
                .values(state="running", lease_until=now + 900 + LEASE_GRACE_S, updated_at=now)
            )
        return dict(row)

    async def _settle(self, event_id: int, **values: Any) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                async_events.update()
                .where(async_events.c.id == event_id)
                .values(updated_at=time.time(), lease_until=None, **values)
            )

    async def _work(self) -> None:
        while True:
            try:
                event = await self._claim()
            except Exception:
                log.exception("could not claim async events")
                await asyncio.sleep(1.0)
                continue
            if event is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_s)
                self._wakeup.clear()
                continue
            try:
                await self._run(event)
            except Exception:
                log.exception("async event %s failed to run; it will be retried", event["id"])

    async def _destination(
        self, event: dict[str, Any], condition: str, result: InvocationResult | None, attempts: int
    ) -> str | None:
        """Deliver the destination record, if any; an error text when that failed."""
        if self.destinations is None:
            return None
        try:
            await self.destinations(event, condition, result, attempts)
        except Exception as exc:
            log.warning("destination of async event %s failed: %s", event["request_id"], exc)
            return f"destination not delivered: {exc}"[:1000]
        return None

    async def _run(self, event: dict[str, Any]) -> None:
        max_age = event.get("max_age_s") or MAX_EVENT_AGE_S
        if time.time() - event["created_at"] > max_age:
            problem = await self._destination(event, "EventAgeExceeded", None, event["attempts"])
            await self._settle(
                event["id"], state="failed", last_error=problem or "maximum event age exceeded"
            )
            return
        first_run = event["attempts"] == 0 and event["last_error"] is None
        try:
            result = await self.dispatcher.invoke(
                event["account_id"],
                event["function_name"],
                event["qualifier"] or None,
                event["payload"],
                trigger="event",
                # the record keeps the event's id on its first run only; retries and
                # redriven runs (which have failed before) are recorded under new ids
                request_id=event["request_id"] if first_run else None,
            )
        except TooManyRequests:
            delay = self.retry_base_s * (0.5 + random.random())
            await self._settle(event["id"], state="pending", not_before=time.time() + delay)
            return
        except ResourceNotFound as exc:
            await self._settle(
                event["id"], state="failed", last_error=exc.message, attempts=event["attempts"] + 1
            )
            return
        attempts = event["attempts"] + 1
        if result.function_error is None:
            problem = await self._destination(event, "Success", result, attempts)
            await self._settle(
                event["id"], state="succeeded", attempts=attempts, last_error=problem
            )
            return
        error = _summary(result.payload)
        if attempts >= event["max_attempts"]:
            problem = await self._destination(event, "RetriesExhausted", result, attempts)
            await self._settle(
                event["id"],
                state="failed",
                attempts=attempts,
                last_error=error + (f"; {problem}" if problem else ""),
            )
            return
        delay = self.retry_base_s * (2 ** (attempts - 1)) * (0.5 + random.random())
        await self._settle(
            event["id"],
            state="pending",
            attempts=attempts,
            last_error=error,
            not_before=time.time() + delay,
        )

    async def list_events(
        self, account: str, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest events first. A pending event that has failed before shows (and filters)
        as `retrying`; `pending` then means not tried yet."""
        query = sa.select(*(c for c in async_events.c if c.name != "payload")).where(
            async_events.c.account_id == account
        )
        if state == "retrying":
            query = query.where(async_events.c.state == "pending", async_events.c.attempts > 0)
        elif state == "pending":
            query = query.where(async_events.c.state == "pending", async_events.c.attempts == 0)
        elif state:
            query = query.where(async_events.c.state == state)
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(query.order_by(async_events.c.id.desc()).limit(limit))
            found = [dict(r) for r in rows.mappings().all()]
        for event in found:
            if event["state"] == "pending" and event["attempts"] > 0:
                event["state"] = "retrying"
        return found

    async def close(self) -> None:
        """Stop the workers (running events are redelivered later) and commit what was
        accepted but not yet written."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._committer.close()


class GroupCommitter:
    """Inserts rows for many concurrent callers in one transaction (one fsync per batch).

    `insert()` returns only after the row's transaction committed, or raises if it failed.
    While one batch commits, the next accumulates, so batches grow with load by themselves.
    """

    def __init__(self, db: Database, table: sa.Table) -> None:
        self.db = db
        self.table = table
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def insert(self, row: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, future))
        self._wakeup.set()
        if self._task is None:  # not started, or closed: commit inline
            await self._commit()
        await future

    async def _commit(self) -> None:
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(self.table.insert(), [row for row, _ in batch])
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def _run(self) -> None:
        while not self._closing or self._pending:
            await self._wakeup.wait()
            self._wakeup.clear()
            await self._commit()

    async def close(self) -> None:
        """Commit everything accepted so far, then stop. A batch in flight is never cut off."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self._commit()


def _summary(payload: bytes) -> str:
    try:
        error = json.loads(payload)
        return f"{error.get('errorType')}: {error.get('errorMessage')}"[:1000]
    except (ValueError, AttributeError):
        return payload[:1000].decode(errors="replace")
