"""Schedules on a real server (seconds-granular rates, a test-only setting): the function runs
with EventBridge's Scheduled Event, pause/resume, no tick twice across a restart, the CLI."""

from __future__ import annotations

import asyncio
import calendar
import itertools
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gureum.client import Client
from gureum.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound
from gureum.store.schema import async_events
from tests.cli.test_cli import Cli, cli_env
from tests.conftest import RunningServer, free_port, make_zip, read_marks, wait_for
from tests.events.test_crash_recovery import KEY, SECRET
from tests.events.test_crash_recovery import _start as start_gureum

MARK = """
import json, os, uuid
def handler(event, context):
    path = os.path.join(os.environ["MARKS"], uuid.uuid4().hex + ".json")
    with open(path, "w") as f:
        json.dump(event, f)
"""


def _deploy(client: Client, marks: Path) -> None:
    client.create_function(
        "mark", make_zip({"app.py": MARK}), "app.handler", environment={"MARKS": str(marks)}
    )


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def test_rate_schedule_fires_scheduled_events_and_pauses(
    server_factory: Callable[..., RunningServer], marks: Path
) -> None:
    server = server_factory(schedule_allow_seconds=True)
    with server.sdk() as client:
        _deploy(client, marks)
        created = client.create_schedule("tick", "rate(1 second)", "mark")
        assert created["state"] == "enabled" and created["target"] == "mark"
        assert created["next_tick"] > time.time() - 1
        wait_for(lambda: len(read_marks(marks)) >= 2, timeout=10)
        event = read_marks(marks)[0]
        assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
        assert event["resources"] == [created["arn"]] and event["detail"] == {}
        assert event["account"] == server.platform.root.account_id
        assert event["region"] == server.settings.region and event["time"].endswith("Z")

        paused = client.pause_schedule("tick")
        assert paused["state"] == "paused"
        time.sleep(0.3)  # a tick committed just before the pause may still be running
        count = len(read_marks(marks))
        time.sleep(2.0)
        assert len(read_marks(marks)) == count
        client.resume_schedule("tick")
        wait_for(lambda: len(read_marks(marks)) > count, timeout=5)
        client.delete_schedule("tick")
        with pytest.raises(ResourceNotFound):
            client.get_schedule("tick")
        events = [e for e in client.events(limit=1000) if e["source"] == "schedule tick"]
        assert events and all(e["function_name"] == "mark" for e in events)


def test_fixed_input_and_errors_over_the_api(server: RunningServer, marks: Path) -> None:
    with server.sdk() as client:
        _deploy(client, marks)
        start = time.time()
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start + 2))
        created = client.create_schedule("once", f"at({at})", "mark", input={"hello": [1, 2]})
        assert created["input"] == '{"hello": [1, 2]}'
        with pytest.raises(ResourceConflict):
            client.create_schedule("once", "rate(1 minute)", "mark")
        with pytest.raises(InvalidParameterValue, match="rate unit 'second'"):
            client.create_schedule("fast", "rate(1 second)", "mark")  # not a test server
        with pytest.raises(InvalidParameterValue, match="hour field '25'"):
            client.create_schedule("bad", "cron(0 25 * * ? *)", "mark")
        with pytest.raises(ResourceNotFound):
            client.create_schedule("nobody", "rate(1 minute)", "missing")
        assert wait_for(lambda: read_marks(marks), timeout=10) == [{"hello": [1, 2]}]
        assert time.time() >= int(start + 2)
        assert wait_for(lambda: client.get_schedule("once")["state"] == "completed")
        assert [s["name"] for s in client.list_schedules()] == ["once"]


async def _schedule_payloads(url: str) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = await conn.execute(
            sa.select(async_events.c.payload).where(async_events.c.source == "schedule tick")
        )
        payloads = [json.loads(row.payload) for row in rows]
    await engine.dispose()
    return payloads


