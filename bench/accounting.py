"""CPU accounting for benchmark runs, from /proc and getrusage (Linux)."""

from __future__ import annotations

import os
import resource

CLOCK_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> tuple[float, dict[int, float]]:
    """CPU seconds used so far by `root` and by each of its live descendants (the linux
    driver's instances are forked by a zygote, so they are grandchildren of the server)."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
    descendants: dict[int, float] = {}
    for pid in ticks:
        ancestor = parents.get(pid)
        while ancestor and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            descendants[pid] = ticks[pid] * CLOCK_TICK_S
    return ticks.get(root, 0) * CLOCK_TICK_S, descendants


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
