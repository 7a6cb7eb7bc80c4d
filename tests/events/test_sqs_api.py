"""boto3's `sqs` client against a real server: queues, messages, visibility, FIFO, DLQ."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
import time
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import RunningServer


@pytest.fixture
def sqs(server: RunningServer) -> Any:
    return server.client("sqs")


def _independent_attributes_md5(attributes: dict[str, dict[str, Any]]) -> str:
    """AWS's documented algorithm, written out separately from the server's."""
    data = b""
    for name in sorted(attributes):
        value = attributes[name]
        data += struct.pack("!I", len(name)) + name.encode()
        data += struct.pack("!I", len(value["DataType"])) + value["DataType"].encode()
        if "StringValue" in value:
            raw = value["StringValue"].encode()
            data += b"\x01" + struct.pack("!I", len(raw)) + raw
        else:
            data += b"\x02" + struct.pack("!I", len(value["BinaryValue"])) + value["BinaryValue"]
    return hashlib.md5(data).hexdigest()


def test_queue_lifecycle(server: RunningServer, sqs: Any) -> None:
    url = sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "7"})["QueueUrl"]
    account = server.platform.root.account_id
    assert url == f"{server.endpoint}/{account}/orders"
    # same name and attributes: the same queue; different attributes: QueueNameExists
    assert (
        sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "7"})["QueueUrl"]
        == url
    )
    with pytest.raises(sqs.exceptions.QueueNameExists):
        sqs.create_queue(QueueName="orders", Attributes={"VisibilityTimeout": "8"})
    assert sqs.get_queue_url(QueueName="orders")["QueueUrl"] == url
    sqs.create_queue(QueueName="other")
    assert sqs.list_queues()["QueueUrls"] == [url, f"{server.endpoint}/{account}/other"]
    assert sqs.list_queues(QueueNamePrefix="ord")["QueueUrls"] == [url]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "7"
    assert attributes["QueueArn"] == f"arn:aws:sqs:us-east-1:{account}:orders"
    assert attributes["ApproximateNumberOfMessages"] == "0"
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "3"})
    got = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["DelaySeconds"])
    assert got["Attributes"] == {"DelaySeconds": "3"}
    with pytest.raises(ClientError) as bad:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "99999"})
    assert bad.value.response["Error"]["Code"] == "InvalidAttributeValue"
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(sqs.exceptions.QueueDoesNotExist) as gone:
        sqs.send_message(QueueUrl=url, MessageBody="x")
    assert gone.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"


def test_send_receive_delete_with_attributes(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="q")["QueueUrl"]
    attributes = {
        "kind": {"DataType": "String", "StringValue": "order"},
        "count": {"DataType": "Number", "StringValue": "42"},
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01binary"},
    }
    sent = sqs.send_message(QueueUrl=url, MessageBody="héllo", MessageAttributes=attributes)
    assert sent["MD5OfMessageBody"] == hashlib.md5("héllo".encode()).hexdigest()
    assert sent["MD5OfMessageAttributes"] == _independent_attributes_md5(attributes)
    [message] = sqs.receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], AttributeNames=["All"]
    )["Messages"]
    assert message["Body"] == "héllo" and message["MessageId"] == sent["MessageId"]
    assert message["MessageAttributes"] == attributes
    assert message["MD5OfMessageAttributes"] == sent["MD5OfMessageAttributes"]
    assert message["Attributes"]["ApproximateReceiveCount"] == "1"
    assert abs(int(message["Attributes"]["SentTimestamp"]) / 1000 - time.time()) < 60
    # in flight: nothing else to receive; once deleted it is gone for good
    assert "Messages" not in sqs.receive_message(QueueUrl=url) or not sqs.receive_message(
        QueueUrl=url
    ).get("Messages")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])  # idempotent
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == "0"
    assert counts["ApproximateNumberOfMessagesNotVisible"] == "0"
    with pytest.raises(sqs.exceptions.ReceiptHandleIsInvalid):
        sqs.delete_message(QueueUrl=url, ReceiptHandle="garbage")


def test_visibility_timeout_and_change_visibility(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="vis", Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="m")
    first = sqs.receive_message(QueueUrl=url)["Messages"][0]
    assert not sqs.receive_message(QueueUrl=url).get("Messages")
    again = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=3, AttributeNames=["All"])
    [second] = again["Messages"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    # the stale handle no longer owns the message: deleting with it leaves it in place
    sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
    sqs.change_message_visibility(
        QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=0
    )
    [third] = sqs.receive_message(QueueUrl=url, VisibilityTimeout=30)["Messages"]
    assert third["MessageId"] == first["MessageId"]
    with pytest.raises(sqs.exceptions.MessageNotInflight):
        sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=second["ReceiptHandle"], VisibilityTimeout=5
        )


def test_long_poll_wakes_on_send_without_waiting_out(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="long")["QueueUrl"]
    sender = threading.Timer(0.5, lambda: sqs.send_message(QueueUrl=url, MessageBody="late"))
    started = time.monotonic()
    sender.start()
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=10)
    elapsed = time.monotonic() - started
    sender.join()
    assert [m["Body"] for m in got["Messages"]] == ["late"]
    assert 0.4 < elapsed < 3
    started = time.monotonic()
    assert not sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages")
    assert time.monotonic() - started >= 0.9


def test_batches_and_per_entry_failures(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="batch")["QueueUrl"]
    result = sqs.send_message_batch(
        QueueUrl=url,
        Entries=[
            {"Id": "a", "MessageBody": "one"},
            {"Id": "b", "MessageBody": "two", "DelaySeconds": 0},
            {"Id": "bad", "MessageBody": "\x00 not allowed"},
        ],
    )
    assert sorted(s["Id"] for s in result["Successful"]) == ["a", "b"]
    [failed] = result["Failed"]
    assert failed["Id"] == "bad" and failed["SenderFault"]
    assert failed["Code"] == "InvalidMessageContents"
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert sorted(m["Body"] for m in got) == ["one", "two"]
    deleted = sqs.delete_message_batch(
        QueueUrl=url,
        Entries=[{"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)]
        + [{"Id": "x", "ReceiptHandle": "nonsense"}],
    )
    assert len(deleted["Successful"]) == 2
    assert [f["Code"] for f in deleted["Failed"]] == ["ReceiptHandleIsInvalid"]
    with pytest.raises(sqs.exceptions.BatchEntryIdsNotDistinct):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": "a", "MessageBody": "1"}, {"Id": "a", "MessageBody": "2"}],
        )
    with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest):
        sqs.send_message_batch(
            QueueUrl=url, Entries=[{"Id": f"e{i}", "MessageBody": "x"} for i in range(11)]
        )
    with pytest.raises(sqs.exceptions.BatchRequestTooLong):
        sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": f"e{i}", "MessageBody": "x" * 100_000} for i in range(3)],
        )


def test_oversized_and_malformed_messages_are_refused(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="limits")["QueueUrl"]
    with pytest.raises(ClientError) as big:
        sqs.send_message(QueueUrl=url, MessageBody="x" * (262_144 + 1))
    error = big.value.response["Error"]
    assert error["Code"] == "InvalidParameterValue"
    assert "Message must be shorter than 262144 bytes" in error["Message"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * 262_144)  # exactly the limit is fine
    with pytest.raises(ClientError) as bad_number:
        sqs.send_message(
            QueueUrl=url,
            MessageBody="x",
            MessageAttributes={"n": {"DataType": "Number", "StringValue": "abc"}},
        )
    assert bad_number.value.response["Error"]["Code"] == "InvalidParameterValue"
    with pytest.raises(ClientError) as bad_delay:
        sqs.send_message(QueueUrl=url, MessageBody="x", DelaySeconds=901)
    assert bad_delay.value.response["Error"]["Code"] == "InvalidParameterValue"
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert counts["Attributes"]["ApproximateNumberOfMessages"] == "1"
    sqs.purge_queue(QueueUrl=url)
    counts = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    assert counts["Attributes"]["ApproximateNumberOfMessages"] == "0"


def test_delay_seconds(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="delayed")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=1)
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert attrs["ApproximateNumberOfMessagesDelayed"] == "1"
    assert not sqs.receive_message(QueueUrl=url).get("Messages")
    started = time.monotonic()
    got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    assert got[0]["Body"] == "later" and time.monotonic() - started < 3


def test_queue_delay_seconds_applies_unless_the_message_sets_its_own(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="slow-start", Attributes={"DelaySeconds": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="queue delay")
    sqs.send_message(QueueUrl=url, MessageBody="no delay", DelaySeconds=0)
    [first] = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert first["Body"] == "no delay"
    started = time.monotonic()
    [second] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    assert second["Body"] == "queue delay" and time.monotonic() - started < 3


def test_redrive_to_dead_letter_queue(sqs: Any) -> None:
    dlq = sqs.create_queue(QueueName="dead")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": 2}}'
    url = sqs.create_queue(
        QueueName="work", Attributes={"RedrivePolicy": policy, "VisibilityTimeout": "0"}
    )["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    for _ in range(2):
        assert sqs.receive_message(QueueUrl=url)["Messages"][0]["Body"] == "poison"
    assert not sqs.receive_message(QueueUrl=url).get("Messages")
    [dead] = sqs.receive_message(QueueUrl=dlq, AttributeNames=["All"])["Messages"]
    assert dead["Body"] == "poison"
    work_arn = dlq_arn.replace(":dead", ":work")
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == work_arn
    with pytest.raises(ClientError) as bad:
        sqs.create_queue(
            QueueName="w2",
            Attributes={"RedrivePolicy": policy.replace(":dead", ":missing")},
        )
    assert bad.value.response["Error"]["Code"] == "InvalidAttributeValue"


def test_fifo_ordering_and_deduplication(sqs: Any) -> None:
    url = sqs.create_queue(
        QueueName="jobs.fifo",
        Attributes={"FifoQueue": "true", "ContentBasedDeduplication": "true"},
    )["QueueUrl"]
    first = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="a")
    duplicate = sqs.send_message(QueueUrl=url, MessageBody="a1", MessageGroupId="a")
    assert duplicate["MessageId"] == first["MessageId"]
    explicit = sqs.send_message(
        QueueUrl=url, MessageBody="a2", MessageGroupId="a", MessageDeduplicationId="k2"
    )
    again = sqs.send_message(
        QueueUrl=url, MessageBody="other", MessageGroupId="a", MessageDeduplicationId="k2"
    )
    assert again["MessageId"] == explicit["MessageId"]
    assert int(explicit["SequenceNumber"]) > int(first["SequenceNumber"])
    sqs.send_message(QueueUrl=url, MessageBody="b1", MessageGroupId="b")
    # one message per receive: group a's head blocks a2 until a1 is deleted
    [m1] = sqs.receive_message(QueueUrl=url, AttributeNames=["All"])["Messages"]
    assert m1["Body"] == "a1" and m1["Attributes"]["MessageGroupId"] == "a"
    [m2] = sqs.receive_message(QueueUrl=url)["Messages"]
    assert m2["Body"] == "b1"
    assert not sqs.receive_message(QueueUrl=url).get("Messages")
    sqs.delete_message(QueueUrl=url, ReceiptHandle=m1["ReceiptHandle"])
    [m3] = sqs.receive_message(QueueUrl=url)["Messages"]
    assert m3["Body"] == "a2"
    with pytest.raises(ClientError) as no_group:
        sqs.send_message(QueueUrl=url, MessageBody="x")
    assert no_group.value.response["Error"]["Code"] == "MissingParameter"
    with pytest.raises(ClientError) as not_fifo_name:
        sqs.create_queue(QueueName="plain", Attributes={"FifoQueue": "true"})
    assert not_fifo_name.value.response["Error"]["Code"] == "InvalidParameterValue"


def test_unsigned_and_unknown_actions_get_sqs_errors(server: RunningServer, sqs: Any) -> None:
    bad = server.client("sqs", aws_secret_access_key="wrong-secret")
    with pytest.raises(ClientError) as denied:
        bad.list_queues()
    assert denied.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError) as unsupported:
        sqs.list_queue_tags(QueueUrl=sqs.create_queue(QueueName="t")["QueueUrl"])
    assert unsupported.value.response["Error"]["Code"] == (
        "AWS.SimpleQueueService.UnsupportedOperation"
    )


def test_malformed_json_protocol_requests_get_clear_errors(server: RunningServer, sqs: Any) -> None:
    url = sqs.create_queue(QueueName="raw")["QueueUrl"]
    root = server.platform.root
    credentials = Credentials(root.access_key_id, root.secret_access_key)

    def send(body: bytes) -> httpx.Response:
        headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "AmazonSQS.SendMessage",
        }
        request = AWSRequest(method="POST", url=server.endpoint + "/", data=body, headers=headers)
        SigV4Auth(credentials, "sqs", "us-east-1").add_auth(request)
        with httpx.Client() as http:
            return http.post(server.endpoint + "/", content=body, headers=dict(request.headers))

    for body, message in [
        (b"{not json", "The request body is not valid JSON."),
        (b"[1]", "The request body must be a JSON object."),
        (
            json.dumps({"QueueUrl": url, "MessageBody": 42}).encode(),
            "The request must contain a non-empty message body.",
        ),
    ]:
        response = send(body)
        assert response.status_code == 400
        error = response.json()
        assert error["__type"] == "com.amazonaws.sqs#InvalidParameterValueException"
        assert error["message"] == message
    assert (
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"
        ]["ApproximateNumberOfMessages"]
        == "0"
    )
