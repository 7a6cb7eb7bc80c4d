"""API Gateway HTTP API payload format 2.0: the event a route's function gets, and how its
return value becomes the HTTP response. Pure functions; no I/O.

Event: header names lower-cased and duplicates joined with ','; `cookie` headers moved to
`cookies` (split at ';' only: a ',' in a cookie's value stays in it); query values
percent-decoded ('+' a space) and duplicates joined with ','; keys that would be empty
(`cookies`, `queryStringParameters`, `pathParameters`, `body`) left out, as AWS leaves them
out; text bodies as text, anything else base64 with `isBase64Encoded: true`.

Response: a JSON object with `statusCode` is a structured response (`headers`, `cookies`,
`body`, `isBase64Encoded`); a JSON string is the body of a 200 `application/json` response as
text (AWS's reading of `return "Hello"`), any other valid JSON that body byte for byte;
anything else (a 1xx status, a header name that is not a token, a control character in a
header value) is a malformed response (500).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote_plus

import msgspec

from gureum.control.routes import Api

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/xhtml+xml",
    "application/graphql",
    "application/x-yaml",
    "application/yaml",
)
_TEXT_SUFFIXES = ("+json", "+xml", "+yaml")
# compact, UTF-8 as is (json.dumps's separators=(",", ":"), ensure_ascii=False) and ~10x faster
_EVENT_ENCODER = msgspec.json.Encoder()
_RESULT_DECODER = msgspec.json.Decoder()
# RFC 9110: a header name is a token; a value has no control characters but tab
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MalformedResponse(ValueError):
    """The function's return value is not a valid HTTP API response."""


