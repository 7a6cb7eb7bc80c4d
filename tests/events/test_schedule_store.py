"""The schedule store's contract on every metadata backend, with an injected clock: each tick
fires exactly once (also with two schedulers, and after reopening), missed-tick policies,
pause/resume, one-time schedules."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from gureum.control.models import FunctionConfig
from gureum.control.packages import PackageStore
from gureum.control.registry import Registry
from gureum.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound
from gureum.events.async_invoke import AsyncInvoker
from gureum.events.schedules import Schedules
from gureum.store import Database
from gureum.store.schema import accounts, async_events
from tests.conftest import ECHO, make_zip

ACCOUNT = "123456789012"
T0 = 1_900_000_000.0  # 2030-03-17T17:46:40Z


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


async def _open(url: str, code: Path, clock: Clock, *, fresh: bool) -> Schedules:
    db = await Database.open(url)
    registry = Registry(db, PackageStore(code), "us-east-1")
    if fresh:
        async with db.engine.begin() as conn:
            await conn.execute(accounts.insert().values(id=ACCOUNT, name="root", created_at=0.0))
        config = FunctionConfig(
            account_id=ACCOUNT, name="tick", handler="app.handler", code_sha256="",
            code_sha256_b64="", code_size=0,
        )  # fmt: skip
        await registry.create_function(config, make_zip({"app.py": ECHO}))
    # the scheduler only builds rows with the invoker; nothing here dispatches
    invoker = AsyncInvoker(db, None, workers=1, retry_base_s=1.0, poll_s=1.0)  # type: ignore[arg-type]
    return Schedules(db, registry, invoker, "us-east-1", allow_seconds=True, clock=clock)


async def _events(schedules: Schedules) -> list[dict[str, Any]]:
    async with schedules.db.engine.connect() as conn:
        rows = await conn.execute(sa.select(async_events).order_by(async_events.c.id))
        return [dict(row) for row in rows.mappings()]


def run(
    database_url: str, tmp_path: Path, scenario: Callable[[Schedules, Clock], Awaitable[None]]
) -> None:
    async def main() -> None:
        clock = Clock()
        schedules = await _open(database_url, tmp_path / "code", clock, fresh=True)
        try:
            await scenario(schedules, clock)
        finally:
            await schedules.db.close()

    asyncio.run(main())


def test_crud_and_validation(database_url: str, tmp_path: Path) -> None:
    async def scenario(schedules: Schedules, clock: Clock) -> None:
        created = await schedules.create(
            ACCOUNT, "nightly", "cron(0 2 * * ? *)", "tick", timezone="Europe/Berlin"
        )
        assert created.state == "enabled" and created.next_tick is not None
        assert created.arn("us-east-1") == f"arn:aws:events:us-east-1:{ACCOUNT}:rule/nightly"
        with pytest.raises(ResourceConflict):
            await schedules.create(ACCOUNT, "nightly", "rate(1 day)", "tick")
        for bad in (
            dict(expression="cron(0 25 * * ? *)"),
            dict(target="missing-fn"),
            dict(timezone="Nowhere/Land"),
            dict(missed="sometimes"),
            dict(input="{not json"),
            dict(expression="at(2020-01-01T00:00:00)"),
            dict(name="bad name"),
        ):
            spec: dict[str, Any] = {
                "name": "x", "expression": "rate(1 minute)", "target": "tick", **bad,
            }  # fmt: skip
            error = ResourceNotFound if "target" in bad else InvalidParameterValue
            with pytest.raises(error):
                await schedules.create(
                    ACCOUNT,
                    spec.pop("name"),
                    spec.pop("expression"),
                    spec.pop("target"),
                    **spec,
                )
        await schedules.create(ACCOUNT, "a-rate", "rate(5 minutes)", "tick", input='{"k": 1}')
        assert [s.name for s in await schedules.list_schedules(ACCOUNT)] == ["a-rate", "nightly"]
        paused = await schedules.pause(ACCOUNT, "a-rate")
        assert paused.state == "paused"
        await schedules.delete(ACCOUNT, "a-rate")
        with pytest.raises(ResourceNotFound):
            await schedules.get(ACCOUNT, "a-rate")
        with pytest.raises(ResourceNotFound):
            await schedules.delete(ACCOUNT, "a-rate")

    run(database_url, tmp_path, scenario)


def test_each_tick_fires_once_with_the_scheduled_event(database_url: str, tmp_path: Path) -> None:
    async def scenario(schedules: Schedules, clock: Clock) -> None:
        await schedules.create(ACCOUNT, "every-minute", "rate(1 minute)", "tick")
        assert await schedules.fire_due() == 0  # nothing due yet
        clock.now = T0 + 60
        # two schedulers (two nodes) racing for the same tick: one event
        other = Schedules(
            schedules.db, schedules.registry, schedules.invoker, "us-east-1", clock=clock
        )
        fired = await asyncio.gather(schedules.fire_due(), other.fire_due())
        assert sum(fired) == 1
        assert await schedules.fire_due() == 0
        clock.now = T0 + 120.5
        assert await schedules.fire_due() == 1
        events = await _events(schedules)
        assert len(events) == 2
        event = json.loads(events[0]["payload"])
        assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
        assert event["time"] == "2030-03-17T17:47:40Z" and event["detail"] == {}
        assert event["account"] == ACCOUNT and event["region"] == "us-east-1"
        assert event["resources"] == [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/every-minute"]
        assert set(event) == {
            "version", "id", "detail-type", "source", "account", "time", "region", "resources",
            "detail",
        }  # fmt: skip
        assert json.loads(events[1]["payload"])["time"] == "2030-03-17T17:48:40Z"
        assert events[0]["state"] == "pending" and events[0]["max_attempts"] == 3
        assert events[0]["source"] == "schedule every-minute"
        found = await schedules.get(ACCOUNT, "every-minute")
        assert found.fired == 2 and found.next_tick == T0 + 180

    run(database_url, tmp_path, scenario)


def test_missed_ticks_fire_once_or_skip(database_url: str, tmp_path: Path) -> None:
    async def scenario(schedules: Schedules, clock: Clock) -> None:
        await schedules.create(ACCOUNT, "once", "rate(1 minute)", "tick", input='{"p": "once"}')
        await schedules.create(ACCOUNT, "skip", "rate(1 minute)", "tick", missed="skip")
        clock.now = T0 + 10 * 60 + 30  # down for ten ticks
        assert await schedules.fire_due() == 1
        events = await _events(schedules)
        assert [json.loads(e["payload"]) for e in events] == [{"p": "once"}]
        for name in ("once", "skip"):
            found = await schedules.get(ACCOUNT, name)
            assert found.next_tick == T0 + 11 * 60  # the first tick after now
        assert (await schedules.get(ACCOUNT, "skip")).fired == 0
        # on time again: both fire
        clock.now = T0 + 11 * 60 + 1
        assert await schedules.fire_due() == 2

    run(database_url, tmp_path, scenario)


def test_pause_resume_and_one_time(database_url: str, tmp_path: Path) -> None:
    async def scenario(schedules: Schedules, clock: Clock) -> None:
        await schedules.create(ACCOUNT, "r", "rate(1 minute)", "tick")
        await schedules.pause(ACCOUNT, "r")
        await schedules.pause(ACCOUNT, "r")  # idempotent
        clock.now = T0 + 300
        assert await schedules.fire_due() == 0
        resumed = await schedules.resume(ACCOUNT, "r")
        assert resumed.state == "enabled" and resumed.next_tick == T0 + 360
        assert await schedules.fire_due() == 0  # paused ticks are not caught up

        await schedules.create(ACCOUNT, "once", "at(2030-03-17T19:00:00)", "tick", timezone="CET")
        clock.now = T0 + 3600  # 18:46:40Z = 19:46:40 CET
        assert await schedules.fire_due() == 2  # the at() tick and r's (fire-once) catch-up
        once = await schedules.get(ACCOUNT, "once")
        assert once.state == "completed" and once.next_tick is None and once.fired == 1
        with pytest.raises(ResourceConflict):
            await schedules.pause(ACCOUNT, "once")

    run(database_url, tmp_path, scenario)


def test_no_tick_fires_twice_across_reopen(database_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        clock = Clock()
        first = await _open(database_url, tmp_path / "code", clock, fresh=True)
        await first.create(ACCOUNT, "r", "rate(10 seconds)", "tick")
        clock.now = T0 + 10
        assert await first.fire_due() == 1
        await first.db.close()
        second = await _open(database_url, tmp_path / "code", clock, fresh=False)
        assert await second.fire_due() == 0  # same clock: the tick was already fired
        clock.now = T0 + 20
        assert await second.fire_due() == 1
        times = [json.loads(e["payload"])["time"] for e in await _events(second)]
        assert times == ["2030-03-17T17:46:50Z", "2030-03-17T17:47:00Z"]
        await second.db.close()

    asyncio.run(main())
