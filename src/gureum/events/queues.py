"""SQS queues as AWS defines them: names, attributes, message validation and MD5 digests.

Everything here is pure (no I/O); `gureum.events.queue_store` keeps queues and messages in
the metadata store, and `gureum.events.sqs_api` speaks SQS's wire protocol.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from gureum.errors import SQSError

MAX_MESSAGE_BYTES = 262_144  # 256 KiB, AWS's classic limit for a message and a batch
MAX_BATCH_ENTRIES = 10
MAX_MESSAGE_ATTRIBUTES = 10
DEDUP_WINDOW_S = 300.0  # FIFO deduplication interval: five minutes
MAX_VISIBILITY_TIMEOUT = 43_200
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_ATTRIBUTE_NAME = re.compile(r"^(?!\.)(?!.*\.\.)(?!.*\.$)[A-Za-z0-9_.-]{1,256}$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_DEDUP_ID = re.compile(r"^[\x21-\x7e]{1,128}$")
# Characters SQS accepts in a body: #x9 | #xA | #xD | #x20-#xD7FF | #xE000-#xFFFD | #x10000+
_INVALID_BODY_CHARS = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

# name -> (default, low, high) for the numeric attributes a client may set
_NUMERIC = {
    "VisibilityTimeout": (30, 0, MAX_VISIBILITY_TIMEOUT),
    "DelaySeconds": (0, 0, 900),
    "MessageRetentionPeriod": (345_600, 60, 1_209_600),
    "MaximumMessageSize": (MAX_MESSAGE_BYTES, 1_024, MAX_MESSAGE_BYTES),
    "ReceiveMessageWaitTimeSeconds": (0, 0, 20),
    "KmsDataKeyReusePeriodSeconds": (300, 60, 86_400),
}
_SETTABLE = {
    *_NUMERIC,
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "Policy",
    "FifoQueue",
    "ContentBasedDeduplication",
    "KmsMasterKeyId",
    "SqsManagedSseEnabled",
    "DeduplicationScope",
    "FifoThroughputLimit",
}
COMPUTED = (
    "QueueArn",
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "CreatedTimestamp",
    "LastModifiedTimestamp",
)
ALL_ATTRIBUTES = frozenset({*_SETTABLE, *COMPUTED})


def invalid(message: str) -> SQSError:
    """AWS's generic validation error (`InvalidParameterValue` for query-protocol clients)."""
    return SQSError("InvalidParameterValueException", message, query_code="InvalidParameterValue")


def missing(parameter: str) -> SQSError:
    return SQSError(
        "MissingRequiredParameterException",
        f"The request must contain the parameter {parameter}.",
        query_code="MissingParameter",
    )


def queue_does_not_exist() -> SQSError:
    return SQSError(
        "QueueDoesNotExist",
        "The specified queue does not exist.",
        query_code="AWS.SimpleQueueService.NonExistentQueue",
    )


def queue_arn(region: str, account: str, name: str) -> str:
    return f"arn:aws:sqs:{region}:{account}:{name}"


def parse_queue_arn(arn: str) -> tuple[str, str]:
    """(account, queue name) from `arn:aws:sqs:REGION:ACCOUNT:NAME`; raise on anything else."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[:3] != ["arn", "aws", "sqs"] or not parts[4] or not parts[5]:
        raise invalid(f"Invalid SQS queue ARN: {arn}")
    return parts[4], parts[5]


def validate_queue_name(name: str) -> None:
    base = name.removesuffix(".fifo")
    if not _QUEUE_NAME.match(base) or len(name) > 80:
        raise invalid(
            "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length"
        )


@dataclass(frozen=True)
class RedrivePolicy:
    dead_letter_arn: str
    max_receive_count: int


@dataclass(frozen=True)
class Queue:
    """A queue's identity and its client-set attributes (values are strings, as in SQS)."""

    id: int
    account_id: str
    name: str
    attributes: dict[str, str]
    created_at: float
    updated_at: float

    @property
    def fifo(self) -> bool:
        return self.name.endswith(".fifo")

    def number(self, key: str) -> int:
        return int(self.attributes.get(key, _NUMERIC[key][0]))

    @property
    def content_based_dedup(self) -> bool:
        return self.attributes.get("ContentBasedDeduplication") == "true"

    @property
    def redrive(self) -> RedrivePolicy | None:
        raw = self.attributes.get("RedrivePolicy")
        if not raw:
            return None
        policy = json.loads(raw)
        return RedrivePolicy(policy["deadLetterTargetArn"], int(policy["maxReceiveCount"]))

    def arn(self, region: str) -> str:
        return queue_arn(region, self.account_id, self.name)


