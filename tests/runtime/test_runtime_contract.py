"""The Lambda Python runtime contract, end to end: a real server, boto3, real instances."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningServer, make_zip

ROLE = "arn:aws:iam::123456789012:role/contract"

CONTRACT = """
import json, logging, os, time
from decimal import Decimal

INIT_COUNT = 0
INIT_COUNT += 1
CALLS = 0
print("module init", os.getpid())

def handler(event, context):
    global CALLS
    CALLS += 1
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()
    cc = context.client_context
    client = cc.client if cc is not None else None
    print("handling", context.aws_request_id)
    logging.warning("warned %s", event.get("tag"))
    return {
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "aws_request_id": context.aws_request_id,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "identity": [context.identity.cognito_identity_id,
                     context.identity.cognito_identity_pool_id],
        "client_context": None if cc is None else {
            "custom": cc.custom, "env": cc.env,
            "client": None if client is None else {
                "installation_id": client.installation_id, "app_title": client.app_title,
                "app_version_name": client.app_version_name,
                "app_version_code": client.app_version_code,
                "app_package_name": client.app_package_name,
            },
        },
        "remaining": [first, second],
        "env": dict(os.environ),
        "cwd": os.getcwd(),
        "init_count": INIT_COUNT,
        "calls": CALLS,
        "pid": os.getpid(),
        "decimals": [Decimal("1.5"), Decimal("3"), Decimal("-0.25")],
    }
