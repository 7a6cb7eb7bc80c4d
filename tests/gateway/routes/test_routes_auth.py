"""Per-route authorization over real HTTP: API keys, IAM (SigV4 execute-api), JWT, Lambda."""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from cryptography.hazmat.primitives.asymmetric import rsa
from typer.testing import CliRunner

from gureum.cli.main import app
from gureum.client import Client
from gureum.errors import InvalidParameterValue
from gureum.gateway import route_auth
from gureum.store.schema import gateway_routes
from tests.cli.test_cli import cli_env
from tests.conftest import RunningServer, free_port, make_zip
from tests.gateway.routes.conftest import Deploy, echoed

ISSUER = "https://issuer.example"
AUTHORIZER = """
import json
CALLS = 0
def handler(event, context):
    global CALLS
    CALLS += 1
    token = event["headers"].get("authorization")
    print("authorizer", json.dumps(event))
    if token == "crash":
        raise RuntimeError("authorizer broke")
    if token == "nan":  # json.dumps writes NaN: not JSON, so not an answer
        return {"isAuthorized": True, "context": {"score": float("nan")}}
    return {"isAuthorized": token == "let-me-in",
            "context": {"user": "u-1", "calls": CALLS, "type": event["type"],
                        "routeArn": event["routeArn"], "identity": event["identitySource"]}}
"""


def test_api_key_auth(deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.add_route("GET /secret", "echo", auth="api-key")
    admin.add_route("GET /open", "echo")
    created = admin.create_api_key("ci")
    key = created["key"]
    assert key.startswith("gk_") and created["hint"] == "…" + key[-4:]
    assert http.get("/open").status_code == 200
    for headers in ({}, {"x-api-key": "wrong"}, {"x-api-key": key[:-1]}):
        response = http.get("/secret", headers=headers)
        assert response.status_code == 403
        assert response.json() == {"message": "Forbidden"}
    event = echoed(http.get("/secret", headers={"x-api-key": key}))
    assert event["requestContext"]["authorizer"] == {
        "apiKey": {"keyId": created["key_id"], "name": "ci"}
    }
    # only the hash is kept, and listings never show the key
    listed = admin.list_api_keys()
    assert listed[0]["key_id"] == created["key_id"] and "key" not in listed[0]
    # a key of another API does not open this one
    admin.create_api("other", base_path="/other")
    other = admin.create_api_key("x", api="other")["key"]
    assert http.get("/secret", headers={"x-api-key": other}).status_code == 403
    admin.delete_api_key(created["key_id"])
    assert http.get("/secret", headers={"x-api-key": key}).status_code == 403


def _signed(
    server: RunningServer, method: str, path: str, service: str, body: bytes = b""
) -> httpx.Response:
    root = server.platform.root
    url = server.endpoint + path
    request = AWSRequest(method=method, url=url, data=body)
    SigV4Auth(
        Credentials(root.access_key_id, root.secret_access_key), service, server.settings.region
    ).add_auth(request)
    return httpx.request(method, url, content=body, headers=dict(request.headers.items()))


def test_iam_auth(server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client) -> None:
    deploy("echo")
    admin.add_route("POST /iam/{id}", "echo", auth="iam")
    unsigned = http.post("/iam/1", content=b"{}")
    assert unsigned.status_code == 403
    assert unsigned.json() == {"message": "Missing Authentication Token"}
    event = echoed(_signed(server, "POST", "/iam/1", "execute-api", b'{"a": 1}'))
    iam = event["requestContext"]["authorizer"]["iam"]
    assert iam["accessKey"] == server.platform.root.access_key_id
    assert iam["accountId"] == admin.whoami()["account_id"]
    # no content-type: the body is passed as binary (base64), as AWS does
    assert event["isBase64Encoded"] and base64.b64decode(event["body"]) == b'{"a": 1}'
    # a signature that does not hold (the body changed after signing)
    root = server.platform.root
    request = AWSRequest(method="POST", url=server.endpoint + "/iam/1", data=b"one")
    SigV4Auth(
        Credentials(root.access_key_id, root.secret_access_key), "execute-api", "us-east-1"
    ).add_auth(request)
    tampered = httpx.post(
        server.endpoint + "/iam/1", content=b"two", headers=dict(request.headers.items())
    )
    assert tampered.status_code == 403
    assert "signature" in tampered.json()["message"].lower()
    # unknown key
    request = AWSRequest(method="POST", url=server.endpoint + "/iam/1", data=b"")
    SigV4Auth(Credentials("AKIDUNKNOWN", "x"), "execute-api", "us-east-1").add_auth(request)
    response = httpx.post(server.endpoint + "/iam/1", headers=dict(request.headers.items()))
    assert response.status_code == 403


@pytest.fixture
def rsa_keys() -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public_jwk.update({"kid": "k1", "alg": "RS256", "use": "sig"})
    return private, {"keys": [public_jwk]}


def _token(private: Any, **claims: Any) -> str:
    body = {"iss": ISSUER, "aud": "my-app", "sub": "user-7", "exp": time.time() + 300, **claims}
    return jwt.encode(body, private, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def jwks_server(rsa_keys: tuple[Any, dict[str, Any]]) -> Iterator[tuple[str, list[int]]]:
    document = json.dumps(rsa_keys[1]).encode()
    hits: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(1)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(document)))
            self.end_headers()
            self.wfile.write(document)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/.well-known/jwks.json", hits
    httpd.shutdown()
    httpd.server_close()


