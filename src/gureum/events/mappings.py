"""Event source mappings: queue → function, polled inside the platform as AWS Lambda does.

Each enabled mapping runs `MaximumConcurrency` poller tasks (default 5). A poller receives a
batch (up to `BatchSize`, waiting up to `MaximumBatchingWindowInSeconds` to fill it), invokes
the function with the SQS event shape and deletes what succeeded. The pollers of a mapping
take turns collecting (each invokes on its own): an idle poller would otherwise take every
message that arrives during another's batching window, and the batches would never fill;
under load a batch fills at once, the turns are short and up to `MaximumConcurrency`
invocations run at the same time.

- the function raised, timed out or crashed → no message is deleted; each comes back after
  the queue's visibility timeout (and reaches the queue's dead-letter queue, if it has one);
- with `ReportBatchItemFailures`, an empty or null `batchItemFailures` (or a null / empty
  response) means every message succeeded; listed `itemIdentifier`s stay on the queue; a
  malformed list (not a list, an entry without a non-empty string `itemIdentifier`, or an id
  not in the batch) fails the whole batch — exactly AWS's rules. On a FIFO queue, a failed
  message also keeps every later message of its group, so order is kept.

Nothing is deleted before the function succeeded for it, so every message is delivered at
least once, also across crashes (in-flight messages become visible again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from gureum.control.models import parse_function_ref
from gureum.control.registry import Registry
from gureum.errors import (
    GureumError,
    InvalidParameterValue,
    ResourceConflict,
    ResourceNotFound,
    SQSError,
    TooManyRequests,
)
from gureum.events.queue_store import QueueStore, StoredMessage
from gureum.events.queues import Queue, parse_queue_arn
from gureum.events.sqs_api import message_system_attributes
from gureum.node.dispatcher import Dispatcher
from gureum.store import Database
from gureum.store.schema import event_source_mappings

log = logging.getLogger(__name__)
DEFAULT_CONCURRENCY = 5
MAX_EVENT_BYTES = 5 * 1024 * 1024  # keep a batch's event under the 6 MB sync payload limit
PROBLEM_BACKOFF_S = 1.0
t = event_source_mappings.c


@dataclass(frozen=True)
class Mapping:
    uuid: str
    account_id: str
    function_name: str
    qualifier: str
    source_arn: str
    batch_size: int
    window_s: int
    enabled: bool
    response_types: list[str]
    max_concurrency: int | None
    last_modified: float
    last_result: str

    @property
    def report_failures(self) -> bool:
        return "ReportBatchItemFailures" in self.response_types

    def to_aws(self, region: str) -> dict[str, Any]:
        function_arn = (
            f"arn:aws:lambda:{region}:{self.account_id}:function:{self.function_name}"
            + (f":{self.qualifier}" if self.qualifier else "")
        )
        out: dict[str, Any] = {
            "UUID": self.uuid,
            "BatchSize": self.batch_size,
            "MaximumBatchingWindowInSeconds": self.window_s,
            "EventSourceArn": self.source_arn,
            "FunctionArn": function_arn,
            "LastModified": self.last_modified,
            "LastProcessingResult": self.last_result,
            "State": "Enabled" if self.enabled else "Disabled",
            "StateTransitionReason": "USER_INITIATED",
            "FunctionResponseTypes": self.response_types,
            "EventSourceMappingArn": (
                f"arn:aws:lambda:{region}:{self.account_id}:event-source-mapping:{self.uuid}"
            ),
        }
        if self.max_concurrency is not None:
            out["ScalingConfig"] = {"MaximumConcurrency": self.max_concurrency}
        return out


def _mapping(row: Any) -> Mapping:
    return Mapping(
        row.uuid, row.account_id, row.function_name, row.qualifier, row.source_arn,
        row.batch_size, row.window_s, bool(row.enabled), json.loads(row.response_types),
        row.max_concurrency, row.last_modified, row.last_result,
    )  # fmt: skip


def batch_outcome(mapping: Mapping, batch: list[StoredMessage], payload: bytes) -> set[str]:
    """Message ids to keep on the queue after a successful invocation returned `payload`."""
    every = {m.message_id for m in batch}
    if not mapping.report_failures:
        return set()
    try:
        response = json.loads(payload) if payload.strip() else None
    except ValueError:
        return every  # not JSON: the whole batch failed
    if not isinstance(response, dict):
        return set() if response is None else every
    failures = response.get("batchItemFailures")
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return every
    keep: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in every:
            return every
        keep.add(identifier)
    return keep


def sqs_record(queue: Queue, message: StoredMessage, region: str) -> dict[str, Any]:
    """One record of AWS's SQS event for Lambda."""
    attributes: dict[str, Any] = {}
    for name, value in message.attributes.items():
        attributes[name] = {
            "stringValue": value.get("StringValue"),
            "binaryValue": value.get("BinaryValue"),
            "stringListValues": [],
            "binaryListValues": [],
            "dataType": value["DataType"],
        }
    record: dict[str, Any] = {
        "messageId": message.message_id,
        "receiptHandle": message.receipt_handle,
        "body": message.body,
        "attributes": message_system_attributes(queue, message),
        "messageAttributes": attributes,
        "md5OfBody": message.md5_body,
        "eventSource": "aws:sqs",
        "eventSourceARN": queue.arn(region),
        "awsRegion": region,
    }
    if message.md5_attributes:
        record["md5OfMessageAttributes"] = message.md5_attributes
    return record


