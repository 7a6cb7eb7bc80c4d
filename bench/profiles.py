"""Summaries of where a server's time went, from py-spy raw stacks or a cProfile stats file.

`bench/invoke.py` records py-spy with `--gil`: a sample is kept only when the thread holds the
GIL, which leaves out event-loop waits, idle worker threads and instances blocked on their
socket. Sampling is by wall clock, so a thread preempted while holding the GIL still collects
samples: on a busy machine, code right after waking another process (socket writes) looks
dearer than its CPU cost. Line numbers are dropped: a function's samples are summed over its
lines. Shares are per process kind, never across kinds.
"""

from __future__ import annotations

import io
import pstats
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_PROCESS = re.compile(r'^process (\d+):"(.*)"$')
_FRAME = re.compile(r"^(.*) \((.*?)(?::\d+)?\)$")
# Each sample is charged to the innermost frame from one of these packages; Gureum's own
# modules are split by component. Library frames in between (asyncio, json, SQLAlchemy,
# botocore, ...) count towards the component that called them.
_OWNERS = ("gureum/", "starlette/", "uvicorn/")
_COMPONENTS = {
    "gureum/iam/": "SigV4 verification (gateway/auth.py, iam/)",
    "gureum/gateway/auth.py": "SigV4 verification (gateway/auth.py, iam/)",
    "gureum/gateway/lambda_api.py": "LambdaAPI.invoke (gateway/lambda_api.py)",
    "gureum/gateway/server.py": "uvicorn (HTTP protocol, socket writes)",
    "gureum/gateway/http_api.py": "user routes (gateway/http_api.py, http_event.py, routing.py)",
    "gureum/gateway/http_event.py": "user routes (gateway/http_api.py, http_event.py, routing.py)",
    "gureum/gateway/routing.py": "user routes (gateway/http_api.py, http_event.py, routing.py)",
    "gureum/gateway/route_auth.py": "user routes (gateway/http_api.py, http_event.py, routing.py)",
    "gureum/gateway/": "GatewayApp (gateway/app.py, responses.py)",
    "gureum/sandbox/": "instance IPC (sandbox/instance.py, runtime/protocol.py)",
    "gureum/runtime/protocol.py": "instance IPC (sandbox/instance.py, runtime/protocol.py)",
    "gureum/node/records.py": "invocation records (node/records.py)",
    "gureum/node/": "dispatcher + pool (node/dispatcher.py, pool.py)",
    "gureum/control/": "registry + package store (control/)",
    "gureum/events/": "async invoker (events/)",
    "gureum/": "gureum, other",
    "starlette/": "starlette (routing, Request, Response)",
    "uvicorn/": "uvicorn (HTTP protocol, socket writes)",
}
_OTHER = "event loop and everything else"


@dataclass
class ProcessSamples:
    """Stacks of one process (or of several of one kind), outermost frame first."""

    samples: int = 0
    self_counts: Counter[str] = field(default_factory=Counter)
    inclusive_counts: Counter[str] = field(default_factory=Counter)
    components: Counter[str] = field(default_factory=Counter)

    def add(self, frames: list[str], count: int) -> None:
        self.samples += count
        if frames:
            self.self_counts[frames[-1]] += count
        for name in set(frames):
            self.inclusive_counts[name] += count
        self.components[_component(frames)] += count


def _component(frames: list[str]) -> str:
    for frame in reversed(frames):
        where = frame.rpartition(" (")[2]
        if where.startswith(_OWNERS):
            return next(label for prefix, label in _COMPONENTS.items() if where.startswith(prefix))
    return _OTHER


def _frame_name(raw: str) -> str:
    found = _FRAME.match(raw)
    return f"{found.group(1)} ({found.group(2)})" if found else raw


def parse_pyspy_raw(text: str, root_pid: int) -> dict[str, ProcessSamples]:
    """Group py-spy `--format raw --subprocesses` stacks into 'gateway' (the root process,
    the one running the event loop), 'record writer' (the child writing invocation records,
    gureum.node.record_writer) and 'instances' (the other children: the function sandboxes)."""
    groups = {
        "gateway": ProcessSamples(),
        "instances": ProcessSamples(),
        "record writer": ProcessSamples(),
    }
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        pid = root_pid
        frames: list[str] = []
        for part in stack.split(";"):
            process = _PROCESS.match(part)
            if process is not None:
                pid = int(process.group(1))
            else:
                frames.append(_frame_name(part))
        if pid == root_pid:
            kind = "gateway"
        elif any(frame.endswith("(gureum/node/record_writer.py)") for frame in frames):
            kind = "record writer"
        else:
            kind = "instances"
        groups[kind].add(frames, int(count))
    return groups


def format_pyspy(groups: dict[str, ProcessSamples], top: int = 25) -> str:
    """Sample split per process kind, then the gateway's top functions by self and inclusive."""
    out = [
        "py-spy (--gil) samples: "
        + ", ".join(f"{kind} {g.samples}" for kind, g in groups.items())
        + "; shares below are of each kind's own samples"
    ]
    for kind in ("gateway", "instances"):
        group = groups[kind]
        if not group.samples:
            continue
        if kind == "gateway":
            out.append(f"\n{kind}: samples by component (innermost gureum/starlette/uvicorn frame)")
            for label, count in group.components.most_common():
                out.append(f"  {100 * count / group.samples:5.1f}%  {label}")
        for title, counts in (("self", group.self_counts), ("inclusive", group.inclusive_counts)):
            out.append(f"\n{kind}: top {top} functions by {title} time (% of {kind} samples)")
            for name, count in counts.most_common(top):
                out.append(f"  {100 * count / group.samples:5.1f}%  {name}")
    return "\n".join(out)


def format_cprofile(stats_path: Path, top: int = 30) -> str:
    """cProfile's top functions by own time and by cumulative time."""
    buffer = io.StringIO()
    stats = pstats.Stats(str(stats_path), stream=buffer)
    stats.strip_dirs()
    for key in ("tottime", "cumulative"):
        stats.sort_stats(key).print_stats(top)
    return buffer.getvalue()
