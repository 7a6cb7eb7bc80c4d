"""The `linux` driver: instances forked from a zygote into namespaces, cgroups and seccomp.

See `gureum.runtime.zygote` for what happens in the child. This side prepares each instance's
plan (its minimal root, uid, cgroup, network mode), hands the zygote the instance's control
socket and log pipe, learns the instance's pid and, later, its exit status. It also serves the
Unix socket through which sandboxed functions reach Gureum's own APIs (network `platform`).

Templates: the first instance of a function version (`InstanceSpec.template_key`) starts cold;
the second asks for a template of that version — one more sandbox, confined like any instance,
that imports the handler and then only forks — and it and all later instances are forked from
it with the handler already imported. Why that is safe, and what such an instance shares with
its siblings, is in `gureum.runtime.bootstrap`. Here: each forked instance gets its own
pre-created cgroup (its pid is moved in before it is handed over) and its own detached tmpfs;
a template is retired when its version's spec changes, when `retire_template()` is called,
after `template_keep_alive_s` without a fork, and after TEMPLATE_MAX_AGE_S (clients built at
import keep the template's credentials). A retired template stops forking and exits once its
instances are gone (it is PID 1 of their namespace). Templates need Landlock ABI 6 and the
new mount API; without them every instance starts cold and `checks()` says so.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.util
import itertools
import logging
import os
import shutil
import signal
import site
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gureum.errors import SandboxError
from gureum.runtime import protocol
from gureum.runtime.bootstrap import LANDLOCK_MIN_ABI, landlock_abi
from gureum.runtime.seccomp_policy import DENIED_SYSCALLS
from gureum.sandbox.base import InstanceSpec, IsolationCheck, SandboxProcess
from gureum.sandbox.cgroups import CPU_PERIOD_US, CgroupTree, InstanceCgroup, NoCgroups
from gureum.sandbox.egress import AllowList, EgressProxy, Handlers, splice
from gureum.sandbox.libraries import offered_packages

log = logging.getLogger(__name__)
ZYGOTE = Path(__file__).resolve().parent.parent / "runtime" / "zygote.py"
UID_BASE = 100_000  # each live instance runs as its own uid from its server's block
UID_RANGE = 10_000  # uids per block: the most instances one server runs at once
UID_BLOCKS = 100_000  # blocks, picked by data dir, so servers on one host never share uids
PIDS_MAX = 512
MB = 1024 * 1024
NETWORK_MODES = ("none", "platform", "internet")
PROXY_PORT = 3128  # inside internet-mode sandboxes: HTTP(S)_PROXY
TEMPLATE_MAX_AGE_S = 3600.0  # well inside the 12 h of the credentials a template imports with
TEMPLATE_WAIT_S = 10.0  # how long a start waits for its version's template (AWS's init limit)
# What a forked child dirties before the agent has moved it into its own cgroup (Python's
# after-fork work, the template's own copy-on-write since) stays charged to the template's
# cgroup while the child lives (~1 MB measured): the template's limit grows by this per child.
TEMPLATE_CHILD_HEADROOM_MB = 4
TEMPLATE_CPU_QUOTA_US = CPU_PERIOD_US  # one core, once the template has imported the handler
# a start refills the pre-spawned pools this much later, so that on a small machine the fork
# for the next one does not compete for a core with the instance now starting
REFILL_DELAY_S = 0.01
# variables that differ between instances of one version: not part of a template's identity
PER_INSTANCE_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_LAMBDA_INITIALIZATION_TYPE",
    }
)
_libc = ctypes.CDLL(None, use_errno=True)
SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432  # the same on every architecture
FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC = 1, 1
FSCONFIG_SET_STRING, FSCONFIG_CMD_CREATE = 1, 6
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 2, 4


def detached_tmpfs(size_mb: int) -> int:
    """A new tmpfs, mounted nowhere: an O_PATH descriptor of its root (root only)."""

    def check(result: int, what: str) -> int:
        if result < 0:
            code = ctypes.get_errno()
            raise OSError(code, f"{what}: {os.strerror(code)}")
        return result

    fs = check(_libc.syscall(SYS_FSOPEN, b"tmpfs", FSOPEN_CLOEXEC), "fsopen")
    try:
        for key, value in ((b"size", f"{size_mb}m".encode()), (b"mode", b"1777")):
            check(_libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, key, value, 0), "fsconfig")
        check(_libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig")
        attrs = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        return check(_libc.syscall(SYS_FSMOUNT, fs, FSMOUNT_CLOEXEC, attrs), "fsmount")
    finally:
        os.close(fs)


def _spec_digest(spec: InstanceSpec) -> str:
    """Everything about a spec that a template bakes in (all but per-instance variables)."""
    env = sorted((k, v) for k, v in spec.env.items() if k not in PER_INSTANCE_ENV)
    fields = (
        spec.function_name, spec.version, str(spec.code_dir), spec.handler, spec.memory_mb,
        spec.timeout_s, spec.ephemeral_mb, spec.network, spec.egress_allow, env,
    )  # fmt: skip
    return hashlib.sha256(repr(fields).encode()).hexdigest()


def _host_pid(
    parent: int, ns_pid: int, known: set[int] | frozenset[int] = frozenset()
) -> int | None:
    """The host pid of `parent`'s child that is `ns_pid` in its own PID namespace (newest
    children first; `known` host pids are skipped)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for child in reversed(children):
        if int(child) in known:
            continue
        try:
            status = Path(f"/proc/{child}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("NSpid:"):
                if line.split()[-1] == str(ns_pid):
                    return int(child)
                break
    return None


ROOTLESS_UID = 1000  # = zygote.SANDBOX_UID: the server's own uid, inside a rootless sandbox
ROOTLESS_NPROC = 4096  # rootless: RLIMIT_NPROC counts all processes of the server's own user
ADDRESS_SPACE_HEADROOM_MB = 512  # without cgroups, RLIMIT_AS = memory + this (as `process`)


@dataclass(frozen=True)
class LinuxSupport:
    """What the linux driver can do on this host (decided once, at start-up)."""

    usable: bool
    rootless: bool
    cgroups: CgroupTree | None  # None: no cgroup limits at all
    why: str


def _user_namespaces_work() -> str | None:
    """Try, in a throw-away child, what rootless mode needs: a user namespace with our uid
    mapped, a mount namespace in it, and a tmpfs mounted there. None if it all works."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read_end)
            libc = ctypes.CDLL(None, use_errno=True)
            uid, gid = os.geteuid(), os.getegid()
            if libc.unshare(0x10000000 | 0x00020000) != 0:  # CLONE_NEWUSER | CLONE_NEWNS
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) refused")
            for name, content in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"),
                                  ("gid_map", f"0 {gid} 1")):  # fmt: skip
                with open(f"/proc/self/{name}", "w") as handle:
                    handle.write(content)
            if libc.mount(None, b"/", None, ctypes.c_ulong(16384 | (1 << 18)), None) != 0:
                raise OSError(ctypes.get_errno(), "making / private refused")
            if libc.mount(b"t", b"/tmp", b"tmpfs", ctypes.c_ulong(0), None) != 0:
                raise OSError(ctypes.get_errno(), "tmpfs mount in the namespace refused")
            os._exit(0)
        except BaseException as exc:
            os.write(write_end, str(exc).encode()[:500])
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        message = reader.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return None if os.waitstatus_to_exitcode(status) == 0 else message or "failed"


def linux_sandbox_support() -> LinuxSupport:
    """Whether and how the linux driver runs here: as root with cgroups (full), or without
    root in a user namespace, with cgroups only where a v2 subtree is delegated to us."""
    if not sys.platform.startswith("linux"):
        return LinuxSupport(False, False, None, "not Linux")
    if importlib.util.find_spec("pyseccomp") is None:
        return LinuxSupport(False, False, None, "the pyseccomp package is missing")
    if ctypes.util.find_library("seccomp") is None:
        why = "libseccomp is not installed (Debian/Ubuntu: apt-get install libseccomp2)"
        return LinuxSupport(False, False, None, why)
    if os.geteuid() == 0:
        tree = CgroupTree.detect()
        if tree is None:
            return LinuxSupport(False, False, None, "no writable memory+pids+cpu cgroups")
        return LinuxSupport(True, False, tree, "root, cgroups and seccomp available")
    failure = _user_namespaces_work()
    if failure is not None:
        return LinuxSupport(False, True, None, f"not root, and user namespaces fail: {failure}")
    tree = CgroupTree.detect()
    if tree is None:
        why = "rootless (user namespace); no delegated cgroup: no memory, pids or CPU limits"
        return LinuxSupport(True, True, None, why)
    return LinuxSupport(True, True, tree, "rootless (user namespace), delegated cgroup v2")


def linux_sandbox_cgroups() -> tuple[CgroupTree | None, str]:
    """The cgroup tree the full (root) linux driver would use on this host, or None and why
    not (tests and benchmarks that need every protection)."""
    if os.geteuid() != 0:
        return None, "needs root for every protection (rootless mode has fewer)"
    support = linux_sandbox_support()
    return support.cgroups, support.why


def host_supports_linux_sandbox() -> tuple[bool, str]:
    """Whether this host can run the linux driver, and if not, why (for start-up and doctor)."""
    tree, why = linux_sandbox_cgroups()
    return tree is not None, why


@dataclass
class _LinuxProcess:
    pid: int
    cgroup: InstanceCgroup
    driver: LinuxSandbox
    uid: int
    oom_killed: bool = False  # read from the cgroup at exit, before the cgroup is removed
    exited: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    on_exit: Callable[[], None] | None = None
    template: bool = False  # forked from a template (rather than from the zygote)

    def kill(self) -> None:
        # B is PID 1 of its namespace: when it dies the kernel kills everything inside. An
        # instance forked from a template is not; its cgroup holds its whole tree.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.cgroup.kill()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def fault(self) -> str | None:
        return "Runtime.OutOfMemory" if self.oom_killed else None


@dataclass
class _Spare:
    """A pre-spawned sandbox: root built, waiting on `slot` for its function's plan."""

    pid: int
    cgroup: InstanceCgroup
    slot: socket.socket
    uid: int


class _DiscardLog(asyncio.Protocol):
    """A template's own log: import-time output, kept short for a warning if it fails."""

    def __init__(self) -> None:
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        self.tail = (self.tail + data)[-4096:]


@dataclass
class _Template:
    key: str
    digest: str
    ready: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    process: _LinuxProcess | None = None
    sock: socket.socket | None = None
    writer: asyncio.StreamWriter | None = None
    log: _DiscardLog | None = None
    log_transport: asyncio.BaseTransport | None = None
    memory_mb: int = 128
    spares: list[int] = field(default_factory=list)  # placed, confined, not yet activated
    links: dict[int, socket.socket] = field(default_factory=dict)  # to children not activated
    pending: int = 0  # children being forked and placed
    filling: bool = False
    forks: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    children: dict[int, _LinuxProcess] = field(default_factory=dict)  # by pid in its namespace
    early_exits: dict[int, int] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    created: float = field(default_factory=time.monotonic)
    last_used: float = field(default_factory=time.monotonic)
    retired: bool = False
    why_not: str = ""  # refused or failed: why


def _runtime_prefixes() -> set[str]:
    """Where the Python runtime instances run on lives (bound into every sandbox)."""
    return {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}


def _under_tmp(path: str) -> bool:
    """A path a sandbox's own /tmp would cover: it must be bound on top of that tmpfs."""
    return path == "/tmp" or path.startswith("/tmp/")


def templates_unavailable() -> str | None:
    """Why this host cannot use templates, or None when it can."""
    for prefix in _runtime_prefixes():
        if _under_tmp(prefix):
            # a template's /tmp is a link to each instance's own tmpfs, so nothing can be
            # bound under it (a virtualenv in a checkout under /tmp, say)
            return f"the Python runtime lives under /tmp ({prefix})"
    abi = landlock_abi()
    if abi < LANDLOCK_MIN_ABI:
        return (
            f"needs Landlock ABI {LANDLOCK_MIN_ABI} (Linux 6.12+, Landlock enabled), "
            f"this kernel has {abi or 'none'}"
        )
    try:
        os.close(detached_tmpfs(1))
    except OSError as exc:
        return f"cannot make detached tmpfs mounts: {exc}"
    return None


class LinuxSandbox:
    """Zygote-forked instances with namespaces, a minimal root, cgroups, uid drop, seccomp."""

    name = "linux"

    def __init__(
        self,
        data_dir: Path,
        endpoint: str,
        cgroups: CgroupTree | None,
        warm_target: int = 2,
        rootless: bool = False,
        templates: bool = True,
        template_keep_alive_s: float = 300.0,
        max_templates: int = 16,
    ) -> None:
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.has_cgroups = cgroups is not None
        self.cgroups = cgroups if cgroups is not None else NoCgroups()
        self.rootless = rootless
        self.root_dir = data_dir / "sandbox" / "root"
        self.api_socket = data_dir / "sandbox" / "api.sock"
        self._zygote: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[int]] = {}
        self._processes: dict[int, _LinuxProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._abandoned: set[int] = set()  # taken spares killed before they became instances
        self._ids = itertools.count(1)
        self._uids: set[int] = set()
        self._next_uid = 0
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).digest()
        self.uid_base = UID_BASE + int.from_bytes(digest[:8], "big") % UID_BLOCKS * UID_RANGE
        self._start_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._api_server: asyncio.AbstractServer | None = None
        self._relay_handlers = Handlers()
        self._warm: list[_Spare] = []  # pre-spawned sandboxes
        self._warming = 0
        self._closing = False
        self._proxies: dict[str, EgressProxy] = {}  # by allow-list key
        self.warm_target = warm_target
        self._background: set[asyncio.Task[Any]] = set()
        self._static = self._static_plan()
        self._templates: dict[str, _Template] = {}
        self._seen: set[tuple[str, str]] = set()  # (template key, digest) started cold once
        # (template key, digest) whose template failed or refused, and when: not retried for
        # a keep-alive period (a handler that fails to import would fail every time)
        self._no_template: dict[tuple[str, str], float] = {}
        self.template_keep_alive_s = template_keep_alive_s
        self.max_templates = max_templates
        self._template_reaper: asyncio.Task[None] | None = None
        self.templates_off: str | None = "turned off in settings"
        if templates and rootless:
            self.templates_off = "rootless: a template's instances need a root agent"
        elif templates:
            self.templates_off = templates_unavailable()

    # ---- set-up ------------------------------------------------------------------------------

    def _static_plan(self) -> dict[str, Any]:
        """The parts of every plan that do not depend on the function."""
        binds: list[tuple[str, str]] = []
        symlinks: list[tuple[str, str]] = []
        for path in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
            if os.path.islink(path):
                symlinks.append((os.readlink(path), path))
            elif os.path.isdir(path):
                binds.append((path, path))
        prefixes = _runtime_prefixes()
        for prefix in sorted(prefixes):
            if not any(prefix == s or prefix.startswith(s + "/") for s, _ in binds):
                binds.append((prefix, prefix))
        for source in offered_packages():
            binds.append((str(source), f"/opt/gureum/python/{source.name}"))
        hidden = {os.path.realpath(p) for p in site.getsitepackages()}
        hidden.add(os.path.realpath(site.getusersitepackages()))
        hidden.add(os.path.realpath(self.data_dir))
        for prefix in prefixes:
            for lib in Path(prefix).glob("lib/python3*/site-packages"):
                hidden.add(str(lib.resolve()))
        bound = [target for _, target in binds]
        hide = sorted(h for h in hidden if any(h.startswith(b + "/") for b in bound))
        return {
            "rootless": self.rootless,
            "binds": [b for b in binds if not _under_tmp(b[1])],
            "hide": [h for h in hide if not _under_tmp(h)],
            "late_binds": [b for b in binds if _under_tmp(b[1])],
            "late_hide": [h for h in hide if _under_tmp(h)],
            "symlinks": symlinks,
        }

    async def _ensure_started(self) -> None:
        async with self._start_lock:
            if self._zygote is not None and self._zygote.returncode is None:
                return
            self.root_dir.mkdir(parents=True, exist_ok=True)
            await self._start_api_relay()
            parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            seccomp_spec = importlib.util.find_spec("pyseccomp")
            if seccomp_spec is None or seccomp_spec.origin is None:
                raise SandboxError("the pyseccomp package is missing")
            try:
                self._zygote = await asyncio.create_subprocess_exec(
                    sys.executable, "-I", "-S", "-u", str(ZYGOTE),
                    "--control-fd", str(child.fileno()),
                    "--seccomp-module", seccomp_spec.origin,
                    pass_fds=(child.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    env={"PATH": "/usr/bin:/bin"},
                )  # fmt: skip
            finally:
                child.close()
            self._sock = parent
            # keep the writer: when it is collected it closes the shared transport
            reader, self._writer = await asyncio.open_unix_connection(sock=parent)
            self._reader_task = asyncio.create_task(self._read_replies(reader))
            if self.templates_off is None and self._template_reaper is None:
                self._template_reaper = asyncio.create_task(self._reap_templates_forever())

    async def _start_api_relay(self) -> None:
        """A Unix socket the sandboxes' forwarders connect to, relayed to the endpoint."""
        if self._api_server is not None:
            return
        target = urlsplit(self.endpoint)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        with contextlib.suppress(FileNotFoundError):
            self.api_socket.unlink()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with self._relay_handlers.running():
                try:
                    up_reader, up_writer = await asyncio.open_connection(host, port)
                    await splice(reader, writer, up_reader, up_writer)
                except OSError:
                    pass
                finally:
                    writer.close()

        self._api_server = await asyncio.start_unix_server(relay, path=str(self.api_socket))
        os.chmod(self.api_socket, 0o666)  # each sandbox runs as its own uid

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                prefix = await reader.readexactly(protocol.HEADER.size)
                header_len, payload_len = protocol.decode_lengths(prefix)
                header = protocol.decode_header(await reader.readexactly(header_len))
                if payload_len:
                    await reader.readexactly(payload_len)
                self._on_reply(header)
        except (asyncio.IncompleteReadError, ConnectionError, protocol.ProtocolError):
            if not self._closing:
                log.error("the sandbox zygote went away; it is restarted on the next spawn")
        finally:
            for future in self._requests.values():
                if not future.done():
                    future.set_exception(SandboxError("the sandbox zygote died"))
            self._requests.clear()

    def _on_reply(self, header: dict[str, Any]) -> None:
        kind = header.get("t")
        if kind in ("spawned", "error"):
            future = self._requests.get(int(header.get("id") or 0))
            if future is None or future.done():
                return
            if kind == "spawned":
                future.set_result(int(header["pid"]))
            else:
                future.set_exception(SandboxError(f"sandbox set-up failed: {header['message']}"))
        elif kind == "warmed":
            future = self._requests.get(int(header.get("id") or 0))
            if future is not None and not future.done():
                future.set_result(int(header["pid"]))
        elif kind == "exit":
            pid, status = int(header["pid"]), int(header["status"])
            process = self._processes.pop(pid, None)
            if process is None:
                if pid in self._abandoned:
                    self._abandoned.discard(pid)
                    return
                for index, spare in enumerate(self._warm):
                    if spare.pid == pid:  # a pre-spawned sandbox died unused
                        del self._warm[index]
                        spare.slot.close()
                        self._uids.discard(spare.uid)
                        self._in_background(asyncio.to_thread(spare.cgroup.remove))
                        return
                self._early_exits[pid] = status
                return
            self._finish(process, status)

    def _finish(self, process: _LinuxProcess, status: int) -> None:
        if process.exited.done():
            return
        process.oom_killed = process.cgroup.oom_kills() > 0
        process.exited.set_result(status)
        self._uids.discard(process.uid)
        self._in_background(asyncio.to_thread(process.cgroup.remove))
        if process.on_exit is not None:
            process.on_exit()

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the Sandbox protocol ----------------------------------------------------------------

    def checks(self) -> list[IsolationCheck]:
        version = f"cgroup v{self.cgroups.version}"
        namespaces = "mount, pid, network, ipc, uts, cgroup"
        if self.has_cgroups:
            memory = IsolationCheck("memory limit (cgroup)", True, f"{version}; OOM reported")
            pids = IsolationCheck("pids and CPU limits", True, f"{version}; 1,769 MB = 1 vCPU")
        else:
            memory = IsolationCheck(
                "memory limit (cgroup)",
                False,
                "no delegated cgroup: RLIMIT_AS (memory + 512 MB) only; OOM is not reported",
            )
            pids = IsolationCheck(
                "pids and CPU limits",
                False,
                f"no delegated cgroup: no CPU limit; RLIMIT_NPROC {ROOTLESS_NPROC} counts every "
                "process of the server's user",
            )
        if self.rootless:
            user = IsolationCheck(
                "unprivileged user",
                True,
                "rootless: own user namespace per instance, the server's uid mapped to "
                "uid 1000 and nothing else, no capabilities; instances share that host uid",
            )
            namespaces = "user, " + namespaces
        else:
            user = IsolationCheck(
                "unprivileged user", True, "own uid per instance, no capabilities"
            )
        return [
            IsolationCheck("separate process", True, "forked from a pre-warmed zygote"),
            IsolationCheck("namespaces", True, namespaces),
            IsolationCheck("minimal root", True, "pivot_root; code read-only at /var/task"),
            memory,
            pids,
            IsolationCheck("file-system isolation", True, "only the runtime is visible, read-only"),
            IsolationCheck(
                "network isolation", True, "empty namespace; platform relay; allow-listed egress"
            ),
            IsolationCheck("seccomp", True, f"{len(DENIED_SYSCALLS)} escape syscalls refused"),
            user,
            IsolationCheck("platform code hidden", True, "site-packages hidden; boto3 offered"),
            IsolationCheck(
                "templates (SnapStart by fork)",
                True,
                "off: " + self.templates_off
                if self.templates_off
                else "on: forked instances get their own cgroup, /tmp and Landlock domain; "
                "they share uid and namespaces with instances of the same version only",
            ),
        ]

    def _allocate_uid(self) -> int:
        for _ in range(UID_RANGE):
            uid = self.uid_base + self._next_uid
            self._next_uid = (self._next_uid + 1) % UID_RANGE
            if uid not in self._uids:
                self._uids.add(uid)
                return uid
        raise SandboxError("no free sandbox uid")

    def _inner_uid(self, uid: int) -> int:
        """The uid a sandbox runs as, as seen inside it."""
        return ROOTLESS_UID if self.rootless else uid  # rootless: the one uid mapped

    def _warm_plan(self, cgroup: InstanceCgroup, uid: int) -> dict[str, Any]:
        """Everything a pre-spawned sandbox needs before it knows its function."""
        uid = self._inner_uid(uid)
        return {
            **self._static,
            "root": str(self.root_dir),
            "cgroup_procs": cgroup.procs_files,
            "etc": {
                "passwd": f"root:x:0:0::/root:/sbin/nologin\nsbx:x:{uid}:{uid}::/tmp:/bin/false\n",
                "group": f"root:x:0:\nsbx:x:{uid}:\n",
                "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
            },
        }

    def _function_plan(self, spec: InstanceSpec, uid: int) -> dict[str, Any]:
        """The per-function rest of a sandbox's plan."""
        port = urlsplit(self.endpoint).port or 80
        env = self._instance_env(spec)
        binds = [(str(spec.code_dir), "/var/task")]
        forwarders: list[tuple[int, str]] = []
        if spec.network in ("platform", "internet"):
            binds.append((str(self.api_socket), "/run/gureum/api.sock"))
            forwarders.append((port, "/run/gureum/api.sock"))
        if spec.network == "internet":
            proxy = self._proxies[AllowList(spec.egress_allow).key]
            binds.append((str(proxy.path), "/run/gureum/egress.sock"))
            forwarders.append((PROXY_PORT, "/run/gureum/egress.sock"))
            if os.path.isdir("/etc/ssl"):
                binds.append(("/etc/ssl", "/etc/ssl"))  # CA certificates for TLS
        return {
            "function_binds": binds,
            "tmp_mb": spec.ephemeral_mb,
            "network": spec.network,
            "forwarders": forwarders,
            "rlimits": self._rlimits(spec),
            "env": env,
            "uid": self._inner_uid(uid),
            "paths": ["/opt/gureum/python"],
        }

    def _rlimits(self, spec: InstanceSpec) -> dict[str, int]:
        rlimits = {
            "RLIMIT_CORE": 0,
            "RLIMIT_NOFILE": 1024,
            "RLIMIT_NPROC": ROOTLESS_NPROC if self.rootless else PIDS_MAX,
            "RLIMIT_FSIZE": spec.ephemeral_mb * MB,
        }
        if not self.has_cgroups:
            rlimits["RLIMIT_AS"] = (spec.memory_mb + ADDRESS_SPACE_HEADROOM_MB) * MB
        return rlimits

    def _instance_env(self, spec: InstanceSpec) -> dict[str, str]:
        port = urlsplit(self.endpoint).port or 80
        env = {
            **spec.env,
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "HOME": "/tmp",
        }
        if spec.network == "internet":
            proxy_url = f"http://127.0.0.1:{PROXY_PORT}"
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[name] = proxy_url
            env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    async def _request(self, header: dict[str, Any], fds: list[int] | None = None) -> int:
        """Send one request to the zygote and wait for the pid it answers with."""
        request_id = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        frame = protocol.encode({**header, "id": request_id})
        try:
            async with self._send_lock:
                await self._send_with_fds(frame, fds or [])
            return await asyncio.wait_for(future, 10.0)
        finally:
            self._requests.pop(request_id, None)

    async def spawn(self, spec: InstanceSpec, control_fd: int, log_fd: int) -> SandboxProcess:
        if spec.network not in NETWORK_MODES:
            raise SandboxError(f"network mode {spec.network!r} is not supported by this driver")
        await self._ensure_started()
        if spec.network == "internet":
            await self._ensure_proxy(AllowList(spec.egress_allow))
        template = await self._template_for(spec)
        if template is not None:
            return await self._fork(template, spec, control_fd, log_fd)
        return await self._spawn(spec, [control_fd, log_fd])

    async def _spawn(self, spec: InstanceSpec, fds: list[int]) -> _LinuxProcess:
        """A sandbox from the zygote: an instance, or with a third descriptor (its /tmp) a
        template."""
        warm = self._warm.pop() if self._warm else None
        slot: socket.socket | None = None
        if warm is not None:
            pid, cgroup, slot, uid = warm.pid, warm.cgroup, warm.slot, warm.uid
        else:
            try:
                pid, cgroup = 0, await asyncio.to_thread(self.cgroups.prepare, PIDS_MAX)
            except OSError as exc:
                raise SandboxError(f"could not create the instance cgroup: {exc}") from exc
            uid = self._allocate_uid()
        try:
            plan = self._function_plan(spec, uid)
            if len(fds) == 3:
                plan["template"] = True
            if slot is not None:  # straight to the waiting sandbox, not through the zygote
                frame = protocol.encode({"t": "plan", "plan": plan})
                await self._send_with_fds(frame, fds, slot)
                # it builds its sandbox meanwhile, and runs no function code before the go
                cgroup.limit(spec.memory_mb)
                with contextlib.suppress(OSError):  # it died: its control channel says why
                    slot.send(b"g")
                slot.close()
            else:
                cgroup.limit(spec.memory_mb)
                plan.update(self._warm_plan(cgroup, uid))
                pid = await self._request({"t": "spawn", "plan": plan}, fds)
        except BaseException as exc:
            self._uids.discard(uid)
            if slot is not None:
                slot.close()
                self._abandoned.add(pid)  # its exit report is not an early exit
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self._in_background(asyncio.to_thread(cgroup.remove))
            if isinstance(exc, OSError):
                raise SandboxError(f"could not configure the instance cgroup: {exc}") from exc
            raise
        finally:
            self._in_background(self._fill_warm(REFILL_DELAY_S))  # after the plan is out
        process = _LinuxProcess(pid, cgroup, self, uid)
        if pid in self._early_exits:
            self._finish(process, self._early_exits.pop(pid))
        else:
            self._processes[pid] = process
        return process

    # ---- templates --------------------------------------------------------------------------

    async def _template_for(self, spec: InstanceSpec) -> _Template | None:
        """The ready template to fork `spec`'s instance from, or None to start it cold. The
        first start of a version is cold; the second builds the template and waits for it."""
        if self.templates_off is not None or spec.template_key is None:
            return None
        digest = _spec_digest(spec)
        template = self._templates.get(spec.template_key)
        if template is not None and template.digest != digest:
            self._retire(template)  # the version's code or configuration changed
            template = None
        if template is None:
            failed_at = self._no_template.get((spec.template_key, digest))
            if failed_at is not None:
                if time.monotonic() - failed_at < self.template_keep_alive_s:
                    return None
                del self._no_template[(spec.template_key, digest)]
            if (spec.template_key, digest) not in self._seen:
                if len(self._seen) > 10_000:
                    self._seen.clear()
                self._seen.add((spec.template_key, digest))
                return None
            template = _Template(spec.template_key, digest)
            self._templates[spec.template_key] = template
            self._in_background(self._build_template(template, spec))
            self._evict_templates()
        try:
            ok = await asyncio.wait_for(asyncio.shield(template.ready), TEMPLATE_WAIT_S)
        except TimeoutError:
            return None
        if not ok or template.retired:
            return None
        template.last_used = time.monotonic()
        return template

    async def _build_template(self, template: _Template, spec: InstanceSpec) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_read, log_write = os.pipe()
        tmp = -1
        try:
            tmp = detached_tmpfs(spec.ephemeral_mb)
            process = await self._spawn(spec, [theirs.fileno(), log_write, tmp])
        except Exception as exc:
            ours.close()
            os.close(log_read)
            self._template_failed(template, f"could not start: {exc}")
            return
        finally:
            theirs.close()
            os.close(log_write)
            if tmp >= 0:
                os.close(tmp)
        process.on_exit = lambda: self._template_exited(template)
        template.process = process
        template.sock = ours
        template.memory_mb = spec.memory_mb
        loop = asyncio.get_running_loop()
        try:
            template.log_transport, template.log = await loop.connect_read_pipe(
                _DiscardLog, os.fdopen(log_read, "rb", buffering=0)
            )
            reader, template.writer = await asyncio.open_unix_connection(sock=ours)
        except Exception as exc:
            self._template_failed(template, f"could not connect: {exc}")
            process.kill()
            return
        if template.retired:  # retired while it started
            self._retire(template)
        replies = asyncio.ensure_future(self._template_replies(template, reader))
        try:  # an import that hangs must not keep a template (and its cgroup) forever
            await asyncio.wait_for(asyncio.shield(template.ready), TEMPLATE_WAIT_S)
        except TimeoutError:
            self._template_failed(template, f"not initialised within {TEMPLATE_WAIT_S:.0f} s")
            process.kill()
        await replies

    async def _template_replies(self, template: _Template, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                prefix = await reader.readexactly(protocol.HEADER.size)
                header_len, payload_len = protocol.decode_lengths(prefix)
                header = protocol.decode_header(await reader.readexactly(header_len))
                payload = await reader.readexactly(payload_len) if payload_len else b""
                kind = header.get("t")
                if kind == "ready" and not template.ready.done():
                    # Imported: from now on it only forks, for every instance of the version,
                    # and its children run in its cgroup until placed; a small function's CPU
                    # share (128 MB: 7% of a core) would make a burst wait on it.
                    if template.process is not None:
                        with contextlib.suppress(OSError):
                            template.process.cgroup.set_cpu_quota(TEMPLATE_CPU_QUOTA_US)
                    template.ready.set_result(True)
                    self._in_background(self._fill_spares(template))
                elif kind in ("refused", "init_error"):
                    why = header.get("reason") or payload.decode(errors="replace")[:500]
                    self._template_failed(template, str(why))
                elif kind == "forked":
                    future = template.forks.get(int(header.get("id") or 0))
                    if future is not None and not future.done():
                        future.set_result(int(header["pid"]))
                elif kind == "exit":
                    pid, status = int(header["pid"]), int(header["status"])
                    with contextlib.suppress(ValueError):
                        template.spares.remove(pid)
                    link = template.links.pop(pid, None)
                    if link is not None:
                        link.close()
                    child = template.children.pop(pid, None)
                    if child is None:
                        template.early_exits[pid] = status
                    else:
                        self._finish(child, status)
                        self._size_template(template)
        except (asyncio.IncompleteReadError, ConnectionError, protocol.ProtocolError):
            pass
        finally:
            self._template_failed(template, "the template exited")

    def _template_failed(self, template: _Template, why: str) -> None:
        if not template.ready.done():
            tail = template.log.tail.decode(errors="replace") if template.log else ""
            log.warning(
                "no template for %s, its instances start cold: %s%s",
                template.key, why, f"\n{tail}" if tail.strip() else "",
            )  # fmt: skip
            template.why_not = why
            template.ready.set_result(False)
            if len(self._no_template) > 10_000:
                self._no_template.clear()
            self._no_template[(template.key, template.digest)] = time.monotonic()
        for future in template.forks.values():
            if not future.done():
                future.set_exception(SandboxError(f"the template is gone: {why}"))

    def _template_exited(self, template: _Template) -> None:
        """The template died; as PID 1 of its namespace it took its instances with it."""
        self._template_failed(template, "the template exited")
        template.retired = True
        if self._templates.get(template.key) is template:
            del self._templates[template.key]
        for child in template.children.values():
            self._finish(child, -signal.SIGKILL)
        template.children.clear()
        for link in template.links.values():
            link.close()
        template.links.clear()
        template.spares.clear()
        if template.writer is not None:
            template.writer.close()
        if template.log_transport is not None:
            template.log_transport.close()

    async def _fork(
        self, template: _Template, spec: InstanceSpec, control_fd: int, log_fd: int
    ) -> _LinuxProcess:
        """An instance forked from `template`: a spare if one is ready, else forked now."""
        if template.spares:
            ns_pid = template.spares.pop()
        else:
            ns_pid = await self._fork_placed(template)
        if not template.filling:
            self._in_background(self._fill_spares(template, REFILL_DELAY_S))
        process = template.children.get(ns_pid)
        link = template.links.pop(ns_pid, None)
        if process is None or link is None:
            raise SandboxError("the forked instance exited before it started")
        tmp = -1
        try:
            tmp = detached_tmpfs(spec.ephemeral_mb)
            frame = protocol.encode({"t": "activate", "env": self._instance_env(spec)})
            await self._send_with_fds(frame, [control_fd, log_fd, tmp], link)
        except BaseException as exc:
            process.kill()
            if isinstance(exc, OSError):
                raise SandboxError(f"could not start from the template: {exc}") from exc
            raise
        finally:
            link.close()
            if tmp >= 0:
                os.close(tmp)
        return process

    async def _fork_placed(self, template: _Template) -> int:
        """Fork a child of `template`, move it into its own new cgroup, let it go on to
        confine itself; return its pid in the template's namespace. It awaits activation."""
        assert template.process is not None
        cgroup = self.cgroups.prepare(PIDS_MAX)  # cheaper than a trip to a thread
        request_id = next(self._ids)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        template.forks[request_id] = future
        host_pid: int | None = None
        template.pending += 1
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._size_template(template)
            cgroup.limit(template.memory_mb)
            try:
                header = {"t": "fork", "id": request_id}
                await self._send_to_template(template, header, [theirs.fileno()])
            finally:
                theirs.close()
            ns_pid = await asyncio.wait_for(future, TEMPLATE_WAIT_S)
            known = {c.pid for c in template.children.values()}
            host_pid = _host_pid(template.process.pid, ns_pid, known)
            if host_pid is None:
                raise SandboxError("the forked instance vanished before it was placed")
            # on cgroup v1 a migration waits for an RCU grace period: ~10 ms, unless others
            # are migrating too; spares take it off the start's path
            await asyncio.to_thread(cgroup.join, host_pid)
        except BaseException as exc:
            ours.close()  # a child still waiting to be placed sees end of file and exits
            if host_pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(host_pid, signal.SIGKILL)
            self._in_background(asyncio.to_thread(cgroup.remove))
            if isinstance(exc, OSError):
                raise SandboxError(f"could not fork from the template: {exc}") from exc
            raise
        finally:
            template.forks.pop(request_id, None)
            template.pending -= 1
        process = _LinuxProcess(host_pid, cgroup, self, -1, template=True)
        if ns_pid in template.early_exits:
            ours.close()
            self._finish(process, template.early_exits.pop(ns_pid))
            raise SandboxError("the forked instance exited before it was placed")
        template.children[ns_pid] = process
        template.links[ns_pid] = ours
        try:
            ours.send(b"g")  # placed: confine yourself (a byte into an empty socket: no wait)
        except OSError as exc:
            raise SandboxError(f"the forked instance is gone: {exc}") from exc
        return ns_pid

    def _size_template(self, template: _Template) -> None:
        """The template's memory limit: its own, plus headroom for each child it has."""
        if template.process is None:
            return
        children = len(template.children) + template.pending
        with contextlib.suppress(OSError):  # lowering fails while pages are still in use
            template.process.cgroup.set_memory_limit(
                template.memory_mb + TEMPLATE_CHILD_HEADROOM_MB * children
            )

    async def _fill_spares(self, template: _Template, delay_s: float = 0.0) -> None:
        """Keep `warm_target` placed children of a template ready (off the request path)."""
        template.filling = True
        try:
            await asyncio.sleep(delay_s)
            while len(template.spares) < self.warm_target and not template.retired:
                try:
                    ns_pid = await self._fork_placed(template)
                except (OSError, SandboxError, TimeoutError) as exc:
                    if not template.retired and not self._closing:
                        log.warning("could not fork a spare from the template: %s", exc)
                    return
                if template.retired:  # retired while it was placed: let it go
                    link = template.links.pop(ns_pid, None)
                    if link is not None:
                        link.close()
                    return
                template.spares.append(ns_pid)
        finally:
            template.filling = False

    async def _send_to_template(
        self, template: _Template, header: dict[str, Any], fds: list[int] | None = None
    ) -> None:
        if template.sock is None or template.retired:
            raise SandboxError("the template was retired")
        async with template.send_lock:
            await self._send_with_fds(protocol.encode(header), fds or [], template.sock)

    def retire_template(self, template_key: str) -> None:
        template = self._templates.get(template_key)
        if template is not None:
            self._retire(template)

    def _retire(self, template: _Template) -> None:
        """Fork nothing more; the template exits once its instances are gone."""
        template.retired = True
        if self._templates.get(template.key) is template:
            del self._templates[template.key]
        if template.sock is not None:
            with contextlib.suppress(OSError):
                template.sock.shutdown(socket.SHUT_WR)
        for link in template.links.values():  # unused spares see end of file and exit
            link.close()
        template.links.clear()
        template.spares.clear()

    def _evict_templates(self) -> None:
        while len(self._templates) > self.max_templates:
            self._retire(min(self._templates.values(), key=lambda t: t.last_used))

    async def _reap_templates_forever(self) -> None:
        interval = max(0.2, min(5.0, self.template_keep_alive_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for template in list(self._templates.values()):
                idle = now - template.last_used > self.template_keep_alive_s
                if idle or now - template.created > TEMPLATE_MAX_AGE_S:
                    self._retire(template)

    def spare_count(self) -> int:
        """Pre-spawned sandboxes ready for a cold start."""
        return len(self._warm)

    def template_count(self) -> int:
        return len(self._templates)

    async def _ensure_proxy(self, allow: AllowList) -> None:
        if allow.key not in self._proxies:
            proxy = EgressProxy(allow, self.data_dir / "sandbox" / f"egress-{allow.key}.sock")
            await proxy.start()
            self._proxies[allow.key] = proxy

    async def _fill_warm(self, delay_s: float = 0.0) -> None:
        """Keep `warm_target` pre-spawned sandboxes ready (off the request path)."""
        await asyncio.sleep(delay_s)
        while len(self._warm) + self._warming < self.warm_target:
            self._warming += 1
            cgroup = None
            uid: int | None = None
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                uid = self._allocate_uid()
                cgroup = await asyncio.to_thread(self.cgroups.prepare, PIDS_MAX)
                request = {"t": "warm", "plan": self._warm_plan(cgroup, uid)}
                pid = await self._request(request, [theirs.fileno()])
            except BaseException as exc:
                ours.close()
                if uid is not None:
                    self._uids.discard(uid)
                if cgroup is not None:
                    self._in_background(asyncio.to_thread(cgroup.remove))
                if not isinstance(exc, (OSError, SandboxError, TimeoutError)):
                    raise
                if not self._closing:
                    log.warning("could not pre-spawn a sandbox: %s", exc)
                return
            finally:
                theirs.close()
                self._warming -= 1
            self._warm.append(_Spare(pid, cgroup, ours, uid))

    async def _send_with_fds(
        self, frame: bytes, fds: list[int], sock: socket.socket | None = None
    ) -> None:
        sock = sock or self._sock
        assert sock is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        sent = 0
        while sent < len(frame):
            try:
                if sent == 0:
                    sent = sock.sendmsg([frame], ancillary)
                else:
                    sent += sock.send(frame[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        self._closing = True
        if self._template_reaper is not None:
            self._template_reaper.cancel()
        forked = [c for t in self._templates.values() for c in t.children.values()]
        for process in [*self._processes.values(), *forked]:
            process.kill()
        if self._zygote is not None and self._zygote.returncode is None:
            self._zygote.kill()
            await self._zygote.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
        if self._sock is not None:
            self._sock.close()
        if self._api_server is not None:
            self._api_server.close()
        await self._relay_handlers.cancel()
        for proxy in self._proxies.values():
            await proxy.close()
        for process in [*self._processes.values(), *forked]:
            await asyncio.to_thread(process.cgroup.remove)
        for template in list(self._templates.values()):
            self._template_exited(template)
        for spare in self._warm:
            spare.slot.close()
            self._uids.discard(spare.uid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(spare.pid, signal.SIGKILL)
            await asyncio.to_thread(spare.cgroup.remove)
        self._warm.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        shutil.rmtree(self.root_dir, ignore_errors=True)
