"""Multipart uploads through boto3: create, upload parts, list, complete (ETag -N), abort."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from tests.conftest import RunningServer

MIB = 1024 * 1024


def multipart_etag(parts: list[bytes]) -> str:
    digest = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest()
    return f'"{digest}-{len(parts)}"'


def blob_count(server: RunningServer) -> int:
    return sum(
        1 for p in (server.settings.data_dir / "objects" / "blobs").rglob("*") if p.is_file()
    )


def test_multipart_lifecycle(server: RunningServer, s3: Any, bucket: str) -> None:
    parts = [os.urandom(5 * MIB), os.urandom(5 * MIB), b"tail"]
    upload = s3.create_multipart_upload(
        Bucket=bucket, Key="big/file.bin", ContentType="application/x-test", Metadata={"m": "1"}
    )
    upload_id = upload["UploadId"]
    listed = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert [(u["Key"], u["UploadId"]) for u in listed] == [("big/file.bin", upload_id)]
    etags = []
    for number, data in enumerate(parts, start=1):
        out = s3.upload_part(
            Bucket=bucket, Key="big/file.bin", UploadId=upload_id, PartNumber=number, Body=data
        )
        etags.append(out["ETag"])
    # re-uploading a part replaces it
    etags[2] = s3.upload_part(
        Bucket=bucket, Key="big/file.bin", UploadId=upload_id, PartNumber=3, Body=b"tail"
    )["ETag"]
    listed_parts = s3.list_parts(Bucket=bucket, Key="big/file.bin", UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in listed_parts] == [
        (1, 5 * MIB),
        (2, 5 * MIB),
        (3, 4),
    ]
    page = s3.list_parts(Bucket=bucket, Key="big/file.bin", UploadId=upload_id, MaxParts=2)
    assert page["IsTruncated"] and page["NextPartNumberMarker"] == 2
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="big/file.bin",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]},
    )
    assert done["ETag"] == multipart_etag(parts)
    got = s3.get_object(Bucket=bucket, Key="big/file.bin")
    assert got["Body"].read() == b"".join(parts)
    assert got["ContentType"] == "application/x-test" and got["Metadata"] == {"m": "1"}
    assert got["ETag"] == multipart_etag(parts)
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert blob_count(server) == 1  # parts were freed
    with pytest.raises(ClientError) as exc:
        s3.list_parts(Bucket=bucket, Key="big/file.bin", UploadId=upload_id)
    assert exc.value.response["Error"]["Code"] == "NoSuchUpload"


def test_multipart_errors(server: RunningServer, s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    small = [
        s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=n, Body=b"tiny")[
            "ETag"
        ]
        for n in (1, 2)
    ]

    def complete(parts: list[dict[str, Any]]) -> str:
        with pytest.raises(ClientError) as exc:
            s3.complete_multipart_upload(
                Bucket=bucket, Key="k", UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        return str(exc.value.response["Error"]["Code"])

    assert (
        complete([{"PartNumber": 1, "ETag": small[0]}, {"PartNumber": 2, "ETag": small[1]}])
        == "EntityTooSmall"
    )
    assert (
        complete([{"PartNumber": 2, "ETag": small[1]}, {"PartNumber": 1, "ETag": small[0]}])
        == "InvalidPartOrder"
    )
    assert (
        complete([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}]) == "InvalidPart"
    )
    assert complete([{"PartNumber": 3, "ETag": small[0]}]) == "InvalidPart"
    for number in (0, 10001):
        with pytest.raises(ClientError) as exc:
            s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=number, Body=b"x")
        assert exc.value.response["Error"]["Code"] == "InvalidArgument"
    with pytest.raises(ClientError) as exc:
        s3.upload_part(Bucket=bucket, Key="k", UploadId="no-such-upload", PartNumber=1, Body=b"x")
    assert exc.value.response["Error"]["Code"] == "NoSuchUpload"
    # a single small part is fine: the last part may be small
    ok = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="k",
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": small[0]}]},
    )
    assert ok["ETag"] == multipart_etag([b"tiny"])
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"tiny"
    assert blob_count(server) == 1


def test_abort_frees_parts(server: RunningServer, s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="k", UploadId=upload_id, PartNumber=1, Body=b"x" * 100)
    assert blob_count(server) == 1
    s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    assert blob_count(server) == 0
    with pytest.raises(ClientError) as exc:
        s3.abort_multipart_upload(Bucket=bucket, Key="k", UploadId=upload_id)
    assert exc.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError) as exc:
        s3.head_object(Bucket=bucket, Key="k")
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_boto3_transfer_manager(
    server: RunningServer, s3: Any, bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(12 * MIB + 5)
    config = TransferConfig(multipart_threshold=5 * MIB, multipart_chunksize=5 * MIB)
    s3.upload_fileobj(io.BytesIO(data), bucket, "managed.bin", Config=config)
    head = s3.head_object(Bucket=bucket, Key="managed.bin")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    target = tmp_path / "down.bin"
    s3.download_file(bucket, "managed.bin", str(target), Config=config)  # ranged GETs
    assert target.read_bytes() == data


def test_upload_part_copy_with_ranges(server: RunningServer, s3: Any, bucket: str) -> None:
    source = os.urandom(7 * MIB + 123)
    s3.put_object(Bucket=bucket, Key="src/big.bin", Body=source)
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="assembled")["UploadId"]
    copy_source = {"Bucket": bucket, "Key": "src/big.bin"}
    first = s3.upload_part_copy(
        Bucket=bucket,
        Key="assembled",
        UploadId=upload_id,
        PartNumber=1,
        CopySource=copy_source,
        CopySourceRange=f"bytes=0-{5 * MIB - 1}",
    )["CopyPartResult"]
    assert first["ETag"] == f'"{hashlib.md5(source[: 5 * MIB]).hexdigest()}"'
    assert first["LastModified"]
    # the whole source (no range), then an uploaded tail
    whole = s3.upload_part_copy(
        Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=2, CopySource=copy_source
    )["CopyPartResult"]
    assert whole["ETag"] == f'"{hashlib.md5(source).hexdigest()}"'
    tail = s3.upload_part(
        Bucket=bucket, Key="assembled", UploadId=upload_id, PartNumber=3, Body=b"tail"
    )
    listed = s3.list_parts(Bucket=bucket, Key="assembled", UploadId=upload_id)["Parts"]
    assert [p["Size"] for p in listed] == [5 * MIB, len(source), 4]
    done = s3.complete_multipart_upload(
        Bucket=bucket,
        Key="assembled",
        UploadId=upload_id,
        MultipartUpload={
            "Parts": [
                {"PartNumber": 1, "ETag": first["ETag"]},
                {"PartNumber": 2, "ETag": whole["ETag"]},
                {"PartNumber": 3, "ETag": tail["ETag"]},
            ]
        },
    )
    expected = source[: 5 * MIB] + source + b"tail"
    assert done["ETag"] == multipart_etag([source[: 5 * MIB], source, b"tail"])
    got = s3.get_object(Bucket=bucket, Key="assembled")["Body"].read()
    assert got == expected


def test_upload_part_copy_errors(server: RunningServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="small", Body=b"0123456789")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="dest")["UploadId"]

    def copy(**extra: Any) -> Any:
        return s3.upload_part_copy(
            Bucket=bucket,
            Key="dest",
            UploadId=upload_id,
            PartNumber=1,
            **{"CopySource": {"Bucket": bucket, "Key": "small"}, **extra},
        )

    for bad, code in [
        ({"CopySourceRange": "bytes=5-100"}, "InvalidRange"),
        ({"CopySourceRange": "bytes=7-3"}, "InvalidArgument"),
        ({"CopySourceRange": "5-6"}, "InvalidArgument"),
        ({"CopySource": {"Bucket": bucket, "Key": "missing"}}, "NoSuchKey"),
        ({"CopySource": {"Bucket": "no-such-bucket-x", "Key": "small"}}, "NoSuchBucket"),
        ({"CopySourceIfMatch": '"not-the-etag"'}, "PreconditionFailed"),
    ]:
        with pytest.raises(ClientError) as failed:
            copy(**bad)
        assert failed.value.response["Error"]["Code"] == code, bad
    with pytest.raises(ClientError) as failed:
        s3.upload_part_copy(
            Bucket=bucket,
            Key="dest",
            UploadId="no-such-upload",
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": "small"},
        )
    assert failed.value.response["Error"]["Code"] == "NoSuchUpload"
    part = copy(CopySourceRange="bytes=2-4")["CopyPartResult"]
    assert part["ETag"] == f'"{hashlib.md5(b"234").hexdigest()}"'
    assert s3.list_parts(Bucket=bucket, Key="dest", UploadId=upload_id)["Parts"][0]["Size"] == 3


def test_list_multipart_uploads_pages(s3: Any, bucket: str) -> None:
    created: list[tuple[str, str]] = []
    for key in ("k1", "k1", "k1", "k2", "p/a", "p/b", "q/a", "z z"):
        created.append((key, s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]))
    paginator = s3.get_paginator("list_multipart_uploads")
    for size in (1, 2, 3, 1000):
        pages = list(paginator.paginate(Bucket=bucket, PaginationConfig={"PageSize": size}))
        listed = [(u["Key"], u["UploadId"]) for p in pages for u in p.get("Uploads", [])]
        assert listed == created  # key order, then the order of initiation
        assert len(pages) == -(-len(created) // size)
    first = s3.list_multipart_uploads(Bucket=bucket, MaxUploads=2)
    assert first["IsTruncated"] and len(first["Uploads"]) == 2
    assert (first["NextKeyMarker"], first["NextUploadIdMarker"]) == created[1]
    after_k1 = s3.list_multipart_uploads(Bucket=bucket, KeyMarker="k1")
    assert [u["Key"] for u in after_k1["Uploads"]] == ["k2", "p/a", "p/b", "q/a", "z z"]
    # with a delimiter, a page may end on a common prefix; the next starts after it
    pages = list(paginator.paginate(Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 4}))
    assert [
        [u["Key"] for u in p.get("Uploads", [])]
        + [c["Prefix"] for c in p.get("CommonPrefixes", [])]
        for p in pages
    ] == [["k1", "k1", "k1", "k2"], ["z z", "p/", "q/"]]
    prefixed = s3.list_multipart_uploads(Bucket=bucket, Prefix="p/", EncodingType="url")
    assert [u["Key"] for u in prefixed["Uploads"]] == ["p/a", "p/b"]
    spaced = s3.list_multipart_uploads(Bucket=bucket, Prefix="z", EncodingType="url")
    assert [u["Key"] for u in spaced["Uploads"]] == ["z%20z"]
