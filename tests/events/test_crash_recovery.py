"""SIGKILL the server under async load: every accepted event still runs, no rejected one does,
and no schedule tick is ever fired twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

from gureum.client import Client
from tests.conftest import free_port, make_zip

KEY, SECRET = "AKIACRASHTEST0001", "crash-test-secret-key-0001"
MARK = """
import os, time, uuid
def handler(event, context):
    time.sleep(0.02)
    open(os.path.join(event["dir"], f"{event['id']}.{uuid.uuid4().hex}"), "w").close()
"""


_SERVERS: list[subprocess.Popen[bytes]] = []  # every server the tests start; none outlives its test


def _start(
    data_dir: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": KEY,
        "GUREUM_ROOT_SECRET_ACCESS_KEY": SECRET,
        "GUREUM_ASYNC_RETRY_BASE_S": "0.1",
        "GUREUM_SANDBOX": "process",  # the function leaves marks on the host file system
        **(extra_env or {}),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gureum", "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _SERVERS.append(proc)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "gureum up exited during start-up"
        assert time.monotonic() < deadline, "gureum up did not start"
        time.sleep(0.1)


def _kill_under_load_then_check(
    server: subprocess.Popen[bytes],
    send: Any,
    data_dir: Path,
    port: int,
    marks: Path,
    outcomes: tuple[set[str], set[str], set[str]],
    at_least: int,
    extra_env: dict[str, str] | None = None,
    after_restart: Any = None,
) -> None:
    """Run `send` on 6 threads, SIGKILL the server once `at_least` requests were accepted,
    restart it, and check: every accepted one ran, no refused one did. `after_restart()`
    runs last, before the restarted server is stopped."""
    accepted, rejected, unknown = outcomes
    threads = [threading.Thread(target=send, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 30
    while len(accepted) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    server.send_signal(signal.SIGKILL)
    server.wait(10)
    for thread in threads:
        thread.join(60)
    assert len(accepted) >= at_least and rejected

    server = _start(data_dir, port, extra_env)
    try:

        def ran() -> set[str]:
            return {name.split(".", 1)[0] for name in os.listdir(marks)}

        deadline = time.monotonic() + 90
        while not accepted <= ran():
            assert time.monotonic() < deadline, f"never ran: {sorted(accepted - ran())[:10]}"
            time.sleep(0.2)
        assert not ran() & rejected, "something ran for a refused request"
        assert ran() <= accepted | unknown
        if after_restart is not None:
            after_restart()
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


_OPEN: list[Any] = []  # every client these tests make; closed after each test


@pytest.fixture(autouse=True)
def _close_clients_and_servers() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()
    while _SERVERS:
        server = _SERVERS.pop()
        if server.poll() is None:  # a test that failed before stopping it
            server.kill()
            server.wait()


def _client(port: int) -> Any:
    return _tracked(
        boto3.client(
            "lambda",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=10),
        )
    )


def test_sigkill_during_async_load_loses_nothing(tmp_path: Path) -> None:
    data_dir, marks = tmp_path / "data", tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    server = _start(data_dir, port)
    lam = _client(port)
    lam.create_function(
        FunctionName="mark",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": MARK})},
    )
    accepted: set[str] = set()
    rejected: set[str] = set()
    unknown: set[str] = set()
    lock = threading.Lock()

    def send(worker: int) -> None:
        client = _client(port)
        for i in range(60):
            event_id = f"w{worker}-{i}"
            payload: dict[str, Any] = {"dir": str(marks), "id": event_id}
            if i % 10 == 9:  # over the 1 MB async limit: must be refused and never run
                payload["pad"] = "x" * (1024 * 1024 + 1)
            try:
                response = client.invoke(
                    FunctionName="mark", InvocationType="Event", Payload=json.dumps(payload)
                )
                outcome = accepted if response["StatusCode"] == 202 else unknown
            except ClientError:
                outcome = rejected
            except (EndpointConnectionError, OSError, Exception):
                outcome = unknown  # the connection died with the server: either way is fine
            with lock:
                outcome.add(event_id)

    _kill_under_load_then_check(
        server, send, data_dir, port, marks, (accepted, rejected, unknown), at_least=120
    )


SQS_MARK = """
import json, os, uuid
def handler(event, context):
    for record in event["Records"]:
        body = json.loads(record["body"])
        open(os.path.join(body["dir"], f"{body['id']}.{uuid.uuid4().hex}"), "w").close()
