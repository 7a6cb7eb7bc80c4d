"""SIGKILL the server under async load: every accepted event still runs, no rejected one does."""

from __future__ import annotations

import json
import os
import signal
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

from tests.conftest import free_port, make_zip

KEY, SECRET = "AKIACRASHTEST0001", "crash-test-secret-key-0001"
MARK = """
import os, time, uuid
def handler(event, context):
    time.sleep(0.02)
    open(os.path.join(event["dir"], f"{event['id']}.{uuid.uuid4().hex}"), "w").close()
"""


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": KEY,
        "GUREUM_ROOT_SECRET_ACCESS_KEY": SECRET,
        "GUREUM_ASYNC_RETRY_BASE_S": "0.1",
        "GUREUM_SANDBOX": "process",  # the function leaves marks on the host file system
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gureum", "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
) -> None:
    """Run `send` on 6 threads, SIGKILL the server once `at_least` requests were accepted,
    restart it, and check: every accepted one ran, no refused one did."""
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

    server = _start(data_dir, port)
    try:

        def ran() -> set[str]:
            return {name.split(".", 1)[0] for name in os.listdir(marks)}

        deadline = time.monotonic() + 90
        while not accepted <= ran():
            assert time.monotonic() < deadline, f"never ran: {sorted(accepted - ran())[:10]}"
            time.sleep(0.2)
        assert not ran() & rejected, "something ran for a refused request"
        assert ran() <= accepted | unknown
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


_OPEN: list[Any] = []  # every client these tests make; closed after each test


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


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
