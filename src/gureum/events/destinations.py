"""Async invocation destinations: AWS's destination record, delivered to a queue, function or
topic."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from gureum.control.models import LATEST, parse_function_ref
from gureum.control.registry import Registry
from gureum.errors import InvalidParameterValue, ResourceNotFound
from gureum.events.base import EventJournal
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
    """The `EventJournal.destinations` sink: looks up the function's config and delivers."""

    def __init__(
        self,
        invoker: EventJournal,
        queues: QueueStore,
        registry: Registry,
        region: str,
        topics: Topics | None = None,
    ) -> None:
        self.invoker = invoker
        self.queues = queues
        self.registry = registry
        self.region = region
        self.topics = topics

    async def __call__(
        self,
        event: dict[str, Any],
        condition: str,
        result: InvocationResult | None,
        attempts: int,
    ) -> None:
        """The destination record to the configured destination and, for a failed event, the
        event itself to the function's dead-letter queue; both are tried, then any failure
        raised (the event stays failed and listed, for a redrive)."""
        problems: list[str] = []
        config = await self.invoker.configs.lookup(
            event["account_id"], event["function_name"], event["qualifier"] or None
        )
        target = config.on_success if condition == "Success" else config.on_failure
        if target:
            record = destination_record(event, condition, result, attempts, self.region)
            try:
                await self._deliver(event, target, json.dumps(record))
            except Exception as exc:
                problems.append(f"destination {target}: {exc}")
        if condition != "Success":
            try:
                await self._dead_letter(event, condition, result)
            except Exception as exc:
                problems.append(f"dead-letter queue: {exc}")
        if problems:
            raise DeliveryFailed("; ".join(problems))

    async def _deliver(
        self,
        event: dict[str, Any],
        target: str,
        body: str,
        attributes: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        """`body` to a queue, function or topic ARN; `attributes` (name → (type, value)) go
        along as message attributes to a queue or topic."""
        kind = destination_kind(target)
        attributes = attributes or {}
        if kind == "queue":
            queue = await self.queues.get_queue_by_arn(target)
            sqs = {n: {"DataType": t, "StringValue": v} for n, (t, v) in attributes.items()}
            await self.queues.send(queue, [OutgoingMessage(body, sqs)])
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
            sns = {n: {"Type": t, "Value": v} for n, (t, v) in attributes.items()}
            await self.topics.publish(account, topic, body, sns)
        else:
            raise InvalidParameterValue(f"topic destinations are not available here: {target}")

    async def _dead_letter(
        self, event: dict[str, Any], condition: str, result: InvocationResult | None
    ) -> None:
        """AWS's dead-letter message: the event as the body, with RequestID, ErrorCode and
        ErrorMessage attributes, to the SQS queue or SNS topic of the version that failed."""
        account, name = event["account_id"], event["function_name"]
        try:
            if result is not None:
                config = await self.registry.get_function(account, name, result.executed_version)
            else:
                config, _ = await self.registry.resolve(account, name, event["qualifier"] or None)
        except ResourceNotFound:
            return  # deleted meanwhile: the failed event stays listed
        if config.dead_letter_target:
            message = _error_message(result) if result is not None else condition
            attributes = {
                "RequestID": ("String", event["request_id"]),
                "ErrorCode": ("Number", "200"),
                "ErrorMessage": ("String", message),
            }
            body = event["payload"].decode(errors="replace")
            await self._deliver(event, config.dead_letter_target, body, attributes)


class DeliveryFailed(Exception):
    """A destination or dead-letter delivery failed."""


def _error_message(result: InvocationResult) -> str:
    """The first KB of the function's errorMessage, as AWS puts in ErrorMessage."""
    document = _json_or_text(result.payload)
    if isinstance(document, dict) and isinstance(document.get("errorMessage"), str):
        text = document["errorMessage"]
    else:
        text = str(document)
    return text.encode()[:1024].decode(errors="ignore") or "Unhandled"
