"""Async invoke configs (retries, event age), destinations, idempotency keys and redrive."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gureum.client import Client
from tests.conftest import RunningServer, make_zip, wait_for

FLAKY = """
import json, os, uuid
def handler(event, context):
    open(os.path.join(event["dir"], f"{event['id']}.{uuid.uuid4().hex}"), "w").close()
    if event.get("fail"):
        raise RuntimeError("nope")
    return {"ok": event["id"]}
"""


def _runs(marks: Path, event_id: str) -> int:
    return len([p for p in marks.iterdir() if p.name.startswith(event_id + ".")])


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def _deploy(lam: Any, name: str = "flaky") -> None:
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": FLAKY})},
    )


def test_event_invoke_config_crud(server: RunningServer, lam: Any) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url = sqs.create_queue(QueueName="dest")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_event_invoke_config(FunctionName="flaky")
    put = lam.put_function_event_invoke_config(
        FunctionName="flaky",
        MaximumRetryAttempts=0,
        MaximumEventAgeInSeconds=120,
        DestinationConfig={"OnFailure": {"Destination": arn}},
    )
    assert put["MaximumRetryAttempts"] == 0 and put["MaximumEventAgeInSeconds"] == 120
    assert put["FunctionArn"].endswith(":function:flaky:$LATEST")
    assert put["DestinationConfig"]["OnFailure"]["Destination"] == arn
    updated = lam.update_function_event_invoke_config(FunctionName="flaky", MaximumRetryAttempts=1)
    assert updated["MaximumRetryAttempts"] == 1 and updated["MaximumEventAgeInSeconds"] == 120
    got = lam.get_function_event_invoke_config(FunctionName="flaky")
    assert got["DestinationConfig"]["OnFailure"]["Destination"] == arn
    listed = lam.list_function_event_invoke_configs(FunctionName="flaky")
    assert len(listed["FunctionEventInvokeConfigs"]) == 1
    root = server.platform.root
    raw = boto3.client(
        "lambda",
        endpoint_url=server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=root.access_key_id,
        aws_secret_access_key=root.secret_access_key,
        config=Config(parameter_validation=False, retries={"max_attempts": 0}),
    )
    server.clients.append(raw)  # closed with the server: a collected client's socket warns
    with pytest.raises(raw.exceptions.InvalidParameterValueException):
        raw.put_function_event_invoke_config(FunctionName="flaky", MaximumRetryAttempts=3)
    with pytest.raises(raw.exceptions.InvalidParameterValueException):
        raw.put_function_event_invoke_config(
            FunctionName="flaky", DestinationConfig={"OnSuccess": {"Destination": "nonsense"}}
        )
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.put_function_event_invoke_config(FunctionName="missing", MaximumRetryAttempts=0)
    lam.delete_function_event_invoke_config(FunctionName="flaky")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_function_event_invoke_config(FunctionName="flaky")


def test_destinations_get_aws_records(server: RunningServer, lam: Any, marks: Path) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    urls, arns = {}, {}
    for name in ("ok", "failed"):
        urls[name] = sqs.create_queue(QueueName=name)["QueueUrl"]
        arns[name] = sqs.get_queue_attributes(QueueUrl=urls[name], AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
    lam.put_function_event_invoke_config(
        FunctionName="flaky",
        MaximumRetryAttempts=0,
        DestinationConfig={
            "OnSuccess": {"Destination": arns["ok"]},
            "OnFailure": {"Destination": arns["failed"]},
        },
    )
    good = lam.invoke(
        FunctionName="flaky",
        InvocationType="Event",
        Payload=json.dumps({"dir": str(marks), "id": "good"}),
    )
    bad = lam.invoke(
        FunctionName="flaky",
        InvocationType="Event",
        Payload=json.dumps({"dir": str(marks), "id": "bad", "fail": 1}),
    )
    [success] = sqs.receive_message(QueueUrl=urls["ok"], WaitTimeSeconds=20)["Messages"]
    record = json.loads(success["Body"])
    assert record["version"] == "1.0"
    assert record["requestContext"]["requestId"] == good["ResponseMetadata"]["RequestId"]
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestContext"]["functionArn"].endswith(":function:flaky:$LATEST")
    assert record["requestPayload"]["id"] == "good"
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"ok": "good"}
    [failure] = sqs.receive_message(QueueUrl=urls["failed"], WaitTimeSeconds=20)["Messages"]
    record = json.loads(failure["Body"])
    assert record["requestContext"]["requestId"] == bad["ResponseMetadata"]["RequestId"]
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 1  # MaximumRetryAttempts=0
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert record["responsePayload"]["errorType"] == "RuntimeError"
    assert _runs(marks, "bad") == 1


SINK = """
import json, os
def handler(event, context):
    with open(os.path.join(event["requestPayload"]["dir"], "sink.record"), "w") as out:
        json.dump(event, out)
