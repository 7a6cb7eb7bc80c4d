"""Request bodies: aws-chunked with trailing CRC32, chunk signatures, digests, lengths, and
truncated uploads — every bad body is refused with S3's code and leaves nothing stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
import zlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from s3_testkit import error_code, signed

from tests.conftest import RunningServer


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def chunked(pieces: list[bytes], trailer: str) -> bytes:
    body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces)
    return body + b"0\r\n" + trailer.encode() + b"\r\n\r\n"


def chunked_headers(size: int) -> dict[str, str]:
    return {
        "Content-Encoding": "aws-chunked",
        "x-amz-decoded-content-length": str(size),
        "x-amz-trailer": "x-amz-checksum-crc32",
        "x-amz-sdk-checksum-algorithm": "CRC32",
    }


def stored_keys(s3: Any, bucket: str) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]


def test_aws_chunked_with_trailing_crc32(server: RunningServer, s3: Any, bucket: str) -> None:
    pieces = [b"a" * 70_000, b"b" * 1000, b"c"]
    data = b"".join(pieces)
    body = chunked(pieces, f"x-amz-checksum-crc32:{crc32_b64(data)}")
    response = signed(
        server,
        "PUT",
        f"/{bucket}/chunked",
        body,
        {**chunked_headers(len(data)), "Content-Encoding": "aws-chunked,gzip"},
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="chunked", ChecksumMode="ENABLED")
    assert got["Body"].read() == data
    assert got["ContentEncoding"] == "gzip"  # aws-chunked is transport only
    assert got["ChecksumCRC32"] == crc32_b64(data)


@pytest.mark.parametrize(
    ("trailer", "declared", "code"),
    [
        ("x-amz-checksum-crc32:AAAAAA==", 6, "BadDigest"),
        ("", 6, "InvalidRequest"),  # the promised trailer is missing
        ("x-amz-checksum-crc32:{crc}", 7, "IncompleteBody"),  # decoded length lies
    ],
)
def test_bad_chunked_bodies_store_nothing(
    server: RunningServer, s3: Any, bucket: str, trailer: str, declared: int, code: str
) -> None:
    data = b"abcdef"
    body = chunked([data], trailer.format(crc=crc32_b64(data)))
    if not trailer:
        body = b"6\r\nabcdef\r\n0\r\n\r\n"
    response = signed(
        server,
        "PUT",
        f"/{bucket}/bad",
        body,
        chunked_headers(declared),
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert response.status_code == 400 and error_code(response) == code
    assert stored_keys(s3, bucket) == []
    assert not list((server.settings.data_dir / "objects" / "tmp").iterdir())


def test_malformed_chunk_framing(server: RunningServer, s3: Any, bucket: str) -> None:
    response = signed(
        server,
        "PUT",
        f"/{bucket}/bad",
        b"zz\r\nabc\r\n0\r\n\r\n",
        chunked_headers(3),
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert response.status_code == 400 and error_code(response) == "InvalidRequest"
    assert stored_keys(s3, bucket) == []


def _signing_key(secret: str, date: str, region: str) -> bytes:
    key = ("AWS4" + secret).encode()
    for part in (date, region, "s3", "aws4_request"):
        key = hmac.digest(key, part.encode(), hashlib.sha256)
    return key


def test_signed_chunks(server: RunningServer, s3: Any, bucket: str) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD: each chunk signed, chained from the seed."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    root = server.platform.root
    region = server.settings.region
    pieces = [b"x" * 8192, b"y" * 100]
    data = b"".join(pieces)

    class Seed(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: AWSRequest) -> str:
            return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

    def send(tamper: bool) -> Any:
        import httpx

        url = f"{server.endpoint}/{bucket}/signed"
        request = AWSRequest(
            method="PUT",
            url=url,
            headers={"Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": "8292"},
        )
        Seed(Credentials(root.access_key_id, root.secret_access_key), "s3", region).add_auth(
            request
        )
        timestamp = request.headers["X-Amz-Date"]
        seed = request.headers["Authorization"].rsplit("Signature=", 1)[1]
        key = _signing_key(root.secret_access_key, timestamp[:8], region)
        scope = f"{timestamp[:8]}/{region}/s3/aws4_request"
        previous, body = seed, b""
        empty = hashlib.sha256(b"").hexdigest()
        for piece in [*pieces, b""]:
            sts = "\n".join(
                (
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    timestamp,
                    scope,
                    previous,
                    empty,
                    hashlib.sha256(piece).hexdigest(),
                )
            )
            signature = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
            wire = piece.replace(b"y", b"z") if tamper and piece.startswith(b"y") else piece
            body += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + wire + b"\r\n"
            previous = signature
        return httpx.put(url, content=body, headers=dict(request.headers.items()))

    forged = send(tamper=True)
    assert forged.status_code == 403 and error_code(forged) == "SignatureDoesNotMatch"
    assert stored_keys(s3, bucket) == []
    good = send(tamper=False)
    assert good.status_code == 200, good.text
    assert s3.get_object(Bucket=bucket, Key="signed")["Body"].read() == data


def test_declared_sha256_and_md5_are_enforced(server: RunningServer, s3: Any, bucket: str) -> None:
    lie = hashlib.sha256(b"something else").hexdigest()
    response = signed(server, "PUT", f"/{bucket}/k", b"payload", payload_hash=lie)
    assert response.status_code == 400 and error_code(response) == "XAmzContentSHA256Mismatch"
    bad_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    response = signed(server, "PUT", f"/{bucket}/k", b"payload", {"Content-MD5": bad_md5})
    assert response.status_code == 400 and error_code(response) == "BadDigest"
    response = signed(server, "PUT", f"/{bucket}/k", b"payload", {"Content-MD5": "nope"})
    assert response.status_code == 400 and error_code(response) == "InvalidDigest"
    response = signed(
        server, "PUT", f"/{bucket}/k", b"payload", {"x-amz-checksum-crc32": crc32_b64(b"x")}
    )
    assert response.status_code == 400 and error_code(response) == "BadDigest"
    # the digests are checked before the blob is made durable: nothing of a bad body is left
    objects = server.settings.data_dir / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()]
    good_md5 = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    response = signed(server, "PUT", f"/{bucket}/k", b"payload", {"Content-MD5": good_md5})
    assert response.status_code == 200
    assert stored_keys(s3, bucket) == ["k"]


def test_truncated_upload_stores_nothing(server: RunningServer, s3: Any, bucket: str) -> None:
    """The client promises 1 MiB, sends half and hangs up."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    root = server.platform.root
    url = f"{server.endpoint}/{bucket}/truncated"
    request = AWSRequest(method="PUT", url=url, headers={"Content-Length": str(1 << 20)})
    request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    S3SigV4Auth(
        Credentials(root.access_key_id, root.secret_access_key), "s3", server.settings.region
    ).add_auth(request)
    parts = urlsplit(url)
    head = f"PUT {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host"
    )
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(head.encode() + b"\r\n" + b"x" * (1 << 19))
        time.sleep(0.3)
    time.sleep(0.3)
    assert stored_keys(s3, bucket) == []
    assert not list((server.settings.data_dir / "objects" / "tmp").iterdir())


def test_digits_int_cannot_read_are_refused(server: RunningServer, s3: Any, bucket: str) -> None:
    """'²' passes str.isdigit() but not int(): a bad request, not an internal error."""
    headers = {**chunked_headers(3), "x-amz-decoded-content-length": "\xb2"}
    response = signed(
        server,
        "PUT",
        f"/{bucket}/k",
        chunked([b"abc"], f"x-amz-checksum-crc32:{crc32_b64(b'abc')}"),
        headers,
        payload_hash="STREAMING-UNSIGNED-PAYLOAD-TRAILER",
    )
    assert response.status_code == 400 and error_code(response) == "InvalidArgument"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    parts = "<Part><PartNumber>\u00b2</PartNumber><ETag>x</ETag></Part>"
    response = signed(
        server,
        "POST",
        f"/{bucket}/k?uploadId={upload_id}",
        f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode(),
    )
    assert response.status_code == 400 and error_code(response) == "MalformedXML"
    assert stored_keys(s3, bucket) == []
