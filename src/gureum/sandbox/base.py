"""The sandbox seam: a driver turns an `InstanceSpec` into a running, contained process.

Drivers only create and kill processes; talking to the runtime shim inside is the same for
every driver and lives in `gureum.sandbox.instance`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a driver needs to start one instance of one function version."""

    function_name: str
    version: str
    code_dir: Path
    handler: str
    memory_mb: int
    timeout_s: float
    env: Mapping[str, str] = field(default_factory=dict)
    ephemeral_mb: int = 512
    network: str = "platform"  # "none" | "platform" (Gureum's APIs) | "internet" (+ egress)
    egress_allow: tuple[str, ...] = ()  # internet: allowed hosts (empty: public hosts only)
    # Names the function version (account, function, version, revision) for drivers that fork
    # later instances from a template; None: never share a template with anything.
    template_key: str | None = None


@dataclass(frozen=True)
class IsolationCheck:
    """One protection a driver does or does not provide on this host (for `gureum doctor`)."""

    name: str
    ok: bool
    detail: str


class SandboxProcess(Protocol):
    """A started instance process, as a driver hands it over."""

    pid: int

    def kill(self) -> None:
        """Kill the instance and everything it started. Safe to call repeatedly and after exit."""

    async def wait(self) -> int:
        """Wait for the instance's main process to exit and return its exit status."""

    def fault(self) -> str | None:
        """After exit: an error type naming why the sandbox ended the instance, if it knows
        (e.g. "Runtime.OutOfMemory" when the memory limit was hit), else None."""


class Sandbox(Protocol):
    """A sandbox driver. One per node, picked from settings; `close()` is idempotent."""

    name: str

    def checks(self) -> list[IsolationCheck]:
        """What this driver enforces on this host, each with why or why not."""

    async def spawn(self, spec: InstanceSpec, control_fd: int, log_fd: int) -> SandboxProcess:
        """Start the runtime shim for `spec` inside the sandbox.

        The child gets `control_fd` (one end of a Unix socketpair) for frames and `log_fd` as
        both stdout and stderr; the caller closes its copies of both after this returns.
        Raises SandboxError when the process cannot be started.
        """

    def template_count(self) -> int:
        """Templates alive or starting; each holds one instance's worth of node capacity."""

    def retire_template(self, template_key: str) -> None:
        """The version named `template_key` changed or is gone: fork nothing more from its
        template. Instances already forked from it live on. Safe to call for unknown keys."""

    async def close(self) -> None:
        """Release driver-wide resources. Instances must have been killed before."""
