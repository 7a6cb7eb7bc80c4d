"""Bucket notifications: configuration, delivery to functions as S3 event records, filters,
and recursion-loop stops — with real functions that use boto3 against Gureum's S3."""

from __future__ import annotations

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
