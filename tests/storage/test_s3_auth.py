"""SigV4 for S3: presigned GET/PUT, and forged, expired or unknown credentials rendered as
S3's XML errors."""

from __future__ import annotations

import time
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from s3_testkit import error_code, signed

from tests.conftest import RunningServer


def presigner(server: RunningServer, signature_version: str = "s3v4") -> Any:
    """boto3 presigns with SigV4 when asked to (its default for custom endpoints is SigV2,
    `signature_version="s3"`)."""
    root = server.platform.root
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.settings.region,
        aws_access_key_id=root.access_key_id,
        aws_secret_access_key=root.secret_access_key,
        config=Config(signature_version=signature_version),
    )


def test_presigned_get_and_put(server: RunningServer, bucket: str) -> None:
    s3 = presigner(server)
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "via url.txt"}, ExpiresIn=60
    )
    assert httpx.put(put_url, content=b"presigned body").status_code == 200
    get_url = s3.generate_presigned_url(
        "get_object",
        Params={"Bucket": bucket, "Key": "via url.txt", "ResponseContentType": "text/x-test"},
        ExpiresIn=60,
    )
    response = httpx.get(get_url)
    assert response.status_code == 200 and response.content == b"presigned body"
    assert response.headers["content-type"] == "text/x-test"
    # tampering with the key breaks the signature
    forged = httpx.get(get_url.replace("via%20url.txt", "other.txt"))
    assert forged.status_code == 403 and error_code(forged) == "SignatureDoesNotMatch"
    # a presigned URL that lacks a parameter says so in the presigned URL's terms
    unsigned = httpx.get(get_url.split("&X-Amz-Signature=")[0])
    assert unsigned.status_code == 400
    assert error_code(unsigned) == "AuthorizationQueryParametersError"


def test_sigv2_requests_get_an_s3_error(server: RunningServer, s3: Any, bucket: str) -> None:
    """boto3's default presigning for a custom endpoint (SigV2), and a SigV2 header: refused
    with S3's XML error and request id, not the user routes' JSON 404."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    root = server.platform.root
    url = presigner(server, "s3").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}
    )
    assert "AWSAccessKeyId=" in url and "Signature=" in url
    for response in (
        httpx.get(url),
        httpx.get(
            f"{server.endpoint}/{bucket}/k",
            headers={"Authorization": f"AWS {root.access_key_id}:c2lnbmF0dXJl"},
        ),
    ):
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"].startswith("application/xml")
        assert error_code(response)
        assert response.headers["x-amz-request-id"]
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"


def test_expired_presigned_url(server: RunningServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"v")
    url = presigner(server).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1
    )
    time.sleep(2.1)
    response = httpx.get(url)
    assert response.status_code == 403 and error_code(response) == "AccessDenied"
    assert "expired" in response.text


def test_wrong_secret_and_unknown_key(server: RunningServer, bucket: str) -> None:
    bad = server.client("s3", aws_secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as exc:
        bad.put_object(Bucket=bucket, Key="k", Body=b"v")
    assert exc.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert exc.value.response["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    unknown = server.client("s3", aws_access_key_id="AKIAUNKNOWNUNKNOWN00")
    with pytest.raises(ClientError) as exc:
        unknown.list_buckets()
    assert exc.value.response["Error"]["Code"] == "InvalidAccessKeyId"
    response = signed(server, "PUT", f"/{bucket}/x", b"body", secret="forged-secret")
    assert response.status_code == 403 and error_code(response) == "SignatureDoesNotMatch"
    assert server.client("s3").list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_function_session_credentials_work(server: RunningServer, bucket: str) -> None:
    key, secret, token = server.platform.sessions.issue(
        server.platform.root.account_id, "function:writer"
    )
    s3 = server.client(
        "s3", aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token
    )
    s3.put_object(Bucket=bucket, Key="from-function", Body=b"ok")
    assert s3.get_object(Bucket=bucket, Key="from-function")["Body"].read() == b"ok"


def test_malformed_and_hostile_xml(server: RunningServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="keep", Body=b"v")
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><Delete><Object><Key>&b;</Key></Object></Delete>'
    )
    for body in (bomb, b"<Delete><Object><Key>keep</Key></Object>", b"not xml at all", b"<Oops/>"):
        response = signed(server, "POST", f"/{bucket}?delete", body)
        assert response.status_code == 400 and error_code(response) == "MalformedXML", body
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 1
    response = signed(server, "PUT", f"/{bucket}?notification", bomb)
    assert response.status_code == 400 and error_code(response) == "MalformedXML"


def test_unsupported_operations_say_so(server: RunningServer, bucket: str) -> None:
    response = signed(server, "GET", f"/{bucket}?acl")
    assert response.status_code == 501 and error_code(response) == "NotImplemented"
