"""Read an S3 request body from ASGI `receive` into a blob, verifying it on the way.

Handles plain bodies (declared sha256 or UNSIGNED-PAYLOAD) and `aws-chunked` bodies
(STREAMING-UNSIGNED-PAYLOAD-TRAILER, boto3's default since 1.36, and the signed
STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER] forms with per-chunk signatures), and checks
Content-MD5, x-amz-checksum-* (as a header or a trailer) and x-amz-decoded-content-length.
The body is never held whole: chunks go to the writer as they arrive, and the writer hashes
them in the same pass that writes them. Framing and length errors raise an S3Error at once;
the digests are compared by the check `receive_body` returns, which the writer's `commit` runs
before it makes anything durable. Either way the writer is aborted, so nothing of a bad body
is ever stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import zlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Receive

from gureum.errors import S3Error
from gureum.storage.base import BlobWriter, Chunk

UNSIGNED = "UNSIGNED-PAYLOAD"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_LINE = 4096  # a chunk header or trailer line; real ones are < 200 bytes
# ASCII digits, which int() always reads (str.isdigit() also says yes to '²', which it does not)
DIGITS = re.compile("[0-9]+")
_NOT_CHECKSUMS = ("x-amz-checksum-mode", "x-amz-checksum-algorithm", "x-amz-checksum-type")


class _Checksum(Protocol):
    def update(self, data: Chunk, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Chunk, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


CHECKSUMS: dict[str, Callable[[], _Checksum]] = {
    "crc32": _Crc32,
    "sha1": hashlib.sha1,
    "sha256": hashlib.sha256,
}


@dataclass(frozen=True)
class ChunkSigning:
    """What chunk signatures of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body chain from."""

    signing_key: bytes
    seed_signature: str
    timestamp: str
    scope: str  # <date>/<region>/s3/aws4_request


@dataclass(frozen=True)
class Received:
    size: int
    md5_hex: str
    checksum: tuple[str, str] | None  # (algorithm, base64 value), verified


# Checks a received body against what the request declared (raises S3Error) and says what was
# received; for the writer's `commit(check)`, which runs it once the writer's hashes are whole.
Verify = Callable[[], Received]


def _incomplete() -> S3Error:
    return S3Error(
        "IncompleteBody",
        "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    )


def _malformed(detail: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {detail}")


class _Wire:
    """Buffered reads from ASGI `receive`; whole messages pass through uncopied when they can."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._buffer = bytearray()
        self.done = False

    async def _message(self) -> bytes:
        if self.done:
            raise _incomplete()
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.done = True
            raise _incomplete()
        if not message.get("more_body", False):
            self.done = True
        body: bytes = message.get("body", b"")
        return body

    async def line(self) -> bytes:
        while True:
            end = self._buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 2]
                return line
            if len(self._buffer) > MAX_LINE:
                raise _malformed("line too long")
            self._buffer += await self._message()

    async def take(self, size: int) -> bytes:
        """Up to `size` bytes (at least one), as soon as any are there."""
        while not self._buffer:
            body = await self._message()
            if len(body) <= size and body:
                return body
            self._buffer += body
        with memoryview(self._buffer) as view:
            chunk = bytes(view[:size])
        del self._buffer[:size]
        return chunk

    async def rest(self) -> bytes | None:
        """The next piece of the body, None at its end."""
        if self._buffer:
            chunk = bytes(self._buffer)
            self._buffer.clear()
            return chunk
        while not self.done:
            body = await self._message()
            if body:
                return body
        return None

    async def finish(self) -> None:
        """Require that nothing but the end of the body follows."""
        if await self.rest() is not None:
            raise _malformed("data after the final chunk")


def _declared_checksum(headers: Mapping[str, str]) -> tuple[str | None, str | None, bool]:
    """(algorithm, expected base64 value or None, value comes as a trailer)."""
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    if trailer:
        if not trailer.startswith("x-amz-checksum-") or "," in trailer:
            raise S3Error("InvalidRequest", f"Unsupported x-amz-trailer: {trailer}")
        algorithm = trailer.removeprefix("x-amz-checksum-")
        _check_algorithm(algorithm)
        return algorithm, None, True
    for name, value in headers.items():
        if name.startswith("x-amz-checksum-") and name not in _NOT_CHECKSUMS:
            algorithm = name.removeprefix("x-amz-checksum-")
            _check_algorithm(algorithm)
            return algorithm, value.strip(), False
    sdk_algorithm = headers.get("x-amz-sdk-checksum-algorithm", "").lower() or None
    if sdk_algorithm is not None:
        _check_algorithm(sdk_algorithm)
    return sdk_algorithm, None, False


def _check_algorithm(algorithm: str) -> None:
    if algorithm not in CHECKSUMS:
        raise S3Error(
            "InvalidRequest",
            f"Checksum algorithm {algorithm.upper()} is not supported here; "
            f"use one of {', '.join(a.upper() for a in CHECKSUMS)}.",
        )


def _content_md5(headers: Mapping[str, str]) -> bytes | None:
    raw = headers.get("content-md5")
    if raw is None:
        return None
    try:
        digest = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != 16:
        raise S3Error("InvalidDigest", "The Content-MD5 you specified was invalid.")
    return digest


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if not DIGITS.fullmatch(raw.strip()):
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer.")
    return int(raw.strip())


