"""`Dispatcher.invoke()` against a real server: what the warm path may skip and what it may not."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError

from tests.conftest import RunningServer

ROLE = "arn:aws:iam::123456789012:role/lambda-role"


def _payload(response: dict[str, Any]) -> Any:
    return json.loads(response["Payload"].read())


def test_deleted_package_is_detected_when_an_instance_starts(
    server: RunningServer, lam: Any, echo_zip: bytes
) -> None:
    lam.create_function(
        FunctionName="pkg",
        Runtime="python3.11",
        Role=ROLE,
        Handler="app.handler",
        Code={"ZipFile": echo_zip},
    )
    assert _payload(lam.invoke(FunctionName="pkg"))["count"] == 1
    platform = server.platform
    config = platform.registry.peek_latest(platform.root.account_id, "pkg")
    platform.packages.delete(config.code_sha256)

    # the warm instance loaded its code already: it may keep serving
    assert _payload(lam.invoke(FunctionName="pkg"))["count"] == 2

    # but a second, concurrent invocation needs a new instance, which has no code to start from
    def slow_invoke(_: int) -> Any:
        return server.client("lambda").invoke(
            FunctionName="pkg", Payload=json.dumps({"sleep": 1.0}).encode()
        )

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(slow_invoke, n) for n in range(2)]
    errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    assert len(failed) == 1, errors
    assert isinstance(failed[0], ClientError)
    assert failed[0].response["Error"]["Code"] == "ServiceException"
    assert "missing from the store" in failed[0].response["Error"]["Message"]
