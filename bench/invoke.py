"""Warm invoke of a trivial handler: Gureum's Lambda Invoke API vs a plain uvicorn ASGI app.

    python3 bench/invoke.py [--duration S] [--rounds N] [--memory MB] [--json out.json]
                            [--profile]

Starts both servers as subprocesses under the same uvicorn settings (bench/servers.py),
deploys bench/trivial_handler.py into Gureum with boto3, warms both up, then measures each at
concurrency 1 (p50/p99 latency) and 32 (requests/s), alternating between the two targets. The
baseline calls the same handler in-process, so Gureum / baseline is the platform's overhead.
Target (the issue): throughput >= 0.3x the baseline's, p50 overhead <= 1 ms. The function
gets Lambda's default 128 MB and with it 0.07 of a core per instance: at concurrency 1 its one
instance uses up that CPU quota within some 100 ms periods and waits for the next (p99 tens of
ms); `--memory 1769` gives each instance a whole core.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, cast

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accounting import busy_cpu_s, own_and_waited_cpu_s, tree_cpu
from load import HttpRequest, LoadGenerator, pick_generator
from profiles import format_cprofile, format_pyspy, parse_pyspy_raw
from report import LEVELS, Run, machine_info, noise_note, report, summarise

if TYPE_CHECKING:
    from mypy_boto3_lambda.literals import RuntimeType

BENCH_DIR = Path(__file__).resolve().parent
SERVERS = BENCH_DIR / "servers.py"
HANDLER_FILE = BENCH_DIR / "trivial_handler.py"
FUNCTION = "bench-trivial"
REGION = "us-east-1"
INVOKE_PATH = f"/2015-03-31/functions/{FUNCTION}/invocations"
EVENT = b"{}"
EXPECTED = {"ok": True}


# ---- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """One benchmark target running as a subprocess of this script."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM lets uvicorn run the lifespan shutdown (Gureum closes its instances)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(name: str, args: list[str], env: dict[str, str], ready_path: str) -> Server:
    port = free_port()
    argv = [sys.executable, str(SERVERS), name, "--port", str(port), *args]
    process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    server = Server(name, port, process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} server exited with {process.returncode} during start-up")
        with contextlib.suppress(OSError):
            status, _ = http_call("127.0.0.1", port, "GET", ready_path, {}, b"")
            if status == 200:
                return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} server did not become ready within 60 s")


def http_call(
    host: str, port: int, method: str, path: str, headers: dict[str, str], body: bytes
) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# ---- Gureum set-up ---------------------------------------------------------------------------


def new_root_credentials() -> tuple[str, str]:
    alphabet = string.ascii_uppercase + string.digits
    key_id = "AKIA" + "".join(secrets.choice(alphabet) for _ in range(16))
    return key_id, secrets.token_urlsafe(30)


