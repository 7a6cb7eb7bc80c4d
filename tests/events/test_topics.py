"""Topics on a real server: durable fan-out to functions and queues, filter policies,
independent failures, topics as async destinations, errors and the CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gureum.client import Client
from gureum.errors import InvalidParameterValue, RequestTooLarge, ResourceNotFound
from tests.cli.test_cli import Cli, cli_env
from tests.conftest import RunningServer, make_zip, read_marks, wait_for

MARK = """
import json, os, uuid
def handler(event, context):
    if os.environ.get("FAIL"):
        raise RuntimeError("subscriber is broken")
    path = os.path.join(os.environ["MARKS"], uuid.uuid4().hex + ".json")
    with open(path, "w") as f:
        json.dump(event, f)
"""


def _deploy(client: Client, name: str, tmp_path: Path, *, fail: bool = False) -> Path:
    marks = tmp_path / name
    marks.mkdir()
    environment = {"MARKS": str(marks), **({"FAIL": "1"} if fail else {})}
    client.create_function(name, make_zip({"app.py": MARK}), "app.handler", environment=environment)
    return marks


def _receive(sqs: Any, url: str, count: int) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    deadline = time.monotonic() + 10
    while len(bodies) < count and time.monotonic() < deadline:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in got.get("Messages", []):
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_fan_out_to_functions_and_a_queue_with_filters(
    server: RunningServer, tmp_path: Path
) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="inbox")["QueueUrl"]
    with server.sdk() as client:
        every = _deploy(client, "every", tmp_path)
        red = _deploy(client, "red", tmp_path)
        topic = client.create_topic("orders")
        assert topic["arn"] == f"arn:aws:sns:us-east-1:{server.platform.root.account_id}:orders"
        assert client.create_topic("orders") == topic  # idempotent
        client.subscribe("orders", "function:every")
        red_sub = client.subscribe(
            "orders", "function:red", {"color": ["red"], "size": [{"numeric": [">=", 10]}]}
        )
        client.subscribe("orders", "queue:inbox")
        assert client.list_topics() == [{**topic, "subscriptions": 3}]
        assert len(client.list_subscriptions("orders")) == 3

        sent = client.publish_message("orders", "first", {"color": "red", "size": 12}, subject="hi")
        assert sent["deliveries"] == 3
        assert client.publish_message("orders", "second", {"color": "blue"})["deliveries"] == 2
        assert client.publish_message("orders", "third", {"color": "red"})["deliveries"] == 2

        got = wait_for(lambda: len(read_marks(every)) == 3 and read_marks(every))
        assert sorted(m["Records"][0]["Sns"]["Message"] for m in got) == [
            "first",
            "second",
            "third",
        ]
        only = wait_for(lambda: read_marks(red))
        time.sleep(0.3)
        assert len(read_marks(red)) == 1
        record = only[0]["Records"][0]
        assert record["EventSource"] == "aws:sns" and record["EventVersion"] == "1.0"
        assert record["EventSubscriptionArn"] == red_sub["arn"]
        sns = record["Sns"]
        assert sns["Type"] == "Notification" and sns["Message"] == "first"
        assert sns["MessageId"] == sent["message_id"] and sns["TopicArn"] == topic["arn"]
        assert sns["Subject"] == "hi" and sns["Timestamp"].endswith("Z")
        assert sns["MessageAttributes"] == {
            "color": {"Type": "String", "Value": "red"},
            "size": {"Type": "Number", "Value": "12"},
        }
        bodies = _receive(sqs, url, 3)
        assert sorted(b["Message"] for b in bodies) == ["first", "second", "third"]
        assert all(b["Type"] == "Notification" and b["TopicArn"] == topic["arn"] for b in bodies)

        client.unsubscribe(red_sub["arn"])
        client.delete_topic("orders")
        assert client.list_topics() == []
        with pytest.raises(ResourceNotFound):
            client.list_subscriptions("orders")


def test_a_failing_subscriber_does_not_block_the_others(
    server: RunningServer, tmp_path: Path
) -> None:
    with server.sdk() as client:
        good = _deploy(client, "good", tmp_path)
        _deploy(client, "broken", tmp_path, fail=True)
        client.create_topic("alerts")
        client.subscribe("alerts", "function:broken")
        client.subscribe("alerts", "function:good")
        client.publish_message("alerts", "fire")
        assert wait_for(lambda: read_marks(good))[0]["Records"][0]["Sns"]["Message"] == "fire"

        def dead() -> list[dict[str, Any]]:
            return [e for e in client.events(state="failed") if e["function_name"] == "broken"]

        failed = wait_for(dead)
        assert failed[0]["attempts"] == 3 and "subscriber is broken" in failed[0]["last_error"]
        assert failed[0]["source"] == "topic alerts"
        good_events = [e for e in client.events() if e["function_name"] == "good"]
        assert [e["state"] for e in good_events] == ["succeeded"]


def test_unknown_topics_and_bad_input(server: RunningServer, tmp_path: Path) -> None:
    server.client("sqs").create_queue(QueueName="fifo.fifo", Attributes={"FifoQueue": "true"})
    with server.sdk() as client:
        _deploy(client, "fn", tmp_path)
        with pytest.raises(ResourceNotFound, match="topic nope not found"):
            client.publish_message("nope", "x")
        with pytest.raises(ResourceNotFound):
            client.subscribe("nope", "function:fn")
        with pytest.raises(ResourceNotFound):
            client.delete_topic("nope")
        client.create_topic("t")
        with pytest.raises(ResourceNotFound):
            client.subscribe("t", "function:missing")
        with pytest.raises(ResourceNotFound, match="queue missing not found"):
            client.subscribe("t", "queue:missing")
        with pytest.raises(InvalidParameterValue, match="FIFO"):
            client.subscribe("t", "queue:fifo.fifo")
        with pytest.raises(InvalidParameterValue, match="function:NAME"):
            client.subscribe("t", "email:someone@example.com")
        with pytest.raises(InvalidParameterValue, match="attribute 'n'"):
            client.subscribe("t", "function:fn", {"n": [{"numeric": ["~", 1]}]})
        with pytest.raises(InvalidParameterValue, match="invalid topic name"):
            client.create_topic("no spaces")
        with pytest.raises(RequestTooLarge):
            client.publish_message("t", "x" * (256 * 1024 + 1))
        with pytest.raises(InvalidParameterValue, match="message attribute 'b'"):
            client.publish_message("t", "x", {"b": True})
        with pytest.raises(ResourceNotFound):
            client.unsubscribe("not-a-subscription")
        assert client.publish_message("t", "nobody listens")["deliveries"] == 0


def test_topic_as_async_destination(server: RunningServer, lam: Any, tmp_path: Path) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="results")["QueueUrl"]
    with server.sdk() as client:
        _deploy(client, "work", tmp_path)
        topic = client.create_topic("done")
        client.subscribe("done", "queue:results")
        lam.put_function_event_invoke_config(
            FunctionName="work", DestinationConfig={"OnSuccess": {"Destination": topic["arn"]}}
        )
        request_id = client.invoke_async("work", b'{"job": 7}')
    [body] = _receive(sqs, url, 1)
    record = json.loads(body["Message"])
    assert body["TopicArn"] == topic["arn"]
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "Success"
    assert record["requestPayload"] == {"job": 7}


def test_retrying_is_its_own_state(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    server = server_factory(async_retry_base_s=30.0)
    with server.sdk() as client:
        _deploy(client, "broken", tmp_path, fail=True)
        request_id = client.invoke_async("broken", b"{}")
        retrying = wait_for(lambda: client.events(state="retrying"))
        assert [e["request_id"] for e in retrying] == [request_id]
        assert retrying[0]["state"] == "retrying" and retrying[0]["attempts"] == 1
        assert client.events(state="pending") == []


def test_topic_cli(server: RunningServer, tmp_path: Path) -> None:
    cli = Cli(cli_env(server, tmp_path))
    with server.sdk() as client:
        marks = _deploy(client, "fn", tmp_path)
    assert cli.json("topic", "create", "news")["name"] == "news"
    sub = cli.json("topic", "subscribe", "news", "function:fn", "--filter", '{"lang": ["ko"]}')
    assert sub["filter_policy"] == {"lang": ["ko"]}
    assert "news" in cli.ok("topic", "ls").stdout
    assert cli.json("topic", "ls", "news")[0]["endpoint"] == "function:fn"
    assert cli.json("topic", "publish", "news", "skipped", "--attr", "lang=en")["deliveries"] == 0
    published = cli.json("topic", "publish", "news", "안녕", "--attr", "lang=ko")
    assert published["deliveries"] == 1
    got = wait_for(lambda: read_marks(marks))
    assert got[0]["Records"][0]["Sns"]["Message"] == "안녕"
    assert cli("topic", "publish", "news", "x", "--attr", "novalue").exit_code == 2
    missing = cli("topic", "publish", "nope", "x")
    assert missing.exit_code == 1 and "ResourceNotFoundException" in missing.stderr
    cli.ok("topic", "unsubscribe", sub["arn"])
    cli.ok("topic", "rm", "news")
    assert cli.json("topic", "ls") == []
