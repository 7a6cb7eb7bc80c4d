"""Lambda API, authentication: SigV4 from boto3 is required everywhere but /healthz."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore import UNSIGNED
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from lambda_testkit import Deploy, error_of, payload_of


@pytest.fixture
def make_client(server: Any) -> Iterator[Any]:
    """boto3 Lambda clients with chosen credentials or signing config; closed afterwards."""
    clients: list[Any] = []

    def make(**overrides: Any) -> Any:
        client = boto3.client(
            "lambda",
            endpoint_url=server.endpoint,
            region_name=server.settings.region,
            aws_access_key_id=overrides.pop("key", server.platform.root.access_key_id),
            aws_secret_access_key=overrides.pop("secret", server.platform.root.secret_access_key),
            config=Config(retries={"max_attempts": 0, "mode": "standard"}, **overrides),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def test_wrong_secret_is_invalid_signature(lam: Any, deploy: Deploy, make_client: Any) -> None:
    deploy("guarded")
    intruder = make_client(secret="x" * 40)
    for call in (
        lambda: intruder.list_functions(),
        lambda: intruder.invoke(FunctionName="guarded", Payload=b"{}"),
        lambda: intruder.delete_function(FunctionName="guarded"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo) == ("InvalidSignatureException", 403)
    assert payload_of(lam.invoke(FunctionName="guarded"))["count"] == 1  # it never ran


def test_unknown_access_key_is_unrecognized(lam: Any, deploy: Deploy, make_client: Any) -> None:
    deploy("guarded")
    stranger = make_client(key="AKIAUNKNOWNKEY000000", secret="y" * 40)
    for call in (
        lambda: stranger.list_functions(),
        lambda: stranger.invoke(FunctionName="guarded", Payload=b"{}"),
    ):
        with pytest.raises(ClientError) as excinfo:
            call()
        assert error_of(excinfo) == ("UnrecognizedClientException", 403)
    assert lam.get_function(FunctionName="guarded")["Configuration"]["FunctionName"] == "guarded"


def test_unsigned_requests_are_refused(
    server: Any, lam: Any, deploy: Deploy, make_client: Any
) -> None:
    deploy("guarded")
    for method, path, body in (
        ("GET", "/2015-03-31/functions/", b""),
        ("POST", "/2015-03-31/functions/guarded/invocations", b"{}"),
        ("DELETE", "/2015-03-31/functions/guarded", b""),
        ("GET", "/v1/events", b""),
    ):
        response = httpx.request(method, server.endpoint + path, content=body, timeout=10)
        assert response.status_code == 403, path
        assert response.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert response.json()["message"] == "Missing Authentication Token"

    anonymous = make_client(signature_version=UNSIGNED)
    with pytest.raises(ClientError) as excinfo:
        anonymous.list_functions()
    assert error_of(excinfo) == ("MissingAuthenticationTokenException", 403)

    assert payload_of(lam.invoke(FunctionName="guarded"))["count"] == 1  # nothing ran
    assert lam.get_function(FunctionName="guarded")


def test_body_changed_after_signing_is_refused(server: Any, lam: Any, deploy: Deploy) -> None:
    deploy("guarded")
    root = server.platform.root
    url = server.endpoint + "/2015-03-31/functions/guarded/invocations"
    request = AWSRequest(method="POST", url=url, data=b'{"amount": 1}')
    SigV4Auth(
        Credentials(root.access_key_id, root.secret_access_key), "lambda", server.settings.region
    ).add_auth(request)
    headers = dict(request.headers.items())
    tampered = httpx.post(url, content=b'{"amount": 1000}', headers=headers, timeout=10)
    assert tampered.status_code == 403
    assert tampered.headers["x-amzn-ErrorType"] == "InvalidSignatureException"
    genuine = httpx.post(url, content=b'{"amount": 1}', headers=headers, timeout=10)
    assert genuine.status_code == 200
    assert json.loads(genuine.content)["event"] == {"amount": 1}
    assert json.loads(genuine.content)["count"] == 1


def test_healthz_needs_no_credentials(server: Any) -> None:
    response = httpx.get(server.endpoint + "/healthz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
