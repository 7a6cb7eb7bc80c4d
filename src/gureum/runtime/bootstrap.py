"""Runtime shim: runs inside a function instance, imports the handler, serves invocations.

Started as `python -I -S bootstrap.py --control-fd N --path DIR ... [--rlimit NAME=VALUE ...]`.
Standard library only; never imports gureum (the function must not see the platform's code).
Behaviour follows AWS Lambda's Python runtime: handler string `module.func`, the `context`
object, the error JSON shape and the `Runtime.*` error types.

Templates (`--template`): SnapStart by fork
-------------------------------------------
A template is a sandbox built exactly like an instance of its function version (own cgroup,
own uid, no capabilities, no_new_privs, seccomp loaded, pivot_root'ed into the minimal root)
that imports the handler and then, instead of serving invocations, forks instances on request:

    agent → template  {"t": "fork", "id"} + fd [link]      fork a child P that keeps `link`
    template → agent  {"t": "forked", "id", "pid": P}     P in the template's PID namespace
    agent → P (link)  b"g"                                P is in its own cgroup: confine
    agent → P (link)  {"t": "activate", "env"} + fds [control, log, tmp]
    template → agent  {"t": "exit", "pid": P, "status"}   when child P is reaped
    template → agent  {"t": "refused", "reason"}          instead of "ready": cannot template
    agent half-closes the socket                          stop forking; exit once P's are gone

Why this is safe. The handler module is user code and runs at import, so the template is
confined *before* it imports anything of the function's: it is one more sandbox of that
function version, never a privileged process, and it is never handed an invocation. What
it can reach is what any instance of that version can reach, so code it runs at import
(threads, at-fork hooks, finalizers) is no worse than the same function's handler; it shares
nothing with any other function (own namespaces, uid, cgroup, code, /tmp, credentials of
that function's role only). Templates are keyed by (account, function, version, revision)
and the whole spec, so a change of code or configuration never reaches an old template.

What an instance forked from a template gets of its own, and what it shares:
- cgroup: its own, pre-created; the agent (root) moves the forked pid into it before the
  instance gets its first invocation, so memory, pids and CPU limits and the kill-tree
  (`cgroup.kill`, or freeze-and-kill on v1) are per instance. Pages inherited from the
  template stay charged to the template's cgroup and are shared copy-on-write, so a forked
  instance is charged only for what it writes.
- /tmp: its own tmpfs, created detached by the agent (`fsopen`/`fsmount`), sized like any
  instance's and passed in at fork. The template's /tmp is a symlink to /proc/self/fd/TMP_FD,
  so the same path names each instance's own tmpfs; nothing else in the mount namespace
  leads to it. Cost: a process that closes TMP_FD loses its /tmp (subprocess.Popen is patched
  to keep it; `cd /tmp` shows the tmpfs's own root as the working directory).
- processes and signals: a per-instance PID namespace (or uid, or mount namespace) cannot be
  made by an unprivileged, seccomp-confined parent without allowing user namespaces, which we
  refuse to give user code. Instead each instance enters its own Landlock domain right after
  fork (ABI 6+, Linux 6.12): it cannot signal, ptrace or connect to abstract Unix sockets of
  anything outside its domain — its siblings and the template — and the template's /proc is
  mounted `hidepid=invisible`, so it does not even see them. It is also made non-dumpable.
  Without Landlock ABI 6 the agent does not use templates (cold starts only) and says so.
- network: the instances share the template's network namespace (loopback and the forwarders
  to the platform socket and egress proxy). Landlock limits an instance to connecting to the
  forwarder ports and binding no TCP port, so one instance cannot serve another. Inherited
  sockets and pipes (the template's forwarder connections at fork time, say) are replaced by
  dead descriptors in the child; regular files the handler opened at import stay shared, as
  after any fork.
- System V IPC is refused by the template's seccomp filter (shared IPC namespace and uid).
- state: random generators (the `random` module's and every `random.Random` alive in the
  template) are reseeded from os.urandom after fork; os.urandom, `secrets`, uuid4 and
  OpenSSL need nothing. Hash randomisation (PYTHONHASHSEED) stays the template's. Credentials
  and per-instance variables (log stream, keys) are replaced in os.environ, but clients the
  handler built at import keep the template's credentials, which is why templates retire
  long before those expire.
The template refuses (and the agent falls back to cold starts) when the import left threads
or child processes running, since a fork would silently lose them.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import decimal
import fcntl
import gc
import importlib
import importlib.util
import json
import logging
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import termios
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
TMP_FD = 1023  # a template's instances: their own /tmp (below RLIMIT_NOFILE's 1024)


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
    logging.getLogger().addHandler(handler)
    return request_filter


def replace_environment(env: dict[str, str]) -> None:
    """Make `env` the whole environment (os.environ and the C one that subprocesses and
    getenv() see). Key by key: in a freshly forked process, os.environ's own clear() and
    update() cost about twice as much (measured: ~210 µs for 16 variables, against ~110)."""
    for key in list(os.environ):
        del os.environ[key]
    for key, value in env.items():
        os.environ[key] = value


_prepared: _RequestIdFilter | None = None
_REHEARSAL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rehearsal")


def prepare() -> _RequestIdFilter:
    """What the runtime does before it knows its function. A pre-spawned sandbox calls this
    while it waits, which takes it off the cold start; `main()` calls it otherwise."""
    global _prepared
    if _prepared is None:
        # Line-buffered like the Lambda runtime, so a crash loses as little log as possible.
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        _prepared = _install_logging()
    return _prepared


def rehearse() -> bool:
    """Run, once and to no effect, the code a cold start runs after the function is known: a
    pre-spawned sandbox calls this while it waits. In a freshly forked process the first run
    of any code mostly pays for copying the pages it touches from the zygote (measured in a
    fork: installing the logging handler ~7x its second run; importing a one-line module from
    a new directory 970 µs, 180 µs after importing another one from a directory of its own),
    and a sandbox that waits can pay for that ahead. False if the stand-in handler is missing
    (then only the import is not rehearsed)."""
    header = {"t": "invoke", "id": "rehearsal", "deadline": 0, "arn": "", "identity": None}
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours, theirs:
        theirs.sendall(protocol.encode(header, b"{}"))
        header, payload = _ControlChannel(ours).recv()
        ok, body = _invoke(lambda event, context: {"ok": True}, header, payload, FunctionInfo({}))
        ok, body = _within_frame_limit(ok, body, "rehearsal")
        ours.sendall(protocol.encode({"t": "result", "id": "rehearsal", "ok": ok}, body))
    _flush_streams()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_getscheduler(0)
        os.sched_param(0)
    sys.path.insert(0, _REHEARSAL_DIR)
    try:
        load_handler("gureum_rehearsal.handler")
        return True
    except _InitError:
        return False
    finally:
        sys.path.remove(_REHEARSAL_DIR)
        sys.path_importer_cache.pop(_REHEARSAL_DIR, None)
        sys.modules.pop("gureum_rehearsal", None)


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
    # after every invocation: try/except, not contextlib.suppress (4x the cost per stream)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:  # noqa: SIM105
            stream.flush()  # type: ignore[union-attr]
        except Exception:  # a stream the function replaced or broke
            pass


def _log_error(error: dict[str, Any]) -> None:
    """Print the error record into the function's log, as AWS's runtime does."""
    record = (
        f"[ERROR] {error['errorType']}: {error['errorMessage']}\n"
        f"Traceback (most recent call last):\n{''.join(error['stackTrace'])}"
    )
    _flush_streams()
    with contextlib.suppress(OSError):  # the function may have closed its stderr
        os.write(2, record.encode(errors="backslashreplace"))


def _end_log(marker_fd: int, request_id: str, *, unless_drained: bool = False) -> bool:
    """Write the end marker for `request_id`; return whether it was written. With
    `unless_drained`, not while the log pipe holds nothing unread: then the agent has read,
    and so holds, everything written so far, the marker would only cost it one more wakeup
    and read, and the result says `drained` instead."""
    # Whatever the function did to sys.stdout, fd 1 or the streams, the marker must get out.
    _flush_streams()
    if unless_drained and _pipe_empty(marker_fd):
        return False
    os.write(marker_fd, protocol.LOG_END_MARKER + request_id.encode() + b"\n")
    return True


def _pipe_empty(fd: int) -> bool:
    """Whether the pipe whose write end is `fd` holds no unread bytes (False where that
    cannot be told)."""
    try:
        unread: int = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]
    except OSError:
        return False
    return unread == 0


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
    """This process image's peak RSS in kB: VmHWM in /proc/self/status. getrusage's ru_maxrss
    is max(VmHWM, the peak of the image that exec replaced), so it *is* VmHWM once it is above
    what it was at the start, or from the start if it was not above VmHWM then: a getrusage
    call instead of the kernel rendering the whole status file on every invocation (~8x the
    cost). The status file is opened once and re-read with pread, which renders it afresh;
    create this in the instance's own process (after any fork)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        with contextlib.suppress(OSError):
            self._fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
        at_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # above VmHWM: the image before exec peaked higher, and ru_maxrss says so until this
        # one outgrows it
        self._before_exec = at_start if at_start > self._status_kb() else 0

    def kb(self) -> int:
        peak: int = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if peak > self._before_exec else self._status_kb()

    def _status_kb(self) -> int:
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


