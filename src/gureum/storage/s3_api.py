"""The S3 API: an ASGI app the gateway mounts as the streaming service `s3`.

Path-style (`/bucket/key`) everywhere; virtual-hosted style (`Host: bucket.<name>`, path
`/key`) for `<name>` = `localhost` or the endpoint's host name (see `virtual_host_suffixes`)
when that bucket exists (or the path is `/`), so `http://s3.localhost:8070` still works as a
path-style endpoint.
The gateway routes `/v1/...` and `/healthz` before any service, so under virtual-hosted
style keys starting `v1/` or equal to `healthz` are reachable path-style only.

The gateway has verified the request's signature from its headers; bodies are read and
verified here, while they stream into blobs (see `gureum.storage.payload`). Every error is
answered in S3's XML shape with an `x-amz-request-id`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Awaitable, Callable
from urllib.parse import quote, urlsplit

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gureum.control.registry import Registry
from gureum.errors import ResourceNotFound, S3Error, SQSError
from gureum.events.queue_store import QueueStore
from gureum.iam.sigv4 import SecretLookup
from gureum.platform import Platform
from gureum.storage import s3_objects
from gureum.storage.catalog import Listing, ObjectCatalog, check_bucket_name, no_such_bucket
from gureum.storage.notifications import (
    LambdaTarget,
    Notifier,
    QueueTarget,
    Target,
    check_unambiguous,
    dump_targets,
    load_targets,
    new_target_id,
    parse_function_arn,
    parse_queue_arn,
    validate_target,
)
from gureum.storage.objects import ObjectStore
from gureum.storage.objects_fs import FileBlobStore
from gureum.storage.payload import DIGITS
from gureum.storage.s3_request import (
    S3Request,
    hosted_bucket,
    iso_date,
    virtual_host_suffixes,
)
from gureum.storage.s3_xml import (
    Element,
    add,
    close_connection,
    document,
    error_response,
    has_body,
    malformed,
    parse,
    presigned,
    raw_path,
    text,
    xml_response,
)
from gureum.storage.sweeper import Sweeper

MAX_DELETE_KEYS = 1000
# S3's subresources (query parameters that name another operation on the same path) that
# are not served here: a request naming one is refused, never served as the plain operation
# (a PutObjectTagging would otherwise overwrite the object with its XML, and a
# DeleteBucketEncryption delete the bucket)
UNSUPPORTED_SUBRESOURCES = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "attributes",
        "cors",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "legal-hold",
        "lifecycle",
        "logging",
        "metadataTable",
        "metrics",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "renameObject",
        "replication",
        "requestPayment",
        "restore",
        "retention",
        "select",
        "session",
        "tagging",
        "torrent",
        "versions",
        "website",
    }
)
Operation = Callable[[S3Request, ObjectStore], Awaitable[Response]]


class S3API:
    """Routes S3 requests to operations; renders every failure as S3's XML error."""

    def __init__(
        self,
        store: ObjectStore,
        lookup: SecretLookup,
        registry: Registry,
        queues: QueueStore,
        sweeper: Sweeper | None = None,
        virtual_hosts: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.virtual_hosts = virtual_hosts
        self.lookup = lookup
        self.registry = registry
        self.queues = queues
        self.sweeper = sweeper

    @classmethod
    def for_platform(cls, platform: Platform) -> S3API:
        """The S3 API over the platform's metadata store, with blobs in `<data dir>/objects`
        and notifications through its durable async invoker and queues. Called on the
        serving event loop, it also starts the sweeper there (its task ends with the loop)."""
        queues = platform.events.queues
        # SQLite: one process holds the data dir, so this catalog sees every write
        catalog = ObjectCatalog(platform.db, cache_objects=platform.db.dialect == "sqlite")
        blobs = FileBlobStore(platform.settings.data_dir / "objects")
        store = ObjectStore(
            catalog, blobs, Notifier(platform.async_invoker, queues), platform.settings.region
        )
        sweeper = Sweeper(catalog, blobs)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to sweep on
            sweeper.start()
        hosts = virtual_host_suffixes(urlsplit(platform.settings.endpoint).hostname or "")
        return cls(store, platform.keyring, platform.registry, queues, sweeper, hosts)

    async def close(self) -> None:
        """Stop the sweeper (a sweep in progress is cancelled). Call before the platform's
        store closes; safe to call twice."""
        if self.sweeper is not None:
            await self.sweeper.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = None
        finished = False

        async def tracked() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                finished = True
            return message

        try:
            hosted = await self._hosted_bucket(scope)
            req = S3Request.from_scope(scope, tracked, self.lookup, hosted)
            request_id = req.request_id
            response = await self._route(req)(req, self.store)
        except Exception as exc:
            response = error_response(
                exc,
                method=scope["method"],
                resource=raw_path(scope),
                presigned=presigned(scope),
                request_id=request_id,
            )
            if not finished and has_body(scope):
                close_connection(response)
        await response(scope, receive, send)

    async def _hosted_bucket(self, scope: Scope) -> str | None:
        """The bucket a virtual-hosted-style `Host` names — if that bucket exists, or the
        path names no bucket (CreateBucket, or a request about a missing bucket); otherwise
        the request is path-style (an endpoint such as `s3.localhost` used path-style)."""
        candidate = hosted_bucket(scope, self.virtual_hosts)
        if candidate is None or scope["path"] in ("", "/"):
            return candidate
        try:
            await self.store.catalog.recent_bucket(candidate)
        except S3Error:
            return None
        return candidate

    def _route(self, req: S3Request) -> Operation:
        method, query = req.method, req.query
        if not req.bucket:
            if method == "GET":
                return self.list_buckets
            raise _not_implemented(method, "the service")
        unsupported = UNSUPPORTED_SUBRESOURCES & query.keys()
        if unsupported:
            raise _not_implemented(method, f"?{sorted(unsupported)[0]}")
        if req.key:
            s3_objects.check_version_id(query)
            if method in ("GET", "HEAD"):
                if "uploadId" in query and method == "GET":
                    return s3_objects.list_parts
                if method == "HEAD":
                    return _head_object
                return s3_objects.get_object
            if method == "PUT":
                return s3_objects.upload_part if "uploadId" in query else s3_objects.put_object
            if method == "DELETE":
                return s3_objects.delete_object
            if method == "POST":
                if "uploads" in query:
                    return s3_objects.create_upload
                if "uploadId" in query:
                    return s3_objects.complete_upload
            raise _not_implemented(method, "objects")
        for subresource in ("notification", "uploads", "delete", "location", "versioning"):
            if subresource in query:
                handler = getattr(self, f"{method.lower()}_{subresource}", None)
                if handler is None:
                    raise _not_implemented(method, f"?{subresource}")
                return handler  # type: ignore[no-any-return]
        routes: dict[str, Operation] = {
            "GET": self.list_objects,
            "HEAD": self.head_bucket,
            "PUT": self.create_bucket,
            "DELETE": self.delete_bucket,
        }
        if method not in routes:
            raise _not_implemented(method, "buckets")
        return routes[method]

    # -- buckets ---------------------------------------------------------------------------

    async def list_buckets(self, req: S3Request, store: ObjectStore) -> Response:
        root = document("ListAllMyBucketsResult")
        owner = add(root, "Owner")
        add(owner, "ID", req.identity.account_id)
        add(owner, "DisplayName", req.identity.account_id)
        buckets = add(root, "Buckets")
        for bucket in await store.catalog.list_buckets(req.identity.account_id):
            node = add(buckets, "Bucket")
            add(node, "Name", bucket.name)
            add(node, "CreationDate", iso_date(bucket.created_at))
        return xml_response(root, req.request_id)

    async def create_bucket(self, req: S3Request, store: ObjectStore) -> Response:
        check_bucket_name(req.bucket)
        body = await req.small_body()
        if body.strip():
            config = parse(body)
            region = text(config, "LocationConstraint")
            if config.tag != "CreateBucketConfiguration":
                raise malformed()
            if region and region != store.region:
                raise S3Error(
                    "InvalidLocationConstraint",
                    f"The specified location-constraint is not valid: this endpoint serves "
                    f"{store.region}.",
                )
        await store.catalog.create_bucket(req.identity.account_id, req.bucket)
        return Response(
            b"", 200, headers={"location": f"/{req.bucket}", "x-amz-request-id": req.request_id}
        )

    async def head_bucket(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        return Response(
            b"",
            200,
            headers={"x-amz-request-id": req.request_id, "x-amz-bucket-region": store.region},
        )

    async def delete_bucket(self, req: S3Request, store: ObjectStore) -> Response:
        await store.delete_bucket(req.bucket)
        return Response(b"", 204, headers={"x-amz-request-id": req.request_id})

    async def get_location(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        root = document("LocationConstraint")
        if store.region != "us-east-1":
            root.text = store.region
        return xml_response(root, req.request_id)

    async def get_versioning(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        return xml_response(document("VersioningConfiguration"), req.request_id)

    # -- listing ---------------------------------------------------------------------------

    async def list_objects(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        q = req.query
        v2 = q.get("list-type") == "2"
        encode = q.get("encoding-type") == "url"
        if "encoding-type" in q and not encode:
            raise S3Error(
                "InvalidArgument",
                "Invalid Encoding Method specified in Request",
                ArgumentName="encoding-type",
            )
        max_keys = _max_keys(q.get("max-keys"))
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        if v2:
            token = q.get("continuation-token")
            after = _decode_token(token) if token is not None else q.get("start-after", "")
        else:
            after = q.get("marker", "")
        listing = await store.catalog.list_objects(
            req.bucket, prefix=prefix, delimiter=delimiter, after=after, max_keys=max_keys
        )

        def enc(value: str) -> str:
            return quote(value, safe="/") if encode else value

        root = document("ListBucketResult")
        add(root, "Name", req.bucket)
        add(root, "Prefix", enc(prefix))
        if v2:
            if "continuation-token" in q:
                add(root, "ContinuationToken", q["continuation-token"])
            if "start-after" in q:
                add(root, "StartAfter", enc(q["start-after"]))
            add(root, "KeyCount", len(listing.objects) + len(listing.common_prefixes))
        else:
            add(root, "Marker", enc(after))
        add(root, "MaxKeys", max_keys)
        if delimiter:
            add(root, "Delimiter", enc(delimiter))
        if encode:
            add(root, "EncodingType", "url")
        add(root, "IsTruncated", listing.truncated)
        if listing.truncated and listing.last is not None:
            if v2:
                add(root, "NextContinuationToken", _encode_token(listing.last))
            elif delimiter:
                add(root, "NextMarker", enc(listing.last))
        # ListObjectsV2 names owners only when asked to (fetch-owner), v1 always
        with_owner = not v2 or q.get("fetch-owner", "").lower() == "true"
        _add_contents(root, listing, enc, owner=req.identity.account_id if with_owner else None)
        return xml_response(root, req.request_id)

    async def get_uploads(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        q = req.query
        encode = q.get("encoding-type") == "url"
        prefix, delimiter = q.get("prefix", ""), q.get("delimiter", "")
        key_marker, upload_id_marker = q.get("key-marker", ""), q.get("upload-id-marker", "")
        max_uploads = _max_keys(q.get("max-uploads"), "max-uploads")
        listing = await store.catalog.list_uploads(
            req.bucket,
            prefix=prefix,
            delimiter=delimiter,
            key_marker=key_marker,
            upload_id_marker=upload_id_marker if key_marker else "",
            max_uploads=max_uploads,
        )

        def enc(value: str) -> str:
            return quote(value, safe="/") if encode else value

        root = document("ListMultipartUploadsResult")
        add(root, "Bucket", req.bucket)
        add(root, "KeyMarker", enc(key_marker))
        add(root, "UploadIdMarker", upload_id_marker)
        if listing.truncated and listing.last is not None:
            next_key, next_upload_id = listing.last
            add(root, "NextKeyMarker", enc(next_key))
            add(root, "NextUploadIdMarker", next_upload_id or "")
        add(root, "Prefix", enc(prefix))
        if delimiter:
            add(root, "Delimiter", enc(delimiter))
        add(root, "MaxUploads", max_uploads)
        if encode:
            add(root, "EncodingType", "url")
        add(root, "IsTruncated", listing.truncated)
        for upload in listing.uploads:
            node = add(root, "Upload")
            add(node, "Key", enc(upload.key))
            add(node, "UploadId", upload.upload_id)
            owner = add(node, "Initiator")
            add(owner, "ID", req.identity.account_id)
            add(owner, "DisplayName", req.identity.account_id)
            owner = add(node, "Owner")
            add(owner, "ID", req.identity.account_id)
            add(owner, "DisplayName", req.identity.account_id)
            add(node, "StorageClass", "STANDARD")
            add(node, "Initiated", iso_date(upload.initiated_at))
        for common in listing.common_prefixes:
            add(add(root, "CommonPrefixes"), "Prefix", enc(common))
        return xml_response(root, req.request_id)

    async def post_delete(self, req: S3Request, store: ObjectStore) -> Response:
        await store.catalog.get_bucket(req.bucket)
        root = parse(await req.small_body())
        if root.tag != "Delete":
            raise malformed()
        quiet = (text(root, "Quiet") or "").strip().lower() == "true"
        objects = [(text(node, "Key"), text(node, "VersionId")) for node in root.findall("Object")]
        if not objects or len(objects) > MAX_DELETE_KEYS or any(k is None for k, _ in objects):
            raise malformed()
        result = document("DeleteResult")
        for key, version in objects:
            assert key is not None
            try:
                if version is not None:
                    s3_objects.check_version_id({"versionId": version})
                await store.delete(req.bucket, key, req.context)
            except S3Error as exc:
                error = add(result, "Error")
                add(error, "Key", key)
                add(error, "Code", exc.code)
                add(error, "Message", exc.message)
                continue
            if not quiet:
                add(add(result, "Deleted"), "Key", key)
        return xml_response(result, req.request_id)

    # -- notifications ---------------------------------------------------------------------

    async def get_notification(self, req: S3Request, store: ObjectStore) -> Response:
        bucket = await store.catalog.get_bucket(req.bucket)
        _check_owner(req, bucket.account_id, req.bucket)
        root = document("NotificationConfiguration")
        for target in load_targets(bucket.notification):
            if isinstance(target, QueueTarget):
                node = add(root, "QueueConfiguration")
                add(node, "Id", target.id)
                add(node, "Queue", target.queue_arn)
            else:
                node = add(root, "CloudFunctionConfiguration")
                add(node, "Id", target.id)
                add(node, "CloudFunction", target.function_arn)
            for event in target.events:
                add(node, "Event", event)
            if target.prefix or target.suffix:
                key = add(add(node, "Filter"), "S3Key")
                for name, value in (("prefix", target.prefix), ("suffix", target.suffix)):
                    if value:
                        rule = add(key, "FilterRule")
                        add(rule, "Name", name)
                        add(rule, "Value", value)
        return xml_response(root, req.request_id)

    async def put_notification(self, req: S3Request, store: ObjectStore) -> Response:
        bucket = await store.catalog.get_bucket(req.bucket)
        _check_owner(req, bucket.account_id, req.bucket)
        root = parse(await req.small_body())
        if root.tag != "NotificationConfiguration":
            raise malformed()
        targets: list[Target] = []
        for node in root:
            if node.tag == "TopicConfiguration":
                raise S3Error(
                    "InvalidArgument",
                    "TopicConfiguration destinations are not supported yet; use "
                    "LambdaFunctionConfigurations or QueueConfigurations",
                    ArgumentName=node.tag,
                )
            if node.tag == "EventBridgeConfiguration":
                raise S3Error(
                    "InvalidArgument",
                    "EventBridge destinations are not supported",
                    ArgumentName=node.tag,
                )
            if node.tag == "QueueConfiguration":
                targets.append(await self._queue_target(req, node))
                continue
            if node.tag != "CloudFunctionConfiguration":
                raise malformed()
            targets.append(await self._lambda_target(req, node))
        ids = [t.id for t in targets]
        if len(set(ids)) != len(ids):
            raise S3Error("InvalidArgument", "Configuration IDs must be unique.")
        check_unambiguous(targets)
        await store.catalog.set_notification(req.bucket, dump_targets(targets))
        await store.notifier.test_event(
            targets, req.bucket, req.request_id, req.identity.account_id
        )
        return Response(b"", 200, headers={"x-amz-request-id": req.request_id})

    async def _lambda_target(self, req: S3Request, node: Element) -> LambdaTarget:
        arn = (text(node, "CloudFunction") or "").strip()
        _region, account, name, qualifier = parse_function_arn(arn)
        prefix, suffix = _key_filter(node)
        target = LambdaTarget(
            id=(text(node, "Id") or "").strip() or new_target_id(),
            function_arn=arn,
            events=_events(node),
            prefix=prefix,
            suffix=suffix,
        )
        validate_target(target)
        if account != req.identity.account_id:
            raise _unable_to_validate(arn, "function")
        try:
            await self.registry.get_function(account, name, qualifier)
        except ResourceNotFound:
            raise _unable_to_validate(arn, "function") from None
        return target

    async def _queue_target(self, req: S3Request, node: Element) -> QueueTarget:
        arn = (text(node, "Queue") or "").strip()
        region, account, name = parse_queue_arn(arn)
        prefix, suffix = _key_filter(node)
        target = QueueTarget(
            id=(text(node, "Id") or "").strip() or new_target_id(),
            queue_arn=arn,
            events=_events(node),
            prefix=prefix,
            suffix=suffix,
        )
        validate_target(target)
        # S3 delivers only to queues in the bucket's own region
        if account != req.identity.account_id or region != self.store.region:
            raise _unable_to_validate(arn, "queue")
        try:
            queue = await self.queues.get_queue(account, name)
        except SQSError:
            raise _unable_to_validate(arn, "queue") from None
        if queue.fifo:
            raise S3Error(
                "InvalidArgument",
                "Unable to validate the following destination configurations: "
                f"{arn} is a FIFO queue; S3 notifications go to standard queues only",
                ArgumentName=arn,
                ArgumentValue="FIFO queues are not supported",
            )
        return target


def _events(node: Element) -> list[str]:
    return [(e.text or "").strip() for e in node.findall("Event")]


def _key_filter(node: Element) -> tuple[str, str]:
    """(prefix, suffix) of a configuration's `Filter/S3Key` rules ('' when absent)."""
    prefix = suffix = ""
    seen: set[str] = set()
    for rule in node.findall("Filter/S3Key/FilterRule"):
        rule_name = (text(rule, "Name") or "").lower()
        if rule_name not in ("prefix", "suffix") or rule_name in seen:
            raise S3Error(
                "InvalidArgument",
                "Invalid filter rule name or a repeated rule.",
                ArgumentName="FilterRule",
            )
        seen.add(rule_name)
        value = text(rule, "Value") or ""
        if rule_name == "prefix":
            prefix = value
        else:
            suffix = value
    return prefix, suffix


def _unable_to_validate(arn: str, kind: str) -> S3Error:
    return S3Error(
        "InvalidArgument",
        f"Unable to validate the following destination configurations: {arn} (no such "
        f"{kind} in this account)",
        ArgumentName=arn,
        ArgumentValue="Not found",
    )


def _check_owner(req: S3Request, owner: str, bucket: str) -> None:
    if req.identity.account_id != owner:
        raise no_such_bucket(bucket)


async def _head_object(req: S3Request, store: ObjectStore) -> Response:
    return await s3_objects.get_object(req, store, head=True)


def _not_implemented(method: str, what: str) -> S3Error:
    return S3Error(
        "NotImplemented",
        f"A header or operation you provided ({method} on {what}) is not implemented",
        501,
    )


def _max_keys(raw: str | None, name: str = "max-keys") -> int:
    if raw is None or raw == "":
        return 1000
    if not DIGITS.fullmatch(raw):
        raise S3Error(
            "InvalidArgument",
            f"Provided {name} not an integer or within integer range",
            ArgumentName=name,
            ArgumentValue=raw[:64],
        )
    return min(int(raw), 1000)


def _encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(last.encode()).decode()


def _decode_token(token: str) -> str:
    try:
        # validate: a token with other characters is not one of ours, not an empty one
        last = base64.b64decode(token.encode("ascii"), altchars=b"-_", validate=True)
        if not last:
            raise ValueError("an empty token")
        return last.decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError):
        raise S3Error(
            "InvalidArgument",
            "The continuation token provided is incorrect",
            ArgumentName="continuation-token",
        ) from None


def _add_contents(
    root: object, listing: Listing, enc: Callable[[str], str], owner: str | None
) -> None:
    from xml.etree.ElementTree import Element

    assert isinstance(root, Element)
    for meta in listing.objects:
        node = add(root, "Contents")
        add(node, "Key", enc(meta.key))
        add(node, "LastModified", iso_date(meta.last_modified))
        add(node, "ETag", meta.etag)
        add(node, "Size", meta.size)
        add(node, "StorageClass", "STANDARD")
        if owner is not None:
            owner_node = add(node, "Owner")
            add(owner_node, "ID", owner)
            add(owner_node, "DisplayName", owner)
    for prefix in listing.common_prefixes:
        add(add(root, "CommonPrefixes"), "Prefix", enc(prefix))