def test_jwt_auth_with_static_keys_and_jwks_url(
    deploy: Deploy,
    admin: Client,
    http: httpx.Client,
    rsa_keys: tuple[Any, dict[str, Any]],
    jwks_server: tuple[str, list[int]],
) -> None:
    private, jwks = rsa_keys
    url, hits = jwks_server
    deploy("echo")
    spec = {"kind": "jwt", "issuer": ISSUER, "audience": ["my-app"]}
    admin.add_route("GET /static", "echo", auth={**spec, "jwks": jwks})
    admin.add_route("GET /remote", "echo", auth={**spec, "jwks_url": url})
    admin.add_route("GET /scoped", "echo", auth={**spec, "jwks": jwks, "scopes": ["write"]})

    good = _token(private, scope="read write", groups=["a", "b"], n=3)
    for path in ("/static", "/remote"):
        event = echoed(http.get(path, headers={"Authorization": f"Bearer {good}"}))
        claims = event["requestContext"]["authorizer"]["jwt"]["claims"]
        assert claims["sub"] == "user-7" and claims["iss"] == ISSUER
        assert claims["groups"] == "[a b]" and claims["n"] == "3"
        assert event["requestContext"]["authorizer"]["jwt"]["scopes"] == ["read", "write"]
    # the JWKS is fetched once and cached
    echoed(http.get("/remote", headers={"Authorization": good}))
    assert len(hits) == 1
    assert echoed(http.get("/scoped", headers={"Authorization": f"Bearer {good}"}))

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad_tokens = [
        "",
        "Bearer",
        "Bearer not.a.jwt",
        f"Bearer {_token(private, exp=time.time() - 10)}",
        f"Bearer {_token(private, iss='https://evil.example')}",
        f"Bearer {_token(private, aud='someone-else')}",
        f"Bearer {_token(other_key)}",
        "Bearer "
        + jwt.encode({"iss": ISSUER, "aud": "my-app", "exp": time.time() + 60}, "s" * 32, "HS256"),
    ]
    for token in bad_tokens:
        response = http.get("/static", headers={"Authorization": token} if token else {})
        assert response.status_code == 401, token
        assert response.json() == {"message": "Unauthorized"}
    read_only = _token(private, scope="read")
    response = http.get("/scoped", headers={"Authorization": f"Bearer {read_only}"})
    assert response.status_code == 403 and response.json() == {"message": "Forbidden"}


