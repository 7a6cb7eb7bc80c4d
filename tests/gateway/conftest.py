"""Fixtures for the Lambda API tests: deploy functions, a non-validating client, raw requests.

Everything goes through the real server and the real boto3 `lambda` client; raw httpx requests
(signed with botocore's own SigV4 signer) are used only for what boto3 cannot send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from lambda_testkit import ROLE, Deploy, SignedCall


@pytest.fixture
def deploy(lam: Any, echo_zip: bytes) -> Deploy:
    """Create a function through boto3 (the echo code at app.handler unless told otherwise)."""

    def create(
        name: str,
        code: bytes | None = None,
        handler: str = "app.handler",
        runtime: str = "python3.11",
        **extra: Any,
    ) -> dict[str, Any]:
        created: dict[str, Any] = lam.create_function(
            FunctionName=name,
            Runtime=runtime,
            Role=ROLE,
            Handler=handler,
            Code={"ZipFile": echo_zip if code is None else code},
            **extra,
        )
        return created

    return create


@pytest.fixture
def raw_lam(server: Any) -> Iterator[Any]:
    """A boto3 Lambda client with client-side parameter validation off, to reach the server's."""
    root = server.platform.root
    client = boto3.client(
        "lambda",
        endpoint_url=server.endpoint,
        region_name=server.settings.region,
        aws_access_key_id=root.access_key_id,
        aws_secret_access_key=root.secret_access_key,
        config=Config(retries={"max_attempts": 0, "mode": "standard"}, parameter_validation=False),
    )
    yield client
    client.close()


@pytest.fixture
def signed(server: Any) -> SignedCall:
    """Send a raw HTTP request signed with the root keys by botocore's SigV4 signer."""

    def call(
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> httpx.Response:
        root = server.platform.root
        url = server.endpoint + path
        request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
        credentials = Credentials(root.access_key_id, root.secret_access_key)
        SigV4Auth(credentials, "lambda", server.settings.region).add_auth(request)
        return httpx.request(
            method, url, content=body, headers=dict(request.headers.items()), timeout=timeout
        )

    return call
