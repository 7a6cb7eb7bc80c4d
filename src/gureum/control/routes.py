"""HTTP APIs, their routes and API keys: the records, their validation and their JSON shapes.

An `Api` is a set of routes served under an optional `Host` and/or base path (and a named
stage, which prefixes the path as on AWS's execute-api domain). A `Route` maps a route key —
`METHOD /path/{param}/{proxy+}`, `ANY /path` or `$default` — to a function, version or alias,
and says how callers authenticate (`Authorization`). Stored by `gureum.control.route_store`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from gureum.control.models import parse_function_ref
from gureum.errors import InvalidParameterValue

DEFAULT_API = "default"
DEFAULT_STAGE = "$default"
DEFAULT_ROUTE = "$default"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "ANY")
AUTH_KINDS = ("none", "api-key", "iam", "jwt", "lambda")
MAX_INTEGRATION_TIMEOUT_MS = 30_000
DEFAULT_AUTHORIZER_TTL_S = 300
DEFAULT_IDENTITY_SOURCE = ("$request.header.Authorization",)

API_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
STAGE_RE = re.compile(r"^(\$default|[A-Za-z0-9_-]{1,128})$")
# AWS's rules for stage variables: names [A-Za-z0-9_]{1,64}, values of these characters up to 512
STAGE_VARIABLE_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
STAGE_VARIABLE_VALUE_RE = re.compile(r"^[A-Za-z0-9\-._~:/?#&=,]{1,512}$")
MAX_STAGE_VARIABLES = 100
HOST_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$"
)
BASE_PATH_RE = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
SEGMENT_RE = re.compile(r"^[A-Za-z0-9._~!$&'()*,;=:@-]+$")
PARAM_RE = re.compile(r"^\{([A-Za-z0-9_.-]{1,128})(\+?)\}$")
IDENTITY_SOURCE_RE = re.compile(r"^\$request\.(header|querystring)\.([A-Za-z0-9_.-]{1,128})$")
# A Lambda authorizer (not a JWT one) may also read a stage variable or a `$context` variable
STAGE_VARIABLE_SOURCE = "$stageVariables."
CONTEXT_SOURCE = "$context."
# The HTTP API `$context` variables a Lambda authorizer's identity may come from: those of
# AWS's list that the gateway knows before the authorizer runs and that repeat from one request
# to the next (requestId or requestTime would give every request a cache entry of its own)
CONTEXT_IDENTITY_VARIABLES = (
    "accountId",
    "apiId",
    "domainName",
    "domainPrefix",
    "httpMethod",
    "identity.sourceIp",
    "identity.userAgent",
    "path",
    "protocol",
    "routeKey",
    "stage",
)
_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_id(length: int) -> str:
    """A random lower-case id, the shape of AWS's API and route ids."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def hash_api_key(value: str) -> str:
    """API keys are random 240-bit tokens, so one SHA-256 is a safe way to store them."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Cors:
    """An API's CORS configuration; the gateway answers preflights from it."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    @classmethod
    def from_dict(cls, data: object) -> Cors:
        if not isinstance(data, dict):
            raise InvalidParameterValue("cors must be an object")
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InvalidParameterValue(f"unknown cors fields: {', '.join(sorted(unknown))}")

        def names(key: str) -> tuple[str, ...]:
            value = data.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise InvalidParameterValue(f"cors.{key} must be a list of strings")
            return tuple(value)

        max_age = data.get("max_age")
        if max_age is not None and (
            isinstance(max_age, bool) or not isinstance(max_age, int) or not 0 <= max_age <= 86400
        ):
            raise InvalidParameterValue("cors.max_age must be between 0 and 86400 seconds")
        methods = tuple(m.upper() for m in names("allow_methods"))
        bad = [m for m in methods if m not in (*METHODS, "*")]
        if bad:
            raise InvalidParameterValue(f"cors.allow_methods has unknown methods: {bad}")
        credentials = data.get("allow_credentials", False)
        if not isinstance(credentials, bool):
            raise InvalidParameterValue("cors.allow_credentials must be a boolean")
        origins = names("allow_origins")
        if credentials and "*" in origins:
            raise InvalidParameterValue("cors: allow_credentials cannot be used with origin '*'")
        return cls(
            allow_origins=origins,
            allow_methods=methods,
            allow_headers=tuple(h.lower() for h in names("allow_headers")),
            expose_headers=tuple(h.lower() for h in names("expose_headers")),
            max_age=max_age,
            allow_credentials=credentials,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _rate(rate_limit: object, burst: object) -> tuple[float | None, int | None]:
    if rate_limit is None and burst is None:
        return None, None
    if rate_limit is None or burst is None:
        raise InvalidParameterValue("rate_limit and burst go together: give both or neither")
    if isinstance(rate_limit, bool) or not isinstance(rate_limit, int | float):
        raise InvalidParameterValue("rate_limit must be a number of requests per second")
    if not 0 < rate_limit <= 1_000_000:
        raise InvalidParameterValue("rate_limit must be above 0 and at most 1000000 per second")
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 1_000_000:
        raise InvalidParameterValue("burst must be an integer between 1 and 1000000")
    return float(rate_limit), burst


@dataclass(frozen=True)
class Api:
    api_id: str
    account_id: str
    name: str
    base_path: str = ""  # '' or '/a/b'
    host: str = ""  # '' or a lower-case host name
    stage: str = DEFAULT_STAGE
    cors: Cors | None = None
    rate_limit: float | None = None
    burst: int | None = None
    created_at: float = field(default_factory=time.time)
    # passed to integrations as `stageVariables`, as AWS does for a stage's variables
    stage_variables: dict[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """The path every request to this API starts with: base path, then a named stage."""
        stage = "" if self.stage == DEFAULT_STAGE else "/" + self.stage
        return self.base_path + stage

    def validated(self) -> Api:
        if not API_NAME_RE.match(self.name):
            raise InvalidParameterValue("API name must match [A-Za-z0-9_-]{1,128}")
        if self.base_path and not BASE_PATH_RE.match(self.base_path):
            raise InvalidParameterValue(
                f"base path {self.base_path!r} must look like /segment[/segment…] "
                "(letters, digits, '.', '_', '~', '-')"
            )
        if self.host and not HOST_RE.match(self.host):
            raise InvalidParameterValue(f"host {self.host!r} is not a valid lower-case host name")
        if _reserved(self.prefix):
            raise InvalidParameterValue(f"paths under {self.prefix} are Gureum's own")
        if not STAGE_RE.match(self.stage):
            raise InvalidParameterValue("stage must be $default or match [A-Za-z0-9_-]{1,128}")
        _rate(self.rate_limit, self.burst)
        check_stage_variables(self.stage_variables)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "api_id": self.api_id,
            "name": self.name,
            "base_path": self.base_path,
            "host": self.host,
            "stage": self.stage,
            "cors": self.cors.to_dict() if self.cors else None,
            "rate_limit": self.rate_limit,
            "burst": self.burst,
            "stage_variables": dict(self.stage_variables),
            "created_at": self.created_at,
        }


def check_stage_variables(variables: object) -> dict[str, str]:
    """`variables` if it is a valid set of stage variables; InvalidParameterValue if not."""
    if not isinstance(variables, dict):
        raise InvalidParameterValue("stage_variables must be an object of names to values")
    if len(variables) > MAX_STAGE_VARIABLES:
        raise InvalidParameterValue(f"at most {MAX_STAGE_VARIABLES} stage variables")
    for name, value in variables.items():
        if not isinstance(name, str) or not STAGE_VARIABLE_NAME_RE.match(name):
            raise InvalidParameterValue(
                f"stage variable name {name!r} must match [A-Za-z0-9_]{{1,64}}"
            )
        if not isinstance(value, str) or not STAGE_VARIABLE_VALUE_RE.match(value):
            raise InvalidParameterValue(
                f"stage variable {name} must be 1-512 characters of "
                "A-Z a-z 0-9 - . _ ~ : / ? # & = ,"
            )
    return variables


@dataclass(frozen=True)
class Authorization:
    """How a route's callers authenticate. Only the fields of `kind` are set."""

    kind: str = "none"
    function: str | None = None  # lambda: 'name[:qualifier]'
    # lambda: headers, query strings, stage variables, context variables (jwt: the token's header)
    identity_source: tuple[str, ...] = ()
    ttl_s: int = 0  # lambda: result cache lifetime; 0 disables caching
    issuer: str | None = None  # jwt
    audience: tuple[str, ...] = ()  # jwt
    jwks_url: str | None = None  # jwt
    jwks: dict[str, Any] | None = None  # jwt: static keys, as a JWKS document
    scopes: tuple[str, ...] = ()  # jwt: the token must be granted at least one of these

    @classmethod
    def from_dict(cls, data: object) -> Authorization:
        if data is None or data == "none":
            return cls()
        if isinstance(data, str):
            data = {"kind": data}
        if not isinstance(data, dict):
            raise InvalidParameterValue("auth must be an object with a 'kind'")
        kind = data.get("kind", "none")
        if isinstance(kind, str) and kind.startswith("lambda:"):
            data = {**data, "kind": "lambda", "function": kind.split(":", 1)[1]}
            kind = "lambda"
        if kind not in AUTH_KINDS:
            raise InvalidParameterValue(
                f"auth kind must be one of none, api-key, iam, jwt, lambda:FUNCTION; got {kind!r}"
            )
        unknown = set(data) - {f for f in cls.__dataclass_fields__}
        if unknown:
            raise InvalidParameterValue(f"unknown auth fields: {', '.join(sorted(unknown))}")
        if kind in ("none", "api-key", "iam"):
            extra = [k for k, v in data.items() if k != "kind" and v not in (None, [], 0, "")]
            if extra:
                raise InvalidParameterValue(f"auth {kind} takes no settings, got {extra}")
            return cls(kind=kind)
        if kind == "lambda":
            return cls._lambda(data)
        return cls._jwt(data)

    @classmethod
    def _lambda(cls, data: dict[str, Any]) -> Authorization:
        function = data.get("function")
        if not isinstance(function, str) or not function:
            raise InvalidParameterValue("a lambda authorizer needs a function: lambda:NAME")
        parse_function_ref(function)
        sources = _identity_sources(data.get("identity_source"), lambda_authorizer=True)
        ttl = data.get("ttl_s", DEFAULT_AUTHORIZER_TTL_S)
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= 3600:
            raise InvalidParameterValue("authorizer ttl_s must be between 0 and 3600 seconds")
        if ttl and not sources:
            if "identity_source" in data and data["identity_source"] is not None:
                raise InvalidParameterValue(
                    "authorizer caching (ttl_s > 0) needs an identity source"
                )
            # caching is on by default, so a bare 'lambda:NAME' reads the Authorization header,
            # as the CLI and AWS's console default it
            sources = DEFAULT_IDENTITY_SOURCE
        return cls(kind="lambda", function=function, identity_source=sources, ttl_s=ttl)

    @classmethod
    def _jwt(cls, data: dict[str, Any]) -> Authorization:
        issuer = data.get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise InvalidParameterValue("a jwt authorizer needs an issuer")
        audience = data.get("audience") or []
        if isinstance(audience, str):
            audience = [audience]
        if not audience or not all(isinstance(a, str) and a for a in audience):
            raise InvalidParameterValue("a jwt authorizer needs at least one audience")
        jwks_url, jwks = data.get("jwks_url"), data.get("jwks")
        if (jwks_url is None) == (jwks is None):
            raise InvalidParameterValue("a jwt authorizer needs jwks_url or jwks (not both)")
        if jwks_url is not None and (
            not isinstance(jwks_url, str) or not jwks_url.startswith(("https://", "http://"))
        ):
            raise InvalidParameterValue("jwks_url must be an http(s) URL")
        if jwks is not None and (
            not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list)
        ):
            raise InvalidParameterValue('jwks must be a JWKS document: {"keys": [...]}')
        scopes = data.get("scopes") or []
        if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
            raise InvalidParameterValue("scopes must be a list of strings")
        sources = (
            _identity_sources(data.get("identity_source"), lambda_authorizer=False)
            or DEFAULT_IDENTITY_SOURCE
        )
        if len(sources) != 1 or not sources[0].startswith("$request.header."):
            raise InvalidParameterValue("a jwt authorizer reads its token from one header")
        return cls(
            kind="jwt",
            identity_source=sources,
            issuer=issuer,
            audience=tuple(audience),
            jwks_url=jwks_url,
            jwks=jwks,
            scopes=tuple(scopes),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for key, value in asdict(self).items():
            if key != "kind" and value not in (None, (), [], 0):
                out[key] = list(value) if isinstance(value, tuple) else value
        if self.kind == "lambda":
            # 0 (no caching) is not the default: left out, it would come back as 300
            out["ttl_s"] = self.ttl_s
        return out

    @property
    def label(self) -> str:
        return f"lambda:{self.function}" if self.kind == "lambda" else self.kind


RESERVED_PATHS = ("/v1", "/healthz")  # the management API and the liveness probe


def _reserved(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in RESERVED_PATHS)


def check_not_reserved(api: Api, key: RouteKey) -> None:
    """InvalidParameterValue if the route would sit under a path Gureum serves itself."""
    if key.path and _reserved(api.prefix + key.path):
        raise InvalidParameterValue(
            f"{api.prefix + key.path} is Gureum's own ({', '.join(RESERVED_PATHS)} are "
            "reserved); use another path or give the API a base path"
        )


def _identity_sources(value: object, *, lambda_authorizer: bool) -> tuple[str, ...]:
    """The identity sources in `value`; a Lambda authorizer's may also be a stage variable or
    one of CONTEXT_IDENTITY_VARIABLES, as on AWS (a JWT authorizer's may not)."""
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidParameterValue("identity_source must be a list")
    for source in value:
        if isinstance(source, str) and IDENTITY_SOURCE_RE.fullmatch(source):
            continue
        if not lambda_authorizer or not isinstance(source, str):
            raise InvalidParameterValue(
                f"identity source {source!r} must be $request.header.NAME or "
                "$request.querystring.NAME"
            )
        if source.startswith(CONTEXT_SOURCE):
            if source[len(CONTEXT_SOURCE) :] not in CONTEXT_IDENTITY_VARIABLES:
                known = ", ".join(CONTEXT_SOURCE + name for name in CONTEXT_IDENTITY_VARIABLES)
                raise InvalidParameterValue(
                    f"identity source {source!r}: not a context variable a Lambda authorizer "
                    f"can read; use one of {known}"
                )
        elif not (
            source.startswith(STAGE_VARIABLE_SOURCE)
            and STAGE_VARIABLE_NAME_RE.fullmatch(source[len(STAGE_VARIABLE_SOURCE) :])
        ):
            raise InvalidParameterValue(
                f"identity source {source!r} must be $request.header.NAME, "
                "$request.querystring.NAME, $context.VARIABLE or $stageVariables.NAME"
            )
    return tuple(value)


@dataclass(frozen=True)
class RouteKey:
    """A parsed route key: `$default`, or a method and a path template."""

    method: str  # METHODS member, or '$default'
    path: str  # '/a/{b}/{c+}', or '' for $default
    segments: tuple[str, ...]  # path split on '/', without the leading empty one

    @property
    def text(self) -> str:
        return DEFAULT_ROUTE if self.method == DEFAULT_ROUTE else f"{self.method} {self.path}"

    @classmethod
    def parse(cls, text: str) -> RouteKey:
        """Parse and validate `METHOD /path` or `$default`; InvalidParameterValue if bad."""
        if text == DEFAULT_ROUTE:
            return cls(DEFAULT_ROUTE, "", ())
        method, sep, path = text.partition(" ")
        if not sep or method.upper() not in METHODS:
            raise InvalidParameterValue(
                f"route key {text!r} must be '$default' or 'METHOD /path' with METHOD one of "
                f"{', '.join(METHODS)}"
            )
        if not path.startswith("/") or len(path) > 512:
            raise InvalidParameterValue(f"route path {path!r} must start with '/'")
        segments = () if path == "/" else tuple(path[1:].split("/"))
        names: set[str] = set()
        for index, segment in enumerate(segments):
            param = PARAM_RE.match(segment)
            if param:
                if param.group(2) and index != len(segments) - 1:
                    raise InvalidParameterValue(
                        f"greedy path variable {segment} must be the last segment of {path!r}"
                    )
                if param.group(1) in names:
                    raise InvalidParameterValue(f"path variable {segment} appears twice")
                names.add(param.group(1))
            elif not SEGMENT_RE.match(segment):
                raise InvalidParameterValue(
                    f"route path {path!r} has an invalid segment {segment!r}"
                )
        return cls(method.upper(), path, segments)


@dataclass(frozen=True)
class Route:
    api_id: str
    route_id: str
    route_key: str
    function_name: str
    qualifier: str | None = None
    auth: Authorization = field(default_factory=Authorization)
    rate_limit: float | None = None
    burst: int | None = None
    timeout_ms: int = MAX_INTEGRATION_TIMEOUT_MS
    created_at: float = field(default_factory=time.time)

    @property
    def target(self) -> str:
        return self.function_name + (f":{self.qualifier}" if self.qualifier else "")

    def validated(self) -> Route:
        RouteKey.parse(self.route_key)
        _rate(self.rate_limit, self.burst)
        if (
            isinstance(self.timeout_ms, bool)
            or not isinstance(self.timeout_ms, int)
            or not 50 <= self.timeout_ms <= MAX_INTEGRATION_TIMEOUT_MS
        ):
            raise InvalidParameterValue(
                f"timeout_ms must be between 50 and {MAX_INTEGRATION_TIMEOUT_MS}"
            )
        return self

    def to_dict(self, api_name: str) -> dict[str, Any]:
        return {
            "route_id": self.route_id,
            "api": api_name,
            "api_id": self.api_id,
            "route_key": self.route_key,
            "target": self.target,
            "auth": self.auth.to_dict(),
            "rate_limit": self.rate_limit,
            "burst": self.burst,
            "timeout_ms": self.timeout_ms,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account_id: str
    api_id: str
    name: str
    key_hash: str
    hint: str  # the key's last four characters, to tell keys apart in listings
    created_at: float = field(default_factory=time.time)

    def to_dict(self, api_name: str) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "api": api_name,
            "name": self.name,
            "hint": "…" + self.hint,
            "created_at": self.created_at,
        }
