"""Runtime shim: runs inside a function instance, imports the handler, serves invocations.

Started as `python -I -S bootstrap.py --control-fd N --path DIR ... [--rlimit NAME=VALUE ...]`.
Standard library only; never imports gureum (the function must not see the platform's code).
Behaviour follows AWS Lambda's Python runtime: handler string `module.func`, the `context`
object, the error JSON shape and the `Runtime.*` error types.
"""

from __future__ import annotations

import argparse
import decimal
import importlib
import importlib.util
import json
import logging
import os
import resource
import socket
import sys
import time
import traceback
from typing import Any


def _load_protocol() -> Any:
    # The frame codec sits beside this file; load it under a private name so that it neither
    # needs the gureum package on sys.path nor shadows a user module called `protocol`.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "protocol.py")
    spec = importlib.util.spec_from_file_location("_gureum_protocol", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


protocol = _load_protocol()


class CognitoIdentity:
    def __init__(self, data: dict[str, Any] | None) -> None:
        data = data or {}
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class Client:
    def __init__(self, data: dict[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class ClientContext:
    def __init__(self, data: dict[str, Any]) -> None:
        self.client = Client(data["client"]) if data.get("client") else None
        self.custom = data.get("custom")
        self.env = data.get("env")


class LambdaContext:
    """The `context` argument, with the attributes AWS's Python runtime provides."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.aws_request_id: str = header["id"]
        self.invoked_function_arn: str = header["arn"]
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        # AWS's runtime passes this through from the environment, so it is a string.
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")
        self.identity = CognitoIdentity(header.get("identity"))
        cc = header.get("client_context")
        self.client_context = ClientContext(cc) if isinstance(cc, dict) else None
        self.tenant_id = header.get("tenant_id")
        self._deadline_ms: int = header["deadline"]

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg: str) -> None:
        sys.stdout.write(msg)


def error_json(
    exc: BaseException,
    error_type: str | None = None,
    message: str | None = None,
    with_trace: bool = True,
) -> dict[str, Any]:
    frames = traceback.extract_tb(exc.__traceback__) if with_trace else []
    return {
        "errorMessage": str(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
        "requestId": "",
        "stackTrace": [
            f'  File "{f.filename}" Line {f.lineno}, in {f.name}\n    {f.line}\n' for f in frames
        ],
    }


def load_handler(spec: str) -> Any:
    """Import `module.func`; raise _InitError with AWS's Runtime.* error types on failure."""
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        raise _InitError(
            {
                "errorMessage": f"Bad handler '{spec}': not enough values to unpack "
                "(expected 2, got 1)",
                "errorType": "Runtime.MalformedHandlerName",
                "requestId": "",
                "stackTrace": [],
            }
        )
    module_name = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise _InitError(
            error_json(
                exc,
                "Runtime.ImportModuleError",
                f"Unable to import module '{module_name}': {exc}",
                with_trace=False,
            )
        ) from None
    except SyntaxError as exc:
        raise _InitError(
            error_json(
                exc, "Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}"
            )
        ) from None
    except Exception as exc:
        raise _InitError(error_json(exc)) from None
    handler = getattr(module, func_name, None)
    if handler is None:
        raise _InitError(
            {
                "errorMessage": f"Handler '{func_name}' missing on module '{module_name}'",
                "errorType": "Runtime.HandlerNotFound",
                "requestId": "",
                "stackTrace": [],
            }
        )
    return handler


class _InitError(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error["errorMessage"])
        self.error = error


class _ResultEncoder(json.JSONEncoder):
    # AWS's runtime serialises Decimal (DynamoDB numbers) as numbers.
    def default(self, o: Any) -> Any:
        if isinstance(o, decimal.Decimal):
            return int(o) if o == o.to_integral_value() else float(o)
        return super().default(o)


class _RequestIdFilter(logging.Filter):
    request_id = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.aws_request_id = self.request_id
        return True


def _install_logging() -> _RequestIdFilter:
    request_filter = _RequestIdFilter()
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(request_filter)
    formatter = logging.Formatter(
        "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s",
        "%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        root.setLevel(level)
    return request_filter


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _recv(sock: socket.socket) -> tuple[dict[str, Any], bytes]:
    header_len, payload_len = protocol.decode_lengths(_recv_exact(sock, protocol.HEADER.size))
    header = protocol.decode_header(_recv_exact(sock, header_len))
    return header, _recv_exact(sock, payload_len) if payload_len else b""


def _end_log(request_id: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(1, protocol.LOG_END_MARKER + request_id.encode() + b"\n")


def _invoke(handler: Any, header: dict[str, Any], payload: bytes) -> tuple[bool, bytes]:
    request_id = header["id"]
    try:
        event = json.loads(payload) if payload else {}
    except ValueError as exc:
        error = error_json(exc, "Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}")
        error["requestId"] = request_id
        return False, json.dumps(error).encode()
    try:
        result = handler(event, LambdaContext(header))
    except Exception as exc:
        # Drop the shim's own frame: users see their code only, as on AWS.
        tb = exc.__traceback__
        error = error_json(exc.with_traceback(tb.tb_next if tb else None))
        error["requestId"] = request_id
        # AWS's runtime prints the error record into the function's log.
        print(f"[ERROR] {error['errorType']}: {error['errorMessage']}", file=sys.stderr)
        print("Traceback (most recent call last):", file=sys.stderr)
        print("".join(error["stackTrace"]), end="", file=sys.stderr)
        return False, json.dumps(error).encode()
    try:
        body = json.dumps(result, cls=_ResultEncoder).encode()
    except (TypeError, ValueError) as exc:
        error = error_json(
            exc, "Runtime.MarshalError", f"Unable to marshal response: {exc}", with_trace=False
        )
        error["requestId"] = request_id
        return False, json.dumps(error).encode()
    return True, body


def _peak_rss_kb() -> int:
    # VmHWM is this process image's own peak; ru_maxrss would include the parent's before exec.
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _apply_rlimits(specs: list[str]) -> None:
    for spec in specs:
        name, _, value = spec.partition("=")
        limit = int(value)
        resource.setrlimit(getattr(resource, name), (limit, limit))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--rlimit", action="append", default=[])
    args = parser.parse_args(argv)
    _apply_rlimits(args.rlimit)
    sock = socket.socket(fileno=args.control_fd)
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    sys.path[:0] = [task_root, *args.path]
    os.chdir(task_root)
    # Line-buffered like the Lambda runtime, so a crash loses as little log as possible.
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    request_filter = _install_logging()
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except _InitError as exc:
        print(f"[ERROR] {exc.error['errorType']}: {exc.error['errorMessage']}", file=sys.stderr)
        _end_log("init")
        sock.sendall(protocol.encode({"t": "init_error"}, json.dumps(exc.error).encode()))
        return
    _end_log("init")
    sock.sendall(protocol.encode({"t": "ready"}))
    while True:
        try:
            header, payload = _recv(sock)
        except EOFError:
            return
        request_filter.request_id = header["id"]
        ok, body = _invoke(handler, header, payload)
        _end_log(header["id"])
        sock.sendall(
            protocol.encode(
                {"t": "result", "id": header["id"], "ok": ok, "max_rss_kb": _peak_rss_kb()}, body
            )
        )


if __name__ == "__main__":
    main()
