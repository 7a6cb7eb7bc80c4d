"""SQS's older query protocol, which older SDKs speak: a form-encoded `Action=SendMessage&…`
POST (or GET) to `/` or to the queue URL, answered in XML (API version 2012-11-05).

`parse_query()` turns the flattened parameters (`Attribute.1.Name`, `MessageAttribute.1.Value
.StringValue`, `SendMessageBatchRequestEntry.2.Id`, …) into the body the AWS JSON 1.0 handlers
take, so both protocols share one implementation; `render_result()` and `render_error()` write
AWS's XML shapes from those handlers' results and errors.
"""

from __future__ import annotations

import uuid
from typing import Any
from xml.etree import ElementTree as ET

from starlette.responses import Response

from gureum.errors import ClientError, GureumError, ServiceError, SQSError

XMLNS = "http://queue.amazonaws.com/doc/2012-11-05/"
FORM = "application/x-www-form-urlencoded"
_INTEGERS = {"DelaySeconds", "MaxNumberOfMessages", "VisibilityTimeout", "WaitTimeSeconds"}
_INTEGERS |= {"MaxResults"}
# flattened list name -> the JSON protocol's member name
_LISTS = {
    "AttributeName": "AttributeNames",
    "MessageAttributeName": "MessageAttributeNames",
    "MessageSystemAttributeName": "MessageSystemAttributeNames",
    "SendMessageBatchRequestEntry": "Entries",
    "DeleteMessageBatchRequestEntry": "Entries",
    "ChangeMessageVisibilityBatchRequestEntry": "Entries",
}
# flattened Name/Value pairs -> the JSON protocol's map
_MAPS = {
    "Attribute": "Attributes",
    "MessageAttribute": "MessageAttributes",
    "MessageSystemAttribute": "MessageSystemAttributes",
}


def parse_query(pairs: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """(action, JSON-protocol body) from the request's form and query parameters."""
    tree: dict[str, Any] = {}
    for key, value in pairs:
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise _malformed(key)
            node = child
        if isinstance(node.get(last), dict):
            raise _malformed(key)
        node[last] = value
    action = tree.pop("Action", None)
    if not isinstance(action, str) or not action:
        raise SQSError("MissingAction", "The request must contain the parameter Action.")
    tree.pop("Version", None)
    return action, _members(tree)


def _malformed(key: str) -> SQSError:
    return SQSError(
        "MalformedQueryString", f"Parameter {key} is malformed.", query_code="MalformedQueryString"
    )


def _numbered(node: Any, name: str) -> list[Any]:
    """The members `1`, `2`, … of a flattened list, in order."""
    if not isinstance(node, dict) or not all(k.isdecimal() for k in node):
        raise _malformed(name)
    return [node[k] for k in sorted(node, key=int)]


def _members(node: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _MAPS:
            pairs = _numbered(value, key)
            if not all(isinstance(pair, dict) for pair in pairs):
                raise _malformed(key)
            out[_MAPS[key]] = {
                pair.get("Name", ""): _value(pair.get("Value", "")) for pair in pairs
            }
        elif key in _LISTS:
            items = _numbered(value, key)
            out[_LISTS[key]] = [_members(i) if isinstance(i, dict) else i for i in items]
        elif isinstance(value, dict):
            out[key] = _members(value)
        elif key in _INTEGERS and value.lstrip("-").isdecimal():
            out[key] = int(value)
        else:
            out[key] = value
    return out


def _value(value: Any) -> Any:
    """An attribute's value: a plain string (queue attributes) or a message attribute's
    {DataType, StringValue | BinaryValue} (binary stays base64, as in the JSON protocol)."""
    return _members(value) if isinstance(value, dict) else value


# ---- responses -------------------------------------------------------------------------------


def render_result(action: str, result: dict[str, Any]) -> Response:
    """`<{Action}Response><{Action}Result>…</…><ResponseMetadata>…` from a JSON result."""
    root = ET.Element(f"{action}Response", xmlns=XMLNS)
    if result or action in _ALWAYS_RESULT:
        body = ET.SubElement(root, f"{action}Result")
        for key, value in result.items():
            _add(body, action, key, value)
    request_id = str(uuid.uuid4())
    meta = ET.SubElement(root, "ResponseMetadata")
    ET.SubElement(meta, "RequestId").text = request_id
    return _xml(root, 200, request_id)


_ALWAYS_RESULT = {"ListQueues", "ReceiveMessage", "GetQueueAttributes"}


def _add(parent: ET.Element, action: str, key: str, value: Any) -> None:
    if key in ("Attributes", "MessageAttributes") and isinstance(value, dict):
        element = "Attribute" if key == "Attributes" else "MessageAttribute"
        for name, item in value.items():
            pair = ET.SubElement(parent, element)
            ET.SubElement(pair, "Name").text = name
            _add(pair, action, "Value", item)
    elif isinstance(value, list):
        element = {
            "QueueUrls": "QueueUrl",
            "Messages": "Message",
            "Successful": f"{action}ResultEntry",
            "Failed": "BatchResultErrorEntry",
        }.get(key, key)
        for item in value:
            _add(parent, action, element, item)
    elif isinstance(value, dict):
        child = ET.SubElement(parent, key)
        for name, item in value.items():
            _add(child, action, name, item)
    else:
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        ET.SubElement(parent, key).text = text


def render_error(exc: BaseException) -> Response:
    """AWS's query-protocol error: `<ErrorResponse><Error><Type/><Code/><Message/>…`."""
    if not isinstance(exc, GureumError):
        exc = ServiceError("An internal error occurred. The server log has the details.")
    code = getattr(exc, "query_code", None) or exc.code
    if isinstance(exc, ClientError) and not isinstance(exc, SQSError):
        code = {"InvalidSignatureException": "InvalidSecurity"}.get(code, code)
    root = ET.Element("ErrorResponse", xmlns=XMLNS)
    error = ET.SubElement(root, "Error")
    ET.SubElement(error, "Type").text = "Sender" if isinstance(exc, ClientError) else "Receiver"
    ET.SubElement(error, "Code").text = code
    ET.SubElement(error, "Message").text = exc.message
    ET.SubElement(error, "Detail")
    request_id = str(uuid.uuid4())
    ET.SubElement(root, "RequestId").text = request_id
    return _xml(root, exc.status, request_id)


def _xml(root: ET.Element, status: int, request_id: str) -> Response:
    return Response(
        b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="utf-8"),
        status_code=status,
        media_type="text/xml",
        headers={"x-amzn-RequestId": request_id},
    )
