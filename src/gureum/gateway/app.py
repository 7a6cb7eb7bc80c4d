"""`GatewayApp`: the single ASGI app. Authenticates, limits bodies, and routes.

/healthz                 unauthenticated liveness
/v1/...                  management API (FastAPI)
SigV4 for a service      the AWS API named by the SigV4 credential scope's service
(not execute-api)        (`lambda` today; S3, SQS … register in `_services`)
everything else          user routes (`gureum.gateway.http_api`); unmatched → 404, except
                         unsigned requests to the platform's own paths (403 as before)
"""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Message, Receive, Scope, Send

from gureum.errors import AuthError, ClientError, GureumError, RequestTooLarge
from gureum.events.sqs_api import sqs_body_limit, sqs_error_response
from gureum.gateway.auth import authenticate, claimed_service
from gureum.gateway.http_api import HttpApiGateway
from gureum.gateway.lambda_api import MAX_SYNC_PAYLOAD, LambdaAPI
from gureum.gateway.management import build_management_api
from gureum.gateway.responses import error_response, json_response
from gureum.iam.sigv4 import Identity, VerificationCache
from gureum.platform import Platform
from gureum.settings import Settings
from gureum.storage.s3_api import S3API
from gureum.storage.s3_xml import error_app as s3_error

log = logging.getLogger(__name__)
# A base64 zip of up to 50 MB (AWS's direct-upload limit) plus the JSON around it.
MAX_BODY = 70 * 1024 * 1024
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# Young collections this much rarer than CPython's default (700, 10, 10): every request
# allocates hundreds of short-lived containers, and each collection is a pause of its own.
GC_THRESHOLDS = (20_000, 20, 20)


@dataclass(frozen=True)
class Service:
    """An AWS API served here: its ASGI app and the body size it accepts for a path.

    A `streaming` service gets the request's `receive` untouched: it is authenticated from the
    headers and the declared x-amz-content-sha256 (`Identity.payload_hash`), and must check the
    body against that itself while reading it (`body_limit` is not applied). `render_error`,
    when set, turns every error on this service's requests (auth failures included) into the
    service's own error shape instead of the gateway's JSON one.
    """

    app: ASGIApp
    body_limit: Callable[[str], int]
    streaming: bool = False
    render_error: Callable[[BaseException], ASGIApp] | None = None


def _no_body_limit(path: str) -> int:
    return MAX_BODY  # unused: streaming services limit bodies themselves


