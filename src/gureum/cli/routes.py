"""`gureum route|api|api-key …`: HTTP routes to functions, the APIs that hold them, API keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from gureum.cli import render
from gureum.cli.options import JsonOutput, connect, parse_pairs
from gureum.cli.render import print_json, reports_errors, table

StageVarOption = Annotated[
    list[str] | None,
    typer.Option(
        "--stage-var", help="Stage variable NAME=VALUE, passed as stageVariables (repeatable)."
    ),
]

route_app = typer.Typer(
    help="HTTP routes to functions (API Gateway HTTP API payload format 2.0).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
api_app = typer.Typer(
    help="HTTP APIs: groups of routes under a base path and/or Host, with CORS and rate limits.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
key_app = typer.Typer(
    help="API keys for routes with --auth api-key (sent as the x-api-key header).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ApiOption = Annotated[
    str | None, typer.Option("--api", help="API name [default: the account's 'default' API]")
]


def _auth(
    auth: str,
    issuer: str | None,
    audience: list[str] | None,
    jwks_url: str | None,
    jwks_file: Path | None,
    scopes: list[str] | None,
    identity_source: list[str] | None,
    ttl: int | None,
) -> str | dict[str, Any]:
    if auth == "jwt":
        spec: dict[str, Any] = {"kind": "jwt", "issuer": issuer, "audience": audience or []}
        if jwks_url:
            spec["jwks_url"] = jwks_url
        if jwks_file:
            try:
                spec["jwks"] = json.loads(jwks_file.read_text())
            except (OSError, ValueError) as exc:
                raise typer.BadParameter(str(exc), param_hint="--jwks-file") from None
        if scopes:
            spec["scopes"] = scopes
        if identity_source:
            spec["identity_source"] = identity_source
        return spec
    if auth.startswith("lambda:"):
        spec = {"kind": auth}
        if identity_source:
            spec["identity_source"] = identity_source
        elif ttl != 0:
            spec["identity_source"] = ["$request.header.Authorization"]
        if ttl is not None:
            spec["ttl_s"] = ttl
        return spec
    return auth


@route_app.command("add")
@reports_errors
def add(
    route_key: Annotated[
        str,
        typer.Argument(
            metavar="ROUTE_KEY",
            help="'METHOD /path/{param}/{proxy+}', 'ANY /path' or '$default' (quote it).",
            show_default=False,
        ),
    ],
    target: Annotated[
        str,
        typer.Argument(
            metavar="FUNCTION[:QUALIFIER]", help="Function, version or alias.", show_default=False
        ),
    ],
    api: ApiOption = None,
    auth: Annotated[
        str, typer.Option(help="none | api-key | iam | jwt | lambda:FUNCTION[:QUALIFIER]")
    ] = "none",
    jwt_issuer: Annotated[str | None, typer.Option(help="jwt: required issuer (iss).")] = None,
    jwt_audience: Annotated[
        list[str] | None, typer.Option(help="jwt: accepted audience (repeatable).")
    ] = None,
    jwks_url: Annotated[str | None, typer.Option(help="jwt: URL of the JWKS.")] = None,
    jwks_file: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="jwt: static JWKS file.")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(help="jwt: an accepted scope (repeatable; the token needs one of them)."),
    ] = None,
    identity_source: Annotated[
        list[str] | None,
        typer.Option(
            help="$request.header.NAME or $request.querystring.NAME; a Lambda authorizer also "
            "takes $stageVariables.NAME and $context.VARIABLE (repeatable)."
        ),
    ] = None,
    auth_ttl: Annotated[
        int | None, typer.Option(min=0, max=3600, help="lambda: cache results this long (s).")
    ] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second (with --burst).")] = None,
    burst: Annotated[int | None, typer.Option(help="Token bucket size (with --rate).")] = None,
    timeout_ms: Annotated[
        int | None, typer.Option(help="Integration timeout, 50-30000 ms [default: 30000].")
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Route HTTP requests to a function."""
    spec = _auth(
        auth, jwt_issuer, jwt_audience, jwks_url, jwks_file, scope, identity_source, auth_ttl
    )
    with connect() as client:
        route = client.add_route(
            route_key,
            target,
            api=api,
            auth=spec,
            rate_limit=rate,
            burst=burst,
            timeout_ms=timeout_ms,
        )
        apis = {a["name"]: a for a in client.list_apis()}
        endpoint = client.endpoint
    if json_output:
        print_json(route)
        return
    found = apis.get(route["api"], {})
    prefix = found.get("base_path", "") + (
        "" if found.get("stage", "$default") == "$default" else "/" + found["stage"]
    )
    method, _, path = route["route_key"].partition(" ")
    out = render.console(soft_wrap=True)
    out.print(Text(f"added {route['route_key']} → {route['target']} (id {route['route_id']})"))
    if path:
        host = found.get("host")
        note = f" (Host: {host})" if host else ""
        out.print(
            Text(
                f"try it: curl -X {method if method != 'ANY' else 'GET'} "
                f"'{endpoint}{prefix}{path}'{note}"
            )
        )


