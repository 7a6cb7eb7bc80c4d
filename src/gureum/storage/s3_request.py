"""`S3Request`: one S3 API request as the handlers see it, parsed from the ASGI scope."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from urllib.parse import parse_qsl, unquote

from starlette.types import Receive, Scope

from gureum.errors import S3Error
from gureum.iam.sigv4 import Identity, SecretLookup
from gureum.storage.base import BlobWriter, Chunk, Hash
from gureum.storage.catalog import Headers
from gureum.storage.objects import WriteContext
from gureum.storage.payload import ChunkSigning, Verify, receive_body
from gureum.storage.s3_xml import new_request_id

MAX_XML_BODY = 2 * 1024 * 1024
MAX_USER_METADATA = 2048
STORED_HEADERS = (
    "content-type",
    "content-disposition",
    "content-encoding",
    "content-language",
    "cache-control",
    "expires",
)
_SIGNATURE = re.compile(r"Signature=([0-9a-f]{64})")
_IP_LIKE = re.compile(r"[0-9.]+|.*:.*")


class _MemoryWriter:
    """A `BlobWriter` into memory, for small XML request bodies."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._hashes: Sequence[Hash] = ()

    @property
    def size(self) -> int:
        return len(self.data)

    def hash_with(self, hashes: Sequence[Hash]) -> None:
        self._hashes = hashes

    async def write(self, data: Chunk) -> None:
        for digest in self._hashes:
            digest.update(data)
        self.data += data

    async def commit(self, check: Callable[[], None] | None = None) -> str:
        if check is not None:
            check()
        return ""

    async def abort(self) -> None:
        return None


@dataclass
class S3Request:
    scope: Scope
    receive: Receive
    identity: Identity
    lookup: SecretLookup
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    request_id: str

    @classmethod
    def from_scope(
        cls,
        scope: Scope,
        receive: Receive,
        lookup: SecretLookup,
        hosted: str | None = None,
    ) -> S3Request:
        """Parse the request; with `hosted` (the bucket a virtual-hosted-style `Host` names)
        the whole path is the key."""
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        path = raw_path.split("?", 1)[0]
        bucket, _, key = path.removeprefix("/").partition("/")
        if hosted is not None:
            bucket, key = hosted, path.removeprefix("/")
        try:
            bucket = unquote(bucket, errors="strict")
            key = unquote(key, errors="strict")
            query = dict(
                parse_qsl(
                    scope.get("query_string", b"").decode("latin-1"),
                    keep_blank_values=True,
                    errors="strict",
                )
            )
        except UnicodeDecodeError:
            raise S3Error("InvalidURI", "Couldn't parse the specified URI.") from None
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        return cls(
            scope,
            receive,
            scope["gureum.identity"],
            lookup,
            scope["method"],
            bucket,
            key,
            query,
            headers,
            new_request_id(),
        )

    @property
    def presigned(self) -> bool:
        return "X-Amz-Signature" in self.query

    @property
    def context(self) -> WriteContext:
        client = self.scope.get("client")
        return WriteContext(
            account_id=self.identity.account_id,
            principal=self.identity.principal,
            request_id=self.request_id,
            source_ip=client[0] if client else "",
        )

    def _chunk_signing(self) -> ChunkSigning | None:
        authorization = self.headers.get("authorization", "")
        match = _SIGNATURE.search(authorization)
        timestamp = self.headers.get("x-amz-date", "")
        if match is None or not timestamp:
            return None
        secret, _, _ = self.lookup(
            self.identity.access_key_id, self.headers.get("x-amz-security-token")
        )
        date = timestamp[:8]
        key = ("AWS4" + secret).encode()
        for part in (date, self.identity.region, self.identity.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), hashlib.sha256)
        scope = f"{date}/{self.identity.region}/{self.identity.service}/aws4_request"
        return ChunkSigning(key, match.group(1), timestamp, scope)

    async def body_into(self, writer: BlobWriter, max_size: int) -> Verify:
        """Stream the body into a blob writer; return the check for its `commit`."""
        payload_hash = self.identity.payload_hash or "UNSIGNED-PAYLOAD"
        signing = self._chunk_signing() if payload_hash.startswith("STREAMING-AWS4") else None
        return await receive_body(
            self.receive,
            self.headers,
            payload_hash,
            writer,
            max_size=max_size,
            signing=signing,
        )

    async def small_body(self) -> bytes:
        """A small (XML) body, verified, in memory."""
        writer = _MemoryWriter()
        verify = await self.body_into(writer, MAX_XML_BODY)
        verify()  # a memory writer hashes as it is written: its hashes are whole already
        return bytes(writer.data)

    def stored_headers(self) -> Headers:
        """Content headers and x-amz-meta-* to keep with an object."""
        stored: Headers = []
        for name in STORED_HEADERS:
            value = self.headers.get(name)
            if name == "content-encoding" and value:
                parts = [p.strip() for p in value.split(",") if p.strip() != "aws-chunked"]
                value = ",".join(parts)
            if value:
                stored.append((name, value))
        meta = [(n, v) for n, v in self.headers.items() if n.startswith("x-amz-meta-")]
        if sum(len(n) - len("x-amz-meta-") + len(v) for n, v in meta) > MAX_USER_METADATA:
            raise S3Error(
                "MetadataTooLarge",
                "Your metadata headers exceed the maximum allowed metadata size.",
                MaxSizeAllowed=str(MAX_USER_METADATA),
            )
        return stored + meta


def hosted_bucket(scope: Scope, virtual_hosts: tuple[str, ...]) -> str | None:
    """The bucket a virtual-hosted-style `Host: <bucket>.<one of virtual_hosts>` would name,
    else None."""
    if not virtual_hosts:
        return None
    host = next((v for n, v in scope["headers"] if n.lower() == b"host"), b"")
    name = host.decode("latin-1").lower()
    if name.startswith("["):
        return None  # an IPv6 literal
    name = name.rpartition(":")[0] if ":" in name else name
    for suffix in virtual_hosts:
        if name.endswith("." + suffix) and len(name) > len(suffix) + 1:
            return name[: -len(suffix) - 1]
    return None


def virtual_host_suffixes(endpoint_host: str) -> tuple[str, ...]:
    """Host names under which `<bucket>.<name>` addresses a bucket: `localhost` (RFC 6761
    loopback names) and the endpoint's own host name (not an IP address)."""
    suffixes = ["localhost"]
    name = endpoint_host.lower()
    if name and name != "localhost" and not _IP_LIKE.fullmatch(name):
        suffixes.append(name)
    return tuple(suffixes)


def http_date(epoch: float) -> str:
    return _http_date(int(epoch))


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    # cached: every GET of an object formats the same Last-Modified (email.utils is slow)
    return format_datetime(datetime.fromtimestamp(seconds, UTC), usegmt=True)


def iso_date(epoch: float) -> str:
    moment = datetime.fromtimestamp(epoch, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_http_date(value: str) -> float | None:
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
