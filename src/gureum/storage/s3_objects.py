"""S3 object operations: Put/Get/Head/Delete/Copy object and multipart uploads."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gureum.errors import S3Error
from gureum.storage.base import BlobReader, BlobWriter
from gureum.storage.catalog import Expect, ObjectMeta
from gureum.storage.objects import MAX_PARTS, ObjectStore
from gureum.storage.payload import DIGITS, Verify
from gureum.storage.s3_request import S3Request, http_date, iso_date, parse_http_date
from gureum.storage.s3_xml import add, document, malformed, parse, text, xml_response

MAX_OBJECT_SIZE = 5 * 1024**3  # single PUT, as S3
_COPY_RANGE = re.compile(r"bytes=([0-9]+)-([0-9]+)")
_RESPONSE_OVERRIDES = {
    "response-content-type": "content-type",
    "response-content-language": "content-language",
    "response-expires": "expires",
    "response-cache-control": "cache-control",
    "response-content-disposition": "content-disposition",
    "response-content-encoding": "content-encoding",
}


def _base_headers(req: S3Request) -> dict[str, str]:
    return {"x-amz-request-id": req.request_id, "x-amz-id-2": req.request_id}


def _filler(req: S3Request, max_size: int = MAX_OBJECT_SIZE):  # type: ignore[no-untyped-def]
    async def fill(writer: BlobWriter) -> Verify:
        return await req.body_into(writer, max_size)

    return fill


# -- conditions and ranges ---------------------------------------------------------------------


def _etag_matches(header: str, etag: str, *, weak: bool = False) -> bool:
    """Whether an If-Match (strong comparison) or, with `weak`, an If-None-Match (weak
    comparison: W/"x" matches "x") list names `etag`; quotes are optional."""
    wanted = [t.strip() for t in header.split(",")]
    if weak:
        wanted = [t.removeprefix("W/") for t in wanted]
    return "*" in wanted or etag.strip('"') in [t.strip('"') for t in wanted]


def check_conditions(
    headers: dict[str, str], meta: ObjectMeta, prefix: str = ""
) -> tuple[int, str] | None:
    """(304 or 412, the header that said so) when a conditional header says so, else None
    (RFC 7232 as S3 applies it)."""
    modified = int(meta.last_modified)
    if_match = headers.get(f"{prefix}if-match")
    if_unmodified = headers.get(f"{prefix}if-unmodified-since")
    if_none_match = headers.get(f"{prefix}if-none-match")
    if_modified = headers.get(f"{prefix}if-modified-since")
    if if_match is not None:
        if not _etag_matches(if_match, meta.etag):
            return 412, "If-Match"
    elif if_unmodified is not None:
        since = parse_http_date(if_unmodified)
        if since is not None and modified > since:
            return 412, "If-Unmodified-Since"
    if if_none_match is not None:
        if _etag_matches(if_none_match, meta.etag, weak=True):
            return 304, "If-None-Match"
    elif if_modified is not None:
        since = parse_http_date(if_modified)
        if since is not None and modified <= since:
            return 304, "If-Modified-Since"
    return None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for a single `bytes=` range; None to serve the whole object."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, sep, last = header[6:].strip().partition("-")
    if not sep or not (first or last) or not all(DIGITS.fullmatch(p) for p in (first, last) if p):
        return None
    if not first:
        suffix = int(last)
        if suffix == 0 or size == 0:  # no byte of an empty object can be named
            raise _invalid_range(size)
        start = max(0, size - suffix)
        return start, size - start
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored (RFC 9110)
    if start >= size:
        raise _invalid_range(size)
    end = min(int(last), size - 1) if last else size - 1
    return start, end - start + 1


def _precondition_failed(condition: str) -> S3Error:
    return S3Error(
        "PreconditionFailed",
        "At least one of the pre-conditions you specified did not hold",
        412,
        Condition=condition,
    )


def _invalid_range(size: int) -> S3Error:
    return S3Error(
        "InvalidRange", "The requested range is not satisfiable", 416, ActualObjectSize=str(size)
    )


def object_headers(req: S3Request, meta: ObjectMeta) -> dict[str, str]:
    headers = _base_headers(req)
    headers.update(
        {
            "etag": meta.etag,
            "last-modified": http_date(meta.last_modified),
            "accept-ranges": "bytes",
            "content-type": "binary/octet-stream",
        }
    )
    for name, value in meta.headers:
        if name.startswith("x-amz-checksum-"):
            if req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
                headers[name] = value
            continue
        headers[name] = value
    for parameter, name in _RESPONSE_OVERRIDES.items():
        if parameter in req.query:
            headers[name] = req.query[parameter]
    return headers


# -- operations --------------------------------------------------------------------------------


async def get_object(req: S3Request, store: ObjectStore, head: bool = False) -> Response:
    if "partNumber" in req.query:
        raise S3Error("NotImplemented", "GetObject by partNumber is not implemented", 501)
    span: tuple[int, int] | None = None
    status: tuple[int, str] | None = None

    def choose(meta: ObjectMeta) -> tuple[int, int]:
        nonlocal span, status
        status = check_conditions(req.headers, meta)
        span = parse_range(req.headers.get("range"), meta.size) if status is None else None
        return span if span is not None else (0, meta.size)

    reader: BlobReader | None = None
    if head:
        meta = await store.head(req.bucket, req.key)
        choose(meta)
    else:
        meta, reader = await store.open(req.bucket, req.key, choose)
    headers = object_headers(req, meta)
    if status is not None or span is not None:
        # a checksum describes the whole object; botocore would check it against this body
        headers = {k: v for k, v in headers.items() if not k.startswith("x-amz-checksum-")}
    if status is not None:
        if reader is not None:
            await reader.close()
        code, condition = status
        if code == 412:
            raise _precondition_failed(condition)
        return Response(
            b"", 304, headers={k: v for k, v in headers.items() if k not in ("content-type",)}
        )
    if span is not None:
        start, length = span
        headers["content-range"] = f"bytes {start}-{start + length - 1}/{meta.size}"
        code = 206
    else:
        length = meta.size
        code = 200
    headers["content-length"] = str(length)
    if reader is None:
        return Response(b"", code, headers=headers)
    return BlobResponse(reader, length, code, headers)


class BlobResponse(Response):
    """Streams a blob reader's chunks straight to ASGI `send` (no extra task per response,
    as Starlette's StreamingResponse needs), the last chunk marked final; closes the reader."""

    def __init__(
        self, reader: BlobReader, length: int, status: int, headers: dict[str, str]
    ) -> None:
        super().__init__(None, status, headers)
        self.reader = reader
        self.length = length

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            sent = 0
            async for chunk in self.reader:
                sent += len(chunk)
                more = sent < self.length
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await self.reader.close()


