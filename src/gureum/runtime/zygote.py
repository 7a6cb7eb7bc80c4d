"""The zygote: a small, single-threaded process that forks sandboxed function instances.

Started by the `linux` sandbox driver as `python -I -S zygote.py --control-fd N
--seccomp-module PATH`. It imports the runtime shim and everything a child needs up front, so
a new instance costs a `fork` plus the sandbox set-up, not an interpreter start.

Requests arrive as frames (see protocol.py) on the control socket, each carrying the
instance's control socket and log pipe as SCM_RIGHTS file descriptors:

    agent → zygote  {"t": "spawn", "id": N, "plan": {...}}   + fds [control, log]
    zygote → agent  {"t": "spawned", "id": N, "pid": P}     or {"t": "error", "id", "message"}
    agent → zygote  {"t": "warm", "id": N, "plan": {static parts, cgroup_procs}} + fd [slot]
    zygote → agent  {"t": "warmed", "id": N, "pid": P}      a pre-spawned sandbox is ready
    agent → P       {"t": "plan", "plan": {...}} + fds      on the slot: P becomes an instance
    zygote → agent  {"t": "exit", "pid": P, "status": S}    when instance P is reaped

A warm (pre-spawned) sandbox has already joined its cgroup, entered its namespaces and built
the function-independent part of its root, so a cold start pays only the function's part:
cgroup migration on cgroup v1 alone costs ~12 ms of kernel RCU synchronisation.

Per instance, the zygote forks A; A joins the instance's cgroups, unshares the mount, PID,
network, IPC, UTS and cgroup namespaces (and, rootless, a user namespace first, mapping the
server's own uid to SANDBOX_UID inside and nothing else) and forks B, the instance, which is
PID 1 of its own PID namespace (killing it kills everything it started). A reports B's pid
and exits; the zygote, a child subreaper, adopts and reaps B. B builds a minimal root,
`pivot_root`s into it, sets rlimits, switches to its own unprivileged uid (rootless: stays
SANDBOX_UID, the only one mapped, and clears its capabilities), sets no_new_privs, drops
capabilities, loads the seccomp filter last, and runs the shim, which imports the handler.

A template (see `gureum.runtime.bootstrap` for why it is safe) is built the same way, with three
differences: its /tmp is a link to the private tmpfs each of its instances will hold open at
descriptor TMP_FD (the spawn request carries a third descriptor, the template's own), its
/proc hides the processes it may not ptrace (`hidepid=invisible`), and its seccomp filter also
refuses System V IPC.
Standard library only, plus the seccomp binding loaded by path.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import functools
import importlib.util
import json
import os
import platform
import resource
import select
import signal
import socket
import struct
import sys
import traceback
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name: str, path: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


protocol = _load("_gureum_protocol", os.path.join(_HERE, "protocol.py"))
bootstrap = _load("_gureum_bootstrap", os.path.join(_HERE, "bootstrap.py"))
policy = _load("_gureum_seccomp_policy", os.path.join(_HERE, "seccomp_policy.py"))

libc = ctypes.CDLL(None, use_errno=True)
# resolved once here rather than in every sandbox (a first lookup builds and caches the wrapper)
for _symbol in ("mount", "umount2", "syscall", "sethostname", "prctl", "unshare"):
    getattr(libc, _symbol)
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
PR_GET_NO_NEW_PRIVS = 39
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine(), 155)
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
CAP_LAST = 40
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
SYS_CAPSET = {"x86_64": 126, "aarch64": 91}.get(platform.machine(), 126)
LINUX_CAPABILITY_VERSION_3 = 0x20080522
SANDBOX_UID = 1000  # rootless: the server's uid, as seen inside the user namespace
ST_FLAGS_TO_KEEP = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | 1024 | 2048  # +atime bits
ST_RELATIME, MS_RELATIME = 4096, 1 << 21
TMP_FD = bootstrap.TMP_FD  # a template's instances reach their private /tmp through it
GO_FD = TMP_FD - 1  # a pre-spawned sandbox's slot, while it waits for its limits


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _prctl(option: int, arg: int) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


# ---- in A: cgroups and namespaces --------------------------------------------------------


def _enter_cgroups(procs_files: list[str]) -> None:
    pid = str(os.getpid())
    for path in procs_files:
        with open(path, "w") as handle:
            handle.write(pid)


def _unshare(rootless: bool) -> None:
    flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
    flags |= CLONE_NEWCGROUP
    if not rootless:
        _check(libc.unshare(flags), "unshare")
        return
    uid, gid = os.geteuid(), os.getegid()
    # the other namespaces are created owned by the new user namespace, where we are all-capable
    _check(libc.unshare(flags | CLONE_NEWUSER), "unshare")
    for name, content in (
        ("setgroups", "deny"),
        ("uid_map", f"{SANDBOX_UID} {uid} 1"),
        ("gid_map", f"{SANDBOX_UID} {gid} 1"),
    ):
        with open(f"/proc/self/{name}", "w") as handle:
            handle.write(content)


# ---- in B: the minimal root ----------------------------------------------------------------


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def _bind(source: str, target: str, writable: bool = False) -> None:
    if os.path.isdir(source):
        _mkdirs(target)
    else:
        _mkdirs(os.path.dirname(target))
        if not os.path.exists(target):
            open(target, "w").close()
    _mount(source, target, None, MS_BIND | MS_REC)
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | (0 if writable else MS_RDONLY)
    if not source.startswith("/dev/"):
        flags |= MS_NODEV
    # keep the flags the source mount already has: in a user namespace they are locked, and
    # a remount that would clear one is refused
    existing = os.statvfs(target).f_flag
    flags |= existing & ST_FLAGS_TO_KEEP & ~(0 if not writable else MS_RDONLY)
    if existing & ST_RELATIME:
        flags |= MS_RELATIME
    _mount(None, target, None, flags)


def _hide(path: str) -> None:
    """Cover a directory with an empty read-only tmpfs (e.g. the host's site-packages)."""
    if os.path.isdir(path):
        _mount(
            "gureum-hidden", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=0555"
        )


def _prepare_root(plan: dict[str, Any]) -> None:
    """Stage 1, function-independent: a tmpfs root with the runtime bound in, /dev, /proc,
    /etc (its users name the sandbox's uid, chosen with it)."""
    root = plan["root"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("gureum-root", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=4m,mode=0755")
    for source, target in plan["binds"]:
        _bind(source, root + target)
    for target in plan["hide"]:
        _hide(root + target)
    for target, link in plan["symlinks"]:
        _mkdirs(os.path.dirname(root + link))
        os.symlink(target, root + link)
    for device in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        _bind(device, root + device, writable=True)
    os.symlink("/proc/self/fd", root + "/dev/fd")
    _mkdirs(root + "/proc")
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mkdirs(root + "/etc")
    for name, content in plan["etc"].items():
        fd = os.open(f"{root}/etc/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, content.encode())
        finally:
            os.close(fd)


def _finish_root(plan: dict[str, Any]) -> None:
    """Stage 2, per function: its code, /tmp, the platform socket; then pivot_root."""
    root = plan["root"]
    for source, target in plan["function_binds"]:
        _bind(source, root + target)
    tmp = root + "/tmp"
    if plan.get("template"):
        # each instance's own detached tmpfs, held at TMP_FD; a fresh /proc that shows only
        # the processes the viewer may ptrace (its own, under its Landlock domain)
        os.symlink(f"/proc/self/fd/{TMP_FD}", tmp)
        proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        _mount("proc", root + "/proc", "proc", proc_flags, "hidepid=invisible")
    else:
        _mkdirs(tmp)
        tmp_options = f"size={plan['tmp_mb']}m,mode=1777"
        _mount("gureum-tmp", tmp, "tmpfs", MS_NOSUID | MS_NODEV, tmp_options)
    # a runtime installed under /tmp (a virtualenv in a CI checkout, say) goes on top of it
    for source, target in plan["late_binds"]:
        _bind(source, root + target)
    for target in plan["late_hide"]:
        _hide(root + target)
    # pivot_root(".", "."): the old root ends up stacked under the new one; detach it
    os.chdir(root)
    _check(libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(libc.umount2(b".", MNT_DETACH), "detach old root")
    os.chdir("/")
    _mount(None, "/", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _sock_fprog(program: bytes) -> tuple[_SockFprog, ctypes.Array[ctypes.c_char]]:
    """The kernel's view of a compiled seccomp program, and the buffer it points into (keep
    both alive while the kernel reads it)."""
    buffer = ctypes.create_string_buffer(program, len(program))
    return _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p)), buffer


def _load_bpf(program: bytes) -> None:
    """Install a compiled seccomp program (needs no_new_privs). Irreversible."""
    fprog, _buffer = _sock_fprog(program)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


@functools.cache
def _empty_bounding_set() -> None:
    """Drop every capability from the bounding set (none can come back through exec). Once
    per process: a pre-spawned sandbox does it while it waits, off the cold-start path; the
    capabilities it holds now are unaffected."""
    for cap in range(CAP_LAST + 1):
        failed = libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0
        if failed and ctypes.get_errno() == errno.EINVAL:  # past the kernel's last capability
            break


def _drop_privileges(uid: int, gid: int, rootless: bool = False) -> None:
    _empty_bounding_set()
    if rootless:
        # one uid is mapped and we already are it (not root inside): clear the capabilities
        # the namespace's creator holds; with an empty bounding set, exec gives none back
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        header = struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0)
        _check(libc.syscall(SYS_CAPSET, header, bytes(24)), "capset")
    else:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # a non-zero uid clears the permitted and effective sets
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _forwarder(port: int, socket_path: str) -> socket.socket:
    """Listen on 127.0.0.1:port inside the sandbox; each connection is relayed to one of the
    agent's Unix sockets (bind-mounted in): Gureum's APIs, or the egress proxy."""
    import threading

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)

    def pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock, how in ((target, socket.SHUT_WR), (source, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(socket_path)
            except OSError:
                client.close()
                upstream.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), name="gureum-pipe", daemon=True).start()

    threading.Thread(target=serve, name="gureum-forwarder", daemon=True).start()
    return listener


Filters = dict[tuple[bool, bool], bytes]  # (deny inet, template) → BPF program


def _keep_only(fds: list[int]) -> None:
    """Close every descriptor from 4 up except `fds`."""
    low = 4
    for fd in sorted(fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 65536)


def _instance(
    plan: dict[str, Any], fds: list[int], filters: Filters, go: int | None = None
) -> None:
    """Stage 2 in B, PID 1 of the new namespaces: finish the sandbox, run the shim. Never
    returns. `fds`: control socket, log pipe and, for a template, its /tmp. With `go` (a
    socket), wait for a byte on it before any function code runs: the agent sets the cgroup's
    limits while this builds the sandbox."""
    template = bool(plan.get("template"))
    try:
        control_fd, log_fd = fds[0], fds[1]
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(control_fd, 3)
        kept = []
        if template:
            os.dup2(fds[2], TMP_FD)
            kept.append(TMP_FD)
        if go is not None:
            os.dup2(go, GO_FD)
            kept.append(GO_FD)
        _keep_only(kept)
        os.set_inheritable(3, True)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        libc.sethostname(b"sandbox", 7)
        _finish_root(plan)
        if plan["network"] != "none":
            _loopback_up()
        bootstrap.replace_environment(plan["env"])
        os.chdir("/var/task")
        for name, value in plan["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value))
        _drop_privileges(plan["uid"], plan["uid"], bool(plan.get("rootless")))
        for port, path in plan["forwarders"]:
            _forwarder(port, path)
        _load_bpf(filters[plan["network"] == "none", template])
    except BaseException as exc:  # tell the agent why, as an init error, then die
        error = {
            "errorMessage": f"sandbox set-up failed: {exc}",
            "errorType": "Sandbox.SetupError",
            "requestId": "",
            "stackTrace": traceback.format_exception(exc),
        }
        try:
            os.write(2, f"[ERROR] Sandbox.SetupError: {exc}\n".encode())
            socket.socket(fileno=3).sendall(
                protocol.encode({"t": "init_error"}, json.dumps(error).encode())
            )
        finally:
            os._exit(125)
    if go is not None:
        try:
            ready = os.read(GO_FD, 1) == b"g"
        except OSError:
            ready = False
        if not ready:
            os._exit(0)  # the agent gave up on this instance
        os.close(GO_FD)
    args = ["--control-fd", "3", *(a for p in plan["paths"] for a in ("--path", p))]
    if template:
        ports = [str(port) for port, _ in plan["forwarders"]]
        args += ["--template", *(a for port in ports for a in ("--port", port))]
    try:
        bootstrap.main(args)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _cold_instance(plan: dict[str, Any], fds: list[int], filters: Filters) -> None:
    """B without a pre-spawned sandbox: both stages now."""
    try:
        _prepare_root(plan)
    except BaseException as exc:
        os.write(fds[1], f"[ERROR] Sandbox.SetupError: {exc}\n".encode())
        os._exit(124)
    _instance(plan, fds, filters)


def _rehearse() -> None:
    """While a pre-spawned sandbox waits: run what its function stage will, where that has no
    effect, so that the pages it touches are copied now rather than on the cold start (see
    `bootstrap.rehearse`). The environment is cleared for real: the function's replaces it."""
    bootstrap.replace_environment({"GUREUM_REHEARSAL": "1"})
    bootstrap.replace_environment({})
    _sock_fprog(bytes(8))
    libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0)
    bootstrap.rehearse()


def _warm_instance(plan: dict[str, Any], slot: socket.socket, filters: Filters) -> None:
    """B of a pre-spawned sandbox: build stage 1, then wait for the function's plan."""
    try:
        _prepare_root(plan)
        _empty_bounding_set()
        bootstrap.prepare()
        _rehearse()
        request = _recv_request(slot)
    except BaseException:
        os._exit(124)
    if request is None:
        os._exit(0)  # never used: the zygote went away
    header, fds = request
    _instance({**plan, **header["plan"]}, fds, filters, go=slot.detach())


# ---- the zygote loop ------------------------------------------------------------------------


def _fork_sandbox(plan: dict[str, Any], keep: list[int], body: Any) -> int:
    """Fork A, which joins the cgroup, unshares the namespaces and forks B to run `body()`;
    return B's pid (in the zygote's namespace)."""
    report_read, report_write = os.pipe()
    a_pid = os.fork()
    if a_pid == 0:
        try:
            for fd in (*keep, report_read):
                os.close(fd)
            _enter_cgroups(plan["cgroup_procs"])
            _unshare(bool(plan.get("rootless")))
            b_pid = os.fork()
            if b_pid == 0:
                os.close(report_write)
                body()
                os._exit(0)
            os.write(report_write, str(b_pid).encode())
            os._exit(0)
        except BaseException as exc:
            os.write(report_write, f"error:{exc}".encode())
            os._exit(1)
    os.close(report_write)
    try:
        reply = b""
        while chunk := os.read(report_read, 256):
            reply += chunk
    finally:
        os.close(report_read)
        os.waitpid(a_pid, 0)
    text = reply.decode(errors="replace")
    if not text.isdecimal():
        raise OSError(text.removeprefix("error:") or "instance set-up failed")
    return int(text)


_recv_request = bootstrap.recv_with_fds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--seccomp-module", required=True)
    args = parser.parse_args(argv)
    seccomp = _load("seccomp", args.seccomp_module)
    filters = {
        (deny, template): policy.compile_bpf(seccomp, deny_inet=deny, template=template)
        for deny in (False, True)
        for template in (False, True)
    }
    sock = socket.socket(fileno=args.control_fd)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the agent died: so do we
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)

    def keep() -> list[int]:
        return [args.control_fd, wake_read, wake_write]

    while True:
        try:
            ready, _, _ = select.select([args.control_fd, wake_read], [], [])
        except InterruptedError:
            continue
        if wake_read in ready:
            os.read(wake_read, 4096)
            _reap(sock)
        if args.control_fd not in ready:
            continue
        request = _recv_request(sock)
        if request is None:
            return
        header, fds = request
        kind = header.get("t")
        try:
            plan = header["plan"]
            if kind == "warm" and len(fds) == 1:
                slot = socket.socket(fileno=os.dup(fds[0]))
                try:
                    pid = _fork_sandbox(
                        plan, keep(), functools.partial(_warm_instance, plan, slot, filters)
                    )
                finally:
                    slot.close()
                reply = {"t": "warmed", "id": header.get("id"), "pid": pid}
            elif kind == "spawn" and len(fds) == (3 if plan.get("template") else 2):
                pid = _fork_sandbox(
                    plan, keep(), functools.partial(_cold_instance, plan, fds, filters)
                )
                reply = {"t": "spawned", "id": header.get("id"), "pid": pid}
            else:
                raise ValueError(f"bad request {kind!r}")
        except Exception as exc:
            reply = {"t": "error", "id": header.get("id"), "message": str(exc)}
        finally:
            for fd in fds:
                os.close(fd)
        sock.sendall(protocol.encode(reply))
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = os.waitstatus_to_exitcode(status)
        sock.sendall(protocol.encode({"t": "exit", "pid": pid, "status": code}))


if __name__ == "__main__":
    main()
