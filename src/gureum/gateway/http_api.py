"""`HttpApiGateway`: serves user routes as AWS API Gateway HTTP APIs do (payload format 2.0).

For one request: find the API and route in the in-memory `RouteTable` (rebuilt only when the
`RouteStore` changes), answer CORS preflights, apply the API's and the route's rate limits,
read the body (at most 6 MB), authorize, invoke the route's function with the 2.0 event and
turn its return value into the response. Every response carries `X-Request-Id` (and AWS's
`apigw-requestid`); every request gets one access-log line on the `gureum.access` logger.

HEAD is a method like any other, as in AWS's route selection (method and path, `ANY` for the
methods a path does not name, then `$default`): a `HEAD`, `ANY` or `$default` route takes it,
a `GET` route does not (404). Its response has the function's status and headers, with the
content-length of the body it returned, and no body (uvicorn sends none after HEAD).

Gateway answers use AWS's `{"message": …}` bodies: 404 Not Found, 400 Bad Request (path not
valid percent-encoded UTF-8), 413 Request Entity Too Large, 431 Request Header Fields Too
Large (over 10 KB of path and headers), 429 Too Many Requests (with
Retry-After), 401/403 from authorization, 500 Internal Server Error when the function fails or
returns something that is not a response, 504 Gateway Timeout when the integration
timeout (the route's `timeout_ms`, at most 30 s) runs out first.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

from starlette.types import Receive, Scope, Send

from gureum.control.route_store import RouteStore
from gureum.control.routes import Api, Cors, Route
from gureum.errors import GureumError, HttpApiError, TooManyRequests
from gureum.gateway.http_event import (
    HttpResponse,
    MalformedResponse,
    RequestFacts,
    build_event,
    header_map,
    host_name,
    map_response,
    request_cookies,
)
from gureum.gateway.ratelimit import RateLimiter
from gureum.gateway.route_auth import RouteAuthorizer
from gureum.gateway.routing import BadPath, RouteTable
from gureum.iam.sigv4 import SecretLookup
from gureum.node.dispatcher import Dispatcher, InvocationResult
from gureum.node.records import new_request_id

log = logging.getLogger(__name__)
access_log = logging.getLogger("gureum.access")

MAX_REQUEST_BODY = 6 * 1024 * 1024
CLIENT_CLOSED = 499  # in the access log (as nginx logs it): the client left mid-request
MAX_HEADERS = 10 * 1024  # request line and headers together, as AWS's HTTP APIs allow
# Paths of Gureum's own AWS APIs: an unsigned request there that no user route takes gets the
# platform's answer (403 MissingAuthenticationTokenException), not the gateway's 404.
PLATFORM_PREFIXES = ("/2015-03-31/", "/2017-10-31/", "/2019-09-30/")
# set by the gateway itself, whatever the function says
_HOP_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "x-request-id", "apigw-requestid"}
)
_NO_BODY = frozenset({204, 304})
_CORS_RESPONSE_HEADERS = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-expose-headers",
        "access-control-allow-methods",
        "access-control-allow-headers",
        "access-control-max-age",
    }
)


class ClientGone(Exception):
    """The client disconnected before its request was whole: nobody to answer."""


class HttpApiGateway:
    """The user-route half of the gateway. Call it like an ASGI app; it returns False for a
    request it does not take (see PLATFORM_PREFIXES)."""

    def __init__(
        self,
        store: RouteStore,
        dispatcher: Dispatcher,
        keyring: SecretLookup,
        region: str,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.limiter = RateLimiter()
        self.authorizer = RouteAuthorizer(store, keyring, self._invoke_authorizer, region)
        self._table = RouteTable(store.snapshot())
        self._generation = store.generation
        self._answering: set[asyncio.Task[None]] = set()  # 504s sent by timeout tasks

    def table(self) -> RouteTable:
        if self._generation != self.store.generation:
            self._generation = self.store.generation
            self._table = RouteTable(self.store.snapshot())
        return self._table

    async def _invoke_authorizer(
        self, account: str, name: str, qualifier: str | None, payload: bytes
    ) -> InvocationResult:
        return await self.dispatcher.invoke(account, name, qualifier, payload, trigger="authorizer")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        request_id = new_request_id()
        raw_path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        raw_path = raw_path.split("?", 1)[0]
        headers = header_map(scope["headers"])
        host = host_name(headers.get("host", ""))
        found = self.table().find_api(host, raw_path)
        exchange = _Exchange(self, scope, send, request_id, raw_path, headers)
        try:
            if found is None:
                if raw_path.startswith(PLATFORM_PREFIXES):
                    return False
                raise HttpApiError(404, "Not Found")
            entry, rest = found
            api = exchange.api = entry.api
            if len(raw_path) + sum(len(n) + len(v) for n, v in scope["headers"]) > MAX_HEADERS:
                raise HttpApiError(431, "Request Header Fields Too Large")
            method: str = scope["method"]
            if api.cors is not None and _is_preflight(method, headers):
                exchange.preflight = True
                response = _preflight(api.cors, headers)
            else:
                try:
                    match = self.table().match(entry, method, rest)
                except BadPath:
                    raise HttpApiError(400, "Bad Request") from None
                if match is None:
                    if raw_path.startswith(PLATFORM_PREFIXES):
                        return False
                    raise HttpApiError(404, "Not Found")
                route_key = exchange.route_key = match.route.route_key
                _add_forwarded(headers, scope)
                facts = RequestFacts(
                    request_id=request_id,
                    method=method,
                    raw_path=raw_path,
                    raw_query=scope.get("query_string", b"").decode("latin-1"),
                    headers=headers,
                    source_ip=(scope.get("client") or ("", 0))[0],
                    protocol="HTTP/" + scope.get("http_version", "1.1"),
                    route_key=route_key,
                    path_params=match.path_params,
                    cookies=request_cookies(scope["headers"]) if "cookie" in headers else (),
                )
                response = await self._serve(
                    scope, receive, facts, match.api, match.route, exchange
                )
        except HttpApiError as exc:
            response = _message(exc.status, exc.message, exc.headers)
        except ClientGone:
            response = None
        except Exception:
            log.exception("user route request %s failed", request_id)
            response = _message(500, "Internal Server Error")
        if not exchange.answered:  # else the integration timeout answered already
            await exchange.answer(response)
        return True

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        facts: RequestFacts,
        api: Api,
        route: Route,
        exchange: _Exchange,
    ) -> HttpResponse:
        for key, rate, burst in (
            (api.api_id, api.rate_limit, api.burst),
            (route.route_id, route.rate_limit, route.burst),
        ):
            wait = self.limiter.check(key, rate, burst)
            if wait:
                raise HttpApiError(429, "Too Many Requests", {"retry-after": str(wait)})
        body = await _read_body(receive, facts.headers)
        authorizer = await self.authorizer.authorize(api, route, facts, scope, body)
        event = build_event(api, facts, api.account_id, body, authorizer)
        result = await self._invoke(api, route, facts.request_id, event, exchange)
        if result.function_error:
            raise HttpApiError(500, "Internal Server Error")
        try:
            return map_response(result.payload)
        except MalformedResponse as exc:
            log.warning("route %s: malformed function response: %s", route.route_key, exc)
            raise HttpApiError(500, "Internal Server Error") from None

    async def _invoke(
        self, api: Api, route: Route, request_id: str, event: bytes, exchange: _Exchange
    ) -> InvocationResult:
        # When the integration timeout runs out first, the exchange answers 504 from a task of
        # its own, and the invocation goes on here to its end: cancelling it would hand a
        # still-busy instance back to the pool. (A task for every invocation instead, to stop
        # waiting for it, cost each request some 4 us.)
        timer = asyncio.get_running_loop().call_later(route.timeout_ms / 1000, exchange.time_out)
        try:
            return await self.dispatcher.invoke(
                api.account_id,
                route.function_name,
                route.qualifier,
                event,
                trigger="http",
                request_id=request_id,
            )
        except TooManyRequests as exc:
            raise HttpApiError(
                429, "Too Many Requests", {"retry-after": str(exc.retry_after_s)}
            ) from None
        except GureumError as exc:
            log.warning("route %s: invocation failed: %s", route.route_key, exc.message)
            raise HttpApiError(500, "Internal Server Error") from None
        finally:
            timer.cancel()

    def _track(self, task: asyncio.Task[None]) -> None:
        self._answering.add(task)
        task.add_done_callback(self._answered)

    def _answered(self, task: asyncio.Task[None]) -> None:
        self._answering.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("answering a timed-out request failed", exc_info=task.exception())


class _Exchange:
    """One request to a user route until it is answered, once: by its own task with what the
    function returned (or an error), or by the integration timeout's task with a 504. Either
    way the answer gets its CORS headers, X-Request-Id and the access-log line."""

    __slots__ = (
        "answered",
        "api",
        "gateway",
        "headers",
        "preflight",
        "raw_path",
        "request_id",
        "route_key",
        "scope",
        "send",
        "started",
    )

    def __init__(
        self,
        gateway: HttpApiGateway,
        scope: Scope,
        send: Send,
        request_id: str,
        raw_path: str,
        headers: dict[str, str],
    ) -> None:
        self.started = time.perf_counter()
        self.gateway = gateway
        self.scope = scope
        self.send = send
        self.request_id = request_id
        self.raw_path = raw_path
        self.headers = headers
        self.api: Api | None = None
        self.route_key = "-"
        self.preflight = False
        self.answered = False

    def time_out(self) -> None:
        """The integration timeout ran out: answer 504 now, from a task of its own."""
        if not self.answered:
            self.answered = True
            self.gateway._track(asyncio.ensure_future(self.answer(_GATEWAY_TIMEOUT)))

    async def answer(self, response: HttpResponse | None) -> None:
        """Send `response` (None: the client left, nothing to send) and log the request."""
        self.answered = True
        api = self.api
        if response is None:
            status, sent = CLIENT_CLOSED, 0
        else:
            cors = None if self.preflight or api is None else api.cors
            status = response.status
            sent = await _send(self.send, response, self.request_id, cors, self.headers)
            if self.scope["method"] == "HEAD":
                sent = 0  # uvicorn sends no body after HEAD
        if access_log.isEnabledFor(logging.INFO):
            scope = self.scope
            query = scope.get("query_string", b"")
            access_log.info(
                '%s "%s %s%s" %d %d %.1fms api=%s route="%s" request_id=%s',
                (scope.get("client") or ("-", 0))[0],
                scope["method"],
                self.raw_path,
                "?" + query.decode("latin-1") if query else "",
                status,
                sent,
                (time.perf_counter() - self.started) * 1000,
                api.api_id if api else "-",
                self.route_key,
                self.request_id,
            )


async def _send(
    send: Send,
    response: HttpResponse,
    request_id: str,
    cors: Cors | None,
    request_headers: dict[str, str],
) -> int:
    """Send `response` with the gateway's own headers; the length of the body it carried."""
    headers = response.headers
    if cors is not None:
        # AWS: with CORS configured, the function's own CORS headers are ignored
        headers = [(k, v) for k, v in headers if k not in _CORS_RESPONSE_HEADERS]
        if "origin" in request_headers:
            headers += _cors_headers(cors, request_headers["origin"])
    raw = [
        (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
        for k, v in headers
        if k not in _HOP_HEADERS
    ]
    body = response.body
    if response.status in _NO_BODY:  # whatever the function said: HTTP has no body here
        body = b""
    else:
        raw.append((b"content-length", str(len(body)).encode()))
    raw += [(b"x-request-id", request_id.encode()), (b"apigw-requestid", request_id.encode())]
    await send({"type": "http.response.start", "status": response.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
    return len(body)


def _add_forwarded(headers: dict[str, str], scope: Scope) -> None:
    """The X-Forwarded-For/-Port/-Proto headers AWS adds to the event, unless a proxy in front
    already set them (frameworks behind Mangum build their URLs from these)."""
    headers.setdefault("x-forwarded-for", (scope.get("client") or ("", 0))[0])
    server = scope.get("server")
    if server and server[1] is not None:
        headers.setdefault("x-forwarded-port", str(server[1]))
    headers.setdefault("x-forwarded-proto", scope.get("scheme", "http"))


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> HttpResponse:
    body = json.dumps({"message": message}).encode()
    return HttpResponse(
        status, [("content-type", "application/json"), *(headers or {}).items()], body
    )


_GATEWAY_TIMEOUT = _message(504, "Gateway Timeout")


async def _read_body(receive: Receive, headers: dict[str, str]) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > MAX_REQUEST_BODY:
        raise HttpApiError(413, "Request Entity Too Large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone  # never invoke a function with part of a request
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BODY:
            raise HttpApiError(413, "Request Entity Too Large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _is_preflight(method: str, headers: dict[str, str]) -> bool:
    return (
        method == "OPTIONS" and "origin" in headers and "access-control-request-method" in headers
    )


def _origin_allowed(cors: Cors, origin: str) -> str | None:
    """The Access-Control-Allow-Origin value for `origin`, or None if it is not allowed."""
    if origin in cors.allow_origins:
        return origin
    if "*" in cors.allow_origins:
        return "*"
    scheme, sep, _ = origin.partition("://")
    if sep and f"{scheme.lower()}://*" in cors.allow_origins:  # any origin of that scheme
        return origin
    return None


def _cors_headers(cors: Cors, origin: str) -> list[tuple[str, str]]:
    allowed = _origin_allowed(cors, origin)
    if allowed is None:
        return []
    headers = [("access-control-allow-origin", allowed)]
    if allowed != "*":
        headers.append(("vary", "origin"))
    if cors.allow_credentials:
        headers.append(("access-control-allow-credentials", "true"))
    if cors.expose_headers:
        headers.append(("access-control-expose-headers", ",".join(cors.expose_headers)))
    return headers


def _preflight(cors: Cors, headers: dict[str, str]) -> HttpResponse:
    """AWS answers preflights itself when an API has CORS: 204, with the allow headers only
    when the origin and the requested method are allowed."""
    origin = headers["origin"]
    requested = headers["access-control-request-method"].strip().upper()
    methods_ok = "*" in cors.allow_methods or requested in cors.allow_methods
    if _origin_allowed(cors, origin) is None or not methods_ok:
        return HttpResponse(204, [], b"")
    out = _cors_headers(cors, origin)
    out.append(("access-control-allow-methods", ",".join(cors.allow_methods)))
    if cors.allow_headers:
        out.append(("access-control-allow-headers", ",".join(cors.allow_headers)))
    if cors.max_age is not None:
        out.append(("access-control-max-age", str(cors.max_age)))
    return HttpResponse(204, out, b"")
