"""Buckets and objects through the real boto3 `s3` client against a real server."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import socket
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import RunningServer


def code_of(excinfo: pytest.ExceptionInfo[ClientError]) -> str:
    return str(excinfo.value.response["Error"]["Code"])


def status_of(excinfo: pytest.ExceptionInfo[ClientError]) -> int:
    return int(excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"])


def blob_files(server: RunningServer) -> list[Path]:
    return [p for p in (server.settings.data_dir / "objects").rglob("*") if p.is_file()]


def test_bucket_lifecycle(s3: Any) -> None:
    s3.create_bucket(Bucket="photos")
    s3.create_bucket(Bucket="another.bucket-2")
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert names == ["another.bucket-2", "photos"]
    s3.head_bucket(Bucket="photos")
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket="photos")
    assert code_of(exc) == "BucketAlreadyOwnedByYou"
    s3.put_object(Bucket="photos", Key="a", Body=b"x")
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="photos")
    assert code_of(exc) == "BucketNotEmpty" and status_of(exc) == 409
    s3.delete_object(Bucket="photos", Key="a")
    s3.delete_bucket(Bucket="photos")
    with pytest.raises(ClientError) as exc:
        s3.head_bucket(Bucket="photos")
    assert status_of(exc) == 404
    with pytest.raises(ClientError) as exc:
        s3.delete_bucket(Bucket="photos")
    assert code_of(exc) == "NoSuchBucket"
    # a LocationConstraint for another region is refused, ours is accepted
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(
            Bucket="elsewhere", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
        )
    assert code_of(exc) == "InvalidLocationConstraint"


@pytest.mark.parametrize(
    "name", ["ab", "Upper", "under_score", "a..b", "192.168.1.1", "-start", "end-", "x" * 64]
)
def test_invalid_bucket_names(s3: Any, name: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.create_bucket(Bucket=name)
    assert code_of(exc) == "InvalidBucketName" and status_of(exc) == 400


def test_put_get_head_with_metadata_and_content_headers(s3: Any, bucket: str) -> None:
    put = s3.put_object(
        Bucket=bucket,
        Key="docs/report.txt",
        Body=b"quarterly numbers",
        ContentType="text/plain; charset=utf-8",
        ContentDisposition='attachment; filename="r.txt"',
        ContentEncoding="identity",
        CacheControl="max-age=60",
        ContentLanguage="ko",
        Metadata={"author": "kim", "Project": "gureum"},
    )
    etag = '"' + hashlib.md5(b"quarterly numbers").hexdigest() + '"'
    assert put["ETag"] == etag
    got = s3.get_object(Bucket=bucket, Key="docs/report.txt")
    assert got["Body"].read() == b"quarterly numbers"
    assert got["ETag"] == etag and got["ContentLength"] == 17
    assert got["ContentType"] == "text/plain; charset=utf-8"
    assert got["ContentDisposition"] == 'attachment; filename="r.txt"'
    assert got["ContentEncoding"] == "identity"
    assert got["CacheControl"] == "max-age=60" and got["ContentLanguage"] == "ko"
    assert got["Metadata"] == {"author": "kim", "project": "gureum"}
    assert got["ResponseMetadata"]["HTTPHeaders"]["x-amz-request-id"]
    head = s3.head_object(Bucket=bucket, Key="docs/report.txt")
    assert head["ContentLength"] == 17 and head["Metadata"]["author"] == "kim"
    # overwrite replaces body and metadata, and frees the old blob
    s3.put_object(Bucket=bucket, Key="docs/report.txt", Body=b"v2")
    got = s3.get_object(Bucket=bucket, Key="docs/report.txt")
    assert got["Body"].read() == b"v2" and got["Metadata"] == {}
    assert got["ContentType"] == "binary/octet-stream"


def test_empty_and_large_objects_stream(s3: Any, bucket: str, server: RunningServer) -> None:
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    data = os.urandom(9 * 1024 * 1024 + 7)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    body = s3.get_object(Bucket=bucket, Key="big.bin")["Body"]
    assert hashlib.sha256(body.read()).digest() == hashlib.sha256(data).digest()
    assert len(blob_files(server)) == 2


def test_missing_objects_and_buckets(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="nope")
    assert code_of(exc) == "NoSuchKey" and status_of(exc) == 404
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="nope")
    assert status_of(exc) == 404
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket="no-such-bucket", Key="k")
    assert code_of(exc) == "NoSuchBucket"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket="no-such-bucket", Key="k", Body=b"data")
    assert code_of(exc) == "NoSuchBucket"
    # deleting a missing key succeeds, as on S3
    s3.delete_object(Bucket=bucket, Key="nope")


def test_ranges(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="digits", Body=b"0123456789")

    def get(range_: str) -> Any:
        return s3.get_object(Bucket=bucket, Key="digits", Range=range_)

    part = get("bytes=2-5")
    assert part["Body"].read() == b"2345" and part["ContentRange"] == "bytes 2-5/10"
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert get("bytes=7-")["Body"].read() == b"789"
    assert get("bytes=-3")["Body"].read() == b"789"
    assert get("bytes=8-100")["Body"].read() == b"89"
    # a range that starts at or past the end is unsatisfiable, open-ended or not
    for unsatisfiable in ("bytes=10-12", "bytes=10-", "bytes=-0"):
        with pytest.raises(ClientError) as exc:
            get(unsatisfiable)
        assert code_of(exc) == "InvalidRange" and status_of(exc) == 416
    # an invalid range is ignored: the whole object
    for invalid in ("bytes=5-2", "bytes=3-x", "bytes=x-3", "bytes=-"):
        whole = get(invalid)
        assert whole["Body"].read() == b"0123456789" and "ContentRange" not in whole
    # no range of an empty object is satisfiable
    s3.put_object(Bucket=bucket, Key="empty", Body=b"")
    for unsatisfiable in ("bytes=0-", "bytes=0-0", "bytes=-5"):
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=bucket, Key="empty", Range=unsatisfiable)
        assert code_of(exc) == "InvalidRange" and status_of(exc) == 416


def test_conditional_requests(s3: Any, bucket: str) -> None:
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"cond")["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"0000"')
    assert code_of(exc) == "PreconditionFailed" and status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status_of(exc) == 304
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=future)
    assert status_of(exc) == 304
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"cond"
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=past)
    assert status_of(exc) == 412
    assert exc.value.response["Error"]["Condition"] == "If-Unmodified-Since"
    # If-None-Match compares weakly (RFC 9110): W/"<etag>" names the object too
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch="W/" + etag)
    assert status_of(exc) == 304
    # If-Match compares strongly: a weak tag never matches
    with pytest.raises(ClientError) as exc:
        s3.get_object(Bucket=bucket, Key="c", IfMatch="W/" + etag)
    assert status_of(exc) == 412
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert status_of(exc) == 304


def test_conditional_writes(s3: Any, bucket: str, server: RunningServer) -> None:
    s3.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert code_of(exc) == "PreconditionFailed" and status_of(exc) == 412
    assert exc.value.response["Error"]["Condition"] == "If-None-Match"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k", Body=b"second", IfMatch='"0000"')
    assert code_of(exc) == "PreconditionFailed" and status_of(exc) == 412
    etag = s3.head_object(Bucket=bucket, Key="k")["ETag"]
    etag = s3.put_object(Bucket=bucket, Key="k", Body=b"third", IfMatch=etag)["ETag"]
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="gone", Body=b"x", IfMatch=etag)
    assert code_of(exc) == "NoSuchKey" and status_of(exc) == 404
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"third"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    assert len(blob_files(server)) == 1  # refused bodies leave nothing behind
    # a refused completion leaves the upload to complete unconditionally
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    part = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"mp")
    parts = {"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    with pytest.raises(ClientError) as exc:
        s3.complete_multipart_upload(
            Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=parts, IfNoneMatch="*"
        )
    assert code_of(exc) == "PreconditionFailed" and status_of(exc) == 412
    s3.complete_multipart_upload(
        Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload=parts, IfMatch=etag
    )
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"mp"


def test_copy_object(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", Metadata={"a": "1"})
    s3.create_bucket(Bucket="copies")
    out = s3.copy_object(Bucket="copies", Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert out["CopyObjectResult"]["ETag"] == '"' + hashlib.md5(b"copy me").hexdigest() + '"'
    got = s3.get_object(Bucket="copies", Key="dst")
    assert got["Body"].read() == b"copy me" and got["Metadata"] == {"a": "1"}
    s3.copy_object(
        Bucket=bucket,
        Key="src",
        CopySource={"Bucket": bucket, "Key": "src"},
        MetadataDirective="REPLACE",
        Metadata={"b": "2"},
    )
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"b": "2"}
    # deleting the source leaves the copy whole
    s3.delete_object(Bucket=bucket, Key="src")
    assert s3.get_object(Bucket="copies", Key="dst")["Body"].read() == b"copy me"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket="copies", Key="dst", CopySource={"Bucket": "copies", "Key": "dst"})
    assert code_of(exc) == "InvalidRequest"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(Bucket="copies", Key="x", CopySource={"Bucket": bucket, "Key": "gone"})
    assert code_of(exc) == "NoSuchKey"


def test_unsupported_subresources_leave_objects_and_buckets_alone(s3: Any, bucket: str) -> None:
    """Operations this server does not implement are refused, never served as the plain
    object or bucket operation on the same path."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"precious")
    tags = {"TagSet": [{"Key": "a", "Value": "b"}]}
    attempts = [
        lambda: s3.put_object_tagging(Bucket=bucket, Key="k", Tagging=tags),
        lambda: s3.put_object_acl(Bucket=bucket, Key="k", ACL="private"),
        lambda: s3.delete_object_tagging(Bucket=bucket, Key="k"),
        lambda: s3.get_object_tagging(Bucket=bucket, Key="k"),
        lambda: s3.get_object_attributes(Bucket=bucket, Key="k", ObjectAttributes=["ETag"]),
        lambda: s3.delete_bucket_encryption(Bucket=bucket),
        lambda: s3.delete_public_access_block(Bucket=bucket),
        lambda: s3.get_bucket_encryption(Bucket=bucket),
        lambda: s3.list_object_versions(Bucket=bucket),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as exc:
            attempt()
        assert code_of(exc) == "NotImplemented" and status_of(exc) == 501
    # an unversioned bucket's objects have only the version "null"
    with pytest.raises(ClientError) as exc:
        s3.delete_object(Bucket=bucket, Key="k", VersionId="3HL4kqtJlcpXroDTDmJ")
    assert code_of(exc) == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        s3.copy_object(
            Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k", "VersionId": "v2"}
        )
    assert code_of(exc) == "InvalidArgument"
    assert s3.get_object(Bucket=bucket, Key="k", VersionId="null")["Body"].read() == b"precious"
    s3.copy_object(
        Bucket=bucket, Key="c", CopySource={"Bucket": bucket, "Key": "k", "VersionId": "null"}
    )
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"precious"
    s3.delete_object(Bucket=bucket, Key="c", VersionId="null")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]
    out = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "k", "VersionId": "3HL4kqtJlcpXroDTDmJ"}]}
    )
    assert [(e["Key"], e["Code"]) for e in out["Errors"]] == [("k", "InvalidArgument")]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k"]


