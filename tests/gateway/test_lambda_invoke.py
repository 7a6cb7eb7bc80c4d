"""Lambda API, Invoke: invocation types, log tails, function errors, timeouts, init errors."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest
from lambda_testkit import (
    Deploy,
    SignedCall,
    build_zip,
    handler_zip,
    payload_of,
    wait_until,
)


def _still_serving(lam: Any, deploy: Deploy) -> None:
    """The server keeps serving other functions: a fresh echo function answers."""
    deploy("bystander")
    result = lam.invoke(FunctionName="bystander", Payload=b'{"ok": true}')
    assert result["StatusCode"] == 200
    assert "FunctionError" not in result
    assert payload_of(result)["event"] == {"ok": True}


def _event_state(signed: SignedCall, request_id: str) -> dict[str, Any] | None:
    response = signed("GET", "/v1/events")
    assert response.status_code == 200, response.text
    found = [e for e in response.json() if e["request_id"] == request_id]
    return found[0] if found else None


def test_request_response_echoes_payload(lam: Any, deploy: Deploy) -> None:
    deploy("echo")
    event = {"text": "안녕", "n": [1, 2.5, None, True], "nested": {"a": {}}}
    result = lam.invoke(FunctionName="echo", Payload=json.dumps(event).encode())
    assert result["StatusCode"] == 200
    assert result["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in result
    assert "LogResult" not in result
    body = payload_of(result)
    assert body["event"] == event
    assert body["version"] == "$LATEST"
    assert body["request_id"] == result["ResponseMetadata"]["RequestId"]
    assert body["count"] == 1
    assert payload_of(lam.invoke(FunctionName="echo", Payload=b"{}"))["count"] == 2  # warm


def test_empty_payload_is_an_empty_event(lam: Any, deploy: Deploy) -> None:
    deploy("empty")
    assert payload_of(lam.invoke(FunctionName="empty"))["event"] == {}


def test_non_object_results_and_events(lam: Any, deploy: Deploy) -> None:
    deploy("scalar", code=handler_zip("return event"))
    for value in (None, 42, "text", [1, "two"], {"k": "v"}):
        result = lam.invoke(FunctionName="scalar", Payload=json.dumps(value).encode())
        assert "FunctionError" not in result
        assert payload_of(result) == value


def test_event_invocation_is_queued_then_runs(lam: Any, deploy: Deploy, signed: SignedCall) -> None:
    deploy("later")
    result = lam.invoke(FunctionName="later", InvocationType="Event", Payload=b'{"job": 1}')
    assert result["StatusCode"] == 202
    assert result["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert result["Payload"].read() == b""
    request_id = result["ResponseMetadata"]["RequestId"]
    event = wait_until(
        lambda: (e := _event_state(signed, request_id)) and e["state"] == "succeeded" and e,
        timeout_s=15,
    )
    assert event["function_name"] == "later"
    assert event["attempts"] == 1
    records = signed("GET", "/v1/functions/later/invocations").json()
    assert [(r["request_id"], r["trigger"], r["status"]) for r in records] == [
        (request_id, "event", "success")
    ]


def test_event_invocation_of_unknown_function_is_refused(lam: Any) -> None:
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="nosuchfunction", InvocationType="Event", Payload=b"{}")


def test_dry_run_checks_without_running(lam: Any, deploy: Deploy, signed: SignedCall) -> None:
    deploy("dry")
    result = lam.invoke(FunctionName="dry", InvocationType="DryRun", Payload=b'{"x": 1}')
    assert result["StatusCode"] == 204
    assert result["Payload"].read() == b""
    assert payload_of(lam.invoke(FunctionName="dry"))["count"] == 1  # the dry run ran nothing
    with pytest.raises(lam.exceptions.ResourceNotFoundException):
        lam.invoke(FunctionName="dry", InvocationType="DryRun", Qualifier="5")


def test_log_tail_has_start_end_report(lam: Any, deploy: Deploy) -> None:
    deploy("tail")
    result = lam.invoke(FunctionName="tail", Payload=b'{"hello": "log"}', LogType="Tail")
    request_id = result["ResponseMetadata"]["RequestId"]
    log = base64.b64decode(result["LogResult"]).decode()
    lines = log.splitlines()
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert "init tail" in lines  # the init phase's output belongs to the first invocation
    assert 'event {"hello": "log"}' in lines
    assert f"END RequestId: {request_id}" in lines
    report = lines[-1]
    assert report.startswith(f"REPORT RequestId: {request_id}\tDuration: ")
    for field in ("Billed Duration: ", "Memory Size: 128 MB", "Max Memory Used: ", "Init Duration"):
        assert field in report
    warm = lam.invoke(FunctionName="tail", Payload=b"{}", LogType="Tail")
    warm_log = base64.b64decode(warm["LogResult"]).decode()
    assert "Init Duration" not in warm_log
    assert "init tail" not in warm_log
    assert "LogResult" not in lam.invoke(FunctionName="tail", Payload=b"{}", LogType="None")


def test_log_tail_is_the_last_4_kb(lam: Any, deploy: Deploy) -> None:
    deploy(
        "chatty",
        code=handler_zip("for i in range(2000):\n    print('line', i)\nreturn 'done'"),
    )
    result = lam.invoke(FunctionName="chatty", LogType="Tail")
    assert payload_of(result) == "done"
    raw = base64.b64decode(result["LogResult"])
    assert len(raw) <= 4096
    log = raw.decode(errors="replace")
    assert "line 1999" in log
    assert "line 0\n" not in log
    assert log.rstrip("\n").splitlines()[-1].startswith("REPORT RequestId: ")


def test_unhandled_error(lam: Any, deploy: Deploy) -> None:
    deploy("raiser")
    result = lam.invoke(FunctionName="raiser", Payload=b'{"fail": "boom"}', LogType="Tail")
    assert result["StatusCode"] == 200
    assert result["FunctionError"] == "Unhandled"
    assert result["ResponseMetadata"]["HTTPHeaders"]["x-amz-function-error"] == "Unhandled"
    error = payload_of(result)
    assert error["errorMessage"] == "boom"
    assert error["errorType"] == "ValueError"
    assert error["requestId"] == result["ResponseMetadata"]["RequestId"]
    assert isinstance(error["stackTrace"], list)
    assert error["stackTrace"]
    assert all(isinstance(frame, str) for frame in error["stackTrace"])
    assert any("app.py" in frame and "handler" in frame for frame in error["stackTrace"])
    log = base64.b64decode(result["LogResult"]).decode()
    assert "ValueError" in log and "boom" in log
    # the instance survives a handled exception and serves the next request warm
    again = lam.invoke(FunctionName="raiser", Payload=b"{}")
    assert "FunctionError" not in again
    assert payload_of(again)["count"] == 2


def test_timeout(lam: Any, deploy: Deploy) -> None:
    deploy("sleepy", Timeout=1)
    started = time.monotonic()
    result = lam.invoke(FunctionName="sleepy", Payload=b'{"sleep": 3}', LogType="Tail")
    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    assert result["StatusCode"] == 200
    assert result["FunctionError"] == "Unhandled"
    error = payload_of(result)
    assert error["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 1.00 seconds" in error["errorMessage"]
    assert "Task timed out after 1.00 seconds" in base64.b64decode(result["LogResult"]).decode()
    # the timed-out instance is gone; a new one serves the next request
    after = lam.invoke(FunctionName="sleepy", Payload=b"{}")
    assert "FunctionError" not in after
    assert payload_of(after)["count"] == 1
    _still_serving(lam, deploy)


GOOD = "def handler(e, c):\n    return 1\n"


@pytest.mark.parametrize(
    ("source", "handler", "error_type", "message_part"),
    [
        (GOOD, "missing.handler", "Runtime.ImportModuleError", "missing"),
        ("import no_such_dependency\n", "app.handler", "Runtime.ImportModuleError", "no_such_"),
        ("def other(e, c):\n    return 1\n", "app.handler", "Runtime.HandlerNotFound", "handler"),
        (GOOD, "app", "Runtime.MalformedHandlerName", "app"),
        ("def handler(e, c)\n    return 1\n", "app.handler", "Runtime.UserCodeSyntaxError", ""),
    ],
    ids=["missing-module", "missing-dependency", "missing-function", "no-dot", "syntax-error"],
)
def test_init_errors(
    lam: Any,
    deploy: Deploy,
    source: str,
    handler: str,
    error_type: str,
    message_part: str,
) -> None:
    deploy("broken", code=build_zip({"app.py": source}), handler=handler)
    for _ in range(2):  # a failed init is not cached: each invocation tries (and fails) again
        result = lam.invoke(FunctionName="broken", Payload=b"{}", LogType="Tail")
        assert result["StatusCode"] == 200
        assert result["FunctionError"] == "Unhandled"
        error = payload_of(result)
        assert error["errorType"] == error_type
        assert message_part in error["errorMessage"]
        assert error["requestId"] == result["ResponseMetadata"]["RequestId"]
        assert isinstance(error["stackTrace"], list)
        log = base64.b64decode(result["LogResult"]).decode()
        assert error_type in log
        assert log.rstrip("\n").splitlines()[-1].startswith("REPORT RequestId: ")
    _still_serving(lam, deploy)


def test_unserialisable_result_is_a_marshal_error(lam: Any, deploy: Deploy) -> None:
    deploy("setter", code=handler_zip("return {'items': {1, 2, 3}}"))
    result = lam.invoke(FunctionName="setter", Payload=b"{}")
    assert result["FunctionError"] == "Unhandled"
    error = payload_of(result)
    assert error["errorType"] == "Runtime.MarshalError"
    assert "Unable to marshal response" in error["errorMessage"]
    _still_serving(lam, deploy)


def test_crashing_instance_is_an_exit_error(lam: Any, deploy: Deploy) -> None:
    deploy(
        "crasher", code=handler_zip("import os\nif event.get('die'):\n    os._exit(3)\nreturn 1")
    )
    result = lam.invoke(FunctionName="crasher", Payload=b'{"die": true}')
    assert result["FunctionError"] == "Unhandled"
    error = payload_of(result)
    assert error["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in error["errorMessage"]
    assert payload_of(lam.invoke(FunctionName="crasher", Payload=b"{}")) == 1
    _still_serving(lam, deploy)


def test_client_context_reaches_the_handler(lam: Any, deploy: Deploy) -> None:
    deploy(
        "ctx",
        code=handler_zip(
            "cc = context.client_context\nreturn {'custom': cc.custom, 'env': cc.env}"
        ),
    )
    context = {"custom": {"tenant": "t1"}, "env": {"locale": "ko"}}
    result = lam.invoke(
        FunctionName="ctx",
        ClientContext=base64.b64encode(json.dumps(context).encode()).decode(),
    )
    assert payload_of(result) == context


def test_client_context_that_cannot_reach_a_function_is_refused(lam: Any, deploy: Deploy) -> None:
    """A lone surrogate or NaN in the client context is not JSON a function can get: 400, and
    the function's warm instance keeps serving."""
    deploy(
        "ctx-bad",
        code=handler_zip("cc = context.client_context\nreturn cc.custom if cc else None"),
    )
    assert payload_of(lam.invoke(FunctionName="ctx-bad", Payload=b"{}")) is None
    for raw in (b'{"custom": {"k": "\\ud83d"}}', b'{"custom": {"n": NaN}}', b"[1]"):
        with pytest.raises(lam.exceptions.InvalidRequestContentException):
            lam.invoke(FunctionName="ctx-bad", ClientContext=base64.b64encode(raw).decode())
    good = base64.b64encode(b'{"custom": {"k": "\\ud83d\\ude00"}}').decode()
    assert payload_of(lam.invoke(FunctionName="ctx-bad", ClientContext=good)) == {"k": "😀"}