def write_condition(req: S3Request) -> Expect | None:
    """The check of a conditional write (If-None-Match: * or If-Match: <etag>) on the object
    it would replace, as S3 makes it (None: the write is unconditional)."""
    if_none_match = req.headers.get("if-none-match")
    if_match = req.headers.get("if-match")
    if if_none_match is not None and if_none_match.strip() != "*":
        raise S3Error(
            "NotImplemented",
            "A header you provided implies functionality that is not implemented: "
            "If-None-Match accepts only '*' on writes",
            501,
            Header="If-None-Match",
        )
    if if_none_match is None and if_match is None:
        return None
    key = req.key

    def expect(etag: str | None) -> None:
        if etag is None:
            if if_match is not None:
                raise S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=key)
            return
        if if_none_match is not None:
            raise _precondition_failed("If-None-Match")
        if if_match is not None and not _etag_matches(if_match, etag):
            raise _precondition_failed("If-Match")

    return expect


async def put_object(req: S3Request, store: ObjectStore) -> Response:
    if "x-amz-copy-source" in req.headers:
        return await copy_object(req, store)
    expect = write_condition(req)
    meta = await store.put(
        req.bucket, req.key, req.stored_headers(), _filler(req), req.context, expect
    )
    headers = {**_base_headers(req), "etag": meta.etag}
    headers.update({n: v for n, v in meta.headers if n.startswith("x-amz-checksum-")})
    return Response(b"", 200, headers=headers)


