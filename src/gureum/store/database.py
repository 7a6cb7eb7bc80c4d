"""Open the metadata store for a URL, apply migrations, and tune the engine per dialect."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gureum.errors import ConfigurationError

MIGRATIONS = Path(__file__).parent / "migrations"

WriteGate = contextlib.AbstractAsyncContextManager[Any]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; FULL: a commit is on disk before it returns,
    # which is what "accepted means never lost" needs for async events.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
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
        await self.engine.dispose()
