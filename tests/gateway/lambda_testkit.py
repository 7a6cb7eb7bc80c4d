"""Plain building blocks of the Lambda API tests: code packages, handlers, response readers."""

from __future__ import annotations

import io
import json
import time
import zipfile
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

Deploy = Callable[..., dict[str, Any]]  # the `deploy` fixture
SignedCall = Callable[..., httpx.Response]  # the `signed` fixture
ROLE = "arn:aws:iam::123456789012:role/lambda-role"

# Reports which code (`tag`) and which configuration answered, and the env vars asked for.
INFO = """
import os
VERSION_TAG = "v1"
def handler(event, context):
    return {
        "tag": VERSION_TAG,
        "version": context.function_version,
        "arn": context.invoked_function_arn,
        "memory": context.memory_limit_in_mb,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "env": {k: os.environ.get(k) for k in event.get("env", [])},
        "pid": os.getpid(),
    }
"""


def build_zip(files: dict[str, str | bytes]) -> bytes:
    """A deflated zip with the given {path: content} members; the same files give the same
    bytes (fixed timestamps), so CodeSha256 can be predicted."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def info_zip(tag: str = "v1") -> bytes:
    """The INFO handler at `app.handler`, reporting `tag` as the code's identity."""
    return build_zip({"app.py": INFO.replace('VERSION_TAG = "v1"', f"VERSION_TAG = {tag!r}")})


def handler_zip(body: str, module: str = "app") -> bytes:
    """A package whose `<module>.handler(event, context)` runs `body` (indented for you)."""
    lines = "\n".join("    " + line for line in body.strip().splitlines())
    return build_zip({f"{module}.py": f"def handler(event, context):\n{lines}\n"})


def error_of(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, int]:
    """(AWS error code, HTTP status) of a boto3 ClientError."""
    response: Any = excinfo.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


def payload_of(response: dict[str, Any]) -> Any:
    """The decoded JSON payload of an Invoke response."""
    return json.loads(response["Payload"].read())


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s} s (last value: {value!r})")
        time.sleep(interval_s)
