"""The metadata store's contract, run against every backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from gureum.control.models import FunctionConfig
from gureum.control.packages import PackageStore
from gureum.control.registry import Registry
from gureum.errors import (
    InvalidParameterValue,
    PreconditionFailed,
    ResourceConflict,
    ResourceNotFound,
)
from gureum.store import Database
from gureum.store.schema import accounts
from tests.conftest import ECHO, make_zip

ACCOUNT = "123456789012"


async def _registry(url: str, code_root: Path) -> Registry:
    db = await Database.open(url)
    async with db.engine.begin() as conn:
        await conn.execute(accounts.insert().values(id=ACCOUNT, name="root", created_at=0.0))
    return Registry(db, PackageStore(code_root), "us-east-1")


def _config(name: str, **fields: object) -> FunctionConfig:
    return FunctionConfig(
        account_id=ACCOUNT,
        name=name,
        handler="app.handler",
        code_sha256="",
        code_sha256_b64="",
        code_size=0,
        **fields,  # type: ignore[arg-type]
    )


def test_open_is_idempotent_and_migrates(database_url: str) -> None:
    async def scenario() -> None:
        first = await Database.open(database_url)
        await first.close()
        second = await Database.open(database_url)  # already at head: no-op
        async with second.engine.connect() as conn:
            rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            heads = {row[0] for row in rows}
        assert heads and all(head.startswith("0") for head in heads)
        await second.close()
        await second.close()

    asyncio.run(scenario())


def test_function_lifecycle(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await _registry(database_url, tmp_path / "code")
        code = make_zip({"app.py": ECHO})
        created = await registry.create_function(_config("f1", memory_mb=256), code)
        assert created.code_size == len(code) and created.version == "$LATEST"
        with pytest.raises(ResourceConflict):
            await registry.create_function(_config("f1"), code)

        v1 = await registry.publish_version(ACCOUNT, "f1", description="first")
        assert v1.version == "1" and v1.description == "first"
        # publishing an unchanged $LATEST returns the newest version, as AWS does
        assert (await registry.publish_version(ACCOUNT, "f1")).version == "1"
        with pytest.raises(PreconditionFailed):
            await registry.update_configuration(ACCOUNT, "f1", {"timeout_s": 5}, "stale")
        await registry.update_configuration(ACCOUNT, "f1", {"timeout_s": 5})
        v2 = await registry.publish_version(ACCOUNT, "f1")
        assert v2.version == "2" and v2.timeout_s == 5

        alias = await registry.create_alias(ACCOUNT, "f1", "live", "1", routing={"2": 0.25})
        assert alias.routing == {"2": 0.25}
        with pytest.raises(ResourceConflict):
            await registry.delete_function(ACCOUNT, "f1", "2")  # the alias routes to it
        with pytest.raises(ResourceNotFound):
            await registry.create_alias(ACCOUNT, "f1", "bad", "9")
        with pytest.raises(InvalidParameterValue):
            await registry.create_alias(ACCOUNT, "f1", "bad", "1", routing={"1": 0.5})
        seen = {(await registry.resolve(ACCOUNT, "f1", "live"))[0].version for _ in range(200)}
        assert seen == {"1", "2"}

        await registry.create_function(_config("f0"), code)
        page, marker = await registry.list_functions(ACCOUNT, None, 1)
        assert [c.name for c in page] == ["f0"] and marker == "f0"
        page, marker = await registry.list_functions(ACCOUNT, marker, 1)
        assert [c.name for c in page] == ["f1"] and marker is None

        await registry.delete_function(ACCOUNT, "f1")
        for call in (
            registry.get_latest(ACCOUNT, "f1"),
            registry.get_version(ACCOUNT, "f1", "1"),
            registry.get_alias(ACCOUNT, "f1", "live"),
        ):
            with pytest.raises(ResourceNotFound):
                await call
        # version numbers start again only for a new function of the same name
        await registry.create_function(_config("f1"), code)
        assert (await registry.publish_version(ACCOUNT, "f1")).version == "1"
        await registry.db.close()

    asyncio.run(scenario())


def test_state_survives_reopen(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await _registry(database_url, tmp_path / "code")
        await registry.create_function(_config("keep"), make_zip({"app.py": ECHO}))
        await registry.publish_version(ACCOUNT, "keep")
        await registry.create_alias(ACCOUNT, "keep", "prod", "1")
        await registry.db.close()

        db = await Database.open(database_url)
        fresh = Registry(db, PackageStore(tmp_path / "code"), "us-east-1")
        config, qualifier = await fresh.resolve(ACCOUNT, "keep", "prod")
        assert (config.version, qualifier) == ("1", "prod")
        assert fresh.packages.get(config.code_sha256).path.joinpath("app.py").exists()
        await db.close()

    asyncio.run(scenario())


def test_concurrent_writers_serialise(database_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        registry = await _registry(database_url, tmp_path / "code")
        await registry.create_function(_config("busy"), make_zip({"app.py": ECHO}))
        started = time.monotonic()
        await asyncio.gather(
            *(
                registry.update_configuration(ACCOUNT, "busy", {"memory_mb": 128 + i})
                for i in range(20)
            )
        )
        assert time.monotonic() - started < 30
        latest = await registry.get_latest(ACCOUNT, "busy")
        assert 128 <= latest.memory_mb < 148
        await registry.db.close()

    asyncio.run(scenario())


def test_migrations_match_declared_schema(database_url: str) -> None:
    """The migrated database equals schema.py: a schema change without a revision fails."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from gureum.store.schema import metadata

    async def scenario() -> list[object]:
        db = await Database.open(database_url)
        async with db.engine.connect() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
            )
        await db.close()
        return list(diff)

    assert asyncio.run(scenario()) == []
