"""`ObjectStore`: the storage engine behind the S3 API — blobs + catalog + notifications.

It enforces the rules around every write, whatever the caller: the body goes into a fresh
blob which is committed (durable) before the metadata names it, a replaced or removed blob is
deleted only after the metadata change committed, nothing of a failed write stays behind, and
each change's notifications are committed in the very transaction that commits the change.
The blob a PUT replaces is deleted in the background, after the answer: the client need not
wait for it, and a crash before it is gone leaves an orphan, which the sweeper removes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from gureum.errors import S3Error
from gureum.storage.base import BlobReader, BlobStore, BlobWriter
from gureum.storage.catalog import (
    Bucket,
    Expect,
    Headers,
    ObjectCatalog,
    ObjectMeta,
    Part,
    Upload,
    check_key,
    no_such_key,
)
from gureum.storage.notifications import Delivery, Notifier, ObjectEvent, load_targets
from gureum.storage.payload import Received, Verify

log = logging.getLogger(__name__)
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PARTS = 10_000
# Fills a new blob from the request body; returns the check the blob's commit runs, which
# verifies the body (the writer's hashes are whole then) and says what was received.
Fill = Callable[[BlobWriter], Awaitable[Verify]]


@dataclass(frozen=True)
class WriteContext:
    """Who makes a change, for notifications."""

    account_id: str
    principal: str
    request_id: str
    source_ip: str


class ObjectStore:
    """Objects in buckets: see the module docstring for the guarantees."""

    def __init__(
        self, catalog: ObjectCatalog, blobs: BlobStore, notifier: Notifier, region: str
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.notifier = notifier
        self.region = region
        self._discarding: set[asyncio.Task[None]] = set()

    async def _discard(self, blobs: Sequence[str | None]) -> None:
        for blob in blobs:
            if blob is not None:
                await self.blobs.delete(blob)

    def _discard_later(self, blob: str | None) -> None:
        """Delete a blob no metadata names any more, in the background (see the module
        docstring)."""
        if blob is None:
            return
        task = asyncio.get_running_loop().create_task(self.blobs.delete(blob))
        self._discarding.add(task)
        task.add_done_callback(self._discarded)

    def _discarded(self, task: asyncio.Task[None]) -> None:
        self._discarding.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "could not delete a replaced blob (the sweeper will)", exc_info=task.exception()
            )

    async def _write(self, fill: Fill) -> tuple[str, Received]:
        writer = self.blobs.writer()
        try:
            verify = await fill(writer)
            received: list[Received] = []
            blob = await writer.commit(lambda: received.append(verify()))
            return blob, received[0]
        finally:
            await writer.abort()

    async def _delivery(
        self, bucket: Bucket, event: str, key: str, meta: ObjectMeta | None, ctx: WriteContext
    ) -> Delivery | None:
        targets = load_targets(bucket.notification)
        if not targets:
            return None
        return await self.notifier.prepare(
            targets,
            ObjectEvent(
                event_name=event,
                bucket=bucket.name,
                key=key,
                size=meta.size if meta else None,
                etag=meta.etag.strip('"') if meta else None,
                principal=ctx.principal,
                account_id=ctx.account_id,
                request_id=ctx.request_id,
                source_ip=ctx.source_ip,
                region=self.region,
            ),
        )

    async def _publish(
        self,
        bucket: Bucket,
        meta: ObjectMeta,
        event: str,
        ctx: WriteContext,
        expect: Expect | None = None,
    ) -> None:
        """Commit `meta` with its notifications (if `expect` accepts the object it replaces);
        on failure, its blob is deleted."""
        try:
            delivery = await self._delivery(bucket, event, meta.key, meta, ctx)
            old = await self.catalog.put_object(meta, delivery, expect)
        except BaseException:
            await self._discard([meta.blob])
            raise
        self._discard_later(old)
        if delivery is not None:
            delivery.announce()

    async def put(
        self,
        bucket: str,
        key: str,
        headers: Headers,
        fill: Fill,
        ctx: WriteContext,
        expect: Expect | None = None,
    ) -> ObjectMeta:
        """Store a whole object from `fill` (PutObject); with `expect`, only if it accepts
        the object this one replaces, checked in the transaction that replaces it."""
        check_key(key)
        # NoSuchBucket before reading any body
        found = await self.catalog.recent_bucket(bucket)
        blob, received = await self._write(fill)
        if received.checksum is not None:
            algorithm, value = received.checksum
            headers = [*headers, (f"x-amz-checksum-{algorithm}", value)]
        meta = ObjectMeta(
            bucket, key, blob, received.size, f'"{received.md5_hex}"', time.time(), headers
        )
        await self._publish(found, meta, "s3:ObjectCreated:Put", ctx, expect)
        return meta

    async def head(self, bucket: str, key: str) -> ObjectMeta:
        meta = await self.catalog.lookup(bucket, key)
        if meta is None:
            raise no_such_key(key)
        return meta

    async def open(
        self, bucket: str, key: str, span: Callable[[ObjectMeta], tuple[int, int]]
    ) -> tuple[ObjectMeta, BlobReader]:
        """The object's metadata and a reader of its bytes in `span(meta)` = (start, length);
        the caller must close the reader."""
        for _ in range(5):
            meta = await self.head(bucket, key)
            start, length = span(meta)
            chunks = await self.blobs.open(meta.blob, start, length)
            if chunks is not None:
                return meta, chunks
            # replaced between reading the metadata and opening the blob: look again
            self.catalog.forget(bucket, key)
        raise S3Error("SlowDown", "The object is being rewritten too often; retry.", 503)

    async def copy(
        self,
        source: tuple[str, str],
        bucket: str,
        key: str,
        headers: Headers | None,
        ctx: WriteContext,
        check: Callable[[ObjectMeta], None] = lambda meta: None,
    ) -> ObjectMeta:
        """CopyObject: `headers` None keeps the source's (MetadataDirective COPY)."""
        check_key(key)
        found = await self.catalog.get_bucket(bucket)
        for _ in range(5):
            src = await self.head(*source)
            check(src)
            blob = await self.blobs.copy(src.blob)
            if blob is not None:
                break
        else:
            raise S3Error("SlowDown", "The source is being rewritten too often; retry.", 503)
        meta = ObjectMeta(
            bucket,
            key,
            blob,
            src.size,
            src.etag,
            time.time(),
            src.headers if headers is None else headers,
        )
        await self._publish(found, meta, "s3:ObjectCreated:Copy", ctx)
        return meta

    async def delete(self, bucket: str, key: str, ctx: WriteContext) -> None:
        """DeleteObject: deleting a missing key succeeds, as on S3."""
        found = await self.catalog.get_bucket(bucket)
        delivery = await self._delivery(found, "s3:ObjectRemoved:Delete", key, None, ctx)
        removed = await self.catalog.delete_object(bucket, key, delivery)
        if removed is None:
            return
        await self._discard([removed.blob])
        if delivery is not None:
            delivery.announce()

    async def delete_bucket(self, bucket: str) -> None:
        await self._discard(await self.catalog.delete_bucket(bucket))

    # -- multipart -------------------------------------------------------------------------

    async def create_upload(self, bucket: str, key: str, headers: Headers) -> Upload:
        check_key(key)
        upload = Upload(secrets.token_urlsafe(32), bucket, key, headers, time.time())
        await self.catalog.create_upload(upload)
        return upload

    async def put_part(
        self, bucket: str, key: str, upload_id: str, number: int, fill: Fill
    ) -> Part:
        if not 1 <= number <= MAX_PARTS:
            raise S3Error(
                "InvalidArgument",
                f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
                ArgumentName="partNumber",
                ArgumentValue=str(number),
            )
        await self.catalog.get_bucket(bucket)
        await self.catalog.get_upload(bucket, key, upload_id)
        blob, received = await self._write(fill)
        part = Part(number, blob, received.size, f'"{received.md5_hex}"', time.time())
        try:
            old = await self.catalog.put_part(upload_id, part)
        except BaseException:
            await self._discard([blob])
            raise
        await self._discard([old])
        return part

    async def copy_part(
        self,
        source: tuple[str, str],
        bucket: str,
        key: str,
        upload_id: str,
        number: int,
        span: Callable[[ObjectMeta], tuple[int, int]],
    ) -> Part:
        """UploadPartCopy: the part is the source's bytes in `span(meta)` = (start, length)
        (`span` may raise, e.g. for a failed precondition or a bad range)."""
        await self.catalog.get_bucket(bucket)
        await self.catalog.get_upload(bucket, key, upload_id)
        _, reader = await self.open(*source, span)

        async def fill(writer: BlobWriter) -> Verify:
            md5 = hashlib.md5()
            writer.hash_with([md5])
            async for chunk in reader:
                await writer.write(chunk)
            return lambda: Received(writer.size, md5.hexdigest(), None)

        try:
            return await self.put_part(bucket, key, upload_id, number, fill)
        finally:
            await reader.close()

    async def complete(
        self,
        bucket: str,
        key: str,
        upload_id: str,
        wanted: list[tuple[int, str]],
        ctx: WriteContext,
        expect: Expect | None = None,
    ) -> ObjectMeta:
        """Assemble the listed (part number, ETag) parts into the object (with `expect`, only
        if it accepts the object this one replaces; else the upload stays)."""
        found = await self.catalog.get_bucket(bucket)
        upload = await self.catalog.get_upload(bucket, key, upload_id)
        if not wanted:
            raise S3Error(
                "MalformedXML", "You must specify at least one part in CompleteMultipartUpload"
            )
        numbers = [number for number, _ in wanted]
        if numbers != sorted(set(numbers)):
            raise S3Error(
                "InvalidPartOrder",
                "The list of parts was not in ascending order. Parts must be ordered by part "
                "number.",
                UploadId=upload_id,
            )
        stored = {p.part_number: p for p in await self.catalog.list_parts(upload_id, 0, MAX_PARTS)}
        chosen: list[Part] = []
        for index, (number, etag) in enumerate(wanted):
            part = stored.get(number)
            if part is None or part.etag.strip('"') != etag.strip().strip('"'):
                raise S3Error(
                    "InvalidPart",
                    "One or more of the specified parts could not be found. The part may not "
                    "have been uploaded, or the specified entity tag may not match the part's "
                    "entity tag.",
                    UploadId=upload_id,
                    PartNumber=str(number),
                    ETag=etag,
                )
            if part.size < MIN_PART_SIZE and index < len(wanted) - 1:
                raise S3Error(
                    "EntityTooSmall",
                    "Your proposed upload is smaller than the minimum allowed object size.",
                    ProposedSize=str(part.size),
                    MinSizeAllowed=str(MIN_PART_SIZE),
                    PartNumber=str(number),
                    ETag=part.etag,
                )
            chosen.append(part)
        try:
            blob = await self.blobs.concat([p.blob for p in chosen])
        except FileNotFoundError:
            raise S3Error("InternalError", "A part's data is missing.", 500) from None
        digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in chosen))
        meta = ObjectMeta(
            bucket,
            key,
            blob,
            sum(p.size for p in chosen),
            f'"{digest.hexdigest()}-{len(chosen)}"',
            time.time(),
            upload.headers,
        )
        event = "s3:ObjectCreated:CompleteMultipartUpload"
        try:
            delivery = await self._delivery(found, event, key, meta, ctx)
            freed = await self.catalog.finish_upload(upload_id, meta, delivery, expect)
        except BaseException:
            await self._discard([blob])
            raise
        await self._discard(freed)
        if delivery is not None:
            delivery.announce()
        return meta

    async def abort(self, bucket: str, key: str, upload_id: str) -> None:
        await self.catalog.get_bucket(bucket)
        await self.catalog.get_upload(bucket, key, upload_id)
        await self._discard(await self.catalog.finish_upload(upload_id, None))
