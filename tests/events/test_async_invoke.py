"""Durable Event invocations: accepted → run at least once, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer, make_zip, wait_for

FLAKY = """
import json, os
def handler(event, context):
    marker = os.path.join(event["dir"], event["id"])
    attempts = len([n for n in os.listdir(event["dir"]) if n.startswith(event["id"] + ".")])
    open(f"{marker}.{attempts}", "w").close()
    if attempts < event.get("fail_times", 0):
        raise RuntimeError(f"attempt {attempts} fails")
    return {"attempt": attempts}
"""


def _events(server: RunningServer, state: str | None = None) -> list[dict[str, Any]]:
    platform = server.platform
    return server.run(platform.async_invoker.list_events(platform.root.account_id, state, 1000))


def _marks(tmp_path: Path) -> Path:
    marks = tmp_path / "marks"
    marks.mkdir()
    return marks


def _deploy(lam: Any, name: str = "flaky") -> None:
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": FLAKY})},
    )


def test_event_retries_until_success(server: RunningServer, lam: Any, tmp_path: Path) -> None:
    _deploy(lam)
    tmp_path = _marks(tmp_path)
    payload = {"dir": str(tmp_path), "id": "e1", "fail_times": 2}
    response = lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=json.dumps(payload))
    assert response["StatusCode"] == 202
    request_id = response["ResponseMetadata"]["RequestId"]
    wait_for(lambda: any(e["state"] == "succeeded" for e in _events(server)))
    [event] = _events(server)
    assert event["request_id"] == request_id and event["attempts"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e1.0", "e1.1", "e1.2"]


def test_event_dead_lettered_after_max_attempts(
    server: RunningServer, lam: Any, tmp_path: Path
) -> None:
    _deploy(lam)
    tmp_path = _marks(tmp_path)
    payload = {"dir": str(tmp_path), "id": "e2", "fail_times": 99}
    lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=json.dumps(payload))
    wait_for(lambda: bool(_events(server, "failed")))
    [event] = _events(server, "failed")
    assert event["attempts"] == 3  # the first try and AWS's default 2 retries
    assert "RuntimeError: attempt 2 fails" in event["last_error"]
    time.sleep(0.3)
    assert len(list(tmp_path.iterdir())) == 3  # no further attempts after dead-lettering


def test_event_for_deleted_function_fails_visibly(server: RunningServer, lam: Any) -> None:
    _deploy(lam)
    lam.put_function_concurrency(FunctionName="flaky", ReservedConcurrentExecutions=0)
    lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=b"{}")
    time.sleep(0.3)  # throttled events are retried without using an attempt, never failed
    [event] = _events(server)
    assert event["state"] in ("pending", "running") and event["attempts"] == 0
    lam.delete_function(FunctionName="flaky")
    wait_for(lambda: bool(_events(server, "failed")))
    [event] = _events(server, "failed")
    assert "Function not found" in event["last_error"]


def test_concurrent_enqueues_are_all_committed(
    server: RunningServer, lam: Any, tmp_path: Path
) -> None:
    _deploy(lam)
    tmp_path = _marks(tmp_path)
    invoker = server.platform.async_invoker
    account = server.platform.root.account_id

    async def burst() -> list[str]:
        return await asyncio.gather(
            *(
                invoker.enqueue(
                    account,
                    "flaky",
                    None,
                    json.dumps({"dir": str(tmp_path), "id": f"b{i}"}).encode(),
                )
                for i in range(200)
            )
        )

    ids = server.run(burst(), timeout=30)
    assert len(set(ids)) == 200
    wait_for(lambda: len(_events(server, "succeeded")) == 200, timeout=60)
    assert len(list(tmp_path.iterdir())) == 200


SLOW = """
import os, time
def handler(event, context):
    open(os.path.join(event["dir"], f"{event['id']}.{context.aws_request_id}"), "w").close()
    time.sleep(5)
"""


def test_timed_out_event_is_in_flight_then_retried_then_dead_lettered(
    server: RunningServer, lam: Any, tmp_path: Path
) -> None:
    tmp_path = _marks(tmp_path)
    lam.create_function(
        FunctionName="slow",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Timeout=1,
        Code={"ZipFile": make_zip({"app.py": SLOW})},
    )
    lam.put_function_event_invoke_config(FunctionName="slow", MaximumRetryAttempts=1)
    payload = json.dumps({"dir": str(tmp_path), "id": "t"})
    lam.invoke(FunctionName="slow", InvocationType="Event", Payload=payload)
    [running] = wait_for(lambda: _events(server, "running"))  # in flight, listed as such
    assert running["attempts"] == 0
    [failed] = wait_for(lambda: _events(server, "failed"), timeout=30)
    assert failed["attempts"] == 2
    assert "Sandbox.Timedout" in failed["last_error"]
    assert "Task timed out after 1.00 seconds" in failed["last_error"]
    assert len(list(tmp_path.iterdir())) == 2  # the first try and one retry
