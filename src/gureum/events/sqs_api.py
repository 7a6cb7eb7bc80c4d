"""SQS's wire protocols, so boto3's `sqs` client works unchanged: AWS JSON 1.0 (`POST /`,
`X-Amz-Target: AmazonSQS.<Action>`), which current botocore speaks, and the older query
protocol (`Action=<Action>&…` form-encoded, XML answers; `gureum.events.sqs_query`), both on
the same handlers. Queue URLs are `{endpoint}/{account}/{queue name}`."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gureum.errors import GureumError, SQSError
from gureum.events.queue_store import QueueStore, StoredMessage, parse_receipt
from gureum.events.queues import (
    ALL_ATTRIBUTES,
    MAX_MESSAGE_BYTES,
    MAX_VISIBILITY_TIMEOUT,
    Queue,
    invalid,
    missing,
    queue_does_not_exist,
    validate_batch_ids,
    validate_message,
)
from gureum.events.sqs_query import FORM, parse_query, render_error, render_result
from gureum.gateway.responses import aws_json10_error_response
from gureum.iam.sigv4 import Identity

NAMESPACE = "com.amazonaws.sqs"
TARGET_PREFIX = "AmazonSQS."
MAX_BODY = 2 * 1024 * 1024  # a batch of ten 256 KiB messages is refused, not cut off
Handler = Callable[[Identity, dict[str, Any]], Awaitable[dict[str, Any]]]


def sqs_body_limit(_path: str) -> int:
    return MAX_BODY


def sqs_error_response(exc: BaseException) -> ASGIApp:
    """Any error on an SQS request, in the shape of the protocol the request spoke."""

    async def respond(scope: Scope, receive: Receive, send: Send) -> None:
        render = render_error if _is_query(scope) else _json_error
        await render(exc)(scope, receive, send)

    return respond


def _json_error(exc: BaseException) -> Response:
    return aws_json10_error_response(exc, NAMESPACE)


def _is_query(scope: Scope) -> bool:
    """A query-protocol request: no X-Amz-Target, and a form body or an Action parameter."""
    headers = dict(scope.get("headers") or [])
    if b"x-amz-target" in headers:
        return False
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    query: bytes = scope.get("query_string", b"")
    return content_type.startswith(FORM) or b"Action=" in query


def _int(body: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid(
            f"Value {value} for parameter {key} is invalid. Reason: must be between "
            f"{low} and {high}."
        )
    return value


class SQSAPI:
    """An ASGI app serving the SQS actions on one `QueueStore`."""

    def __init__(self, store: QueueStore, endpoint: str, region: str) -> None:
        self.store = store
        self.endpoint = endpoint.rstrip("/")
        self.region = region
        self.actions: dict[str, Handler] = {
            "CreateQueue": self.create_queue,
            "GetQueueUrl": self.get_queue_url,
            "ListQueues": self.list_queues,
            "DeleteQueue": self.delete_queue,
            "GetQueueAttributes": self.get_queue_attributes,
            "SetQueueAttributes": self.set_queue_attributes,
            "SendMessage": self.send_message,
            "SendMessageBatch": self.send_message_batch,
            "ReceiveMessage": self.receive_message,
            "DeleteMessage": self.delete_message,
            "DeleteMessageBatch": self.delete_message_batch,
            "ChangeMessageVisibility": self.change_message_visibility,
            "ChangeMessageVisibilityBatch": self.change_message_visibility_batch,
            "PurgeQueue": self.purge_queue,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        query = _is_query(scope)
        try:
            response = await (self._dispatch_query if query else self._dispatch)(request)
        except Exception as exc:
            response = render_error(exc) if query else _json_error(exc)
        await response(scope, receive, send)

    async def _dispatch_query(self, request: Request) -> Response:
        if request.method not in ("POST", "GET"):
            raise SQSError("UnsupportedOperation", "Use POST (or GET) for query requests.")
        pairs = parse_qsl(request.url.query, keep_blank_values=True)
        if request.method == "POST":
            try:
                form = (await request.body()).decode()
            except UnicodeDecodeError:
                raise invalid("The request body is not valid UTF-8.") from None
            pairs += parse_qsl(form, keep_blank_values=True)
        name, body = parse_query(pairs)
        action = self.actions.get(name)
        if action is None:
            raise SQSError(
                "InvalidAction",
                f"The action {name} is not valid for this endpoint.",
                query_code="InvalidAction",
            )
        parts = [p for p in request.url.path.split("/") if p]
        if "QueueUrl" not in body and len(parts) == 2:  # sent to the queue's URL
            body["QueueUrl"] = f"{self.endpoint}/{parts[0]}/{parts[1]}"
        identity: Identity = request.scope["gureum.identity"]
        return render_result(name, await action(identity, body))

    async def _dispatch(self, request: Request) -> Response:
        target = request.headers.get("x-amz-target", "")
        if request.method != "POST" or not target.startswith(TARGET_PREFIX):
            raise SQSError(
                "UnsupportedOperation",
                "Send AWS JSON 1.0 (X-Amz-Target: AmazonSQS.<Action>) or a query request "
                "(form-encoded Action=<Action>).",
                query_code="AWS.SimpleQueueService.UnsupportedOperation",
            )
        action = self.actions.get(target.removeprefix(TARGET_PREFIX))
        if action is None:
            raise SQSError(
                "UnsupportedOperation",
                f"{target.removeprefix(TARGET_PREFIX)} is not supported.",
                query_code="AWS.SimpleQueueService.UnsupportedOperation",
            )
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            raise SQSError(
                "InvalidParameterValueException",
                "The request body is not valid JSON.",
                query_code="MalformedInput",
            ) from None
        if not isinstance(body, dict):
            raise invalid("The request body must be a JSON object.")
        identity: Identity = request.scope["gureum.identity"]
        result = await action(identity, body)
        return Response(
            json.dumps(result, separators=(",", ":")),
            media_type="application/x-amz-json-1.0",
            headers={"x-amzn-RequestId": str(uuid.uuid4())},
        )

    # ---- queues ------------------------------------------------------------------------------

    def url(self, queue: Queue) -> str:
        return f"{self.endpoint}/{queue.account_id}/{queue.name}"

    async def _queue(self, identity: Identity, body: dict[str, Any]) -> Queue:
        url = body.get("QueueUrl")
        if not url:
            raise missing("QueueUrl")
        parts = [p for p in urlsplit(str(url)).path.split("/") if p]
        if len(parts) != 2:
            raise queue_does_not_exist()
        account, name = parts
        if account != identity.account_id:
            raise queue_does_not_exist()
        return await self.store.get_queue(account, name)

    async def create_queue(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("QueueName")
        if not name:
            raise missing("QueueName")
        attributes = body.get("Attributes") or {}
        if not isinstance(attributes, dict):
            raise invalid("Attributes must be a map.")
        queue = await self.store.create_queue(identity.account_id, str(name), attributes)
        return {"QueueUrl": self.url(queue)}

    async def get_queue_url(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("QueueName")
        if not name:
            raise missing("QueueName")
        owner = body.get("QueueOwnerAWSAccountId") or identity.account_id
        if owner != identity.account_id:
            raise queue_does_not_exist()
        return {"QueueUrl": self.url(await self.store.get_queue(owner, str(name)))}

    async def list_queues(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        found = await self.store.list_queues(
            identity.account_id, str(body.get("QueueNamePrefix") or "")
        )
        token = body.get("NextToken")
        if token:
            found = [q for q in found if q.name > str(token)]
        limit = body.get("MaxResults")
        result: dict[str, Any] = {}
        if limit is not None:
            limit = _int(body, "MaxResults", 1000, 1, 1000)
            if len(found) > limit:
                result["NextToken"] = found[limit - 1].name
            found = found[:limit]
        else:
            found = found[:1000]
        if found:
            result["QueueUrls"] = [self.url(q) for q in found]
        return result

    async def delete_queue(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        await self.store.delete_queue(await self._queue(identity, body))
        return {}

    async def get_queue_attributes(
        self, identity: Identity, body: dict[str, Any]
    ) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        names = body.get("AttributeNames") or []
        if not isinstance(names, list):
            raise invalid("AttributeNames must be a list.")
        for name in names:
            if name != "All" and name not in ALL_ATTRIBUTES:
                raise SQSError("InvalidAttributeName", f"Unknown Attribute {name}.")
        every = {
            "VisibilityTimeout": str(queue.number("VisibilityTimeout")),
            "DelaySeconds": str(queue.number("DelaySeconds")),
            "MessageRetentionPeriod": str(queue.number("MessageRetentionPeriod")),
            "MaximumMessageSize": str(queue.number("MaximumMessageSize")),
            "ReceiveMessageWaitTimeSeconds": str(queue.number("ReceiveMessageWaitTimeSeconds")),
            "SqsManagedSseEnabled": "false",
            **queue.attributes,
            "QueueArn": queue.arn(self.region),
            "CreatedTimestamp": str(int(queue.created_at)),
            "LastModifiedTimestamp": str(int(queue.updated_at)),
        }
        wanted = set(ALL_ATTRIBUTES) if "All" in names else set(names)
        if wanted & {
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        }:
            every.update({k: str(v) for k, v in (await self.store.counts(queue)).items()})
        attributes = {k: v for k, v in every.items() if k in wanted}
        return {"Attributes": attributes} if attributes else {}

    async def set_queue_attributes(
        self, identity: Identity, body: dict[str, Any]
    ) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        attributes = body.get("Attributes")
        if not isinstance(attributes, dict):
            raise missing("Attributes")
        await self.store.set_attributes(queue, attributes)
        return {}

    async def purge_queue(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        await self.store.purge(await self._queue(identity, body))
        return {}

    # ---- messages ----------------------------------------------------------------------------

    async def send_message(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        message = validate_message(queue, body)
        [sent] = await self.store.send(queue, [message])
        result = {"MessageId": sent.message_id, "MD5OfMessageBody": sent.md5_body}
        if sent.md5_attributes:
            result["MD5OfMessageAttributes"] = sent.md5_attributes
        if sent.sequence_number:
            result["SequenceNumber"] = sent.sequence_number
        return result

    async def send_message_batch(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        entries = validate_batch_ids(body.get("Entries"))
        failed: list[dict[str, Any]] = []
        valid: list[tuple[str, Any]] = []
        total = 0
        for entry in entries:
            try:
                message = validate_message(queue, entry)
            except GureumError as exc:
                failed.append(_failure(entry["Id"], exc))
                continue
            total += message.size
            valid.append((entry["Id"], message))
        if total > MAX_MESSAGE_BYTES:
            raise SQSError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {MAX_MESSAGE_BYTES} bytes. You have "
                f"sent {total} bytes.",
                query_code="AWS.SimpleQueueService.BatchRequestTooLong",
            )
        sent = await self.store.send(queue, [message for _, message in valid]) if valid else []
        successful = []
        for (entry_id, _), result in zip(valid, sent, strict=True):
            item = {
                "Id": entry_id,
                "MessageId": result.message_id,
                "MD5OfMessageBody": result.md5_body,
            }
            if result.md5_attributes:
                item["MD5OfMessageAttributes"] = result.md5_attributes
            if result.sequence_number:
                item["SequenceNumber"] = result.sequence_number
            successful.append(item)
        return {"Successful": successful, "Failed": failed}

    async def receive_message(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        count = _int(body, "MaxNumberOfMessages", 1, 1, 10)
        wait = _int(body, "WaitTimeSeconds", queue.number("ReceiveMessageWaitTimeSeconds"), 0, 20)
        timeout = body.get("VisibilityTimeout")
        if timeout is not None:
            timeout = _int(body, "VisibilityTimeout", 0, 0, MAX_VISIBILITY_TIMEOUT)
        messages = await self.store.receive(queue, count, timeout, wait)
        system = set(body.get("AttributeNames") or []) | set(
            body.get("MessageSystemAttributeNames") or []
        )
        names = body.get("MessageAttributeNames") or []
        return {"Messages": [self._render(queue, msg, system, names) for msg in messages]}

    def _render(
        self, queue: Queue, message: StoredMessage, system: set[str], names: list[str]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "MessageId": message.message_id,
            "ReceiptHandle": message.receipt_handle,
            "MD5OfBody": message.md5_body,
            "Body": message.body,
        }
        attributes = message_system_attributes(queue, message)
        if "All" not in system:
            attributes = {k: v for k, v in attributes.items() if k in system}
        if attributes:
            out["Attributes"] = attributes
        chosen = {k: v for k, v in message.attributes.items() if _attribute_selected(k, names)}
        if chosen:
            out["MessageAttributes"] = chosen
        if message.md5_attributes and chosen:
            out["MD5OfMessageAttributes"] = message.md5_attributes
        return out

    async def delete_message(self, identity: Identity, body: dict[str, Any]) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        handle = body.get("ReceiptHandle")
        if not handle:
            raise missing("ReceiptHandle")
        await self.store.delete(queue, [str(handle)])
        return {}

    async def delete_message_batch(
        self, identity: Identity, body: dict[str, Any]
    ) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        entries = validate_batch_ids(body.get("Entries"))
        valid: list[tuple[str, str]] = []
        failed = []
        for entry in entries:
            handle = str(entry.get("ReceiptHandle") or "")
            try:
                parse_receipt(queue, handle)
            except GureumError as exc:
                failed.append(_failure(entry["Id"], exc))
            else:
                valid.append((entry["Id"], handle))
        if valid:  # one group commit for the batch
            await self.store.delete(queue, [handle for _, handle in valid])
        return {"Successful": [{"Id": entry_id} for entry_id, _ in valid], "Failed": failed}

    async def change_message_visibility(
        self, identity: Identity, body: dict[str, Any]
    ) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        if "VisibilityTimeout" not in body:
            raise missing("VisibilityTimeout")
        timeout = _int(body, "VisibilityTimeout", 0, 0, MAX_VISIBILITY_TIMEOUT)
        await self.store.change_visibility(queue, str(body.get("ReceiptHandle") or ""), timeout)
        return {}

    async def change_message_visibility_batch(
        self, identity: Identity, body: dict[str, Any]
    ) -> dict[str, Any]:
        queue = await self._queue(identity, body)
        entries = validate_batch_ids(body.get("Entries"))
        successful, failed = [], []
        for entry in entries:
            try:
                timeout = _int(entry, "VisibilityTimeout", 0, 0, MAX_VISIBILITY_TIMEOUT)
                await self.store.change_visibility(
                    queue, str(entry.get("ReceiptHandle") or ""), timeout
                )
            except GureumError as exc:
                failed.append(_failure(entry["Id"], exc))
            else:
                successful.append({"Id": entry["Id"]})
        return {"Successful": successful, "Failed": failed}


def message_system_attributes(queue: Queue, message: StoredMessage) -> dict[str, str]:
    """Every system attribute of a received message, as SQS names them."""
    attributes = {
        "SenderId": queue.account_id,
        "SentTimestamp": str(int(message.sent_at * 1000)),
        "ApproximateReceiveCount": str(message.receive_count),
        "ApproximateFirstReceiveTimestamp": str(
            int((message.first_received_at or time.time()) * 1000)
        ),
    }
    if queue.fifo:
        attributes["SequenceNumber"] = f"{message.row_id:020d}"
        attributes["MessageGroupId"] = message.group_id or ""
        attributes["MessageDeduplicationId"] = message.dedup_id or ""
    if message.dead_letter_source:
        attributes["DeadLetterQueueSourceArn"] = message.dead_letter_source
    trace = message.system_attributes.get("AWSTraceHeader")
    if trace and "StringValue" in trace:
        attributes["AWSTraceHeader"] = trace["StringValue"]
    return attributes


def _attribute_selected(name: str, wanted: list[str]) -> bool:
    for pattern in wanted:
        if pattern in ("All", ".*") or pattern == name:
            return True
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            return True
    return False


def _failure(entry_id: str, exc: GureumError) -> dict[str, Any]:
    return {
        "Id": entry_id,
        "SenderFault": True,
        "Code": getattr(exc, "query_code", None) or exc.code,
        "Message": exc.message,
    }