def validate_attributes(name: str, given: dict[str, Any], *, creating: bool) -> dict[str, str]:
    """Check client-set queue attributes; return them normalised to strings."""
    out: dict[str, str] = {}
    for key, value in given.items():
        if key not in _SETTABLE:
            raise SQSError("InvalidAttributeName", f"Unknown Attribute {key}.")
        text = str(value)
        if key in _NUMERIC:
            _, low, high = _NUMERIC[key]
            if not text.lstrip("-").isdecimal() or not low <= int(text) <= high:
                raise SQSError(
                    "InvalidAttributeValue",
                    f"Invalid value for the parameter {key}. Reason: must be an integer "
                    f"between {low} and {high}.",
                )
            text = str(int(text))
        elif key in ("FifoQueue", "ContentBasedDeduplication", "SqsManagedSseEnabled"):
            if text.lower() not in ("true", "false"):
                raise SQSError("InvalidAttributeValue", f"Invalid value for the parameter {key}.")
            text = text.lower()
        elif key == "RedrivePolicy" and text:
            text = _redrive_policy(text)
        out[key] = text
    fifo_name = name.endswith(".fifo")
    if "FifoQueue" in out:
        if not creating:
            raise SQSError("InvalidAttributeName", "FifoQueue can only be set at creation.")
        if (out["FifoQueue"] == "true") != fifo_name:
            raise invalid(
                "The name of a FIFO queue can only include alphanumeric characters, hyphens, "
                "or underscores, must end with .fifo suffix and be 1 to 80 in length."
            )
    if out.get("ContentBasedDeduplication") == "true" and not fifo_name:
        raise SQSError("InvalidAttributeName", "Unknown Attribute ContentBasedDeduplication.")
    if fifo_name and creating:
        out.setdefault("FifoQueue", "true")
    return out


def _redrive_policy(text: str) -> str:
    try:
        policy = json.loads(text)
        arn = policy["deadLetterTargetArn"]
        count = int(policy["maxReceiveCount"])
    except (ValueError, KeyError, TypeError):
        raise SQSError(
            "InvalidAttributeValue",
            "Value for parameter RedrivePolicy is invalid. Reason: Redrive policy is not a "
            "valid JSON map with deadLetterTargetArn and maxReceiveCount.",
        ) from None
    parse_queue_arn(str(arn))
    if not 1 <= count <= 1000:
        raise SQSError(
            "InvalidAttributeValue",
            "Value for parameter RedrivePolicy is invalid. Reason: Invalid value for "
            "maxReceiveCount: must be between 1 and 1000.",
        )
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": count})


# ---- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutgoingMessage:
    """A validated message to send; `attributes` keep binary values base64-encoded."""

    body: str
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    system_attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    delay_s: int | None = None
    group_id: str | None = None
    dedup_id: str | None = None

    @property
    def md5_body(self) -> str:
        return hashlib.md5(self.body.encode(), usedforsecurity=False).hexdigest()

    @property
    def md5_attributes(self) -> str | None:
        return attributes_md5(self.attributes) if self.attributes else None

    @property
    def size(self) -> int:
        return message_size(self.body, self.attributes)


def message_size(body: str, attributes: dict[str, dict[str, str]]) -> int:
    size = len(body.encode())
    for name, value in attributes.items():
        size += len(name.encode()) + len(value["DataType"].encode())
        if "StringValue" in value:
            size += len(value["StringValue"].encode())
        else:
            size += len(base64.b64decode(value["BinaryValue"]))
    return size


def attributes_md5(attributes: dict[str, dict[str, str]]) -> str:
    """MD5 of message attributes exactly as SQS computes it: for each name in order, the
    length-prefixed name, data type, a transport byte (1 string, 2 binary) and value."""
    buffer = bytearray()

    def put(data: bytes) -> None:
        buffer.extend(struct.pack(">I", len(data)))
        buffer.extend(data)

    for name in sorted(attributes):
        value = attributes[name]
        put(name.encode())
        put(value["DataType"].encode())
        if "StringValue" in value:
            buffer.append(1)
            put(value["StringValue"].encode())
        else:
            buffer.append(2)
            put(base64.b64decode(value["BinaryValue"]))
    return hashlib.md5(bytes(buffer), usedforsecurity=False).hexdigest()