def test_delete_objects(s3: Any, bucket: str, server: RunningServer) -> None:
    for key in ("a", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    out = s3.delete_objects(
        Bucket=bucket, Delete={"Objects": [{"Key": "a"}, {"Key": "b"}, {"Key": "missing"}]}
    )
    assert sorted(d["Key"] for d in out["Deleted"]) == ["a", "b", "missing"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["c"]
    assert len(blob_files(server)) == 1
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "c"}], "Quiet": True})
    assert "Deleted" not in quiet
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_list_objects_v2_prefix_delimiter_and_pages(s3: Any, bucket: str) -> None:
    keys = [
        "a.txt",
        "photos/2024/1.jpg",
        "photos/2024/2.jpg",
        "photos/2025/1.jpg",
        "photos/top.jpg",
        "readme",
        "z/é.txt",
    ]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b".")
    listing = s3.list_objects_v2(Bucket=bucket)
    assert [o["Key"] for o in listing["Contents"]] == keys
    assert listing["Contents"][0]["Size"] == 1 and listing["Contents"][0]["StorageClass"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [o["Key"] for o in top["Contents"]] == ["a.txt", "readme"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["photos/", "z/"]
    deeper = s3.list_objects_v2(Bucket=bucket, Prefix="photos/", Delimiter="/")
    assert [o["Key"] for o in deeper["Contents"]] == ["photos/top.jpg"]
    assert [p["Prefix"] for p in deeper["CommonPrefixes"]] == ["photos/2024/", "photos/2025/"]
    after = s3.list_objects_v2(Bucket=bucket, StartAfter="photos/2025/1.jpg")
    assert [o["Key"] for o in after["Contents"]] == ["photos/top.jpg", "readme", "z/é.txt"]
    # pages of two, with delimiter: prefixes count towards MaxKeys and are not repeated
    seen: list[str] = []
    kwargs: dict[str, Any] = {"Bucket": bucket, "Delimiter": "/", "MaxKeys": 2}
    while True:
        page = s3.list_objects_v2(**kwargs)
        assert page["KeyCount"] <= 2
        seen += [o["Key"] for o in page.get("Contents", [])]
        seen += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        if not page["IsTruncated"]:
            break
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    assert sorted(seen) == ["a.txt", "photos/", "readme", "z/"]
    paginator = s3.get_paginator("list_objects_v2")
    flat = [
        o["Key"]
        for p in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 3})
        for o in p["Contents"]
    ]
    assert flat == keys
    with pytest.raises(ClientError) as exc:
        s3.list_objects_v2(Bucket=bucket, ContinuationToken="!!!not-a-token")
    assert code_of(exc) == "InvalidArgument"