def check_version_id(query: dict[str, str], argument: str = "versionId") -> None:
    """Buckets are unversioned: an object's only version is `null`, as on S3 (a request for
    any other version must not act on the object, e.g. delete or copy it)."""
    version = query.get("versionId")
    if version is not None and version != "null":
        raise S3Error(
            "InvalidArgument",
            "Invalid version id specified",
            ArgumentName=argument,
            ArgumentValue=version[:1024],
        )


def _copy_source(req: S3Request) -> tuple[str, str]:
    raw, _, query = req.headers["x-amz-copy-source"].partition("?")
    # copying another version must not copy the current one
    check_version_id(dict(parse_qsl(query, keep_blank_values=True)), "x-amz-copy-source")
    source = unquote(raw).removeprefix("/")
    src_bucket, sep, src_key = source.partition("/")
    if not sep or not src_key:
        raise S3Error(
            "InvalidArgument",
            "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
            ArgumentName="x-amz-copy-source",
        )
    return src_bucket, src_key


def _check_copy_source(req: S3Request, meta: ObjectMeta) -> None:
    if check_conditions(req.headers, meta, prefix="x-amz-copy-source-") is not None:
        raise S3Error(
            "PreconditionFailed",
            "At least one of the pre-conditions you specified did not hold",
            412,
        )


async def copy_object(req: S3Request, store: ObjectStore) -> Response:
    src_bucket, src_key = _copy_source(req)
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error(
            "InvalidArgument",
            "Unknown metadata directive.",
            ArgumentName="x-amz-metadata-directive",
        )
    if directive == "COPY" and (src_bucket, src_key) == (req.bucket, req.key):
        raise S3Error(
            "InvalidRequest",
            "This copy request is illegal because it is trying to copy an object to itself "
            "without changing the object's metadata, storage class, website redirect "
            "location or encryption attributes.",
        )

    def check(meta: ObjectMeta) -> None:
        _check_copy_source(req, meta)

    # the copy request itself has no body; drain what a client might send anyway
    await req.small_body()
    meta = await store.copy(
        (src_bucket, src_key),
        req.bucket,
        req.key,
        req.stored_headers() if directive == "REPLACE" else None,
        req.context,
        check,
    )
    root = document("CopyObjectResult")
    add(root, "LastModified", iso_date(meta.last_modified))
    add(root, "ETag", meta.etag)
    return xml_response(root, req.request_id)


async def delete_object(req: S3Request, store: ObjectStore) -> Response:
    if "uploadId" in req.query:
        await store.abort(req.bucket, req.key, req.query["uploadId"])
    else:
        await store.delete(req.bucket, req.key, req.context)
    return Response(b"", 204, headers=_base_headers(req))


# -- multipart ---------------------------------------------------------------------------------


async def create_upload(req: S3Request, store: ObjectStore) -> Response:
    await req.small_body()
    upload = await store.create_upload(req.bucket, req.key, req.stored_headers())
    root = document("InitiateMultipartUploadResult")
    add(root, "Bucket", req.bucket)
    add(root, "Key", req.key)
    add(root, "UploadId", upload.upload_id)
    return xml_response(root, req.request_id)


def _int_param(req: S3Request, name: str, default: int, low: int, high: int) -> int:
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise S3Error(
            "InvalidArgument",
            f"{name} must be an integer between {low} and {high}",
            ArgumentName=name,
            ArgumentValue=raw[:64],
        )
    return value


async def upload_part(req: S3Request, store: ObjectStore) -> Response:
    if "x-amz-copy-source" in req.headers:
        return await upload_part_copy(req, store)
    number = _int_param(req, "partNumber", 0, 1, MAX_PARTS)
    part = await store.put_part(req.bucket, req.key, req.query["uploadId"], number, _filler(req))
    return Response(b"", 200, headers={**_base_headers(req), "etag": part.etag})


