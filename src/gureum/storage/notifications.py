"""Bucket notifications: configurations, matching, S3 event records, recursion-loop stops.

A bucket's configuration lists Lambda destinations, each with event types
(`s3:ObjectCreated:*`, `s3:ObjectRemoved:Delete` …) and optional key prefix/suffix filters.
A matching change becomes one durable async invocation (`AsyncInvoker.enqueue`) whose payload
is AWS's S3 event message, `{"Records": [...]}`, enqueued before the request that made the
change is answered.

Recursion loops: a function that writes into a bucket that (directly or through other
functions) triggers it again would run forever. Every write by a function's own credentials
(principal `function:<name>`) continues the chain that last triggered that function, one hop
deeper; a write by anyone else starts a new chain at depth 0. Once a chain reaches
`MAX_CHAIN_DEPTH` hops, like AWS (which stops after about 16), the event is not delivered:
the stop is logged as a warning and kept in `Notifier.stops`. Chains are tracked in memory
per process, and a function's chain is forgotten `CHAIN_WINDOW_S` after its last trigger.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from urllib.parse import quote_plus

from gureum.errors import S3Error

log = logging.getLogger(__name__)
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
# enqueue(account, function name, qualifier, payload) -> request id
Enqueue = Callable[[str, str, str | None, bytes], Awaitable[str]]


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
        kind = event_name.rsplit(":", 1)[0] + ":*"
        wanted = event_name in self.events or kind in self.events
        return wanted and key.startswith(self.prefix) and key.endswith(self.suffix)

    @property
    def function(self) -> tuple[str, str, str | None]:
        """(account, name, qualifier) of the destination."""
        match = _FUNCTION_ARN.fullmatch(self.function_arn)
        assert match is not None  # checked when the configuration was accepted
        return match["account"], match["name"], match["qualifier"]


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


def validate_target(target: LambdaTarget) -> None:
    """Check events and filters (the function's existence is the caller's to check)."""
    parse_function_arn(target.function_arn)
    if not target.events:
        raise S3Error("InvalidArgument", "A notification configuration needs at least one Event.")
    for event in target.events:
        if event not in EVENT_TYPES:
            raise S3Error(
                "InvalidArgument",
                f"The event is not supported for notifications: {event}",
                ArgumentName=event,
            )


def dump_targets(targets: list[LambdaTarget]) -> str:
    return json.dumps([asdict(t) for t in targets]) if targets else ""


def load_targets(document: str) -> list[LambdaTarget]:
    if not document:
        return []
    return [LambdaTarget(**item) for item in json.loads(document)]


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
class Notifier:
    """Turns object events into durable invocations (see the module docstring)."""

    enqueue: Enqueue
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

    async def publish(self, targets: list[LambdaTarget], event: ObjectEvent) -> list[str]:
        """Enqueue `event` for every matching target; return the async request ids."""
        matching = [t for t in targets if t.matches(event.event_name, event.key)]
        if not matching:
            return []
        now = time.time()
        depth = self._depth_of_write(event, now)
        self._sequence += 1
        sequencer = f"{time.time_ns():016X}{self._sequence % 65536:04X}"
        ids = []
        for target in matching:
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
            payload = json.dumps({"Records": [event_record(event, target.id, sequencer)]})
            ids.append(await self.enqueue(account, name, qualifier, payload.encode()))
            self._chains[(account, name)] = (depth, now)
        return ids


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
