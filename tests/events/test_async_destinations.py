"""Async invoke configs (retries, event age), destinations, idempotency keys, bad requests on
the native API, and redrive (SDK and CLI)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gureum.client import Client
from gureum.errors import InvalidRequestContent, RequestTooLarge, ResourceNotFound
from gureum.store.schema import async_events
from tests.cli.test_cli import Cli, cli_env
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


def _queue_arn(sqs: Any, name: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def test_maximum_event_age_dead_letters_with_event_age_exceeded(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url, arn = _queue_arn(sqs, "too-old")
    lam.put_function_event_invoke_config(
        FunctionName="flaky",
        MaximumEventAgeInSeconds=60,
        DestinationConfig={"OnFailure": {"Destination": arn}},
    )
    # throttled: retried without using an attempt, until the event is too old
    lam.put_function_concurrency(FunctionName="flaky", ReservedConcurrentExecutions=0)
    response = lam.invoke(
        FunctionName="flaky",
        InvocationType="Event",
        Payload=json.dumps({"dir": str(marks), "id": "old"}),
    )
    platform = server.platform
    account = platform.root.account_id

    async def backdate() -> None:  # rather than wait a minute: the event was accepted 61 s ago
        async with platform.db.engine.begin() as conn:
            await conn.execute(async_events.update().values(created_at=time.time() - 61))

    server.run(backdate())
    [failed] = wait_for(lambda: server.run(platform.async_invoker.list_events(account, "failed")))
    assert failed["last_error"] == "maximum event age exceeded" and failed["attempts"] == 0
    [message] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)["Messages"]
    record = json.loads(message["Body"])
    assert record["requestContext"]["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert record["requestContext"]["condition"] == "EventAgeExceeded"
    assert record["requestPayload"] == {"dir": str(marks), "id": "old"}
    assert "responseContext" not in record and "responsePayload" not in record
    assert _runs(marks, "old") == 0


def test_idempotency_key_dedupes_only_within_the_window(
    server_factory: Callable[..., RunningServer], marks: Path
) -> None:
    server = server_factory(idempotency_window_s=1.0)
    with server.sdk() as client:
        client.create_function("flaky", make_zip({"app.py": FLAKY}), "app.handler")
        payload = json.dumps({"dir": str(marks), "id": "win"}).encode()
        first = client.invoke_async("flaky", payload, idempotency_key="k")
        assert client.invoke_async("flaky", payload, idempotency_key="k") == first
        time.sleep(1.2)
        later = client.invoke_async("flaky", payload, idempotency_key="k")
    assert later != first
    wait_for(lambda: _runs(marks, "win") == 2)


def test_native_async_invoke_refuses_bad_requests(server: RunningServer) -> None:
    with server.sdk() as client:
        client.create_function("flaky", make_zip({"app.py": FLAKY}), "app.handler")
        with pytest.raises(InvalidRequestContent, match="Could not parse request body into json"):
            client.invoke_async("flaky", b"not json")
        with pytest.raises(RequestTooLarge, match="1048576"):
            client.invoke_async("flaky", json.dumps("x" * 1024 * 1024).encode())
        with pytest.raises(ResourceNotFound, match="missing"):
            client.invoke_async("missing", b"{}")
        assert client.events() == []  # nothing refused was accepted


def test_redrive_cli(server: RunningServer, lam: Any, marks: Path, tmp_path: Path) -> None:
    _deploy(lam)
    lam.put_function_event_invoke_config(FunctionName="flaky", MaximumRetryAttempts=0)
    cli = Cli(cli_env(server, tmp_path))
    payload = json.dumps({"dir": str(marks), "id": "cli", "fail": 1})
    request_id = cli.json("invoke", "flaky", "--async", "--payload", payload)["request_id"]
    [dead] = wait_for(lambda: cli.json("events", "--state", "failed"))
    assert dead["request_id"] == request_id and "RuntimeError: nope" in dead["last_error"]
    assert cli.json("redrive", request_id) == {"redriven": 1}
    wait_for(lambda: _runs(marks, "cli") == 2 and cli.json("events", "--state", "failed"))
    assert cli.ok("redrive").stdout.strip() == "redriven: 1"
    wait_for(lambda: _runs(marks, "cli") == 3)
    missing = cli("redrive", "no-such-request")
    assert missing.exit_code == 1 and "ResourceNotFoundException" in missing.stderr


def test_dead_letter_config_gets_failed_events(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    """DeadLetterConfig as AWS has it: set on the function (SQS queue or SNS topic), returned
    in its configuration, and sent each event that failed for good, with its error."""
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="dlq")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    lam.create_function(
        FunctionName="flaky",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": FLAKY})},
        DeadLetterConfig={"TargetArn": arn},
    )
    assert lam.get_function_configuration(FunctionName="flaky")["DeadLetterConfig"] == {
        "TargetArn": arn
    }
    lam.put_function_event_invoke_config(FunctionName="flaky", MaximumRetryAttempts=1)
    payload = json.dumps({"dir": str(marks), "id": "bad", "fail": 1})
    sent = lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=payload)
    lam.invoke(
        FunctionName="flaky",
        InvocationType="Event",
        Payload=json.dumps({"dir": str(marks), "id": "good"}),
    )

    [message] = sqs.receive_message(
        QueueUrl=url, WaitTimeSeconds=20, MessageAttributeNames=["All"]
    )["Messages"]
    assert message["Body"] == payload
    attributes = {k: v["StringValue"] for k, v in message["MessageAttributes"].items()}
    assert attributes == {
        "RequestID": sent["ResponseMetadata"]["RequestId"],
        "ErrorCode": "200",
        "ErrorMessage": "nope",
    }
    assert _runs(marks, "bad") == 2  # the retry came first
    wait_for(lambda: _runs(marks, "good") == 1)
    time.sleep(0.5)
    assert not sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages")

    # an SNS-style topic works too; a TargetArn of "" removes it; a bad ARN is refused
    with server.sdk() as client:
        topic = client.create_topic("failures")
        client.subscribe("failures", "queue:dlq")
    lam.update_function_configuration(
        FunctionName="flaky", DeadLetterConfig={"TargetArn": topic["arn"]}
    )
    sent = lam.invoke(FunctionName="flaky", InvocationType="Event", Payload=payload)
    [message] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=20)["Messages"]
    note = json.loads(message["Body"])
    assert note["TopicArn"] == topic["arn"] and note["Message"] == payload
    assert note["MessageAttributes"]["RequestID"]["Value"] == sent["ResponseMetadata"]["RequestId"]
    assert note["MessageAttributes"]["ErrorMessage"]["Value"] == "nope"
    lam.update_function_configuration(FunctionName="flaky", DeadLetterConfig={"TargetArn": ""})
    assert "DeadLetterConfig" not in lam.get_function_configuration(FunctionName="flaky")
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.update_function_configuration(
            FunctionName="flaky", DeadLetterConfig={"TargetArn": "arn:aws:s3:::bucket"}
        )
