"""The seccomp policy of sandboxed instances. Standard library only (loaded by the zygote).

Default allow, with the classic container-escape syscalls refused (EPERM); new user
namespaces refused; `clone3` answered ENOSYS so libc falls back to `clone`, whose flags a
filter can inspect; with network `none`, AF_INET/AF_INET6 sockets refused as a second layer.
Templates (see `gureum.runtime.bootstrap`) also refuse System V IPC: the instances forked from
one template share its IPC namespace and uid, so a segment one made would be open to the others.
"""

from __future__ import annotations

import contextlib
import errno
import socket
from typing import Any

DENIED_SYSCALLS = (
    "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "bpf", "perf_event_open", "keyctl",
    "add_key", "request_key", "userfaultfd", "open_by_handle_at", "name_to_handle_at",
    "process_vm_readv", "process_vm_writev", "iopl", "ioperm", "settimeofday",
    "clock_settime", "adjtimex", "quotactl", "vhangup", "lookup_dcookie", "move_mount",
    "open_tree", "fsopen", "fsmount", "fspick", "mount_setattr", "pidfd_getfd",
)  # fmt: skip
SYSV_IPC_SYSCALLS = (
    "shmget", "shmat", "shmdt", "shmctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    "semget", "semop", "semtimedop", "semctl",
)  # fmt: skip
CLONE_NEWUSER = 0x10000000


def compile_bpf(seccomp: Any, *, deny_inet: bool, template: bool = False) -> bytes:
    """The filter as a BPF program, built once by libseccomp and loaded by each child."""
    import os

    rules = _build(seccomp, deny_inet=deny_inet, template=template)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "wb") as sink:
        rules.export_bpf(sink)
    with os.fdopen(read_end, "rb") as source:
        return source.read()


def _build(seccomp: Any, *, deny_inet: bool, template: bool = False) -> Any:
    refuse = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    for name in DENIED_SYSCALLS + (SYSV_IPC_SYSCALLS if template else ()):
        with contextlib.suppress(RuntimeError, ValueError, OSError):  # not on this arch
            rules.add_rule(refuse, name)
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER))
    if deny_inet:
        for family in (socket.AF_INET, socket.AF_INET6):
            rules.add_rule(
                seccomp.ERRNO(errno.EACCES), "socket", seccomp.Arg(0, seccomp.EQ, family)
            )
    return rules