def deploy(endpoint: str, access_key_id: str, secret: str, memory_mb: int = 128) -> None:
    """Create the trivial function with boto3 and check one invocation end to end."""
    client = boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 0, "mode": "standard"}, read_timeout=60),
    )
    package = io.BytesIO()
    with zipfile.ZipFile(package, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(HANDLER_FILE.name, HANDLER_FILE.read_text())
    client.create_function(
        FunctionName=FUNCTION,
        Runtime=cast("RuntimeType", f"python{sys.version_info.major}.{sys.version_info.minor}"),
        Role="arn:aws:iam::000000000000:role/bench",
        Handler=f"{HANDLER_FILE.stem}.handler",
        Code={"ZipFile": package.getvalue()},
        MemorySize=memory_mb,
        Timeout=30,
    )
    reply = client.invoke(FunctionName=FUNCTION, Payload=EVENT)
    result = json.loads(reply["Payload"].read())
    if reply.get("FunctionError") or result != EXPECTED:
        raise RuntimeError(f"deployed function answered {result!r}")


def signed_invoke(port: int, access_key_id: str, secret: str) -> HttpRequest:
    """The Invoke request, SigV4-signed now; Gureum accepts it for 15 minutes."""
    host = f"127.0.0.1:{port}"
    aws_request = AWSRequest(method="POST", url=f"http://{host}{INVOKE_PATH}", data=EVENT)
    SigV4Auth(Credentials(access_key_id, secret), "lambda", REGION).add_auth(aws_request)
    headers = {
        "Host": host,
        "X-Amz-Date": aws_request.headers["X-Amz-Date"],
        "Authorization": aws_request.headers["Authorization"],
    }
    return HttpRequest("127.0.0.1", port, "POST", INVOKE_PATH, headers, EVENT)


def check_target(request: HttpRequest, name: str) -> None:
    status, body = http_call(
        request.host, request.port, request.method, request.path, dict(request.headers), EVENT
    )
    if status != 200 or json.loads(body) != EXPECTED:
        raise RuntimeError(f"{name} answered {status} {body[:300]!r}")


# ---- measuring -------------------------------------------------------------------------------


def measure(
    server: Server,
    request: HttpRequest,
    generate: LoadGenerator,
    connections: int,
    duration_s: float,
    round_index: int,
) -> Run:
    own_before, children_before = tree_cpu(server.pid)
    busy_before, loadgen_before = busy_cpu_s(), own_and_waited_cpu_s()
    load = generate(request, connections, duration_s)
    busy_after, loadgen_after = busy_cpu_s(), own_and_waited_cpu_s()
    own_after, children_after = tree_cpu(server.pid)
    children = sum(t - children_before.get(pid, 0.0) for pid, t in children_after.items())
    if load.requests == 0 or load.errors > load.requests // 100:
        raise RuntimeError(f"{server.name}: {load.errors} errors in {load.requests} requests")
    server_cpu = own_after - own_before
    loadgen = loadgen_after - loadgen_before
    foreign = max(0.0, busy_after - busy_before - server_cpu - children - loadgen)
    return Run(server.name, round_index, load, server_cpu, children, loadgen, foreign)


# ---- profiling -------------------------------------------------------------------------------


def profile_gureum(
    server: Server,
    request: HttpRequest,
    generate: LoadGenerator,
    connections: int,
    duration_s: float,
    profiler: str,
    out_dir: Path,
    cprofile_path: Path | None,
) -> str:
    """Load Gureum once more while a profiler watches; return the summary text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if profiler == "py-spy":
        raw = out_dir / f"gureum-c{connections}.pyspy.txt"
        # --gil: only samples that hold the GIL, so threads and instances waiting on a socket
        # or a queue are left out (py-spy's own idle detection does not see them as idle)
        argv = ["py-spy", "record", "--pid", str(server.pid), "--subprocesses", "--gil"]
        argv += ["--rate", "200", "--format", "raw", "--output", str(raw)]
        argv += ["--duration", str(max(1, round(duration_s)))]
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # attach before the load starts; the load outlasts the recording
        load = generate(request, connections, duration_s + 1.5)
        _, stderr = spy.communicate(timeout=60)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed: {stderr.decode(errors='replace')}")
        summary = format_pyspy(parse_pyspy_raw(raw.read_text(), server.pid))
        where = f"raw stacks: {raw}"
    else:
        assert cprofile_path is not None, "the launcher was started without --cprofile"
        server.process.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        load = generate(request, connections, duration_s)
        cprofile_path.unlink(missing_ok=True)
        server.process.send_signal(signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not cprofile_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the launcher renames the finished file into place
        summary = format_cprofile(cprofile_path)
        where = f"stats: {cprofile_path} (python3 -m pstats {cprofile_path})"
    head = (
        f"profile of gureum under {profiler} at c={connections}: "
        f"{load.rps:,.0f} req/s while profiled; {where}"
    )
    return f"{head}\n{summary}"


# ---- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def servers(
    data_dir: Path, credentials: tuple[str, str], cprofile: Path | None
) -> Iterator[tuple[Server, Server]]:
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": credentials[0],
        "GUREUM_ROOT_SECRET_ACCESS_KEY": credentials[1],
    }
    started: list[Server] = []
    try:
        gureum_args = ["--data-dir", str(data_dir)]
        if cprofile is not None:
            gureum_args += ["--cprofile", str(cprofile)]
        started.append(start_server("gureum", gureum_args, env, "/healthz"))
        started.append(start_server("baseline", [], env, "/healthz"))
        yield started[0], started[1]
    finally:
        for server in reversed(started):
            server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Warm invoke of a trivial handler: Gureum vs a plain uvicorn ASGI app."
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per target")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the alternating runs; report medians"
    )
    parser.add_argument("--load", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--memory",
        type=int,
        default=128,
        help="the function's MemorySize; its CPU share is MemorySize/1769 of a core, as on "
        "Lambda (128: Lambda's default, 0.07 cores per instance)",
    )
    parser.add_argument("--json", type=Path, help="also write all results as JSON here")
    parser.add_argument(
        "--profile",
        choices=("off", "auto", "py-spy", "cprofile"),
        nargs="?",
        const="auto",
        default="off",
        help="after measuring, profile Gureum under load (py-spy if on PATH, else cProfile)",
    )
    parser.add_argument("--profile-connections", type=int, default=LEVELS[-1])
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args(argv)


def run_rounds(
    gureum: Server,
    baseline: Server,
    request_for: Callable[[Server], HttpRequest],
    generate: LoadGenerator,
    args: argparse.Namespace,
) -> list[Run]:
    """Warm both targets up, then measure each level, alternating targets (ABBA over rounds)."""
    for server in (baseline, gureum):
        check_target(request_for(server), server.name)
        # c=32 first: Gureum starts an instance per concurrent invocation, and none of those
        # cold starts belongs in a measurement
        generate(request_for(server), LEVELS[-1], args.warmup)
        generate(request_for(server), 1, min(args.warmup, 1.0))
    runs: list[Run] = []
    for round_index in range(args.rounds):
        order = (baseline, gureum) if round_index % 2 == 0 else (gureum, baseline)
        for connections in LEVELS:
            for server in order:
                run = measure(
                    server, request_for(server), generate, connections, args.duration, round_index
                )
                runs.append(run)
                print(
                    f"  round {round_index + 1}  {server.name:<8} c={connections:<3}"
                    f"{run.load.rps:>9,.0f} req/s  p50 {run.load.p50_ms:6.3f} ms  "
                    f"p99 {run.load.p99_ms:7.3f} ms  errors {run.load.errors}  "
                    f"load generator {run.loadgen_cpu_s / run.load.duration_s:.2f} cores, "
                    f"other processes {run.foreign_cores:.2f} cores",
                    flush=True,
                )
    return runs


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    profiler = args.profile
    if profiler == "auto":
        profiler = "py-spy" if shutil.which("py-spy") else "cprofile"
    generator_name, generate = pick_generator(args.load)
    command = shlex.join(sys.orig_argv)
    machine = machine_info(generator_name)
    print(f"command: {command}")
    print(
        f"machine: nproc={machine['nproc']} ({machine['cpu_model'] or 'unknown CPU'}), "
        f"{machine['python']}, uvicorn {machine['uvicorn']} "
        f"(loop uvloop {machine['uvloop']}, http httptools {machine['httptools']})"
    )
    print(f"load:    {machine['load_generator']}")
    if generator_name == "python":
        why = "--load python" if args.load == "python" else "wrk not found (apt-get install wrk)"
        print(f"note: {why}: using the in-process Python load generator, which is slower")
        print("      than wrk; compare its numbers with each other, not with wrk runs")
    credentials = new_root_credentials()
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="gureum-bench-") as temp:
        cprofile = None
        if profiler == "cprofile":
            args.out_dir.mkdir(parents=True, exist_ok=True)
            cprofile = (args.out_dir / f"gureum-c{args.profile_connections}.prof").resolve()
        with servers(Path(temp) / "data", credentials, cprofile) as (gureum, baseline):
            deploy(f"http://127.0.0.1:{gureum.port}", *credentials, args.memory)
            print(
                f"function: MemorySize {args.memory} MB, so each instance may use "
                f"{args.memory / 1769:.2f} of a core (cgroup CPU quota per 100 ms, as on Lambda)"
            )

            def request_for(server: Server) -> HttpRequest:
                # Byte-identical for both targets: the baseline gets Gureum's signed request.
                # Signed afresh for every run, so no run outlives the 15-minute window.
                return replace(signed_invoke(gureum.port, *credentials), port=server.port)

            runs = run_rounds(gureum, baseline, request_for, generate, args)
            if profiler != "off":
                profile_text = profile_gureum(
                    gureum,
                    request_for(gureum),
                    generate,
                    args.profile_connections,
                    args.duration,
                    profiler,
                    args.out_dir,
                    cprofile,
                )
    base, gureum_summary = summarise(runs, "baseline"), summarise(runs, "gureum")
    table, ratios = report(base, gureum_summary)
    load_commands = sorted({r.load.command.rsplit(" ", 1)[0] + " <target>" for r in runs})
    print()
    print(
        f"Warm invoke of a trivial handler: medians of {args.rounds} round(s), "
        f"{args.duration:g} s per run"
    )
    print("\n".join(f"  {c}" for c in load_commands))
    print()
    print(table)
    print()
    print(noise_note(runs, args.rounds))
    if profile_text:
        print()
        print(profile_text)
    if args.json is not None:
        document = {
            "benchmark": "invoke",
            "command": command,
            "machine": machine,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "rounds": args.rounds,
                "levels": list(LEVELS),
                "generator": generator_name,
                "load_commands": load_commands,
            },
            "summary": {"baseline": asdict(base), "gureum": asdict(gureum_summary), **ratios},
            "runs": [
                {
                    "target": r.target,
                    "round": r.round,
                    **r.load.to_json(),
                    "server_cpu_s": r.server_cpu_s,
                    "children_cpu_s": r.children_cpu_s,
                    "loadgen_cpu_s": r.loadgen_cpu_s,
                    "foreign_cpu_s": r.foreign_cpu_s,
                }
                for r in runs
            ],
            "profile": profile_text or None,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
