"""Fixtures for the API gateway tests: a real server, the SDK client for /v1, plain httpx for
user routes, and functions deployed from small handler sources."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from gureum.client import Client
from tests.conftest import RunningServer, make_zip

# Returns the event it got, so tests can look at payload format 2.0 exactly.
EVENT_ECHO = """
import json
def handler(event, context):
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(event)}
"""

Deploy = Callable[..., str]


@pytest.fixture
def admin(server: RunningServer) -> Iterator[Client]:
    """The SDK client with the root keys (what the CLI uses)."""
    root = server.platform.root
    with Client(
        server.endpoint, root.access_key_id, root.secret_access_key, region=server.settings.region
    ) as client:
        yield client


@pytest.fixture
def http(server: RunningServer) -> Iterator[httpx.Client]:
    """A plain, unsigned HTTP client for user routes."""
    with httpx.Client(base_url=server.endpoint, timeout=30) as client:
        yield client


@pytest.fixture
def deploy(admin: Client) -> Deploy:
    """Deploy `source` as `app.py` (handler app.handler), or a prebuilt zip."""

    def create(
        name: str, source: str = EVENT_ECHO, zip_bytes: bytes | None = None, **kw: Any
    ) -> str:
        code = zip_bytes if zip_bytes is not None else make_zip({"app.py": source})
        admin.create_function(name, code, "app.handler", **kw)
        return name

    return create


def echoed(response: httpx.Response) -> dict[str, Any]:
    """The event an EVENT_ECHO function received."""
    assert response.status_code == 200, response.text
    event: dict[str, Any] = response.json()
    return event
