"""`Schedules`: stored schedules, and the scheduler task that turns their ticks into events.

A schedule names an expression (`gureum.events.schedule_expressions`), a time zone, a target
function and either a fixed JSON input or, by default, EventBridge's "Scheduled Event". Its
row holds `next_tick`, the earliest tick not yet fired. Contracts:

- A tick is fired at most once, also across restarts and between nodes: one transaction
  advances `next_tick` (only if it still holds the tick that was read) and inserts the async
  event, built by `EventJournal.row()`. Delivery is then the async path's: durable, retried
  per the function's invoke config, dead-lettered.
- After downtime, a schedule whose tick is overdue by more than a grace period (a minute, or
  half its interval when that is shorter) follows its `missed` policy: `fire-once` sends one
  catch-up event (timed at the first missed tick) and `skip` sends none; either way the next
  tick is the first one after now.
- The scheduler sleeps until the earliest `next_tick` (at most `MAX_SLEEP_S`, to see other
  nodes' changes); every change made through this object wakes it.
- Paused schedules fire nothing; `resume()` continues with the first tick after now.
  An `at()` schedule is `completed` once its tick was handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gureum.control.models import validate_name
from gureum.control.registry import Registry
from gureum.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound
from gureum.events.base import EventJournal
from gureum.events.schedule_expressions import Expression, parse_expression
from gureum.store import Database
from gureum.store.schema import async_events, schedules

log = logging.getLogger(__name__)
MISSED_POLICIES = ("fire-once", "skip")
MISSED_GRACE_S = 60.0
MAX_SLEEP_S = 30.0
MAX_INPUT_BYTES = 256 * 1024
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
s = schedules.c


@dataclass(frozen=True)
class Schedule:
    account_id: str
    name: str
    expression: str
    timezone: str
    function_name: str
    qualifier: str
    input: str | None
    missed: str
    state: str
    next_tick: float | None
    anchor: float
    last_tick: float | None
    fired: int
    created_at: float
    updated_at: float

    @property
    def target(self) -> str:
        return self.function_name + (f":{self.qualifier}" if self.qualifier else "")

    def arn(self, region: str) -> str:
        return schedule_arn(region, self.account_id, self.name)

    def to_json(self, region: str) -> dict[str, Any]:
        return {**asdict(self), "target": self.target, "arn": self.arn(region)}


def schedule_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:events:{region}:{account}:rule/{name}"


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_event(schedule: Schedule, tick: float, region: str) -> dict[str, Any]:
    """EventBridge's "Scheduled Event" for one tick."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": schedule.account_id,
        "time": _iso(tick),
        "region": region,
        "resources": [schedule.arn(region)],
        "detail": {},
    }


