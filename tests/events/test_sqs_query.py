"""SQS's older query protocol against a real server: SigV4-signed form POSTs (as older SDKs send
them), XML answers in AWS's shapes, sharing queues with the JSON protocol boto3 speaks."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode
from xml.etree import ElementTree as ET

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import RunningServer

NS = {"sqs": "http://queue.amazonaws.com/doc/2012-11-05/"}


class QueryClient:
    """Sends signed `Action=…` form POSTs, the way the query-protocol SDKs do."""

    def __init__(self, server: RunningServer) -> None:
        root = server.platform.root
        self.endpoint = server.endpoint
        self.credentials = Credentials(root.access_key_id, root.secret_access_key)
        self.http = httpx.Client()

    def __call__(
        self, action: str, params: dict[str, str] | None = None, path: str = "/"
    ) -> tuple[int, ET.Element]:
        body = urlencode({"Action": action, "Version": "2012-11-05", **(params or {})})
        headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
        request = AWSRequest(
            method="POST", url=self.endpoint + path, data=body.encode(), headers=headers
        )
        SigV4Auth(self.credentials, "sqs", "us-east-1").add_auth(request)
        response = self.http.post(
            self.endpoint + path, content=body.encode(), headers=dict(request.headers)
        )
        assert response.headers["content-type"].startswith("text/xml")
        assert response.content.startswith(b"<?xml")
        return response.status_code, ET.fromstring(response.content)


@pytest.fixture
def query(server: RunningServer) -> Iterator[QueryClient]:
    client = QueryClient(server)
    yield client
    client.http.close()


def _text(element: ET.Element, path: str) -> str:
    found = element.find(path, NS)
    assert found is not None, (path, ET.tostring(element))
    return found.text or ""


def test_query_protocol_round_trip(server: RunningServer, query: QueryClient) -> None:
    status, created = query(
        "CreateQueue",
        {"QueueName": "legacy", "Attribute.1.Name": "VisibilityTimeout", "Attribute.1.Value": "9"},
    )
    assert status == 200 and created.tag == f"{{{NS['sqs']}}}CreateQueueResponse"
    url = _text(created, "sqs:CreateQueueResult/sqs:QueueUrl")
    assert url.endswith("/legacy")
    assert _text(created, "sqs:ResponseMetadata/sqs:RequestId")

    _, attributes = query(
        "GetQueueAttributes", {"QueueUrl": url, "AttributeName.1": "VisibilityTimeout"}
    )
    pairs = attributes.findall("sqs:GetQueueAttributesResult/sqs:Attribute", NS)
    assert [(_text(p, "sqs:Name"), _text(p, "sqs:Value")) for p in pairs] == [
        ("VisibilityTimeout", "9")
    ]

    _, sent = query(
        "SendMessage",
        {
            "QueueUrl": url,
            "MessageBody": "héllo <xml> & friends",
            "MessageAttribute.1.Name": "colour",
            "MessageAttribute.1.Value.DataType": "String",
            "MessageAttribute.1.Value.StringValue": "blue",
            "MessageAttribute.2.Name": "blob",
            "MessageAttribute.2.Value.DataType": "Binary",
            "MessageAttribute.2.Value.BinaryValue": base64.b64encode(b"\x00\x01").decode(),
        },
    )
    result = "sqs:SendMessageResult/"
    body_md5 = hashlib.md5("héllo <xml> & friends".encode()).hexdigest()
    assert _text(sent, result + "sqs:MD5OfMessageBody") == body_md5
    assert _text(sent, result + "sqs:MD5OfMessageAttributes")
    message_id = _text(sent, result + "sqs:MessageId")

    # the same queue through the JSON protocol boto3 speaks
    sqs = server.client("sqs")
    try:
        visible = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        assert visible["Attributes"]["ApproximateNumberOfMessages"] == "1"
    finally:
        sqs.close()

    _, received = query(
        "ReceiveMessage",
        {
            "QueueUrl": url,
            "MaxNumberOfMessages": "5",
            "AttributeName.1": "All",
            "MessageAttributeName.1": "All",
        },
    )
    [message] = received.findall("sqs:ReceiveMessageResult/sqs:Message", NS)
    assert _text(message, "sqs:MessageId") == message_id
    assert _text(message, "sqs:Body") == "héllo <xml> & friends"
    assert _text(message, "sqs:MD5OfBody") == body_md5
    system = {
        _text(a, "sqs:Name"): _text(a, "sqs:Value") for a in message.findall("sqs:Attribute", NS)
    }
    assert system["ApproximateReceiveCount"] == "1" and "SentTimestamp" in system
    custom = {
        _text(a, "sqs:Name"): a.find("sqs:Value", NS)
        for a in message.findall("sqs:MessageAttribute", NS)
    }
    colour, blob = custom["colour"], custom["blob"]
    assert colour is not None and blob is not None
    assert _text(colour, "sqs:StringValue") == "blue" and _text(colour, "sqs:DataType") == "String"
    assert base64.b64decode(_text(blob, "sqs:BinaryValue")) == b"\x00\x01"
    handle = _text(message, "sqs:ReceiptHandle")

    status, deleted = query("DeleteMessage", {"QueueUrl": url, "ReceiptHandle": handle})
    assert status == 200 and deleted.find("sqs:DeleteMessageResult", NS) is None
    _, empty = query("ReceiveMessage", {"QueueUrl": url})
    assert empty.findall("sqs:ReceiveMessageResult/sqs:Message", NS) == []

    _, listed = query("ListQueues", {"QueueNamePrefix": "leg"})
    assert [q.text for q in listed.findall("sqs:ListQueuesResult/sqs:QueueUrl", NS)] == [url]


def test_query_batches_and_the_queue_url_as_path(server: RunningServer, query: QueryClient) -> None:
    _, created = query("CreateQueue", {"QueueName": "batches"})
    url = _text(created, "sqs:CreateQueueResult/sqs:QueueUrl")
    path = url.removeprefix(server.endpoint)
    entries: dict[str, Any] = {
        "SendMessageBatchRequestEntry.1.Id": "a",
        "SendMessageBatchRequestEntry.1.MessageBody": "first",
        "SendMessageBatchRequestEntry.2.Id": "b",
        "SendMessageBatchRequestEntry.2.MessageBody": "second",
        "SendMessageBatchRequestEntry.2.DelaySeconds": "0",
        "SendMessageBatchRequestEntry.3.Id": "c",
        "SendMessageBatchRequestEntry.3.MessageBody": "late",
        "SendMessageBatchRequestEntry.3.DelaySeconds": "9999",  # out of range: this one fails
    }
    status, sent = query("SendMessageBatch", entries, path=path)  # no QueueUrl: the path
    assert status == 200
    ok = sent.findall("sqs:SendMessageBatchResult/sqs:SendMessageBatchResultEntry", NS)
    assert sorted(_text(e, "sqs:Id") for e in ok) == ["a", "b"]
    [failed] = sent.findall("sqs:SendMessageBatchResult/sqs:BatchResultErrorEntry", NS)
    assert _text(failed, "sqs:Id") == "c" and _text(failed, "sqs:SenderFault") == "true"
    assert _text(failed, "sqs:Code")

    _, received = query("ReceiveMessage", {"MaxNumberOfMessages": "10"}, path=path)
    messages = received.findall("sqs:ReceiveMessageResult/sqs:Message", NS)
    assert sorted(_text(m, "sqs:Body") for m in messages) == ["first", "second"]
    deletes = {
        f"DeleteMessageBatchRequestEntry.{i}.{key}": value
        for i, message in enumerate(messages, 1)
        for key, value in (("Id", f"d{i}"), ("ReceiptHandle", _text(message, "sqs:ReceiptHandle")))
    }
    deletes |= {"DeleteMessageBatchRequestEntry.3.Id": "bad"}
    deletes |= {"DeleteMessageBatchRequestEntry.3.ReceiptHandle": "not-a-handle"}
    _, deleted = query("DeleteMessageBatch", {"QueueUrl": url, **deletes})
    done = deleted.findall("sqs:DeleteMessageBatchResult/sqs:DeleteMessageBatchResultEntry", NS)
    assert sorted(_text(e, "sqs:Id") for e in done) == ["d1", "d2"]
    [bad] = deleted.findall("sqs:DeleteMessageBatchResult/sqs:BatchResultErrorEntry", NS)
    assert _text(bad, "sqs:Code") == "ReceiptHandleIsInvalid"


def test_query_errors_are_xml(server: RunningServer, query: QueryClient) -> None:
    account = server.platform.root.account_id
    status, error = query("SendMessage", {"QueueUrl": f"{server.endpoint}/{account}/nope"})
    assert status == 400 and error.tag == f"{{{NS['sqs']}}}ErrorResponse"
    assert _text(error, "sqs:Error/sqs:Type") == "Sender"
    assert _text(error, "sqs:Error/sqs:Code") == "AWS.SimpleQueueService.NonExistentQueue"
    assert _text(error, "sqs:Error/sqs:Message")
    assert _text(error, "sqs:RequestId")

    status, error = query("Frobnicate")
    assert status == 400 and _text(error, "sqs:Error/sqs:Code") == "InvalidAction"
    status, error = query("CreateQueue", {"QueueName": "x", "Attribute.1": "flat"})
    assert status == 400 and _text(error, "sqs:Error/sqs:Code") == "MalformedQueryString"

    # a bad signature is refused before the SQS app, still in the query protocol's shape
    bad = QueryClient(server)
    bad.credentials = Credentials(server.platform.root.access_key_id, "wrong-secret")
    try:
        status, error = bad("ListQueues")
    finally:
        bad.http.close()
    assert status == 403 and _text(error, "sqs:Error/sqs:Code")