def parse_args(argv: list[str]) -> types.SimpleNamespace:
    """`--control-fd N [--path DIR]... [--rlimit NAME=VALUE]... [--template] [--port N]...`
    (by hand: building an argparse parser costs most of a millisecond of every cold start)."""
    args = types.SimpleNamespace(control_fd=None, path=[], rlimit=[], template=False, port=[])
    words = iter(argv)
    for flag in words:
        if flag == "--template":
            args.template = True
            continue
        value = next(words, None)
        if value is None:
            raise SystemExit(f"bootstrap: {flag} needs a value")
        if flag == "--control-fd":
            args.control_fd = int(value)
        elif flag in ("--path", "--rlimit"):
            getattr(args, flag[2:]).append(value)
        elif flag == "--port":  # the template's forwarders, which its instances may reach
            args.port.append(int(value))
        else:
            raise SystemExit(f"bootstrap: unknown argument {flag}")
    if args.control_fd is None:
        raise SystemExit("bootstrap: --control-fd is required")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    _apply_rlimits(args.rlimit)
    # SCHED_BATCH: a woken instance waits for the running task's slice instead of preempting
    # it, so a busy gateway is not cut off mid-request by each instance it wakes (measured
    # at 32 concurrent invokes on 2 cores: +7 % throughput on a quiet machine, 2.1x with
    # other work loading the cores). Same CPU share; no privilege needed; where refused,
    # instances simply run as before.
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    sock = socket.socket(fileno=args.control_fd)
    # Processes the function starts must not hold the control socket (or the agent would not
    # see this process die); the markers get their own descriptor on the log pipe.
    sock.set_inheritable(False)
    marker_fd = os.dup(1)
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    sys.path[:0] = [task_root, *args.path]
    os.chdir(task_root)
    request_filter = prepare()
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        logging.getLogger().setLevel(level)
    if args.template:
        import subprocess  # noqa: F401  (imported once here, patched in each instance)
    try:
        handler = load_handler(os.environ.get("_HANDLER", ""))
    except _InitError as exc:
        _log_error(exc.error)
        _end_log(marker_fd, "init")
        sock.sendall(protocol.encode({"t": "init_error"}, json.dumps(exc.error).encode()))
        return
    _end_log(marker_fd, "init")
    if args.template and not _Template(sock, marker_fd, args.port).run():
        return  # the template retired and its instances are gone
    sock.sendall(protocol.encode({"t": "ready"}))
    _serve(sock, marker_fd, handler, request_filter)


