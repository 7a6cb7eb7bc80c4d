"""`QueueStore`: SQS queues and their messages, durable in the metadata store.

A message is a row of `queue_messages`; it is visible when `visible_at <= now`. Receiving
moves `visible_at` forward by the visibility timeout, counts the receive and draws a new
receipt token, all in one transaction, so a message is handed to one receiver at a time and
comes back when that receiver neither deletes it nor extends its timeout. Contracts:

- `send()` returns only after the messages are committed (standard queues group-commit many
  concurrent sends into one transaction); a FIFO send deduplicates within five minutes.
- `receive()` never returns a message twice within its visibility timeout; a FIFO queue never
  returns a message while an earlier message of its group is in flight; a message received
  `maxReceiveCount` times moves to the dead-letter queue instead of being returned again.
- `delete()` with a receipt handle that is no longer the newest for its message is a no-op
  (another receiver owns the message now); with a malformed one it raises.
- Long polling waits on an in-process signal set by `send()`, re-checking the store every
  `poll_s` for sends made by other processes, so it neither busy-waits nor misses messages.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.errors import SQSError
from gureum.events.queues import (
    DEDUP_WINDOW_S,
    OutgoingMessage,
    Queue,
    parse_queue_arn,
    queue_does_not_exist,
    validate_attributes,
    validate_queue_name,
)
from gureum.store import Database
from gureum.store.database import run_sqlite, sqlite_statement
from gureum.store.schema import queue_dedup, queue_messages, queues

RETENTION_SWEEP_S = 60.0
QUEUE_CACHE_TTL_S = 2.0
QUEUE_CACHE_SIZE = 10_000
m = queue_messages.c
# built once: `Database.execute_many` caches their SQLite forms
_INSERT_MESSAGE = queue_messages.insert()
_DELETE_BY_RECEIPT = queue_messages.delete().where(
    m.id == sa.bindparam("row_id"),
    m.queue_id == sa.bindparam("queue"),
    m.receipt == sa.bindparam("token"),
)


@dataclass(frozen=True)
class StoredMessage:
    """A message as a receiver sees it."""

    row_id: int
    message_id: str
    body: str
    md5_body: str
    attributes: dict[str, dict[str, str]]
    md5_attributes: str | None
    system_attributes: dict[str, dict[str, str]]
    group_id: str | None
    dedup_id: str | None
    sent_at: float
    receive_count: int
    first_received_at: float | None
    receipt_handle: str
    dead_letter_source: str | None


@dataclass(frozen=True)
class SendResult:
    message_id: str
    md5_body: str
    md5_attributes: str | None
    sequence_number: str | None


def receipt_handle(queue_id: int, row_id: int, token: str) -> str:
    raw = f"{queue_id}:{row_id}:{token}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def parse_receipt(queue: Queue, handle: str) -> tuple[int, str]:
    """(row id, token) of a receipt handle for `queue`; ReceiptHandleIsInvalid otherwise."""
    try:
        queue_id, row_id, token = base64.urlsafe_b64decode(handle.encode()).decode().split(":")
        if int(queue_id) == queue.id and token:
            return int(row_id), token
    except (ValueError, binascii.Error, UnicodeError):
        pass
    raise SQSError(
        "ReceiptHandleIsInvalid",
        f'The input receipt handle "{handle}" is not a valid receipt handle.',
    )


def _queue_from(row: Any) -> Queue:
    return Queue(
        row.id, row.account_id, row.name, json.loads(row.attributes), row.created_at,
        row.updated_at,
    )  # fmt: skip


class QueueStore:
    """Queues and messages of every account. `close()` commits sends already accepted."""

    def __init__(self, db: Database, region: str, *, poll_s: float = 1.0) -> None:
        self.db = db
        self.region = region
        self.poll_s = poll_s
        self._arrivals: dict[int, asyncio.Event] = {}
        self._queues: dict[tuple[str, str], tuple[Queue, float]] = {}
        self._last_sweep: dict[int, float] = {}

    # ---- queues ------------------------------------------------------------------------------

    async def create_queue(self, account: str, name: str, attributes: dict[str, Any]) -> Queue:
        """Create a queue, or return the existing one when its attributes are the same."""
        validate_queue_name(name)
        wanted = validate_attributes(name, attributes, creating=True)
        await self._check_dead_letter_target(account, name, wanted)
        now = time.time()
        with contextlib.suppress(IntegrityError):
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    queues.insert().values(
                        account_id=account,
                        name=name,
                        attributes=json.dumps(wanted),
                        created_at=now,
                        updated_at=now,
                    )
                )
            return await self.get_queue(account, name, fresh=True)
        existing = await self.get_queue(account, name, fresh=True)
        for key, value in wanted.items():
            if existing.attributes.get(key, value) != value:
                raise SQSError(
                    "QueueNameExists",
                    f"A queue already exists with the same name and a different value for "
                    f"attribute {key}",
                    query_code="QueueAlreadyExists",
                )
        return existing

    async def _check_dead_letter_target(
        self, account: str, name: str, attributes: dict[str, str]
    ) -> None:
        raw = attributes.get("RedrivePolicy")
        if not raw:
            return
        target_account, target = parse_queue_arn(json.loads(raw)["deadLetterTargetArn"])
        try:
            dead_letter = await self.get_queue(target_account, target)
        except SQSError:
            raise SQSError(
                "InvalidAttributeValue",
                "Value for parameter RedrivePolicy is invalid. Reason: Dead letter target "
                "does not exist.",
            ) from None
        if target_account != account or dead_letter.fifo != name.endswith(".fifo"):
            raise SQSError(
                "InvalidAttributeValue",
                "Value for parameter RedrivePolicy is invalid. Reason: Dead-letter target "
                "owner or queue type does not match.",
            )

    async def get_queue(self, account: str, name: str, *, fresh: bool = False) -> Queue:
        """The queue, QueueDoesNotExist if there is none. Without `fresh`, an answer up to
        `QUEUE_CACHE_TTL_S` old may come from this process's cache (changes made through this
        store are seen at once; other nodes' within the TTL, as SQS allows: a deleted queue
        may take up to 60 s to stop accepting requests, new attributes as long to apply)."""
        key = (account, name)
        now = time.monotonic()
        if not fresh:
            cached = self._queues.get(key)
            if cached is not None and cached[1] > now:
                return cached[0]
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(queues).where(queues.c.account_id == account, queues.c.name == name)
                )
            ).first()
        if row is None:
            self._queues.pop(key, None)
            raise queue_does_not_exist()
        queue = _queue_from(row)
        if len(self._queues) >= QUEUE_CACHE_SIZE:
            self._queues.clear()
        self._queues[key] = (queue, now + QUEUE_CACHE_TTL_S)
        return queue

    async def get_queue_by_arn(self, arn: str) -> Queue:
        account, name = parse_queue_arn(arn)
        return await self.get_queue(account, name)

    async def list_queues(self, account: str, prefix: str = "") -> list[Queue]:
        query = sa.select(queues).where(queues.c.account_id == account)
        if prefix:
            query = query.where(queues.c.name.startswith(prefix, autoescape=True))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(queues.c.name))).all()
        return [_queue_from(row) for row in rows]

    async def delete_queue(self, queue: Queue) -> None:
        """Delete the queue and every message in it."""
        self._queues.pop((queue.account_id, queue.name), None)
        async with self.db.engine.begin() as conn:
            await conn.execute(queues.delete().where(queues.c.id == queue.id))
            await conn.execute(queue_messages.delete().where(m.queue_id == queue.id))
            await conn.execute(queue_dedup.delete().where(queue_dedup.c.queue_id == queue.id))
        self._queues.pop((queue.account_id, queue.name), None)  # and what was read meanwhile

    async def set_attributes(self, queue: Queue, attributes: dict[str, Any]) -> Queue:
        changes = validate_attributes(queue.name, attributes, creating=False)
        await self._check_dead_letter_target(queue.account_id, queue.name, changes)
        merged = {**queue.attributes, **changes}
        merged = {k: v for k, v in merged.items() if v != "" or k not in ("RedrivePolicy",)}
        async with self.db.engine.begin() as conn:
            await conn.execute(
                queues.update()
                .where(queues.c.id == queue.id)
                .values(attributes=json.dumps(merged), updated_at=time.time())
            )
        return await self.get_queue(queue.account_id, queue.name, fresh=True)

    async def counts(self, queue: Queue) -> dict[str, int]:
        """Approximate numbers of visible, in-flight and delayed messages."""
        now = time.time()
        in_flight = sa.and_(m.visible_at > now, m.receive_count > 0)
        delayed = sa.and_(m.visible_at > now, m.receive_count == 0)
        query = sa.select(
            sa.func.count().filter(m.visible_at <= now),
            sa.func.count().filter(in_flight),
            sa.func.count().filter(delayed),
        ).where(m.queue_id == queue.id)
        async with self.db.engine.connect() as conn:
            visible, not_visible, waiting = (await conn.execute(query)).one()
        return {
            "ApproximateNumberOfMessages": visible,
            "ApproximateNumberOfMessagesNotVisible": not_visible,
            "ApproximateNumberOfMessagesDelayed": waiting,
        }

    # ---- messages ----------------------------------------------------------------------------

    def _row(self, queue: Queue, message: OutgoingMessage, now: float) -> dict[str, Any]:
        delay = message.delay_s if message.delay_s is not None else queue.number("DelaySeconds")
        return {
            "queue_id": queue.id,
            "message_id": str(uuid.uuid4()),
            "body": message.body,
            "md5_body": message.md5_body,
            "attributes": json.dumps(message.attributes),
            "md5_attributes": message.md5_attributes,
            "system_attributes": json.dumps(message.system_attributes),
            "group_id": message.group_id,
            "dedup_id": message.dedup_id,
            "sent_at": now,
            "visible_at": now + delay,
            "receive_count": 0,
        }

    async def send(self, queue: Queue, messages: list[OutgoingMessage]) -> list[SendResult]:
        """Store validated messages durably; return once committed."""
        now = time.time()
        if queue.fifo:
            results = await self._send_fifo(queue, messages, now)
        else:
            rows = [self._row(queue, message, now) for message in messages]
            # one write, which concurrent sends share a commit with (`Database.write`)
            await self.db.execute_many(_INSERT_MESSAGE, rows)
            results = [
                SendResult(row["message_id"], row["md5_body"], row["md5_attributes"], None)
                for row in rows
            ]
        self._signal(queue.id)
        return results

    async def send_in(self, conn: AsyncConnection, queue: Queue, message: OutgoingMessage) -> str:
        """Insert a (standard-queue) message inside the caller's transaction; its message id."""
        row = self._row(queue, message, time.time())
        await conn.execute(_INSERT_MESSAGE, row)
        return str(row["message_id"])

    def send_in_sqlite(
        self, conn: sqlite3.Connection, queue: Queue, message: OutgoingMessage
    ) -> str:
        """`send_in` with Python's sqlite3, for `Database.write`'s direct path."""
        row = self._row(queue, message, time.time())
        run_sqlite(conn, sqlite_statement(_INSERT_MESSAGE, tuple(row)), row)
        return str(row["message_id"])

    async def _send_fifo(
        self, queue: Queue, messages: list[OutgoingMessage], now: float
    ) -> list[SendResult]:
        results: list[SendResult] = []
        async with self.db.write_gate, self.db.engine.begin() as conn:
            # the first statement writes: SQLite takes its write lock before reading, and
            # PostgreSQL serialises FIFO sends of this queue on its row
            await conn.execute(
                queue_dedup.delete().where(
                    queue_dedup.c.queue_id == queue.id, queue_dedup.c.expires_at < now
                )
            )
            await conn.execute(
                sa.select(queues.c.id).where(queues.c.id == queue.id).with_for_update()
            )
            for message in messages:
                seen = (
                    await conn.execute(
                        sa.select(queue_dedup).where(
                            queue_dedup.c.queue_id == queue.id,
                            queue_dedup.c.dedup_id == message.dedup_id,
                        )
                    )
                ).first()
                if seen is not None:
                    results.append(
                        SendResult(
                            seen.message_id,
                            message.md5_body,
                            message.md5_attributes,
                            f"{seen.sequence:020d}",
                        )
                    )
                    continue
                row = self._row(queue, message, now)
                inserted = await conn.execute(queue_messages.insert().values(**row))
                key = inserted.inserted_primary_key
                assert key is not None
                sequence = int(key[0])
                await conn.execute(
                    queue_dedup.insert().values(
                        queue_id=queue.id,
                        dedup_id=message.dedup_id,
                        message_id=row["message_id"],
                        sequence=sequence,
                        expires_at=now + DEDUP_WINDOW_S,
                    )
                )
                results.append(
                    SendResult(
                        row["message_id"],
                        message.md5_body,
                        message.md5_attributes,
                        f"{sequence:020d}",
                    )
                )
        return results

    def _signal(self, queue_id: int) -> None:
        event = self._arrivals.pop(queue_id, None)
        if event is not None:
            event.set()

    def notify(self, queue: Queue) -> None:
        """Wake this process's long polls of `queue` after a `send_in()` transaction commits."""
        self._signal(queue.id)

    async def receive(
        self,
        queue: Queue,
        max_messages: int = 1,
        visibility_timeout: int | None = None,
        wait_s: float = 0.0,
    ) -> list[StoredMessage]:
        """Receive up to `max_messages`, waiting up to `wait_s` for the first one to arrive."""
        deadline = time.monotonic() + wait_s
        timeout = (
            queue.number("VisibilityTimeout")
            if visibility_timeout is None
            else (visibility_timeout)
        )
        while True:
            arrival = self._arrivals.setdefault(queue.id, asyncio.Event())
            found, next_visible = await self._claim(queue, max_messages, timeout)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            pause = min(remaining, self.poll_s)
            if next_visible is not None:
                pause = min(pause, max(0.0, next_visible - time.time()) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrival.wait(), pause)

    async def _claim(
        self, queue: Queue, limit: int, visibility_s: int
    ) -> tuple[list[StoredMessage], float | None]:
        now = time.time()
        token = uuid.uuid4().hex
        retention = queue.number("MessageRetentionPeriod")
        received = {
            "visible_at": now + visibility_s,
            "receive_count": m.receive_count + 1,
            "receipt": token,
            "first_received_at": sa.func.coalesce(m.first_received_at, now),
        }
        # expired messages are never handed out, and deleted now and then
        due = sa.and_(m.queue_id == queue.id, m.visible_at <= now, m.sent_at >= now - retention)
        async with self.db.write_gate, self.db.engine.begin() as conn:
            # the first statement writes (see _send_fifo): this sweep, the dead-letter move
            # or the standard queue's claim itself
            if queue.fifo or now - self._last_sweep.get(queue.id, 0.0) >= RETENTION_SWEEP_S:
                self._last_sweep[queue.id] = now
                await conn.execute(
                    queue_messages.delete().where(
                        m.queue_id == queue.id, m.sent_at < now - retention
                    )
                )
            if queue.fifo:
                await conn.execute(
                    sa.select(queues.c.id).where(queues.c.id == queue.id).with_for_update()
                )
            redrive = queue.redrive
            if redrive is not None:
                await self._move_to_dead_letter(conn, queue, redrive.dead_letter_arn, now)
            if queue.fifo:
                rows = await self._claim_fifo(conn, queue, due, limit, received, now)
            else:
                # one statement: other nodes skip the rows it locks (PostgreSQL)
                chosen = (
                    sa.select(m.id)
                    .where(due)
                    .order_by(m.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
                result = await conn.execute(
                    queue_messages.update()
                    .where(m.id.in_(chosen.scalar_subquery()))
                    .values(**received)
                    .returning(*queue_messages.c)
                )
                rows = sorted(result.all(), key=lambda row: int(row.id))
            if not rows:
                next_visible = await conn.scalar(
                    sa.select(sa.func.min(m.visible_at)).where(
                        m.queue_id == queue.id, m.visible_at > now
                    )
                )
                return [], next_visible
        return [self._message(queue, row) for row in rows], None

    async def _claim_fifo(
        self,
        conn: AsyncConnection,
        queue: Queue,
        due: sa.ColumnElement[bool],
        limit: int,
        received: dict[str, Any],
        now: float,
    ) -> list[Any]:
        """Claim the next messages of groups with none in flight, in order."""
        earlier = queue_messages.alias("earlier")
        in_flight_before = sa.exists().where(
            earlier.c.queue_id == queue.id,
            earlier.c.group_id == m.group_id,
            earlier.c.id < m.id,
            earlier.c.visible_at > now,
        )
        query = sa.select(m.id).where(due, ~in_flight_before).order_by(m.id).limit(limit)
        ids = list((await conn.execute(query)).scalars())
        if not ids:
            return []
        await conn.execute(queue_messages.update().where(m.id.in_(ids)).values(**received))
        query = sa.select(queue_messages).where(m.id.in_(ids)).order_by(m.id)
        return list((await conn.execute(query)).all())

    async def _move_to_dead_letter(
        self, conn: AsyncConnection, queue: Queue, arn: str, now: float
    ) -> None:
        """Move visible messages received maxReceiveCount times to the dead-letter queue."""
        redrive = queue.redrive
        assert redrive is not None
        account, name = parse_queue_arn(arn)
        target = await conn.scalar(
            sa.select(queues.c.id).where(queues.c.account_id == account, queues.c.name == name)
        )
        if target is None:
            return  # the dead-letter queue was deleted: keep the messages where they are
        moved = await conn.execute(
            queue_messages.update()
            .where(
                m.queue_id == queue.id,
                m.visible_at <= now,
                m.receive_count >= redrive.max_receive_count,
            )
            .values(
                queue_id=target,
                receive_count=0,
                receipt=None,
                first_received_at=None,
                dead_letter_source=queue.arn(self.region),
            )
        )
        if moved.rowcount:
            self._signal(int(target))

    def _message(self, queue: Queue, row: Any) -> StoredMessage:
        return StoredMessage(
            row_id=row.id,
            message_id=row.message_id,
            body=row.body,
            md5_body=row.md5_body,
            attributes=json.loads(row.attributes),
            md5_attributes=row.md5_attributes,
            system_attributes=json.loads(row.system_attributes),
            group_id=row.group_id,
            dedup_id=row.dedup_id,
            sent_at=row.sent_at,
            receive_count=row.receive_count,
            first_received_at=row.first_received_at,
            receipt_handle=receipt_handle(queue.id, row.id, row.receipt),
            dead_letter_source=row.dead_letter_source,
        )

    async def delete(self, queue: Queue, handles: list[str]) -> None:
        """Delete messages by receipt handle (all handles are validated first)."""
        parsed = [parse_receipt(queue, handle) for handle in handles]
        await self.db.execute_many(
            _DELETE_BY_RECEIPT,
            [{"row_id": row_id, "queue": queue.id, "token": token} for row_id, token in parsed],
        )

    async def change_visibility(self, queue: Queue, handle: str, visibility_s: int) -> None:
        """Make an in-flight message visible again `visibility_s` seconds from now."""
        row_id, token = parse_receipt(queue, handle)
        now = time.time()
        async with self.db.write_gate, self.db.engine.begin() as conn:
            changed = await conn.execute(
                queue_messages.update()
                .where(
                    m.id == row_id,
                    m.queue_id == queue.id,
                    m.receipt == token,
                    m.visible_at > now,
                )
                .values(visible_at=now + visibility_s)
            )
        if not changed.rowcount:
            raise SQSError(
                "MessageNotInflight",
                "The message referred to isn't in flight.",
                query_code="AWS.SimpleQueueService.MessageNotInflight",
            )
        if visibility_s == 0:
            self._signal(queue.id)

    async def purge(self, queue: Queue) -> None:
        async with self.db.engine.begin() as conn:
            await conn.execute(queue_messages.delete().where(m.queue_id == queue.id))
