"""Async invocation destinations: AWS's destination record, delivered to a queue, function or
topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gureum.control.models import LATEST, parse_function_ref
from gureum.errors import InvalidParameterValue
from gureum.events.async_invoke import AsyncInvoker
from gureum.events.invoke_configs import destination_kind
from gureum.events.queue_store import QueueStore
from gureum.events.queues import OutgoingMessage
from gureum.events.topics import Topics, parse_topic_arn
from gureum.node.dispatcher import InvocationResult


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def destination_record(
    event: dict[str, Any],
    condition: str,
    result: InvocationResult | None,
    attempts: int,
    region: str,
) -> dict[str, Any]:
    """The record AWS Lambda sends to an async invocation's destination."""
    qualifier = event["qualifier"] or LATEST
    arn = (
        f"arn:aws:lambda:{region}:{event['account_id']}:function:"
        f"{event['function_name']}:{qualifier}"
    )
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "requestContext": {
            "requestId": event["request_id"],
            "functionArn": arn,
            "condition": condition,
            "approximateInvokeCount": attempts,
        },
        "requestPayload": _json_or_text(event["payload"]),
    }
    if result is not None:
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": result.executed_version}
        if result.function_error:
            response["functionError"] = result.function_error
        record["responseContext"] = response
        record["responsePayload"] = _json_or_text(result.payload)
    return record


class Destinations:
    """The `AsyncInvoker.destinations` sink: looks up the function's config and delivers."""

    def __init__(
        self, invoker: AsyncInvoker, queues: QueueStore, region: str, topics: Topics | None = None
    ) -> None:
        self.invoker = invoker
        self.queues = queues
        self.region = region
        self.topics = topics

    async def __call__(
        self,
        event: dict[str, Any],
        condition: str,
        result: InvocationResult | None,
        attempts: int,
    ) -> None:
        config = await self.invoker.configs.lookup(
            event["account_id"], event["function_name"], event["qualifier"] or None
        )
        target = config.on_success if condition == "Success" else config.on_failure
        if not target:
            return
        body = json.dumps(destination_record(event, condition, result, attempts, self.region))
        kind = destination_kind(target)
        if kind == "queue":
            queue = await self.queues.get_queue_by_arn(target)
            await self.queues.send(queue, [OutgoingMessage(body)])
        elif kind == "function":
            name, qualifier, account = parse_function_ref(target)
            await self.invoker.enqueue(
                account or event["account_id"],
                name,
                qualifier,
                body.encode(),
                source=f"destination of {event['request_id']}",
            )
        elif self.topics is not None:
            account, topic = parse_topic_arn(target)
            await self.topics.publish(account, topic, body)
        else:
            raise InvalidParameterValue(f"topic destinations are not available here: {target}")