class Schedules:
    """Schedules of every account; `start()` runs the scheduler, `close()` stops it."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        invoker: EventJournal,
        region: str,
        *,
        allow_seconds: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.registry = registry
        self.invoker = invoker
        self.region = region
        self.allow_seconds = allow_seconds
        self.clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- management --------------------------------------------------------------------------

    async def create(
        self,
        account: str,
        name: str,
        expression: str,
        target: str,
        *,
        input: str | None = None,
        timezone: str = "UTC",
        missed: str = "fire-once",
    ) -> Schedule:
        """Create a schedule; ResourceConflict if the name is taken, InvalidParameterValue for
        a bad name, expression, zone, policy or input, ResourceNotFound for a missing target."""
        if not _NAME.match(name):
            raise InvalidParameterValue(
                f"invalid schedule name {name!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        if missed not in MISSED_POLICIES:
            raise InvalidParameterValue(
                f"invalid missed-tick policy {missed!r}: use {' or '.join(MISSED_POLICIES)}"
            )
        parsed = parse_expression(expression, timezone, allow_seconds=self.allow_seconds)
        if input is not None:
            if len(input.encode()) > MAX_INPUT_BYTES:
                raise InvalidParameterValue(f"input must be at most {MAX_INPUT_BYTES} bytes")
            try:
                json.loads(input)
            except ValueError as exc:
                raise InvalidParameterValue(f"input is not valid JSON: {exc}") from None
        function, _, qualifier = target.partition(":")
        validate_name(function)
        await self.registry.get_function(account, function, qualifier or None)
        now = self.clock()
        next_tick = parsed.next_after(now, now)
        if next_tick is None:
            raise InvalidParameterValue(
                f"schedule expression {expression!r} has no tick after now"
                + (f" in {timezone}" if timezone != "UTC" else "")
            )
        schedule = Schedule(
            account,
            name,
            expression.strip(),
            timezone,
            function,
            qualifier,
            input,
            missed,
            "enabled",
            next_tick,
            now,
            None,
            0,
            now,
            now,
        )
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(schedules.insert().values(**asdict(schedule)))
        except IntegrityError:
            raise ResourceConflict(f"schedule {name} already exists") from None
        self.wake()
        return schedule

    async def get(self, account: str, name: str) -> Schedule:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(schedules).where(s.account_id == account, s.name == name)
                )
            ).first()
        if row is None:
            raise ResourceNotFound(f"schedule {name} not found")
        return Schedule(**row._mapping)

    async def list_schedules(self, account: str) -> list[Schedule]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(schedules).where(s.account_id == account).order_by(s.name)
            )
            return [Schedule(**row._mapping) for row in rows]

    async def delete(self, account: str, name: str) -> None:
        """Delete the schedule; events it already enqueued still run."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                schedules.delete().where(s.account_id == account, s.name == name)
            )
        if not result.rowcount:
            raise ResourceNotFound(f"schedule {name} not found")
        self.wake()

    async def pause(self, account: str, name: str) -> Schedule:
        """Stop firing (idempotent); ResourceConflict for a completed schedule."""
        current = await self.get(account, name)
        if current.state == "completed":
            raise ResourceConflict(f"schedule {name} has completed; nothing to pause")
        await self._update(account, name, state="paused")
        return await self.get(account, name)

    async def resume(self, account: str, name: str) -> Schedule:
        """Fire again from the first tick after now (idempotent); ticks while paused are
        not fired."""
        current = await self.get(account, name)
        if current.state != "paused":
            return current
        now = self.clock()
        tick = self._parse(current).next_after(now, current.anchor)
        await self._update(account, name, state="enabled" if tick else "completed", next_tick=tick)
        self.wake()
        return await self.get(account, name)

    async def _update(self, account: str, name: str, **values: Any) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(
                schedules.update()
                .where(s.account_id == account, s.name == name)
                .values(updated_at=self.clock(), **values)
            )

    def _parse(self, schedule: Schedule) -> Expression:
        # stored expressions were validated on create (seconds only where settings allowed)
        return parse_expression(schedule.expression, schedule.timezone, allow_seconds=True)

    # ---- firing ------------------------------------------------------------------------------

    async def fire_due(self) -> int:
        """Handle every overdue tick once; the number of events enqueued."""
        now = self.clock()
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(schedules)
                .where(s.state == "enabled", s.next_tick <= now)
                .order_by(s.next_tick)
                .limit(500)
            )
            due = [Schedule(**row._mapping) for row in rows]
        fired = 0
        for schedule in due:
            try:
                fired += await self._fire(schedule, now)
            except Exception:
                log.exception("schedule %s could not fire; retrying", schedule.name)
        if fired:
            self.invoker.wake()
        return fired

    async def _fire(self, schedule: Schedule, now: float) -> int:
        tick = schedule.next_tick
        assert tick is not None
        expression = self._parse(schedule)
        following = expression.next_after(tick, schedule.anchor)
        interval = MISSED_GRACE_S if following is None else following - tick
        on_time = now - tick <= min(MISSED_GRACE_S, interval / 2)
        fire = on_time or schedule.missed == "fire-once"
        if following is not None and following <= now:
            following = expression.next_after(now, schedule.anchor)
        event: dict[str, Any] | None = None
        if fire:
            config = await self.invoker.configs.lookup(
                schedule.account_id, schedule.function_name, schedule.qualifier or None
            )
            if schedule.input is not None:
                payload = schedule.input.encode()
            else:
                payload = json.dumps(scheduled_event(schedule, tick, self.region)).encode()
            event = self.invoker.row(
                schedule.account_id,
                schedule.function_name,
                schedule.qualifier or None,
                payload,
                max_attempts=config.retries + 1,
                max_age_s=config.max_age_s,
                source=f"schedule {schedule.name}",
            )
        elif not on_time:
            log.warning("schedule %s: skipping missed tick %s", schedule.name, _iso(tick))
        async with self.db.engine.begin() as conn:
            # only if nobody (another node, a restart) has handled this tick already
            moved = await conn.execute(
                schedules.update()
                .where(
                    s.account_id == schedule.account_id,
                    s.name == schedule.name,
                    s.state == "enabled",
                    s.next_tick == tick,
                )
                .values(
                    next_tick=following,
                    state="enabled" if following is not None else "completed",
                    last_tick=tick if event else s.last_tick,
                    fired=s.fired + (1 if event else 0),
                    updated_at=now,
                )
            )
            if moved.rowcount != 1:
                return 0
            if event is not None:
                await conn.execute(async_events.insert().values(**event))
        return 1 if event else 0

    async def _seconds_to_next(self) -> float:
        async with self.db.engine.connect() as conn:
            earliest = await conn.scalar(
                sa.select(sa.func.min(s.next_tick)).where(s.state == "enabled")
            )
        if earliest is None:
            return MAX_SLEEP_S
        return min(MAX_SLEEP_S, max(0.0, float(earliest) - self.clock()))

    # ---- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        """Re-read the schedules now (after a change)."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.fire_due()
                wait = await self._seconds_to_next()
            except Exception:
                log.exception("the scheduler failed; trying again")
                wait = 1.0
            with contextlib.suppress(TimeoutError):
                # a little late rather than early: an early wake-up finds nothing due
                await asyncio.wait_for(self._wakeup.wait(), wait + 0.002)

    async def close(self) -> None:
        """Stop the scheduler (idempotent). A tick being fired commits or rolls back whole."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
