"""`Database.write`: on SQLite, concurrent writes share a commit (those with a direct sqlite3
form in one trip to the group's thread); one write's failure or its caller's cancellation
never changes what happens to the others."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.store import Database
from gureum.store.schema import accounts


def _insert(account: str, then: Callable[[], Awaitable[Any]] | None = None):  # type: ignore[no-untyped-def]
    async def work(conn: AsyncConnection) -> str:
        await conn.execute(accounts.insert().values(id=account, name=account, created_at=0.0))
        if then is not None:
            await then()
        return account

    return work


async def _stored(db: Database) -> set[str]:
    async with db.engine.connect() as conn:
        return {row[0] for row in await conn.execute(sa.select(accounts.c.id))}


async def _open(tmp_path: Path) -> tuple[Database, list[int]]:
    db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
    commits: list[int] = []
    sa.event.listen(db.engine.sync_engine, "commit", lambda conn: commits.append(1))
    return db, commits


def test_concurrent_writes_share_commits(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, commits = await _open(tmp_path)
        names = [f"{n:012d}" for n in range(40)]
        results = await asyncio.gather(*(db.write(_insert(name)) for name in names))
        assert results == names
        assert await _stored(db) == set(names)
        # the first write commits alone, the 39 queued behind it together
        assert len(commits) <= 3, commits
        await db.close()

    asyncio.run(scenario())


def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, _ = await _open(tmp_path)

        async def fail() -> None:
            raise ValueError("this write is broken")

        good = [f"{n:012d}" for n in range(5)]
        outcomes = await asyncio.gather(
            *(db.write(_insert(name)) for name in good[:2]),
            db.write(_insert("999999999999", fail)),  # inserted its row, then failed
            *(db.write(_insert(name)) for name in good[2:]),
            return_exceptions=True,
        )
        assert isinstance(outcomes[2], ValueError)
        assert [o for i, o in enumerate(outcomes) if i != 2] == good
        assert await _stored(db) == set(good)  # the failed write's row was rolled back
        # a duplicate key is the database's own error, and fails only its write too
        duplicate = await asyncio.gather(
            db.write(_insert(good[0])), db.write(_insert("888888888888")), return_exceptions=True
        )
        assert isinstance(duplicate[0], sa.exc.IntegrityError)
        assert duplicate[1] == "888888888888"
        await db.close()

    asyncio.run(scenario())


def test_cancelled_callers(tmp_path: Path) -> None:
    """A caller cancelled while its write waits is never written; one cancelled after its
    write was taken waits for that commit and gets its result."""

    async def scenario() -> None:
        db, _ = await _open(tmp_path)
        inside, release = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            inside.set()
            await release.wait()

        taken = asyncio.create_task(db.write(_insert("000000000001", hold)))
        await inside.wait()  # its transaction is open: the next writes queue
        queued = asyncio.create_task(db.write(_insert("000000000002")))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        taken.cancel()
        await asyncio.sleep(0.05)
        assert not taken.done()  # waits for its transaction instead of leaving it unknown
        release.set()
        assert await taken == "000000000001"
        assert await _stored(db) == {"000000000001"}
        await db.close()

    asyncio.run(scenario())


def _direct(account: str, fail: bool = False):  # type: ignore[no-untyped-def]
    def work(conn: sqlite3.Connection) -> str:
        conn.execute(
            "INSERT INTO accounts (id, name, created_at) VALUES (?, ?, 0)", (account, account)
        )
        if fail:
            raise ValueError("this write is broken")
        return account

    return work


def test_direct_writes_share_one_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, commits = await _open(tmp_path)
        group = db._group
        assert group is not None
        trips: list[int] = []
        run = group._run

        def counted(works: list[Any]) -> list[tuple[bool, Any]]:
            trips.append(len(works))
            return run(works)

        group._run = counted  # type: ignore[method-assign]
        names = [f"{n:012d}" for n in range(30)]
        outcomes = await asyncio.gather(
            *(db.write(_insert(n), sqlite=_direct(n, fail=n.endswith("7"))) for n in names),
            db.write(_insert("999999999999")),  # no direct form: through the engine
            return_exceptions=True,
        )
        failed = {n for n in names if n.endswith("7")}
        for name, outcome in zip(names, outcomes, strict=False):
            if name in failed:
                assert isinstance(outcome, ValueError)
            else:
                assert outcome == name
        assert outcomes[-1] == "999999999999"
        assert await _stored(db) == (set(names) - failed) | {"999999999999"}
        assert sum(trips) == len(names) and len(trips) <= 3, trips
        assert len(commits) == 1  # the one engine write
        await db.close()
        await db.close()

    asyncio.run(scenario())


def test_direct_writes_on_an_in_memory_database_take_the_engine(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open("sqlite+aiosqlite://")
        assert await db.write(_insert("000000000004"), sqlite=_direct("000000000004")) == (
            "000000000004"
        )
        assert await _stored(db) == {"000000000004"}
        await db.close()

    asyncio.run(scenario())


def test_execute_many_is_one_write(tmp_path: Path) -> None:
    async def scenario() -> None:
        db, commits = await _open(tmp_path)
        rows = [{"id": f"{n:012d}", "name": f"a{n}", "created_at": 0.0} for n in range(3)]
        await db.execute_many(accounts.insert(), [])  # nothing to write: no transaction
        await asyncio.gather(
            db.execute_many(accounts.insert(), rows[:2]),
            db.execute_many(accounts.insert(), rows[2:]),
        )
        assert await _stored(db) == {row["id"] for row in rows}
        assert commits == []  # both took the direct path, not the engine's
        duplicate = [{"id": "000000000009", "name": "a9", "created_at": 0.0}, rows[0]]
        with pytest.raises(sqlite3.IntegrityError):
            await db.execute_many(accounts.insert(), duplicate)
        assert "000000000009" not in await _stored(db)  # all of one write, or none of it
        await db.close()

    asyncio.run(scenario())
