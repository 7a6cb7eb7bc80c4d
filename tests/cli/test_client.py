"""The SDK `Client` against a real server: signing, all pages, errors rebuilt, configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import gureum
from gureum.client import DEFAULT_ENDPOINT, Client
from gureum.errors import (
    AuthError,
    ClientError,
    ConfigurationError,
    InvalidParameterValue,
    InvalidRequestContent,
    ResourceConflict,
    ResourceNotFound,
    ServiceError,
)
from tests.conftest import ECHO, RunningServer, free_port, make_zip


@pytest.fixture
def client(server: RunningServer) -> Any:
    root = server.platform.root
    with Client(server.endpoint, root.access_key_id, root.secret_access_key) as client:
        yield client


def test_client_is_the_public_sdk() -> None:
    assert gureum.Client is Client
    assert "Client" in gureum.__all__


def test_functions_versions_aliases_round_trip(client: Client, echo_zip: bytes) -> None:
    created = client.create_function(
        "echo", echo_zip, "app.handler", memory_mb=256, environment={"AB": "1"}, publish=True
    )
    assert (created["Version"], created["MemorySize"]) == ("1", 256)
    updated = client.update_function_configuration("echo", timeout_s=7, description="d")
    assert (updated["Timeout"], updated["Description"], updated["MemorySize"]) == (7, "d", 256)
    client.update_function_code("echo", make_zip({"app.py": ECHO + "\n# v2\n"}))
    assert client.publish_version("echo", "second")["Version"] == "2"
    assert [v["Version"] for v in client.list_versions("echo")] == ["$LATEST", "1", "2"]
    assert client.get_function("echo", "1")["Configuration"]["Version"] == "1"
    # a qualifier inside the name travels percent-encoded and still verifies
    assert client.get_function("echo:2")["Configuration"]["Description"] == "second"

    client.create_alias("echo", "live", "1", weights={"2": 0.25})
    assert client.get_alias("echo", "live")["RoutingConfig"] == {
        "AdditionalVersionWeights": {"2": 0.25}
    }
    moved = client.update_alias("echo", "live", version="2", weights={})
    assert moved["FunctionVersion"] == "2" and "RoutingConfig" not in moved
    assert [a["Name"] for a in client.list_aliases("echo")] == ["live"]

    result = client.invoke("echo", json.dumps({"k": "v"}).encode(), qualifier="live", log_tail=True)
    assert result.status == 200 and result.function_error is None
    assert result.executed_version == "2"
    body = result.json()
    assert body["event"] == {"k": "v"} and body["request_id"] == result.request_id
    assert result.log is not None and f"END RequestId: {result.request_id}" in result.log

    client.delete_alias("echo", "live")
    client.delete_function("echo", "1")
    assert [v["Version"] for v in client.list_versions("echo")] == ["$LATEST", "2"]
    client.delete_function("echo")
    with pytest.raises(ResourceNotFound):
        client.get_function("echo")


def test_list_functions_walks_every_page(client: Client, echo_zip: bytes) -> None:
    names = [f"fn{i}" for i in range(5)]
    for name in names:
        client.create_function(name, echo_zip, "app.handler")
    client.page_size = 2
    assert [f["FunctionName"] for f in client.list_functions()] == names


def test_invoke_types_and_management_calls(client: Client, echo_zip: bytes) -> None:
    client.create_function("echo", echo_zip, "app.handler")
    assert client.invoke("echo", b"{}", invocation_type="DryRun").status == 204
    queued = client.invoke("echo", b'{"async": true}', invocation_type="Event")
    assert queued.status == 202 and queued.request_id and queued.payload == b""
    failed = client.invoke("echo", b'{"fail": "no"}')
    assert failed.function_error == "Unhandled"
    assert failed.json()["errorType"] == "ValueError"

    records = client.invocations("echo", limit=10)
    assert failed.request_id in {r["request_id"] for r in records}
    logs = client.logs("echo", request_id=failed.request_id)
    assert len(logs) == 1 and "ValueError" in logs[0]["log"]
    assert client.logs("echo", after=logs[0]["seq"], request_id=failed.request_id) == []
    assert client.set_scaling("echo", reserved_concurrency=2) == {
        "min_instances": 0,
        "reserved_concurrency": 2,
    }
    assert client.get_function("echo")["Concurrency"] == {"ReservedConcurrentExecutions": 2}
    assert any(e["request_id"] == queued.request_id for e in client.events())
    assert client.doctor()["checks"]


def test_errors_are_rebuilt_as_gureum_errors(
    client: Client, server: RunningServer, echo_zip: bytes
) -> None:
    with pytest.raises(ResourceNotFound) as missing:
        client.invoke("missing", b"{}")
    assert missing.value.code == "ResourceNotFoundException" and "missing" in missing.value.message
    client.create_function("echo", echo_zip, "app.handler")
    with pytest.raises(ResourceConflict):
        client.create_function("echo", echo_zip, "app.handler")
    with pytest.raises(InvalidParameterValue) as invalid:
        client.update_function_configuration("echo", memory_mb=1)
    assert invalid.value.status == 400 and "memorySize" in invalid.value.message
    with pytest.raises(InvalidRequestContent):
        client.invoke("echo", b"{not json")
    with pytest.raises(ClientError) as unprocessable:
        client.request("GET", "/v1/functions/echo/invocations", query={"limit": 0})
    assert unprocessable.value.status == 422 and "limit" in unprocessable.value.message

    root = server.platform.root
    bad = Client(server.endpoint, root.access_key_id, "wrong-secret")
    with bad, pytest.raises(AuthError) as refused:
        bad.list_functions()
    assert refused.value.code == "InvalidSignatureException" and refused.value.status == 403


def test_session_credentials_sign_with_a_token(server: RunningServer) -> None:
    platform = server.platform
    key, secret, token = platform.sessions.issue(platform.root.account_id, "function:test")
    with Client(server.endpoint, key, secret, session_token=token) as client:
        assert client.whoami() == {
            "account_id": platform.root.account_id,
            "principal": "function:test",
            "access_key_id": key,
        }
    with Client(server.endpoint, key, secret) as tokenless, pytest.raises(AuthError) as refused:
        tokenless.whoami()
    assert refused.value.code == "UnrecognizedClientException"


def test_unreachable_endpoint_names_it_and_suggests_up() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    client = Client(endpoint, "AKIAEXAMPLE", "secret-example")
    with client, pytest.raises(ServiceError) as down:
        client.whoami()
    assert down.value.code == "EndpointUnreachable"
    assert endpoint in down.value.message and "gureum up" in down.value.message


def test_from_environment_precedence(tmp_path: Path) -> None:
    (tmp_path / "endpoint").write_text("http://127.0.0.1:9999\n")
    (tmp_path / "root-credentials.json").write_text(
        json.dumps({"access_key_id": "AKIAFILE", "secret_access_key": "s", "account_id": "1"})
    )
    env = {"GUREUM_DATA_DIR": str(tmp_path)}
    from_files = Client.from_environment(env)
    assert (from_files.endpoint, from_files.access_key_id) == ("http://127.0.0.1:9999", "AKIAFILE")
    aws = Client.from_environment(
        {
            **env,
            "AWS_ENDPOINT_URL": "http://aws.example:1/",
            "AWS_ACCESS_KEY_ID": "AKIAENV",
            "AWS_SECRET_ACCESS_KEY": "x",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (aws.endpoint, aws.access_key_id, aws.region) == (
        "http://aws.example:1",
        "AKIAENV",
        "eu-west-1",
    )
    gureum_first = Client.from_environment(
        {**env, "GUREUM_ENDPOINT": "http://g:2", "AWS_ENDPOINT_URL": "http://a:3"}
    )
    assert gureum_first.endpoint == "http://g:2"
    explicit_dir = Client.from_environment({}, data_dir=tmp_path)
    assert explicit_dir.access_key_id == "AKIAFILE"
    keys = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    default = Client.from_environment(keys, data_dir=tmp_path / "none")
    assert default.endpoint == DEFAULT_ENDPOINT
    for client in (from_files, aws, gureum_first, explicit_dir, default):
        client.close()
    with pytest.raises(ConfigurationError, match="no credentials"):
        Client.from_environment({}, data_dir=tmp_path / "none")
    (tmp_path / "root-credentials.json").write_text("{}")
    with pytest.raises(ConfigurationError, match="not a valid root credentials file"):
        Client.from_environment(env)
    with pytest.raises(ConfigurationError, match="http"):
        Client("127.0.0.1:8070", "a", "b")