def test_a_continuation_token_not_ours_is_refused(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"")
    for token in ("!!!", "", "é", "YQ"):
        with pytest.raises(ClientError) as exc:
            s3.list_objects_v2(Bucket=bucket, ContinuationToken=token)
        assert code_of(exc) == "InvalidArgument"


def test_list_objects_v2_fetch_owner(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"")
    assert "Owner" not in s3.list_objects_v2(Bucket=bucket)["Contents"][0]
    owner = s3.list_objects_v2(Bucket=bucket, FetchOwner=True)["Contents"][0]["Owner"]
    assert owner["ID"] == s3.list_buckets()["Owner"]["ID"]


def test_max_keys_zero_lists_nothing_and_is_not_truncated(s3: Any, bucket: str) -> None:
    for key in ("a", "b/c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b"")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="a")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="a", UploadId=upload_id, PartNumber=1, Body=b"p")
    parts = s3.list_parts(Bucket=bucket, Key="a", UploadId=upload_id, MaxParts=0)
    assert not parts["IsTruncated"] and "Parts" not in parts
    for delimiter in ("", "/"):
        v2 = s3.list_objects_v2(Bucket=bucket, MaxKeys=0, Delimiter=delimiter)
        assert not v2["IsTruncated"] and v2["KeyCount"] == 0 and "Contents" not in v2
        assert "NextContinuationToken" not in v2
        v1 = s3.list_objects(Bucket=bucket, MaxKeys=0, Delimiter=delimiter)
        assert not v1["IsTruncated"] and "Contents" not in v1 and "NextMarker" not in v1
        uploads = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=0, Delimiter=delimiter)
        assert not uploads["IsTruncated"] and "Uploads" not in uploads


