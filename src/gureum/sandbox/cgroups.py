"""Per-instance cgroups on v1, v2 and hybrid hosts: memory (swap 0), pids, CPU, kill, OOM.

`CgroupTree.detect()` picks the layout once: v2 when the unified hierarchy has the memory,
pids and cpu controllers (v2-only hosts, or hybrid hosts that delegate them), else v1 when the
memory, pids, cpu and freezer controllers are mounted, else None (no cgroup isolation).
Instance cgroups are created ahead of need with what every instance shares (`prepare()`),
given the function's limits at spawn (`limit()`), and removed off the request path after the
instance dies (`remove()`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
MB = 1024 * 1024
# Not shorter: with 20 ms, a 128 MB instance's init (~5 ms of CPU) spread over three periods
# of 1.45 ms and its cold start took ~45 ms instead of ~7 (measured).
CPU_PERIOD_US = 100_000
MB_PER_VCPU = 1769  # as Lambda: 1,769 MB of memory buys one vCPU


def _write(path: Path | str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)  # no text layer: some of these writes are on cold starts
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _stat(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def cpu_quota_us(memory_mb: int) -> int:
    """CPU time per period for a memory size (at least 5% of a core)."""
    return max(CPU_PERIOD_US // 20, CPU_PERIOD_US * memory_mb // MB_PER_VCPU)


@dataclass
class InstanceCgroup:
    """One instance's cgroup (one directory per v1 controller, or one v2 directory)."""

    name: str
    version: int
    dirs: dict[str, Path]  # controller → directory ("unified" on v2)

    @property
    def procs_files(self) -> list[str]:
        """Where a process writes its pid to join (every controller on v1)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    def join(self, pid: int) -> None:
        """Move process `pid` (not its existing children) into this cgroup."""
        for path in self.procs_files:
            _write(Path(path), str(pid))

    def share(self, pids_max: int) -> None:
        """The settings every instance gets (process limit, no swap, the CPU period): set
        when the cgroup is prepared, off the request path."""
        if self.version == 2:
            d = self.dirs["unified"]
            with contextlib.suppress(FileNotFoundError):
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(pids_max))
            return
        # without swap accounting (memsw) the kernel has no swap limit to set; swappiness 0
        # keeps the instance's pages in memory instead
        with contextlib.suppress(OSError):
            _write(self.dirs["memory"] / "memory.swappiness", "0")
        _write(self.dirs["pids"] / "pids.max", str(pids_max))
        _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))

    def limit(self, memory_mb: int) -> None:
        """The function's own limits: memory (and memory + swap on v1) and CPU quota."""
        memory = str(memory_mb * MB)
        quota = str(cpu_quota_us(memory_mb))
        if self.version == 2:
            d = self.dirs["unified"]
            _write(d / "memory.max", memory)
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            return
        mem = self.dirs["memory"]
        _write(mem / "memory.limit_in_bytes", memory)
        if (mem / "memory.memsw.limit_in_bytes").exists():
            _write(mem / "memory.memsw.limit_in_bytes", memory)
        _write(self.dirs["cpu"] / "cpu.cfs_quota_us", quota)

    def set_cpu_quota(self, quota_us: int) -> None:
        """CPU time per period (CPU_PERIOD_US)."""
        if self.version == 2:
            _write(self.dirs["unified"] / "cpu.max", f"{quota_us} {CPU_PERIOD_US}")
        else:
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(quota_us))

    def set_memory_limit(self, memory_mb: int) -> None:
        """Change the memory limit (swap stays 0). Lowering it below what is in use fails
        (v1) or makes the kernel reclaim (v2)."""
        memory = str(memory_mb * MB)
        if self.version == 2:
            _write(self.dirs["unified"] / "memory.max", memory)
            return
        mem = self.dirs["memory"]
        memsw = mem / "memory.memsw.limit_in_bytes"
        # memsw may never be below the memory limit: raise it first, lower it last
        if memsw.exists() and memory_mb * MB > _read_int(memsw):
            _write(memsw, memory)
        _write(mem / "memory.limit_in_bytes", memory)
        if memsw.exists():
            _write(memsw, memory)

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup."""
        if self.version == 2:
            return _stat(self.dirs["unified"] / "memory.events", "oom_kill")
        return _stat(self.dirs["memory"] / "memory.oom_control", "oom_kill")

    def peak_memory_kb(self) -> int:
        if self.version == 2:
            return _read_int(self.dirs["unified"] / "memory.peak") // 1024
        return _read_int(self.dirs["memory"] / "memory.max_usage_in_bytes") // 1024

    def pids(self) -> list[int]:
        first = next(iter(self.dirs.values()))
        try:
            return [int(p) for p in (first / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self) -> None:
        """Kill every process in the cgroup (v2: cgroup.kill; v1: freeze, kill, thaw)."""
        if self.version == 2:
            kill_file = self.dirs["unified"] / "cgroup.kill"
            if kill_file.exists():
                _write(kill_file, "1")
                return
        freezer = self.dirs.get("freezer")
        if freezer is not None:
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "FROZEN")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if freezer is not None:
            with contextlib.suppress(OSError):
                _write(freezer / "freezer.state", "THAWED")

    def remove(self, timeout_s: float = 5.0) -> bool:
        """Kill what is left and remove the directories; True when all are gone."""
        deadline = time.monotonic() + timeout_s
        while self.pids() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.01)
        removed = True
        for d in self.dirs.values():
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError:
                removed = False
        return removed


class CgroupTree:
    """Gureum's part of the host's cgroup hierarchy."""

    V1_CONTROLLERS = ("memory", "pids", "cpu", "freezer")

    def __init__(self, version: int, bases: dict[str, Path]) -> None:
        self.version = version
        self.bases = bases
        self._counter = 0

    @classmethod
    def detect(cls, root: Path = ROOT, name: str = "gureum") -> CgroupTree | None:
        """The usable layout on this host, with Gureum's parent groups created; None if the
        host offers no writable memory+pids+cpu cgroups. Not root: only a delegated v2
        subtree (see `delegated()`)."""
        if os.geteuid() != 0:
            return cls.delegated(root, name)
        v2 = cls._unified_root(root)
        if v2 is not None:
            controllers = (v2 / "cgroup.controllers").read_text().split()
            if {"memory", "pids", "cpu"} <= set(controllers):
                base = v2 / name
                try:
                    base.mkdir(exist_ok=True)
                    _write(v2 / "cgroup.subtree_control", "+memory +pids +cpu")
                    _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
                except OSError:
                    return None
                return cls(2, {"unified": base})
        bases: dict[str, Path] = {}
        for controller in cls.V1_CONTROLLERS:
            mount = root / controller
            if not (mount / "cgroup.procs").exists():
                return None
            base = mount / name
            try:
                base.mkdir(exist_ok=True)
            except OSError:
                return None
            bases[controller] = base
        if not os.access(bases["memory"], os.W_OK):
            return None
        return cls(1, bases)

    @classmethod
    def delegated(cls, root: Path = ROOT, name: str = "gureum") -> CgroupTree | None:
        """A v2 subtree delegated to this (unprivileged) user, as systemd's `Delegate=yes` or
        `systemd-run --user -p Delegate=yes` give: our own cgroup is writable by us and offers
        memory, pids and cpu. Processes may only sit in leaves, so this process moves into
        a `<name>-agent` leaf and instances get `<name>/` beside it. None if not delegated."""
        v2 = cls._unified_root(root)
        if v2 is None:
            return None
        try:
            own = next(
                line[3:]
                for line in Path("/proc/self/cgroup").read_text().splitlines()
                if line.startswith("0::")
            )
        except (OSError, StopIteration):
            return None
        here = v2 / own.lstrip("/")
        try:
            controllers = set((here / "cgroup.controllers").read_text().split())
        except OSError:
            return None
        if not {"memory", "pids", "cpu"} <= controllers or not os.access(here, os.W_OK):
            return None
        try:
            if (here / "cgroup.procs").read_text().split():
                agent = here / f"{name}-agent"
                agent.mkdir(exist_ok=True)
                for pid in (here / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):  # exited meanwhile
                        _write(agent / "cgroup.procs", pid)
            _write(here / "cgroup.subtree_control", "+memory +pids +cpu")
            base = here / name
            base.mkdir(exist_ok=True)
            _write(base / "cgroup.subtree_control", "+memory +pids +cpu")
        except OSError:
            return None
        return cls(2, {"unified": base})

    @staticmethod
    def _unified_root(root: Path) -> Path | None:
        for candidate in (root, root / "unified"):
            if (candidate / "cgroup.controllers").exists():
                return candidate
        return None

    def prepare(self, pids_max: int) -> InstanceCgroup:
        """Create a fresh, empty instance cgroup with the shared settings (`share()`)."""
        self._counter += 1
        name = f"i{os.getpid()}-{self._counter}"
        dirs: dict[str, Path] = {}
        for controller, base in self.bases.items():
            path = base / name
            path.mkdir()
            dirs[controller] = path
        group = InstanceCgroup(name, self.version, dirs)
        try:
            group.share(pids_max)
        except OSError:
            group.remove(timeout_s=0)
            raise
        return group

    def sweep(self) -> int:
        """Remove instance cgroups left by earlier runs of this host's Gureum; return count."""
        removed = 0
        first = next(iter(self.bases.values()))
        for entry in first.iterdir():
            if entry.is_dir() and entry.name.startswith("i"):
                group = InstanceCgroup(
                    entry.name, self.version, {c: b / entry.name for c, b in self.bases.items()}
                )
                if group.remove(timeout_s=1.0):
                    removed += 1
        return removed


class NoCgroup(InstanceCgroup):
    """Where Gureum may not write cgroups (rootless without delegation): limits nothing,
    kills nothing (the PID namespace does), never reports an OOM kill."""

    def __init__(self) -> None:
        super().__init__("none", 0, {})

    def join(self, pid: int) -> None:
        return None

    def share(self, pids_max: int) -> None:
        return None

    def limit(self, memory_mb: int) -> None:
        return None

    def set_cpu_quota(self, quota_us: int) -> None:
        return None

    def set_memory_limit(self, memory_mb: int) -> None:
        return None

    def oom_kills(self) -> int:
        return 0

    def kill(self) -> None:
        return None

    def remove(self, timeout_s: float = 5.0) -> bool:
        return True


class NoCgroups(CgroupTree):
    """A `CgroupTree` that hands out `NoCgroup`s."""

    def __init__(self) -> None:
        super().__init__(0, {})

    def prepare(self, pids_max: int) -> InstanceCgroup:
        return NoCgroup()

    def sweep(self) -> int:
        return 0
