"""Bucket notifications: configurations, matching, S3 event records, recursion-loop stops.

A bucket's configuration lists destinations — Lambda functions and standard SQS queues — each
with event types (`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete` …) and optional key
prefix/suffix filters. A matching change becomes, per destination, one durable async
invocation (an `async_events` row, as `EventJournal.row()` builds it) or one queue message
(`QueueStore.send_in`) whose payload is AWS's S3 event message, `{"Records": [...]}`. These
rows are inserted in the same transaction that commits the change (`Delivery.write`), so a
committed change is never without its notifications, whenever the process dies; the
workers and long polls are woken after the commit (`Delivery.announce`). A queue deleted
after the configuration was accepted is skipped with a warning. FIFO queues are refused as
destinations, as S3 refuses them. Putting a configuration sends `s3:TestEvent` to each of
its queues, as S3 does.

Recursion loops: a function that writes into a bucket that (directly or through other
functions) triggers it again would run forever. Every write by a function's own credentials
(principal `function:<name>`) continues the chain that last triggered that function, one hop
deeper; a write by anyone else starts a new chain at depth 0. Once a chain reaches
`MAX_CHAIN_DEPTH` hops, like AWS (which stops after about 16), the event is not delivered:
the stop is logged as a warning and kept in `Notifier.stops`. Chains are tracked in memory
per process, and a function's chain is forgotten `CHAIN_WINDOW_S` after its last trigger.
Queue deliveries are not bounded: whoever consumes the queue is unknown here.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote_plus

from sqlalchemy.ext.asyncio import AsyncConnection

from gureum.errors import S3Error, SQSError
from gureum.events.base import EventJournal
from gureum.events.queue_store import QueueStore
from gureum.events.queues import OutgoingMessage, Queue
from gureum.store.database import run_sqlite, sqlite_statement
from gureum.store.schema import async_events

log = logging.getLogger(__name__)
_INSERT_EVENT = async_events.insert()  # built once: its SQLite form is cached
MAX_CHAIN_DEPTH = 16
CHAIN_WINDOW_S = 300.0
EVENT_TYPES = frozenset(
    {
        "s3:ObjectCreated:*",
        "s3:ObjectCreated:Put",
        "s3:ObjectCreated:Post",
        "s3:ObjectCreated:Copy",
        "s3:ObjectCreated:CompleteMultipartUpload",
        "s3:ObjectRemoved:*",
        "s3:ObjectRemoved:Delete",
        "s3:ObjectRemoved:DeleteMarkerCreated",
    }
)
_FUNCTION_ARN = re.compile(
    r"arn:aws:lambda:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):function:"
    r"(?P<name>[A-Za-z0-9_-]{1,64})(?::(?P<qualifier>[A-Za-z0-9$_-]{1,128}))?"
)
_QUEUE_ARN = re.compile(
    r"arn:aws:sqs:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):"
    r"(?P<name>[A-Za-z0-9_-]{1,80}(?:\.fifo)?)"
)


def _matches(events: list[str], prefix: str, suffix: str, event_name: str, key: str) -> bool:
    kind = event_name.rsplit(":", 1)[0] + ":*"
    wanted = event_name in events or kind in events
    return wanted and key.startswith(prefix) and key.endswith(suffix)


@dataclass(frozen=True)
class LambdaTarget:
    """One LambdaFunctionConfiguration."""

    id: str
    function_arn: str
    events: list[str]
    prefix: str = ""
    suffix: str = ""

    def matches(self, event_name: str, key: str) -> bool:
        """Whether an event `s3:ObjectCreated:Put`-style name on `key` goes to this target."""
        return _matches(self.events, self.prefix, self.suffix, event_name, key)

    @property
    def function(self) -> tuple[str, str, str | None]:
        """(account, name, qualifier) of the destination."""
        match = _FUNCTION_ARN.fullmatch(self.function_arn)
        assert match is not None  # checked when the configuration was accepted
        return match["account"], match["name"], match["qualifier"]


@dataclass(frozen=True)
class QueueTarget:
    """One QueueConfiguration (a standard SQS queue)."""

    id: str
    queue_arn: str
    events: list[str]
    prefix: str = ""
    suffix: str = ""

    def matches(self, event_name: str, key: str) -> bool:
        """Whether an event `s3:ObjectCreated:Put`-style name on `key` goes to this target."""
        return _matches(self.events, self.prefix, self.suffix, event_name, key)

    @property
    def queue(self) -> tuple[str, str]:
        """(account, name) of the destination."""
        _region, account, name = parse_queue_arn(self.queue_arn)
        return account, name


Target = LambdaTarget | QueueTarget


@dataclass(frozen=True)
class LoopStop:
    """An event that was not delivered because its chain hit the recursion bound."""

    at: float
    bucket: str
    key: str
    event_name: str
    function: str
    depth: int


def parse_function_arn(arn: str) -> tuple[str, str, str, str | None]:
    """(region, account, name, qualifier) of a Lambda function ARN; InvalidArgument if not."""
    match = _FUNCTION_ARN.fullmatch(arn)
    if match is None:
        raise S3Error(
            "InvalidArgument",
            f"Unable to validate the following destination configurations: {arn} is not a "
            "Lambda function ARN",
            ArgumentName=arn,
        )
    return match["region"], match["account"], match["name"], match["qualifier"]


def parse_queue_arn(arn: str) -> tuple[str, str, str]:
    """(region, account, name) of an SQS queue ARN; InvalidArgument if not one."""
    match = _QUEUE_ARN.fullmatch(arn)
    if match is None:
        raise S3Error(
            "InvalidArgument",
            f"Unable to validate the following destination configurations: {arn} is not an "
            "SQS queue ARN",
            ArgumentName=arn,
        )
    return match["region"], match["account"], match["name"]


def validate_target(target: Target) -> None:
    """Check the ARN's shape, events and filters (the destination's existence is the caller's
    to check)."""
    if isinstance(target, LambdaTarget):
        parse_function_arn(target.function_arn)
    else:
        parse_queue_arn(target.queue_arn)
    if not target.events:
        raise S3Error("InvalidArgument", "A notification configuration needs at least one Event.")
    for event in target.events:
        if event not in EVENT_TYPES:
            raise S3Error(
                "InvalidArgument",
                f"The event is not supported for notifications: {event}",
                ArgumentName=event,
            )


def check_unambiguous(targets: list[Target]) -> None:
    """Refuse two configurations that could both take one event, as S3 does: an event type in
    common (`s3:ObjectCreated:*` covers `s3:ObjectCreated:Put`), prefixes of which one starts
    the other, and suffixes of which one ends the other (an empty filter overlaps any)."""
    for index, first in enumerate(targets):
        for second in targets[index + 1 :]:
            if (
                _events_overlap(first.events, second.events)
                and (
                    first.prefix.startswith(second.prefix) or second.prefix.startswith(first.prefix)
                )
                and (first.suffix.endswith(second.suffix) or second.suffix.endswith(first.suffix))
            ):
                raise S3Error(
                    "InvalidArgument",
                    "Configuration is ambiguously defined. Cannot have overlapping suffixes in "
                    "two rules if the prefixes are overlapping for the same event type.",
                )


def _events_overlap(first: list[str], second: list[str]) -> bool:
    def covers(pattern: str, event: str) -> bool:
        return pattern == event or (pattern.endswith(":*") and event.startswith(pattern[:-1]))

    return any(covers(a, b) or covers(b, a) for a in first for b in second)


def dump_targets(targets: list[Target]) -> str:
    return json.dumps([asdict(t) for t in targets]) if targets else ""


def load_targets(document: str) -> list[Target]:
    """Targets from `dump_targets`; queue targets are the items with a `queue_arn`."""
    if not document:
        return []
    return [
        QueueTarget(**item) if "queue_arn" in item else LambdaTarget(**item)
        for item in json.loads(document)
    ]


def new_target_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class ObjectEvent:
    """A change to one object, as a notification describes it."""

    event_name: str  # 's3:ObjectCreated:Put' …
    bucket: str
    key: str
    size: int | None
    etag: str | None  # unquoted
    principal: str  # who made the change: 'root', 'function:<name>' …
    account_id: str
    request_id: str
    source_ip: str
    region: str


@dataclass
class Delivery:
    """The notifications of one change, prepared before its transaction: `write` them in it,
    `announce` them after it committed."""

    invoker: EventJournal
    queues: QueueStore
    events: list[dict[str, Any]] = field(default_factory=list)
    messages: list[tuple[Queue, OutgoingMessage]] = field(default_factory=list)

    async def write(self, conn: AsyncConnection) -> None:
        for row in self.events:
            await conn.execute(_INSERT_EVENT, row)
        for queue, message in self.messages:
            await self.queues.send_in(conn, queue, message)

    def write_sqlite(self, conn: sqlite3.Connection) -> None:
        """`write` with Python's sqlite3, for `Database.write`'s direct path."""
        for row in self.events:
            run_sqlite(conn, sqlite_statement(_INSERT_EVENT, tuple(row)), row)
        for queue, message in self.messages:
            self.queues.send_in_sqlite(conn, queue, message)

    def announce(self) -> None:
        if self.events:
            self.invoker.wake()
        for queue, _ in self.messages:
            self.queues.notify(queue)


@dataclass
class Notifier:
    """Turns object events into durable invocations and queue messages (see the module
    docstring)."""

    invoker: EventJournal
    queues: QueueStore
    max_depth: int = MAX_CHAIN_DEPTH
    stops: deque[LoopStop] = field(default_factory=lambda: deque(maxlen=1000))
    _chains: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    _sequence: int = 0

    def _depth_of_write(self, event: ObjectEvent, now: float) -> int:
        if not event.principal.startswith("function:"):
            return 0
        writer = event.principal.removeprefix("function:")
        depth, at = self._chains.get((event.account_id, writer), (0, 0.0))
        return depth + 1 if now - at <= CHAIN_WINDOW_S else 0

    async def _queue(self, account: str, name: str) -> Queue | None:
        try:
            return await self.queues.get_queue(account, name)
        except SQSError:
            log.warning("S3 notification to queue %s skipped: the queue is gone", name)
            return None

    async def prepare(self, targets: list[Target], event: ObjectEvent) -> Delivery | None:
        """The deliveries of `event` to every matching target (None: nothing matches)."""
        matching = [t for t in targets if t.matches(event.event_name, event.key)]
        if not matching:
            return None
        now = time.time()
        depth = self._depth_of_write(event, now)
        self._sequence += 1
        sequencer = f"{time.time_ns():016X}{self._sequence % 65536:04X}"
        delivery = Delivery(self.invoker, self.queues)
        for target in matching:
            body = json.dumps({"Records": [event_record(event, target.id, sequencer)]})
            if isinstance(target, QueueTarget):
                queue = await self._queue(*target.queue)
                if queue is not None:
                    delivery.messages.append((queue, OutgoingMessage(body)))
                continue
            account, name, qualifier = target.function
            if depth >= self.max_depth:
                stop = LoopStop(now, event.bucket, event.key, event.event_name, name, depth)
                self.stops.append(stop)
                log.warning(
                    "recursive invocation loop stopped: %s on s3://%s/%s would invoke %s for "
                    "the %d-th time in one chain of object writes (bound %d); the event was "
                    "not delivered",
                    event.event_name,
                    event.bucket,
                    event.key,
                    name,
                    depth + 1,
                    self.max_depth,
                )
                continue
            config = await self.invoker.configs.lookup(account, name, qualifier)
            delivery.events.append(
                self.invoker.row(
                    account,
                    name,
                    qualifier,
                    body.encode(),
                    max_attempts=config.retries + 1,
                    max_age_s=config.max_age_s,
                )
            )
            self._chains[(account, name)] = (depth, now)
        return delivery

    async def test_event(
        self, targets: list[Target], bucket: str, request_id: str, account: str
    ) -> None:
        """Send S3's `s3:TestEvent` message to each distinct queue of a new configuration."""
        moment = datetime.now(UTC)
        body = json.dumps(
            {
                "Service": "Amazon S3",
                "Event": "s3:TestEvent",
                "Time": moment.strftime("%Y-%m-%dT%H:%M:%S.")
                + f"{moment.microsecond // 1000:03d}Z",
                "Bucket": bucket,
                "RequestId": request_id,
                "HostId": request_id,
            }
        )
        sent: set[tuple[str, str]] = set()
        for target in targets:
            if isinstance(target, QueueTarget) and target.queue not in sent:
                sent.add(target.queue)
                queue = await self._queue(*target.queue)
                if queue is not None:
                    await self.queues.send(queue, [OutgoingMessage(body)])


def event_record(event: ObjectEvent, configuration_id: str, sequencer: str) -> dict[str, object]:
    """One record of AWS's S3 event message structure (eventVersion 2.1)."""
    moment = datetime.now(UTC)
    obj: dict[str, object] = {"key": quote_plus(event.key, safe="/"), "sequencer": sequencer}
    if event.size is not None:
        obj["size"] = event.size
    if event.etag is not None:
        obj["eTag"] = event.etag
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": event.region,
        "eventTime": moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z",
        "eventName": event.event_name.removeprefix("s3:"),
        "userIdentity": {"principalId": f"AWS:{event.account_id}:{event.principal}"},
        "requestParameters": {"sourceIPAddress": event.source_ip},
        "responseElements": {
            "x-amz-request-id": event.request_id,
            "x-amz-id-2": event.request_id,
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": configuration_id,
            "bucket": {
                "name": event.bucket,
                "ownerIdentity": {"principalId": event.account_id},
                "arn": f"arn:aws:s3:::{event.bucket}",
            },
            "object": obj,
        },
    }
