"""`Topics`: pub/sub fan-out, as SNS does it, to functions and queues.

A topic has subscriptions; a subscription names a function (`function:NAME[:QUALIFIER]`) or a
standard queue (`queue:NAME`) and may carry a filter policy on message attributes
(`gureum.events.filter_policy`). Contracts:

- `publish()` returns only after every matching subscription's delivery is committed, all in
  one transaction: an async event per function (SNS's `Records[0].Sns` event; then retried
  and dead-lettered per that function's invoke config, independently of the others) and a
  message per queue (SNS's JSON notification as the body). Nothing is delivered for a
  publish that raised.
- A subscription whose queue was deleted is skipped with a warning; one whose function was
  deleted dead-letters its event, as any async event does.
- Deleting a topic deletes its subscriptions; deliveries already committed still happen.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gureum.control.models import validate_name
from gureum.control.registry import Registry
from gureum.errors import (
    GureumError,
    InvalidParameterValue,
    RequestTooLarge,
    ResourceNotFound,
)
from gureum.events.base import EventJournal
from gureum.events.filter_policy import matches, validate_filter_policy
from gureum.events.queue_store import QueueStore
from gureum.events.queues import OutgoingMessage, Queue
from gureum.store import Database
from gureum.store.schema import async_events, topic_subscriptions, topics

log = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 256 * 1024  # SNS's limit on message plus attributes
PROTOCOLS = ("function", "queue")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
t = topics.c
sub = topic_subscriptions.c


@dataclass(frozen=True)
class Subscription:
    id: str
    account_id: str
    topic_name: str
    protocol: str
    endpoint: str
    filter_policy: dict[str, list[Any]] | None
    created_at: float

    def arn(self, region: str) -> str:
        return f"{topic_arn(region, self.account_id, self.topic_name)}:{self.id}"

    def to_json(self, region: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "arn": self.arn(region),
            "topic": self.topic_name,
            "endpoint": f"{self.protocol}:{self.endpoint}",
            "filter_policy": self.filter_policy,
            "created_at": self.created_at,
        }


def topic_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:sns:{region}:{account}:{name}"


def parse_topic_arn(arn: str) -> tuple[str, str]:
    """(account, topic name) of `arn:aws:sns:REGION:ACCOUNT:NAME`."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", "aws", "sns"] or not parts[4] or not parts[5]:
        raise InvalidParameterValue(f"invalid SNS topic ARN: {arn}")
    return parts[4], parts[5]


