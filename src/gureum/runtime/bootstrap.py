"""Runtime shim: runs inside a function instance, imports the handler, serves invocations.

Started as `python -I -S bootstrap.py --control-fd N --path DIR ... [--rlimit NAME=VALUE ...]`.
Standard library only; never imports gureum (the function must not see the platform's code).
Behaviour follows AWS Lambda's Python runtime: handler string `module.func`, the `context`
object, the error JSON shape and the `Runtime.*` error types.
"""

from __future__ import annotations

import argparse
import contextlib
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
import types
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


class FunctionInfo:
    """What the context reports about the function itself, read from the environment once per
    instance (the agent sets these variables at start; they do not change between calls)."""

    __slots__ = ("function_name", "function_version", "log_group_name", "log_stream_name", "memory")

    def __init__(self, environ: Any = os.environ) -> None:
        self.function_name = environ.get("AWS_LAMBDA_FUNCTION_NAME", "")
        self.function_version = environ.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        # AWS's runtime passes this through from the environment, so it is a string.
        self.memory = environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = environ.get("AWS_LAMBDA_LOG_GROUP_NAME", "")
        self.log_stream_name = environ.get("AWS_LAMBDA_LOG_STREAM_NAME", "")


class LambdaContext:
    """The `context` argument, with the attributes AWS's Python runtime provides."""

    def __init__(self, header: dict[str, Any], function: FunctionInfo | None = None) -> None:
        if function is None:
            function = FunctionInfo()
        self.aws_request_id: str = header["id"]
        self.invoked_function_arn: str = header["arn"]
        self.function_name = function.function_name
        self.function_version = function.function_version
        self.memory_limit_in_mb = function.memory
        self.log_group_name = function.log_group_name
        self.log_stream_name = function.log_stream_name
        self.identity = CognitoIdentity(header.get("identity"))
        cc = header.get("client_context")
        self.client_context = ClientContext(cc) if isinstance(cc, dict) else None
        self.tenant_id = header.get("tenant_id")
        self._deadline_ms: int = header["deadline"]

    def get_remaining_time_in_millis(self) -> int:
        return max(self._deadline_ms - int(time.time() * 1000), 0)

    def log(self, msg: str) -> None:
        sys.stdout.write(msg)


_SHIM_FILE = os.path.abspath(__file__)


def _is_platform_frame(filename: str) -> bool:
    return (
        filename == _SHIM_FILE
        or filename.startswith("<frozen importlib")
        or filename == importlib.__file__
    )


def user_frames(tb: types.TracebackType | None) -> list[str]:
    """The traceback as AWS's runtime reports it: leading shim and import machinery dropped."""
    frames = traceback.extract_tb(tb)
    while frames and _is_platform_frame(frames[0].filename):
        del frames[0]
    return traceback.format_list(frames)


