"""`RouteStore`: HTTP APIs, routes and API keys of every account, kept in memory.

The whole gateway configuration is small, so it is loaded once at start and every write through
this store updates the metadata store and then the in-memory copy; `generation` goes up with
each change, which is how the gateway knows to rebuild its compiled route table. The request
path reads only memory.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from dataclasses import replace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from gureum.control.models import parse_function_ref
from gureum.control.registry import Registry
from gureum.control.routes import (
    DEFAULT_API,
    Api,
    ApiKey,
    Authorization,
    Cors,
    Route,
    RouteKey,
    check_not_reserved,
    hash_api_key,
    new_id,
)
from gureum.errors import InvalidParameterValue, ResourceConflict, ResourceNotFound
from gureum.store import Database
from gureum.store.schema import gateway_api_keys, gateway_apis, gateway_routes

API_KEY_PREFIX = "gk_"


class RouteStore:
    """APIs, routes and API keys, backed by the metadata store. Writes are serialised."""

    def __init__(self, db: Database, registry: Registry) -> None:
        self.db = db
        self.registry = registry
        self.generation = 0
        self._apis: dict[str, Api] = {}
        self._routes: dict[str, dict[str, Route]] = {}  # api id -> route key -> route
        self._keys: dict[str, ApiKey] = {}  # key hash -> key
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, db: Database, registry: Registry) -> RouteStore:
        """Load everything from the metadata store."""
        store = cls(db, registry)
        async with db.engine.connect() as conn:
            for row in (await conn.execute(sa.select(gateway_apis))).all():
                store._apis[row.api_id] = Api(
                    api_id=row.api_id,
                    account_id=row.account_id,
                    name=row.name,
                    base_path=row.base_path,
                    host=row.host,
                    stage=row.stage,
                    cors=Cors.from_dict(json.loads(row.cors)) if row.cors else None,
                    rate_limit=row.rate_limit,
                    burst=row.burst,
                    created_at=row.created_at,
                    stage_variables=json.loads(row.stage_variables) if row.stage_variables else {},
                )
                store._routes[row.api_id] = {}
            for row in (await conn.execute(sa.select(gateway_routes))).all():
                store._routes.setdefault(row.api_id, {})[row.route_key] = Route(
                    api_id=row.api_id,
                    route_id=row.route_id,
                    route_key=row.route_key,
                    function_name=row.function_name,
                    qualifier=row.qualifier,
                    auth=_stored_authorization(json.loads(row.auth)),
                    rate_limit=row.rate_limit,
                    burst=row.burst,
                    timeout_ms=row.timeout_ms,
                    created_at=row.created_at,
                )
            for row in (await conn.execute(sa.select(gateway_api_keys))).all():
                store._keys[row.key_hash] = ApiKey(
                    key_id=row.key_id,
                    account_id=row.account_id,
                    api_id=row.api_id,
                    name=row.name,
                    key_hash=row.key_hash,
                    hint=row.hint,
                    created_at=row.created_at,
                )
        return store

    def _changed(self) -> None:
        self.generation += 1

    # ---- reads (memory only) ---------------------------------------------------------------

    def snapshot(self) -> list[tuple[Api, list[Route]]]:
        """Every API with its routes, for building a route table."""
        return [
            (api, list(self._routes.get(api.api_id, {}).values())) for api in self._apis.values()
        ]

    def api_key(self, key_hash: str) -> ApiKey | None:
        return self._keys.get(key_hash)

    def api_by_id(self, api_id: str) -> Api | None:
        return self._apis.get(api_id)

    def get_api(self, account: str, name: str) -> Api:
        for api in self._apis.values():
            if api.account_id == account and api.name == name:
                return api
        raise ResourceNotFound(f"API not found: {name}")

    def list_apis(self, account: str) -> list[Api]:
        return sorted(
            (a for a in self._apis.values() if a.account_id == account), key=lambda a: a.name
        )

    def list_routes(self, account: str, api_name: str | None = None) -> list[tuple[Api, Route]]:
        apis = [self.get_api(account, api_name)] if api_name else self.list_apis(account)
        return [
            (api, route)
            for api in apis
            for route in sorted(
                self._routes.get(api.api_id, {}).values(), key=lambda r: r.route_key
            )
        ]

    def list_api_keys(self, account: str) -> list[ApiKey]:
        return sorted(
            (k for k in self._keys.values() if k.account_id == account), key=lambda k: k.created_at
        )

    # ---- APIs ------------------------------------------------------------------------------

    async def create_api(
        self,
        account: str,
        name: str,
        *,
        base_path: str = "",
        host: str = "",
        stage: str = "$default",
        cors: dict[str, Any] | None = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        stage_variables: dict[str, str] | None = None,
    ) -> Api:
        """Create an API; ResourceConflict if the name is taken or another API already serves
        the same host and path prefix."""
        api = Api(
            api_id=new_id(10),
            account_id=account,
            name=name,
            base_path=base_path.rstrip("/"),
            host=host.lower(),
            stage=stage,
            cors=Cors.from_dict(cors) if cors is not None else None,
            rate_limit=rate_limit,
            burst=burst,
            stage_variables=stage_variables or {},
        ).validated()
        async with self._lock:
            return await self._insert_api(api)

    async def _insert_api(self, api: Api) -> Api:
        for other in self._apis.values():
            if other.account_id == api.account_id and other.name == api.name:
                raise ResourceConflict(f"API already exists: {api.name}")
            if (other.host, other.prefix) == (api.host, api.prefix):
                where = f"host {api.host or '(any)'}, path prefix {api.prefix or '/'}"
                raise ResourceConflict(f"API {other.name} already serves {where}")
        try:
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_apis.insert().values(
                        api_id=api.api_id,
                        account_id=api.account_id,
                        name=api.name,
                        base_path=api.base_path,
                        host=api.host,
                        stage=api.stage,
                        cors=json.dumps(api.cors.to_dict()) if api.cors else None,
                        rate_limit=api.rate_limit,
                        burst=api.burst,
                        created_at=api.created_at,
                        stage_variables=_stage_variables_json(api),
                    )
                )
        except IntegrityError:
            raise ResourceConflict(f"API already exists: {api.name}") from None
        self._apis[api.api_id] = api
        self._routes[api.api_id] = {}
        self._changed()
        return api

    async def update_api(self, account: str, name: str, changes: dict[str, Any]) -> Api:
        """Change an API's CORS, rate limit and stage variables (`cors: None` removes CORS;
        `stage_variables` replaces them all)."""
        allowed = {"cors", "rate_limit", "burst", "stage_variables"}
        if set(changes) - allowed:
            raise InvalidParameterValue(f"only {', '.join(sorted(allowed))} can be changed")
        async with self._lock:
            current = self.get_api(account, name)
            cors = current.cors
            if "cors" in changes:
                cors = None if changes["cors"] is None else Cors.from_dict(changes["cors"])
            api = replace(
                current,
                cors=cors,
                rate_limit=changes.get("rate_limit", current.rate_limit),
                burst=changes.get("burst", current.burst),
                stage_variables=changes.get("stage_variables") or {}
                if "stage_variables" in changes
                else current.stage_variables,
            ).validated()
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_apis.update()
                    .where(gateway_apis.c.api_id == api.api_id)
                    .values(
                        cors=json.dumps(api.cors.to_dict()) if api.cors else None,
                        rate_limit=api.rate_limit,
                        burst=api.burst,
                        stage_variables=_stage_variables_json(api),
                    )
                )
            self._apis[api.api_id] = api
            self._changed()
            return api

    async def delete_api(self, account: str, name: str) -> None:
        """Delete an API with its routes and keys."""
        async with self._lock:
            api = self.get_api(account, name)
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_api_keys.delete().where(gateway_api_keys.c.api_id == api.api_id)
                )
                await conn.execute(
                    gateway_routes.delete().where(gateway_routes.c.api_id == api.api_id)
                )
                await conn.execute(gateway_apis.delete().where(gateway_apis.c.api_id == api.api_id))
            del self._apis[api.api_id]
            self._routes.pop(api.api_id, None)
            self._keys = {h: k for h, k in self._keys.items() if k.api_id != api.api_id}
            self._changed()

    async def _api_or_default(self, account: str, name: str | None) -> Api:
        """The named API; without a name the account's `default` API, created on first use."""
        if name is not None and name != DEFAULT_API:
            return self.get_api(account, name)
        try:
            return self.get_api(account, DEFAULT_API)
        except ResourceNotFound:
            return await self._insert_api(
                Api(api_id=new_id(10), account_id=account, name=DEFAULT_API).validated()
            )

    # ---- routes ----------------------------------------------------------------------------

    async def add_route(
        self,
        account: str,
        route_key: str,
        target: str,
        *,
        api_name: str | None = None,
        auth: object = None,
        rate_limit: float | None = None,
        burst: int | None = None,
        timeout_ms: int | None = None,
    ) -> tuple[Api, Route]:
        """Add a route to `target` ('function[:version|alias]'); the function (and qualifier)
        must exist. ResourceConflict if the API already has this route key."""
        key = RouteKey.parse(route_key)
        name, qualifier, other_account = parse_function_ref(target)
        if other_account is not None and other_account != account:
            raise ResourceNotFound(f"Function not found: {target}")
        await self.registry.get_function(account, name, qualifier)
        authorization = Authorization.from_dict(auth)
        if authorization.kind == "lambda" and authorization.function:
            fn, fn_qualifier, _ = parse_function_ref(authorization.function)
            await self.registry.get_function(account, fn, fn_qualifier)
        async with self._lock:
            api = await self._api_or_default(account, api_name)
            check_not_reserved(api, key)
            if key.text in self._routes.get(api.api_id, {}):
                raise ResourceConflict(f"API {api.name} already has the route {key.text}")
            route = Route(
                api_id=api.api_id,
                route_id=new_id(7),
                route_key=key.text,
                function_name=name,
                qualifier=qualifier,
                auth=authorization,
                rate_limit=rate_limit,
                burst=burst,
                **({} if timeout_ms is None else {"timeout_ms": timeout_ms}),
            ).validated()
            try:
                async with self.db.engine.begin() as conn:
                    await conn.execute(
                        gateway_routes.insert().values(
                            api_id=route.api_id,
                            route_key=route.route_key,
                            route_id=route.route_id,
                            function_name=route.function_name,
                            qualifier=route.qualifier,
                            auth=json.dumps(route.auth.to_dict()),
                            rate_limit=route.rate_limit,
                            burst=route.burst,
                            timeout_ms=route.timeout_ms,
                            created_at=route.created_at,
                        )
                    )
            except IntegrityError:
                raise ResourceConflict(f"API {api.name} already has the route {key.text}") from None
            self._routes.setdefault(api.api_id, {})[route.route_key] = route
            self._changed()
            return api, route

    def find_route(self, account: str, ref: str, api_name: str | None = None) -> tuple[Api, Route]:
        """A route by id, or by route key (in `api_name`, else the default API)."""
        for api, route in self.list_routes(account):
            if route.route_id == ref:
                return api, route
        api = self.get_api(account, api_name or DEFAULT_API)
        try:
            text = RouteKey.parse(ref).text
        except InvalidParameterValue:
            text = ref
        found = self._routes.get(api.api_id, {}).get(text)
        if found is None:
            raise ResourceNotFound(f"No route {ref!r} in API {api.name}")
        return api, found

    async def remove_route(self, account: str, ref: str, api_name: str | None = None) -> Route:
        async with self._lock:
            api, route = self.find_route(account, ref, api_name)
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_routes.delete().where(
                        gateway_routes.c.api_id == api.api_id,
                        gateway_routes.c.route_key == route.route_key,
                    )
                )
            self._routes[api.api_id].pop(route.route_key, None)
            self._changed()
            return route

    # ---- API keys --------------------------------------------------------------------------

    async def create_api_key(
        self, account: str, name: str, api_name: str | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key for an API; returns the record and the key itself (shown only now)."""
        if not name or len(name) > 128:
            raise InvalidParameterValue("an API key needs a name of 1 to 128 characters")
        value = API_KEY_PREFIX + secrets.token_urlsafe(30)
        async with self._lock:
            api = await self._api_or_default(account, api_name)
            key = ApiKey(
                key_id="k" + new_id(11),
                account_id=account,
                api_id=api.api_id,
                name=name,
                key_hash=hash_api_key(value),
                hint=value[-4:],
                created_at=time.time(),
            )
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_api_keys.insert().values(
                        key_id=key.key_id,
                        account_id=key.account_id,
                        api_id=key.api_id,
                        name=key.name,
                        key_hash=key.key_hash,
                        hint=key.hint,
                        created_at=key.created_at,
                    )
                )
            self._keys[key.key_hash] = key
            self._changed()
            return key, value

    async def delete_api_key(self, account: str, key_id: str) -> None:
        async with self._lock:
            found = [
                k for k in self._keys.values() if k.account_id == account and k.key_id == key_id
            ]
            if not found:
                raise ResourceNotFound(f"API key not found: {key_id}")
            async with self.db.engine.begin() as conn:
                await conn.execute(
                    gateway_api_keys.delete().where(gateway_api_keys.c.key_id == key_id)
                )
            del self._keys[found[0].key_hash]
            self._changed()


def _stage_variables_json(api: Api) -> str | None:
    return json.dumps(api.stage_variables) if api.stage_variables else None


def _stored_authorization(stored: dict[str, Any]) -> Authorization:
    """An `Authorization` as saved. Earlier versions left a Lambda authorizer's ttl_s out when
    it was 0 (a cached one always has an identity source, so it was saved with its ttl)."""
    if stored.get("kind") == "lambda" and "ttl_s" not in stored:
        stored = {**stored, "ttl_s": 0}
    return Authorization.from_dict(stored)
