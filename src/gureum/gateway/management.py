"""The native management API under /v1 (FastAPI; OpenAPI at /v1/openapi.json).

It covers what AWS's Lambda API does not: logs, invocation records, async events, scaling,
doctor. Requests are authenticated by the gateway before they reach this app.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field

from gureum.errors import GureumError, InvalidParameterValue
from gureum.gateway.events_api import events_router
from gureum.gateway.responses import error_response
from gureum.gateway.routes_api import build_routes_router
from gureum.gateway.schedules_api import schedules_router
from gureum.iam.sigv4 import Identity
from gureum.platform import Platform


def caller(request: Request) -> Identity:
    found: Identity = request.scope["gureum.identity"]
    return found


Caller = Annotated[Identity, Depends(caller)]


class Scaling(BaseModel):
    min_instances: int | None = Field(None, ge=0, le=1000, description="instances kept warm")
    reserved_concurrency: int | None = Field(
        None, ge=0, le=100_000, description="max concurrent invocations; omit to keep"
    )
    clear_reserved_concurrency: bool = False


class Network(BaseModel):
    network: str = Field(description="none | platform (Gureum's APIs) | internet (+ egress)")
    egress_allow: list[str] | None = Field(
        None,
        description="internet: hosts allowed (`host`, `*.suffix`, `host:port`); "
        "empty allows public hosts only; omit to keep",
    )


class InvocationRow(BaseModel):
    seq: int
    request_id: str
    function_name: str
    version: str
    trigger: str
    started_at: float
    ended_at: float
    queue_ms: float
    init_ms: float
    run_ms: float
    billed_ms: int
    memory_mb: int
    max_memory_mb: int
    gb_seconds: float
    cold: bool
    status: str
    error_type: str | None


class LogEntry(BaseModel):
    seq: int
    request_id: str
    log: str


def build_management_api(platform: Platform) -> FastAPI:
    api = FastAPI(
        title="Gureum management API",
        version="1",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )

    async def gureum_error(_request: Request, exc: Exception) -> Response:
        return error_response(exc)

    api.add_exception_handler(GureumError, gureum_error)
    api.include_router(build_routes_router(platform))

    @api.get("/whoami")
    async def whoami(identity: Caller) -> dict[str, str]:
        """The authenticated principal."""
        return {
            "account_id": identity.account_id,
            "principal": identity.principal,
            "access_key_id": identity.access_key_id,
        }

    @api.get("/doctor")
    async def doctor(_identity: Caller) -> dict[str, Any]:
        """Isolation level and each sandbox check on this node."""
        return platform.doctor()

    @api.get("/pool")
    async def pool(_identity: Caller) -> dict[str, dict[str, int]]:
        """Idle, in-flight and waiting counts per function."""
        return platform.pool.stats()

    @api.get("/functions/{name}/invocations", response_model=list[InvocationRow])
    async def invocations(
        name: str,
        identity: Caller,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        """Newest invocation records of a function."""
        await platform.registry.get_latest(identity.account_id, name)
        return await platform.recorder.query(identity.account_id, name, limit=limit)

    @api.get("/functions/{name}/logs", response_model=list[LogEntry])
    async def logs(
        name: str,
        identity: Caller,
        request_id: str | None = None,
        after: Annotated[int, Query(ge=0, description="return entries after this seq")] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    ) -> list[dict[str, Any]]:
        """Logs per invocation: newest `limit` first, or in order after the `after` cursor."""
        await platform.registry.get_latest(identity.account_id, name)
        rows = await platform.recorder.query(
            identity.account_id,
            name,
            request_id=request_id,
            after_seq=after,
            limit=limit,
            newest_first=after == 0,
            with_log=True,
        )
        if after == 0:
            rows.reverse()
        return [{"seq": r["seq"], "request_id": r["request_id"], "log": r["log"]} for r in rows]

    @api.get("/functions/{name}/code")
    async def code(name: str, identity: Caller, version: str = "$LATEST") -> FileResponse:
        """Download the function's code package (the Location GetFunction returns)."""
        config = await platform.registry.get_function(identity.account_id, name, version)
        return FileResponse(
            platform.packages.zip_path(config.code_sha256),
            media_type="application/zip",
            filename=f"{name}-{config.version.strip('$')}.zip",
        )

    @api.put("/functions/{name}/scaling")
    async def scaling(name: str, body: Scaling, identity: Caller) -> dict[str, Any]:
        """Set min_instances (kept warm) and reserved concurrency."""
        account = identity.account_id
        if body.reserved_concurrency is not None and body.clear_reserved_concurrency:
            raise InvalidParameterValue("give reserved_concurrency or clear it, not both")
        if body.min_instances is not None:
            await platform.registry.update_configuration(
                account, name, {"min_instances": body.min_instances}
            )
        if body.reserved_concurrency is not None or body.clear_reserved_concurrency:
            await platform.registry.set_reserved_concurrency(
                account, name, body.reserved_concurrency
            )
        config = await platform.registry.get_latest(account, name)
        return {
            "min_instances": config.min_instances,
            "reserved_concurrency": await platform.registry.reserved_concurrency(account, name),
        }

    @api.put("/functions/{name}/network")
    async def network(name: str, body: Network, identity: Caller) -> dict[str, Any]:
        """What the function's sandbox may reach: nothing, Gureum's own APIs (platform), or
        those plus allow-listed internet hosts through the egress proxy (internet)."""
        changes: dict[str, Any] = {"network": body.network}
        if body.egress_allow is not None:
            changes["egress_allow"] = body.egress_allow
        config = await platform.registry.update_configuration(identity.account_id, name, changes)
        return {"network": config.network, "egress_allow": config.egress_allow}

    @api.get("/events")
    async def events(
        identity: Caller,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        """Async (Event) invocations: pending, running, retrying (pending after a failed
        attempt), succeeded, failed (dead-lettered)."""
        if state not in (None, "pending", "running", "retrying", "succeeded", "failed"):
            raise InvalidParameterValue(f"unknown state {state!r}")
        return await platform.async_invoker.list_events(identity.account_id, state, limit)

    api.include_router(events_router(platform))
    api.include_router(schedules_router(platform))
    return api