"""


def _tracked(client: Any) -> Any:
    _OPEN.append(client)
    return client


def _sqs(port: int) -> Any:
    return _tracked(
        boto3.client(
            "sqs",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=10),
        )
    )


def test_sigkill_during_queue_load_loses_no_message(tmp_path: Path) -> None:
    data_dir, marks = tmp_path / "data", tmp_path / "marks"
    marks.mkdir()
    port = free_port()
    server = _start(data_dir, port)
    lam, sqs = _client(port), _sqs(port)
    lam.create_function(
        FunctionName="sqsmark",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": SQS_MARK})},
    )
    url = sqs.create_queue(QueueName="load", Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="sqsmark", BatchSize=10)
    accepted: set[str] = set()
    rejected: set[str] = set()
    unknown: set[str] = set()
    lock = threading.Lock()

    def send(worker: int) -> None:
        client = _sqs(port)
        for i in range(80):
            message_id = f"q{worker}-{i}"
            body: dict[str, Any] = {"dir": str(marks), "id": message_id}
            if i % 10 == 9:  # over 256 KiB: must be refused and never delivered
                body["pad"] = "x" * 262_144
            try:
                client.send_message(QueueUrl=url, MessageBody=json.dumps(body))
                outcome = accepted
            except ClientError:
                outcome = rejected
            except Exception:
                outcome = unknown  # the connection died with the server
            with lock:
                outcome.add(message_id)

    _kill_under_load_then_check(
        server, send, data_dir, port, marks, (accepted, rejected, unknown), at_least=150
    )


MIXED = """
import json, os, uuid
def mark(directory, name):
    open(os.path.join(directory, f"{name}.{uuid.uuid4().hex}"), "w").close()
def handler(event, context):
    if event.get("detail-type") == "Scheduled Event":
        mark(os.environ["TICKS"], f"{event['time']}~{event['id']}")
    elif "Records" in event:
        for record in event["Records"]:
            body = json.loads(record["body"])
            mark(body["dir"], body["id"])
    else:
        mark(event["dir"], event["id"])
"""


def test_sigkill_during_mixed_load_loses_nothing_and_fires_no_tick_twice(
    tmp_path: Path,
) -> None:
    """Invokes, queue messages and a once-a-second schedule at once, then SIGKILL."""
    data_dir, marks, ticks = tmp_path / "data", tmp_path / "marks", tmp_path / "ticks"
    marks.mkdir()
    ticks.mkdir()
    port = free_port()
    env = {"GUREUM_SCHEDULE_ALLOW_SECONDS": "1"}
    server = _start(data_dir, port, env)
    lam, sqs = _client(port), _sqs(port)
    lam.create_function(
        FunctionName="mixed",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": MIXED})},
        Environment={"Variables": {"TICKS": str(ticks)}},
    )
    url = sqs.create_queue(QueueName="mixed", Attributes={"VisibilityTimeout": "2"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="mixed", BatchSize=10)
    endpoint = f"http://127.0.0.1:{port}"
    with Client(endpoint, KEY, SECRET) as client:
        client.create_schedule("tick", "rate(1 second)", "mixed")
    deadline = time.monotonic() + 15
    while not os.listdir(ticks):  # the schedule is firing before the load starts
        assert time.monotonic() < deadline, "the schedule never fired"
        time.sleep(0.1)
    accepted: set[str] = set()
    rejected: set[str] = set()
    unknown: set[str] = set()
    lock = threading.Lock()

    def send(worker: int) -> None:
        invoke = worker % 2 == 0  # half the threads invoke, half send queue messages
        client = _client(port) if invoke else _sqs(port)
        for i in range(60):
            event_id = f"{'e' if invoke else 'q'}{worker}-{i}"
            payload: dict[str, Any] = {"dir": str(marks), "id": event_id}
            if i % 10 == 9:  # over the limit: must be refused and never run
                payload["pad"] = "x" * ((1024 * 1024 + 1) if invoke else 262_144)
            try:
                if invoke:
                    response = client.invoke(
                        FunctionName="mixed", InvocationType="Event", Payload=json.dumps(payload)
                    )
                    outcome = accepted if response["StatusCode"] == 202 else unknown
                else:
                    client.send_message(QueueUrl=url, MessageBody=json.dumps(payload))
                    outcome = accepted
            except ClientError:
                outcome = rejected
            except Exception:
                outcome = unknown  # the connection died with the server: either way is fine
            with lock:
                outcome.add(event_id)

    def ticks_settle() -> None:
        with Client(endpoint, KEY, SECRET) as client:
            before = client.get_schedule("tick")["fired"]
            deadline = time.monotonic() + 30
            while client.get_schedule("tick")["fired"] < before + 2:  # fires after the restart
                assert time.monotonic() < deadline, "the schedule stopped firing"
                time.sleep(0.2)
            client.pause_schedule("tick")
            deadline = time.monotonic() + 60
            while client.events(state="pending") + client.events(state="running"):
                assert time.monotonic() < deadline, "tick events never finished"
                time.sleep(0.2)

    _kill_under_load_then_check(
        server,
        send,
        data_dir,
        port,
        marks,
        (accepted, rejected, unknown),
        at_least=120,
        extra_env=env,
        after_restart=ticks_settle,
    )
    with sqlite3.connect(data_dir / "gureum.db") as db:
        rows = db.execute(
            "SELECT payload FROM async_events WHERE source = 'schedule tick'"
        ).fetchall()
    fired = [json.loads(payload) for (payload,) in rows]
    times = [event["time"] for event in fired]
    assert len(times) == len(set(times)) >= 4, "a tick was enqueued twice"
    ran: dict[str, set[str]] = {}
    for name in os.listdir(ticks):
        tick_time, _, event_id = name.rsplit(".", 1)[0].partition("~")
        ran.setdefault(tick_time, set()).add(event_id)
    assert all(len(ids) == 1 for ids in ran.values()), "a tick ran as two different events"
    assert {event["time"]: {event["id"]} for event in fired} == ran  # every fired tick ran
