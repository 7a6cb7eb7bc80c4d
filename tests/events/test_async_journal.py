"""`AsyncInvoker`'s journal against every metadata-store backend (SQLite and PostgreSQL), with
a stand-in dispatcher: batched accepts, claims and settles (group commits); retries; a close
hands unfinished events back; two invokers on one store never run an event twice at once."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import sqlalchemy as sa

from gureum.errors import TooManyRequests
from gureum.events.async_invoke import AsyncInvoker
from gureum.node.dispatcher import InvocationResult
from gureum.store import Database
from gureum.store.schema import async_events

ACCOUNT = "123456789012"


class StandInDispatcher:
    """Runs nothing: counts calls; `fail` payloads are function errors, the first call of a
    `throttle` payload is throttled, of a `platform` one fails in the platform, and `slow`
    payloads take a while."""

    def __init__(self) -> None:
        self.calls: Counter[bytes] = Counter()
        self.running: Counter[bytes] = Counter()
        self.overlaps = 0

    async def invoke(
        self, account: str, name: str, qualifier: str | None, payload: bytes, **_: Any
    ) -> InvocationResult:
        self.calls[payload] += 1
        if b"throttle" in payload and self.calls[payload] == 1:
            raise TooManyRequests("Rate Exceeded.", "ConcurrentInvocationLimitExceeded")
        if b"platform" in payload and self.calls[payload] == 1:
            raise RuntimeError("the sandbox would not start")
        self.running[payload] += 1
        self.overlaps += self.running[payload] > 1
        try:
            await asyncio.sleep(0.2 if b"slow" in payload else 0)
        finally:
            self.running[payload] -= 1
        error = b"fail" in payload
        body = b'{"errorType": "Boom", "errorMessage": "no"}' if error else b"{}"
        return InvocationResult("id", "$LATEST", body, "Unhandled" if error else None, "ok", None)  # type: ignore[arg-type]


def _invoker(db: Database, dispatcher: StandInDispatcher, workers: int = 4) -> AsyncInvoker:
    return AsyncInvoker(
        db,
        dispatcher,  # type: ignore[arg-type]
        workers=workers,
        retry_base_s=0.01,
        poll_s=0.05,
    )


async def _states(db: Database) -> Counter[str]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(sa.select(async_events.c.state))
        return Counter(row.state for row in rows)


async def _settled(db: Database, total: int, within: float = 20.0) -> Counter[str]:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        states = await _states(db)
        if states["succeeded"] + states["failed"] == total:
            return states
        assert asyncio.get_running_loop().time() < deadline, states
        await asyncio.sleep(0.05)


def test_many_events_run_once_each_with_retries_and_throttling(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        dispatcher = StandInDispatcher()
        invoker = _invoker(db, dispatcher)
        await invoker.start(sole_owner=True)
        try:
            payloads = [f"ok {i}".encode() for i in range(300)]
            payloads += [b"fail once", b"throttle me", b"platform hiccup"]
            ids = await asyncio.gather(*(invoker.enqueue(ACCOUNT, "f", None, p) for p in payloads))
            assert len(set(ids)) == len(payloads)
            states = await _settled(db, len(payloads))
            assert states == {"succeeded": 302, "failed": 1}
            assert all(dispatcher.calls[p] == 1 for p in payloads[:300])
            assert dispatcher.calls[b"fail once"] == 3  # the first try and two retries
            assert dispatcher.calls[b"throttle me"] == 2  # throttled, then run
            assert dispatcher.calls[b"platform hiccup"] == 2  # retried like a function error
            failed = [e for e in await invoker.list_events(ACCOUNT, "failed")]
            assert failed[0]["attempts"] == 3 and "Boom: no" in failed[0]["last_error"]
        finally:
            await invoker.close()
            await db.close()

    asyncio.run(scenario())


def test_close_hands_unfinished_events_back(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        first = StandInDispatcher()
        invoker = _invoker(db, first, workers=2)
        await invoker.start(sole_owner=False)
        await asyncio.gather(
            *(invoker.enqueue(ACCOUNT, "f", None, f"slow {i}".encode()) for i in range(10))
        )
        await asyncio.sleep(0.1)  # two are running, the rest are leased ahead or pending
        await invoker.close()
        states = await _states(db)
        assert states["running"] == 0 and states["pending"] >= 8, states
        # another node (not the sole owner) picks them up at once: no lease to wait out
        second = StandInDispatcher()
        again = _invoker(db, second, workers=4)
        await again.start(sole_owner=False)
        try:
            await _settled(db, 10)
        finally:
            await again.close()
            await db.close()

    asyncio.run(scenario())


def test_two_invokers_on_one_store_never_share_an_event(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        dispatcher = StandInDispatcher()  # shared, so overlaps between the two are seen
        nodes = [_invoker(db, dispatcher), _invoker(await Database.open(database_url), dispatcher)]
        for node in nodes:
            await node.start(sole_owner=False)
        try:
            payloads = [f"ok {i}".encode() for i in range(200)]
            await asyncio.gather(
                *(nodes[i % 2].enqueue(ACCOUNT, "f", None, p) for i, p in enumerate(payloads))
            )
            await _settled(db, len(payloads))
            assert all(dispatcher.calls[p] == 1 for p in payloads)
            assert dispatcher.overlaps == 0
        finally:
            for node in nodes:
                await node.close()
                await node.db.close()

    asyncio.run(scenario())


def test_an_event_that_waited_long_is_leased_afresh_unless_its_lease_was_lost(
    database_url: str,
) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        invoker = _invoker(db, StandInDispatcher())  # not started: nothing claims but us
        try:
            await invoker.enqueue(ACCOUNT, "f", None, b"kept")
            await invoker.enqueue(ACCOUNT, "f", None, b"lost")
            async with db.engine.begin() as conn:
                kept, lost = await invoker._claim(conn, 2)
            assert await invoker._renew(kept)
            assert kept["lease_until"] > lost["lease_until"]
            async with db.engine.begin() as conn:  # a sweep elsewhere: the lease ran out
                await conn.execute(
                    async_events.update()
                    .where(async_events.c.id == lost["id"])
                    .values(state="pending", lease_until=None)
                )
            assert not await invoker._renew(lost)
        finally:
            await invoker.close()
            await db.close()

    asyncio.run(scenario())


def test_accepts_and_outcomes_are_group_committed(database_url: str) -> None:
    """Durability under load costs one commit (one fsync) per batch, not per event."""

    async def scenario() -> None:
        db = await Database.open(database_url)
        invoker = _invoker(db, StandInDispatcher())
        await invoker.start(sole_owner=True)
        commits = 0

        def count(_: Any) -> None:
            nonlocal commits
            commits += 1

        try:
            await invoker.enqueue(ACCOUNT, "f", None, b"warm")  # the config lookup is cached
            await _settled(db, 1)
            sa.event.listen(db.engine.sync_engine, "commit", count)
            payloads = [f"ok {i}".encode() for i in range(300)]
            await asyncio.gather(*(invoker.enqueue(ACCOUNT, "f", None, p) for p in payloads))
            accepted = commits
            await _settled(db, 301)
            assert accepted <= 10, accepted  # every accept was acknowledged only once committed
            assert commits <= 60, commits  # accepts, leases and outcomes of 300 events
        finally:
            if sa.event.contains(db.engine.sync_engine, "commit", count):
                sa.event.remove(db.engine.sync_engine, "commit", count)
            await invoker.close()
            await db.close()

    asyncio.run(scenario())
