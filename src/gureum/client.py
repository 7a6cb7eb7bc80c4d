"""`Client`: the Python SDK for a Gureum endpoint (the `gureum` CLI is built on it).

Every request is signed with SigV4 by botocore's own signer, exactly as boto3 would sign it,
so the server's verifier accepts it. Error responses are turned back into the `gureum.errors`
class the server raised, with the server's code and message.

    with Client.from_environment(os.environ) as client:
        client.create_function("hello", zip_bytes, handler="app.handler")
        print(client.invoke("hello", b'{"name": "you"}').payload)
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from gureum.errors import (
    AuthError,
    ClientError,
    CodeStorageExceeded,
    ConfigurationError,
    EndpointUnreachable,
    GureumError,
    InvalidParameterValue,
    InvalidRequestContent,
    PreconditionFailed,
    RequestTooLarge,
    ResourceConflict,
    ResourceNotFound,
    ServiceError,
    TooManyRequests,
    UnsupportedMediaType,
)
from gureum.iam.credentials import ROOT_CREDENTIALS_FILE
from gureum.settings import DEFAULT_DATA_DIR

DEFAULT_ENDPOINT = "http://127.0.0.1:8070"
DEFAULT_REGION = "us-east-1"
ENDPOINT_FILE = "endpoint"  # written by `gureum up` into the data dir
SERVICE = "lambda"
LAMBDA = "/2015-03-31/functions"
# Invocations may run for up to 900 s (the longest function timeout) before they answer.
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=905.0, write=60.0, pool=5.0)

_ERROR_CLASSES: dict[str, type[ClientError] | type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidParameterValue,
        InvalidRequestContent,
        CodeStorageExceeded,
        ResourceNotFound,
        ResourceConflict,
        PreconditionFailed,
        RequestTooLarge,
        UnsupportedMediaType,
        ServiceError,
    )
}


@dataclass(frozen=True)
class InvokeResult:
    """The outcome of `Client.invoke`, as the Lambda Invoke API reports it."""

    status: int  # 200 (RequestResponse), 202 (Event), 204 (DryRun)
    payload: bytes
    function_error: str | None  # 'Unhandled' when `payload` is an error document
    executed_version: str | None
    request_id: str | None
    log: str | None  # the log tail, when asked for with log_tail=True

    def json(self) -> Any:
        """The payload parsed as JSON (None for an empty payload)."""
        return json.loads(self.payload) if self.payload else None


def data_dir_from(env: Mapping[str, str]) -> Path:
    """The data directory `gureum up` uses by default: GUREUM_DATA_DIR or ~/.gureum."""
    return Path(env.get("GUREUM_DATA_DIR") or DEFAULT_DATA_DIR).expanduser()


class Client:
    """A synchronous client for one Gureum endpoint. Close it (or use `with`) when done."""

    page_size = 1000  # MaxItems per request when a `list_*` method walks all pages

    def __init__(
        self,
        endpoint: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None = None,
        region: str = DEFAULT_REGION,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        self.endpoint = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        self.region = region
        self.access_key_id = access_key_id
        self._signer = SigV4Auth(
            Credentials(access_key_id, secret_access_key, session_token), SERVICE, region
        )
        self._http = httpx.Client(timeout=timeout)
        self._aws_clients: list[Any] = []  # closed with this client

    @classmethod
    def from_environment(cls, env: Mapping[str, str], data_dir: Path | None = None) -> Client:
        """Configure from the environment, falling back to what `gureum up` left in the data dir.

        Endpoint: GUREUM_ENDPOINT, AWS_ENDPOINT_URL, `<data dir>/endpoint`, else
        http://127.0.0.1:8070. Credentials: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+
        AWS_SESSION_TOKEN), else `<data dir>/root-credentials.json`. The data dir is `data_dir`,
        else GUREUM_DATA_DIR, else ~/.gureum. Raises ConfigurationError without credentials.
        """
        data_dir = data_dir_from(env) if data_dir is None else data_dir
        endpoint = env.get("GUREUM_ENDPOINT") or env.get("AWS_ENDPOINT_URL")
        if not endpoint:
            try:
                endpoint = (data_dir / ENDPOINT_FILE).read_text().strip() or None
            except OSError:
                endpoint = None
        region = env.get("GUREUM_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        access_key_id = env.get("AWS_ACCESS_KEY_ID")
        secret = env.get("AWS_SECRET_ACCESS_KEY")
        token = env.get("AWS_SESSION_TOKEN") or None
        if not (access_key_id and secret):
            access_key_id, secret = _stored_root_credentials(data_dir)
            token = None
        return cls(
            endpoint or DEFAULT_ENDPOINT,
            access_key_id,
            secret,
            session_token=token,
            region=region or DEFAULT_REGION,
        )

    def close(self) -> None:
        """Close the connection pool and the boto3 clients made by `aws_client`; safe to call
        twice."""
        self._http.close()
        while self._aws_clients:
            self._aws_clients.pop().close()

    def aws_client(self, service: str) -> Any:
        """A boto3 client for one of Gureum's AWS APIs (`s3`, `lambda` …), with this client's
        endpoint, region and credentials; SigV4 also for presigned URLs. Usable until this
        client is closed."""
        import boto3
        from botocore.config import Config

        credentials = self._signer.credentials
        aws = boto3.client(  # type: ignore[call-overload, unused-ignore]
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=credentials.access_key,
            aws_secret_access_key=credentials.secret_key,
            aws_session_token=credentials.token,
            config=Config(signature_version="s3v4", retries={"mode": "standard"}),
        )
        self._aws_clients.append(aws)
        return aws

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- transport -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str | int | None] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one signed request; return the response if 2xx, else raise its GureumError.

        `path` must already be percent-encoded (see `_fn`); query values are encoded here.
        """
        all_headers = dict(headers or {})
        if json_body is not None:
            body = json.dumps(json_body, separators=(",", ":")).encode()
            all_headers.setdefault("Content-Type", "application/json")
        url = self.endpoint + path
        pairs = sorted((k, str(v)) for k, v in (query or {}).items() if v is not None)
        if pairs:
            # encoded strictly, as SigV4 canonicalises, so the server sees what was signed
            url += "?" + "&".join(f"{_q(k)}={_q(v)}" for k, v in pairs)
        signed = AWSRequest(method=method, url=url, data=body or b"", headers=all_headers)
        self._signer.add_auth(signed)
        try:
            response = self._http.request(
                method, url, content=body or b"", headers=dict(signed.headers.items())
            )
        except httpx.ConnectError as exc:
            raise EndpointUnreachable(
                f"cannot reach Gureum at {self.endpoint} ({_reason(exc)}). Is it running? "
                "Start it with `gureum up`, or point GUREUM_ENDPOINT at a running server."
            ) from None
        except httpx.TimeoutException:
            raise _error(
                ServiceError,
                f"Gureum at {self.endpoint} did not answer in time",
                code="RequestTimeout",
                status=504,
            ) from None
        except httpx.TransportError as exc:
            raise EndpointUnreachable(
                f"connection to Gureum at {self.endpoint} failed: {_reason(exc)}"
            ) from None
        if response.status_code >= 400:
            raise error_from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    # ---- functions -------------------------------------------------------------------------

    def create_function(
        self,
        name: str,
        zip_file: bytes,
        handler: str,
        runtime: str = "python3.11",
        *,
        memory_mb: int | None = None,
        timeout_s: int | None = None,
        environment: Mapping[str, str] | None = None,
        description: str | None = None,
        publish: bool = False,
    ) -> dict[str, Any]:
        """CreateFunction from zip bytes; returns the FunctionConfiguration."""
        body: dict[str, Any] = {
            "FunctionName": name,
            "Code": {"ZipFile": base64.b64encode(zip_file).decode()},
            "Handler": handler,
            "Runtime": runtime,
            "Publish": publish,
            **_config_body(memory_mb, timeout_s, environment, description),
        }
        result: dict[str, Any] = self._json("POST", LAMBDA, json_body=body)
        return result

    def update_function_code(
        self, name: str, zip_file: bytes, *, publish: bool = False
    ) -> dict[str, Any]:
        """UpdateFunctionCode of $LATEST (then publish a version if asked)."""
        body = {"ZipFile": base64.b64encode(zip_file).decode(), "Publish": publish}
        result: dict[str, Any] = self._json("PUT", _fn(name, "code"), json_body=body)
        return result

    def update_function_configuration(
        self,
        name: str,
        *,
        handler: str | None = None,
        runtime: str | None = None,
        memory_mb: int | None = None,
        timeout_s: int | None = None,
        environment: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """UpdateFunctionConfiguration of $LATEST; only the given fields change."""
        body = _config_body(memory_mb, timeout_s, environment, description)
        if handler is not None:
            body["Handler"] = handler
        if runtime is not None:
            body["Runtime"] = runtime
        result: dict[str, Any] = self._json("PUT", _fn(name, "configuration"), json_body=body)
        return result

    def get_function(self, name: str, qualifier: str | None = None) -> dict[str, Any]:
        """GetFunction: {'Configuration': ..., 'Code': ..., ['Concurrency': ...]}."""
        result: dict[str, Any] = self._json("GET", _fn(name), query={"Qualifier": qualifier})
        return result

    def list_functions(self) -> list[dict[str, Any]]:
        """Every function's $LATEST configuration (all pages)."""
        return self._all_pages(LAMBDA + "/", "Functions")

    def delete_function(self, name: str, qualifier: str | None = None) -> None:
        """Delete the function, or only one published version when `qualifier` is given."""
        self.request("DELETE", _fn(name), query={"Qualifier": qualifier})

    # ---- versions and aliases --------------------------------------------------------------

    def publish_version(self, name: str, description: str | None = None) -> dict[str, Any]:
        """Publish $LATEST as a new numbered version (or return the one it already is)."""
        body = {} if description is None else {"Description": description}
        result: dict[str, Any] = self._json("POST", _fn(name, "versions"), json_body=body)
        return result

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """$LATEST and every published version (all pages)."""
        return self._all_pages(_fn(name, "versions"), "Versions")

    def create_alias(
        self,
        name: str,
        alias: str,
        version: str,
        description: str = "",
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """CreateAlias; `weights` sends that share of traffic to other versions."""
        body: dict[str, Any] = {
            "Name": alias,
            "FunctionVersion": version,
            "Description": description,
        }
        if weights:
            body["RoutingConfig"] = {"AdditionalVersionWeights": dict(weights)}
        result: dict[str, Any] = self._json("POST", _fn(name, "aliases"), json_body=body)
        return result

    def update_alias(
        self,
        name: str,
        alias: str,
        version: str | None = None,
        description: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> dict[str, Any]:
        """UpdateAlias; None leaves a field unchanged, `weights={}` removes the traffic split."""
        body: dict[str, Any] = {}
        if version is not None:
            body["FunctionVersion"] = version
        if description is not None:
            body["Description"] = description
        if weights is not None:
            body["RoutingConfig"] = {"AdditionalVersionWeights": dict(weights)}
        result: dict[str, Any] = self._json("PUT", _fn(name, "aliases", alias), json_body=body)
        return result

    def get_alias(self, name: str, alias: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", _fn(name, "aliases", alias))
        return result

    def list_aliases(self, name: str) -> list[dict[str, Any]]:
        """Every alias of the function (all pages)."""
        return self._all_pages(_fn(name, "aliases"), "Aliases")

    def delete_alias(self, name: str, alias: str) -> None:
        self.request("DELETE", _fn(name, "aliases", alias))

    def _all_pages(self, path: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        marker: str | None = None
        while True:
            page = self._json("GET", path, query={"Marker": marker, "MaxItems": self.page_size})
            items += page.get(key, [])
            marker = page.get("NextMarker")
            if not marker:
                return items

    # ---- invoke ----------------------------------------------------------------------------

    def invoke(
        self,
        name: str,
        payload: bytes = b"",
        qualifier: str | None = None,
        invocation_type: str = "RequestResponse",
        log_tail: bool = False,
    ) -> InvokeResult:
        """Invoke the function. A function error is a result (see `function_error`), not raised."""
        headers = {"X-Amz-Invocation-Type": invocation_type}
        if log_tail:
            headers["X-Amz-Log-Type"] = "Tail"
        response = self.request(
            "POST",
            _fn(name, "invocations"),
            query={"Qualifier": qualifier},
            body=payload,
            headers=headers,
        )
        log = None
        encoded = response.headers.get("x-amz-log-result")
        if encoded:
            try:
                log = base64.b64decode(encoded).decode(errors="replace")
            except (binascii.Error, ValueError):
                log = None
        return InvokeResult(
            status=response.status_code,
            payload=response.content,
            function_error=response.headers.get("x-amz-function-error"),
            executed_version=response.headers.get("x-amz-executed-version"),
            request_id=response.headers.get("x-amzn-requestid"),
            log=log,
        )

    # ---- management API (/v1) --------------------------------------------------------------

    def invocations(self, name: str, limit: int = 50) -> list[dict[str, Any]]:
        """The function's newest invocation records, newest first."""
        result: list[dict[str, Any]] = self._json(
            "GET", f"/v1/functions/{_q(name)}/invocations", query={"limit": limit}
        )
        return result

    def logs(
        self,
        name: str,
        *,
        after: int = 0,
        request_id: str | None = None,
        limit: int = 20,
    ) -> list[dict[str, Any]]:
        """Log entries `{seq, request_id, log}` in order: the newest `limit`, or those after
        the `after` cursor (the `seq` of the last entry seen)."""
        result: list[dict[str, Any]] = self._json(
            "GET",
            f"/v1/functions/{_q(name)}/logs",
            query={"after": after or None, "request_id": request_id, "limit": limit},
        )
        return result

    def doctor(self) -> dict[str, Any]:
        """The server's isolation level and sandbox checks."""
        result: dict[str, Any] = self._json("GET", "/v1/doctor")
        return result

    def whoami(self) -> dict[str, str]:
        """The principal these credentials authenticate as."""
        result: dict[str, str] = self._json("GET", "/v1/whoami")
        return result

    def events(self, state: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Async (Event) invocations, newest first, optionally only those in `state`."""
        result: list[dict[str, Any]] = self._json(
            "GET", "/v1/events", query={"state": state, "limit": limit}
        )
        return result

    def invoke_async(
        self,
        name: str,
        payload: bytes = b"",
        *,
        qualifier: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Enqueue a durable async invocation; its request id (the first one's, when the
        idempotency key was used before within the window)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        result = self._json(
            "POST",
            f"/v1/functions/{_q(name)}/invoke-async",
            query={"qualifier": qualifier},
            body=payload,
            headers=headers,
        )
        return str(result["request_id"])

    def redrive(self, request_id: str | None = None) -> int:
        """Send dead-lettered async events (one, or all) through again; how many."""
        result = self._json("POST", "/v1/events/redrive", json_body={"request_id": request_id})
        return int(result["redriven"])

    def set_network(
        self, name: str, network: str, egress_allow: list[str] | None = None
    ) -> dict[str, Any]:
        """Set what the function's sandbox may reach ("none", "platform" or "internet", with
        an optional host allow-list); returns both settings."""
        body: dict[str, Any] = {"network": network}
        if egress_allow is not None:
            body["egress_allow"] = egress_allow
        result: dict[str, Any] = self._json(
            "PUT", f"/v1/functions/{_q(name)}/network", json_body=body
        )
        return result

    def set_scaling(
        self,
        name: str,
        *,
        min_instances: int | None = None,
        reserved_concurrency: int | None = None,
        clear_reserved_concurrency: bool = False,
    ) -> dict[str, Any]:
        """Set min_instances / reserved concurrency (None keeps a value); returns both."""
        body: dict[str, Any] = {"clear_reserved_concurrency": clear_reserved_concurrency}
        if min_instances is not None:
            body["min_instances"] = min_instances
        if reserved_concurrency is not None:
            body["reserved_concurrency"] = reserved_concurrency
        result: dict[str, Any] = self._json(
            "PUT", f"/v1/functions/{_q(name)}/scaling", json_body=body
        )
        return result

    # ---- schedules (/v1/schedules) ---------------------------------------------------------

    def create_schedule(
        self,
        name: str,
        expression: str,
        target: str,
        *,
        input: Any = None,
        timezone: str = "UTC",
        missed: str = "fire-once",
    ) -> dict[str, Any]:
        """Invoke `target` (NAME[:QUALIFIER]) asynchronously on every tick of `expression`
        (rate(…), cron(…), a 5-field cron line or at(…)) in `timezone`, with `input` (any JSON
        value) or, without it, EventBridge's Scheduled Event. `missed`: fire-once | skip."""
        body: dict[str, Any] = {
            "name": name,
            "expression": expression,
            "target": target,
            "timezone": timezone,
            "missed": missed,
        }
        if input is not None:
            body["input"] = input
        result: dict[str, Any] = self._json("POST", "/v1/schedules", json_body=body)
        return result

    def list_schedules(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/schedules")
        return result

    def get_schedule(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("GET", f"/v1/schedules/{_q(name)}")
        return result

    def delete_schedule(self, name: str) -> None:
        self.request("DELETE", f"/v1/schedules/{_q(name)}")

    def pause_schedule(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self._json("POST", f"/v1/schedules/{_q(name)}/pause")
        return result

    def resume_schedule(self, name: str) -> dict[str, Any]:
        """Resume a paused schedule from its first tick after now."""
        result: dict[str, Any] = self._json("POST", f"/v1/schedules/{_q(name)}/resume")
        return result

    # ---- topics (/v1/topics, /v1/subscriptions) --------------------------------------------

    def create_topic(self, name: str) -> dict[str, Any]:
        """Create a topic (or get the existing one): {name, arn, subscriptions, created_at}."""
        result: dict[str, Any] = self._json("POST", "/v1/topics", json_body={"name": name})
        return result

    def list_topics(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/topics")
        return result

    def delete_topic(self, name: str) -> None:
        """Delete a topic and its subscriptions."""
        self.request("DELETE", f"/v1/topics/{_q(name)}")

    def subscribe(
        self, topic: str, endpoint: str, filter_policy: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Subscribe `function:NAME[:QUALIFIER]` or `queue:NAME`, optionally filtered on
        message attributes (SNS filter policy)."""
        body: dict[str, Any] = {"endpoint": endpoint}
        if filter_policy is not None:
            body["filter_policy"] = dict(filter_policy)
        result: dict[str, Any] = self._json(
            "POST", f"/v1/topics/{_q(topic)}/subscriptions", json_body=body
        )
        return result

    def list_subscriptions(self, topic: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", f"/v1/topics/{_q(topic)}/subscriptions")
        return result

    def unsubscribe(self, subscription: str) -> None:
        """Remove a subscription by id or ARN."""
        self.request("DELETE", f"/v1/subscriptions/{_q(subscription.rsplit(':', 1)[-1])}")

    def publish_message(
        self,
        topic: str,
        message: str,
        attributes: Mapping[str, Any] | None = None,
        subject: str | None = None,
    ) -> dict[str, Any]:
        """Publish to a topic; returns {message_id, deliveries} once every matching
        subscription's delivery is durable. Attribute values: str, number, or
        {"Type": "String|Number|String.Array", "Value": "…"}."""
        body: dict[str, Any] = {"message": message}
        if attributes:
            body["attributes"] = dict(attributes)
        if subject is not None:
            body["subject"] = subject
        result: dict[str, Any] = self._json(
            "POST", f"/v1/topics/{_q(topic)}/publish", json_body=body
        )
        return result

    # ---- API gateway (/v1/apis, /v1/routes, /v1/api-keys) ---------------------------------

    def create_api(self, name: str, **settings: Any) -> dict[str, Any]:
        """Create an HTTP API: base_path, host, stage, cors, rate_limit, burst,
        stage_variables (all optional)."""
        body = {"name": name, **{k: v for k, v in settings.items() if v is not None}}
        result: dict[str, Any] = self._json("POST", "/v1/apis", json_body=body)
        return result

    def list_apis(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/apis")
        return result

    def update_api(self, name: str, **changes: Any) -> dict[str, Any]:
        """Change an API's cors / rate_limit / burst / stage_variables (a None value removes
        cors; stage_variables replaces them all)."""
        result: dict[str, Any] = self._json("PATCH", f"/v1/apis/{_q(name)}", json_body=changes)
        return result

    def delete_api(self, name: str) -> None:
        self.request("DELETE", f"/v1/apis/{_q(name)}")

    def add_route(
        self,
        route_key: str,
        target: str,
        *,
        api: str | None = None,
        auth: str | dict[str, Any] | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """Route `route_key` ('GET /hello/{name}', 'ANY /{proxy+}', '$default') to a function."""
        body = {
            "route_key": route_key,
            "target": target,
            "api": api,
            "auth": auth,
            "rate_limit": rate_limit,
            "burst": burst,
            "timeout_ms": timeout_ms,
        }
        result: dict[str, Any] = self._json(
            "POST", "/v1/routes", json_body={k: v for k, v in body.items() if v is not None}
        )
        return result

    def list_routes(self, api: str | None = None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/routes", query={"api": api})
        return result

    def remove_route(self, ref: str, api: str | None = None) -> None:
        """Remove a route by id or route key (in `api`, else the default API)."""
        self.request("DELETE", f"/v1/routes/{_q(ref)}", query={"api": api})

    def create_api_key(self, name: str, api: str | None = None) -> dict[str, Any]:
        """Create an API key; the answer's `key` is shown only this once."""
        body = {"name": name, **({"api": api} if api else {})}
        result: dict[str, Any] = self._json("POST", "/v1/api-keys", json_body=body)
        return result

    def list_api_keys(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._json("GET", "/v1/api-keys")
        return result

    def delete_api_key(self, key_id: str) -> None:
        self.request("DELETE", f"/v1/api-keys/{_q(key_id)}")


def error_from_response(response: httpx.Response) -> GureumError:
    """Rebuild the GureumError a server raised from its error response."""
    status = response.status_code
    try:
        document = response.json()
    except ValueError:
        document = None
    if not isinstance(document, dict):
        document = {}
    # AWS may append ':<url>' to the type; FastAPI validation errors carry only 'detail'
    code = (response.headers.get("x-amzn-errortype") or "").split(":", 1)[0]
    code = code or str(document.get("code") or "")
    message = str(document.get("message") or document.get("Message") or "")
    if not message and "detail" in document:
        message = _describe_detail(document["detail"])
    message = message or f"HTTP {status} {response.reason_phrase}".strip()
    if status == 403:
        return AuthError(message, code=code or "AccessDeniedException")
    if status == 429 or code == TooManyRequests.code:
        retry_after = response.headers.get("retry-after", "1")
        return TooManyRequests(
            message,
            reason=str(document.get("Reason") or ""),
            retry_after_s=int(retry_after) if retry_after.isdecimal() else 1,
        )
    known = _ERROR_CLASSES.get(code)
    if known is not None:
        return known(message)
    if status < 500:
        return _error(ClientError, message, code=code or "InvalidRequestException", status=status)
    return _error(ServiceError, message, code=code or "ServiceException", status=status)


def _error(
    cls: type[ClientError] | type[ServiceError], message: str, *, code: str, status: int
) -> GureumError:
    error = cls(message)
    error.code = code  # keep what the server said, even where no class of ours matches it
    error.status = status
    return error


def _describe_detail(detail: object) -> str:
    """A one-line message from FastAPI's validation error `detail`."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p not in ("body", "query"))
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
        return "; ".join(parts)
    return str(detail)


def _stored_root_credentials(data_dir: Path) -> tuple[str, str]:
    path = data_dir / ROOT_CREDENTIALS_FILE
    try:
        document = json.loads(path.read_bytes())
        return str(document["access_key_id"]), str(document["secret_access_key"])
    except FileNotFoundError:
        raise ConfigurationError(
            f"no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run "
            f"`gureum up` once to create root credentials in {data_dir}"
        ) from None
    except PermissionError:
        raise ConfigurationError(
            f"no permission to read {path}; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ) from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"{path} is not a valid root credentials file: {exc}") from None


def _q(text: str) -> str:
    """Percent-encode one path segment or query item the way SigV4 canonicalises it."""
    return quote(text, safe="-_.~")


def _fn(name: str, *rest: str) -> str:
    """The Lambda API path of a function (name may carry ':qualifier'), plus sub-resources."""
    return "/".join([LAMBDA, _q(name), *(_q(part) for part in rest)])


def _config_body(
    memory_mb: int | None,
    timeout_s: int | None,
    environment: Mapping[str, str] | None,
    description: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if memory_mb is not None:
        body["MemorySize"] = memory_mb
    if timeout_s is not None:
        body["Timeout"] = timeout_s
    if environment is not None:
        body["Environment"] = {"Variables": dict(environment)}
    if description is not None:
        body["Description"] = description
    return body


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "refused" in text.lower():
        return "connection refused"
    return text or type(exc).__name__


__all__ = ["DEFAULT_ENDPOINT", "Client", "InvokeResult", "data_dir_from", "error_from_response"]
