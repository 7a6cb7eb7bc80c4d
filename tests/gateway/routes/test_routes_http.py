"""User routes over real HTTP: payload format 2.0, route matching, response mapping, bad input."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from botocore.exceptions import ClientError

from gureum.client import Client
from gureum.errors import GureumError, InvalidParameterValue, ResourceConflict, ResourceNotFound
from tests.conftest import RunningServer, free_port, make_zip
from tests.gateway.routes.conftest import Deploy, echoed

RETURNS = """
import base64, json, time
def handler(event, context):
    kind = event.get("pathParameters", {}).get("kind")
    if kind == "dict":
        return {"hello": "world", "n": 1}
    if kind == "string":
        return "just text"
    if kind == "number":
        return 42
    if kind == "structured":
        return {"statusCode": 201, "headers": {"X-Custom": "yes", "Content-Type": "text/plain",
                "X-Num": 7}, "cookies": ["a=1; Path=/", "b=2; HttpOnly"], "body": "created"}
    if kind == "binary":
        return {"statusCode": 200, "headers": {"content-type": "image/png"},
                "isBase64Encoded": True, "body": base64.b64encode(bytes(range(256))).decode()}
    if kind == "nobody":
        return {"statusCode": 204}
    if kind == "jsonbody":
        return {"statusCode": 200, "body": {"not": "a string"}}
    if kind == "badstatus":
        return {"statusCode": "teapot", "body": "x"}
    if kind == "badheader":
        return {"statusCode": 200, "headers": {"x-evil": "a\\r\\nset-cookie: x=1"}, "body": "x"}
    if kind == "crash":
        raise RuntimeError("secret detail that must not leak")
    if kind == "slow":
        time.sleep(5)
    return None