"""


def create(lam: Any, name: str, source: str = CONTRACT, **config: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "FunctionName": name,
        "Runtime": "python3.11",
        "Role": ROLE,
        "Handler": "app.handler",
        "Code": {"ZipFile": make_zip({"app.py": source})},
        "Timeout": 10,
        "MemorySize": 256,
        **config,
    }
    created: dict[str, Any] = lam.create_function(**params)
    return created


def call(lam: Any, name: str, event: Any = None, **params: Any) -> tuple[dict[str, Any], Any]:
    """Invoke with the log tail; return (response, decoded payload)."""
    response: dict[str, Any] = lam.invoke(
        FunctionName=name, Payload=json.dumps(event or {}), LogType="Tail", **params
    )
    body = json.loads(response["Payload"].read())
    return response, body


def tail(response: dict[str, Any]) -> str:
    return base64.b64decode(response["LogResult"]).decode()


def report(log: str) -> dict[str, str]:
    line = next(line for line in log.splitlines() if line.startswith("REPORT RequestId: "))
    fields = {}
    for part in line.split("\t"):
        key, sep, value = part.partition(": ")
        if sep:
            fields[key] = value
    return fields


def test_context_attributes(lam: Any) -> None:
    arn = create(lam, "ctx", MemorySize=256, Timeout=7)["FunctionArn"]
    client_context = {
        "client": {
            "installation_id": "inst-1",
            "app_title": "Gureum Test",
            "app_version_name": "1.0",
            "app_version_code": "100",
            "app_package_name": "org.gureum.test",
        },
        "custom": {"tenant": "blue"},
        "env": {"platform": "linux"},
    }
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()

    response, body = call(lam, "ctx", {"tag": "a"}, ClientContext=encoded)

    assert "FunctionError" not in response
    assert body["function_name"] == "ctx"
    assert body["function_version"] == "$LATEST"
    assert body["invoked_function_arn"] == arn
    assert body["memory_limit_in_mb"] == "256"
    assert body["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["log_group_name"] == "/aws/lambda/ctx"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[\$LATEST\][0-9a-f]{32}", body["log_stream_name"])
    assert body["identity"] == [None, None]
    assert body["client_context"] == client_context
    first, second = body["remaining"]
    assert 6000 < first <= 7000
    assert 0 < second <= first - 40

    # Without a client context, context.client_context is None, as on AWS.
    _, plain = call(lam, "ctx")
    assert plain["client_context"] is None


def test_context_reflects_version_and_qualifier(lam: Any) -> None:
    arn = create(lam, "qual")["FunctionArn"]
    assert lam.publish_version(FunctionName="qual")["Version"] == "1"
    lam.create_alias(FunctionName="qual", Name="live", FunctionVersion="1")

    _, latest = call(lam, "qual", Qualifier="$LATEST")
    response, one = call(lam, "qual", Qualifier="1")
    _, live = call(lam, "qual", Qualifier="live")
    _, qualified_name = call(lam, "qual:1")

    assert latest["function_version"] == "$LATEST"
    assert latest["invoked_function_arn"] == f"{arn}:$LATEST"
    assert response["ExecutedVersion"] == "1"
    assert one["function_version"] == "1"
    assert one["invoked_function_arn"] == f"{arn}:1"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[1\][0-9a-f]{32}", one["log_stream_name"])
    assert live["function_version"] == "1"
    assert live["invoked_function_arn"] == f"{arn}:live"
    assert qualified_name["invoked_function_arn"] == f"{arn}:1"


def test_environment_variables(lam: Any, server: RunningServer) -> None:
    create(lam, "envfn", MemorySize=384, Environment={"Variables": {"STAGE": "test", "FLAG": "1"}})

    _, body = call(lam, "envfn")
    env = body["env"]

    assert env["_HANDLER"] == "app.handler"
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "envfn"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "384"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["LAMBDA_TASK_ROOT"] == body["cwd"]
    assert server.settings.data_dir.resolve() in Path(body["cwd"]).resolve().parents
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == server.settings.region
    assert env["TZ"] == ":UTC"
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["STAGE"] == "test" and env["FLAG"] == "1"
    assert env["AWS_ENDPOINT_URL"] == server.endpoint
    root = server.platform.root
    assert env["AWS_ACCESS_KEY_ID"].startswith("ASIA")
    assert env["AWS_ACCESS_KEY_ID"] != root.access_key_id
    assert env["AWS_SECRET_ACCESS_KEY"] not in ("", root.secret_access_key)
    assert env["AWS_SESSION_TOKEN"]
    # Nothing of the platform's own environment leaks in.
    assert not any(key.startswith("GUREUM_") for key in env)
    assert "PYTHONPATH" not in env


def test_reserved_variables_are_refused(lam: Any) -> None:
    variables = {"AWS_LAMBDA_FUNCTION_NAME": "other"}

    with pytest.raises(lam.exceptions.InvalidParameterValueException):
        create(lam, "reserved", Environment={"Variables": variables})


def test_user_may_set_unreserved_runtime_variables(lam: Any) -> None:
    # AWS lets functions set TZ, LANG and PATH themselves (only the reserved keys are fixed).
    variables = {"TZ": "Asia/Seoul", "LANG": "ko_KR.UTF-8", "PATH": "/opt/bin:/usr/bin:/bin"}
    create(lam, "tzfn", Environment={"Variables": variables})

    _, body = call(lam, "tzfn")

    assert {key: body["env"][key] for key in variables} == variables


def test_module_init_runs_once_per_instance(lam: Any) -> None:
    create(lam, "warm")

    bodies = [call(lam, "warm")[1] for _ in range(3)]

    assert [b["init_count"] for b in bodies] == [1, 1, 1]
    assert [b["calls"] for b in bodies] == [1, 2, 3]
    assert len({b["pid"] for b in bodies}) == 1


def test_instances_run_as_batch_tasks(lam: Any) -> None:
    """Instances never preempt the gateway that wakes them (SCHED_BATCH), at the same share."""
    source = (
        "import os\n"
        "def handler(event, context):\n"
        "    return [os.sched_getscheduler(0), os.nice(0)]\n"
    )
    create(lam, "batch", source)

    policy, nice = call(lam, "batch")[1]

    assert policy == 3  # os.SCHED_BATCH
    assert nice == 0


def test_decimal_results_serialise_as_numbers(lam: Any) -> None:
    create(lam, "dec")

    response, body = call(lam, "dec")

    assert "FunctionError" not in response
    assert body["decimals"] == [1.5, 3, -0.25]
    assert isinstance(body["decimals"][1], int)


CALLER = """
import json
import boto3

def handler(event, context):
    client = boto3.client("lambda")
    names = sorted(f["FunctionName"] for f in client.list_functions()["Functions"])
    answer = client.invoke(FunctionName=event["target"], Payload=json.dumps({"tag": "inner"}))
    inner = json.loads(answer["Payload"].read())
    return {"names": names, "inner_name": inner["function_name"],
            "inner_calls": inner["calls"], "status": answer["StatusCode"]}