def _lambda_body_limit(path: str) -> int:
    return MAX_SYNC_PAYLOAD if path.endswith("/invocations") else MAX_BODY


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"Request must be smaller than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """Hand the already-read body to the app once, then the real channel (for disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class _ServingCollector:
    """Tune the collector for serving once a platform is open, and give it back after.

    Everything start-up made (modules, the platform, SQLAlchemy's and botocore's tables: some
    140,000 objects the collector tracks) moves to the permanent generation, where no collection
    looks at it again: a full collection then scans only what serving made since, instead of
    pausing every request in flight for tens of milliseconds (the p99 of a warm invoke at
    c=32 went from 19-41 ms to 10 ms). The collector's settings are the process's, so apps
    that serve at the same time (tests run several) share them: the first to start saves the
    thresholds and tunes, the last to stop unfreezes the heap and restores them.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # apps of one process may run on loops of their own
        self._users = 0
        self._saved = gc.get_threshold()

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._users == 1:
                self._saved = gc.get_threshold()
                gc.collect()
                gc.freeze()
                gc.set_threshold(*GC_THRESHOLDS)

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                gc.unfreeze()
                gc.set_threshold(*self._saved)


_SERVING_COLLECTOR = _ServingCollector()


class GatewayApp:
    """Serve a `Platform`. With `settings`, it opens the platform itself on ASGI lifespan."""

    def __init__(self, platform: Platform | None = None, settings: Settings | None = None) -> None:
        self.platform = platform
        self.settings = settings
        self._services: dict[str, Service] = {}
        self._management: ASGIApp | None = None
        self._user_routes: HttpApiGateway | None = None
        self._s3: S3API | None = None
        self._tuned_collector = False  # released on shutdown
        # signing keys and recently verified requests, for this app's event loop only
        self._verification_cache = VerificationCache()
        if platform is not None:
            self._mount(platform)

    def _mount(self, platform: Platform) -> None:
        self.platform = platform
        self._services = {"lambda": Service(LambdaAPI(platform).router(), _lambda_body_limit)}
        self._services["sqs"] = Service(
            platform.events.sqs_api, sqs_body_limit, render_error=sqs_error_response
        )
        self._s3 = S3API.for_platform(platform)
        self._services["s3"] = Service(
            self._s3, _no_body_limit, streaming=True, render_error=s3_error
        )
        self._management = build_management_api(platform)
        self._user_routes = HttpApiGateway(
            platform.routes, platform.dispatcher, platform.keyring, platform.settings.region
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await json_response({"status": "ok"})(scope, receive, send)
            return
        management = path == "/v1" or path.startswith("/v1/")
        claimed = None if management else claimed_service(scope)
        if (
            self._user_routes is not None
            and not management
            and claimed in (None, "execute-api")
            and await self._user_routes(scope, receive, send)
        ):
            return
        try:
            await self._handle(scope, receive, send, path, management, claimed)
        except Exception as exc:
            await error_response(exc)(scope, receive, send)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        management: bool,
        claimed: str | None,
    ) -> None:
        assert self.platform is not None and self._management is not None
        service_name = "lambda" if management else claimed or "lambda"
        service = self._services.get(service_name)
        if service is None:
            raise ClientError(f"this endpoint does not serve the AWS service {service_name!r}")
        if not management and service.render_error is not None:
            try:
                await self._serve(scope, receive, send, path, service, management=False)
            except Exception as exc:
                await service.render_error(exc)(scope, receive, send)
            return
        await self._serve(scope, receive, send, path, service, management=management)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        path: str,
        service: Service,
        *,
        management: bool,
    ) -> None:
        assert self.platform is not None and self._management is not None
        if service.streaming and not management:
            identity = authenticate(
                scope,
                b"",
                self.platform.keyring,
                streaming=True,
                cache=self._verification_cache,
            )
            self._check_region(identity)
            await service.app({**scope, "gureum.identity": identity}, receive, send)
            return
        limit = MAX_BODY if management else service.body_limit(path)
        try:
            body = await _read_body(receive, limit)
        except RequestTooLarge:
            operation = " for the InvokeFunction operation" if limit == MAX_SYNC_PAYLOAD else ""
            raise RequestTooLarge(
                f"Request must be smaller than {limit} bytes{operation}"
            ) from None
        identity = authenticate(scope, body, self.platform.keyring, cache=self._verification_cache)
        self._check_region(identity)
        scope = {**scope, "gureum.identity": identity}
        app = self._management if management else service.app
        if management:
            scope["root_path"] = scope.get("root_path", "") + "/v1"
        await app(scope, _replay(body, receive), send)

    def _check_region(self, identity: Identity) -> None:
        assert self.platform is not None
        if identity.region != self.platform.settings.region:
            raise AuthError(
                f"Credential should be scoped to a valid region, not '{identity.region}'; "
                f"this endpoint's region is '{self.platform.settings.region}'."
            )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if self.platform is None and self.settings is not None:
                        self._mount(await Platform.open(self.settings))
                except GureumError as exc:
                    await send({"type": "lifespan.startup.failed", "message": exc.message})
                    return
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.settings is not None:
                    _SERVING_COLLECTOR.acquire()
                    self._tuned_collector = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    if self._s3 is not None:
                        await self._s3.close()
                    if self.platform is not None and self.settings is not None:
                        await self.platform.close()
                finally:
                    if self._tuned_collector:
                        self._tuned_collector = False
                        _SERVING_COLLECTOR.release()
                await send({"type": "lifespan.shutdown.complete"})
                return