def test_list_objects_v1(s3: Any, bucket: str) -> None:
    for key in ("a/1", "a/2", "b", "c"):
        s3.put_object(Bucket=bucket, Key=key, Body=b".")
    page = s3.list_objects(Bucket=bucket, MaxKeys=2, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["a/"]
    assert [o["Key"] for o in page["Contents"]] == ["b"]
    assert page["IsTruncated"] and page["NextMarker"] == "b"
    rest = s3.list_objects(Bucket=bucket, Marker="b", Delimiter="/")
    assert [o["Key"] for o in rest["Contents"]] == ["c"] and not rest["IsTruncated"]
    paginator = s3.get_paginator("list_objects")
    flat = [
        o["Key"]
        for p in paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": 1})
        for o in p["Contents"]
    ]
    assert flat == ["a/1", "a/2", "b", "c"]


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "/abs/path", "a//b/./c", "..", "스페이스 key+?&=#%.txt", "\u0001ctl"],
)
def test_hostile_keys_stay_inside_the_data_dir(
    s3: Any, bucket: str, server: RunningServer, key: str
) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"contained")
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"contained"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == [key]
    data_dir = server.settings.data_dir.resolve()
    for path in blob_files(server):
        assert path.resolve().is_relative_to(data_dir / "objects")
        assert path.read_bytes() == b"contained"
    assert not (data_dir.parent / "etc").exists()