def validate_message(queue: Queue, raw: dict[str, Any]) -> OutgoingMessage:
    """Validate one SendMessage request (or batch entry) for `queue`."""
    body = raw.get("MessageBody")
    if body is None:
        raise missing("MessageBody")
    if not isinstance(body, str) or body == "":
        raise invalid("The request must contain a non-empty message body.")
    if _INVALID_BODY_CHARS.search(body):
        raise SQSError(
            "InvalidMessageContents",
            "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | "
            "#x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )
    attributes = _message_attributes(raw.get("MessageAttributes"), "MessageAttribute")
    system = _message_attributes(raw.get("MessageSystemAttributes"), "MessageSystemAttribute")
    if set(system) - {"AWSTraceHeader"}:
        raise invalid("Only AWSTraceHeader is supported as a message system attribute.")
    limit = queue.number("MaximumMessageSize")
    size = message_size(body, attributes)
    if size > limit:
        raise invalid(
            f"One or more parameters are invalid. Reason: Message must be shorter than "
            f"{limit} bytes."
        )
    delay = raw.get("DelaySeconds")
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= 900:
            raise invalid(
                f"Value {delay} for parameter DelaySeconds is invalid. Reason: must be "
                "between 0 and 900 seconds."
            )
        if queue.fifo:
            raise invalid(
                f"Value {delay} for parameter DelaySeconds is invalid. Reason: The request "
                "include parameter that is not valid for this queue type."
            )
    group = raw.get("MessageGroupId")
    dedup = raw.get("MessageDeduplicationId")
    if queue.fifo:
        if not group:
            raise missing("MessageGroupId")
        if dedup is None and not queue.content_based_dedup:
            raise invalid(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )
    elif dedup is not None:
        raise invalid(
            "The request include parameter MessageDeduplicationId that is not valid for "
            "this queue type"
        )
    for key, value in (("MessageGroupId", group), ("MessageDeduplicationId", dedup)):
        if value is not None and (not isinstance(value, str) or not _DEDUP_ID.match(value)):
            raise invalid(f"Value {value} for parameter {key} is invalid.")
    if queue.fifo and dedup is None:
        dedup = hashlib.sha256(body.encode()).hexdigest()
    return OutgoingMessage(body, attributes, system, delay, group, dedup)


def _message_attributes(raw: object, what: str) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"{what}s must be a map.")
    if len(raw) > MAX_MESSAGE_ATTRIBUTES:
        raise invalid(
            f"Number of message attributes [{len(raw)}] exceeds the allowed maximum "
            f"[{MAX_MESSAGE_ATTRIBUTES}]."
        )
    out: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        if not _ATTRIBUTE_NAME.match(name) or name.lower().startswith(("aws.", "amazon.")):
            raise invalid(f"{what} name '{name}' is invalid.")
        if not isinstance(value, dict):
            raise invalid(f"The message attribute '{name}' must be a structure.")
        data_type = value.get("DataType")
        if not isinstance(data_type, str) or data_type.split(".", 1)[0] not in (
            "String",
            "Number",
            "Binary",
        ):
            raise invalid(
                f"The message attribute '{name}' has an invalid message attribute type, the "
                "set of supported type prefixes is Binary, Number, and String."
            )
        kind = data_type.split(".", 1)[0]
        if kind == "Binary":
            blob = value.get("BinaryValue")
            try:
                decoded = base64.b64decode(blob or "", validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise invalid(f"The message attribute '{name}' has an invalid binary.") from None
            if not decoded:
                raise invalid(f"The message attribute '{name}' must contain a non-empty value.")
            out[name] = {"DataType": data_type, "BinaryValue": str(blob)}
            continue
        text = value.get("StringValue")
        if not isinstance(text, str) or text == "":
            raise invalid(
                f"The message attribute '{name}' must contain a non-empty message attribute "
                f"value for message attribute type '{kind}'."
            )
        if kind == "Number":
            try:
                float(text)
            except ValueError:
                raise invalid(
                    f"Can't cast the value of message (user) attribute '{name}' to a number."
                ) from None
        out[name] = {"DataType": data_type, "StringValue": text}
    return out


def validate_batch_ids(entries: object) -> list[dict[str, Any]]:
    """Check a batch request's entries: 1-10, distinct, well-formed ids."""
    if not isinstance(entries, list) or not entries:
        raise SQSError(
            "EmptyBatchRequest",
            "There should be at least one SendMessageBatchRequestEntry in the request.",
            query_code="AWS.SimpleQueueService.EmptyBatchRequest",
        )
    if len(entries) > MAX_BATCH_ENTRIES:
        raise SQSError(
            "TooManyEntriesInBatchRequest",
            f"Maximum number of entries per request are {MAX_BATCH_ENTRIES}. "
            f"You have sent {len(entries)}.",
            query_code="AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
        )
    seen: set[str] = set()
    for entry in entries:
        entry_id = entry.get("Id") if isinstance(entry, dict) else None
        if not isinstance(entry_id, str) or not _BATCH_ID.match(entry_id):
            raise SQSError(
                "InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and "
                "underscores. It can be at most 80 letters long.",
                query_code="AWS.SimpleQueueService.InvalidBatchEntryId",
            )
        if entry_id in seen:
            raise SQSError(
                "BatchEntryIdsNotDistinct",
                f"Id {entry_id} repeated.",
                query_code="AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            )
        seen.add(entry_id)
    return entries
