"""Closed-loop HTTP load: `wrk` when it is installed, else a Python (asyncio) generator.

Each of `connections` keep-alive connections sends the same request back to back for
`duration_s`; the result carries throughput, latency percentiles and error counts. Both
generators send byte-identical requests, so a run against Gureum and one against the baseline
differ only in the server.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

WRK_JSON_PREFIX = "BENCH_JSON "
# wrk's Lua `done()` hook prints one machine-readable line next to its `--latency` report.
_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"mean_us":%.1f,"max_us":%.1f}\\n',
    PREFIX, summary.requests, summary.duration, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max))
end
"""


@dataclass(frozen=True)
class HttpRequest:
    """One request, exactly as it goes on the wire (headers include Host)."""

    host: str
    port: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def wire(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1"]
        lines += [f"{name}: {value}" for name, value in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured. Latencies in milliseconds."""

    generator: str  # "wrk" | "python"
    connections: int
    duration_s: float
    requests: int
    errors: int  # socket errors, timeouts and non-2xx/3xx responses
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    command: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


LoadGenerator = Callable[[HttpRequest, int, float], LoadResult]


def pick_generator(name: str) -> tuple[str, LoadGenerator]:
    """`auto` means wrk if it is on PATH, else the Python generator."""
    if name == "wrk" or (name == "auto" and shutil.which("wrk")):
        if not shutil.which("wrk"):
            raise SystemExit("wrk is not installed (apt-get install wrk), use --load python")
        return "wrk", run_wrk
    return "python", run_python


# ---- wrk -------------------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    if not text.isascii() or not text.isprintable():
        raise ValueError(f"header value not safe for a Lua literal: {text!r}")
    return json.dumps(text)  # printable ASCII: JSON and Lua quote it the same way


def wrk_script(request: HttpRequest) -> str:
    """A wrk Lua script sending `request` on every call, and reporting as JSON when done."""
    lines = [
        f"wrk.method = {_lua_string(request.method)}",
        f"wrk.body = {_lua_string(request.body.decode('ascii'))}",
    ]
    lines += [
        f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
        for name, value in request.headers.items()
    ]
    lines.append(f"PREFIX = {_lua_string(WRK_JSON_PREFIX)}")
    return "\n".join(lines) + "\n" + _WRK_DONE


def wrk_threads(connections: int) -> int:
    return 1 if connections == 1 else 2


def run_wrk(request: HttpRequest, connections: int, duration_s: float) -> LoadResult:
    """Run wrk against `request.url`; raise RuntimeError if it fails or reports nothing."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="gureum-bench-") as script:
        script.write(wrk_script(request))
        script.flush()
        argv = [
            "wrk",
            f"-t{wrk_threads(connections)}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            script.name,
            request.url,
        ]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = re.search(rf"^{WRK_JSON_PREFIX}(\{{.*\}})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    data = json.loads(found.group(1))
    elapsed_s = data["duration_us"] / 1e6
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    shown = [*argv[:-3], "-s", "<signed-invoke.lua>", argv[-1]]
    return LoadResult(
        generator="wrk",
        connections=connections,
        duration_s=elapsed_s,
        requests=data["requests"],
        errors=errors,
        rps=data["requests"] / elapsed_s,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        command=" ".join(shown),
    )


# ---- Python fallback -------------------------------------------------------------------------


def _percentile(ordered: list[float], pct: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def _connection(
    request: HttpRequest, deadline: float, latencies: list[float], errors: list[int]
) -> None:
    wire = request.wire()
    reader, writer = await asyncio.open_connection(request.host, request.port)
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(wire)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith((b"HTTP/1.1 2", b"HTTP/1.1 3")):
                errors[0] += 1
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        errors[0] += 1
    finally:
        writer.close()


async def _python_load(
    request: HttpRequest, connections: int, duration_s: float
) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    deadline = started + duration_s
    await asyncio.gather(
        *(_connection(request, deadline, latencies, errors) for _ in range(connections))
    )
    return latencies, errors[0], time.perf_counter() - started


def run_python(request: HttpRequest, connections: int, duration_s: float) -> LoadResult:
    """The fallback generator: asyncio (uvloop if importable) in this process.

    One Python process tops out far below wrk, so at high concurrency it can become the
    bottleneck; compare its numbers with each other, not with wrk's.
    """
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        loop_factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        latencies, errors, elapsed_s = runner.run(_python_load(request, connections, duration_s))
    ordered = sorted(latencies)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return LoadResult(
        generator="python",
        connections=connections,
        duration_s=elapsed_s,
        requests=len(ordered),
        errors=errors,
        rps=len(ordered) / elapsed_s,
        p50_ms=_percentile(ordered, 50) * 1000,
        p90_ms=_percentile(ordered, 90) * 1000,
        p99_ms=_percentile(ordered, 99) * 1000,
        mean_ms=mean * 1000,
        max_ms=(ordered[-1] if ordered else 0.0) * 1000,
        command=f"python asyncio generator, {connections} connections, {duration_s:g}s",
    )