async def receive_body(
    receive: Receive,
    headers: Mapping[str, str],
    payload_hash: str,
    writer: BlobWriter,
    *,
    max_size: int,
    signing: ChunkSigning | None = None,
) -> Verify:
    """Stream the request body into `writer`, which also hashes it; return the check to pass
    to the writer's `commit` (see the module docstring)."""
    algorithm, expected_checksum, trailer = _declared_checksum(headers)
    expected_md5 = _content_md5(headers)
    chunked = payload_hash.startswith("STREAMING-") or "aws-chunked" in headers.get(
        "content-encoding", ""
    )
    if payload_hash.startswith("STREAMING-") and payload_hash not in (
        STREAMING_UNSIGNED_TRAILER,
        STREAMING_SIGNED,
        STREAMING_SIGNED_TRAILER,
    ):
        raise S3Error(
            "NotImplemented", f"x-amz-content-sha256 {payload_hash} is not supported", 501
        )
    if payload_hash.startswith(STREAMING_SIGNED) and signing is None:
        raise S3Error("InvalidRequest", "Chunk signatures need a header-signed request.")
    length = _int_header(headers, "x-amz-decoded-content-length" if chunked else "content-length")
    if chunked and length is None:
        raise S3Error(
            "MissingContentLength", "You must provide the x-amz-decoded-content-length header.", 411
        )
    if length is not None and length > max_size:
        raise S3Error(
            "EntityTooLarge",
            "Your proposed upload exceeds the maximum allowed size",
            MaxSizeAllowed=str(max_size),
        )
    md5 = hashlib.md5()
    checksum: _Checksum | None = CHECKSUMS[algorithm]() if algorithm else None
    sha256 = hashlib.sha256() if not chunked and payload_hash != UNSIGNED else None
    writer.hash_with([h for h in (md5, checksum, sha256) if h is not None])
    wire = _Wire(receive)
    size = 0

    async def accept(data: bytes) -> None:
        nonlocal size
        size += len(data)
        if size > max_size or (length is not None and size > length):
            raise _too_long(length, max_size)
        await writer.write(data)

    trailers: dict[str, str] = {}
    if chunked:
        trailers = await _read_chunks(
            wire, accept, signing if payload_hash.startswith(STREAMING_SIGNED) else None
        )
    else:
        while (piece := await wire.rest()) is not None:
            await accept(piece)
    if length is not None and size != length:
        raise _incomplete()
    if trailer and algorithm is not None:
        expected_checksum = trailers.get(f"x-amz-checksum-{algorithm}")
        if expected_checksum is None:
            raise S3Error("InvalidRequest", f"The x-amz-checksum-{algorithm} trailer is missing.")

    def verify() -> Received:
        if sha256 is not None and not hmac.compare_digest(sha256.hexdigest(), payload_hash):
            raise S3Error(
                "XAmzContentSHA256Mismatch",
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        if expected_md5 is not None and not hmac.compare_digest(md5.digest(), expected_md5):
            raise S3Error(
                "BadDigest", "The Content-MD5 you specified did not match what we received."
            )
        value = base64.b64encode(checksum.digest()).decode() if checksum is not None else None
        if expected_checksum is not None and value != expected_checksum:
            assert algorithm is not None
            raise S3Error(
                "BadDigest",
                f"The {algorithm.upper()} you specified did not match the calculated checksum.",
            )
        return Received(
            size=size,
            md5_hex=md5.hexdigest(),
            checksum=(algorithm, value) if algorithm and value else None,
        )

    return verify


def _too_long(length: int | None, max_size: int) -> S3Error:
    if length is not None and length < max_size:
        return S3Error("InvalidRequest", "The body is longer than its declared length.")
    return S3Error(
        "EntityTooLarge",
        "Your proposed upload exceeds the maximum allowed size",
        MaxSizeAllowed=str(max_size),
    )


async def _read_chunks(
    wire: _Wire, accept: Callable[[bytes], Awaitable[None]], signing: ChunkSigning | None
) -> dict[str, str]:
    """Decode aws-chunked framing, passing data to `accept`; return the trailers."""
    previous = signing.seed_signature if signing else ""
    while True:
        header = (await wire.line()).decode("latin-1")
        size_text, _, extension = header.partition(";")
        try:
            size = int(size_text.strip(), 16)
        except ValueError:
            raise _malformed(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise _malformed("negative chunk size")
        chunk_hash = hashlib.sha256() if signing else None
        remaining = size
        while remaining:
            data = await wire.take(remaining)
            remaining -= len(data)
            if chunk_hash is not None:
                chunk_hash.update(data)
            await accept(data)
        if signing is not None:
            assert chunk_hash is not None
            name, _, given = extension.partition("=")
            if name.strip() != "chunk-signature":
                raise S3Error("SignatureDoesNotMatch", "A chunk signature is missing.", 403)
            string_to_sign = "\n".join(
                (
                    "AWS4-HMAC-SHA256-PAYLOAD",
                    signing.timestamp,
                    signing.scope,
                    previous,
                    EMPTY_SHA256,
                    chunk_hash.hexdigest(),
                )
            )
            expected = hmac.new(signing.signing_key, string_to_sign.encode(), hashlib.sha256)
            if not hmac.compare_digest(expected.hexdigest(), given.strip()):
                raise S3Error(
                    "SignatureDoesNotMatch",
                    "The request signature we calculated does not match the signature you "
                    "provided (chunk signature).",
                    403,
                )
            previous = given.strip()
        if size == 0:
            break
        if await wire.line() != b"":
            raise _malformed("chunk data longer than its declared size")
    trailers: dict[str, str] = {}
    while (line := await wire.line()) != b"":
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise _malformed("bad trailer line")
        trailers[name.strip().lower()] = value.strip()
    await wire.finish()
    return trailers