def test_no_tick_fires_twice_across_a_restart(
    server_factory: Callable[..., RunningServer], marks: Path
) -> None:
    first = server_factory(schedule_allow_seconds=True)
    with first.sdk() as client:
        _deploy(client, marks)
        client.create_schedule("tick", "rate(1 second)", "mark")
        wait_for(lambda: len(read_marks(marks)) >= 2, timeout=10)
    first.stop()
    time.sleep(2.5)  # ticks missed while down: one catch-up (fire-once)
    second = server_factory(schedule_allow_seconds=True, port=first.settings.port)
    with second.sdk() as client:
        before = client.get_schedule("tick")["fired"]
        wait_for(lambda: client.get_schedule("tick")["fired"] >= before + 2, timeout=10)
    second.stop()
    payloads = asyncio.run(_schedule_payloads(second.settings.resolved_database_url))
    times = [p["time"] for p in payloads]
    assert len(times) == len(set(times)) >= 4  # never the same tick twice
    # one catch-up for the downtime, not one per missed tick
    seconds = sorted(calendar.timegm(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ")) for t in times)
    gaps = [b - a for a, b in itertools.pairwise(seconds)]
    assert max(gaps) >= 2.0


def test_schedule_cli(server_factory: Callable[..., RunningServer], tmp_path: Path) -> None:
    server = server_factory()
    cli = Cli(cli_env(server, tmp_path))
    with server.sdk() as client:
        _deploy(client, tmp_path)
    added = cli.json(
        "schedule", "add", "noon", "cron(0 12 * * ? *)", "mark",
        "--tz", "Europe/Berlin", "--missed", "skip", "--input", '{"a": 1}',
    )  # fmt: skip
    assert added["timezone"] == "Europe/Berlin" and added["missed"] == "skip"
    assert time.gmtime(added["next_tick"]).tm_min == 0
    assert "noon" in cli.ok("schedule", "ls").stdout
    assert cli.json("schedule", "pause", "noon")["state"] == "paused"
    assert cli.json("schedule", "resume", "noon")["state"] == "enabled"
    bad = cli("schedule", "add", "x", "cron(0 12 * * * *)", "mark")
    assert bad.exit_code == 1
    assert "InvalidParameterValueException" in bad.stderr and "day-of-week" in bad.stderr
    assert cli("schedule", "add", "x", "rate(1 minute)", "mark", "--input", "{").exit_code == 2
    cli.ok("schedule", "rm", "noon")
    assert cli.json("schedule", "ls") == []
    missing = cli("schedule", "rm", "noon")
    assert missing.exit_code == 1 and "ResourceNotFoundException" in missing.stderr


def test_sigkill_never_fires_a_tick_twice_and_loses_none(
    tmp_path: Path, marks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GUREUM_SCHEDULE_ALLOW_SECONDS", "1")
    data_dir, port = tmp_path / "data", free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = start_gureum(data_dir, port)
    try:
        with Client(endpoint, KEY, SECRET) as client:
            _deploy(client, marks)
            client.create_schedule("tick", "rate(1 second)", "mark")
            wait_for(lambda: len(read_marks(marks)) >= 3, timeout=15)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait(10)
    server = start_gureum(data_dir, port)
    try:
        with Client(endpoint, KEY, SECRET) as client:
            before = client.get_schedule("tick")["fired"]
            wait_for(lambda: client.get_schedule("tick")["fired"] >= before + 2, timeout=15)
            client.pause_schedule("tick")
            wait_for(lambda: not client.events(state="pending") + client.events(state="running"))
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
    url = f"sqlite+aiosqlite:///{data_dir / 'gureum.db'}"
    times = [p["time"] for p in asyncio.run(_schedule_payloads(url))]
    assert len(times) == len(set(times)) >= 5  # no tick enqueued twice
    assert set(times) <= {m["time"] for m in read_marks(marks)}  # every enqueued tick ran
