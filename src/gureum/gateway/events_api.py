"""Management API routes for async events: a native async invoke with `Idempotency-Key`,
and redrive of dead-lettered events. Included by `build_management_api`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gureum.errors import ResourceNotFound
from gureum.gateway.lambda_api import MAX_ASYNC_PAYLOAD, check_payload
from gureum.iam.sigv4 import Identity
from gureum.platform import Platform


def _caller(request: Request) -> Identity:
    found: Identity = request.scope["gureum.identity"]
    return found


Caller = Annotated[Identity, Depends(_caller)]


class Redrive(BaseModel):
    request_id: str | None = Field(None, description="one event; omit to redrive all")


def events_router(platform: Platform) -> APIRouter:
    router = APIRouter()

    @router.post("/functions/{name}/invoke-async", status_code=202)
    async def invoke_async(
        name: str,
        request: Request,
        identity: Caller,
        qualifier: str | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
    ) -> JSONResponse:
        """Accept an async (Event) invocation durably; a repeated `Idempotency-Key` within
        the window returns the first request's id and runs nothing again."""
        payload = await request.body()
        check_payload(payload, MAX_ASYNC_PAYLOAD)
        await platform.registry.get_function(identity.account_id, name, qualifier)
        request_id = await platform.async_invoker.enqueue(
            identity.account_id, name, qualifier, payload, idempotency_key=idempotency_key
        )
        return JSONResponse({"request_id": request_id}, 202)

    @router.post("/events/redrive")
    async def redrive(body: Redrive, identity: Caller) -> dict[str, Any]:
        """Send dead-lettered (failed) async events through again."""
        count = await platform.async_invoker.redrive(identity.account_id, body.request_id)
        if body.request_id and not count:
            raise ResourceNotFound(f"no dead-lettered event {body.request_id}")
        return {"redriven": count}

    return router