@route_app.command("ls")
@reports_errors
def list_routes(api: ApiOption = None, json_output: JsonOutput = False) -> None:
    """List routes."""
    with connect() as client:
        routes = client.list_routes(api)
    if json_output:
        print_json(routes)
        return
    table(
        ["id", "api", "route", "target", "auth", "rate/burst", "timeout ms"],
        (
            [
                r["route_id"],
                r["api"],
                r["route_key"],
                r["target"],
                r["auth"]["kind"]
                + (f":{r['auth']['function']}" if r["auth"].get("function") else ""),
                f"{r['rate_limit']:g}/{r['burst']}" if r.get("rate_limit") else None,
                r["timeout_ms"],
            ]
            for r in routes
        ),
    )


@route_app.command("rm")
@reports_errors
def remove_route(
    route: Annotated[
        str,
        typer.Argument(metavar="ROUTE", help="Route id or route key.", show_default=False),
    ],
    api: ApiOption = None,
    json_output: JsonOutput = False,
) -> None:
    """Remove a route."""
    with connect() as client:
        client.remove_route(route, api)
    if json_output:
        print_json({"removed": route})
    else:
        render.console().print(Text(f"removed {route}"))


@api_app.command("create")
@reports_errors
def create_api(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    base_path: Annotated[str, typer.Option(help="Path prefix, e.g. /shop.")] = "",
    host: Annotated[str, typer.Option(help="Serve only requests for this Host.")] = "",
    stage: Annotated[str, typer.Option(help="Named stage (prefixes paths with /STAGE).")] = (
        "$default"
    ),
    cors_origin: Annotated[
        list[str] | None, typer.Option(help="CORS: allowed origin, or * (repeatable).")
    ] = None,
    cors_method: Annotated[
        list[str] | None, typer.Option(help="CORS: allowed method (repeatable).")
    ] = None,
    cors_header: Annotated[
        list[str] | None, typer.Option(help="CORS: allowed request header (repeatable).")
    ] = None,
    cors_max_age: Annotated[int | None, typer.Option(help="CORS: preflight max age (s).")] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second (with --burst).")] = None,
    burst: Annotated[int | None, typer.Option(help="Token bucket size (with --rate).")] = None,
    stage_var: StageVarOption = None,
    json_output: JsonOutput = False,
) -> None:
    """Create an HTTP API."""
    cors = None
    if cors_origin:
        cors = {
            "allow_origins": cors_origin,
            "allow_methods": cors_method or ["*"],
            "allow_headers": cors_header or [],
            "max_age": cors_max_age,
        }
    with connect() as client:
        api = client.create_api(
            name,
            base_path=base_path,
            host=host,
            stage=stage,
            cors=cors,
            rate_limit=rate,
            burst=burst,
            stage_variables=parse_pairs(stage_var, "--stage-var") or None,
        )
    if json_output:
        print_json(api)
    else:
        render.console().print(Text(f"created API {api['name']} (id {api['api_id']})"))


