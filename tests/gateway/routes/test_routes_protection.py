"""APIs (base path, Host, stage), rate limits, CORS, access log, and the CLI for routes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.client import Client
from tests.cli.test_cli import cli_env
from tests.conftest import RunningServer
from tests.gateway.routes.conftest import Deploy, echoed


def test_apis_by_base_path_host_and_stage(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.create_api("shop", base_path="/shop")
    admin.create_api("shop-prod", base_path="/shop", stage="prod")
    admin.create_api("tenant", host="tenant.example.com")
    for api in ("shop", "shop-prod", "tenant"):
        admin.add_route("GET /items/{id}", "echo", api=api)
    admin.add_route("GET /items/{id}", "echo")  # the default API, no prefix

    shop = echoed(http.get("/shop/items/1"))
    prod = echoed(http.get("/shop/prod/items/1"))
    tenant = echoed(http.get("/items/1", headers={"Host": "tenant.example.com:8080"}))
    default = echoed(http.get("/items/1"))
    ids = {e["requestContext"]["apiId"] for e in (shop, prod, tenant, default)}
    assert len(ids) == 4
    assert shop["rawPath"] == "/shop/items/1" and shop["pathParameters"] == {"id": "1"}
    assert prod["requestContext"]["stage"] == "prod"
    assert tenant["requestContext"]["domainName"] == "tenant.example.com"
    assert tenant["requestContext"]["domainPrefix"] == "tenant"
    assert http.get("/shop/other").status_code == 404
    assert {a["name"] for a in admin.list_apis()} == {"default", "shop", "shop-prod", "tenant"}
    admin.delete_api("shop-prod")
    assert http.get("/shop/prod/items/1").status_code == 404
    assert [r["api"] for r in admin.list_routes("shop")] == ["shop"]


def test_rate_limits_per_route_and_per_api(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.add_route("GET /limited", "echo", rate_limit=0.2, burst=2)
    admin.add_route("GET /free", "echo")
    statuses = [http.get("/limited").status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    throttled = http.get("/limited")
    assert throttled.json() == {"message": "Too Many Requests"}
    assert 1 <= int(throttled.headers["retry-after"]) <= 5
    assert http.get("/free").status_code == 200  # other routes are not affected

    admin.create_api("tight", base_path="/tight", rate_limit=0.1, burst=1)
    admin.add_route("GET /a", "echo", api="tight")
    admin.add_route("GET /b", "echo", api="tight")
    assert http.get("/tight/a").status_code == 200
    assert http.get("/tight/b").status_code == 429  # the API's bucket is shared


def test_cors_preflight_and_response_headers(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    deploy(
        "own-cors",
        "def handler(e, c):\n    return {'statusCode': 200, 'headers': "
        "{'access-control-allow-origin': '*'}, 'body': 'x'}\n",
    )
    cors = {
        "allow_origins": ["https://app.example"],
        "allow_methods": ["GET", "POST"],
        "allow_headers": ["content-type", "x-api-key"],
        "expose_headers": ["x-request-id"],
        "max_age": 600,
        "allow_credentials": True,
    }
    admin.create_api("web", base_path="/web", cors=cors)
    admin.add_route("POST /things", "echo", api="web", auth="api-key")
    admin.add_route("GET /own", "own-cors", api="web")

    preflight = http.options(
        "/web/things",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "GET,POST"
    assert preflight.headers["access-control-allow-headers"] == "content-type,x-api-key"
    assert preflight.headers["access-control-max-age"] == "600"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    assert preflight.headers["x-request-id"]
    # preflights skip auth and need no OPTIONS route; other origins get no allow headers
    other = http.options(
        "/web/things",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert other.status_code == 204 and "access-control-allow-origin" not in other.headers

    # the gateway's CORS headers replace the function's own
    response = http.get("/web/own", headers={"Origin": "https://app.example"})
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert response.headers["access-control-expose-headers"] == "x-request-id"
    response = http.get("/web/own", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    # ... and are never sent while the API has CORS, Origin or not (as on AWS)
    assert "access-control-allow-origin" not in http.get("/web/own").headers

    admin.update_api("web", cors=None)
    plain = http.options(
        "/web/things",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert plain.status_code == 404  # no CORS: OPTIONS is an ordinary request again


def test_access_log_line_per_request(
    deploy: Deploy, admin: Client, http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    deploy("echo")
    admin.add_route("GET /logged/{id}", "echo")
    admin.add_route("HEAD /logged/{id}", "echo")
    caplog.set_level(logging.INFO, logger="gureum.access")
    ok = http.get("/logged/5?x=1")
    missing = http.get("/not-there")
    head = http.head("/logged/6")
    lines = [r.getMessage() for r in caplog.records if r.name == "gureum.access"]
    assert len(lines) == 3
    assert f'"GET /logged/5?x=1" 200 {len(ok.content)} ' in lines[0]  # the bytes sent
    assert 'route="GET /logged/{id}"' in lines[0]
    assert f"request_id={ok.headers['x-request-id']}" in lines[0]
    assert '"GET /not-there" 404' in lines[1]
    assert f"request_id={missing.headers['x-request-id']}" in lines[1]
    assert int(head.headers["content-length"]) > 0
    assert '"HEAD /logged/6" 200 0 ' in lines[2]  # a HEAD response carries no body


def test_cli_manages_apis_routes_and_keys(
    server: RunningServer, deploy: Deploy, http: httpx.Client, tmp_path: Path
) -> None:
    deploy("echo")
    env = cli_env(server, tmp_path)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, list(args), env=env)
        assert result.exit_code == code, (result.stdout, result.stderr)
        return result.stdout + result.stderr

    out = run("route", "add", "GET /hello/{name}", "echo")
    assert "added GET /hello/{name} → echo" in out
    assert f"curl -X GET '{server.endpoint}/hello/{{name}}'" in out
    assert echoed(http.get("/hello/cli"))["pathParameters"] == {"name": "cli"}
    run("api", "create", "admin", "--base-path", "/admin", "--cors-origin", "*")
    run("api", "update", "admin", "--stage-var", "env=prod", "--stage-var", "db=main")
    assert json.loads(run("api", "ls", "--json"))[0]["stage_variables"] == {
        "env": "prod",
        "db": "main",
    }
    assert "KEY=VALUE" in run("api", "update", "admin", "--stage-var", "oops", code=2)
    run(
        "route",
        "add",
        "POST /act",
        "echo",
        "--api",
        "admin",
        "--auth",
        "api-key",
        "--rate",
        "5",
        "--burst",
        "10",
    )
    key = json.loads(run("api-key", "create", "ops", "--api", "admin", "--json"))
    assert http.post("/admin/act").status_code == 403
    assert http.post("/admin/act", headers={"x-api-key": key["key"]}).status_code == 200
    routes = json.loads(run("route", "ls", "--json"))
    assert {(r["api"], r["route_key"], r["auth"]["kind"]) for r in routes} == {
        ("default", "GET /hello/{name}", "none"),
        ("admin", "POST /act", "api-key"),
    }
    assert "POST /act" in run("route", "ls", "--api", "admin")
    assert "admin" in run("api", "ls")
    assert key["key_id"] in run("api-key", "ls")
    assert "error: InvalidParameterValueException" in run("route", "add", "BAD", "echo", code=1)
    assert "error: ResourceNotFoundException" in run("route", "rm", "GET /nope", code=1)
    run("route", "rm", "GET /hello/{name}")
    assert http.get("/hello/cli").status_code == 404
    run("api-key", "rm", key["key_id"])
    run("api", "rm", "admin")
    assert json.loads(run("route", "ls", "--json")) == []


def test_cors_origin_patterns_by_scheme(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.create_api("web", base_path="/web", cors={"allow_origins": ["https://*"]})
    admin.add_route("GET /things", "echo", api="web")
    response = http.get("/web/things", headers={"Origin": "https://app.example"})
    assert response.headers.get("access-control-allow-origin") == "https://app.example"
    plain = http.get("/web/things", headers={"Origin": "http://app.example"})
    assert "access-control-allow-origin" not in plain.headers
