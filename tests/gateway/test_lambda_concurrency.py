"""Lambda API, reserved concurrency and throttling (429 TooManyRequestsException)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lambda_testkit import ROLE, Deploy, error_of, payload_of


def test_concurrency_get_put_delete(lam: Any, raw_lam: Any, deploy: Deploy) -> None:
    deploy("limited")
    initial = lam.get_function_concurrency(FunctionName="limited")
    assert "ReservedConcurrentExecutions" not in initial

    put = lam.put_function_concurrency(FunctionName="limited", ReservedConcurrentExecutions=5)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ReservedConcurrentExecutions"] == 5
    assert lam.get_function_concurrency(FunctionName="limited")["ReservedConcurrentExecutions"] == 5

    for bad in (-1, "5", None, 1.5):
        with pytest.raises(ClientError) as excinfo:
            raw_lam.put_function_concurrency(
                FunctionName="limited", ReservedConcurrentExecutions=bad
            )
        assert error_of(excinfo) == ("InvalidParameterValueException", 400), bad
    assert lam.get_function_concurrency(FunctionName="limited")["ReservedConcurrentExecutions"] == 5

    deleted = lam.delete_function_concurrency(FunctionName="limited")
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in lam.get_function_concurrency(
        FunctionName="limited"
    )


def test_zero_reserved_concurrency_throttles_every_invoke(lam: Any, deploy: Deploy) -> None:
    deploy("stopped")
    deploy("running")
    lam.put_function_concurrency(FunctionName="stopped", ReservedConcurrentExecutions=0)
    with pytest.raises(ClientError) as excinfo:
        lam.invoke(FunctionName="stopped", Payload=b"{}")
    assert error_of(excinfo) == ("TooManyRequestsException", 429)
    response: Any = excinfo.value.response
    assert response["Reason"] == "ReservedFunctionConcurrentInvocationLimitExceeded"
    assert response["Type"] == "User"
    assert response["retryAfterSeconds"]  # modeled as the Retry-After header
    # other functions are unaffected
    assert payload_of(lam.invoke(FunctionName="running"))["count"] == 1

    lam.delete_function_concurrency(FunctionName="stopped")
    result = lam.invoke(FunctionName="stopped", Payload=b"{}")
    assert payload_of(result)["count"] == 1  # nothing ran while it was throttled


def _invoke_together(lam: Any, name: str, count: int, sleep_s: float) -> list[Any]:
    """Start `count` invocations at the same moment; return each result or ClientError."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = lam.invoke(
                FunctionName=name, Payload=f'{{"sleep": {sleep_s}}}'.encode()
            )
        except ClientError as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrency_one_without_queue_throttles_the_second(
    server_factory: Callable[..., Any], echo_zip: bytes
) -> None:
    server = server_factory(queue_depth=0)
    lam = server.client("lambda")
    try:
        lam.create_function(
            FunctionName="single",
            Runtime="python3.11",
            Role=ROLE,
            Handler="app.handler",
            Code={"ZipFile": echo_zip},
        )
        lam.put_function_concurrency(FunctionName="single", ReservedConcurrentExecutions=1)
        lam.invoke(FunctionName="single")  # warm up, so both race for the instance, not init

        results = _invoke_together(lam, "single", 2, sleep_s=1.5)
        throttled = [r for r in results if isinstance(r, ClientError)]
        succeeded = [r for r in results if not isinstance(r, ClientError)]
        assert len(throttled) == 1, results
        assert len(succeeded) == 1, results
        assert throttled[0].response["Error"]["Code"] == "TooManyRequestsException"
        assert throttled[0].response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert payload_of(succeeded[0])["event"] == {"sleep": 1.5}

        # the slot is free again afterwards
        assert "FunctionError" not in lam.invoke(FunctionName="single", Payload=b"{}")
    finally:
        lam.close()


def test_concurrency_one_with_a_queue_waits_instead(lam: Any, deploy: Deploy) -> None:
    deploy("queued")
    lam.put_function_concurrency(FunctionName="queued", ReservedConcurrentExecutions=1)
    lam.invoke(FunctionName="queued")
    started = time.monotonic()
    results = _invoke_together(lam, "queued", 2, sleep_s=0.5)
    elapsed = time.monotonic() - started
    assert not [r for r in results if isinstance(r, ClientError)], results
    pids = {payload_of(r)["pid"] for r in results}
    assert len(pids) == 1  # one instance served both, one after the other
    assert elapsed >= 1.0