"""


def test_event_is_payload_format_2(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.add_route("POST /items/{id}/{rest+}", "echo")
    response = http.post(
        "/items/a%20b/x/y%2Fz?b=2&a=1&a=two%20words&empty=",
        content=b'{"not": "parsed',
        headers=[
            ("Content-Type", "application/json"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("Cookie", "s=1; t=2"),
            ("User-Agent", "gw-test/1.0"),
        ],
    )
    event = echoed(response)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /items/{id}/{rest+}"
    assert event["rawPath"] == "/items/a%20b/x/y%2Fz"
    assert event["rawQueryString"] == "b=2&a=1&a=two%20words&empty="
    assert event["cookies"] == ["s=1", "t=2"]
    assert event["headers"]["x-multi"] == "one,two"
    assert event["headers"]["content-type"] == "application/json"
    assert "cookie" not in event["headers"]
    assert all(name == name.lower() for name in event["headers"])
    assert event["queryStringParameters"] == {"b": "2", "a": "1,two words", "empty": ""}
    assert event["pathParameters"] == {"id": "a b", "rest": "x/y/z"}
    # the gateway forwards what it should not parse, byte for byte
    assert event["body"] == '{"not": "parsed'
    assert event["isBase64Encoded"] is False
    assert "stageVariables" not in event
    context = event["requestContext"]
    assert context["accountId"] == admin.whoami()["account_id"]
    assert context["apiId"] and context["domainName"] == "127.0.0.1"
    assert context["domainPrefix"] == "127"
    assert context["http"] == {
        "method": "POST",
        "path": "/items/a%20b/x/y%2Fz",
        "protocol": "HTTP/1.1",
        "sourceIp": "127.0.0.1",
        "userAgent": "gw-test/1.0",
    }
    assert context["requestId"] == response.headers["x-request-id"]
    assert context["routeKey"] == "POST /items/{id}/{rest+}"
    assert context["stage"] == "$default"
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60
    assert time.strftime("/%Y:", time.gmtime()) in context["time"]
    assert context["time"].endswith(" +0000")
    assert "authorizer" not in context


def test_binary_and_empty_bodies(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.add_route("ANY /upload", "echo")
    raw = bytes(range(256))
    event = echoed(http.put("/upload", content=raw, headers={"content-type": "image/png"}))
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw
    # declared text, but not UTF-8: base64 too, so nothing is lost
    event = echoed(http.put("/upload", content=b"\xff\xfe", headers={"content-type": "text/plain"}))
    assert event["isBase64Encoded"] is True and base64.b64decode(event["body"]) == b"\xff\xfe"
    event = echoed(http.get("/upload"))
    assert "body" not in event and event["isBase64Encoded"] is False
    assert "queryStringParameters" not in event and "pathParameters" not in event
    assert "cookies" not in event


def test_most_specific_route_wins(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    for key in (
        "GET /pets",
        "ANY /pets",
        "GET /pets/{id}",
        "GET /pets/dog/{id}",
        "GET /pets/dog/1",
        "GET /pets/{proxy+}",
        "ANY /{proxy+}",
        "GET /",
        "$default",
    ):
        admin.add_route(key, "echo")

    def key_for(method: str, path: str) -> str:
        return str(echoed(http.request(method, path))["routeKey"])

    assert key_for("GET", "/pets") == "GET /pets"
    assert key_for("POST", "/pets") == "ANY /pets"
    assert key_for("GET", "/pets/7") == "GET /pets/{id}"
    assert key_for("GET", "/pets/dog/2") == "GET /pets/dog/{id}"
    assert key_for("GET", "/pets/dog/1") == "GET /pets/dog/1"
    assert key_for("GET", "/pets/cat/1/toys") == "GET /pets/{proxy+}"
    assert key_for("DELETE", "/pets/7") == "ANY /{proxy+}"
    assert key_for("GET", "/") == "GET /"
    # the root is an empty remainder of '/{proxy+}', which AWS prefers to $default
    assert key_for("POST", "/") == "ANY /{proxy+}"
    admin.remove_route("ANY /{proxy+}")
    assert key_for("POST", "/") == "$default"
    event = echoed(http.get("/pets/cat/1/toys"))
    assert event["pathParameters"] == {"proxy": "cat/1/toys"}


def test_unknown_routes_and_wrong_methods_are_404(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.add_route("GET /only-get", "echo")
    for method, path in (("POST", "/only-get"), ("GET", "/only-get/more"), ("GET", "/nothing")):
        response = http.request(method, path)
        assert response.status_code == 404
        assert response.json() == {"message": "Not Found"}
        uuid.UUID(response.headers["x-request-id"])
    assert http.get("/only-get").status_code == 200


def test_response_mapping(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("returns", RETURNS)
    admin.add_route("GET /r/{kind}", "returns")

    plain = http.get("/r/dict")
    assert plain.status_code == 200
    assert plain.headers["content-type"] == "application/json"
    assert plain.json() == {"hello": "world", "n": 1}
    text = http.get("/r/string")
    # AWS's reading of a returned string: the string itself is the body
    assert (text.status_code, text.text, text.headers["content-type"]) == (
        200,
        "just text",
        "application/json",
    )
    assert http.get("/r/number").text == "42"
    assert http.get("/r/none").text == "null"

    structured = http.get("/r/structured")
    assert structured.status_code == 201 and structured.text == "created"
    assert structured.headers["x-custom"] == "yes" and structured.headers["x-num"] == "7"
    assert structured.headers["content-type"] == "text/plain"
    assert structured.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    binary = http.get("/r/binary")
    assert binary.content == bytes(range(256))
    assert binary.headers["content-type"] == "image/png"
    empty = http.get("/r/nobody")
    assert empty.status_code == 204 and empty.content == b""
    assert http.get("/r/jsonbody").json() == {"not": "a string"}


@pytest.mark.parametrize("kind", ["crash", "badstatus", "badheader"])
def test_function_errors_and_malformed_responses_are_500(
    kind: str, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("returns", RETURNS)
    admin.add_route("GET /r/{kind}", "returns")
    response = http.get(f"/r/{kind}")
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}
    assert "secret" not in response.text and "set-cookie" not in response.headers
    assert response.headers["x-request-id"]


def test_function_timeout_is_500_integration_timeout_is_504(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("returns", RETURNS, timeout_s=1)
    admin.add_route("GET /r/{kind}", "returns")
    response = http.get("/r/slow")
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}

    deploy("slowfn", RETURNS, timeout_s=10)
    # 2 s: well short of the 5 s sleep, and room for the next request's cold start on a busy host
    admin.add_route("GET /s/{kind}", "slowfn", timeout_ms=2000)
    started = time.monotonic()
    response = http.get("/s/slow")
    assert response.status_code == 504
    assert response.json() == {"message": "Gateway Timeout"}
    assert time.monotonic() - started < 4.5
    assert http.get("/s/dict").json() == {"hello": "world", "n": 1}
    # the timed-out invocation still runs to its end (and is recorded), on its own instance
    deadline = time.monotonic() + 15
    while len(admin.invocations("slowfn")) < 2:
        assert time.monotonic() < deadline, "the timed-out invocation never finished"
        time.sleep(0.1)
    assert {r["status"] for r in admin.invocations("slowfn")} == {"success"}


def test_routes_to_versions_and_aliases(
    deploy: Deploy, admin: Client, http: httpx.Client, lam: object
) -> None:
    deploy("ver", "def handler(event, context):\n    return {'v': context.function_version}\n")
    admin.publish_version("ver")
    admin.update_function_code(
        "ver",
        make_zip({"app.py": "def handler(e, c):\n    return {'v': 'new ' + c.function_version}\n"}),
    )
    admin.create_alias("ver", "live", "1")
    admin.add_route("GET /latest", "ver")
    admin.add_route("GET /one", "ver:1")
    admin.add_route("GET /live", "ver:live")
    assert http.get("/latest").json() == {"v": "new $LATEST"}
    assert http.get("/one").json() == {"v": "1"}
    assert http.get("/live").json() == {"v": "1"}


def test_bad_input_gets_clear_answers(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.add_route("ANY /{proxy+}", "echo")
    for path in ("/bad%zzescape", "/bad%C3", "/trailing%"):
        response = http.get(path)
        assert response.status_code == 400, path
        assert response.json() == {"message": "Bad Request"}
    # a body over 6 MB
    response = http.post("/big", content=b"x" * (6 * 1024 * 1024 + 1))
    assert response.status_code == 413
    assert response.json() == {"message": "Request Entity Too Large"}
    # more than 10 KB of headers, as AWS's HTTP APIs refuse them
    huge = http.get("/h", headers={"x-huge": "a" * 20_000})
    assert huge.status_code == 431
    assert huge.json() == {"message": "Request Header Fields Too Large"}
    # malformed HTTP on a raw socket: an error status, and the server keeps serving
    host, port = server.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GARBAGE / HTTP/9.9\r\n\r\n")
        reply = sock.recv(1024)
    assert reply == b"" or reply.startswith(b"HTTP/1.1 400")
    assert echoed(http.get("/still/alive"))["pathParameters"] == {"proxy": "still/alive"}


def test_platform_apis_keep_working_beside_user_routes(
    deploy: Deploy, admin: Client, http: httpx.Client, lam: object
) -> None:
    deploy("echo")
    # unsigned requests to the platform's own paths still get the platform's answer …
    response = http.post("/2015-03-31/functions/echo/invocations", content=b"{}")
    assert response.status_code == 403
    assert response.json()["code"] == "MissingAuthenticationTokenException"
    # … until a user route claims them; signed Lambda calls are never user routes
    admin.add_route("$default", "echo")
    assert echoed(http.post("/2015-03-31/functions/echo/invocations"))["routeKey"] == "$default"
    result = lam.invoke(FunctionName="echo", Payload=b'{"direct": true}')  # type: ignore[attr-defined]
    assert result["StatusCode"] == 200
    assert admin.invoke("echo", b"{}").status == 200


def test_stage_variables_reach_the_event(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    api = admin.create_api(
        "shop",
        base_path="/shop",
        stage_variables={"table": "orders-v2", "url": "https://a.b/c?d=e"},
    )
    assert api["stage_variables"] == {"table": "orders-v2", "url": "https://a.b/c?d=e"}
    admin.add_route("GET /s", "echo", api="shop")
    event = echoed(http.get("/shop/s"))
    assert event["stageVariables"] == {"table": "orders-v2", "url": "https://a.b/c?d=e"}
    # replaced as a whole; an empty set leaves the member out, as on AWS
    admin.update_api("shop", stage_variables={"table": "orders-v3"})
    assert echoed(http.get("/shop/s"))["stageVariables"] == {"table": "orders-v3"}
    admin.update_api("shop", stage_variables={})
    assert "stageVariables" not in echoed(http.get("/shop/s"))
    for bad in ({"bad-name": "x"}, {"n": ""}, {"n": "white space"}, {"n": "x" * 513}, {"": "x"}):
        with pytest.raises(InvalidParameterValue):
            admin.update_api("shop", stage_variables=bad)
        with pytest.raises(InvalidParameterValue):
            admin.create_api("other", base_path="/other", stage_variables=bad)
    assert admin.list_apis()[-1]["stage_variables"] == {}


def test_route_management_validation(deploy: Deploy, admin: Client) -> None:
    deploy("echo")
    for bad in (
        "GET hello",
        "FETCH /x",
        "GET /a/{p+}/b",
        "GET /a/{x}/{x}",
        "GET /a b",
        "GET /v1/x",
    ):
        with pytest.raises(InvalidParameterValue):
            admin.add_route(bad, "echo")
    with pytest.raises(ResourceNotFound):
        admin.add_route("GET /x", "missing")
    with pytest.raises(ResourceNotFound):
        admin.add_route("GET /x", "echo:7")
    with pytest.raises(InvalidParameterValue):
        admin.add_route("GET /x", "echo", auth="magic")
    with pytest.raises(InvalidParameterValue):
        admin.add_route("GET /x", "echo", rate_limit=5)
    with pytest.raises(InvalidParameterValue):
        admin.add_route("GET /x", "echo", timeout_ms=40_000)
    route = admin.add_route("get /x", "echo")
    assert route["route_key"] == "GET /x"
    with pytest.raises(ResourceConflict):
        admin.add_route("GET /x", "echo")
    assert [r["route_key"] for r in admin.list_routes()] == ["GET /x"]
    admin.remove_route("GET /x")
    with pytest.raises(ResourceNotFound):
        admin.remove_route("GET /x")
    route = admin.add_route("GET /y", "echo")
    admin.remove_route(route["route_id"])
    assert admin.list_routes() == []
    with pytest.raises(ResourceConflict):
        admin.create_api("default")
    admin.create_api("shop", base_path="/shop")
    with pytest.raises(ResourceConflict):
        admin.create_api("shop2", base_path="/shop/")
    for settings in (
        {"base_path": "shop"},
        {"base_path": "/v1"},
        {"host": "a b"},
        {"stage": "a/b"},
    ):
        with pytest.raises(InvalidParameterValue):
            admin.create_api("other", **settings)


def test_routes_survive_a_restart(server_factory: Callable[..., RunningServer]) -> None:
    first = server_factory()
    root = first.platform.root
    with Client(first.endpoint, root.access_key_id, root.secret_access_key) as admin:
        code = make_zip({"app.py": "def handler(e, c):\n    return 1\n"})
        admin.create_function("echo", code, "app.handler")
        admin.create_api(
            "shop", base_path="/shop", cors={"allow_origins": ["*"]}, stage_variables={"v": "1"}
        )
        admin.add_route("GET /n", "echo", api="shop", auth="api-key")
        key = admin.create_api_key("k1", api="shop")["key"]
    first.stop()
    second = server_factory(port=free_port())
    assert second.platform.routes.get_api(root.account_id, "shop").stage_variables == {"v": "1"}
    response = httpx.get(second.endpoint + "/shop/n", headers={"x-api-key": key})
    assert response.status_code == 200 and response.text == "1"
    assert httpx.get(second.endpoint + "/shop/n").status_code == 403


def test_lambda_client_error_shape_unchanged_for_signed_unknown_paths(
    server: RunningServer, lam: object
) -> None:
    with pytest.raises(ClientError):
        lam.get_function(FunctionName="nope")  # type: ignore[attr-defined]
    assert json.loads(httpx.get(server.endpoint + "/healthz").text) == {"status": "ok"}


def test_an_encoded_slash_stays_inside_its_segment(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # '%2F' is part of a segment, not a separator: '/a%2Fb' is one segment, 'a/b', for literal
    # routes as much as for path parameters
    deploy("echo")
    admin.add_route("GET /a/b", "echo")
    admin.add_route("GET /{page}", "echo")
    event = echoed(http.get("/a%2Fb"))
    assert event["routeKey"] == "GET /{page}" and event["pathParameters"] == {"page": "a/b"}
    assert event["rawPath"] == "/a%2Fb"
    assert echoed(http.get("/a/b"))["routeKey"] == "GET /a/b"
    assert echoed(http.get("/a%62"))["routeKey"] == "GET /{page}"  # 'ab'
    admin.add_route("GET /c/d", "echo")
    assert echoed(http.get("/c/%64"))["routeKey"] == "GET /c/d"  # an escaped letter is a letter


def test_v1_refuses_fields_it_would_ignore(deploy: Deploy, admin: Client) -> None:
    # a PATCH of something that cannot change, or a misspelt setting, is an error — it was
    # answered 200 and silently dropped
    deploy("echo")
    admin.create_api("shop", base_path="/shop")
    for call in (
        lambda: admin.update_api("shop", base_path="/elsewhere"),
        lambda: admin.update_api("shop", rate_limt=5),
        lambda: admin.create_api("other", base_path="/other", stages="prod"),
        lambda: admin.request(
            "POST",
            "/v1/routes",
            json_body={"route_key": "GET /x", "target": "echo", "timeout": 100},
        ),
        lambda: admin.request("POST", "/v1/api-keys", json_body={"name": "k", "apis": "shop"}),
    ):
        with pytest.raises(GureumError) as raised:
            call()
        assert raised.value.status in (400, 422) and "Extra inputs" in raised.value.message
    assert admin.list_apis()[-1]["base_path"] == "/shop"
    assert [a["name"] for a in admin.list_apis()] == ["shop"]
    assert admin.list_routes() == [] and admin.list_api_keys() == []


def test_event_has_the_forwarded_headers_aws_adds(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.add_route("GET /fwd", "echo")
    headers = echoed(http.get("/fwd"))["headers"]
    port = server.endpoint.rsplit(":", 1)[1]
    assert headers.get("x-forwarded-proto") == "http"
    assert headers.get("x-forwarded-port") == port
    assert headers.get("x-forwarded-for") == "127.0.0.1"


def test_a_body_cut_short_by_a_disconnect_invokes_nothing(
    server: RunningServer, deploy: Deploy, admin: Client
) -> None:
    deploy("echo")
    admin.add_route("POST /orders", "echo")
    host, port = server.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(
            b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 40\r\n\r\n{"item": "tea", "qu'
        )
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert admin.invocations("echo") == [], "the function ran on half a request"
        time.sleep(0.1)


def test_plus_in_a_query_string_is_a_space(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    admin.add_route("GET /search", "echo")
    event = echoed(http.get("/search", params={"q": "two words", "tag": "c++"}))
    assert event["rawQueryString"] == "q=two+words&tag=c%2B%2B"
    assert event["queryStringParameters"] == {"q": "two words", "tag": "c++"}


def test_a_returned_string_is_the_body_itself(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("returns", RETURNS)
    admin.add_route("GET /r/{kind}", "returns")
    text = http.get("/r/string")
    assert text.status_code == 200 and text.headers["content-type"] == "application/json"
    assert text.text == "just text"


def test_no_body_on_204_and_304_and_no_1xx_final_status(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy(
        "status",
        "def handler(event, context):\n"
        "    code = int(event['pathParameters']['code'])\n"
        "    return {'statusCode': code, 'body': '{}'}\n",
    )
    admin.add_route("GET /status/{code}", "status")
    for code in (204, 304):
        assert http.get(f"/status/{code}").status_code == code
        # the same keep-alive connection still works
        assert http.get("/status/200").text == "{}"
    response = http.get("/status/100")
    assert response.status_code == 500
    assert response.json() == {"message": "Internal Server Error"}


def test_invalid_response_header_names_are_a_500_not_a_dropped_connection(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy(
        "headers",
        "def handler(event, context):\n"
        "    k = event['pathParameters']['k']\n"
        "    headers = {'space': {'bad name': '1'}, 'colon': {'x:y': '1'},\n"
        "               'nul': {'x-nul': 'a\\x00b'}}[k]\n"
        "    return {'statusCode': 200, 'headers': headers, 'body': 'ok'}\n",
    )
    admin.add_route("GET /h/{k}", "headers")
    for kind in ("space", "colon", "nul"):
        response = http.get(f"/h/{kind}")
        assert response.status_code == 500, kind
        assert response.json() == {"message": "Internal Server Error"}


def test_a_greedy_variable_takes_an_empty_remainder(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # AWS routes a stage's root to 'ANY /{proxy+}' with pathParameters {"proxy": ""}: a
    # FastAPI app behind it serves '/' (it was 404), and '/files/' reaches '/files/{path+}'
    deploy("echo")
    admin.add_route("ANY /{proxy+}", "echo")
    admin.add_route("GET /files/{path+}", "echo")
    root = echoed(http.get("/"))
    assert root["routeKey"] == "ANY /{proxy+}" and root["pathParameters"] == {"proxy": ""}
    assert root["rawPath"] == "/"
    files = echoed(http.get("/files/"))
    assert files["routeKey"] == "GET /files/{path+}" and files["pathParameters"] == {"path": ""}
    bare = echoed(http.get("/files"))  # no slash: not below /files, so the catch-all
    assert bare["routeKey"] == "ANY /{proxy+}" and bare["pathParameters"] == {"proxy": "files"}
    below = echoed(http.get("/files/a/b/"))
    assert below["pathParameters"] == {"path": "a/b/"}


def test_domain_name_of_an_ipv6_host(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.add_route("GET /where", "echo")
    context = echoed(http.get("/where", headers={"Host": "[::1]:8070"}))["requestContext"]
    assert context["domainName"] == "[::1]"


def test_a_comma_inside_a_cookie_stays_in_it(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # cookies are separated by ';' within a Cookie header; only the joins between several
    # Cookie headers are commas, so a ',' in one value is not a separator (it split 'a')
    deploy("echo")
    admin.add_route("GET /jar", "echo")
    event = echoed(http.get("/jar", headers=[("Cookie", "a=x,y; b=2;"), ("Cookie", "c=3, d=4")]))
    assert event["cookies"] == ["a=x,y", "b=2", "c=3, d=4"]
    assert "cookie" not in event["headers"]


HEAD_AWARE = """
def handler(event, context):
    return {"statusCode": 200, "headers": {"x-method": event["requestContext"]["http"]["method"]},
            "body": "twelve bytes"}
"""


def test_head_takes_only_a_head_any_or_default_route(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # AWS's HTTP APIs select a route by the request's method and path, with ANY for the
    # methods a path does not name and $default for the rest: a GET route does not take HEAD
    deploy("head-aware", HEAD_AWARE)
    admin.add_route("GET /only-get", "head-aware")
    admin.add_route("ANY /any", "head-aware")
    admin.add_route("HEAD /head", "head-aware")
    response = http.head("/only-get")
    assert response.status_code == 404 and response.content == b""
    for path in ("/any", "/head"):
        response = http.head(path)
        assert response.status_code == 200, path
        assert response.headers["x-method"] == "HEAD"
        assert response.headers["content-length"] == "12"  # what a GET would get
    # whatever the function returns, no body goes on the wire: the next response on the
    # same connection starts right after the HEAD response's headers
    host, port = server.endpoint.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"HEAD /any HTTP/1.1\r\nHost: x\r\n\r\nGET /any HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while not received.endswith(b"twelve bytes"):
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
    head, rest = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"x-method: HEAD" in head
    assert rest.startswith(b"HTTP/1.1 200") and b"x-method: GET" in rest
    assert received.count(b"twelve bytes") == 1