def _describe(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # the function's exception class may break even this
        return f"<unprintable {type(exc).__name__} object>"


def error_json(
    exc: BaseException,
    error_type: str | None = None,
    message: str | None = None,
    with_trace: bool = True,
) -> dict[str, Any]:
    return {
        "errorMessage": _describe(exc) if message is None else message,
        "errorType": error_type or type(exc).__name__,
        "requestId": "",
        "stackTrace": user_frames(exc.__traceback__) if with_trace else [],
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
        error = error_json(
            exc,
            "Runtime.UserCodeSyntaxError",
            f"Syntax error in module '{module_name}': {exc}",
            with_trace=False,
        )
        # AWS's runtime points at the offending line rather than at the import machinery.
        error["stackTrace"] = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
        raise _InitError(error) from None
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
            return int(o) if o.is_finite() and o == o.to_integral_value() else float(o)
        return super().default(o)


# Stateless between calls, so one serves every invocation (json.dumps(cls=) builds one each time).
_RESULT_ENCODER = _ResultEncoder()


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


class _ControlChannel:
    """Frames from the agent, read from the control socket in as few `recv` calls as a frame
    needs (usually one), instead of one per frame part."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = b""

    def recv(self) -> tuple[dict[str, Any], bytes]:
        """The next frame; EOFError once the agent has closed the socket."""
        prefix = protocol.HEADER.size
        data = self._at_least(prefix)
        header_len, payload_len = protocol.decode_lengths(data[:prefix])
        end = prefix + header_len + payload_len
        data = self._at_least(end)
        header = protocol.decode_header(data[prefix : prefix + header_len])
        payload = data[prefix + header_len : end] if payload_len else b""
        self._pending = data[end:]
        return header, payload

    def _at_least(self, n: int) -> bytes:
        data = self._pending
        if len(data) >= n:
            return data
        chunks = [data]
        have = len(data)
        while have < n:
            chunk = self._sock.recv(min(max(n - have, 1 << 16), 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            have += len(chunk)
        self._pending = data = b"".join(chunks)
        return data


def _flush_streams() -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        with contextlib.suppress(Exception):  # a stream the function replaced or broke
            stream.flush()  # type: ignore[union-attr]


def _log_error(error: dict[str, Any]) -> None:
    """Print the error record into the function's log, as AWS's runtime does."""
    record = (
        f"[ERROR] {error['errorType']}: {error['errorMessage']}\n"
        f"Traceback (most recent call last):\n{''.join(error['stackTrace'])}"
    )
    _flush_streams()
    with contextlib.suppress(OSError):  # the function may have closed its stderr
        os.write(2, record.encode(errors="backslashreplace"))


def _end_log(marker_fd: int, request_id: str) -> None:
    # Whatever the function did to sys.stdout, fd 1 or the streams, the marker must get out.
    _flush_streams()
    os.write(marker_fd, protocol.LOG_END_MARKER + request_id.encode() + b"\n")


def _invoke(
    handler: Any, header: dict[str, Any], payload: bytes, function: FunctionInfo
) -> tuple[bool, bytes]:
    request_id = header["id"]
    try:
        event = json.loads(payload) if payload else {}
    except ValueError as exc:
        error = error_json(exc, "Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}")
        error["requestId"] = request_id
        return False, json.dumps(error).encode()
    try:
        result = handler(event, LambdaContext(header, function))
    except Exception as exc:
        # Users see their own frames only, as on AWS.
        error = error_json(exc)
        error["requestId"] = request_id
        _log_error(error)
        return False, json.dumps(error).encode()
    try:
        body = _RESULT_ENCODER.encode(result).encode()
    except Exception as exc:  # not only TypeError: objects' own methods may raise anything
        error = error_json(
            exc, "Runtime.MarshalError", f"Unable to marshal response: {exc}", with_trace=False
        )
        error["requestId"] = request_id
        return False, json.dumps(error).encode()
    return True, body


def _within_frame_limit(ok: bool, body: bytes, request_id: str) -> tuple[bool, bytes]:
    # A larger frame would be refused by the agent as malformed, and the instance lost with it.
    if len(body) <= protocol.MAX_PAYLOAD:
        return ok, body
    error = {
        "errorMessage": f"Response payload size ({len(body)} bytes) exceeded maximum allowed "
        f"payload size ({protocol.MAX_PAYLOAD} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
        "requestId": request_id,
        "stackTrace": [],
    }
    return False, json.dumps(error).encode()


class PeakMemory:
    """This process image's peak RSS in kB (VmHWM; ru_maxrss would include the parent's before
    exec). /proc/self/status is opened once and re-read with pread, which makes the kernel
    render it afresh; open it in the instance's own process (after any fork)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)

    def kb(self) -> int:
        if self._fd is not None:
            with contextlib.suppress(OSError, ValueError):
                status = os.pread(self._fd, 8192, 0)
                # the function may have closed our descriptor, or a new file taken its number
                if status.startswith(b"Name:"):
                    start = status.index(b"\nVmHWM:") + 7
                    return int(status[start : status.index(b"kB", start)])
            self._reopen()
        return _peak_rss_kb()

    def _reopen(self) -> None:
        # Our number may now belong to one of the function's files: never close it, just
        # stop using it and open our own again for next time.
        self._fd = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)


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
    # Processes the function starts must not hold the control socket (or the agent would not
    # see this process die); the markers get their own descriptor on the log pipe.
    sock.set_inheritable(False)
    marker_fd = os.dup(1)
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
        _log_error(exc.error)
        _end_log(marker_fd, "init")
        sock.sendall(protocol.encode({"t": "init_error"}, json.dumps(exc.error).encode()))
        return
    _end_log(marker_fd, "init")
    sock.sendall(protocol.encode({"t": "ready"}))
    function = FunctionInfo()
    peak_memory = PeakMemory()
    channel = _ControlChannel(sock)
    while True:
        try:
            header, payload = channel.recv()
        except EOFError:
            return
        request_id = header["id"]
        request_filter.request_id = request_id
        ok, body = _within_frame_limit(*_invoke(handler, header, payload, function), request_id)
        _end_log(marker_fd, request_id)
        sock.sendall(
            protocol.encode(
                {"t": "result", "id": request_id, "ok": ok, "max_rss_kb": peak_memory.kb()}, body
            )
        )


if __name__ == "__main__":
    main()