def test_lambda_authorizer_with_cache(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    deploy("authz", AUTHORIZER)
    admin.add_route(
        "GET /cached/{id}",
        "echo",
        auth={
            "kind": "lambda:authz",
            "identity_source": ["$request.header.Authorization"],
            "ttl_s": 60,
        },
    )
    admin.add_route("GET /uncached", "echo", auth={"kind": "lambda:authz", "ttl_s": 0})

    missing = http.get("/cached/1")
    assert missing.status_code == 401 and missing.json() == {"message": "Unauthorized"}
    first = echoed(http.get("/cached/1", headers={"Authorization": "let-me-in"}))
    context = first["requestContext"]["authorizer"]["lambda"]
    assert context["user"] == "u-1" and context["type"] == "REQUEST"
    assert context["identity"] == ["let-me-in"]
    api_id = first["requestContext"]["apiId"]
    assert context["routeArn"].endswith(f":{api_id}/$default/GET/cached/1")  # the request's
    # the same identity within the TTL is answered from the cache (same `calls`)
    second = echoed(http.get("/cached/2", headers={"Authorization": "let-me-in"}))
    assert second["requestContext"]["authorizer"]["lambda"]["calls"] == context["calls"]
    denied = http.get("/cached/1", headers={"Authorization": "nope"})
    assert denied.status_code == 403 and denied.json() == {"message": "Forbidden"}
    # without caching every request asks the authorizer again
    a = echoed(http.get("/uncached", headers={"Authorization": "let-me-in"}))
    b = echoed(http.get("/uncached", headers={"Authorization": "let-me-in"}))
    calls = [e["requestContext"]["authorizer"]["lambda"]["calls"] for e in (a, b)]
    assert calls[1] == calls[0] + 1
    for token in ("crash", "nan"):
        broken = http.get("/uncached", headers={"Authorization": token})
        assert broken.status_code == 500 and broken.json() == {"message": "Internal Server Error"}
    records = admin.invocations("authz", limit=20)
    assert {r["trigger"] for r in records} == {"authorizer"}


POLICY_AUTHORIZER = """
def handler(event, context):
    token = event["headers"].get("authorization", "")
    arn = event["routeArn"]
    base = arn.rsplit("/", 2)[0]  # arn:…:api-id/stage
    statements = {
        "route": [{"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": arn}],
        "wildcard": [{"Action": ["execute-api:*"], "Effect": "Allow", "Resource": [base + "/*"]}],
        "other-route": [{"Action": "execute-api:Invoke", "Effect": "Allow",
                         "Resource": base + "/POST/elsewhere"}],
        "deny-wins": [{"Action": "*", "Effect": "Allow", "Resource": "*"},
                      {"Action": "execute-api:invoke", "Effect": "Deny", "Resource": arn}],
        "explicit-deny": {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": arn},
        "malformed": [{"Action": "execute-api:Invoke", "Effect": "Maybe", "Resource": arn}],
    }[token]
    return {"principalId": "user-7",
            "policyDocument": {"Version": "2012-10-17", "Statement": statements},
            "context": {"tier": "gold"}}
"""


def test_lambda_authorizer_iam_policy_responses(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    deploy("policy", POLICY_AUTHORIZER)
    admin.add_route("GET /p/{id}", "echo", auth={"kind": "lambda:policy", "ttl_s": 0})
    for token in ("route", "wildcard"):
        event = echoed(http.get("/p/1", headers={"Authorization": token}))
        assert event["requestContext"]["authorizer"]["lambda"] == {"tier": "gold"}
    for token in ("other-route", "deny-wins", "explicit-deny"):
        denied = http.get("/p/1", headers={"Authorization": token})
        assert denied.status_code == 403 and denied.json() == {"message": "Forbidden"}, token
    broken = http.get("/p/1", headers={"Authorization": "malformed"})
    assert broken.status_code == 500 and broken.json() == {"message": "Internal Server Error"}


def test_jwt_route_scopes_need_any_one_of_them(
    deploy: Deploy, admin: Client, http: httpx.Client, rsa_keys: tuple[Any, dict[str, Any]]
) -> None:
    # AWS: "If you configure scopes for a route, the token must include at least one of the
    # route's scopes."
    private, jwks = rsa_keys
    deploy("echo")
    spec = {"kind": "jwt", "issuer": ISSUER, "audience": ["my-app"], "jwks": jwks}
    admin.add_route("GET /orders", "echo", auth={**spec, "scopes": ["orders:write", "admin"]})
    for granted in (
        {"scope": "orders:write"},
        {"scope": "read admin"},
        {"scp": ["admin"]},  # Okta
        {"scp": "read admin"},  # Microsoft Entra ID
    ):
        token = _token(private, **granted)
        event = echoed(http.get("/orders", headers={"Authorization": f"Bearer {token}"}))
        assert event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "user-7"
    for granted in ({"scope": "orders:read"}, {}):
        token = _token(private, **granted)
        response = http.get("/orders", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 403 and response.json() == {"message": "Forbidden"}


def test_cached_policy_is_evaluated_for_each_route(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # AWS caches the authorizer's policy, not its verdict: a policy that allows only the
    # route it was asked about denies the other routes sharing the authorizer and identity.
    deploy("echo")
    deploy("policy", POLICY_AUTHORIZER)
    auth = {"kind": "lambda:policy", "identity_source": ["$request.header.Authorization"]}
    admin.add_route("GET /first", "echo", auth={**auth, "ttl_s": 300})
    admin.add_route("GET /second", "echo", auth={**auth, "ttl_s": 300})
    assert echoed(http.get("/first", headers={"Authorization": "route"}))
    denied = http.get("/second", headers={"Authorization": "route"})
    assert denied.status_code == 403 and denied.json() == {"message": "Forbidden"}
    # and a cached policy that allows every route of the API still allows them all
    for path in ("/first", "/second"):
        event = echoed(http.get(path, headers={"Authorization": "wildcard"}))
        assert event["requestContext"]["authorizer"]["lambda"] == {"tier": "gold"}
    # a denial cached for one route does not shut the other, which the policy allows
    admin.add_route("POST /elsewhere", "echo", auth={**auth, "ttl_s": 300})
    assert http.get("/first", headers={"Authorization": "other-route"}).status_code == 403
    assert echoed(http.post("/elsewhere", headers={"Authorization": "other-route"}))


def test_lambda_authorizer_named_alone_reads_the_authorization_header(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # '/v1/routes' documents auth 'lambda:FUNCTION'; caching is on by default, so it needs
    # (and, like the CLI, defaults to) the Authorization header as identity source
    deploy("echo")
    deploy("authz", AUTHORIZER)
    route = admin.add_route("GET /guarded", "echo", auth="lambda:authz")
    assert route["auth"]["identity_source"] == ["$request.header.Authorization"]
    assert route["auth"]["ttl_s"] == 300
    assert http.get("/guarded").status_code == 401
    event = echoed(http.get("/guarded", headers={"Authorization": "let-me-in"}))
    assert event["requestContext"]["authorizer"]["lambda"]["identity"] == ["let-me-in"]
    assert http.get("/guarded", headers={"Authorization": "nope"}).status_code == 403
    # an explicitly empty identity source with caching is still refused
    with pytest.raises(InvalidParameterValue):
        admin.add_route("GET /empty", "echo", auth={"kind": "lambda:authz", "identity_source": []})


def test_an_uncached_lambda_authorizer_stays_uncached_after_a_restart(
    server_factory: Callable[..., RunningServer],
) -> None:
    # ttl_s 0 was left out of the stored settings, so a restart read the default (300): the
    # route came back caching, and needing an identity source it never had
    first = server_factory()
    root = first.platform.root
    with Client(first.endpoint, root.access_key_id, root.secret_access_key) as admin:
        admin.create_function(
            "echo", make_zip({"app.py": "def handler(e, c):\n    return 1\n"}), "app.handler"
        )
        admin.create_function("authz", make_zip({"app.py": AUTHORIZER}), "app.handler")
        admin.add_route("GET /open", "echo", auth={"kind": "lambda:authz", "ttl_s": 0})
        assert admin.list_routes()[0]["auth"]["ttl_s"] == 0
        admin.add_route("GET /legacy", "echo", auth={"kind": "lambda:authz", "ttl_s": 0})

    async def save_as_earlier_versions_did() -> None:
        async with first.platform.routes.db.engine.begin() as conn:
            await conn.execute(
                gateway_routes.update()
                .where(gateway_routes.c.route_key == "GET /legacy")
                .values(auth=json.dumps({"kind": "lambda", "function": "authz"}))
            )

    first.run(save_as_earlier_versions_did())
    first.stop()
    second = server_factory(port=free_port())
    with Client(second.endpoint, root.access_key_id, root.secret_access_key) as admin:
        for route in admin.list_routes():
            assert route["auth"]["ttl_s"] == 0 and "identity_source" not in route["auth"]
    # no identity source: the authorizer is asked every time, with or without a header
    for path in ("/open", "/legacy"):
        allowed = httpx.get(second.endpoint + path, headers={"Authorization": "let-me-in"})
        assert allowed.text == "1"
        assert httpx.get(second.endpoint + path).status_code == 403


USERS_POLICY_AUTHORIZER = """
def handler(event, context):
    ctx = event["requestContext"]
    arn = f"arn:aws:execute-api:{REGION}:{ctx['accountId']}:{ctx['apiId']}/{ctx['stage']}"
    return {"principalId": "u",
            "policyDocument": {"Version": "2012-10-17", "Statement": [
                {"Action": "execute-api:Invoke", "Effect": "Allow",
                 "Resource": arn + "/GET/users/*"}]},
            "context": {"routeArn": event["routeArn"]}}
"""


def test_route_arn_names_the_request_method_and_path(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # As on AWS, routeArn is …/{stage}/{request method}{request path}: an authorizer's policy
    # for 'GET /users/*' works behind 'ANY /{proxy+}' (it was …/ANY/{proxy+}, which no policy
    # written for AWS names)
    region = server.settings.region
    deploy("echo")
    deploy("users-policy", f"REGION = {region!r}\n" + USERS_POLICY_AUTHORIZER)
    admin.add_route("ANY /{proxy+}", "echo", auth={"kind": "lambda:users-policy", "ttl_s": 0})
    event = echoed(http.get("/users/7"))
    ctx = event["requestContext"]
    assert ctx["authorizer"]["lambda"]["routeArn"] == (
        f"arn:aws:execute-api:{region}:{ctx['accountId']}:{ctx['apiId']}/$default/GET/users/7"
    )
    assert http.delete("/users/7").status_code == 403
    assert http.get("/admin").status_code == 403
    # below a base path and a stage, the path is the one below them, as AWS's is below the stage
    admin.create_api("shop", base_path="/shop", stage="prod")
    admin.add_route("GET /users/{id}", "echo", api="shop", auth="lambda:users-policy")
    event = echoed(http.get("/shop/prod/users/8", headers={"Authorization": "x"}))
    ctx = event["requestContext"]
    assert ctx["authorizer"]["lambda"]["routeArn"] == (
        f"arn:aws:execute-api:{region}:{ctx['accountId']}:{ctx['apiId']}/prod/GET/users/8"
    )


def test_identity_source_names_may_hold_dots(
    deploy: Deploy, admin: Client, http: httpx.Client, rsa_keys: tuple[Any, dict[str, Any]]
) -> None:
    # '$request.header.' is a prefix: the JWT authorizer read 'X-Amz.Token' as the header
    # 'Token' (it split at the last '.'), and every request was 401
    private, jwks = rsa_keys
    deploy("echo")
    deploy("authz", AUTHORIZER)
    spec = {"kind": "jwt", "issuer": ISSUER, "audience": ["my-app"], "jwks": jwks}
    admin.add_route(
        "GET /jwt", "echo", auth={**spec, "identity_source": "$request.header.X-Amz.Token"}
    )
    token = _token(private)
    event = echoed(http.get("/jwt", headers={"X-Amz.Token": f"Bearer {token}"}))
    assert event["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] == "user-7"
    assert http.get("/jwt", headers={"Token": f"Bearer {token}"}).status_code == 401
    # a Lambda authorizer's header and query string sources likewise
    sources = ["$request.header.X-Amz.Token", "$request.querystring.session.id"]
    admin.add_route(
        "GET /lambda", "echo", auth={"kind": "lambda:authz", "identity_source": sources, "ttl_s": 0}
    )
    headers = {"Authorization": "let-me-in", "X-Amz.Token": "t-1"}
    event = echoed(http.get("/lambda", params={"session.id": "s-1"}, headers=headers))
    assert event["requestContext"]["authorizer"]["lambda"]["identity"] == ["t-1", "s-1"]
    missing = http.get("/lambda", params={"id": "s-1"}, headers=headers)
    assert missing.status_code == 401


def test_routes_share_cached_answers_only_with_the_same_authorizer(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # The cache was keyed by the sources' values alone: a token cached for the header source
    # of one route let the same text through another route's query string source (AWS keeps
    # one cache per authorizer, and an authorizer has one identity source and one TTL).
    deploy("echo")
    deploy("authz", AUTHORIZER)  # allows the Authorization header 'let-me-in', whatever else

    def auth(source: str, ttl_s: int = 60) -> dict[str, Any]:
        return {"kind": "lambda:authz", "identity_source": [source], "ttl_s": ttl_s}

    admin.add_route("GET /by-header", "echo", auth=auth("$request.header.Authorization"))
    admin.add_route("GET /by-query", "echo", auth=auth("$request.querystring.token"))
    admin.add_route("GET /short", "echo", auth=auth("$request.header.Authorization", 1))
    first = echoed(http.get("/by-header", headers={"Authorization": "let-me-in"}))
    calls = first["requestContext"]["authorizer"]["lambda"]["calls"]
    denied = http.get("/by-query", params={"token": "let-me-in"})
    assert denied.status_code == 403 and denied.json() == {"message": "Forbidden"}
    # a route keeping answers 1 s does not take one cached for 60 s: the authorizer is asked
    short = echoed(http.get("/short", headers={"Authorization": "let-me-in"}))
    assert short["requestContext"]["authorizer"]["lambda"]["calls"] == calls + 2
    # and a route of the same authorizer does share the answer
    admin.add_route("GET /same", "echo", auth=auth("$request.header.Authorization"))
    same = echoed(http.get("/same", headers={"Authorization": "let-me-in"}))
    assert same["requestContext"]["authorizer"]["lambda"]["calls"] == calls


def test_a_fresh_policy_is_evaluated_once(
    monkeypatch: pytest.MonkeyPatch, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # On a cache miss the policy was evaluated twice: once to refuse a malformed one before
    # caching it, once for the request.
    evaluated: list[str] = []
    real = route_auth.policy_allows

    def counting(document: object, action: str, resource: str) -> bool:
        evaluated.append(resource)
        return real(document, action, resource)

    monkeypatch.setattr(route_auth, "policy_allows", counting)  # the server runs in-process
    deploy("echo")
    deploy("policy", POLICY_AUTHORIZER)
    admin.add_route("GET /once/{id}", "echo", auth={"kind": "lambda:policy", "ttl_s": 300})
    admin.add_route("GET /fresh", "echo", auth={"kind": "lambda:policy", "ttl_s": 0})
    assert echoed(http.get("/once/1", headers={"Authorization": "wildcard"}))
    assert len(evaluated) == 1
    # a cached policy is evaluated again, once, for each request
    assert echoed(http.get("/once/2", headers={"Authorization": "wildcard"}))
    assert len(evaluated) == 2 and evaluated[1].endswith("/GET/once/2")
    assert echoed(http.get("/fresh", headers={"Authorization": "route"}))
    assert len(evaluated) == 3
    # a malformed policy is still refused
    broken = http.get("/fresh", headers={"Authorization": "malformed"})
    assert broken.status_code == 500


def test_lambda_authorizer_caches_per_client_address(
    server: RunningServer, deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # '$context.identity.sourceIp' as the identity source (AWS allows $context variables for
    # Lambda authorizers): an answer is cached for the caller's address, whatever it sends
    deploy("echo")
    deploy("authz", AUTHORIZER)
    auth = {"kind": "lambda:authz", "identity_source": ["$context.identity.sourceIp"]}
    admin.add_route("GET /by-address", "echo", auth={**auth, "ttl_s": 60})
    first = echoed(http.get("/by-address", headers={"Authorization": "let-me-in"}))
    context = first["requestContext"]["authorizer"]["lambda"]
    assert context["identity"] == [first["requestContext"]["http"]["sourceIp"]] == ["127.0.0.1"]
    # the same address within the TTL is answered from the cache, the header notwithstanding
    again = echoed(http.get("/by-address", headers={"Authorization": "nope"}))
    assert again["requestContext"]["authorizer"]["lambda"]["calls"] == context["calls"]
    # another address is asked about anew, and its answer is its own
    other = httpx.Client(
        base_url=server.endpoint, transport=httpx.HTTPTransport(local_address="127.0.0.2")
    )
    with other:
        assert other.get("/by-address", headers={"Authorization": "nope"}).status_code == 403
        assert other.get("/by-address", headers={"Authorization": "let-me-in"}).status_code == 403
    assert echoed(http.get("/by-address"))["requestContext"]["authorizer"]["lambda"] == context


def test_context_identity_sources_are_the_events_request_context(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # every $context variable a route may name reads what the event's requestContext holds
    deploy("echo")
    deploy("authz", AUTHORIZER)
    admin.create_api("shop", base_path="/shop", stage="prod")
    names = [
        "$context.accountId",
        "$context.apiId",
        "$context.domainName",
        "$context.domainPrefix",
        "$context.httpMethod",
        "$context.identity.sourceIp",
        "$context.identity.userAgent",
        "$context.path",
        "$context.protocol",
        "$context.routeKey",
        "$context.stage",
    ]
    auth = {"kind": "lambda:authz", "identity_source": names, "ttl_s": 0}
    admin.add_route("POST /orders/{id}", "echo", api="shop", auth=auth)
    headers = {"Authorization": "let-me-in", "User-Agent": "tests/1"}
    event = echoed(http.post("/shop/prod/orders/7", headers=headers))
    ctx = event["requestContext"]
    expected = {
        "$context.accountId": ctx["accountId"],
        "$context.apiId": ctx["apiId"],
        "$context.domainName": "127.0.0.1",
        "$context.domainPrefix": "127",
        "$context.httpMethod": "POST",
        "$context.identity.sourceIp": "127.0.0.1",
        "$context.identity.userAgent": "tests/1",
        "$context.path": "/shop/prod/orders/7",
        "$context.protocol": "HTTP/1.1",
        "$context.routeKey": "POST /orders/{id}",
        "$context.stage": "prod",
    }
    assert dict(zip(names, ctx["authorizer"]["lambda"]["identity"], strict=True)) == expected
    assert (ctx["domainName"], ctx["domainPrefix"], ctx["http"]["path"]) == (
        "127.0.0.1",
        "127",
        "/shop/prod/orders/7",
    )


def test_lambda_authorizer_reads_a_stage_variable(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    deploy("echo")
    deploy("authz", AUTHORIZER)
    admin.create_api("shop", base_path="/shop", stage_variables={"tenant": "acme"})
    auth = {"kind": "lambda:authz", "identity_source": ["$stageVariables.tenant"], "ttl_s": 60}
    admin.add_route("GET /orders", "echo", api="shop", auth=auth)
    first = echoed(http.get("/shop/orders", headers={"Authorization": "let-me-in"}))
    context = first["requestContext"]["authorizer"]["lambda"]
    assert context["identity"] == ["acme"]
    # the variable's value is the cache key: the same value is answered from the cache …
    cached = echoed(http.get("/shop/orders", headers={"Authorization": "nope"}))
    assert cached["requestContext"]["authorizer"]["lambda"]["calls"] == context["calls"]
    # … and another value asks the authorizer again
    admin.update_api("shop", stage_variables={"tenant": "globex"})
    anew = echoed(http.get("/shop/orders", headers={"Authorization": "let-me-in"}))
    answer = anew["requestContext"]["authorizer"]["lambda"]
    assert answer["identity"] == ["globex"] and answer["calls"] == context["calls"] + 1


def test_a_missing_stage_variable_is_401_without_asking_the_authorizer(
    deploy: Deploy, admin: Client, http: httpx.Client
) -> None:
    # as with a missing header: an identity source that resolves to nothing is 401, and the
    # authorizer is not invoked
    deploy("echo")
    deploy("authz", AUTHORIZER)
    admin.create_api("shop", base_path="/shop", stage_variables={"region": "eu"})
    auth = {"kind": "lambda:authz", "identity_source": ["$stageVariables.tenant"], "ttl_s": 0}
    admin.add_route("GET /orders", "echo", api="shop", auth=auth)
    admin.add_route("GET /count", "echo", api="shop", auth={"kind": "lambda:authz", "ttl_s": 0})
    missing = http.get("/shop/orders", headers={"Authorization": "let-me-in"})
    assert missing.status_code == 401 and missing.json() == {"message": "Unauthorized"}
    assert admin.invocations("authz") == []
    # the authorizer's first call is this one: the 401 above never reached it
    counted = echoed(http.get("/shop/count", headers={"Authorization": "let-me-in"}))
    assert counted["requestContext"]["authorizer"]["lambda"]["calls"] == 1
    assert len(admin.invocations("authz")) == 1


def test_unknown_context_identity_sources_are_refused_at_creation(
    server: RunningServer,
    deploy: Deploy,
    admin: Client,
    tmp_path: Path,
    rsa_keys: tuple[Any, dict[str, Any]],
) -> None:
    deploy("echo")
    deploy("authz", AUTHORIZER)
    with pytest.raises(InvalidParameterValue) as refused:
        admin.add_route(
            "GET /x", "echo", auth={"kind": "lambda:authz", "identity_source": ["$context.x"]}
        )
    assert "'$context.x'" in refused.value.message
    assert "$context.identity.sourceIp" in refused.value.message  # what it may be instead
    for source in ("$stageVariables.bad-name", "$stageVariables.", "$request.path.id"):
        with pytest.raises(
            InvalidParameterValue, match=re.escape("VARIABLE or $stageVariables.NAME")
        ):
            admin.add_route(
                "GET /x", "echo", auth={"kind": "lambda:authz", "identity_source": [source]}
            )
    # a JWT authorizer still reads its token from a header only
    _, jwks = rsa_keys
    jwt_auth = {"kind": "jwt", "issuer": ISSUER, "audience": ["my-app"], "jwks": jwks}
    for source in ("$context.identity.sourceIp", "$stageVariables.token"):
        with pytest.raises(
            InvalidParameterValue, match=re.escape("must be $request.header.NAME or")
        ):
            admin.add_route("GET /jwt", "echo", auth={**jwt_auth, "identity_source": source})
    assert admin.list_routes() == []
    # the CLI says why
    env = cli_env(server, tmp_path)
    args = ["route", "add", "GET /x", "echo", "--auth", "lambda:authz", "--identity-source"]
    result = CliRunner().invoke(app, [*args, "$context.x"], env=env)
    assert result.exit_code == 1
    assert "'$context.x': not a context variable" in result.stdout + result.stderr
    result = CliRunner().invoke(app, [*args, "$context.identity.sourceIp"], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    route = admin.list_routes()[0]
    assert route["auth"]["identity_source"] == ["$context.identity.sourceIp"]
