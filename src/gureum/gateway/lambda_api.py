"""AWS Lambda's REST API (2015-03-31 and friends), so boto3's `lambda` client works unchanged."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import msgspec
from botocore.auth import SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from gureum.control.models import LATEST, FunctionConfig, parse_function_ref
from gureum.errors import (
    InvalidParameterValue,
    InvalidRequestContent,
    RequestTooLarge,
    ResourceNotFound,
)
from gureum.gateway.responses import json_response
from gureum.iam.sigv4 import Identity
from gureum.platform import Platform

MAX_SYNC_PAYLOAD = 6 * 1024 * 1024
MAX_ASYNC_PAYLOAD = 1024 * 1024
LOG_TAIL_BYTES = 4096
CODE_URL_EXPIRES_S = 600  # GetFunction's Code.Location, valid for 10 minutes as on AWS
V = "/2015-03-31/functions"
# the route `V/{name}/invocations` as starlette compiles it ({name}: one non-empty segment)
_INVOKE_PATH = re.compile(r"/2015-03-31/functions/([^/]+)/invocations")


def identity(request: Request) -> Identity:
    found: Identity = request.scope["gureum.identity"]
    return found


async def body_json(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise InvalidRequestContent(f"Could not parse request body into json: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestContent("Request body must be a JSON object")
    return data


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdecimal() or not low <= int(raw) <= high:
        raise InvalidParameterValue(f"{name} must be an integer between {low} and {high}")
    return int(raw)


class _InvokeFastRouter(Router):
    """starlette's Router with a shortcut for POST .../invocations, the one hot endpoint.

    Invoke is matched by one regex instead of trying the routes ahead of it and run with the
    scope keys the Router would set (exceptions propagate unchanged); everything else,
    including a non-POST to the invoke path, goes through the Router.
    """

    def __init__(self, routes: Sequence[BaseRoute], invoke: ASGIApp) -> None:
        super().__init__(list(routes))
        self._invoke = invoke

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = _INVOKE_PATH.fullmatch(scope["path"])
            if match is not None:
                scope.setdefault("router", self)
                scope["endpoint"] = self._invoke
                scope["path_params"] = {"name": match.group(1)}
                await self._invoke(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


# the request headers Invoke reads
_INVOKE_HEADERS = frozenset(
    {
        b"x-amz-invocation-type",
        b"x-amz-log-type",
        b"x-amz-client-context",
        b"idempotency-key",
        b"x-gureum-idempotency-key",
    }
)


class _Invoke:
    """POST .../invocations as a plain ASGI app: the hot endpoint, so it builds no starlette
    Request or Response (their header and query parsing is a measurable share of a warm
    invoke). Errors are raised, as from any endpoint, for the gateway to render."""

    def __init__(self, api: LambdaAPI) -> None:
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        api = self.api
        headers: dict[bytes, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.lower()
            if name in _INVOKE_HEADERS:
                headers[name] = raw_value.decode("latin-1")
        query = scope.get("query_string", b"")
        account, name, qualifier = api.target(
            scope["path_params"]["name"],
            QueryParams(query).get("Qualifier") if query else None,
            scope["gureum.identity"],
        )
        payload = await _body(receive)
        kind = headers.get(b"x-amz-invocation-type", "RequestResponse")
        if kind not in ("RequestResponse", "Event", "DryRun"):
            raise InvalidParameterValue(f"Invalid InvocationType: {kind}")
        check_payload(payload, MAX_ASYNC_PAYLOAD if kind == "Event" else MAX_SYNC_PAYLOAD)
        client_context = _client_context(headers.get(b"x-amz-client-context"))
        if kind == "DryRun":
            await api.registry.get_function(account, name, qualifier)
            await _respond(send, 204, [])
            return
        if kind == "Event":
            await api.registry.get_function(account, name, qualifier)
            request_id = await api.platform.async_invoker.enqueue(
                account,
                name,
                qualifier,
                payload,
                idempotency_key=headers.get(b"idempotency-key")
                or headers.get(b"x-gureum-idempotency-key"),
            )
            await _respond(send, 202, [(b"x-amzn-requestid", request_id.encode())])
            return
        result = await api.platform.dispatcher.invoke(
            account, name, qualifier, payload, client_context=client_context
        )
        response_headers = [
            (b"content-type", b"application/json"),
            (b"x-amzn-requestid", result.request_id.encode()),
            (b"x-amz-executed-version", result.executed_version.encode()),
        ]
        if result.function_error:
            response_headers.append((b"x-amz-function-error", result.function_error.encode()))
        if headers.get(b"x-amz-log-type") == "Tail":
            tail = result.log.encode()[-LOG_TAIL_BYTES:]
            response_headers.append((b"x-amz-log-result", base64.b64encode(tail)))
        await _respond(send, 200, response_headers, result.payload)


async def _body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class LambdaAPI:
    """Endpoints of the Lambda API; each resolves the caller's account from its identity."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.registry = platform.registry
        self.region = platform.settings.region

    def router(self) -> Router:
        fn = V + "/{name}"
        invoke = _Invoke(self)
        return _InvokeFastRouter(
            [
                Route(V, self.create_function, methods=["POST"]),
                Route(V + "/", self.list_functions, methods=["GET"]),
                Route(V, self.list_functions, methods=["GET"]),
                Route(fn, self.get_function, methods=["GET"]),
                Route(fn, self.delete_function, methods=["DELETE"]),
                Route(fn + "/configuration", self.get_configuration, methods=["GET"]),
                Route(fn + "/configuration", self.update_configuration, methods=["PUT"]),
                Route(fn + "/code", self.update_code, methods=["PUT"]),
                Route(fn + "/versions", self.publish_version, methods=["POST"]),
                Route(fn + "/versions", self.list_versions, methods=["GET"]),
                Route(fn + "/aliases", self.create_alias, methods=["POST"]),
                Route(fn + "/aliases", self.list_aliases, methods=["GET"]),
                Route(fn + "/aliases/{alias}", self.get_alias, methods=["GET"]),
                Route(fn + "/aliases/{alias}", self.update_alias, methods=["PUT"]),
                Route(fn + "/aliases/{alias}", self.delete_alias, methods=["DELETE"]),
                Route(fn + "/invocations", invoke, methods=["POST"]),
                Route(
                    "/2017-10-31/functions/{name}/concurrency",
                    self.put_concurrency,
                    methods=["PUT"],
                ),
                Route(
                    "/2017-10-31/functions/{name}/concurrency",
                    self.delete_concurrency,
                    methods=["DELETE"],
                ),
                Route(
                    "/2019-09-30/functions/{name}/concurrency",
                    self.get_concurrency,
                    methods=["GET"],
                ),
                *self._event_routes(),
            ],
            invoke,
        )

    def _event_routes(self) -> list[Route]:
        # imported here: that module builds on this one's request helpers
        from gureum.gateway.lambda_events import LambdaEventRoutes

        return LambdaEventRoutes(self.platform).routes()

    def _target(self, request: Request) -> tuple[str, str, str | None]:
        """(account, function name, qualifier) from the path and `Qualifier` query."""
        return self.target(
            request.path_params["name"], request.query_params.get("Qualifier"), identity(request)
        )

    def target(
        self, ref: str, query_qualifier: str | None, caller: Identity
    ) -> tuple[str, str, str | None]:
        """(account, function name, qualifier) from a function reference (name, ARN or
        partial ARN, maybe `:qualifier`) and the `Qualifier` query parameter."""
        name, qualifier, account = parse_function_ref(ref, self.region)
        if account is not None and account != caller.account_id:
            raise ResourceNotFound(f"Function not found: {ref}")
        if qualifier and query_qualifier and qualifier != query_qualifier:
            raise InvalidParameterValue(
                "The derived qualifier from the function name does not "
                "match the specified qualifier."
            )
        return caller.account_id, name, query_qualifier or qualifier

    # ---- functions -------------------------------------------------------------------------

    async def create_function(self, request: Request) -> Response:
        body = await body_json(request)
        account = identity(request).account_id
        code = _zip_from(body.get("Code"))
        if body.get("PackageType", "Zip") != "Zip":
            raise InvalidParameterValue("Only PackageType Zip is supported")
        name, qualifier, _ = parse_function_ref(str(body.get("FunctionName", "")))
        if qualifier:
            raise InvalidParameterValue("FunctionName must not include a qualifier")
        if "Handler" not in body or "Runtime" not in body:
            raise InvalidParameterValue("Handler and Runtime are required for .zip packages")
        config = FunctionConfig(
            account_id=account,
            name=name,
            handler=body["Handler"],
            code_sha256="",
            code_sha256_b64="",
            code_size=0,
            runtime=body["Runtime"],
            **_config_fields(body),
        ).validated()
        created = await self.registry.create_function(config, code, publish=_bool(body, "Publish"))
        return json_response(created.to_aws(self.region), 201)

    async def list_functions(self, request: Request) -> Response:
        account = identity(request).account_id
        max_items = _int_param(request, "MaxItems", 50, 1, 10000)
        configs, marker = await self.registry.list_functions(
            account, request.query_params.get("Marker"), max_items
        )
        function_version = request.query_params.get("FunctionVersion")
        if function_version not in (None, "ALL"):
            raise InvalidParameterValue("FunctionVersion must be ALL when given")
        if function_version == "ALL":
            every: list[FunctionConfig] = []
            for config in configs:
                every += await self.registry.list_versions(account, config.name)
            configs = every
        body: dict[str, Any] = {"Functions": [c.to_aws(self.region) for c in configs]}
        if marker:
            body["NextMarker"] = marker
        return json_response(body)

    async def get_function(self, request: Request) -> Response:
        account, name, qualifier = self._target(request)
        config = await self.registry.get_function(account, name, qualifier)
        body: dict[str, Any] = {
            "Configuration": config.to_aws(self.region),
            "Code": {"RepositoryType": "S3", "Location": self._code_location(request, config)},
            "Tags": {},
        }
        reserved = await self.registry.reserved_concurrency(account, name)
        if reserved is not None:
            body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
        return json_response(body)

    def _code_location(self, request: Request, config: FunctionConfig) -> str:
        """A URL that downloads the version's zip with a plain GET: presigned (SigV4 query)
        with the caller's own key, so it grants nothing the caller could not do already."""
        caller = identity(request)
        token = request.headers.get("x-amz-security-token")
        secret, _, _ = self.platform.keyring(caller.access_key_id, token)
        url = (
            f"{self.platform.settings.endpoint}/v1/functions/{quote(config.name, safe='')}/code"
            f"?version={quote(config.version, safe='')}"
        )
        presign = AWSRequest(method="GET", url=url)
        credentials = Credentials(caller.access_key_id, secret, token)
        SigV4QueryAuth(credentials, "lambda", self.region, expires=CODE_URL_EXPIRES_S).add_auth(
            presign
        )
        return str(presign.url)

    async def get_configuration(self, request: Request) -> Response:
        account, name, qualifier = self._target(request)
        config = await self.registry.get_function(account, name, qualifier)
        return json_response(config.to_aws(self.region))

    async def delete_function(self, request: Request) -> Response:
        account, name, qualifier = self._target(request)
        await self.registry.delete_function(account, name, qualifier)
        return Response(status_code=204)

    async def update_code(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        code = _zip_from(body)
        if _bool(body, "DryRun"):
            config = await self.registry.get_latest(account, name)
        else:
            config = await self.registry.update_code(
                account,
                name,
                code,
                publish=_bool(body, "Publish"),
                revision_id=_str(body, "RevisionId"),
            )
        return json_response(config.to_aws(self.region))

    async def update_configuration(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        changes = _config_fields(body)
        if "Handler" in body:
            changes["handler"] = body["Handler"]
        if "Runtime" in body:
            changes["runtime"] = body["Runtime"]
        config = await self.registry.update_configuration(
            account, name, changes, _str(body, "RevisionId")
        )
        return json_response(config.to_aws(self.region))

    # ---- versions and aliases --------------------------------------------------------------

    async def publish_version(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        config = await self.registry.publish_version(
            account,
            name,
            description=_str(body, "Description"),
            code_sha256=_str(body, "CodeSha256"),
            revision_id=_str(body, "RevisionId"),
        )
        return json_response(config.to_aws(self.region), 201)

    async def list_versions(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        every = await self.registry.list_versions(account, name)
        page, marker = _page(request, every, lambda c: c.version)
        body: dict[str, Any] = {"Versions": [c.to_aws(self.region) for c in page]}
        if marker:
            body["NextMarker"] = marker
        return json_response(body)

    async def create_alias(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        alias = await self.registry.create_alias(
            account,
            name,
            _str(body, "Name") or "",
            _str(body, "FunctionVersion") or "",
            _str(body, "Description") or "",
            _routing(body),
        )
        return json_response(alias.to_aws(self.region), 201)

    async def list_aliases(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        every = await self.registry.list_aliases(account, name)
        version = request.query_params.get("FunctionVersion")
        if version:
            every = [a for a in every if a.function_version == version]
        page, marker = _page(request, every, lambda a: a.name)
        body: dict[str, Any] = {"Aliases": [a.to_aws(self.region) for a in page]}
        if marker:
            body["NextMarker"] = marker
        return json_response(body)

    async def get_alias(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        alias = await self.registry.get_alias(account, name, request.path_params["alias"])
        return json_response(alias.to_aws(self.region))

    async def update_alias(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        alias = await self.registry.update_alias(
            account,
            name,
            request.path_params["alias"],
            version=_str(body, "FunctionVersion"),
            description=_str(body, "Description"),
            routing=_routing(body) if "RoutingConfig" in body else None,
            revision_id=_str(body, "RevisionId"),
        )
        return json_response(alias.to_aws(self.region))

    async def delete_alias(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        await self.registry.delete_alias(account, name, request.path_params["alias"])
        return Response(status_code=204)

    # ---- concurrency -----------------------------------------------------------------------

    async def put_concurrency(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        body = await body_json(request)
        value = body.get("ReservedConcurrentExecutions")
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidParameterValue("ReservedConcurrentExecutions must be an integer")
        await self.registry.set_reserved_concurrency(account, name, value)
        return json_response({"ReservedConcurrentExecutions": value})

    async def get_concurrency(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        value = await self.registry.reserved_concurrency(account, name)
        return json_response({} if value is None else {"ReservedConcurrentExecutions": value})

    async def delete_concurrency(self, request: Request) -> Response:
        account, name, _ = self._target(request)
        await self.registry.set_reserved_concurrency(account, name, None)
        return Response(status_code=204)


def _str(body: dict[str, Any], key: str) -> str | None:
    """An optional string member: None when absent or null, InvalidParameterValue if not text."""
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidParameterValue(f"{key} must be a string")
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidParameterValue(f"{key} must be a boolean")
    return value


def _zip_from(code: object) -> bytes:
    if not isinstance(code, dict):
        raise InvalidParameterValue("Code is required and must include ZipFile")
    if "ZipFile" not in code:
        if code.get("S3Bucket") or code.get("ImageUri"):
            raise InvalidParameterValue(
                "Only Code.ZipFile is supported (S3 and image code locations are not)"
            )
        raise InvalidParameterValue("Code.ZipFile is required")
    try:
        return base64.b64decode(code["ZipFile"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidParameterValue("Code.ZipFile must be base64-encoded zip bytes") from None


def check_payload(payload: bytes, limit: int) -> None:
    """An invocation payload as AWS checks it before accepting anything: at most `limit`
    bytes, and JSON (refused now rather than failing in the function, or after its retries)."""
    if len(payload) > limit:
        raise RequestTooLarge(
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation"
        )
    if payload:
        try:
            json.loads(payload)
        except ValueError as exc:
            raise InvalidRequestContent(f"Could not parse request body into json: {exc}") from None


def _config_fields(body: dict[str, Any]) -> dict[str, Any]:
    """FunctionConfig fields from the optional configuration members of a request body."""
    out: dict[str, Any] = {}
    for key, field in (
        ("MemorySize", "memory_mb"),
        ("Timeout", "timeout_s"),
        ("Description", "description"),
        ("Role", "role"),
    ):
        if key in body:
            out[field] = body[key]
    if "Environment" in body:
        env = body["Environment"]
        if not isinstance(env, dict):
            raise InvalidParameterValue("Environment must be an object")
        out["environment"] = env.get("Variables") or {}
    if "EphemeralStorage" in body:
        storage = body["EphemeralStorage"]
        if not isinstance(storage, dict) or "Size" not in storage:
            raise InvalidParameterValue("EphemeralStorage.Size is required")
        out["ephemeral_mb"] = storage["Size"]
    if "DeadLetterConfig" in body:
        dead_letter = body["DeadLetterConfig"]
        target = dead_letter.get("TargetArn", "") if isinstance(dead_letter, dict) else None
        if not isinstance(target, str):
            raise InvalidParameterValue("DeadLetterConfig.TargetArn must be a string")
        out["dead_letter_target"] = target  # "" removes it
    return out


def _routing(body: dict[str, Any]) -> dict[str, float]:
    routing = body.get("RoutingConfig") or {}
    if not isinstance(routing, dict):
        raise InvalidParameterValue("RoutingConfig must be an object")
    weights = routing.get("AdditionalVersionWeights")
    if weights is None:
        return {}
    if not isinstance(weights, dict):
        raise InvalidParameterValue("RoutingConfig.AdditionalVersionWeights must be a map")
    return {str(k): v for k, v in weights.items()}


def _page(request: Request, items: list[Any], key: Any) -> tuple[list[Any], str | None]:
    """Marker pagination over an in-memory list: the marker is the last key of a page."""
    max_items = _int_param(request, "MaxItems", 50, 1, 10000)
    marker = request.query_params.get("Marker")
    if marker:
        keys = [key(item) for item in items]
        if marker not in keys:
            raise InvalidParameterValue(f"Invalid Marker: {marker}")
        items = items[keys.index(marker) + 1 :]
    page = items[:max_items]
    return page, key(page[-1]) if len(items) > max_items else None


def _client_context(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        # strict JSON, as the function will get it: no NaN, no lone surrogate, no 1e400
        data = msgspec.json.decode(base64.b64decode(raw, validate=True))
    except (binascii.Error, msgspec.DecodeError):
        raise InvalidRequestContent("Client context must be base64-encoded JSON") from None
    if not isinstance(data, dict):
        raise InvalidRequestContent("Client context must be a JSON object")
    return data


__all__ = ["LATEST", "LambdaAPI"]
