"""Open the metadata store for a URL, apply migrations, and tune the engine per dialect."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler

from gureum.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"

WriteGate = contextlib.AbstractAsyncContextManager[Any]
T = TypeVar("T")
# A write for `Database.write`: its statements on the transaction's connection, and its result;
# and the same write for Python's sqlite3, which SQLite databases may run instead.
Work = Callable[[AsyncConnection], Awaitable[Any]]
DirectWork = Callable[[sqlite3.Connection], Any]


@functools.lru_cache(maxsize=256)
def sqlite_statement(
    statement: sa.ClauseElement, columns: tuple[str, ...] | None = None
) -> tuple[str, tuple[str, ...]]:
    """`statement` as SQLite text with `?` placeholders, and the names of its parameters in
    their order (`columns`: an insert's or update's columns): for writes' direct forms, which
    run the same statements past SQLAlchemy. Cached: pass statements built once."""
    compiled = statement.compile(
        dialect=sqlite_dialect.dialect(paramstyle="qmark"),
        column_keys=None if columns is None else list(columns),
    )
    assert isinstance(compiled, SQLCompiler)
    return str(compiled), tuple(compiled.positiontup or ())


def run_sqlite(
    conn: sqlite3.Connection, statement: tuple[str, tuple[str, ...]], params: dict[str, Any]
) -> sqlite3.Cursor:
    """Run a `sqlite_statement` with the parameters it names taken from `params`."""
    text, names = statement
    return conn.execute(text, [params[name] for name in names])


# WAL: readers never block the writer; FULL: a commit is on disk before it returns, which is
# what "accepted means never lost" needs for async events. (gureum.node.record_writer, which
# must not import this module, holds a copy; a test keeps the two alike.)
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=10000",
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _upgrade(connection: sa.Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    # Features add their own branches off 0001; upgrading every head lets them land in any order.
    command.upgrade(config, "heads")


class Database:
    """The metadata store's engine. `open()` migrates to the newest schema; `close()` is
    idempotent."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # What the busy paths' writers hold around their transactions. On SQLite, one lock per
        # process: there is only one writer at a time anyway, and a writer that finds the
        # database locked waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, ... ms and
        # dominated commit times under load. PostgreSQL writers need no gate.
        self.write_gate: WriteGate = (
            asyncio.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        self._group = _GroupCommit(self) if self.dialect == "sqlite" else None

    async def write(
        self,
        work: Callable[[AsyncConnection], Awaitable[T]],
        *,
        sqlite: Callable[[sqlite3.Connection], T] | None = None,
    ) -> T:
        """Run `work` in a write transaction and return its result once that committed.
        On SQLite, writes that arrive while a transaction commits share the next one: one
        commit (one fsync) for all of them, and those given as `sqlite` too (the same write
        for Python's sqlite3) run in one trip to a thread (see `_GroupCommit`). `work` must be
        safe to run again: it is, when another write of its transaction fails."""
        if self._group is not None:
            result: T = await self._group.run(work, sqlite)
            return result
        async with self.write_gate, self.engine.begin() as conn:
            return await work(conn)

    async def execute_many(self, statement: sa.Executable, rows: list[dict[str, Any]]) -> None:
        """One statement for each of `rows` (parameter sets with the same keys), as one
        `write` (with its direct form on SQLite)."""
        if not rows:
            return

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(statement, rows)

        direct = None
        if self._group is not None:
            assert isinstance(statement, sa.ClauseElement)
            compiled = sqlite_statement(statement, tuple(rows[0]))
            direct = functools.partial(_execute_many, compiled, rows)
        await self.write(work, sqlite=direct)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect to `url` (sqlite+aiosqlite:/// or postgresql+asyncpg://) and migrate."""
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": 30})
            sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        elif url.startswith("postgresql"):
            engine = create_async_engine(url, pool_size=10, max_overflow=10)
        else:
            raise ConfigurationError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")
        try:
            async with engine.begin() as conn:
                await conn.run_sync(_upgrade)
        except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            await engine.dispose()
            raise ConfigurationError(f"cannot open the metadata store: {exc}") from exc
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        if self._group is not None:
            await self._group.close()
        await self.engine.dispose()


def _execute_many(
    statement: tuple[str, tuple[str, ...]], rows: list[dict[str, Any]], conn: sqlite3.Connection
) -> None:
    text, names = statement
    conn.executemany(text, [[row[name] for name in names] for row in rows])


class _Rollback(Exception):
    """Raised to roll a group back after one of its writes failed."""


@dataclass(slots=True)
class _Entry:
    work: Work
    direct: DirectWork | None
    future: asyncio.Future[Any]


class _GroupCommit:
    """Group commit for SQLite, where each commit waits for an fsync and writers take turns:
    writes queue while a transaction is being committed and then go together in the next one.
    Writes with a `direct` form run in one trip to a thread of the group's own, on its own
    sqlite3 connection, each in a savepoint (a failing one is rolled back alone); the others
    run on an engine connection, where one statement is one trip to a thread: there, if one
    write raises, the transaction is rolled back, that write gets its exception and the rest
    run again in a new one. Either way a write never commits with another's failure. A caller
    cancelled after its write was taken waits for that transaction: if it committed, the
    caller gets its result and goes on (its caller may depend on knowing, e.g. to delete a
    blob only when nothing names it), else it sees the cancellation."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._queue: list[_Entry] = []
        self._committer: asyncio.Task[None] | None = None
        path = db.engine.url.database
        # an in-memory database is one per connection: only the engine's can be used
        self._path = path if path and path != ":memory:" else None
        self._thread: ThreadPoolExecutor | None = None
        self._connection: sqlite3.Connection | None = None

    async def run(self, work: Work, direct: DirectWork | None) -> Any:
        if self._path is None:
            direct = None  # no connection of its own: the engine's path
        entry = _Entry(work, direct, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_queued())
        try:
            return await asyncio.shield(entry.future)
        except asyncio.CancelledError:
            if entry in self._queue:  # not taken yet: it never will be
                self._queue.remove(entry)
                raise
        future = entry.future
        while not future.done():  # taken: its transaction decides
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(future)
        if future.cancelled() or future.exception() is not None:
            raise asyncio.CancelledError
        return future.result()  # committed: the caller goes on as if it had not been cancelled

    async def _commit_queued(self) -> None:
        batch: list[_Entry] = []
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                direct = [e for e in batch if e.direct is not None]
                if direct:
                    await self._commit_direct(direct)
                await self._commit([e for e in batch if e.direct is None])
        except BaseException:
            for entry in [*batch, *self._queue]:  # the loop is going away: so are their callers
                if not entry.future.done():
                    entry.future.cancel()
            self._queue = []
            raise
        finally:
            self._committer = None

    async def _commit_direct(self, batch: list[_Entry]) -> None:
        if self._thread is None:
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="gureum-sqlite-writes")
        works = [entry.direct for entry in batch if entry.direct is not None]
        async with self._db.write_gate:
            job = asyncio.get_running_loop().run_in_executor(self._thread, self._run, works)
            cancelled = False
            while not job.done():  # the thread commits or not regardless: learn which
                try:
                    await asyncio.shield(job)
                except asyncio.CancelledError:
                    cancelled = True
        error = job.exception()
        if error is not None:
            for entry in batch:
                entry.future.set_exception(error)
        else:
            for entry, (ok, value) in zip(batch, job.result(), strict=True):
                if ok:
                    entry.future.set_result(value)
                else:
                    entry.future.set_exception(value)
        if cancelled:
            raise asyncio.CancelledError

    def _run(self, works: list[DirectWork]) -> list[tuple[bool, Any]]:
        """In the group's thread: every write in one transaction, each in a savepoint."""
        conn = self._connection
        if conn is None:
            assert self._path is not None
            conn = sqlite3.connect(
                self._path, timeout=30, isolation_level=None, check_same_thread=False
            )
            _sqlite_pragmas(conn, None)
            self._connection = conn
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for work in works:
                conn.execute("SAVEPOINT gureum_write")
                try:
                    value = work(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO gureum_write")
                    outcomes.append((False, exc))
                else:
                    outcomes.append((True, value))
                conn.execute("RELEASE gureum_write")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    async def _commit(self, batch: list[_Entry]) -> None:
        while batch:
            results: list[Any] = []
            failed: tuple[int, Exception] | None = None
            try:
                async with self._db.write_gate, self._db.engine.begin() as conn:
                    for index, entry in enumerate(batch):
                        try:
                            results.append(await entry.work(conn))
                        except Exception as exc:
                            failed = (index, exc)
                            raise _Rollback from exc
            except _Rollback:
                assert failed is not None
                index, error = failed
                batch.pop(index).future.set_exception(error)
                continue
            except BaseException as exc:  # the commit failed, or the committer was cancelled
                for entry in batch:
                    if isinstance(exc, Exception):
                        entry.future.set_exception(exc)
                    else:
                        entry.future.cancel()
                if not isinstance(exc, Exception):
                    raise
                return
            for entry, result in zip(batch, results, strict=True):
                entry.future.set_result(result)
            return

    async def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        connection, self._connection = self._connection, None
        if connection is not None:
            await asyncio.get_running_loop().run_in_executor(thread, connection.close)
        thread.shutdown()
