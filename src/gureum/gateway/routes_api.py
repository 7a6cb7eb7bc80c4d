"""/v1 endpoints of the API gateway: HTTP APIs, routes and API keys (mounted by management.py).

POST   /v1/apis                   create an API (name, base_path, host, stage, cors, rate)
GET    /v1/apis                   list; GET/PATCH/DELETE /v1/apis/{name}
POST   /v1/routes                 add a route (route_key, target, api, auth, rate, timeout)
GET    /v1/routes[?api=NAME]      list
DELETE /v1/routes/{ref}[?api=]    remove by route id or route key
POST   /v1/api-keys               create a key (shown once); GET lists; DELETE /{key_id}
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from gureum.iam.sigv4 import Identity
from gureum.platform import Platform


def _caller(request: Request) -> Identity:
    found: Identity = request.scope["gureum.identity"]
    return found


Caller = Annotated[Identity, Depends(_caller)]


# Every body model forbids unknown fields: a misspelt or unchangeable field (PATCH with
# base_path) is an error, not a silent no-op answered 200.
class ApiIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="unique per account")
    base_path: str = Field("", description="path prefix, e.g. /shop; empty for none")
    host: str = Field("", description="serve only requests for this Host; empty for any")
    stage: str = Field("$default", description="a named stage prefixes paths with /STAGE")
    cors: dict[str, Any] | None = Field(
        None,
        description="allow_origins, allow_methods, allow_headers, expose_headers, max_age, "
        "allow_credentials",
    )
    rate_limit: float | None = Field(None, description="steady requests per second")
    burst: int | None = Field(None, description="bucket size")
    stage_variables: dict[str, Any] | None = Field(
        None, description="names to values, passed to integrations as `stageVariables`"
    )


class ApiPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cors: dict[str, Any] | None = None
    rate_limit: float | None = None
    burst: int | None = None
    stage_variables: dict[str, Any] | None = None


class RouteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    route_key: str = Field(description="'METHOD /path/{param}/{proxy+}', 'ANY /path' or $default")
    target: str = Field(description="function, function:version or function:alias")
    api: str | None = Field(None, description="API name; the account's 'default' API if omitted")
    auth: str | dict[str, Any] | None = Field(
        None,
        description="'none', 'api-key', 'iam', 'jwt' or 'lambda:FUNCTION', or an object with "
        "'kind' and its settings (jwt: issuer, audience, jwks_url|jwks, scopes; lambda: "
        "function, identity_source, ttl_s)",
    )
    rate_limit: float | None = None
    burst: int | None = None
    timeout_ms: int | None = Field(None, description="integration timeout, 50-30000 ms")


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    api: str | None = None


def build_routes_router(platform: Platform) -> APIRouter:
    router = APIRouter(tags=["API gateway"])
    store = platform.routes

    @router.post("/apis", status_code=201)
    async def create_api(body: ApiIn, identity: Caller) -> dict[str, Any]:
        """Create an HTTP API."""
        api = await store.create_api(
            identity.account_id,
            body.name,
            base_path=body.base_path,
            host=body.host,
            stage=body.stage,
            cors=body.cors,
            rate_limit=body.rate_limit,
            burst=body.burst,
            stage_variables=body.stage_variables,
        )
        return api.to_dict()

    @router.get("/apis")
    async def list_apis(identity: Caller) -> list[dict[str, Any]]:
        """Every HTTP API of the account."""
        return [api.to_dict() for api in store.list_apis(identity.account_id)]

    @router.get("/apis/{name}")
    async def get_api(name: str, identity: Caller) -> dict[str, Any]:
        return store.get_api(identity.account_id, name).to_dict()

    @router.patch("/apis/{name}")
    async def update_api(name: str, body: ApiPatch, identity: Caller) -> dict[str, Any]:
        """Change CORS, rate limits and stage variables; only the fields sent change
        (`cors: null` removes CORS; `stage_variables` replaces all of them)."""
        changes = body.model_dump(exclude_unset=True)
        api = await store.update_api(identity.account_id, name, changes)
        return api.to_dict()

    @router.delete("/apis/{name}", status_code=204)
    async def delete_api(name: str, identity: Caller) -> Response:
        """Delete an API with its routes and API keys."""
        await store.delete_api(identity.account_id, name)
        return Response(status_code=204)

    @router.post("/routes", status_code=201)
    async def add_route(body: RouteIn, identity: Caller) -> dict[str, Any]:
        """Add a route to a function, version or alias."""
        api, route = await store.add_route(
            identity.account_id,
            body.route_key,
            body.target,
            api_name=body.api,
            auth=body.auth,
            rate_limit=body.rate_limit,
            burst=body.burst,
            timeout_ms=body.timeout_ms,
        )
        return route.to_dict(api.name)

    @router.get("/routes")
    async def list_routes(
        identity: Caller, api: Annotated[str | None, Query()] = None
    ) -> list[dict[str, Any]]:
        """Routes of every API, or of one."""
        return [route.to_dict(a.name) for a, route in store.list_routes(identity.account_id, api)]

    @router.delete("/routes/{ref:path}", status_code=204)
    async def remove_route(
        ref: str, identity: Caller, api: Annotated[str | None, Query()] = None
    ) -> Response:
        """Remove a route by its id or its route key."""
        await store.remove_route(identity.account_id, ref, api)
        return Response(status_code=204)

    @router.post("/api-keys", status_code=201)
    async def create_api_key(body: ApiKeyIn, identity: Caller) -> dict[str, Any]:
        """Create an API key; the `key` in the answer is shown this once and never again."""
        key, value = await store.create_api_key(identity.account_id, body.name, body.api)
        api = store.api_by_id(key.api_id)
        return {**key.to_dict(api.name if api else "?"), "key": value}

    @router.get("/api-keys")
    async def list_api_keys(identity: Caller) -> list[dict[str, Any]]:
        out = []
        for key in store.list_api_keys(identity.account_id):
            api = store.api_by_id(key.api_id)
            out.append(key.to_dict(api.name if api else "?"))
        return out

    @router.delete("/api-keys/{key_id}", status_code=204)
    async def delete_api_key(key_id: str, identity: Caller) -> Response:
        await store.delete_api_key(identity.account_id, key_id)
        return Response(status_code=204)

    return router
