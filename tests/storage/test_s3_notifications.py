"""Bucket notifications: configuration, delivery to functions and queues as S3 event records,
filters, and recursion-loop stops — with real functions that use boto3 against Gureum's S3,
and the real boto3 `sqs` client."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import RunningServer, make_zip

RECORDER = """
import json, urllib.parse
import boto3
s3 = boto3.client("s3")
def handler(event, context):
    for record in event["Records"]:
        key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
        name = record["eventName"] + "/" + key
        s3.put_object(Bucket="seen", Key=name, Body=json.dumps(record).encode())
"""
LOOPER = """
import boto3, urllib.parse
s3 = boto3.client("s3")
def handler(event, context):
    record = event["Records"][0]
    key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
    s3.put_object(Bucket=record["s3"]["bucket"]["name"], Key=key + "+", Body=b"again")
"""


def deploy(lam: Any, name: str, code: str) -> str:
    config = lam.create_function(
        FunctionName=name,
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": code})},
        Timeout=30,
    )
    return str(config["FunctionArn"])


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_configuration_round_trip_and_validation(lam: Any, s3: Any, bucket: str) -> None:
    arn = deploy(lam, "recorder", RECORDER)
    assert (
        s3.get_bucket_notification_configuration(Bucket=bucket).get(
            "LambdaFunctionConfigurations", []
        )
        == []
    )
    config = {
        "LambdaFunctionConfigurations": [
            {
                "Id": "images",
                "LambdaFunctionArn": arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {
                    "Key": {
                        "FilterRules": [
                            {"Name": "prefix", "Value": "in/"},
                            {"Name": "suffix", "Value": ".jpg"},
                        ]
                    }
                },
            }
        ]
    }
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    got = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert got["LambdaFunctionConfigurations"] == config["LambdaFunctionConfigurations"]

    def refused(configuration: dict[str, Any]) -> str:
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration
            )
        return str(exc.value.response["Error"]["Code"])

    missing = arn.replace("recorder", "nobody")
    lambda_config = {"LambdaFunctionArn": missing, "Events": ["s3:ObjectCreated:*"]}
    assert refused({"LambdaFunctionConfigurations": [lambda_config]}) == "InvalidArgument"
    bad_event = {"LambdaFunctionArn": arn, "Events": ["s3:ObjectExploded:*"]}
    assert refused({"LambdaFunctionConfigurations": [bad_event]}) == "InvalidArgument"
    queue = {"QueueArn": "arn:aws:sqs:us-east-1:123456789012:q", "Events": ["s3:ObjectCreated:*"]}
    assert refused({"QueueConfigurations": [queue]}) == "InvalidArgument"

    def rule(events: list[str], prefix: str = "", suffix: str = "") -> dict[str, Any]:
        rules = [{"Name": "prefix", "Value": prefix}, {"Name": "suffix", "Value": suffix}]
        return {
            "LambdaFunctionArn": arn,
            "Events": events,
            "Filter": {"Key": {"FilterRules": rules}},
        }

    # two rules that could take one event are ambiguous, as on S3: a common event type (a
    # wildcard covers its kind), prefixes one of which starts the other, suffixes likewise
    for first, second in (
        (rule(["s3:ObjectCreated:*"]), rule(["s3:ObjectCreated:Put"], "in/", ".jpg")),
        (rule(["s3:ObjectCreated:Put"], "in/"), rule(["s3:ObjectCreated:Put"], "in/raw/")),
        (rule(["s3:ObjectCreated:*"], suffix=".jpg"), rule(["s3:ObjectCreated:Copy"], "a/")),
    ):
        assert refused({"LambdaFunctionConfigurations": [first, second]}) == "InvalidArgument"
    # ... while rules that part by event type, prefix or suffix are fine together
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [
                rule(["s3:ObjectCreated:*"], "in/", ".jpg"),
                rule(["s3:ObjectRemoved:*"], "in/", ".jpg"),
                rule(["s3:ObjectCreated:*"], "out/"),
                rule(["s3:ObjectCreated:Put"], "in/", ".png"),
            ]
        },
    )
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    # the accepted configuration is untouched by the refused ones
    got = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert got["LambdaFunctionConfigurations"][0]["Id"] == "images"
    with pytest.raises(ClientError) as exc:
        s3.get_bucket_notification_configuration(Bucket="no-such-bucket")
    assert exc.value.response["Error"]["Code"] == "NoSuchBucket"


def test_events_reach_the_function_with_aws_record_shape(
    server: RunningServer, lam: Any, s3: Any
) -> None:
    arn = deploy(lam, "recorder", RECORDER)
    s3.create_bucket(Bucket="uploads")
    s3.create_bucket(Bucket="seen")
    s3.put_bucket_notification_configuration(
        Bucket="uploads",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [
                {
                    "LambdaFunctionArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "in/"}]}},
                }
            ]
        },
    )
    s3.put_object(Bucket="uploads", Key="in/a photo.jpg", Body=b"12345")
    s3.put_object(Bucket="uploads", Key="elsewhere.jpg", Body=b"ignored: prefix")
    s3.copy_object(Bucket="uploads", Key="in/copy.jpg", CopySource="uploads/in/a photo.jpg")
    s3.delete_object(Bucket="uploads", Key="in/copy.jpg")
    expected = [
        "ObjectCreated:Copy/in/copy.jpg",
        "ObjectCreated:Put/in/a photo.jpg",
        "ObjectRemoved:Delete/in/copy.jpg",
    ]
    assert wait_for(lambda: keys(s3, "seen") == expected), keys(s3, "seen")
    record = json.loads(
        s3.get_object(Bucket="seen", Key="ObjectCreated:Put/in/a photo.jpg")["Body"].read()
    )
    assert record["eventVersion"] == "2.1" and record["eventSource"] == "aws:s3"
    assert record["awsRegion"] == server.settings.region
    assert record["eventName"] == "ObjectCreated:Put"
    assert record["s3"]["bucket"] == {
        "name": "uploads",
        "ownerIdentity": {"principalId": server.platform.root.account_id},
        "arn": "arn:aws:s3:::uploads",
    }
    obj = record["s3"]["object"]
    assert obj["key"] == "in/a+photo.jpg" and obj["size"] == 5
    assert obj["eTag"] == "827ccb0eea8a706c4c34a16891f84e7b" and obj["sequencer"]
    assert record["eventTime"].endswith("Z") and record["responseElements"]["x-amz-request-id"]
    removed = json.loads(
        s3.get_object(Bucket="seen", Key="ObjectRemoved:Delete/in/copy.jpg")["Body"].read()
    )
    assert "size" not in removed["s3"]["object"]


def test_multipart_completion_notifies(lam: Any, s3: Any) -> None:
    arn = deploy(lam, "recorder", RECORDER)
    s3.create_bucket(Bucket="uploads")
    s3.create_bucket(Bucket="seen")
    s3.put_bucket_notification_configuration(
        Bucket="uploads",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [
                {"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:CompleteMultipartUpload"]}
            ]
        },
    )
    upload_id = s3.create_multipart_upload(Bucket="uploads", Key="mp")["UploadId"]
    etag = s3.upload_part(Bucket="uploads", Key="mp", UploadId=upload_id, PartNumber=1, Body=b"p")[
        "ETag"
    ]
    s3.put_object(Bucket="uploads", Key="plain", Body=b"not a multipart: filtered by event")
    s3.complete_multipart_upload(
        Bucket="uploads",
        Key="mp",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert wait_for(lambda: keys(s3, "seen") == ["ObjectCreated:CompleteMultipartUpload/mp"])


def test_recursion_loop_is_stopped_and_reported(server: RunningServer, lam: Any, s3: Any) -> None:
    arn = deploy(lam, "looper", LOOPER)
    s3.create_bucket(Bucket="loop")
    s3.put_bucket_notification_configuration(
        Bucket="loop",
        NotificationConfiguration={
            "LambdaFunctionConfigurations": [
                {"LambdaFunctionArn": arn, "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    s3.put_object(Bucket="loop", Key="seed", Body=b"start")
    notifier = server.app._services["s3"].app.store.notifier
    assert wait_for(lambda: notifier.stops, timeout=60), keys(s3, "loop")
    time.sleep(1.0)  # nothing keeps going after the stop
    written = keys(s3, "loop")
    assert len(written) == 17  # the user's write + 16 recursive ones
    assert written[-1] == "seed" + "+" * 16
    stop = notifier.stops[0]
    assert (stop.function, stop.bucket, stop.depth) == ("looper", "loop", 16)
    time.sleep(1.0)
    assert len(keys(s3, "loop")) == 17
    # a fresh write by a person starts a new chain: it is delivered again
    s3.put_object(Bucket="loop", Key="again", Body=b"new chain")
    assert wait_for(lambda: "again+" in keys(s3, "loop"))


def queue_config(arn: str, **extra: Any) -> dict[str, Any]:
    return {"QueueArn": arn, "Events": ["s3:ObjectCreated:*"], **extra}


def test_queue_configuration_round_trip_and_validation(
    server: RunningServer, s3: Any, bucket: str
) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    config = {
        "QueueConfigurations": [
            {
                "Id": "to-queue",
                "QueueArn": arn,
                "Events": ["s3:ObjectCreated:Put", "s3:ObjectRemoved:*"],
                "Filter": {
                    "Key": {
                        "FilterRules": [
                            {"Name": "prefix", "Value": "in/"},
                            {"Name": "suffix", "Value": ".csv"},
                        ]
                    }
                },
            }
        ]
    }
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=config)
    got = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert got["QueueConfigurations"] == config["QueueConfigurations"]
    assert got.get("LambdaFunctionConfigurations", []) == []

    def refused(configuration: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(ClientError) as exc:
            s3.put_bucket_notification_configuration(
                Bucket=bucket, NotificationConfiguration=configuration
            )
        return dict(exc.value.response["Error"])

    unknown = refused({"QueueConfigurations": [queue_config(arn.replace("uploads", "nobody"))]})
    assert unknown["Code"] == "InvalidArgument"
    assert "Unable to validate the following destination configurations" in unknown["Message"]
    other_region = arn.replace(server.settings.region, "xx-nowhere-1")
    assert refused({"QueueConfigurations": [queue_config(other_region)]})["Code"] == (
        "InvalidArgument"
    )
    assert refused({"QueueConfigurations": [queue_config("not-an-arn")]})["Code"] == (
        "InvalidArgument"
    )
    bad_event = queue_config(arn, Events=["s3:ObjectExploded:*"])
    assert refused({"QueueConfigurations": [bad_event]})["Code"] == "InvalidArgument"
    fifo_url = sqs.create_queue(QueueName="uploads.fifo", Attributes={"FifoQueue": "true"})[
        "QueueUrl"
    ]
    fifo_arn = sqs.get_queue_attributes(QueueUrl=fifo_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    assert refused({"QueueConfigurations": [queue_config(fifo_arn)]})["Code"] == ("InvalidArgument")
    duplicate = [queue_config(arn, Id="same"), queue_config(arn, Id="same")]
    assert refused({"QueueConfigurations": duplicate})["Code"] == "InvalidArgument"
    # the accepted configuration is untouched by the refused ones
    got = s3.get_bucket_notification_configuration(Bucket=bucket)
    assert got["QueueConfigurations"] == config["QueueConfigurations"]


def test_events_reach_the_queue_with_aws_record_shape(
    server: RunningServer, lam: Any, s3: Any
) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="uploads")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    function_arn = deploy(lam, "recorder", RECORDER)
    s3.create_bucket(Bucket="uploads")
    s3.create_bucket(Bucket="seen")
    s3.put_bucket_notification_configuration(
        Bucket="uploads",
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": "csv-to-queue",
                    "QueueArn": arn,
                    "Events": ["s3:ObjectCreated:*", "s3:ObjectRemoved:Delete"],
                    "Filter": {
                        "Key": {
                            "FilterRules": [
                                {"Name": "prefix", "Value": "in/"},
                                {"Name": "suffix", "Value": ".csv"},
                            ]
                        }
                    },
                }
            ],
            # not the queue's .csv files: two rules that could take one event are ambiguous
            "LambdaFunctionConfigurations": [
                {
                    "LambdaFunctionArn": function_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": ".txt"}]}},
                }
            ],
        },
    )
    got = s3.get_bucket_notification_configuration(Bucket="uploads")
    assert [c["Id"] for c in got["QueueConfigurations"]] == ["csv-to-queue"]
    assert len(got["LambdaFunctionConfigurations"]) == 1
    # as on AWS, accepting the configuration sends the queue one s3:TestEvent
    [test] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=test["ReceiptHandle"])
    test_event = json.loads(test["Body"])
    assert test_event["Event"] == "s3:TestEvent" and test_event["Service"] == "Amazon S3"
    assert test_event["Bucket"] == "uploads" and test_event["Time"].endswith("Z")
    s3.put_object(Bucket="uploads", Key="in/a report.csv", Body=b"1,2,3")
    s3.put_object(Bucket="uploads", Key="out/b.csv", Body=b"ignored: prefix")
    s3.put_object(Bucket="uploads", Key="in/c.txt", Body=b"ignored: suffix")
    s3.delete_object(Bucket="uploads", Key="in/a report.csv")
    # committed before the S3 answers: the messages are there at once, without waiting
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "2"
    records = []
    while len(records) < 2:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=5).get(
            "Messages", []
        )
        assert messages, records
        for message in messages:
            body = json.loads(message["Body"])
            assert list(body) == ["Records"] and len(body["Records"]) == 1
            records.append(body["Records"][0])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    records.sort(key=lambda r: r["eventName"])
    created, removed = records
    assert created["eventName"] == "ObjectCreated:Put"
    assert created["eventVersion"] == "2.1" and created["eventSource"] == "aws:s3"
    assert created["awsRegion"] == server.settings.region
    assert created["s3"]["configurationId"] == "csv-to-queue"
    assert created["s3"]["bucket"]["name"] == "uploads"
    obj = created["s3"]["object"]
    assert obj["key"] == "in/a+report.csv" and obj["size"] == 5
    assert obj["eTag"] == hashlib.md5(b"1,2,3").hexdigest() and obj["sequencer"]
    assert removed["eventName"] == "ObjectRemoved:Delete"
    assert removed["s3"]["object"]["key"] == "in/a+report.csv"
    assert "size" not in removed["s3"]["object"]
    # the function destination next to it gets the creations of its own filter
    assert wait_for(lambda: keys(s3, "seen") == ["ObjectCreated:Put/in/c.txt"]), keys(s3, "seen")


def test_a_deleted_queue_is_skipped(server: RunningServer, s3: Any, bucket: str) -> None:
    sqs = server.client("sqs")
    url = sqs.create_queue(QueueName="short-lived")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    s3.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [queue_config(arn)]}
    )
    sqs.delete_queue(QueueUrl=url)
    s3.put_object(Bucket=bucket, Key="k", Body=b"still stored")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"still stored"