@api_app.command("update")
@reports_errors
def update_api(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    stage_var: StageVarOption = None,
    clear_stage_vars: Annotated[
        bool, typer.Option("--clear-stage-vars", help="Remove every stage variable.")
    ] = False,
    rate: Annotated[float | None, typer.Option(help="Requests per second (with --burst).")] = None,
    burst: Annotated[int | None, typer.Option(help="Token bucket size (with --rate).")] = None,
    json_output: JsonOutput = False,
) -> None:
    """Change an HTTP API's stage variables (--stage-var replaces them all) or rate limit."""
    changes: dict[str, Any] = {}
    if stage_var and clear_stage_vars:
        raise typer.BadParameter("give --stage-var or --clear-stage-vars, not both")
    if stage_var or clear_stage_vars:
        changes["stage_variables"] = parse_pairs(stage_var, "--stage-var")
    if rate is not None or burst is not None:
        changes.update(rate_limit=rate, burst=burst)
    if not changes:
        raise typer.BadParameter(
            "nothing to change: give --stage-var, --clear-stage-vars or --rate/--burst"
        )
    with connect() as client:
        api = client.update_api(name, **changes)
    if json_output:
        print_json(api)
    else:
        render.console().print(Text(f"updated API {api['name']}"))


@api_app.command("ls")
@reports_errors
def list_apis(json_output: JsonOutput = False) -> None:
    """List HTTP APIs."""
    with connect() as client:
        apis = client.list_apis()
    if json_output:
        print_json(apis)
        return
    table(
        ["id", "name", "host", "base path", "stage", "cors", "rate/burst"],
        (
            [
                a["api_id"],
                a["name"],
                a["host"] or None,
                a["base_path"] or None,
                a["stage"],
                ",".join(a["cors"]["allow_origins"]) if a.get("cors") else None,
                f"{a['rate_limit']:g}/{a['burst']}" if a.get("rate_limit") else None,
            ]
            for a in apis
        ),
    )


@api_app.command("rm")
@reports_errors
def remove_api(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    json_output: JsonOutput = False,
) -> None:
    """Delete an HTTP API with its routes and API keys."""
    with connect() as client:
        client.delete_api(name)
    if json_output:
        print_json({"removed": name})
    else:
        render.console().print(Text(f"removed API {name}"))


@key_app.command("create")
@reports_errors
def create_key(
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)],
    api: ApiOption = None,
    json_output: JsonOutput = False,
) -> None:
    """Create an API key. The key is printed only this once; Gureum keeps only its hash."""
    with connect() as client:
        key = client.create_api_key(name, api)
    if json_output:
        print_json(key)
        return
    out = render.console(soft_wrap=True)
    out.print(Text(f"created API key {key['key_id']} for API {key['api']}:"))
    out.print(Text(key["key"]))
    out.print(Text("store it now: it cannot be shown again"), style="yellow")


@key_app.command("ls")
@reports_errors
def list_keys(json_output: JsonOutput = False) -> None:
    """List API keys (never the keys themselves)."""
    with connect() as client:
        keys = client.list_api_keys()
    if json_output:
        print_json(keys)
        return
    table(
        ["id", "api", "name", "key", "created"],
        (
            [k["key_id"], k["api"], k["name"], k["hint"], render.timestamp(k["created_at"])]
            for k in keys
        ),
    )


@key_app.command("rm")
@reports_errors
def remove_key(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", show_default=False)],
    json_output: JsonOutput = False,
) -> None:
    """Delete an API key."""
    with connect() as client:
        client.delete_api_key(key_id)
    if json_output:
        print_json({"removed": key_id})
    else:
        render.console().print(Text(f"removed API key {key_id}"))