"""


def test_function_calls_the_lambda_api_with_its_own_credentials(lam: Any) -> None:
    create(lam, "callee")
    create(lam, "caller", CALLER, Timeout=30)

    response, body = call(lam, "caller", {"target": "callee"})

    assert "FunctionError" not in response, body
    assert body == {
        "names": ["callee", "caller"],
        "inner_name": "callee",
        "inner_calls": 1,
        "status": 200,
    }


def test_report_line(lam: Any) -> None:
    create(lam, "rep", "def handler(event, context):\n    return 1\n", MemorySize=512)

    cold, _ = call(lam, "rep")
    warm, _ = call(lam, "rep")

    cold_report, warm_report = report(tail(cold)), report(tail(warm))
    for response, fields in ((cold, cold_report), (warm, warm_report)):
        assert fields["REPORT RequestId"] == response["ResponseMetadata"]["RequestId"]
        duration = float(fields["Duration"].removesuffix(" ms"))
        billed = int(fields["Billed Duration"].removesuffix(" ms"))
        assert 0 < duration < 2000
        assert billed >= duration
        assert fields["Memory Size"] == "512 MB"
        max_used = int(fields["Max Memory Used"].removesuffix(" MB"))
        assert 1 <= max_used < 200
    init = float(cold_report["Init Duration"].removesuffix(" ms"))
    assert 0 < init < 10_000
    assert "Init Duration" not in warm_report
    assert re.fullmatch(r"\d+\.\d\d ms", cold_report["Duration"])


def test_log_tail_has_print_logging_and_markers(lam: Any) -> None:
    create(lam, "logs")

    cold, body = call(lam, "logs", {"tag": "first"})
    warm, _ = call(lam, "logs", {"tag": "second"})

    request_id = cold["ResponseMetadata"]["RequestId"]
    log = tail(cold)
    lines = log.splitlines()
    assert lines[0] == f"START RequestId: {request_id} Version: $LATEST"
    assert f"module init {body['pid']}" in lines
    assert f"handling {request_id}" in lines
    warning = next(line for line in lines if line.startswith("[WARNING]"))
    assert warning.split("\t")[2:] == [request_id, "warned first"]
    assert f"END RequestId: {request_id}" in lines
    assert lines[-1].startswith(f"REPORT RequestId: {request_id}\t")
    # The warm log holds only its own invocation's output.
    warm_log = tail(warm)
    assert "module init" not in warm_log
    assert "warned first" not in warm_log and "warned second" in warm_log


def test_handler_error_through_the_api(lam: Any) -> None:
    source = "def handler(event, context):\n    raise RuntimeError('nope')\n"
    create(lam, "fails", source)

    response, body = call(lam, "fails")

    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "RuntimeError"
    assert body["errorMessage"] == "nope"
    assert body["requestId"] == response["ResponseMetadata"]["RequestId"]
    assert len(body["stackTrace"]) == 1
    assert body["stackTrace"][0].endswith(", line 2, in handler\n    raise RuntimeError('nope')\n")
    assert "[ERROR] RuntimeError: nope" in tail(response)


FRAGILE = """
import os, time
STARTED = os.getpid()
def handler(event, context):
    if event.get("sleep"):
        print("sleeping")
        time.sleep(event["sleep"])
    if event.get("exit"):
        os._exit(event["exit"])
    return os.getpid()
"""


def test_timeout_and_crash_are_reported_and_replaced(lam: Any) -> None:
    create(lam, "fragile", FRAGILE, Timeout=1)

    _, first_pid = call(lam, "fragile")
    timed_out, timeout_error = call(lam, "fragile", {"sleep": 5})
    _, second_pid = call(lam, "fragile")
    crashed, crash_error = call(lam, "fragile", {"exit": 3})
    _, third_pid = call(lam, "fragile")

    request_id = timed_out["ResponseMetadata"]["RequestId"]
    assert timed_out["FunctionError"] == "Unhandled"
    assert timeout_error == {
        "errorMessage": f"RequestId: {request_id} Error: Task timed out after 1.00 seconds",
        "errorType": "Sandbox.Timedout",
        "requestId": request_id,
        "stackTrace": [],
    }
    log = tail(timed_out)
    assert "sleeping" in log and "Task timed out after 1.00 seconds" in log
    assert crashed["FunctionError"] == "Unhandled"
    assert crash_error["errorType"] == "Runtime.ExitError"
    assert crash_error["errorMessage"].endswith("Runtime exited with error: exit status 3")
    # Each fault cost its instance; the next invocation ran on a fresh one.
    assert len({first_pid, second_pid, third_pid}) == 3