"""


def test_function_destination(server: RunningServer, lam: Any, marks: Path) -> None:
    _deploy(lam)
    lam.create_function(
        FunctionName="sink",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": SINK})},
    )
    sink_arn = lam.get_function(FunctionName="sink")["Configuration"]["FunctionArn"]
    lam.put_function_event_invoke_config(
        FunctionName="flaky", DestinationConfig={"OnSuccess": {"Destination": sink_arn}}
    )
    response = lam.invoke(
        FunctionName="flaky",
        InvocationType="Event",
        Payload=json.dumps({"dir": str(marks), "id": "chain"}),
    )
    wait_for(lambda: (marks / "sink.record").exists())
    time.sleep(0.2)
    record = json.loads((marks / "sink.record").read_text())
    assert record["requestContext"]["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert record["requestContext"]["condition"] == "Success"
    assert record["responsePayload"] == {"ok": "chain"}


def test_idempotency_key_dedupes(server: RunningServer, lam: Any, marks: Path) -> None:
    _deploy(lam)
    payload = json.dumps({"dir": str(marks), "id": "once"}).encode()
    with server.sdk() as client:
        first = client.invoke_async("flaky", payload, idempotency_key="order-42")
        again = client.invoke_async("flaky", payload, idempotency_key="order-42")
        other = client.invoke_async("flaky", payload, idempotency_key="order-43")
    assert first == again != other

    # the Lambda API takes the same key as a header (added here through botocore's events)
    def add_key(request: Any, **_: Any) -> None:
        request.headers["Idempotency-Key"] = "lambda-1"

    lam.meta.events.register("before-sign.lambda.Invoke", add_key)
    ids = {
        lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=payload)[
            "ResponseMetadata"
        ]["RequestId"]
        for _ in range(3)
    }
    assert len(ids) == 1
    wait_for(lambda: _runs(marks, "once") == 3)
    time.sleep(0.5)
    assert _runs(marks, "once") == 3  # order-42 once, order-43 once, lambda-1 once


def test_dead_letters_are_listed_and_redriven(server: RunningServer, lam: Any, marks: Path) -> None:
    _deploy(lam)
    lam.put_function_event_invoke_config(FunctionName="flaky", MaximumRetryAttempts=1)
    with server.sdk() as client:
        _redrive(client, marks)


def _redrive(client: Client, marks: Path) -> None:
    request_id = client.invoke_async(
        "flaky", json.dumps({"dir": str(marks), "id": "dead", "fail": 1}).encode()
    )
    wait_for(lambda: [e["request_id"] for e in client.events("failed")] == [request_id])
    [dead] = client.events("failed")
    assert dead["attempts"] == 2 and "RuntimeError: nope" in dead["last_error"]
    assert _runs(marks, "dead") == 2
    assert client.redrive(request_id) == 1
    wait_for(lambda: _runs(marks, "dead") == 4)
    wait_for(lambda: len(client.events("failed")) == 1)
    assert client.redrive() == 1
