"""The `process` driver: each instance is a separate process with rlimits, no namespaces.

It is the portable fallback (and what runs where the host allows nothing more); it does not
confine the file system or network, which `gureum doctor` says plainly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from gureum.errors import SandboxError
from gureum.sandbox.base import InstanceSpec, IsolationCheck, SandboxProcess

BOOTSTRAP = Path(__file__).resolve().parent.parent / "runtime" / "bootstrap.py"
MB = 1024 * 1024
# Address space beyond the function's memory setting: the interpreter, shared libraries and
# allocator arenas reserve far more virtual memory than they touch.
ADDRESS_SPACE_HEADROOM_MB = 1024


class _Process:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        self.pid = proc.pid

    def kill(self) -> None:
        # The instance leads its own session, so the group takes its children along.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await self._proc.wait()

    def fault(self) -> str | None:
        return None  # rlimits surface as MemoryError inside the function instead


class ProcessSandbox:
    """Instances as plain child processes: own session, rlimits, isolated interpreter flags."""

    name = "process"

    def __init__(self, runtime_paths: list[Path]) -> None:
        # Extra import paths offered to functions (boto3 and its dependencies).
        self._runtime_paths = runtime_paths

    def checks(self) -> list[IsolationCheck]:
        return [
            IsolationCheck("separate process", True, "one OS process per instance"),
            IsolationCheck("rlimits", True, "address space, open files, core dumps, file size"),
            IsolationCheck("platform code hidden", True, "python -I -S; gureum not importable"),
            IsolationCheck("memory limit (cgroup)", False, "process driver: rlimit only"),
            IsolationCheck("file-system isolation", False, "process driver shares the host FS"),
            IsolationCheck("network isolation", False, "process driver shares the host network"),
            IsolationCheck("seccomp", False, "process driver loads no syscall filter"),
            IsolationCheck(
                "unprivileged user",
                os.geteuid() != 0,
                "instances run as the server's own user"
                + (" (root: do not run untrusted code)" if os.geteuid() == 0 else ""),
            ),
        ]

    async def spawn(self, spec: InstanceSpec, control_fd: int, log_fd: int) -> SandboxProcess:
        argv = [sys.executable, "-I", "-S", "-u", str(BOOTSTRAP), "--control-fd", str(control_fd)]
        for path in self._runtime_paths:
            argv += ["--path", str(path)]
        address_space = (spec.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * MB
        for name, value in (
            ("RLIMIT_AS", address_space),
            ("RLIMIT_CORE", 0),
            ("RLIMIT_NOFILE", 1024),
            ("RLIMIT_FSIZE", spec.ephemeral_mb * MB),
        ):
            argv += ["--rlimit", f"{name}={value}"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                pass_fds=(control_fd,),
                cwd=spec.code_dir,
                env=dict(spec.env),
                start_new_session=True,
            )
        except OSError as exc:
            raise SandboxError(f"could not start instance of {spec.function_name}: {exc}") from exc
        return _Process(proc)

    def template_count(self) -> int:
        return 0

    def retire_template(self, template_key: str) -> None:
        return None  # no templates: every instance starts from scratch

    async def close(self) -> None:
        return None
