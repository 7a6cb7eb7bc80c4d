"""`GatewayApp`: the single ASGI app. Authenticates, limits bodies, and routes.

/healthz                 unauthenticated liveness
/v1/...                  management API (FastAPI)
everything else          the AWS API named by the SigV4 credential scope's service
                         (`lambda` today; S3, SQS … register in `_services`)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Message, Receive, Scope, Send

from gureum.errors import AuthError, ClientError, GureumError, RequestTooLarge
from gureum.gateway.auth import authenticate, claimed_service
from gureum.gateway.lambda_api import MAX_SYNC_PAYLOAD, LambdaAPI
from gureum.gateway.management import build_management_api
from gureum.gateway.responses import error_response, json_response
from gureum.platform import Platform
from gureum.settings import Settings

log = logging.getLogger(__name__)
# A base64 zip of up to 50 MB (AWS's direct-upload limit) plus the JSON around it.
MAX_BODY = 70 * 1024 * 1024
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    """An AWS API served here: its ASGI app and the body size it accepts for a path."""

    app: ASGIApp
    body_limit: Callable[[str], int]


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


class GatewayApp:
    """Serve a `Platform`. With `settings`, it opens the platform itself on ASGI lifespan."""

    def __init__(self, platform: Platform | None = None, settings: Settings | None = None) -> None:
        self.platform = platform
        self.settings = settings
        self._services: dict[str, Service] = {}
        self._management: ASGIApp | None = None
        if platform is not None:
            self._mount(platform)

    def _mount(self, platform: Platform) -> None:
        self.platform = platform
        self._services = {"lambda": Service(LambdaAPI(platform).router(), _lambda_body_limit)}
        self._management = build_management_api(platform)

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
        try:
            await self._handle(scope, receive, send, path)
        except Exception as exc:
            await error_response(exc)(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, path: str) -> None:
        assert self.platform is not None and self._management is not None
        management = path == "/v1" or path.startswith("/v1/")
        service_name = "lambda" if management else claimed_service(scope) or "lambda"
        service = self._services.get(service_name)
        if service is None:
            raise ClientError(f"this endpoint does not serve the AWS service {service_name!r}")
        limit = MAX_BODY if management else service.body_limit(path)
        try:
            body = await _read_body(receive, limit)
        except RequestTooLarge:
            operation = " for the InvokeFunction operation" if limit == MAX_SYNC_PAYLOAD else ""
            raise RequestTooLarge(
                f"Request must be smaller than {limit} bytes{operation}"
            ) from None
        identity = authenticate(scope, body, self.platform.keyring)
        if identity.region != self.platform.settings.region:
            raise AuthError(
                f"Credential should be scoped to a valid region, not '{identity.region}'; "
                f"this endpoint's region is '{self.platform.settings.region}'."
            )
        scope = {**scope, "gureum.identity": identity}
        app = self._management if management else service.app
        if management:
            scope["root_path"] = scope.get("root_path", "") + "/v1"
        await app(scope, _replay(body, receive), send)

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
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.platform is not None and self.settings is not None:
                    await self.platform.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
