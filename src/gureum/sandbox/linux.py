"""The `linux` driver: instances forked from a zygote into namespaces, cgroups and seccomp.

See `gureum.runtime.zygote` for what happens in the child. This side prepares each instance's
plan (its minimal root, uid, cgroup, network mode), hands the zygote the instance's control
socket and log pipe, learns the instance's pid and, later, its exit status. It also serves the
Unix socket through which sandboxed functions reach Gureum's own APIs (network `platform`).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gureum.errors import SandboxError
from gureum.runtime import protocol
from gureum.runtime.seccomp_policy import DENIED_SYSCALLS
from gureum.sandbox.base import InstanceSpec, IsolationCheck, SandboxProcess
from gureum.sandbox.cgroups import CgroupTree, InstanceCgroup
from gureum.sandbox.egress import AllowList, EgressProxy
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


def linux_sandbox_cgroups() -> tuple[CgroupTree | None, str]:
    """The cgroup tree the linux driver would use on this host, or None and why not."""
    if not sys.platform.startswith("linux"):
        return None, "not Linux"
    if os.geteuid() != 0:
        return None, "needs root (user-namespace mode is not implemented yet)"
    if importlib.util.find_spec("pyseccomp") is None:
        return None, "the pyseccomp package is missing"
    if ctypes.util.find_library("seccomp") is None:
        return None, "libseccomp is not installed (Debian/Ubuntu: apt-get install libseccomp2)"
    tree = CgroupTree.detect()
    if tree is None:
        return None, "no writable memory+pids+cpu cgroups"
    return tree, "root, cgroups and seccomp available"


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

    def kill(self) -> None:
        # B is PID 1 of its namespace: when it dies the kernel kills everything inside.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.cgroup.kill()

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def fault(self) -> str | None:
        return "Runtime.OutOfMemory" if self.oom_killed else None


class LinuxSandbox:
    """Zygote-forked instances with namespaces, a minimal root, cgroups, uid drop, seccomp."""

    name = "linux"

    def __init__(
        self,
        data_dir: Path,
        endpoint: str,
        cgroups: CgroupTree,
        warm_target: int = 2,
    ) -> None:
        self.data_dir = data_dir
        self.endpoint = endpoint
        self.cgroups = cgroups
        self.root_dir = data_dir / "sandbox" / "root"
        self.api_socket = data_dir / "sandbox" / "api.sock"
        self._zygote: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._requests: dict[int, asyncio.Future[int]] = {}
        self._processes: dict[int, _LinuxProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._ids = itertools.count(1)
        self._uids: set[int] = set()
        self._next_uid = 0
        digest = hashlib.sha256(str(data_dir.resolve()).encode()).digest()
        self.uid_base = UID_BASE + int.from_bytes(digest[:8], "big") % UID_BLOCKS * UID_RANGE
        self._start_lock = asyncio.Lock()
        self._send_lock = asyncio.Lock()
        self._api_server: asyncio.AbstractServer | None = None
        self._warm: list[tuple[int, InstanceCgroup]] = []  # pre-spawned (pid, cgroup)
        self._warming = 0
        self._closing = False
        self._proxies: dict[str, EgressProxy] = {}  # by allow-list key
        self.warm_target = warm_target
        self._background: set[asyncio.Task[Any]] = set()
        self._static = self._static_plan()

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
        prefixes = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}
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

        def late(path: str) -> bool:  # under /tmp: must go on top of the instance's tmpfs
            return path == "/tmp" or path.startswith("/tmp/")

        return {
            "binds": [b for b in binds if not late(b[1])],
            "hide": [h for h in hide if not late(h)],
            "late_binds": [b for b in binds if late(b[1])],
            "late_hide": [h for h in hide if late(h)],
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

    async def _start_api_relay(self) -> None:
        """A Unix socket the sandboxes' forwarders connect to, relayed to the endpoint."""
        if self._api_server is not None:
            return
        target = urlsplit(self.endpoint)
        host, port = target.hostname or "127.0.0.1", target.port or 80
        with contextlib.suppress(FileNotFoundError):
            self.api_socket.unlink()

        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(host, port)
            except OSError:
                writer.close()
                return

            async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                except (ConnectionError, OSError):
                    pass
                finally:
                    with contextlib.suppress(OSError, RuntimeError):
                        dst.write_eof()

            await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
            up_writer.close()
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
                for index, (warm_pid, cgroup) in enumerate(self._warm):
                    if warm_pid == pid:  # a pre-spawned sandbox died unused
                        del self._warm[index]
                        self._in_background(asyncio.to_thread(cgroup.remove))
                        return
                self._early_exits[pid] = status
                return
            self._finish(process, status)

    def _finish(self, process: _LinuxProcess, status: int) -> None:
        process.oom_killed = process.cgroup.oom_kills() > 0
        if not process.exited.done():
            process.exited.set_result(status)
        self._uids.discard(process.uid)
        self._in_background(asyncio.to_thread(process.cgroup.remove))

    def _in_background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- the Sandbox protocol ----------------------------------------------------------------

    def checks(self) -> list[IsolationCheck]:
        version = f"cgroup v{self.cgroups.version}"
        return [
            IsolationCheck("separate process", True, "forked from a pre-warmed zygote"),
            IsolationCheck("namespaces", True, "mount, pid, network, ipc, uts, cgroup"),
            IsolationCheck("minimal root", True, "pivot_root; code read-only at /var/task"),
            IsolationCheck("memory limit (cgroup)", True, f"{version}; OOM reported"),
            IsolationCheck("pids and CPU limits", True, f"{version}; 1,769 MB = 1 vCPU"),
            IsolationCheck("file-system isolation", True, "only the runtime is visible, read-only"),
            IsolationCheck(
                "network isolation", True, "empty namespace; platform relay; allow-listed egress"
            ),
            IsolationCheck("seccomp", True, f"{len(DENIED_SYSCALLS)} escape syscalls refused"),
            IsolationCheck("unprivileged user", True, "own uid per instance, no capabilities"),
            IsolationCheck("platform code hidden", True, "site-packages hidden; boto3 offered"),
        ]

    def _allocate_uid(self) -> int:
        for _ in range(UID_RANGE):
            uid = self.uid_base + self._next_uid
            self._next_uid = (self._next_uid + 1) % UID_RANGE
            if uid not in self._uids:
                self._uids.add(uid)
                return uid
        raise SandboxError("no free sandbox uid")

    def _warm_plan(self, cgroup: InstanceCgroup) -> dict[str, Any]:
        """Everything a pre-spawned sandbox needs before it knows its function."""
        return {**self._static, "root": str(self.root_dir), "cgroup_procs": cgroup.procs_files}

    def _function_plan(self, spec: InstanceSpec, uid: int) -> dict[str, Any]:
        """The per-function rest of a sandbox's plan."""
        port = urlsplit(self.endpoint).port or 80
        env = {
            **spec.env,
            "LAMBDA_TASK_ROOT": "/var/task",
            "LAMBDA_RUNTIME_DIR": "/var/runtime",
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "HOME": "/tmp",
        }
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
            proxy_url = f"http://127.0.0.1:{PROXY_PORT}"
            for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
                env[name] = proxy_url
            env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return {
            "function_binds": binds,
            "tmp_mb": spec.ephemeral_mb,
            "etc": {
                "passwd": f"root:x:0:0::/root:/sbin/nologin\nsbx:x:{uid}:{uid}::/tmp:/bin/false\n",
                "group": f"root:x:0:\nsbx:x:{uid}:\n",
                "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
            },
            "network": spec.network,
            "forwarders": forwarders,
            "rlimits": {
                "RLIMIT_CORE": 0,
                "RLIMIT_NOFILE": 1024,
                "RLIMIT_NPROC": PIDS_MAX,
                "RLIMIT_FSIZE": spec.ephemeral_mb * MB,
            },
            "env": env,
            "uid": uid,
            "paths": ["/opt/gureum/python"],
        }

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
        warm = self._warm.pop() if self._warm else None
        self._in_background(self._fill_warm())
        if warm is not None:
            slot, cgroup = warm
        else:
            slot, cgroup = 0, await asyncio.to_thread(self.cgroups.prepare)
        uid = self._allocate_uid()
        try:
            cgroup.limit(spec.memory_mb, PIDS_MAX)
            plan = self._function_plan(spec, uid)
            if not slot:
                plan.update(self._warm_plan(cgroup))
            pid = await self._request(
                {"t": "spawn", "slot": slot, "plan": plan}, [control_fd, log_fd]
            )
        except BaseException as exc:
            self._uids.discard(uid)
            if slot:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot, signal.SIGKILL)
            self._in_background(asyncio.to_thread(cgroup.remove))
            if isinstance(exc, OSError):
                raise SandboxError(f"could not configure the instance cgroup: {exc}") from exc
            raise
        process = _LinuxProcess(pid, cgroup, self, uid)
        if pid in self._early_exits:
            self._finish(process, self._early_exits.pop(pid))
        else:
            self._processes[pid] = process
        return process

    async def _ensure_proxy(self, allow: AllowList) -> None:
        if allow.key not in self._proxies:
            proxy = EgressProxy(allow, self.data_dir / "sandbox" / f"egress-{allow.key}.sock")
            await proxy.start()
            self._proxies[allow.key] = proxy

    async def _fill_warm(self) -> None:
        """Keep `warm_target` pre-spawned sandboxes ready (off the request path)."""
        while len(self._warm) + self._warming < self.warm_target:
            self._warming += 1
            cgroup = None
            try:
                cgroup = await asyncio.to_thread(self.cgroups.prepare)
                pid = await self._request({"t": "warm", "plan": self._warm_plan(cgroup)})
            except (OSError, SandboxError, TimeoutError) as exc:
                log.warning("could not pre-spawn a sandbox: %s", exc)
                if cgroup is not None:
                    await asyncio.to_thread(cgroup.remove)
                return
            finally:
                self._warming -= 1
            self._warm.append((pid, cgroup))

    async def _send_with_fds(self, frame: bytes, fds: list[int]) -> None:
        assert self._sock is not None
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
        sent = 0
        while sent < len(frame):
            try:
                if sent == 0:
                    sent = self._sock.sendmsg([frame], ancillary)
                else:
                    sent += self._sock.send(frame[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.001)

    async def close(self) -> None:
        self._closing = True
        for process in list(self._processes.values()):
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
        for proxy in self._proxies.values():
            await proxy.close()
        for process in list(self._processes.values()):
            await asyncio.to_thread(process.cgroup.remove)
        for pid, cgroup in self._warm:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(cgroup.remove)
        self._warm.clear()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        shutil.rmtree(self.root_dir, ignore_errors=True)
