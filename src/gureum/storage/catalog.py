"""`ObjectCatalog`: buckets, objects, multipart uploads and parts in the metadata store.

Only metadata lives here; bodies are blobs (see `gureum.storage.base`). Every change that
replaces or removes a blob returns the blob ids that are no longer referenced, for the caller
to delete *after* the transaction committed — so a crash can orphan a blob, never lose one.
Keys are stored as UTF-8 bytes, which sort bytewise on every backend, as S3 lists them.
Writers hold `Database.write_gate`: on SQLite, concurrent PUTs take turns in this process
instead of sleeping in SQLite's busy handler, and a read-then-write (the blob a PUT replaces)
sees no other writer in between. Object writes and deletes go through `Database.write`, so
those that arrive together share a commit.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.errors import S3Error
from gureum.store import Database
from gureum.store.database import run_sqlite, sqlite_statement
from gureum.store.schema import s3_buckets, s3_objects, s3_parts, s3_uploads

MAX_KEY_BYTES = 1024
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP_ADDRESS = re.compile(r"\d+\.\d+\.\d+\.\d+")
_PAGE = 1000
RECENT_BUCKET_S = 1.0
OBJECT_CACHE_SIZE = 10_000

# header name -> value, in the order the client sent them (x-amz-meta-*, Content-Type …)
Headers = list[tuple[str, str]]
# A conditional write's check of the object it replaces: called with that object's ETag
# (None: there is none) in the write's transaction; raises to refuse the write.
Expect = Callable[[str | None], None]


# more writes to make in a change's transaction (its notifications)
class AlsoWrite(Protocol):
    """Writes that go into the same transaction as an object change (its notifications)."""

    async def write(self, conn: AsyncConnection) -> None: ...

    def write_sqlite(self, conn: sqlite3.Connection) -> None:
        """`write` with Python's sqlite3, for `Database.write`'s direct path."""


@dataclass(frozen=True)
class Bucket:
    name: str
    account_id: str
    created_at: float
    notification: str  # JSON configuration, "" when none


@dataclass(frozen=True)
class ObjectMeta:
    bucket: str
    key: str
    blob: str
    size: int
    etag: str  # quoted, as S3 sends it
    last_modified: float
    headers: Headers


@dataclass(frozen=True)
class Upload:
    upload_id: str
    bucket: str
    key: str
    headers: Headers
    initiated_at: float


@dataclass(frozen=True)
class Part:
    part_number: int
    blob: str
    size: int
    etag: str
    last_modified: float


@dataclass(frozen=True)
class Listing:
    objects: list[ObjectMeta]
    common_prefixes: list[str]
    truncated: bool
    last: str | None  # the last key or common prefix returned (where the next page starts)


@dataclass(frozen=True)
class UploadListing:
    uploads: list[Upload]
    common_prefixes: list[str]
    truncated: bool
    last: tuple[str, str | None] | None  # (key or common prefix, upload id) returned last


def _upload(row: Mapping[Any, Any]) -> Upload:
    return Upload(
        row["upload_id"],
        row["bucket"],
        bytes(row["key"]).decode("utf-8"),
        [(k, v) for k, v in json.loads(row["headers"])],
        row["initiated_at"],
    )


def check_bucket_name(name: str) -> None:
    """Raise InvalidBucketName unless `name` follows S3's bucket naming rules."""
    if (
        not _BUCKET_NAME.fullmatch(name)
        or ".." in name
        or ".-" in name
        or "-." in name
        or _IP_ADDRESS.fullmatch(name)
        or name.startswith(("xn--", "sthree-"))
        or name.endswith(("-s3alias", "--ol-s3"))
    ):
        raise S3Error(
            "InvalidBucketName", "The specified bucket is not valid.", BucketName=name[:255]
        )


def check_key(key: str) -> bytes:
    """Return the key's UTF-8 bytes; raise for empty, overlong or NUL-holding keys."""
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise S3Error("InvalidArgument", "Object keys must be valid UTF-8.") from None
    if not raw:
        raise S3Error("InvalidArgument", "Object key must not be empty.")
    if len(raw) > MAX_KEY_BYTES:
        raise S3Error("KeyTooLongError", "Your key is too long", MaxSizeAllowed="1024")
    if "\x00" in key:
        raise S3Error("InvalidArgument", "Object keys must not contain NUL characters.")
    return raw