def message_attributes(raw: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """SNS attributes from {name: str | number | {"Type": ..., "Value": ...}}."""
    out: dict[str, dict[str, str]] = {}
    for name, value in (raw or {}).items():
        if not isinstance(name, str) or not name or len(name) > 256:
            raise InvalidParameterValue(f"invalid message attribute name {name!r}")
        if isinstance(value, str):
            out[name] = {"Type": "String", "Value": value}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[name] = {"Type": "Number", "Value": str(value)}
        elif (
            isinstance(value, dict)
            and value.get("Type") in ("String", "Number", "String.Array")
            and isinstance(value.get("Value"), str)
        ):
            out[name] = {"Type": value["Type"], "Value": value["Value"]}
        else:
            raise InvalidParameterValue(
                f"message attribute {name!r}: give a string, a number or "
                '{"Type": "String|Number|String.Array", "Value": "..."}'
            )
    return out


def _timestamp(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def notification(
    topic: str,
    message_id: str,
    message: str,
    attributes: dict[str, dict[str, str]],
    subject: str | None,
    sent_at: float,
) -> dict[str, Any]:
    """SNS's notification document (the body an SQS subscriber receives)."""
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic,
        "Subject": subject,
        "Message": message,
        "Timestamp": _timestamp(sent_at),
        "SignatureVersion": "1",
        "Signature": "",
        "SigningCertURL": "",
        "UnsubscribeURL": "",
        "MessageAttributes": attributes,
    }


def lambda_event(document: dict[str, Any], subscription_arn: str) -> dict[str, Any]:
    """The event SNS invokes a subscribed function with."""
    sns = {k: v for k, v in document.items() if k not in ("SigningCertURL", "UnsubscribeURL")}
    sns["SigningCertUrl"] = document["SigningCertURL"]
    sns["UnsubscribeUrl"] = document["UnsubscribeURL"]
    return {
        "Records": [
            {
                "EventSource": "aws:sns",
                "EventVersion": "1.0",
                "EventSubscriptionArn": subscription_arn,
                "Sns": sns,
            }
        ]
    }


class Topics:
    """Topics and subscriptions of every account."""

    def __init__(
        self,
        db: Database,
        registry: Registry,
        invoker: EventJournal,
        queues: QueueStore,
        region: str,
    ) -> None:
        self.db = db
        self.registry = registry
        self.invoker = invoker
        self.queues = queues
        self.region = region

    # ---- topics ------------------------------------------------------------------------------

    async def create(self, account: str, name: str) -> dict[str, Any]:
        """Create a topic; creating an existing one returns it (as SNS does)."""
        if name.endswith(".fifo"):
            raise InvalidParameterValue("FIFO topics are not supported")
        if not _TOPIC_NAME.match(name):
            raise InvalidParameterValue(
                f"invalid topic name {name!r}: use 1-256 letters, digits, '_' or '-'"
            )
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    topics.insert().values(account_id=account, name=name, created_at=time.time())
                )
        except IntegrityError:
            pass
        return await self.get(account, name)

    async def get(self, account: str, name: str) -> dict[str, Any]:
        async with self.db.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(topics).where(t.account_id == account, t.name == name))
            ).first()
            if row is None:
                raise ResourceNotFound(f"topic {name} not found")
            count = await conn.scalar(
                sa.select(sa.func.count()).where(sub.account_id == account, sub.topic_name == name)
            )
        return self._topic(row, int(count or 0))

    def _topic(self, row: Any, subscriptions: int) -> dict[str, Any]:
        return {
            "name": row.name,
            "arn": topic_arn(self.region, row.account_id, row.name),
            "subscriptions": subscriptions,
            "created_at": row.created_at,
        }

    async def list_topics(self, account: str) -> list[dict[str, Any]]:
        counts = (
            sa.select(sub.topic_name, sa.func.count().label("n"))
            .where(sub.account_id == account)
            .group_by(sub.topic_name)
            .subquery()
        )
        query = (
            sa.select(topics, counts.c.n)
            .select_from(topics.outerjoin(counts, counts.c.topic_name == t.name))
            .where(t.account_id == account)
            .order_by(t.name)
        )
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [self._topic(row, int(row.n or 0)) for row in rows]

    async def delete(self, account: str, name: str) -> None:
        """Delete the topic and its subscriptions."""
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                topics.delete().where(t.account_id == account, t.name == name)
            )
            if not result.rowcount:
                raise ResourceNotFound(f"topic {name} not found")
            await conn.execute(
                topic_subscriptions.delete().where(
                    sub.account_id == account, sub.topic_name == name
                )
            )

    # ---- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self,
        account: str,
        topic: str,
        endpoint: str,
        filter_policy: object = None,
    ) -> Subscription:
        """Subscribe `function:NAME[:QUALIFIER]` or `queue:NAME` (the target must exist)."""
        await self.get(account, topic)
        protocol, _, target = endpoint.partition(":")
        if protocol not in PROTOCOLS or not target:
            raise InvalidParameterValue(
                f"invalid endpoint {endpoint!r}: use function:NAME[:QUALIFIER] or queue:NAME"
            )
        if protocol == "function":
            name, _, qualifier = target.partition(":")
            validate_name(name)
            await self.registry.get_function(account, name, qualifier or None)
        else:
            queue = await self._queue(account, target)
            if queue.fifo:
                raise InvalidParameterValue("FIFO queues need FIFO topics, which Gureum lacks")
        policy = None if filter_policy is None else validate_filter_policy(filter_policy)
        subscription = Subscription(
            str(uuid.uuid4()), account, topic, protocol, target, policy, time.time()
        )
        async with self.db.engine.begin() as conn:
            await conn.execute(
                topic_subscriptions.insert().values(
                    id=subscription.id,
                    account_id=account,
                    topic_name=topic,
                    protocol=protocol,
                    endpoint=target,
                    filter_policy=None if policy is None else json.dumps(policy),
                    created_at=subscription.created_at,
                )
            )
        return subscription

    async def _queue(self, account: str, name: str) -> Queue:
        try:
            return await self.queues.get_queue(account, name)
        except GureumError:
            raise ResourceNotFound(f"queue {name} not found") from None

    async def subscriptions(self, account: str, topic: str | None = None) -> list[Subscription]:
        query = sa.select(topic_subscriptions).where(sub.account_id == account)
        if topic is not None:
            await self.get(account, topic)
            query = query.where(sub.topic_name == topic)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query.order_by(sub.topic_name, sub.created_at))).all()
        return [
            Subscription(
                row.id,
                row.account_id,
                row.topic_name,
                row.protocol,
                row.endpoint,
                json.loads(row.filter_policy) if row.filter_policy else None,
                row.created_at,
            )
            for row in rows
        ]

    async def unsubscribe(self, account: str, subscription_id: str) -> None:
        """Remove a subscription by id or ARN."""
        subscription_id = subscription_id.rsplit(":", 1)[-1]
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                topic_subscriptions.delete().where(
                    sub.account_id == account, sub.id == subscription_id
                )
            )
        if not result.rowcount:
            raise ResourceNotFound(f"subscription {subscription_id} not found")

    # ---- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        account: str,
        topic: str,
        message: str,
        attributes: dict[str, Any] | None = None,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """Deliver to every matching subscription durably; {message_id, deliveries}."""
        attrs = message_attributes(attributes)
        size = len(message.encode()) + sum(
            len(k.encode()) + len(v["Type"]) + len(v["Value"].encode()) for k, v in attrs.items()
        )
        if size > MAX_MESSAGE_BYTES:
            raise RequestTooLarge(f"message must be at most {MAX_MESSAGE_BYTES} bytes")
        arn = topic_arn(self.region, account, topic)
        message_id = str(uuid.uuid4())
        document = notification(arn, message_id, message, attrs, subject, time.time())
        events: list[dict[str, Any]] = []
        sends: list[tuple[Queue, OutgoingMessage]] = []
        for subscription in await self.subscriptions(account, topic):
            if not matches(subscription.filter_policy, attrs):
                continue
            if subscription.protocol == "function":
                events.append(await self._event(subscription, document))
                continue
            try:
                queue = await self.queues.get_queue(account, subscription.endpoint)
            except GureumError:
                log.warning("topic %s: queue %s is gone", topic, subscription.endpoint)
                continue
            sends.append((queue, OutgoingMessage(json.dumps(document))))
        if events or sends:
            async with self.db.write_gate, self.db.engine.begin() as conn:
                if events:
                    await conn.execute(async_events.insert(), events)
                for queue, outgoing in sends:
                    await self.queues.send_in(conn, queue, outgoing)
        if events:
            self.invoker.wake()
        for queue, _ in sends:
            self.queues.notify(queue)
        return {"message_id": message_id, "deliveries": len(events) + len(sends)}

    async def _event(self, subscription: Subscription, document: dict[str, Any]) -> dict[str, Any]:
        name, _, qualifier = subscription.endpoint.partition(":")
        config = await self.invoker.configs.lookup(subscription.account_id, name, qualifier or None)
        payload = json.dumps(lambda_event(document, subscription.arn(self.region)))
        return self.invoker.row(
            subscription.account_id,
            name,
            qualifier or None,
            payload.encode(),
            max_attempts=config.retries + 1,
            max_age_s=config.max_age_s,
            source=f"topic {subscription.topic_name}",
        )
