"""Durable `Event` invocations: committed to the metadata store before the 202, then run.

Each event is a row in `async_events`. One journal task writes in batches (one transaction,
one fsync, for all the events accepted, outcomes decided and leases taken since its last one)
and claims due events for the workers by taking a lease (state `running`, `lease_until`); an
event whose lease ran out — its worker or the whole process died — is due again, so every
accepted event runs at least once, also across restarts. An event is acknowledged only once
its row committed, and marked done only after it ran. Function
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
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.errors import ResourceNotFound, TooManyRequests
from gureum.events.base import DestinationSink
from gureum.events.invoke_configs import InvokeConfigs
from gureum.node.dispatcher import Dispatcher, InvocationResult
from gureum.node.records import new_request_id
from gureum.store import Database
from gureum.store.schema import async_events

log = logging.getLogger(__name__)
DEFAULT_MAX_ATTEMPTS = 3  # the first try plus AWS's default of 2 retries
MAX_EVENT_AGE_S = 6 * 3600.0
LEASE_GRACE_S = 60.0
LEASE_SWEEP_S = 5.0  # how often expired leases are looked for


class AsyncInvoker:
    """The `EventJournal` on the metadata store (see `gureum.events.base` for the contract):
    accepts events durably and runs them on the dispatcher with `workers` concurrent tasks.

    One journal task does all of the hot path's writing, batched: each of its transactions
    inserts the events accepted since the last one, records the outcomes decided since, and
    leases the next due events for the workers, with one commit (one fsync) for all of it.
    """

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
        # claimed events not started yet: up to `prefetch` of them are leased ahead
        self.prefetch = min(256, max(32, 8 * workers))
        self._ready: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._in_progress: dict[int, dict[str, Any]] = {}
        self._inserts: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._settles: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._journal_wakeup = asyncio.Event()
        self._maybe_due = True  # an event may be due that is neither claimed nor running
        self._next_poll = 0.0
        self._next_lease_sweep = 0.0
        self._closing = False
        self._journal: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._insert_statement = async_events.insert()
        self._settle_statement = (
            async_events.update()
            .where(async_events.c.id == sa.bindparam("event_id"))
            .values(
                state=sa.bindparam("new_state"),
                attempts=sa.bindparam("new_attempts"),
                last_error=sa.bindparam("new_error"),
                not_before=sa.bindparam("new_not_before"),
                lease_until=None,
                updated_at=sa.bindparam("now"),
            )
        )
        now = sa.bindparam("now", type_=sa.Float)
        due = (
            sa.select(async_events.c.id)
            .where(async_events.c.state == "pending", async_events.c.not_before <= now)
            .order_by(async_events.c.not_before)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            # other nodes claim other rows instead of waiting for these (PostgreSQL)
            .with_for_update(skip_locked=True)
        )
        self._claim_statement = (
            async_events.update()
            .where(async_events.c.id.in_(due.scalar_subquery()))
            .values(state="running", lease_until=sa.bindparam("lease_until"), updated_at=now)
            .returning(*async_events.c)
        )

    async def start(self, *, sole_owner: bool) -> None:
        """Start the journal and the workers. `sole_owner`: no other process uses this store
        (the embedded shape), so events left running by a crashed predecessor are due again
        right away."""
        if sole_owner:
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    async_events.update()
                    .where(async_events.c.state == "running")
                    .values(state="pending", lease_until=None, not_before=time.time())
                )
            if result.rowcount:
                log.warning("redelivering %d interrupted async events", result.rowcount)
        self._journal = asyncio.create_task(self._run_journal())
        self._workers = [asyncio.create_task(self._work()) for _ in range(self.workers)]

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
            "request_id": new_request_id(),
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
        """Look for due events now (after a caller committed new ones itself)."""
        self._maybe_due = True
        self._journal_wakeup.set()

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
            accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inserts.append((row, accepted))
            self.wake()
            if self._journal is None:  # not started, or closed: write it now
                await self._write(claim=False)
            await accepted
            return str(row["request_id"])
        async with self._idempotency_lock, self.db.write_gate, self.db.engine.begin() as conn:
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
        self.wake()
        return str(row["request_id"])

    async def redrive(self, account: str, request_id: str | None = None) -> int:
        """Send dead-lettered (failed) events — one, or all of the account's — through again."""
        now = time.time()
        query = async_events.update().where(
            async_events.c.account_id == account, async_events.c.state == "failed"
        )
        if request_id is not None:
            query = query.where(async_events.c.request_id == request_id)
        async with self.db.write_gate, self.db.engine.begin() as conn:
            result = await conn.execute(
                query.values(
                    state="pending", attempts=0, not_before=now, created_at=now, updated_at=now
                )
            )
        self.wake()
        return int(result.rowcount)

    # ---- the journal -------------------------------------------------------------------------

    async def _run_journal(self) -> None:
        """Write whenever there is something to write or to claim; until closed, and then
        until everything accepted or decided is written."""
        while not self._closing or self._inserts or self._settles:
            now = time.monotonic()
            if now >= self._next_poll:
                # retries coming due, other nodes' enqueues, expired leases
                self._maybe_due = True
                self._next_poll = now + self.poll_s
            claim = not self._closing and self._claim_room() > 0
            if not (self._inserts or self._settles or claim):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._journal_wakeup.wait(), max(0.0, self._next_poll - now)
                    )
                self._journal_wakeup.clear()
                continue
            self._journal_wakeup.clear()
            try:
                await self._write(claim=claim)
            except Exception:
                log.exception("could not write the async event journal; trying again")
                await asyncio.sleep(0.5)

    def _claim_room(self) -> int:
        """How many events to claim now: none while at least half of the prefetched ones are
        still waiting, or while nothing can be due."""
        room = self.prefetch - self._ready.qsize()
        return room if self._maybe_due and room >= self.prefetch // 2 else 0

    async def _write(self, *, claim: bool) -> None:
        """One journal transaction: the pending inserts and settles, then (with `claim`)
        a batch of due events, handed to the workers only once it all committed. The
        callers' futures fail if it did not commit."""
        inserts, self._inserts = self._inserts, []
        settles, self._settles = self._settles, []
        room = self._claim_room() if claim else 0
        if not (inserts or settles or room):
            return
        if room:
            self._maybe_due = False
        claimed: list[dict[str, Any]] = []
        handed = False
        try:
            async with self.db.engine.connect() as conn:
                async with self.db.write_gate:
                    if inserts:
                        await conn.execute(self._insert_statement, [row for row, _ in inserts])
                    if settles:
                        await conn.execute(self._settle_statement, [p for p, _ in settles])
                    if room:
                        claimed = await self._claim(conn, room)
                    await conn.commit()
                # committed: answer before handing the connection back to the pool
                for _, future in inserts + settles:
                    if not future.done():
                        future.set_result(None)
                if room and len(claimed) == room:
                    self._maybe_due = True  # there may be more
                for event in claimed:
                    self._ready.put_nowait(event)
                handed = True
        except Exception as exc:
            for _, future in inserts + settles:
                if not future.done():
                    future.set_exception(exc)
            if room and not handed:  # the claim did not commit: look again
                self._maybe_due = True
            if room and not (inserts or settles):
                raise

    async def _claim(self, conn: AsyncConnection, limit: int) -> list[dict[str, Any]]:
        """Lease up to `limit` due events, the longest due first."""
        now = time.time()
        if now >= self._next_lease_sweep:
            # events whose worker (or whole process) died are due again
            self._next_lease_sweep = now + LEASE_SWEEP_S
            await conn.execute(
                async_events.update()
                .where(async_events.c.state == "running", async_events.c.lease_until < now)
                .values(state="pending", lease_until=None, not_before=now)
            )
        # generous lease: the longest a function may run, plus a margin for the time it
        # waits among the prefetched events
        rows = await conn.execute(
            self._claim_statement,
            {"now": now, "limit": limit, "lease_until": now + 900 + LEASE_GRACE_S},
        )
        keys = list(rows.keys())
        claimed = [dict(zip(keys, row, strict=True)) for row in rows.all()]
        claimed.sort(key=lambda event: (event["not_before"], event["id"]))
        return claimed

    def _settle(self, event: dict[str, Any], **values: Any) -> asyncio.Future[None]:
        """Record the event's outcome with the journal's next transaction; the future
        resolves once committed. Until then the event stays leased, so a crash before the
        commit redelivers it."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        params = {
            "event_id": event["id"],
            "new_state": values["state"],
            "new_attempts": values.get("attempts", event["attempts"]),
            "new_error": values.get("last_error", event["last_error"]),
            "new_not_before": values.get("not_before", event["not_before"]),
            "now": time.time(),
        }
        self._settles.append((params, future))
        self._journal_wakeup.set()
        return future

    # ---- the workers -------------------------------------------------------------------------

    async def _work(self) -> None:
        """One worker: runs claimed events one at a time. It moves on once the function and
        any destination are done; the outcome commits with the journal's next transaction
        (the event stays leased until then)."""
        while True:
            event = await self._ready.get()
            if self._claim_room():
                self._journal_wakeup.set()
            self._in_progress[event["id"]] = event  # cancelled (close): handed back
            waited = time.time() - event["updated_at"]
            if waited > LEASE_GRACE_S / 2 and not await self._renew(event):
                self._in_progress.pop(event["id"], None)
                continue  # its lease ran out while it waited: it is someone else's now
            try:
                settled = await self._run(event)
            except Exception as exc:
                log.exception("async event %s failed to run", event["id"])
                settled = self._platform_failure(event, exc)
            self._in_progress.pop(event["id"], None)
            settled.add_done_callback(_log_settle_failure)

    async def _renew(self, event: dict[str, Any]) -> bool:
        """Lease an event that waited long among the prefetched ones afresh; False if its
        lease was lost meanwhile."""
        now = time.time()
        lease_until = now + 900 + LEASE_GRACE_S
        try:
            async with self.db.write_gate, self.db.engine.begin() as conn:
                renewed = await conn.execute(
                    async_events.update()
                    .where(
                        async_events.c.id == event["id"],
                        async_events.c.state == "running",
                        async_events.c.lease_until == event["lease_until"],
                    )
                    .values(lease_until=lease_until, updated_at=now)
                )
        except Exception:
            log.exception("could not renew the lease of async event %s", event["id"])
            return False
        if renewed.rowcount != 1:
            return False
        event.update(lease_until=lease_until, updated_at=now)
        return True

    def _platform_failure(self, event: dict[str, Any], exc: Exception) -> asyncio.Future[None]:
        """The platform, not the function, failed to run the event (a sandbox that would not
        start, say): that uses an attempt, and is retried like a function error."""
        attempts = event["attempts"] + 1
        error = f"{type(exc).__name__}: {exc}"[:1000]
        if attempts >= event["max_attempts"]:
            return self._settle(event, state="failed", attempts=attempts, last_error=error)
        delay = self.retry_base_s * (2 ** (attempts - 1)) * (0.5 + random.random())
        return self._settle(
            event,
            state="pending",
            attempts=attempts,
            last_error=error,
            not_before=time.time() + delay,
        )

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

    async def _run(self, event: dict[str, Any]) -> asyncio.Future[None]:
        """Invoke the event's function once and decide its outcome; the settle future."""
        max_age = event.get("max_age_s") or MAX_EVENT_AGE_S
        if time.time() - event["created_at"] > max_age:
            problem = await self._destination(event, "EventAgeExceeded", None, event["attempts"])
            return self._settle(
                event, state="failed", last_error=problem or "maximum event age exceeded"
            )
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
            return self._settle(event, state="pending", not_before=time.time() + delay)
        except ResourceNotFound as exc:
            return self._settle(
                event, state="failed", last_error=exc.message, attempts=event["attempts"] + 1
            )
        attempts = event["attempts"] + 1
        if result.function_error is None:
            problem = await self._destination(event, "Success", result, attempts)
            return self._settle(event, state="succeeded", attempts=attempts, last_error=problem)
        error = _summary(result.payload)
        if attempts >= event["max_attempts"]:
            problem = await self._destination(event, "RetriesExhausted", result, attempts)
            return self._settle(
                event,
                state="failed",
                attempts=attempts,
                last_error=error + (f"; {problem}" if problem else ""),
            )
        delay = self.retry_base_s * (2 ** (attempts - 1)) * (0.5 + random.random())
        return self._settle(
            event,
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
        """Stop the workers, write what was accepted and the outcomes already decided, then
        hand the events claimed but not finished back (pending), so they run again — here
        after a restart, or on another node. Idempotent."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        self._closing = True
        self._journal_wakeup.set()
        if self._journal is not None:
            await self._journal
            self._journal = None
        await self._write(claim=False)
        unfinished = list(self._in_progress)
        while not self._ready.empty():
            unfinished.append(self._ready.get_nowait()["id"])
        self._in_progress.clear()
        if unfinished:
            with contextlib.suppress(Exception):  # else their leases run out
                async with self.db.write_gate, self.db.engine.begin() as conn:
                    await conn.execute(
                        async_events.update()
                        .where(async_events.c.id.in_(unfinished), async_events.c.state == "running")
                        .values(state="pending", lease_until=None, not_before=time.time())
                    )


def _log_settle_failure(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error(
            "could not record an async event's outcome; it runs again when its lease ends",
            exc_info=future.exception(),
        )


def _summary(payload: bytes) -> str:
    try:
        error = json.loads(payload)
        return f"{error.get('errorType')}: {error.get('errorMessage')}"[:1000]
    except (ValueError, AttributeError):
        return payload[:1000].decode(errors="replace")