def test_overlong_and_nul_keys_are_refused(s3: Any, bucket: str, server: RunningServer) -> None:
    s3.put_object(Bucket=bucket, Key="k" * 1024, Body=b"max")
    assert s3.get_object(Bucket=bucket, Key="k" * 1024)["Body"].read() == b"max"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="k" * 1025, Body=b"too long")
    assert code_of(exc) == "KeyTooLongError"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="é" * 513, Body=b"1026 bytes of UTF-8")
    assert code_of(exc) == "KeyTooLongError"
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="nul\x00key", Body=b"x")
    assert code_of(exc) == "InvalidArgument"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]] == ["k" * 1024]
    assert len(blob_files(server)) == 1


def test_metadata_too_large(s3: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as exc:
        s3.put_object(Bucket=bucket, Key="m", Body=b"x", Metadata={"big": "v" * 2100})
    assert code_of(exc) == "MetadataTooLarge"
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="m")


def test_virtual_hosted_style(
    server: RunningServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """boto3 with addressing_style virtual sends `Host: <bucket>.localhost:<port>`; names
    under .localhost are loopback (RFC 6761), which this host's resolver does not know, so
    the test resolves them itself — the only thing not real here."""
    resolve = socket.getaddrinfo

    def loopback(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".localhost"):
            host = "127.0.0.1"
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback)
    root = server.platform.root
    virtual = boto3.client(
        "s3",
        endpoint_url=f"http://localhost:{server.settings.port}",
        region_name=server.settings.region,
        aws_access_key_id=root.access_key_id,
        aws_secret_access_key=root.secret_access_key,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "virtual"},
            retries={"max_attempts": 0},
        ),
    )
    server.clients.append(virtual)  # closed with the server
    sent: list[str] = []
    virtual.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.url))
    virtual.put_object(Bucket=bucket, Key="dir/hosted key.txt", Body=b"by host")
    assert sent[-1].startswith(f"http://{bucket}.localhost:")
    path_style = server.client("s3")
    assert path_style.get_object(Bucket=bucket, Key="dir/hosted key.txt")["Body"].read() == (
        b"by host"
    )
    got = virtual.get_object(Bucket=bucket, Key="dir/hosted key.txt", Range="bytes=3-")
    assert got["Body"].read() == b"host"
    listed = virtual.list_objects_v2(Bucket=bucket, Prefix="dir/")["Contents"]
    assert [o["Key"] for o in listed] == ["dir/hosted key.txt"]
    url = virtual.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "dir/hosted key.txt"}, ExpiresIn=60
    )
    assert url.startswith(f"http://{bucket}.localhost:")
    assert (
        httpx.get(
            url.replace(f"{bucket}.localhost", "127.0.0.1"),
            headers={"host": f"{bucket}.localhost:{server.settings.port}"},
        ).content
        == b"by host"
    )
    virtual.delete_object(Bucket=bucket, Key="dir/hosted key.txt")
    with pytest.raises(ClientError, match="NoSuchBucket"):
        virtual.get_object(Bucket="no-such-bucket-here", Key="k")
    assert [b["Name"] for b in virtual.list_buckets()["Buckets"]] == [bucket]
    # an endpoint under .localhost still works path-style: no bucket is named like its host
    named = boto3.client(
        "s3",
        endpoint_url=f"http://s3.localhost:{server.settings.port}",
        region_name=server.settings.region,
        aws_access_key_id=root.access_key_id,
        aws_secret_access_key=root.secret_access_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 0}),
    )
    server.clients.append(named)
    named.put_object(Bucket=bucket, Key="path/style", Body=b"by path")
    assert named.get_object(Bucket=bucket, Key="path/style")["Body"].read() == b"by path"
    assert virtual.get_object(Bucket=bucket, Key="path/style")["Body"].read() == b"by path"


