"""Summaries of benchmark runs: medians per target, the comparison table, machine info."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass
from typing import Any

from load import LoadResult

LEVELS = (1, 32)  # latency at 1 connection, throughput at 32
TARGET_RPS_RATIO = 0.3
TARGET_P50_OVERHEAD_MS = 1.0
NOISY_CORES = 0.2  # foreign CPU use above which a run is flagged as unreliable


@dataclass(frozen=True)
class Run:
    """One load run against one target, with the CPU each party used meanwhile."""

    target: str
    round: int
    load: LoadResult
    server_cpu_s: float  # the uvicorn process, all threads
    children_cpu_s: float  # its children: Gureum's function instances
    loadgen_cpu_s: float  # wrk, or this process for the Python generator
    foreign_cpu_s: float  # everything else on the machine: should be near zero

    def cpu_us_per_request(self) -> tuple[float, float]:
        requests = max(1, self.load.requests)
        return self.server_cpu_s / requests * 1e6, self.children_cpu_s / requests * 1e6

    @property
    def foreign_cores(self) -> float:
        return self.foreign_cpu_s / self.load.duration_s


@dataclass(frozen=True)
class Summary:
    """Medians over rounds for one target."""

    p50_ms: float  # c=1
    p99_ms: float  # c=1
    rps_c1: float
    rps: float  # c=32
    p50_ms_c32: float
    p99_ms_c32: float
    server_cpu_us: float  # per request, c=32
    children_cpu_us: float


def summarise(runs: list[Run], target: str) -> Summary:
    def median(connections: int, metric: str) -> float:
        return float(
            statistics.median(
                getattr(r.load, metric)
                for r in runs
                if r.target == target and r.load.connections == connections
            )
        )

    cpu = [r.cpu_us_per_request() for r in runs if r.target == target and r.load.connections > 1]
    return Summary(
        p50_ms=median(1, "p50_ms"),
        p99_ms=median(1, "p99_ms"),
        rps_c1=median(1, "rps"),
        rps=median(LEVELS[-1], "rps"),
        p50_ms_c32=median(LEVELS[-1], "p50_ms"),
        p99_ms_c32=median(LEVELS[-1], "p99_ms"),
        server_cpu_us=statistics.median(c[0] for c in cpu),
        children_cpu_us=statistics.median(c[1] for c in cpu),
    )


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_info(generator: str) -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.partition(":")[2].strip()
                break
    wrk = ""
    if generator == "wrk":
        wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "uvicorn": _version("uvicorn"),
        "uvloop": _version("uvloop"),
        "httptools": _version("httptools"),
        "load_generator": wrk.splitlines()[0].strip() if wrk else generator,
    }


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def report(base: Summary, gureum: Summary) -> tuple[str, dict[str, Any]]:
    headers = [
        "target",
        "c=1 p50 ms",
        "c=1 p99 ms",
        "c=1 req/s",
        "c=32 req/s",
        "c=32 p50 ms",
        "c=32 p99 ms",
        "c=32 CPU us/req (server + instances)",
    ]

    def row(name: str, s: Summary) -> list[str]:
        cpu = f"{s.server_cpu_us:.0f}"
        if s.children_cpu_us:
            cpu += f" + {s.children_cpu_us:.0f}"
        return [
            name,
            f"{s.p50_ms:.3f}",
            f"{s.p99_ms:.3f}",
            f"{s.rps_c1:,.0f}",
            f"{s.rps:,.0f}",
            f"{s.p50_ms_c32:.2f}",
            f"{s.p99_ms_c32:.2f}",
            cpu,
        ]

    ratio = gureum.rps / base.rps
    overhead = gureum.p50_ms - base.p50_ms
    compare = [
        "gureum vs baseline",
        f"{overhead:+.3f}",
        f"{gureum.p99_ms - base.p99_ms:+.3f}",
        f"{gureum.rps_c1 / base.rps_c1:.2f}x",
        f"{ratio:.2f}x",
        f"{gureum.p50_ms_c32 - base.p50_ms_c32:+.2f}",
        f"{gureum.p99_ms_c32 - base.p99_ms_c32:+.2f}",
        f"{(gureum.server_cpu_us + gureum.children_cpu_us) / base.server_cpu_us:.1f}x",
    ]
    table = format_table(headers, [row("baseline (ASGI)", base), row("gureum", gureum), compare])
    rps_ok = ratio >= TARGET_RPS_RATIO
    p50_ok = overhead <= TARGET_P50_OVERHEAD_MS
    verdict = (
        f"throughput  gureum/baseline at c=32 = {ratio:.2f}x   "
        f"(target >= {TARGET_RPS_RATIO:.2f}x)  {'PASS' if rps_ok else 'FAIL'}\n"
        f"latency     p50 overhead at c=1     = {overhead:.3f} ms "
        f"(target <= {TARGET_P50_OVERHEAD_MS:.2f} ms) {'PASS' if p50_ok else 'FAIL'}"
    )
    ratios = {
        "rps_ratio": ratio,
        "p50_overhead_ms": overhead,
        "p99_overhead_ms": gureum.p99_ms - base.p99_ms,
        "rps_target_met": rps_ok,
        "p50_target_met": p50_ok,
    }
    return table + "\n\n" + verdict, ratios


def noise_note(runs: list[Run], rounds: int) -> str:
    """How much CPU processes outside the benchmark took while it measured."""
    worst = max(r.foreign_cores for r in runs)
    mean = statistics.fmean(r.foreign_cores for r in runs)
    note = f"other processes used {mean:.2f} cores on average during measurements (max {worst:.2f})"
    if worst > NOISY_CORES:
        note += "\nWARNING: the machine was not quiet; these numbers are unreliable. Rerun when"
        note += " it is" + (", or with --rounds 3 for medians" if rounds < 3 else "")
    return note
