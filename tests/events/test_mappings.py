"""Event source mappings queue → function through boto3's `lambda` and `sqs` clients."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, make_zip, read_marks, wait_for

# Records every record it gets (one file per delivery), fails the bodies asked to, and
# answers with the batchItemFailures shape the test chose.
CONSUMER = """
import json, os, uuid
def handler(event, context):
    failures = []
    for record in event["Records"]:
        body = json.loads(record["body"])
        with open(os.path.join(body["dir"], f"{body['id']}.{uuid.uuid4().hex}"), "w") as out:
            json.dump(record, out)
        if body.get("fail"):
            failures.append({"itemIdentifier": record["messageId"]})
        if body.get("raise"):
            raise RuntimeError("whole batch fails")
        if body.get("reply") is not None:
            return body["reply"]
    return {"batchItemFailures": failures}
"""


def _deploy(lam: Any, name: str = "consumer") -> None:
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": CONSUMER})},
    )


def _deliveries(marks: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in marks.iterdir():
        key = path.name.split(".", 1)[0]
        counts[key] = counts.get(key, 0) + 1
    return counts


def _queue(sqs: Any, name: str, **attributes: str) -> tuple[str, str]:
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]
    return url, arn["QueueArn"]


def _count(sqs: Any, url: str) -> int:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[n]) for n in names)


@pytest.fixture
def marks(tmp_path: Path) -> Path:
    path = tmp_path / "marks"
    path.mkdir()
    return path


def test_mapping_delivers_sqs_events_and_deletes_them(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url, arn = _queue(sqs, "in")
    sqs.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"dir": str(marks), "id": "first"}),
        MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}},
    )
    created = lam.create_event_source_mapping(
        EventSourceArn=arn, FunctionName="consumer", BatchSize=5
    )
    assert created["State"] == "Enabled" and created["BatchSize"] == 5
    assert created["FunctionArn"].endswith(":function:consumer")
    for i in range(20):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"dir": str(marks), "id": f"m{i}"}))
    wait_for(lambda: len(_deliveries(marks)) == 21)
    wait_for(lambda: _count(sqs, url) == 0)
    [path] = [p for p in marks.iterdir() if p.name.startswith("first.")]
    record = json.loads(path.read_text())
    assert record["eventSource"] == "aws:sqs" and record["eventSourceARN"] == arn
    assert record["awsRegion"] == "us-east-1"
    assert record["messageAttributes"]["k"]["stringValue"] == "v"
    assert record["messageAttributes"]["k"]["dataType"] == "String"
    assert record["attributes"]["ApproximateReceiveCount"] == "1"
    assert {"messageId", "receiptHandle", "body", "md5OfBody"} <= set(record)
    got = lam.get_event_source_mapping(UUID=created["UUID"])
    assert got["EventSourceArn"] == arn and got["LastProcessingResult"] == "OK"
    listed = lam.list_event_source_mappings(FunctionName="consumer")["EventSourceMappings"]
    assert [m["UUID"] for m in listed] == [created["UUID"]]
    updated = lam.update_event_source_mapping(UUID=created["UUID"], Enabled=False, BatchSize=3)
    assert updated["State"] == "Disabled" and updated["BatchSize"] == 3
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"dir": str(marks), "id": "idle"}))
    time.sleep(0.5)
    assert "idle" not in _deliveries(marks)
    lam.update_event_source_mapping(UUID=created["UUID"], Enabled=True)
    wait_for(lambda: "idle" in _deliveries(marks))
    assert lam.delete_event_source_mapping(UUID=created["UUID"])["State"] == "Deleting"
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.get_event_source_mapping(UUID=created["UUID"])


def test_report_batch_item_failures(server: RunningServer, lam: Any, marks: Path) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    _, dlq_arn = _queue(sqs, "dlq")
    dlq_url = sqs.get_queue_url(QueueName="dlq")["QueueUrl"]
    policy = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2})
    url, arn = _queue(sqs, "partial", VisibilityTimeout="2", RedrivePolicy=policy)
    entries = [
        {"Id": "ok1", "MessageBody": json.dumps({"dir": str(marks), "id": "ok1"})},
        {"Id": "bad", "MessageBody": json.dumps({"dir": str(marks), "id": "bad", "fail": 1})},
        {"Id": "ok2", "MessageBody": json.dumps({"dir": str(marks), "id": "ok2"})},
    ]
    sqs.send_message_batch(QueueUrl=url, Entries=entries)
    lam.create_event_source_mapping(
        EventSourceArn=arn,
        FunctionName="consumer",
        BatchSize=10,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    # the failed one is retried after the visibility timeout, then dead-lettered
    wait_for(lambda: _deliveries(marks).get("bad") == 2)
    wait_for(lambda: _count(sqs, dlq_url) == 1)
    deliveries = _deliveries(marks)
    assert deliveries["ok1"] == 1 and deliveries["ok2"] == 1
    [dead] = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert json.loads(dead["Body"])["id"] == "bad"
    assert _count(sqs, url) == 0


@pytest.mark.parametrize(
    "reply",
    [
        {"batchItemFailures": [{"itemIdentifier": "not-in-batch"}]},
        {"batchItemFailures": [{"itemIdentifier": ""}]},
        {"batchItemFailures": [{"wrongKey": "x"}]},
        {"batchItemFailures": "nope"},
    ],
)
def test_malformed_batch_item_failures_fail_the_whole_batch(
    server: RunningServer, lam: Any, marks: Path, reply: dict[str, Any]
) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url, arn = _queue(sqs, "strict", VisibilityTimeout="1")
    body = {"dir": str(marks), "id": "m", "reply": reply}
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    lam.create_event_source_mapping(
        EventSourceArn=arn,
        FunctionName="consumer",
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    wait_for(lambda: _deliveries(marks).get("m", 0) >= 2)  # redelivered: nothing was deleted


def test_empty_batch_item_failures_and_null_are_success(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url, arn = _queue(sqs, "lenient", VisibilityTimeout="2")
    for i, reply in enumerate([{"batchItemFailures": []}, {}, {"batchItemFailures": None}]):
        body = {"dir": str(marks), "id": f"m{i}", "reply": reply}
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps(body))
    lam.create_event_source_mapping(
        EventSourceArn=arn,
        FunctionName="consumer",
        BatchSize=1,
        FunctionResponseTypes=["ReportBatchItemFailures"],
    )
    wait_for(lambda: _count(sqs, url) == 0)
    time.sleep(2.5)  # past the visibility timeout: nothing comes back
    assert _deliveries(marks) == {"m0": 1, "m1": 1, "m2": 1}


def test_function_errors_keep_messages_and_deleted_consumer_loses_nothing(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    url, arn = _queue(sqs, "keep", VisibilityTimeout="1")
    sqs.send_message(
        QueueUrl=url, MessageBody=json.dumps({"dir": str(marks), "id": "boom", "raise": 1})
    )
    mapping = lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="consumer")
    wait_for(lambda: _deliveries(marks).get("boom", 0) >= 2)
    lam.delete_function(FunctionName="consumer")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"dir": str(marks), "id": "later"}))
    wait_for(
        lambda: lam.get_event_source_mapping(UUID=mapping["UUID"])[
            "LastProcessingResult"
        ].startswith("PROBLEM")
    )
    assert _count(sqs, url) == 2  # both messages still there, waiting for a consumer


def test_mapping_validation(server: RunningServer, lam: Any) -> None:
    sqs = server.client("sqs")
    _deploy(lam)
    _, arn = _queue(sqs, "v")
    _, fifo_arn = _queue(sqs, "v.fifo", FifoQueue="true")
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="missing")
    account = server.platform.root.account_id
    with pytest.raises(lam.exceptions.ResourceNotFoundException) as elsewhere:
        lam.create_event_source_mapping(
            EventSourceArn=arn,
            FunctionName=f"arn:aws:lambda:eu-north-1:{account}:function:consumer",
        )
    assert "not reachable in this region" in elsewhere.value.response["Error"]["Message"]
    with pytest.raises(lam.exceptions.InvalidParameterValueException) as no_queue:
        lam.create_event_source_mapping(
            EventSourceArn=arn.replace(":v", ":nope"), FunctionName="consumer"
        )
    assert "NonExistentQueue" in no_queue.value.response["Error"]["Message"]
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="consumer", BatchSize=50)
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.create_event_source_mapping(
            EventSourceArn=fifo_arn,
            FunctionName="consumer",
            BatchSize=20,
            MaximumBatchingWindowInSeconds=5,
        )
    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        lam.create_event_source_mapping(
            EventSourceArn=arn, FunctionName="consumer", ScalingConfig={"MaximumConcurrency": 1001}
        )
    created = lam.create_event_source_mapping(
        EventSourceArn=arn, FunctionName="consumer", ScalingConfig={"MaximumConcurrency": 2}
    )
    assert created["ScalingConfig"] == {"MaximumConcurrency": 2}
    with pytest.raises(lam.exceptions.ResourceConflictException):
        lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="consumer")


# One file per invocation: when it started and ended, and the bodies of its batch.
SPANS = """
import json, os, time, uuid
def handler(event, context):
    start = time.time()
    time.sleep(float(os.environ["SLEEP"]))
    bodies = [record["body"] for record in event["Records"]]
    with open(os.path.join(os.environ["MARKS"], uuid.uuid4().hex + ".json"), "w") as out:
        json.dump({"start": start, "end": time.time(), "bodies": bodies}, out)