def test_reads_follow_every_kind_of_write(server: RunningServer, s3: Any, bucket: str) -> None:
    """Each change is seen by the very next read (the embedded shape caches lookups)."""

    def body(key: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    for round_ in range(3):
        s3.put_object(Bucket=bucket, Key="k", Body=f"put {round_}".encode())
        assert body("k") == f"put {round_}".encode()
        assert s3.head_object(Bucket=bucket, Key="k")["ContentLength"] == len(f"put {round_}")
    s3.put_object(Bucket=bucket, Key="src", Body=b"copied")
    s3.copy_object(Bucket=bucket, Key="k", CopySource={"Bucket": bucket, "Key": "src"})
    assert body("k") == b"copied"
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=1, Body=b"mp")["ETag"]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=upload,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    assert body("k") == b"mp"
    s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "k"}]})
    with pytest.raises(ClientError, match="NoSuchKey"):
        body("k")
    s3.delete_object(Bucket=bucket, Key="src")
    s3.delete_bucket(Bucket=bucket)
    with pytest.raises(ClientError, match="NoSuchBucket"):
        body("src")


@pytest.mark.skipif(not hasattr(os, "RWF_NOWAIT"), reason="reads always go to a thread here")
def test_reads_of_blobs_the_page_cache_lost(s3: Any, bucket: str, server: RunningServer) -> None:
    # cached chunks are read on the event loop, the others in a worker thread: a blob the
    # page cache dropped in part (the middle MiB) or whole still reads back exactly
    data = os.urandom(3 * 1024 * 1024 + 5)
    s3.put_object(Bucket=bucket, Key="cold.bin", Body=data)
    [blob] = blob_files(server)
    fd = os.open(blob, os.O_RDONLY)
    try:
        for start, length in ((1024 * 1024, 1024 * 1024), (0, 0)):
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
            with pytest.raises(BlockingIOError):  # evicted indeed
                os.preadv(fd, [bytearray(1)], start + 1, os.RWF_NOWAIT)
            got = s3.get_object(Bucket=bucket, Key="cold.bin")["Body"].read()
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            part = s3.get_object(Bucket=bucket, Key="cold.bin", Range="bytes=1048570-2097160")
            assert part["Body"].read() == data[1048570:2097161]
    finally:
        os.close(fd)