def is_text(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(_TEXT_SUFFIXES)


def clf_time(epoch: float) -> str:
    """Common-log-format time, as in requestContext.time: 12/Mar/2020:19:03:58 +0000."""
    return _clf_second(int(epoch))


@functools.lru_cache(maxsize=4)  # every request of the same second shares one
def _clf_second(epoch: int) -> str:
    t = time.gmtime(epoch)
    return (
        f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{time.strftime('%H:%M:%S', t)} +0000"
    )


def header_map(raw_headers: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Lower-cased header names; duplicates comma-joined (cookies stay in here)."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw_headers:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def query_map(raw_query: str) -> dict[str, str]:
    """queryStringParameters: decoded values, duplicates comma-joined."""
    params: dict[str, str] = {}
    for piece in raw_query.split("&"):
        if not piece:
            continue
        key, _, value = piece.partition("=")
        key = unquote_plus(key)  # '+' is a space, as forms (and httpx, requests) send it
        value = unquote_plus(value)
        params[key] = f"{params[key]},{value}" if key in params else value
    return params


def request_cookies(raw_headers: list[tuple[bytes, bytes]]) -> tuple[str, ...]:
    """The event's `cookies`: each Cookie header split at ';'. Read from the raw headers, since
    `header_map` joins several Cookie headers with ',', which a cookie's value may hold."""
    return tuple(
        cookie
        for raw_name, raw_value in raw_headers
        if raw_name.lower() == b"cookie"
        for piece in raw_value.decode("latin-1").split(";")
        if (cookie := piece.strip())
    )


@dataclass
class RequestFacts:
    """What the gateway learnt about a request before invoking the route's function."""

    request_id: str
    method: str
    raw_path: str
    raw_query: str
    headers: dict[str, str]
    source_ip: str
    protocol: str
    route_key: str
    path_params: dict[str, str]
    cookies: tuple[str, ...] = ()  # `request_cookies`, when the request has any
    received_at: float = field(default_factory=time.time)


def host_name(host: str) -> str:
    """The name in a Host header: without its port, an IPv6 literal with its brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0]


def request_context(api: Api, facts: RequestFacts, account: str) -> dict[str, Any]:
    host = host_name(facts.headers.get("host", ""))
    return {
        "accountId": account,
        "apiId": api.api_id,
        "domainName": host,
        "domainPrefix": host.split(".", 1)[0],
        "http": {
            "method": facts.method,
            "path": facts.raw_path,
            "protocol": facts.protocol,
            "sourceIp": facts.source_ip,
            "userAgent": facts.headers.get("user-agent", ""),
        },
        "requestId": facts.request_id,
        "routeKey": facts.route_key,
        "stage": api.stage,
        "time": clf_time(facts.received_at),
        "timeEpoch": int(facts.received_at * 1000),
    }


# The `$context` variables a Lambda authorizer's identity sources may name (routes.py's
# CONTEXT_IDENTITY_VARIABLES), read as request_context() writes them into the event
CONTEXT_VARIABLES: dict[str, Callable[[Api, RequestFacts], str]] = {
    "accountId": lambda api, facts: api.account_id,
    "apiId": lambda api, facts: api.api_id,
    "domainName": lambda api, facts: host_name(facts.headers.get("host", "")),
    "domainPrefix": lambda api, facts: host_name(facts.headers.get("host", "")).split(".", 1)[0],
    "httpMethod": lambda api, facts: facts.method,
    "identity.sourceIp": lambda api, facts: facts.source_ip,
    "identity.userAgent": lambda api, facts: facts.headers.get("user-agent", ""),
    "path": lambda api, facts: facts.raw_path,
    "protocol": lambda api, facts: facts.protocol,
    "routeKey": lambda api, facts: facts.route_key,
    "stage": lambda api, facts: api.stage,
}


def common_fields(api: Api, facts: RequestFacts, account: str) -> dict[str, Any]:
    """The members an integration event and a Lambda authorizer event share."""
    headers = {k: v for k, v in facts.headers.items() if k != "cookie"}
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": facts.route_key,
        "rawPath": facts.raw_path,
        "rawQueryString": facts.raw_query,
    }
    if facts.cookies:
        event["cookies"] = list(facts.cookies)
    event["headers"] = headers
    query = query_map(facts.raw_query)
    if query:
        event["queryStringParameters"] = query
    event["requestContext"] = request_context(api, facts, account)
    if facts.path_params:
        event["pathParameters"] = dict(facts.path_params)
    if api.stage_variables:  # absent, not empty, when the stage has none (as on AWS)
        event["stageVariables"] = dict(api.stage_variables)
    return event


def build_event(
    api: Api,
    facts: RequestFacts,
    account: str,
    body: bytes,
    authorizer: dict[str, Any] | None,
) -> bytes:
    """The payload format 2.0 event, JSON-encoded."""
    event = common_fields(api, facts, account)
    if authorizer is not None:
        event["requestContext"]["authorizer"] = authorizer
    if body:
        text = None
        if is_text(facts.headers.get("content-type")):
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                text = None
        if text is None:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        else:
            event["body"] = text
            event["isBase64Encoded"] = False
    else:
        event["isBase64Encoded"] = False
    return _EVENT_ENCODER.encode(event)


class HttpResponse(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _header_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedResponse(f"header value {value!r} is not a string or number")


def map_response(payload: bytes) -> HttpResponse:
    """Turn a function's return value into the HTTP response; MalformedResponse if it is not
    one API Gateway would accept."""
    try:
        result = _RESULT_DECODER.decode(payload)
    except msgspec.DecodeError:
        # what msgspec refuses and Python's json reads (NaN, a lone surrogate) goes there
        try:
            result = json.loads(payload)
        except ValueError:
            raise MalformedResponse("the function did not return valid JSON") from None
    if isinstance(result, str):  # AWS: a returned string is the body itself, not its JSON
        return HttpResponse(200, [("content-type", "application/json")], result.encode())
    if not isinstance(result, dict) or "statusCode" not in result:
        return HttpResponse(200, [("content-type", "application/json")], payload)
    status = result["statusCode"]
    if isinstance(status, str) and status.isdecimal():
        status = int(status)
    # 1xx are interim responses: never the final answer to a request
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise MalformedResponse(f"statusCode {status!r} is not a final HTTP status")
    headers: list[tuple[str, str]] = []
    raw_headers = result.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise MalformedResponse("headers must be an object")
    for name, value in raw_headers.items():
        headers.append((str(name).lower(), _header_value(value)))
    multi = result.get("multiValueHeaders") or {}
    if isinstance(multi, dict):
        for name, values in multi.items():
            for value in values if isinstance(values, list) else [values]:
                headers.append((str(name).lower(), _header_value(value)))
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise MalformedResponse("cookies must be a list of strings")
    headers += [("set-cookie", cookie) for cookie in cookies]
    raw_body = result.get("body")
    if raw_body is None:
        body = b""
    elif isinstance(raw_body, str):
        if result.get("isBase64Encoded") is True:
            try:
                body = base64.b64decode(raw_body, validate=True)
            except (binascii.Error, ValueError):
                raise MalformedResponse("body is not valid base64") from None
        else:
            body = raw_body.encode()
    else:
        # API Gateway sends a non-string body as its JSON text
        body = json.dumps(raw_body, separators=(",", ":")).encode()
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _CONTROL.search(value):
            raise MalformedResponse(
                f"header {name!r}: names are tokens, values have no control characters"
            )
    return HttpResponse(status, headers, body)