def copy_source_range(header: str | None, size: int) -> tuple[int, int]:
    """(start, length) of `x-amz-copy-source-range: bytes=first-last` (None: everything)."""
    if header is None:
        return 0, size
    match = _COPY_RANGE.fullmatch(header.strip())
    if match is None or int(match[1]) > int(match[2]):
        raise S3Error(
            "InvalidArgument",
            "The x-amz-copy-source-range value must be of the form bytes=first-last where "
            "first and last are the zero-based offsets of the first and last bytes to copy",
            ArgumentName="x-amz-copy-source-range",
            ArgumentValue=header[:64],
        )
    first, last = int(match[1]), int(match[2])
    if last >= size:
        raise S3Error(
            "InvalidRange",
            "The requested range is not satisfiable",
            416,
            ActualObjectSize=str(size),
        )
    return first, last - first + 1


async def upload_part_copy(req: S3Request, store: ObjectStore) -> Response:
    number = _int_param(req, "partNumber", 0, 1, MAX_PARTS)
    source = _copy_source(req)

    def span(meta: ObjectMeta) -> tuple[int, int]:
        _check_copy_source(req, meta)
        return copy_source_range(req.headers.get("x-amz-copy-source-range"), meta.size)

    await req.small_body()  # no body; drain what a client might send anyway
    part = await store.copy_part(source, req.bucket, req.key, req.query["uploadId"], number, span)
    root = document("CopyPartResult")
    add(root, "LastModified", iso_date(part.last_modified))
    add(root, "ETag", part.etag)
    return xml_response(root, req.request_id)


async def complete_upload(req: S3Request, store: ObjectStore) -> Response:
    root = parse(await req.small_body())
    if root.tag != "CompleteMultipartUpload":
        raise malformed()
    wanted: list[tuple[int, str]] = []
    for part in root.findall("Part"):
        number, etag = text(part, "PartNumber"), text(part, "ETag")
        if number is None or etag is None or not DIGITS.fullmatch(number.strip()):
            raise malformed()
        wanted.append((int(number), etag))
    expect = write_condition(req)
    meta = await store.complete(
        req.bucket, req.key, req.query["uploadId"], wanted, req.context, expect
    )
    result = document("CompleteMultipartUploadResult")
    add(result, "Location", f"/{req.bucket}/{req.key}")
    add(result, "Bucket", req.bucket)
    add(result, "Key", req.key)
    add(result, "ETag", meta.etag)
    return xml_response(result, req.request_id)


async def list_parts(req: S3Request, store: ObjectStore) -> Response:
    upload_id = req.query["uploadId"]
    await store.catalog.get_bucket(req.bucket)
    await store.catalog.get_upload(req.bucket, req.key, upload_id)
    max_parts = _int_param(req, "max-parts", 1000, 0, 2**31 - 1)
    marker = _int_param(req, "part-number-marker", 0, 0, MAX_PARTS)
    parts = await store.catalog.list_parts(upload_id, marker, min(max_parts, 1000) + 1)
    # max-parts=0 asks for no page to continue from, as with max-keys
    truncated = max_parts > 0 and len(parts) > min(max_parts, 1000)
    parts = parts[: min(max_parts, 1000)]
    root = document("ListPartsResult")
    add(root, "Bucket", req.bucket)
    add(root, "Key", req.key)
    add(root, "UploadId", upload_id)
    add(root, "PartNumberMarker", marker)
    if parts:
        add(root, "NextPartNumberMarker", parts[-1].part_number)
    add(root, "MaxParts", max_parts)
    add(root, "IsTruncated", truncated)
    add(root, "StorageClass", "STANDARD")
    for part in parts:
        node = add(root, "Part")
        add(node, "PartNumber", part.part_number)
        add(node, "LastModified", iso_date(part.last_modified))
        add(node, "ETag", part.etag)
        add(node, "Size", part.size)
    return xml_response(root, req.request_id)