@dataclass
class _Running:
    mapping: Mapping
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # held by the poller collecting a batch: the others wait their turn (see module doc)
    collecting: asyncio.Lock = field(default_factory=asyncio.Lock)


class EventSourceMappings:
    """Stores mappings and runs their pollers. `close()` stops every poller (idempotent)."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        dispatcher: Dispatcher,
        queues: QueueStore,
        region: str,
    ) -> None:
        self.db = db
        self.registry = registry
        self.dispatcher = dispatcher
        self.queues = queues
        self.region = region
        self._running: dict[str, _Running] = {}

    # ---- configuration -----------------------------------------------------------------------

    async def create(self, account: str, body: dict[str, Any]) -> Mapping:
        source = body.get("EventSourceArn")
        if not isinstance(source, str) or not source:
            raise InvalidParameterValue("EventSourceArn is required")
        name, qualifier = await self._function(account, body.get("FunctionName"))
        queue = await self._queue(account, source)
        values = _settings(body, queue)
        async with self.db.engine.connect() as conn:
            existing = await conn.scalar(
                sa.select(t.uuid).where(
                    t.account_id == account,
                    t.function_name == name,
                    t.qualifier == (qualifier or ""),
                    t.source_arn == source,
                )
            )
        if existing:
            raise ResourceConflict(
                f'An event source mapping with SQS arn (" {source} ") and function '
                f'(" {name} ") already exists. Please update or delete the existing mapping '
                f"with UUID {existing}"
            )
        mapping_id = str(uuid.uuid4())
        async with self.db.engine.begin() as conn:
            await conn.execute(
                event_source_mappings.insert().values(
                    uuid=mapping_id,
                    account_id=account,
                    function_name=name,
                    qualifier=qualifier or "",
                    source_arn=source,
                    last_modified=time.time(),
                    **values,
                )
            )
        mapping = await self.get(account, mapping_id)
        self._restart(mapping)
        return mapping

    async def _function(self, account: str, ref: object) -> tuple[str, str | None]:
        if not isinstance(ref, str) or not ref:
            raise InvalidParameterValue("FunctionName is required")
        name, qualifier, owner = parse_function_ref(ref, self.region)
        if owner is not None and owner != account:
            raise ResourceNotFound(f"Function not found: {ref}")
        await self.registry.get_function(account, name, qualifier)
        return name, qualifier

    async def _queue(self, account: str, arn: str) -> Queue:
        try:
            owner, _ = parse_queue_arn(arn)
            if owner != account:
                raise SQSError("QueueDoesNotExist", "The specified queue does not exist.")
            return await self.queues.get_queue_by_arn(arn)
        except SQSError:
            raise InvalidParameterValue(
                "Error occurred while ReceiveMessage. SQS Error Code: "
                f"AWS.SimpleQueueService.NonExistentQueue. Queue: {arn}"
            ) from None

    async def get(self, account: str, mapping_id: str) -> Mapping:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(
                    sa.select(event_source_mappings).where(
                        t.uuid == mapping_id, t.account_id == account
                    )
                )
            ).first()
        if row is None:
            raise ResourceNotFound(f"The resource you requested does not exist. ({mapping_id})")
        return _mapping(row)

    async def list_mappings(
        self, account: str, source: str | None = None, function: str | None = None
    ) -> list[Mapping]:
        query = sa.select(event_source_mappings).where(t.account_id == account)
        if source:
            query = query.where(t.source_arn == source)
        if function:
            name, qualifier, _ = parse_function_ref(function)
            query = query.where(t.function_name == name)
            if qualifier:
                query = query.where(t.qualifier == qualifier)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(t.last_modified, t.uuid))).all()
        return [_mapping(row) for row in rows]

    async def update(self, account: str, mapping_id: str, body: dict[str, Any]) -> Mapping:
        current = await self.get(account, mapping_id)
        changes: dict[str, Any] = {}
        if body.get("FunctionName"):
            name, qualifier = await self._function(account, body["FunctionName"])
            changes.update(function_name=name, qualifier=qualifier or "")
        queue = await self._queue(account, current.source_arn)
        merged = {
            "BatchSize": current.batch_size,
            "MaximumBatchingWindowInSeconds": current.window_s,
            **{k: v for k, v in body.items() if v is not None},
        }
        changes.update(_settings(merged, queue))
        if "Enabled" not in body:
            changes.pop("enabled", None)
        if "FunctionResponseTypes" not in body:
            changes.pop("response_types", None)
        if "ScalingConfig" not in body:
            changes.pop("max_concurrency", None)
        async with self.db.engine.begin() as conn:
            await conn.execute(
                event_source_mappings.update()
                .where(t.uuid == mapping_id)
                .values(last_modified=time.time(), **changes)
            )
        mapping = await self.get(account, mapping_id)
        self._restart(mapping)
        return mapping

    async def delete(self, account: str, mapping_id: str) -> Mapping:
        mapping = await self.get(account, mapping_id)
        async with self.db.engine.begin() as conn:
            await conn.execute(event_source_mappings.delete().where(t.uuid == mapping_id))
        self._stop(mapping_id)
        return mapping

    # ---- pollers -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the pollers of every enabled mapping in the store."""
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(sa.select(event_source_mappings))).all()
        for row in rows:
            self._restart(_mapping(row))

    def _restart(self, mapping: Mapping) -> None:
        self._stop(mapping.uuid)
        if not mapping.enabled:
            return
        running = _Running(mapping)
        for _ in range(mapping.max_concurrency or DEFAULT_CONCURRENCY):
            running.tasks.append(asyncio.create_task(self._poll(mapping, running.collecting)))
        self._running[mapping.uuid] = running

    def _stop(self, mapping_id: str) -> None:
        running = self._running.pop(mapping_id, None)
        if running is not None:
            for task in running.tasks:
                task.cancel()

    async def close(self) -> None:
        tasks = [task for running in self._running.values() for task in running.tasks]
        self._running.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _record(self, mapping: Mapping, result: str) -> None:
        with contextlib.suppress(Exception):
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    event_source_mappings.update()
                    .where(t.uuid == mapping.uuid, t.last_result != result)
                    .values(last_result=result)
                )

    async def _poll(self, mapping: Mapping, collecting: asyncio.Lock) -> None:
        while True:
            try:
                await self._poll_once(mapping, collecting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("poller of mapping %s failed; retrying", mapping.uuid)
                await self._record(mapping, f"PROBLEM: {exc}"[:256])
                await asyncio.sleep(PROBLEM_BACKOFF_S)

    async def _poll_once(self, mapping: Mapping, collecting: asyncio.Lock) -> None:
        try:
            queue = await self.queues.get_queue_by_arn(mapping.source_arn)
        except SQSError:
            await self._record(mapping, "PROBLEM: The event source queue does not exist.")
            await asyncio.sleep(PROBLEM_BACKOFF_S * 5)
            return
        async with collecting:
            batch = await self._collect(mapping, queue)
        if not batch:
            return
        event = {"Records": [sqs_record(queue, m, self.region) for m in batch]}
        try:
            result = await self.dispatcher.invoke(
                mapping.account_id,
                mapping.function_name,
                mapping.qualifier or None,
                json.dumps(event).encode(),
                trigger="sqs",
            )
        except TooManyRequests:
            await self._release(queue, batch)
            await asyncio.sleep(PROBLEM_BACKOFF_S)
            return
        except GureumError as exc:
            # e.g. the function was deleted: the messages stay on the queue
            await self._record(mapping, f"PROBLEM: {exc.message}"[:256])
            await asyncio.sleep(PROBLEM_BACKOFF_S)
            return
        if result.function_error:
            await self._record(mapping, "PROBLEM: Function call failed")
            return
        keep = batch_outcome(mapping, batch, result.payload)
        if queue.fifo and keep:
            keep = _keep_group_order(batch, keep)
        done = [m.receipt_handle for m in batch if m.message_id not in keep]
        if done:
            await self.queues.delete(queue, done)
        await self._record(mapping, "OK")

    async def _collect(self, mapping: Mapping, queue: Queue) -> list[StoredMessage]:
        batch = await self.queues.receive(queue, min(10, mapping.batch_size), None, 20)
        deadline = time.monotonic() + mapping.window_s
        size = sum(len(m.body) for m in batch)
        while batch and len(batch) < mapping.batch_size and size < MAX_EVENT_BYTES:
            remaining = deadline - time.monotonic()
            more = await self.queues.receive(
                queue, min(10, mapping.batch_size - len(batch)), None, max(0.0, remaining)
            )
            if not more and remaining <= 0:
                break
            batch += more
            size += sum(len(m.body) for m in more)
        return batch

    async def _release(self, queue: Queue, batch: list[StoredMessage]) -> None:
        for message in batch:
            with contextlib.suppress(GureumError):
                await self.queues.change_visibility(queue, message.receipt_handle, 0)


def _keep_group_order(batch: list[StoredMessage], keep: set[str]) -> set[str]:
    """On a FIFO queue, a failed message keeps every later message of its group too."""
    blocked: set[str | None] = set()
    out = set(keep)
    for message in batch:
        if message.group_id in blocked:
            out.add(message.message_id)
        elif message.message_id in keep:
            blocked.add(message.group_id)
    return out


def _settings(body: dict[str, Any], queue: Queue) -> dict[str, Any]:
    """Validated columns from a Create/UpdateEventSourceMapping body."""
    batch = body.get("BatchSize", 10)
    window = body.get("MaximumBatchingWindowInSeconds", 0)
    limit = 10 if queue.fifo else 10_000
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= limit:
        raise InvalidParameterValue(f"BatchSize must be between 1 and {limit} for this queue")
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= 300:
        raise InvalidParameterValue("MaximumBatchingWindowInSeconds must be between 0 and 300")
    if batch > 10 and window < 1:
        raise InvalidParameterValue(
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is "
            "greater than 10"
        )
    types = body.get("FunctionResponseTypes") or []
    if not isinstance(types, list) or any(v != "ReportBatchItemFailures" for v in types):
        raise InvalidParameterValue(
            "FunctionResponseTypes may only contain ReportBatchItemFailures"
        )
    scaling = body.get("ScalingConfig") or {}
    concurrency = scaling.get("MaximumConcurrency") if isinstance(scaling, dict) else None
    if concurrency is not None and (
        isinstance(concurrency, bool)
        or not isinstance(concurrency, int)
        or not 2 <= concurrency <= 1000
    ):
        raise InvalidParameterValue("ScalingConfig.MaximumConcurrency must be between 2 and 1000")
    enabled = body.get("Enabled", True)
    if not isinstance(enabled, bool):
        raise InvalidParameterValue("Enabled must be a boolean")
    values: dict[str, Any] = {
        "batch_size": batch,
        "window_s": window,
        "enabled": enabled,
        "response_types": json.dumps(sorted(set(types))),
        "max_concurrency": concurrency,
    }
    return values