"""


def _deploy_spans(lam: Any, name: str, marks: Path, sleep: float, timeout: int = 3) -> None:
    lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Timeout=timeout,
        Code={"ZipFile": make_zip({"app.py": SPANS})},
        Environment={"Variables": {"MARKS": str(marks), "SLEEP": str(sleep)}},
    )


def test_batching_window_fills_one_batch(server: RunningServer, lam: Any, marks: Path) -> None:
    sqs = server.client("sqs")
    _deploy_spans(lam, "batcher", marks, 0)
    url, arn = _queue(sqs, "trickle")
    lam.create_event_source_mapping(
        EventSourceArn=arn, FunctionName="batcher", BatchSize=10, MaximumBatchingWindowInSeconds=2
    )
    sqs.send_message(QueueUrl=url, MessageBody="a")
    time.sleep(0.7)  # within the window, while (with 5 pollers) the others are idle
    sqs.send_message(QueueUrl=url, MessageBody="b")
    wait_for(lambda: read_marks(marks))
    time.sleep(0.5)
    assert [sorted(m["bodies"]) for m in read_marks(marks)] == [["a", "b"]]


def test_concurrency_scales_up_to_maximum_concurrency(
    server: RunningServer, lam: Any, marks: Path
) -> None:
    sqs = server.client("sqs")
    _deploy_spans(lam, "busy", marks, 0.5)
    url, arn = _queue(sqs, "backlog")
    sqs.send_message_batch(
        QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": str(i)} for i in range(8)]
    )
    lam.create_event_source_mapping(
        EventSourceArn=arn,
        FunctionName="busy",
        BatchSize=1,
        ScalingConfig={"MaximumConcurrency": 2},
    )
    spans = wait_for(lambda: len(read_marks(marks)) == 8 and read_marks(marks), timeout=30)
    peak = max(sum(1 for s in spans if s["start"] <= t["start"] < s["end"]) for t in spans)
    assert peak == 2  # a backlog uses every poller, and never more
    assert sorted(b for s in spans for b in s["bodies"]) == [str(i) for i in range(8)]


def test_timed_out_consumer_keeps_its_batch(server: RunningServer, lam: Any, marks: Path) -> None:
    sqs = server.client("sqs")
    _deploy_spans(lam, "stuck", marks, 5, timeout=1)
    url, arn = _queue(sqs, "stuck", VisibilityTimeout="1")
    sqs.send_message(QueueUrl=url, MessageBody="kept")
    mapping = lam.create_event_source_mapping(EventSourceArn=arn, FunctionName="stuck")

    def result() -> str:
        found: str = lam.get_event_source_mapping(UUID=mapping["UUID"])["LastProcessingResult"]
        return found

    wait_for(lambda: result() == "PROBLEM: Function call failed", timeout=30)
    assert read_marks(marks) == []  # it never finished
    assert _count(sqs, url) == 1  # not deleted
    with server.sdk() as client:  # back after its visibility timeout, and timed out again
        records = wait_for(lambda: client.invocations("stuck")[1:] and client.invocations("stuck"))
    assert all(r["trigger"] == "sqs" and r["status"] == "timeout" for r in records)