def no_such_bucket(name: str) -> S3Error:
    return S3Error("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=name)


def no_such_key(key: str) -> S3Error:
    return S3Error("NoSuchKey", "The specified key does not exist.", 404, Key=key)


def no_such_upload(upload_id: str) -> S3Error:
    return S3Error(
        "NoSuchUpload",
        "The specified upload does not exist. The upload ID may be invalid, or the upload "
        "may have been aborted or completed.",
        404,
        UploadId=upload_id,
    )


def _upper_bound(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every string starting with `prefix`."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _object(row: Mapping[Any, Any]) -> ObjectMeta:
    return ObjectMeta(
        bucket=row["bucket"],
        key=bytes(row["key"]).decode("utf-8"),
        blob=row["blob"],
        size=row["size"],
        etag=row["etag"],
        last_modified=row["last_modified"],
        headers=[(k, v) for k, v in json.loads(row["headers"])],
    )


# built once, so SQLAlchemy caches them whole
_OLD_BLOB = (
    sa.select(s3_buckets.c.name, s3_objects.c.blob, s3_objects.c.etag)
    .select_from(
        s3_buckets.outerjoin(
            s3_objects,
            sa.and_(
                s3_objects.c.bucket == s3_buckets.c.name, s3_objects.c.key == sa.bindparam("key")
            ),
        )
    )
    .where(s3_buckets.c.name == sa.bindparam("bucket"))
)
_UPDATE_OBJECT = s3_objects.update().where(
    s3_objects.c.bucket == sa.bindparam("obj_bucket"), s3_objects.c.key == sa.bindparam("obj_key")
)
_OBJECT_VALUES = ("blob", "size", "etag", "last_modified", "headers")
_INSERT_OBJECT = s3_objects.insert()


_SQLITE_OLD_BLOB = sqlite_statement(_OLD_BLOB)
_SQLITE_INSERT_OBJECT = sqlite_statement(_INSERT_OBJECT, ("bucket", "key", *_OBJECT_VALUES))
_SQLITE_UPDATE_OBJECT = sqlite_statement(_UPDATE_OBJECT, _OBJECT_VALUES)
_OBJECT_AT = sa.and_(
    s3_objects.c.bucket == sa.bindparam("bucket"), s3_objects.c.key == sa.bindparam("key")
)
_GET_OBJECT = sa.select(s3_objects).where(_OBJECT_AT)
_DELETE_OBJECT = s3_objects.delete().where(_OBJECT_AT)
_SQLITE_GET_OBJECT = sqlite_statement(_GET_OBJECT)
_SQLITE_DELETE_OBJECT = sqlite_statement(_DELETE_OBJECT)


def _object_values(meta: ObjectMeta) -> dict[str, Any]:
    return {
        "blob": meta.blob,
        "size": meta.size,
        "etag": meta.etag,
        "last_modified": meta.last_modified,
        "headers": json.dumps(meta.headers),
    }


def _put_object_sqlite(
    meta: ObjectMeta, also: AlsoWrite | None, expect: Expect | None, conn: sqlite3.Connection
) -> str | None:
    """`ObjectCatalog._put_object` for `Database.write`'s direct SQLite path: the same
    statements, compiled once (`sqlite_statement`), run with Python's sqlite3."""
    raw = check_key(meta.key)
    params = {"bucket": meta.bucket, "key": raw, "obj_bucket": meta.bucket, "obj_key": raw}
    params.update(_object_values(meta))
    found = run_sqlite(conn, _SQLITE_OLD_BLOB, params).fetchone()
    if found is None:
        raise no_such_bucket(meta.bucket)
    old: str | None = found[1]
    if expect is not None:
        expect(found[2])
    run_sqlite(conn, _SQLITE_INSERT_OBJECT if old is None else _SQLITE_UPDATE_OBJECT, params)
    if also is not None:
        also.write_sqlite(conn)
    return old


def _delete_object_sqlite(
    bucket: str, raw: bytes, also: AlsoWrite | None, conn: sqlite3.Connection
) -> ObjectMeta | None:
    """`ObjectCatalog.delete_object`'s write for the direct SQLite path."""
    params = {"bucket": bucket, "key": raw}
    cursor = run_sqlite(conn, _SQLITE_GET_OBJECT, params)
    row = cursor.fetchone()
    if row is None:
        return None
    run_sqlite(conn, _SQLITE_DELETE_OBJECT, params)
    if also is not None:
        also.write_sqlite(conn)
    return _object({d[0]: value for d, value in zip(cursor.description, row, strict=True)})


# an object and its bucket in one round trip; built once, so SQLAlchemy caches it whole
_LOOKUP = (
    sa.select(s3_buckets.c.name.label("bucket"), *[c for c in s3_objects.c if c.name != "bucket"])
    .select_from(
        s3_buckets.outerjoin(
            s3_objects,
            sa.and_(
                s3_objects.c.bucket == s3_buckets.c.name, s3_objects.c.key == sa.bindparam("key")
            ),
        )
    )
    .where(s3_buckets.c.name == sa.bindparam("bucket"))
)


class _ObjectCache:
    """Recently looked-up objects, for a catalog that sees every write to its store.

    A read may fill the cache only if no write began since the read began (`generation`),
    and every write bumps the generation before its transaction and drops the entry after
    it, so a value read before a write committed is never kept past that write."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.generation = 0
        self._entries: OrderedDict[tuple[str, str], ObjectMeta] = OrderedDict()

    def get(self, bucket: str, key: str) -> ObjectMeta | None:
        meta = self._entries.get((bucket, key))
        if meta is not None:
            self._entries.move_to_end((bucket, key))
        return meta

    def fill(self, meta: ObjectMeta, generation: int) -> None:
        if generation != self.generation:
            return
        self._entries[(meta.bucket, meta.key)] = meta
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, bucket: str, key: str | None = None) -> None:
        """Before and after a write: drop the key (None: the whole cache)."""
        self.generation += 1
        if key is None:
            self._entries.clear()
        else:
            self._entries.pop((bucket, key), None)


class ObjectCatalog:
    """Object metadata over a `Database`. Methods raise S3Error with AWS's codes.

    With `cache_objects` (only when this catalog is its store's single writer, as with
    SQLite, whose data dir one process locks), `lookup` answers from recently read metadata:
    every write goes through this object and invalidates what it changes."""

    def __init__(self, db: Database, *, cache_objects: bool = False) -> None:
        self.db = db
        self._recent: dict[str, tuple[float, Bucket]] = {}
        self._objects = _ObjectCache(OBJECT_CACHE_SIZE) if cache_objects else None

    def _forget(self, bucket: str, key: str | None = None) -> None:
        if self._objects is not None:
            self._objects.forget(bucket, key)

    async def recent_bucket(self, name: str) -> Bucket:
        """`get_bucket`, possibly from a copy up to `RECENT_BUCKET_S` old (changes through
        this catalog are seen at once; other processes' after that delay). For the check
        before a body is read: the commit's transaction checks the bucket again."""
        cached = self._recent.get(name)
        if cached is not None and time.monotonic() - cached[0] < RECENT_BUCKET_S:
            return cached[1]
        return await self.get_bucket(name)

    # -- buckets ---------------------------------------------------------------------------

    async def create_bucket(self, account_id: str, name: str) -> None:
        check_bucket_name(name)
        self._recent.pop(name, None)
        try:
            async with self.db.write_gate, self.db.engine.begin() as conn:
                await conn.execute(
                    s3_buckets.insert().values(
                        name=name, account_id=account_id, created_at=time.time()
                    )
                )
        except IntegrityError:
            owner = await self.get_bucket(name)
            if owner.account_id == account_id:
                raise S3Error(
                    "BucketAlreadyOwnedByYou",
                    "Your previous request to create the named bucket succeeded and you "
                    "already own it.",
                    409,
                    BucketName=name,
                ) from None
            raise S3Error(
                "BucketAlreadyExists",
                "The requested bucket name is not available.",
                409,
                BucketName=name,
            ) from None

    async def get_bucket(self, name: str) -> Bucket:
        async with self.db.engine.connect() as conn:
            row = (
                (await conn.execute(sa.select(s3_buckets).where(s3_buckets.c.name == name)))
                .mappings()
                .first()
            )
        if row is None:
            self._recent.pop(name, None)
            raise no_such_bucket(name)
        bucket = Bucket(row["name"], row["account_id"], row["created_at"], row["notification"])
        self._recent[name] = (time.monotonic(), bucket)
        return bucket

    async def list_buckets(self, account_id: str) -> list[Bucket]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(s3_buckets)
                .where(s3_buckets.c.account_id == account_id)
                .order_by(s3_buckets.c.name)
            )
            return [
                Bucket(r["name"], r["account_id"], r["created_at"], r["notification"])
                for r in rows.mappings()
            ]

    async def delete_bucket(self, name: str) -> list[str]:
        """Delete an empty bucket and its unfinished uploads; return the parts' blobs."""
        self._recent.pop(name, None)
        async with self.db.write_gate, self.db.engine.begin() as conn:
            if not await conn.scalar(sa.select(sa.func.count()).where(s3_buckets.c.name == name)):
                raise no_such_bucket(name)
            if (
                await conn.scalar(
                    sa.select(s3_objects.c.key).where(s3_objects.c.bucket == name).limit(1)
                )
                is not None
            ):
                raise S3Error(
                    "BucketNotEmpty",
                    "The bucket you tried to delete is not empty",
                    409,
                    BucketName=name,
                )
            uploads = sa.select(s3_uploads.c.upload_id).where(s3_uploads.c.bucket == name)
            blobs = list(
                await conn.scalars(
                    sa.select(s3_parts.c.blob).where(s3_parts.c.upload_id.in_(uploads))
                )
            )
            await conn.execute(s3_parts.delete().where(s3_parts.c.upload_id.in_(uploads)))
            await conn.execute(s3_uploads.delete().where(s3_uploads.c.bucket == name))
            await conn.execute(s3_buckets.delete().where(s3_buckets.c.name == name))
        self._recent.pop(name, None)  # again: a read racing the delete may have cached it
        self._forget(name)
        return blobs

    async def set_notification(self, name: str, document: str) -> None:
        self._recent.pop(name, None)
        async with self.db.write_gate, self.db.engine.begin() as conn:
            result = await conn.execute(
                s3_buckets.update().where(s3_buckets.c.name == name).values(notification=document)
            )
        self._recent.pop(name, None)  # again: a read racing the update may have cached the old
        if not result.rowcount:
            raise no_such_bucket(name)

    # -- objects ---------------------------------------------------------------------------

    async def put_object(
        self, meta: ObjectMeta, also: AlsoWrite | None = None, expect: Expect | None = None
    ) -> str | None:
        """Insert or replace an object (and make the `also` writes in the same transaction),
        if `expect` accepts the object it replaces; return the blob it replaced, if any."""

        async def write(conn: AsyncConnection) -> str | None:
            old = await self._put_object(conn, meta, expect)
            if also is not None:
                await also.write(conn)
            return old

        self._forget(meta.bucket, meta.key)
        try:
            direct = partial(_put_object_sqlite, meta, also, expect)
            return await self.db.write(write, sqlite=direct)
        finally:
            self._forget(meta.bucket, meta.key)

    async def _put_object(
        self, conn: AsyncConnection, meta: ObjectMeta, expect: Expect | None = None
    ) -> str | None:
        keys = {"bucket": meta.bucket, "key": check_key(meta.key)}
        found = (await conn.execute(_OLD_BLOB, keys)).first()
        if found is None:
            raise no_such_bucket(meta.bucket)
        old: str | None = found.blob
        if expect is not None:
            expect(found.etag)
        if old is None:
            await conn.execute(_INSERT_OBJECT, {**keys, **_object_values(meta)})
        else:
            where = {"obj_bucket": meta.bucket, "obj_key": keys["key"]}
            await conn.execute(_UPDATE_OBJECT, {**where, **_object_values(meta)})
        return old

    async def get_object(self, bucket: str, key: str) -> ObjectMeta | None:
        raw = check_key(key)
        async with self.db.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(s3_objects).where(
                            s3_objects.c.bucket == bucket, s3_objects.c.key == raw
                        )
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _object(row)

    async def lookup(self, bucket: str, key: str) -> ObjectMeta | None:
        """The object, or None; NoSuchBucket if the bucket is missing (one query for both)."""
        raw = check_key(key)
        cache = self._objects
        if cache is not None:
            cached = cache.get(bucket, key)
            if cached is not None:
                return cached
            generation = cache.generation
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(_LOOKUP, {"bucket": bucket, "key": raw})).mappings().first()
        if row is None:
            raise no_such_bucket(bucket)
        if row["blob"] is None:
            return None
        meta = _object(row)
        if cache is not None:
            cache.fill(meta, generation)
        return meta

    def forget(self, bucket: str, key: str) -> None:
        """Drop a cached lookup that turned out stale (its blob was gone)."""
        self._forget(bucket, key)

    async def delete_object(
        self, bucket: str, key: str, also: AlsoWrite | None = None
    ) -> ObjectMeta | None:
        """Remove an object (with the `also` writes in the same transaction, when there was
        one); return what was removed (None: there was nothing)."""
        raw = check_key(key)
        params = {"bucket": bucket, "key": raw}

        async def write(conn: AsyncConnection) -> ObjectMeta | None:
            row = (await conn.execute(_GET_OBJECT, params)).mappings().first()
            if row is None:
                return None
            await conn.execute(_DELETE_OBJECT, params)
            if also is not None:
                await also.write(conn)
            return _object(row)

        self._forget(bucket, key)
        try:
            direct = partial(_delete_object_sqlite, bucket, raw, also)
            return await self.db.write(write, sqlite=direct)
        finally:
            self._forget(bucket, key)

    async def list_objects(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        after: str = "",
        max_keys: int = 1000,
    ) -> Listing:
        """Keys (and common prefixes, with a delimiter) after `after`, in byte order. With
        `max_keys` 0, nothing, and not truncated (as S3 answers: no page to continue from)."""
        if max_keys <= 0:
            return Listing([], [], False, None)
        raw_prefix = prefix.encode()
        raw_delimiter = delimiter.encode()
        marker = after.encode()
        objects: list[ObjectMeta] = []
        prefixes: list[str] = []
        last: str | None = None
        lower = max(marker, raw_prefix)
        inclusive = lower != marker  # the prefix itself may be a key; the marker is excluded
        upper = _upper_bound(raw_prefix) if raw_prefix else None
        async with self.db.engine.connect() as conn:
            while True:
                if len(objects) + len(prefixes) >= max_keys:
                    truncated = await self._exists(conn, bucket, lower, inclusive, upper)
                    return Listing(objects, prefixes, truncated, last)
                query = sa.select(s3_objects).where(s3_objects.c.bucket == bucket)
                query = query.where(
                    s3_objects.c.key >= lower if inclusive else s3_objects.c.key > lower
                )
                if upper is not None:
                    query = query.where(s3_objects.c.key < upper)
                page = min(_PAGE, max_keys - len(objects) - len(prefixes))
                rows = (
                    (await conn.execute(query.order_by(s3_objects.c.key).limit(page)))
                    .mappings()
                    .all()
                )
                if not rows:
                    return Listing(objects, prefixes, False, last)
                for row in rows:
                    raw = bytes(row["key"])
                    cut = raw.find(raw_delimiter, len(raw_prefix)) if raw_delimiter else -1
                    if cut < 0:
                        objects.append(_object(row))
                        last = raw.decode()
                        lower, inclusive = raw, False
                        if len(objects) + len(prefixes) >= max_keys:
                            break
                        continue
                    common = raw[: cut + len(raw_delimiter)]
                    bound = _upper_bound(common)
                    if common > marker:
                        prefixes.append(common.decode())
                        last = common.decode()
                    if bound is None:
                        return Listing(objects, prefixes, False, last)
                    lower, inclusive = bound, True
                    break  # re-query past everything under this common prefix

    async def _exists(
        self,
        conn: AsyncConnection,
        bucket: str,
        lower: bytes,
        inclusive: bool,
        upper: bytes | None,
    ) -> bool:
        query = sa.select(s3_objects.c.key).where(
            s3_objects.c.bucket == bucket,
            s3_objects.c.key >= lower if inclusive else s3_objects.c.key > lower,
        )
        if upper is not None:
            query = query.where(s3_objects.c.key < upper)
        return (await conn.scalar(query.limit(1))) is not None

    # -- multipart uploads -----------------------------------------------------------------

    async def create_upload(self, upload: Upload) -> None:
        raw = check_key(upload.key)
        async with self.db.write_gate, self.db.engine.begin() as conn:
            if not await conn.scalar(
                sa.select(sa.func.count()).where(s3_buckets.c.name == upload.bucket)
            ):
                raise no_such_bucket(upload.bucket)
            await conn.execute(
                s3_uploads.insert().values(
                    upload_id=upload.upload_id,
                    bucket=upload.bucket,
                    key=raw,
                    headers=json.dumps(upload.headers),
                    initiated_at=upload.initiated_at,
                )
            )

    async def get_upload(self, bucket: str, key: str, upload_id: str) -> Upload:
        upload = await self._upload_row(bucket, check_key(key), upload_id)
        if upload is None:
            raise no_such_upload(upload_id)
        return upload

    async def list_uploads(
        self,
        bucket: str,
        *,
        prefix: str = "",
        delimiter: str = "",
        key_marker: str = "",
        upload_id_marker: str = "",
        max_uploads: int = 1000,
    ) -> UploadListing:
        """Unfinished uploads (and common prefixes, with a delimiter) in key order, a key's
        uploads in the order they were initiated, after the markers: the uploads of keys
        after `key_marker`, and with `upload_id_marker` also those of `key_marker` itself
        initiated after that upload (none, if that upload has ended since: S3 orders a key's
        uploads by upload id there, ids here are random). With `max_uploads` 0, nothing, and
        not truncated."""
        if max_uploads <= 0:
            return UploadListing([], [], False, None)
        raw_prefix, raw_delimiter = prefix.encode(), delimiter.encode()
        # the cursor: rows after (key, initiated_at, upload_id), or every row from `from_key`
        after: tuple[bytes, float, str] | None = None
        from_key = raw_prefix
        if key_marker:
            marker = key_marker.encode()
            found = await self._upload_row(bucket, marker, upload_id_marker)
            if found is not None:
                after = (marker, found.initiated_at, found.upload_id)
            else:
                from_key = max(raw_prefix, marker + b"\x00")  # the keys after the marker
        upper = _upper_bound(raw_prefix) if raw_prefix else None
        uploads: list[Upload] = []
        prefixes: list[str] = []
        last: tuple[str, str | None] | None = None
        async with self.db.engine.connect() as conn:
            while True:
                query = sa.select(s3_uploads).where(s3_uploads.c.bucket == bucket)
                if after is not None:
                    key, initiated, upload_id = after
                    query = query.where(
                        sa.or_(
                            s3_uploads.c.key > key,
                            sa.and_(
                                s3_uploads.c.key == key,
                                sa.or_(
                                    s3_uploads.c.initiated_at > initiated,
                                    sa.and_(
                                        s3_uploads.c.initiated_at == initiated,
                                        s3_uploads.c.upload_id > upload_id,
                                    ),
                                ),
                            ),
                        )
                    )
                else:
                    query = query.where(s3_uploads.c.key >= from_key)
                if upper is not None:
                    query = query.where(s3_uploads.c.key < upper)
                order = (s3_uploads.c.key, s3_uploads.c.initiated_at, s3_uploads.c.upload_id)
                rows = (await conn.execute(query.order_by(*order).limit(_PAGE))).mappings().all()
                if not rows:
                    return UploadListing(uploads, prefixes, False, last)
                for row in rows:
                    if len(uploads) + len(prefixes) >= max_uploads:
                        return UploadListing(uploads, prefixes, True, last)
                    raw = bytes(row["key"])
                    cut = raw.find(raw_delimiter, len(raw_prefix)) if raw_delimiter else -1
                    if cut < 0:
                        upload = _upload(row)
                        uploads.append(upload)
                        last = (upload.key, upload.upload_id)
                        after = (raw, upload.initiated_at, upload.upload_id)
                        continue
                    common = raw[: cut + len(raw_delimiter)]
                    if common.decode() != key_marker:  # a page may end on a common prefix
                        prefixes.append(common.decode())
                        last = (common.decode(), None)
                    bound = _upper_bound(common)
                    if bound is None:
                        return UploadListing(uploads, prefixes, False, last)
                    after, from_key = None, bound
                    break  # re-query past every upload under this common prefix

    async def _upload_row(self, bucket: str, key: bytes, upload_id: str) -> Upload | None:
        if not upload_id:
            return None
        async with self.db.engine.connect() as conn:
            row = (
                (
                    await conn.execute(
                        sa.select(s3_uploads).where(
                            s3_uploads.c.bucket == bucket,
                            s3_uploads.c.key == key,
                            s3_uploads.c.upload_id == upload_id,
                        )
                    )
                )
                .mappings()
                .first()
            )
        return None if row is None else _upload(row)

    async def put_part(self, upload_id: str, part: Part) -> str | None:
        """Add or replace a part; return the blob it replaced. NoSuchUpload if it is gone."""
        where = sa.and_(
            s3_parts.c.upload_id == upload_id, s3_parts.c.part_number == part.part_number
        )
        values = {
            "blob": part.blob,
            "size": part.size,
            "etag": part.etag,
            "last_modified": part.last_modified,
        }
        async with self.db.write_gate, self.db.engine.begin() as conn:
            if not await conn.scalar(
                sa.select(sa.func.count()).where(s3_uploads.c.upload_id == upload_id)
            ):
                raise no_such_upload(upload_id)
            old = await conn.scalar(sa.select(s3_parts.c.blob).where(where))
            if old is None:
                await conn.execute(
                    s3_parts.insert().values(
                        upload_id=upload_id, part_number=part.part_number, **values
                    )
                )
            else:
                await conn.execute(s3_parts.update().where(where).values(**values))
        return old

    async def referenced_blobs(self) -> set[str]:
        """Every blob an object or an unfinished upload's part names."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.union(sa.select(s3_objects.c.blob), sa.select(s3_parts.c.blob))
            )
            return {row[0] for row in rows}

    async def uploads_before(self, before: float) -> list[Upload]:
        """Unfinished uploads initiated before `before` (epoch seconds)."""
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(s3_uploads).where(s3_uploads.c.initiated_at < before)
            )
            return [
                Upload(
                    r["upload_id"],
                    r["bucket"],
                    bytes(r["key"]).decode(),
                    [(k, v) for k, v in json.loads(r["headers"])],
                    r["initiated_at"],
                )
                for r in rows.mappings()
            ]

    async def list_parts(self, upload_id: str, after: int = 0, limit: int = 1000) -> list[Part]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(s3_parts)
                .where(s3_parts.c.upload_id == upload_id, s3_parts.c.part_number > after)
                .order_by(s3_parts.c.part_number)
                .limit(limit)
            )
            return [
                Part(r["part_number"], r["blob"], r["size"], r["etag"], r["last_modified"])
                for r in rows.mappings()
            ]

    async def finish_upload(
        self,
        upload_id: str,
        meta: ObjectMeta | None,
        also: AlsoWrite | None = None,
        expect: Expect | None = None,
    ) -> list[str]:
        """End an upload: with `meta`, publish it as the object (complete) if `expect`
        accepts the object it replaces, else abort; the `also` writes go into the same
        transaction. Returns the blobs no longer referenced
        (the parts', and a replaced object's)."""
        if meta is not None:
            self._forget(meta.bucket, meta.key)
        try:
            return await self._finish_upload(upload_id, meta, also, expect)
        finally:
            if meta is not None:
                self._forget(meta.bucket, meta.key)

    async def _finish_upload(
        self,
        upload_id: str,
        meta: ObjectMeta | None,
        also: AlsoWrite | None,
        expect: Expect | None = None,
    ) -> list[str]:
        async with self.db.write_gate, self.db.engine.begin() as conn:
            blobs = list(
                await conn.scalars(
                    sa.select(s3_parts.c.blob).where(s3_parts.c.upload_id == upload_id)
                )
            )
            await conn.execute(s3_parts.delete().where(s3_parts.c.upload_id == upload_id))
            result = await conn.execute(
                s3_uploads.delete().where(s3_uploads.c.upload_id == upload_id)
            )
            if not result.rowcount:
                raise no_such_upload(upload_id)
            if meta is not None:
                old = await self._put_object(conn, meta, expect)
                if old is not None:
                    blobs.append(old)
            if also is not None:
                await also.write(conn)
        return blobs
