"""`Instance` over the `process` driver: the shim's contract, faults, limits and logs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest

from gureum.errors import SandboxError
from gureum.runtime import bootstrap as bootstrap_module
from gureum.sandbox import instance as instance_module
from gureum.sandbox.base import InstanceSpec
from gureum.sandbox.instance import MAX_LOG_BYTES, InitFailed, Instance, InvokeOutcome
from gureum.sandbox.libraries import prepare_runtime_libraries
from gureum.sandbox.process import ADDRESS_SPACE_HEADROOM_MB, ProcessSandbox

T = TypeVar("T")
MEMORY_MB = 128
ARN = "arn:aws:lambda:us-east-1:123456789012:function:fn"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def make_spec(code_dir: Path, handler: str = "app.handler", **changes: Any) -> InstanceSpec:
    env = {
        "_HANDLER": handler,
        "LAMBDA_TASK_ROOT": str(code_dir),
        "AWS_LAMBDA_FUNCTION_NAME": "fn",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(MEMORY_MB),
        **changes.pop("env", {}),
    }
    fields: dict[str, Any] = {"memory_mb": MEMORY_MB, "timeout_s": 3.0, **changes}
    return InstanceSpec("fn", "$LATEST", code_dir, handler, env=env, **fields)


@pytest.fixture
def code_dir(tmp_path: Path) -> Path:
    path = tmp_path / "code"
    path.mkdir()
    return path


def write(code_dir: Path, source: str, name: str = "app.py") -> None:
    (code_dir / name).write_text(source)


@asynccontextmanager
async def started(
    code_dir: Path, sandbox: ProcessSandbox | None = None, **spec: Any
) -> AsyncIterator[Instance]:
    instance = await Instance.start(sandbox or ProcessSandbox([]), make_spec(code_dir, **spec))
    try:
        yield instance
    finally:
        await instance.close()


async def invoke(
    instance: Instance, event: Any = None, request_id: str = "req-1", timeout_s: float = 3.0
) -> InvokeOutcome:
    raw = b"" if event is None else json.dumps(event).encode()
    return await instance.invoke(request_id, raw, invoked_arn=ARN, timeout_s=timeout_s)


def with_instance(code_dir: Path, body: Callable[[Instance], Awaitable[T]], **spec: Any) -> T:
    async def main() -> T:
        async with started(code_dir, **spec) as instance:
            return await body(instance)

    return run(main())


def pid_is_dead(pid: int, within_s: float = 2.0) -> bool:
    """True once `pid` no longer runs. A zombie counts as dead: once orphaned it is reaped by
    the host's init, which some container inits never do."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as stat:
                state = stat.read().rpartition(")")[2].split()[0]
        except (ProcessLookupError, FileNotFoundError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


# ---- success and handler errors -----------------------------------------------------------


def test_success_returns_result_log_and_memory(code_dir: Path) -> None:
    write(
        code_dir,
        "import os\n"
        "print('init line')\n"
        "def handler(event, context):\n"
        "    print('hello', event['name'])\n"
        "    return {'greeting': 'hi ' + event['name'], 'arn': context.invoked_function_arn,\n"
        "            'id': context.aws_request_id, 'cwd': os.getcwd()}\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, bytes, float]:
        return await invoke(instance, {"name": "gureum"}), instance.init_log, instance.init_ms

    outcome, init_log, init_ms = with_instance(code_dir, body)

    assert outcome.status == "success"
    assert outcome.error_type is None
    assert json.loads(outcome.payload) == {
        "greeting": "hi gureum",
        "arn": ARN,
        "id": "req-1",
        "cwd": str(code_dir),
    }
    assert outcome.log == b"hello gureum\n"
    assert init_log == b"init line\n"
    assert 0 < init_ms < 10_000
    assert 0 < outcome.run_ms < 3000
    assert 1024 < outcome.max_rss_kb < 200 * 1024


def test_handler_error_is_aws_shaped_without_shim_frames(code_dir: Path) -> None:
    write(
        code_dir,
        "def helper(value):\n"
        "    raise ValueError('bad value: ' + value)\n"
        "def handler(event, context):\n"
        "    helper(event['v'])\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, InvokeOutcome, bool]:
        failed = await invoke(instance, {"v": "x"}, "req-err")
        again = await invoke(instance, {"v": "y"}, "req-again")
        return failed, again, instance.alive

    failed, again, alive = with_instance(code_dir, body)

    assert failed.status == "error"
    assert failed.error_type == "ValueError"
    error = json.loads(failed.payload)
    assert set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert error["errorMessage"] == "bad value: x"
    assert error["errorType"] == "ValueError"
    assert error["requestId"] == "req-err"
    app = str(code_dir / "app.py")
    # The shape AWS's runtime produces (traceback.format_list), user frames only.
    assert error["stackTrace"] == [
        f"  File \"{app}\", line 4, in handler\n    helper(event['v'])\n",
        f"  File \"{app}\", line 2, in helper\n    raise ValueError('bad value: ' + value)\n",
    ]
    assert b"[ERROR] ValueError: bad value: x" in failed.log
    assert b"bootstrap.py" not in failed.log
    # A handler error leaves the instance warm and usable.
    assert alive
    assert again.status == "error"
    assert json.loads(again.payload)["errorMessage"] == "bad value: y"


def test_unserialisable_result_is_marshal_error(code_dir: Path) -> None:
    write(code_dir, "def handler(event, context):\n    return {'s': {1, 2}}\n")

    outcome = with_instance(code_dir, invoke)

    assert outcome.status == "error"
    assert outcome.error_type == "Runtime.MarshalError"
    assert "Unable to marshal response" in json.loads(outcome.payload)["errorMessage"]


def test_results_and_errors_that_are_awkward_to_encode(code_dir: Path) -> None:
    write(
        code_dir,
        "import os, sys\n"
        "from decimal import Decimal\n"
        "class Weird(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no string for you')\n"
        "def handler(event, context):\n"
        "    kind = event['kind']\n"
        "    if kind == 'decimals':\n"
        "        return [Decimal('2'), Decimal('0.5'), Decimal('1E+2'), Decimal('Infinity'),\n"
        "                Decimal('-Infinity'), Decimal('NaN')]\n"
        "    if kind == 'signalling':\n"
        "        return Decimal('sNaN')\n"
        "    if kind == 'deep':\n"
        "        value = []\n"
        "        for _ in range(100000):\n"
        "            value = [value]\n"
        "        return value\n"
        "    if kind == 'weird':\n"
        "        raise Weird()\n"
        "    if kind == 'closed':\n"
        "        sys.stderr.close()\n"
        "        os.close(2)\n"
        "        raise ValueError('stderr is gone')\n",
    )

    async def body(instance: Instance) -> dict[str, InvokeOutcome]:
        kinds = ["decimals", "signalling", "deep", "weird", "closed", "decimals"]
        return {
            f"{n}-{kind}": await invoke(instance, {"kind": kind}, f"req-{n}")
            for n, kind in enumerate(kinds)
        }

    outcomes = with_instance(code_dir, body)

    decimals = outcomes["0-decimals"]
    assert decimals.status == "success"
    assert decimals.payload == b"[2, 0.5, 100, Infinity, -Infinity, NaN]"
    for key in ("1-signalling", "2-deep"):
        assert outcomes[key].status == "error", key
        assert outcomes[key].error_type == "Runtime.MarshalError"
    weird = json.loads(outcomes["3-weird"].payload)
    assert weird["errorType"] == "Weird"
    assert weird["errorMessage"] == "<unprintable Weird object>"
    closed = outcomes["4-closed"]
    assert closed.status == "error"
    assert json.loads(closed.payload)["errorMessage"] == "stderr is gone"
    # None of it cost the instance its life.
    assert outcomes["5-decimals"].status == "success"


def test_result_too_large_for_a_frame_is_an_error(code_dir: Path) -> None:
    write(
        code_dir,
        "def handler(event, context):\n    return 'x' * event['size']\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, InvokeOutcome, bool]:
        huge = await invoke(instance, {"size": 65 << 20}, "req-huge")
        small = await invoke(instance, {"size": 3}, "req-small")
        return huge, small, instance.alive

    huge, small, alive = with_instance(code_dir, body)

    assert huge.status == "error"
    assert huge.error_type == "Function.ResponseSizeTooLarge"
    assert json.loads(huge.payload)["requestId"] == "req-huge"
    assert alive
    assert small.status == "success" and json.loads(small.payload) == "xxx"


# ---- timeouts and crashes -----------------------------------------------------------------


def test_timeout_kills_instance_and_a_child_that_ignores_sigterm(
    code_dir: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    write(
        code_dir,
        "import subprocess, sys, time\n"
        "def handler(event, context):\n"
        "    print('before sleep')\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import signal,time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "    time.sleep(60)\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, bool, int]:
        outcome = await invoke(instance, {}, "req-slow", timeout_s=1.0)
        return outcome, instance.alive, instance.process.pid

    outcome, alive, shim_pid = with_instance(code_dir, body)

    assert outcome.status == "timeout"
    assert outcome.error_type == "Sandbox.Timedout"
    error = json.loads(outcome.payload)
    assert error["errorMessage"] == "RequestId: req-slow Error: Task timed out after 1.00 seconds"
    assert 1000 <= outcome.run_ms < 3000
    assert b"before sleep\n" in outcome.log
    assert outcome.log.endswith(b"Task timed out after 1.00 seconds\n")
    assert not alive
    assert pid_is_dead(shim_pid)
    assert pid_is_dead(int(pid_file.read_text()))


def test_os_exit_is_a_crash_with_exit_status(code_dir: Path) -> None:
    write(
        code_dir,
        "import os\ndef handler(event, context):\n    print('going down')\n    os._exit(7)\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, bool]:
        return await invoke(instance, {}, "req-exit"), instance.alive

    outcome, alive = with_instance(code_dir, body)

    assert outcome.status == "crash"
    assert outcome.error_type == "Runtime.ExitError"
    assert json.loads(outcome.payload) == {
        "errorMessage": "RequestId: req-exit Error: Runtime exited with error: exit status 7",
        "errorType": "Runtime.ExitError",
        "requestId": "req-exit",
        "stackTrace": [],
    }
    assert b"going down\n" in outcome.log
    assert not alive


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("sys.exit(3)", "Runtime exited with error: exit status 3"),
        ("sys.exit('fatal problem')", "Runtime exited with error: exit status 1"),
        ("sys.exit(0)", "Runtime exited without providing a reason"),
    ],
)
def test_sys_exit_in_handler_ends_the_instance(code_dir: Path, call: str, message: str) -> None:
    write(code_dir, f"import sys\ndef handler(event, context):\n    {call}\n")

    async def body(instance: Instance) -> tuple[InvokeOutcome, bool]:
        return await invoke(instance, {}, "req-sys"), instance.alive

    outcome, alive = with_instance(code_dir, body)

    assert outcome.status == "crash"
    assert outcome.error_type == "Runtime.ExitError"
    assert json.loads(outcome.payload)["errorMessage"] == f"RequestId: req-sys Error: {message}"
    assert not alive
    if "fatal" in call:
        assert b"fatal problem" in outcome.log


def test_killed_by_signal_reports_the_signal(code_dir: Path) -> None:
    write(
        code_dir,
        "import os, signal\n"
        "def handler(event, context):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
    )

    outcome = with_instance(code_dir, invoke)

    assert outcome.status == "crash"
    assert json.loads(outcome.payload)["errorMessage"].endswith(
        "Runtime exited with error: signal: 9"
    )


def test_crash_is_seen_while_a_child_holds_the_sockets(code_dir: Path, tmp_path: Path) -> None:
    # The child inherits every descriptor it can; the agent must still see the instance die
    # at once rather than wait for the timeout.
    pid_file = tmp_path / "child.pid"
    write(
        code_dir,
        "import os, subprocess, sys\n"
        "def handler(event, context):\n"
        "    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
        "                             close_fds=False)\n"
        f"    open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "    os._exit(5)\n",
    )

    async def body(instance: Instance) -> InvokeOutcome:
        return await invoke(instance, {}, "req-orphan", timeout_s=20.0)

    outcome = with_instance(code_dir, body)

    assert outcome.status == "crash"
    assert outcome.run_ms < 5000
    assert json.loads(outcome.payload)["errorMessage"].endswith("exit status 5")
    assert pid_is_dead(int(pid_file.read_text()))


@pytest.mark.parametrize("idle_s", [0.0, 0.6])
def test_exit_while_idle_is_a_crash_on_the_next_invocation(code_dir: Path, idle_s: float) -> None:
    # Exit is watched without a task per invocation: an instance that dies between
    # invocations (right before the next one, or well before it) must still be seen as dead.
    write(
        code_dir,
        "import os, threading\n"
        "def handler(event, context):\n"
        "    threading.Timer(event['exit_after'], os._exit, (9,)).start()\n"
        "    return 'ok'\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, InvokeOutcome, bool]:
        first = await invoke(instance, {"exit_after": 0.1}, "req-first")
        await asyncio.sleep(0.2 + idle_s)
        second = await invoke(instance, {"exit_after": 60}, "req-second")
        return first, second, instance.alive

    first, second, alive = with_instance(code_dir, body)

    assert first.status == "success"
    assert second.status == "crash"
    assert json.loads(second.payload)["errorMessage"].endswith("exit status 9")
    assert not alive


def test_cancelled_invocation_kills_the_instance(code_dir: Path) -> None:
    write(code_dir, "import time\ndef handler(event, context):\n    time.sleep(event['s'])\n")

    async def body(instance: Instance) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(invoke(instance, {"s": 0.5}), 0.1)
        # Its late reply must never be taken for the next caller's.
        assert not instance.alive
        with pytest.raises(SandboxError):
            await invoke(instance, {"s": 0}, "req-next")

    with_instance(code_dir, body)


# ---- init ---------------------------------------------------------------------------------


def start_failure(code_dir: Path, handler: str = "app.handler") -> InitFailed:
    async def main() -> InitFailed:
        with pytest.raises(InitFailed) as caught:
            await Instance.start(ProcessSandbox([]), make_spec(code_dir, handler))
        return caught.value

    return run(main())


def test_init_import_module_error(code_dir: Path) -> None:
    failed = start_failure(code_dir, "missing.handler")

    assert failed.error["errorType"] == "Runtime.ImportModuleError"
    assert failed.error["errorMessage"] == (
        "Unable to import module 'missing': No module named 'missing'"
    )
    assert b"[ERROR] Runtime.ImportModuleError" in failed.log
    assert failed.init_ms > 0


def test_init_import_error_inside_user_module(code_dir: Path) -> None:
    write(code_dir, "import not_installed_anywhere\ndef handler(e, c):\n    return 1\n")

    failed = start_failure(code_dir)

    assert failed.error["errorType"] == "Runtime.ImportModuleError"
    assert failed.error["errorMessage"] == (
        "Unable to import module 'app': No module named 'not_installed_anywhere'"
    )


def test_init_handler_not_found(code_dir: Path) -> None:
    write(code_dir, "def other(event, context):\n    return 1\n")

    failed = start_failure(code_dir, "app.handler")

    assert failed.error["errorType"] == "Runtime.HandlerNotFound"
    assert failed.error["errorMessage"] == "Handler 'handler' missing on module 'app'"


@pytest.mark.parametrize("handler", ["app", "", "app."])
def test_init_malformed_handler_name(code_dir: Path, handler: str) -> None:
    write(code_dir, "def handler(event, context):\n    return 1\n")

    failed = start_failure(code_dir, handler)

    assert failed.error["errorType"] == "Runtime.MalformedHandlerName"
    assert failed.error["errorMessage"].startswith(f"Bad handler '{handler}'")


def test_init_user_code_syntax_error(code_dir: Path) -> None:
    write(code_dir, "def handler(event, context):\n    return (1 +\n")

    failed = start_failure(code_dir)

    assert failed.error["errorType"] == "Runtime.UserCodeSyntaxError"
    assert failed.error["errorMessage"].startswith("Syntax error in module 'app': ")
    trace = "".join(failed.error["stackTrace"])
    assert str(code_dir / "app.py") in trace
    assert "bootstrap.py" not in trace
    assert "importlib" not in trace


def test_init_exception_in_user_module(code_dir: Path) -> None:
    write(code_dir, "def boom():\n    raise KeyError('CONFIG')\nboom()\n")

    failed = start_failure(code_dir)

    assert failed.error["errorType"] == "KeyError"
    assert failed.error["errorMessage"] == "'CONFIG'"
    trace = "".join(failed.error["stackTrace"])
    assert f'File "{code_dir / "app.py"}", line 3, in <module>' in trace
    assert "bootstrap.py" not in trace
    assert "importlib" not in trace


def test_init_exit_is_exit_error(code_dir: Path) -> None:
    write(code_dir, "import os\nprint('bye')\nos._exit(4)\n")

    failed = start_failure(code_dir)

    assert failed.error["errorType"] == "Runtime.ExitError"
    assert failed.error["errorMessage"] == "Runtime exited during init: exit status 4"
    assert b"bye\n" in failed.log


def test_init_that_hangs_times_out(code_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(instance_module, "INIT_TIMEOUT_S", 1.0)
    write(
        code_dir,
        "import os, time\n"
        f"open({str(code_dir / 'init.pid')!r}, 'w').write(str(os.getpid()))\n"
        "print('loading', flush=True)\n"
        "time.sleep(60)\n",
    )
    started_at = time.monotonic()

    failed = start_failure(code_dir)

    assert time.monotonic() - started_at < 5
    assert failed.error["errorType"] == "Runtime.InitTimeout"
    assert failed.init_ms == 1000
    assert b"loading\n" in failed.log
    assert pid_is_dead(int((code_dir / "init.pid").read_text()))


def test_invoke_sent_during_init_runs_after_it_with_all_its_time(code_dir: Path) -> None:
    # the instance pool sends a new instance's first invoke before its init ends
    write(
        code_dir,
        "import time\ntime.sleep(0.5)\n"
        "def handler(event, context):\n    return context.get_remaining_time_in_millis()\n",
    )

    async def main() -> tuple[Instance, InvokeOutcome]:
        instance = await Instance.spawn(ProcessSandbox([]), make_spec(code_dir))
        try:
            assert not instance.initialised
            return instance, await invoke(instance, {}, timeout_s=1.0)
        finally:
            await instance.close()

    instance, outcome = run(main())

    assert outcome.status == "success", outcome
    assert 900 < json.loads(outcome.payload) <= 1000  # the init's 0.5 s is not charged to it
    assert instance.initialised and instance.init_ms >= 500
    assert 0 < outcome.run_ms < 500  # its run, even if "ready" and the result came together


def test_run_time_of_an_invoke_answered_together_with_ready(code_dir: Path) -> None:
    # "ready" and the result can reach the agent in one read; the run still has its duration
    write(
        code_dir,
        "import time\ntime.sleep(0.3)\n"
        "def handler(event, context):\n    time.sleep(0.1)\n    return 1\n",
    )

    async def main() -> InvokeOutcome:
        instance = await Instance.spawn(ProcessSandbox([]), make_spec(code_dir))
        try:
            call = asyncio.ensure_future(invoke(instance, {}))
            await asyncio.sleep(0.05)  # the invoke frame is out; the agent waits for "ready"
            time.sleep(1.0)  # noqa: ASYNC251 - blocks the loop while init and the invocation finish
            return await call
        finally:
            await instance.close()

    outcome = run(main())

    assert outcome.status == "success", outcome
    assert 100 <= outcome.run_ms < 1000


def test_invoke_sent_during_a_failing_init_raises_init_failed(code_dir: Path) -> None:
    write(code_dir, "raise RuntimeError('no config')\n")

    async def main() -> Instance:
        instance = await Instance.spawn(ProcessSandbox([]), make_spec(code_dir))
        with pytest.raises(InitFailed) as failed:
            await invoke(instance, {})
        assert failed.value.error["errorType"] == "RuntimeError"
        assert failed.value.error["errorMessage"] == "no config"
        return instance

    instance = run(main())

    assert not instance.alive
    with pytest.raises(SandboxError):
        run(invoke(instance, {}))


def test_init_that_failed_and_ended_before_the_first_invoke_still_says_why(
    code_dir: Path,
) -> None:
    write(code_dir, "raise RuntimeError('no config')\n")

    async def main() -> None:
        instance = await Instance.spawn(ProcessSandbox([]), make_spec(code_dir))
        await asyncio.sleep(1.0)  # the init fails and the process ends meanwhile
        with pytest.raises(InitFailed) as failed:
            await invoke(instance, {})
        assert failed.value.error["errorMessage"] == "no config"

    run(main())


def test_rehearsal_runs_clean_and_leaves_no_module_behind() -> None:
    # what a pre-spawned sandbox runs while it waits; its stand-in handler must load
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(bootstrap_module.__file__).parent)!r})\n"
        "import bootstrap\n"
        "before = set(sys.modules)\n"
        "path = list(sys.path)\n"
        "bootstrap.prepare()\n"
        "assert bootstrap.rehearse()\n"
        "assert 'gureum_rehearsal' not in sys.modules and sys.path == path\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no error record: the dummy invocation and the import succeeded
    assert "gureum_rehearsal" not in done.stdout


# ---- memory -------------------------------------------------------------------------------


def test_allocation_beyond_address_space_limit_is_a_memory_error(code_dir: Path) -> None:
    # The process driver bounds memory by RLIMIT_AS (memory + headroom): an allocation beyond it
    # fails inside the function as MemoryError, a plain handler error, and the instance stays
    # warm and usable. (Only a cgroup driver could report Runtime.OutOfMemory as AWS does.)
    too_much = (MEMORY_MB + ADDRESS_SPACE_HEADROOM_MB + 512) * 1024 * 1024
    write(
        code_dir,
        "def handler(event, context):\n"
        "    if event.get('size'):\n"
        "        block = bytearray(event['size'])\n"
        "        return len(block)\n"
        "    return 'still here'\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, InvokeOutcome, bool]:
        failed = await invoke(instance, {"size": too_much}, "req-oom")
        after = await invoke(instance, {}, "req-after")
        return failed, after, instance.alive

    failed, after, alive = with_instance(code_dir, body)

    assert failed.status == "error"
    assert failed.error_type == "MemoryError"
    assert json.loads(failed.payload)["requestId"] == "req-oom"
    assert b"[ERROR] MemoryError" in failed.log
    assert alive
    assert after.status == "success"
    assert json.loads(after.payload) == "still here"


# ---- logs ---------------------------------------------------------------------------------


def test_huge_log_is_truncated_with_notice_and_next_log_is_clean(code_dir: Path) -> None:
    total = 3 * MAX_LOG_BYTES
    write(
        code_dir,
        "import sys\n"
        "def handler(event, context):\n"
        "    if event.get('flood'):\n"
        "        line = 'x' * 1023 + '\\n'\n"
        "        for _ in range(event['flood'] // 1024):\n"
        "            sys.stdout.write(line)\n"
        "        print('LAST LINE')\n"
        "    print('small', event.get('n'))\n"
        "    return 'done'\n",
    )

    async def body(instance: Instance) -> tuple[InvokeOutcome, InvokeOutcome]:
        flooded = await invoke(instance, {"flood": total}, "req-flood")
        small = await invoke(instance, {"n": 2}, "req-small")
        return flooded, small

    flooded, small = with_instance(code_dir, body)

    assert flooded.status == "success"
    notice = re.match(rb"\[gureum: (\d+) earlier log bytes dropped\]\n", flooded.log)
    assert notice is not None
    kept = flooded.log[notice.end() :]
    assert len(kept) <= MAX_LOG_BYTES
    assert int(notice.group(1)) + len(kept) == total + len(b"LAST LINE\n") + len(b"small None\n")
    assert kept.endswith(b"LAST LINE\nsmall None\n")
    assert small.status == "success"
    assert small.log == b"small 2\n"


def test_logs_are_split_per_invocation(code_dir: Path) -> None:
    write(
        code_dir,
        "import sys\n"
        "def handler(event, context):\n"
        "    for i in range(event['lines']):\n"
        "        print(context.aws_request_id, i)\n"
        "    sys.stderr.write(f'err {context.aws_request_id}\\n')\n"
        "    return event['n']\n",
    )

    async def body(instance: Instance) -> list[InvokeOutcome]:
        outcomes = []
        for n in range(50):
            # Vary the volume so that log chunks straddle the end markers.
            event = {"n": n, "lines": (n * 37) % 200}
            outcomes.append(await invoke(instance, event, f"req-{n}"))
        return outcomes

    outcomes = with_instance(code_dir, body)

    for n, outcome in enumerate(outcomes):
        assert outcome.status == "success"
        assert json.loads(outcome.payload) == n
        expected = "".join(f"req-{n} {i}\n" for i in range((n * 37) % 200)) + f"err req-{n}\n"
        assert outcome.log == expected.encode(), f"invocation {n}"


def test_a_log_larger_than_the_pipe_is_whole_and_ends_with_its_invocation(
    code_dir: Path,
) -> None:
    """Output beyond the pipe's buffer (the agent reads while the function writes), then
    nothing, then a little: each invocation gets exactly its own."""
    write(
        code_dir,
        "import os\n"
        "def handler(event, context):\n"
        "    for i in range(event['lines']):\n"
        "        os.write(1, b'%s %06d\\n' % (context.aws_request_id.encode(), i))\n"
        "    print('done', context.aws_request_id)\n"
        "    return 0\n",
    )
    sizes = (20_000, 0, 3, 20_000)  # ~300 KB, nothing, a little, ~300 KB

    async def body(instance: Instance) -> list[bytes]:
        return [
            (await invoke(instance, {"lines": lines}, f"r{n}")).log for n, lines in enumerate(sizes)
        ]

    logs = with_instance(code_dir, body)
    for n, (log, lines) in enumerate(zip(logs, sizes, strict=True)):
        expected = b"".join(b"r%d %06d\n" % (n, i) for i in range(lines)) + b"done r%d\n" % n
        assert log == expected, f"invocation {n}"


def test_os_write_and_logging_are_captured(code_dir: Path) -> None:
    write(
        code_dir,
        "import logging, os, sys\n"
        "logger = logging.getLogger('app')\n"
        "def handler(event, context):\n"
        "    os.write(1, b'raw stdout\\n')\n"
        "    os.write(2, b'raw stderr\\n')\n"
        "    logger.warning('careful %s', 'now')\n"
        "    logger.info('not shown at the default level')\n"
        "    logging.error('root error')\n"
        "    context.log('via context\\n')\n"
        "    return 1\n",
    )

    outcome = with_instance(code_dir, invoke)

    lines = outcome.log.decode().splitlines()
    assert lines[:2] == ["raw stdout", "raw stderr"]
    warning = lines[2].split("\t")
    assert warning[0] == "[WARNING]"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", warning[1])
    assert warning[2:] == ["req-1", "careful now"]
    assert lines[3].startswith("[ERROR]\t") and lines[3].endswith("\treq-1\troot error")
    assert lines[4:] == ["via context"]


def test_marker_lookalikes_and_broken_streams_do_not_break_logs(code_dir: Path) -> None:
    write(
        code_dir,
        "import io, os, sys\n"
        "def handler(event, context):\n"
        "    if event.get('spoof'):\n"
        "        print('\\x1egureum-end req-other')\n"
        "        print('after spoof')\n"
        "    if event.get('break'):\n"
        "        print('before break')\n"
        "        sys.stdout = io.StringIO()\n"
        "        sys.stdout.close()\n"
        "        devnull = os.open(os.devnull, os.O_WRONLY)\n"
        "        os.dup2(devnull, 1)\n"
        "    return 'ok'\n",
    )

    async def body(instance: Instance) -> list[InvokeOutcome]:
        return [
            await invoke(instance, {"spoof": True}, "req-1"),
            await invoke(instance, {}, "req-other"),
            await invoke(instance, {"break": True}, "req-3"),
            await invoke(instance, {}, "req-4"),
        ]

    spoofed, plain, broken, after = with_instance(code_dir, body)

    assert spoofed.log == b"\x1egureum-end req-other\nafter spoof\n"
    assert plain.status == "success" and plain.log == b""
    assert broken.status == "success" and broken.log == b"before break\n"
    assert after.status == "success" and after.log == b""


# ---- lifecycle ----------------------------------------------------------------------------


def test_invoke_after_close_raises_and_close_is_idempotent(code_dir: Path) -> None:
    write(code_dir, "def handler(event, context):\n    return 1\n")

    async def main() -> int:
        instance = await Instance.start(ProcessSandbox([]), make_spec(code_dir))
        pid = instance.process.pid
        await instance.close()
        await instance.close()
        assert not instance.alive
        with pytest.raises(SandboxError):
            await invoke(instance)
        return pid

    pid = run(main())

    assert pid_is_dead(pid)


def test_instance_dead_after_crash_refuses_invocations(code_dir: Path) -> None:
    write(code_dir, "import os\ndef handler(event, context):\n    os._exit(1)\n")

    async def body(instance: Instance) -> None:
        assert (await invoke(instance)).status == "crash"
        with pytest.raises(SandboxError):
            await invoke(instance, request_id="req-2")

    with_instance(code_dir, body)


def test_platform_hidden_but_boto3_offered(code_dir: Path, tmp_path: Path) -> None:
    libraries = prepare_runtime_libraries(tmp_path / "libs")
    write(
        code_dir,
        "import sys\n"
        "def handler(event, context):\n"
        "    try:\n"
        "        import gureum\n"
        "        hidden = False\n"
        "    except ImportError:\n"
        "        hidden = True\n"
        "    import boto3\n"
        "    return {'hidden': hidden, 'boto3': boto3.__version__, 'file': boto3.__file__,\n"
        "            'path': sys.path}\n",
    )

    async def body(instance: Instance) -> InvokeOutcome:
        return await invoke(instance)

    outcome = with_instance(code_dir, body, sandbox=ProcessSandbox([libraries]))

    assert outcome.status == "success", outcome.payload
    result = json.loads(outcome.payload)
    assert result["hidden"] is True
    assert result["boto3"] == boto3.__version__
    assert result["file"].startswith(str(libraries))
    # The function's own code comes first, so it may vendor its own boto3.
    assert result["path"][:2] == [str(code_dir), str(libraries)]


def test_an_invocation_that_cannot_be_sent_leaves_the_instance_as_it_was(code_dir: Path) -> None:
    write(code_dir, "def handler(event, context):\n    return 'ok'\n")

    async def body(instance: Instance) -> None:
        with pytest.raises(SandboxError, match="cannot be sent"):
            await instance.invoke(
                "req-1", b"{}", invoked_arn=ARN, timeout_s=3.0, client_context={"k": "\ud83d"}
            )
        assert instance.alive and instance.invocations == 0
        assert (await invoke(instance, {}, request_id="req-2")).payload == b'"ok"'

    with_instance(code_dir, body)
