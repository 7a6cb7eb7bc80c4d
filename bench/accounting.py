"""CPU accounting for benchmark runs, from /proc and getrusage (Linux)."""

from __future__ import annotations

import os
import resource

CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_ticks(stat: str) -> tuple[int, int]:
    """(ppid, utime + stime) from a /proc/<pid>/stat line."""
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_cpu(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds used so far by `pid` and by each of its live children."""
    own = 0.0
    children: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                ppid, ticks = _cpu_ticks(stat.read())
        except OSError:
            continue
        if int(entry.name) == pid:
            own = ticks * CLOCK_TICK_S
        elif ppid == pid:
            children[int(entry.name)] = ticks * CLOCK_TICK_S
    return own, children


def busy_cpu_s() -> float:
    """CPU seconds all CPUs of the machine have spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as stat:
        ticks = [int(v) for v in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) * CLOCK_TICK_S


def own_and_waited_cpu_s() -> float:
    """CPU seconds of this process plus its finished children (wrk runs once it has exited)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    waited = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + waited.ru_utime + waited.ru_stime