def _serve(sock: socket.socket, marker_fd: int, handler: Any, request_filter: Any) -> None:
    function = FunctionInfo()
    peak_memory = PeakMemory()
    channel = _ControlChannel(sock)
    while True:
        try:
            header, payload = channel.recv()
        except EOFError:
            return
        queued = "timeout_ms" in header  # sent while init ran: its time limit starts now
        if queued:
            began = time.perf_counter()
            header["deadline"] = int(time.time() * 1000) + int(header["timeout_ms"])
        request_id = header["id"]
        request_filter.request_id = request_id
        ok, body = _within_frame_limit(*_invoke(handler, header, payload, function), request_id)
        result = {"t": "result", "id": request_id, "ok": ok, "max_rss_kb": peak_memory.kb()}
        if not _end_log(marker_fd, request_id, unless_drained=True):
            result["drained"] = True
        if queued:  # the agent may get "ready" and this in one read: it cannot time this
            result["ms"] = (time.perf_counter() - began) * 1000
        sock.sendall(protocol.encode(result, body))


def recv_with_fds(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One frame and the descriptors sent with it (SCM_RIGHTS); None at end of stream."""
    fds = array.array("i")
    head, ancdata, _, _ = sock.recvmsg(protocol.HEADER.size, socket.CMSG_SPACE(8 * 4))
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not head:
        return None
    while len(head) < protocol.HEADER.size:
        more = sock.recv(protocol.HEADER.size - len(head))
        if not more:
            return None
        head += more
    header_len, payload_len = protocol.decode_lengths(head)
    body = b""
    while len(body) < header_len + payload_len:
        more = sock.recv(header_len + payload_len - len(body))
        if not more:
            return None
        body += more
    return protocol.decode_header(body[:header_len]), list(fds)


# ---- templates (see the module docstring) ---------------------------------------------------

PR_SET_DUMPABLE = 4
LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_NET_PORT = 2
LANDLOCK_ACCESS_NET_BIND_TCP, LANDLOCK_ACCESS_NET_CONNECT_TCP = 1, 2
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET, LANDLOCK_SCOPE_SIGNAL = 1, 2
LANDLOCK_MIN_ABI = 6  # signal scoping


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, or 0 without Landlock."""
    libc = ctypes.CDLL(None, use_errno=True)
    version = libc.syscall(
        LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), LANDLOCK_CREATE_RULESET_VERSION
    )
    return max(int(version), 0)


