"""Per-route authorization for user routes: none, API key, IAM (SigV4), JWT, Lambda authorizer.

`RouteAuthorizer.authorize()` returns what goes into the event's `requestContext.authorizer`
(None for `none`), or raises `HttpApiError` with the status AWS's HTTP APIs use: 401
Unauthorized when the identity is missing or the token is invalid, 403 Forbidden when it is
valid but not allowed, 500 when a Lambda authorizer fails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import msgspec
from starlette.types import Scope

from gureum.control.models import parse_function_ref
from gureum.control.route_store import RouteStore
from gureum.control.routes import (
    CONTEXT_SOURCE,
    STAGE_VARIABLE_SOURCE,
    Api,
    Authorization,
    Route,
    hash_api_key,
)
from gureum.errors import AuthError, GureumError, HttpApiError
from gureum.gateway.auth import signed_request
from gureum.gateway.http_event import CONTEXT_VARIABLES, RequestFacts, common_fields, query_map
from gureum.iam.sigv4 import SecretLookup, verify
from gureum.node.dispatcher import InvocationResult

log = logging.getLogger(__name__)
AUTHORIZER_TIMEOUT_S = 10.0
JWKS_TTL_S = 300.0
JWKS_REFRESH_MIN_S = 30.0  # an unknown `kid` refetches the JWKS at most this often
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
AUTHORIZER_CACHE_MAX = 10_000
# identity sources the route store accepts, read as prefixes: a name may hold '.' (X-Amz.Token)
HEADER_SOURCE = "$request.header."
QUERY_SOURCE = "$request.querystring."

# (API id, the authorizer: function, identity sources and TTL; the sources' values)
CacheKey = tuple[str, str, tuple[str, ...], int, tuple[str, ...]]
Invoke = Callable[[str, str, str | None, bytes], Awaitable[InvocationResult]]


def unauthorized() -> HttpApiError:
    return HttpApiError(401, "Unauthorized")


def forbidden() -> HttpApiError:
    return HttpApiError(403, "Forbidden")


def _claim_text(value: object) -> str:
    """Claims as AWS passes them to functions: strings; arrays as '[a b]'."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_claim_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class RouteAuthorizer:
    """Checks a request against its route's `Authorization`. One per gateway."""

    def __init__(
        self,
        store: RouteStore,
        keyring: SecretLookup,
        invoke: Invoke,
        region: str,
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.invoke = invoke
        self.region = region
        self._jwks: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._jwks_lock = asyncio.Lock()
        self._cache: dict[CacheKey, tuple[float, AuthorizerAnswer]] = {}

    async def authorize(
        self, api: Api, route: Route, facts: RequestFacts, scope: Scope, body: bytes
    ) -> dict[str, Any] | None:
        auth = route.auth
        if auth.kind == "none":
            return None
        if auth.kind == "api-key":
            return self._api_key(api, facts)
        if auth.kind == "iam":
            return self._iam(api, scope, body)
        if auth.kind == "jwt":
            return await self._jwt(auth, facts)
        return await self._lambda(api, route, facts)

    # ---- API key ---------------------------------------------------------------------------

    def _api_key(self, api: Api, facts: RequestFacts) -> dict[str, Any]:
        value = facts.headers.get("x-api-key")
        if not value:
            raise forbidden()
        key = self.store.api_key(hash_api_key(value))
        if key is None or key.api_id != api.api_id:
            raise forbidden()
        return {"apiKey": {"keyId": key.key_id, "name": key.name}}

    # ---- IAM -------------------------------------------------------------------------------

    def _iam(self, api: Api, scope: Scope, body: bytes) -> dict[str, Any]:
        headers = facts_headers(scope)
        if "authorization" not in headers and "X-Amz-Credential" not in scope.get(
            "query_string", b""
        ).decode("latin-1"):
            raise HttpApiError(403, "Missing Authentication Token")
        try:
            identity = verify(signed_request(scope, body), self.keyring)
        except AuthError as exc:
            raise HttpApiError(403, exc.message) from None
        if identity.service != "execute-api":
            raise HttpApiError(
                403,
                f"Credential should be scoped to correct service: 'execute-api', not "
                f"'{identity.service}'",
            )
        if identity.region != self.region:
            raise HttpApiError(403, f"Credential should be scoped to a valid region: {self.region}")
        if identity.account_id != api.account_id:
            raise forbidden()
        arn = f"arn:aws:iam::{identity.account_id}:{identity.principal}"
        return {
            "iam": {
                "accessKey": identity.access_key_id,
                "accountId": identity.account_id,
                "callerId": identity.principal,
                "cognitoIdentity": None,
                "principalOrgId": None,
                "userArn": arn,
                "userId": identity.principal,
            }
        }

    # ---- JWT -------------------------------------------------------------------------------

    async def _jwt(self, auth: Authorization, facts: RequestFacts) -> dict[str, Any]:
        header = auth.identity_source[0].removeprefix(HEADER_SOURCE).lower()
        token = facts.headers.get(header, "")
        if token[:7].lower() == "bearer ":
            token = token[7:].strip()
        if not token:
            raise unauthorized()
        try:
            unverified = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise unauthorized() from None
        algorithm = unverified.get("alg")
        if algorithm not in JWT_ALGORITHMS:
            raise unauthorized()
        key = await self._signing_key(auth, unverified.get("kid"))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                issuer=auth.issuer,
                options={"verify_aud": False, "require": ["exp", "iss"]},
                leeway=0,
            )
        except jwt.PyJWTError:
            raise unauthorized() from None
        audiences = claims.get("aud", claims.get("client_id"))
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or not set(audiences) & set(auth.audience):
            raise unauthorized()
        granted: list[str] | None = None
        for claim in ("scope", "scp"):  # Okta's scp is a list, Entra ID's a string like scope
            value = claims.get(claim)
            if isinstance(value, str):
                granted = value.split()
            elif isinstance(value, list):
                granted = [str(s) for s in value]
            if granted is not None:
                break
        # AWS: the token must carry at least one of the route's scopes
        if auth.scopes and not set(auth.scopes) & set(granted or []):
            raise forbidden()
        return {
            "jwt": {
                "claims": {name: _claim_text(value) for name, value in claims.items()},
                "scopes": granted,
            }
        }

    async def _signing_key(self, auth: Authorization, kid: object) -> jwt.PyJWK:
        if auth.jwks is not None:
            keys = _jwk_set(auth.jwks)
            found = _find_key(keys, kid)
        else:
            assert auth.jwks_url is not None
            found = None
            cached = self._jwks.get(auth.jwks_url)
            now = time.monotonic()
            if cached is not None and now - cached[0] < JWKS_TTL_S:
                found = _find_key(cached[1], kid)
            if found is None and (cached is None or now - cached[0] > JWKS_REFRESH_MIN_S):
                keys = await self._fetch_jwks(auth.jwks_url)
                found = _find_key(keys, kid)
        if found is None:
            raise unauthorized()
        return found

    async def _fetch_jwks(self, url: str) -> jwt.PyJWKSet:
        async with self._jwks_lock:
            try:
                # fetched rarely (cached for JWKS_TTL_S), so no long-lived client to close
                async with httpx.AsyncClient(timeout=5.0) as http:
                    response = await http.get(url)
                response.raise_for_status()
                keys = _jwk_set(response.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("cannot fetch the JWKS at %s: %s", url, exc)
                raise unauthorized() from None
            self._jwks[url] = (time.monotonic(), keys)
            return keys

    # ---- Lambda authorizer -----------------------------------------------------------------

    async def _lambda(self, api: Api, route: Route, facts: RequestFacts) -> dict[str, Any]:
        auth = route.auth
        assert auth.function is not None
        values: list[str] = []
        query: dict[str, str] | None = None
        for source in auth.identity_source:
            if source.startswith(HEADER_SOURCE):
                value = facts.headers.get(source[len(HEADER_SOURCE) :].lower())
            elif source.startswith(QUERY_SOURCE):
                query = query_map(facts.raw_query) if query is None else query
                value = query.get(source[len(QUERY_SOURCE) :])
            elif source.startswith(STAGE_VARIABLE_SOURCE):
                value = api.stage_variables.get(source[len(STAGE_VARIABLE_SOURCE) :])
            elif source.startswith(CONTEXT_SOURCE) and (
                read := CONTEXT_VARIABLES.get(source[len(CONTEXT_SOURCE) :])
            ):
                value = read(api, facts)
            else:  # not one the route store accepts: a broken route, not a caller's fault
                log.warning("route %s: unknown identity source %s", route.route_key, source)
                raise HttpApiError(500, "Internal Server Error")
            if not value:
                raise unauthorized()
            values.append(value)
        route_arn = self._route_arn(api, facts)
        if not auth.ttl_s:
            answer, allowed = await self._call_authorizer(api, route, facts, values, route_arn)
        else:
            # Routes share answers only when they name the same authorizer: the same function
            # reading the same sources (one identity's token is not another's query string)
            # and keeping answers as long.
            key = (api.api_id, auth.function, auth.identity_source, auth.ttl_s, tuple(values))
            now = time.monotonic()
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                answer = hit[1]
                # A cached policy is evaluated again for each request, as AWS does: a policy
                # that allows only the route it was first asked about does not open the others.
                allowed = answer.allows(route_arn)
            else:
                answer, allowed = await self._call_authorizer(api, route, facts, values, route_arn)
                if len(self._cache) >= AUTHORIZER_CACHE_MAX:
                    self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
                    if len(self._cache) >= AUTHORIZER_CACHE_MAX:
                        self._cache.clear()
                self._cache[key] = (now + auth.ttl_s, answer)
        if not allowed:
            raise forbidden()
        return {"lambda": answer.context}

    def _route_arn(self, api: Api, facts: RequestFacts) -> str:
        """AWS's routeArn: the request's own method and path (below the stage, here below the
        API's base path and stage), not the route key — 'ANY /{proxy+}' is asked about, and
        policies name, 'GET /users/7'."""
        path = facts.raw_path[len(api.prefix) :] or "/"
        return (
            f"arn:aws:execute-api:{self.region}:{api.account_id}:{api.api_id}/{api.stage}/"
            f"{facts.method}{path}"
        )

    async def _call_authorizer(
        self, api: Api, route: Route, facts: RequestFacts, values: list[str], route_arn: str
    ) -> tuple[AuthorizerAnswer, bool]:
        """Invoke the authorizer and check the shape of its answer; return it and whether it
        allows `route_arn` (a policy is evaluated once, which also checks that it is one)."""
        assert route.auth.function is not None
        event = common_fields(api, facts, api.account_id)
        event["type"] = "REQUEST"
        event["routeArn"] = route_arn
        event["identitySource"] = values
        name, qualifier, _ = parse_function_ref(route.auth.function)
        call = asyncio.ensure_future(
            self.invoke(api.account_id, name, qualifier, json.dumps(event).encode())
        )
        try:
            result = await asyncio.wait_for(asyncio.shield(call), AUTHORIZER_TIMEOUT_S)
        except TimeoutError:
            log.warning("authorizer %s timed out", route.auth.function)
            raise HttpApiError(500, "Internal Server Error") from None
        except GureumError as exc:
            log.warning("authorizer %s failed: %s", route.auth.function, exc.message)
            raise HttpApiError(500, "Internal Server Error") from None
        if result.function_error:
            raise HttpApiError(500, "Internal Server Error")
        try:  # strict JSON (no NaN): its context goes into the event as it is
            answer = msgspec.json.decode(result.payload)
        except msgspec.DecodeError:
            answer = None
        if not isinstance(answer, dict):
            answer = {}
        context = answer.get("context") or {}
        context = context if isinstance(context, dict) else {}
        verdict = answer.get("isAuthorized")
        if isinstance(verdict, bool):  # a simple response
            return AuthorizerAnswer(verdict, None, context), verdict
        if "policyDocument" in answer:  # an IAM policy response
            document = answer["policyDocument"]
            try:
                allowed = policy_allows(document, "execute-api:Invoke", route_arn)
            except ValueError as exc:
                log.warning("authorizer %s returned a bad policy: %s", route.auth.function, exc)
                raise HttpApiError(500, "Internal Server Error") from None
            return AuthorizerAnswer(False, document, context), allowed
        log.warning(
            "authorizer %s returned neither isAuthorized nor a policyDocument",
            route.auth.function,
        )
        raise HttpApiError(500, "Internal Server Error")


@dataclass(frozen=True)
class AuthorizerAnswer:
    """What a Lambda authorizer said, as cached: a simple verdict, or a policy document
    (already checked to be one) that is evaluated against each request's route ARN."""

    authorized: bool
    policy: object
    context: dict[str, Any]

    def allows(self, route_arn: str) -> bool:
        if self.policy is None:
            return self.authorized
        return policy_allows(self.policy, "execute-api:Invoke", route_arn)


def policy_allows(document: object, action: str, resource: str) -> bool:
    """IAM's evaluation of one identity policy for one action on one resource: allowed when a
    statement allows it and none denies it. `*` and `?` are wildcards (in actions, matched
    case-insensitively, as IAM does); ValueError for a document that is not a policy."""
    if not isinstance(document, dict):
        raise ValueError("policyDocument must be an object")
    statements = document.get("Statement")
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list):
        raise ValueError("policyDocument.Statement must be a statement or a list of them")
    allowed = False
    for statement in statements:
        if not isinstance(statement, dict) or statement.get("Effect") not in ("Allow", "Deny"):
            raise ValueError("every statement needs Effect Allow or Deny")
        actions = _strings(statement.get("Action"), "Action")
        resources = _strings(statement.get("Resource"), "Resource")
        if any(_glob(a.lower(), action.lower()) for a in actions) and any(
            _glob(r, resource) for r in resources
        ):
            if statement["Effect"] == "Deny":
                return False
            allowed = True
    return allowed


def _strings(value: object, member: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ValueError(f"statement {member} must be a string or a list of strings")


def _glob(pattern: str, text: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None


def facts_headers(scope: Scope) -> set[str]:
    return {name.decode("latin-1").lower() for name, _ in scope["headers"]}


def _jwk_set(document: object) -> jwt.PyJWKSet:
    try:
        return jwt.PyJWKSet.from_dict(document)  # type: ignore[arg-type]
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a usable JWKS: {exc}") from None


def _find_key(keys: jwt.PyJWKSet, kid: object) -> jwt.PyJWK | None:
    if kid is None:
        return keys.keys[0] if len(keys.keys) == 1 else None
    for key in keys.keys:
        if key.key_id == kid:
            return key
    return None