def _enter_own_landlock_domain(ports: list[int]) -> None:
    """From now on this process and its descendants cannot signal, ptrace or reach abstract
    Unix sockets of processes outside them, and may connect only to `ports` over TCP."""
    if landlock_abi() < LANDLOCK_MIN_ABI:
        raise OSError(f"Landlock ABI {LANDLOCK_MIN_ABI} (Linux 6.12) is not available")
    libc = ctypes.CDLL(None, use_errno=True)
    net = LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP
    scoped = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", 0, net, scoped), 24)
    ruleset = libc.syscall(LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(24), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for port in ports:
            rule = ctypes.create_string_buffer(
                struct.pack("=QQ", LANDLOCK_ACCESS_NET_CONNECT_TCP, port), 16
            )
            if libc.syscall(LANDLOCK_ADD_RULE, ruleset, LANDLOCK_RULE_NET_PORT, rule, 0) != 0:
                raise OSError(ctypes.get_errno(), "landlock_add_rule failed")
        if libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def _replace_shared_descriptors(keep: set[int]) -> None:
    """Sockets and pipes inherited from the template would be shared with every sibling:
    put a dead descriptor in each one's place (the number stays taken, so an object that
    still holds it cannot close someone else's file later)."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep:
            continue
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            continue  # the listing's own descriptor
        if stat.S_ISSOCK(mode):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
                os.dup2(dead.fileno(), fd, inheritable=False)
        elif stat.S_ISFIFO(mode):
            null = os.open("/dev/null", os.O_RDWR)
            os.dup2(null, fd, inheritable=False)
            os.close(null)


def _keep_tmp_in_subprocesses() -> None:
    subprocess = sys.modules.get("subprocess")
    if subprocess is None:
        return
    original = subprocess.Popen.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), TMP_FD)
        original(self, *args, **kwargs)

    subprocess.Popen.__init__ = __init__


class _Template:
    """The fork loop of a template; `run()` returns True in a forked instance (which then
    serves invocations) and False in the template once it has retired.

    A child does nothing until the agent has moved it into its own cgroup ("g" on its link, a
    socket whose other end the agent holds): whatever it touched before would stay charged
    to the template's. It then confines itself and waits on the same link for its activation
    (the instance's env and descriptors), so the agent may fork spares ahead of need and hand
    one over in a single message, without a detour through the template.
    """

    def __init__(self, sock: socket.socket, marker_fd: int, ports: list[int]) -> None:
        self.sock = sock
        self.marker_fd = marker_fd
        self.ports = ports
        self.children: set[int] = set()

    def refusal(self) -> str | None:
        """Why this process cannot serve as a template, if it cannot."""
        threading = sys.modules.get("threading")
        if threading is not None:
            ours = ("gureum-forwarder", "gureum-pipe")
            extra = [
                t.name
                for t in threading.enumerate()
                if t is not threading.main_thread() and not t.name.startswith(ours)
            ]
            if extra:
                return f"the handler module left threads running at import: {extra}"
        try:
            while True:
                pid, _ = os.waitpid(-1, os.WNOHANG)
                if pid == 0:
                    return "the handler module left child processes running at import"
        except ChildProcessError:
            return None

    def run(self) -> bool:
        reason = self.refusal()
        if reason is not None:
            self.sock.sendall(protocol.encode({"t": "refused", "reason": reason}))
            return False
        random = sys.modules.get("random")
        generators: list[Any] = []
        if random is not None:
            generators = [
                o
                for o in gc.get_objects()
                if isinstance(o, random.Random) and not isinstance(o, random.SystemRandom)
            ]
        # the imported objects stay where they are: a collection would touch (and so copy)
        # every page that holds one, in the template and in each instance
        gc.disable()
        gc.freeze()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.sock.sendall(protocol.encode({"t": "ready"}))
        accepting = True
        while accepting or self.children:
            watched = [wake_read, self.sock.fileno()] if accepting else [wake_read]
            try:
                ready, _, _ = select.select(watched, [], [])
            except InterruptedError:
                continue
            if wake_read in ready:
                os.read(wake_read, 4096)
                self._reap()
            if not accepting or self.sock.fileno() not in ready:
                continue
            request = recv_with_fds(self.sock)
            if request is None:
                accepting = False  # retired: stay until the instances are gone (PID 1)
                continue
            header, fds = request
            try:
                if self._handle(header, fds):
                    os.close(wake_read)
                    os.close(wake_write)
                    self._become_instance(generators)
                    return True
            finally:
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._reap()
        return False

    def _handle(self, header: dict[str, Any], fds: list[int]) -> bool:
        """One request from the agent; True in a newly forked child."""
        if header.get("t") != "fork" or len(fds) != 1:
            return False
        pid = os.fork()
        if pid == 0:
            self.link = socket.socket(fileno=os.dup(fds[0]))
            return True
        self.children.add(pid)
        self._send({"t": "forked", "id": header.get("id"), "pid": pid})
        return False

    def _send(self, header: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the agent went away; PDEATHSIG follows
            self.sock.sendall(protocol.encode(header))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:  # else an orphan of some instance, reparented to us
                self.children.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                self._send({"t": "exit", "pid": pid, "status": code})

    def _become_instance(self, generators: Any) -> None:
        """In the forked child: wait to be placed, confine, wait for activation, take it."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        try:
            placed = self.link.recv(1) == b"g"
        except OSError:
            placed = False
        if not placed:
            os._exit(0)  # never placed: the template retired or the agent gave up on us
        try:
            # the template's control socket is among the replaced; activation reuses its number
            _replace_shared_descriptors({0, 1, 2, self.marker_fd, TMP_FD, self.link.fileno()})
            _enter_own_landlock_domain(self.ports)
        except BaseException as exc:
            os.write(2, f"[ERROR] Sandbox.SetupError: {exc}\n".encode())
            os._exit(125)
        request = recv_with_fds(self.link)
        if request is None or len(request[1]) != 3:
            os._exit(0)  # a spare that was never used
        self.link.close()
        header, (control, log, tmp) = request
        os.dup2(control, self.sock.fileno(), inheritable=False)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.dup2(log, self.marker_fd, inheritable=False)
        os.dup2(tmp, TMP_FD)
        for fd in (control, log, tmp):
            os.close(fd)
        replace_environment(header.get("env") or {})
        random = sys.modules.get("random")
        if random is not None:
            random.seed()
        for generator in generators:
            generator.seed()
        _keep_tmp_in_subprocesses()
        gc.enable()
        _end_log(self.marker_fd, "init")


if __name__ == "__main__":
    main()
