"""A trivial HTTP route through Gureum's API gateway vs a plain uvicorn ASGI app, side by side.

    python3 bench/gateway.py [--duration 10] [--connections 32] [--json out.json] [--profile]

Starts both servers as subprocesses under the same uvicorn settings (bench/servers.py), deploys
bench/trivial_handler.py into Gureum, routes `GET /bench` to it (no auth), warms both up and
then runs wrk against each: `GET /bench` on Gureum (route table → payload-2.0 event → warm
sandboxed instance → response mapping) and the same request on the baseline, which calls the
handler in-process and returns the same body (`{"ok": true}`). A third target, `hop`, is what
any gateway built like Gureum's must spend at least: the same uvicorn, and a payload-2.0 event
sent to a plain, unsandboxed worker process and its result back (bench/servers.py `HopApp`);
nothing of routing, authorization, limits, records, logs or sandboxing. With `--profile`, a last
run against Gureum under py-spy says where the gateway's and the instances' time goes.
Target (issue 4): Gureum >= 0.5x the baseline's requests/s at 32 connections, p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invoke import (
    BENCH_DIR,
    deploy,
    http_call,
    measure,
    new_root_credentials,
    profile_gureum,
    servers,
    start_server,
)
from load import HttpRequest, pick_generator

from gureum.client import Client

ROUTE_PATH = "/bench"
EXPECTED = {"ok": True}


def route_request(port: int) -> HttpRequest:
    return HttpRequest("127.0.0.1", port, "GET", ROUTE_PATH, {"Host": f"127.0.0.1:{port}"}, b"")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--profile", action="store_true", help="then profile Gureum under load with py-spy"
    )
    parser.add_argument("--out-dir", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    if args.profile and not shutil.which("py-spy"):
        parser.error("--profile needs py-spy on PATH (pip install py-spy)")
    profile_text = ""
    generator_name, generate = pick_generator("auto")
    credentials = new_root_credentials()
    rows = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        servers(Path(tmp), credentials, None) as pair,
        contextlib.ExitStack() as stack,
    ):
        gureum, baseline = pair
        hop = start_server("hop", [], dict(os.environ), "/healthz")
        stack.callback(hop.stop)
        endpoint = f"http://127.0.0.1:{gureum.port}"
        deploy(endpoint, *credentials)
        with Client(endpoint, *credentials) as client:
            client.add_route(f"GET {ROUTE_PATH}", "bench-trivial")
        for server in (gureum, baseline, hop):
            status, body = http_call("127.0.0.1", server.port, "GET", ROUTE_PATH, {}, b"")
            if status != 200 or json.loads(body) != EXPECTED:
                raise RuntimeError(f"{server.name} answered {status} {body[:200]!r}")
        for server in (gureum, baseline, hop):  # warm-up: instances for every connection
            generate(route_request(server.port), args.connections, 3.0)
        orders = ((baseline, hop, gureum), (gureum, hop, baseline))
        for round_index, order in enumerate(orders):
            for server in order:
                run = measure(
                    server,
                    route_request(server.port),
                    generate,
                    args.connections,
                    args.duration,
                    round_index,
                )
                rows.append(run)
        if args.profile:
            profile_text = profile_gureum(
                gureum,
                route_request(gureum.port),
                generate,
                args.connections,
                args.duration,
                "py-spy",
                args.out_dir,
                None,
            )
    print(f"load generator: {generator_name}; {args.connections} connections, {args.duration:g} s")
    print(
        f"{'target':10} {'round':>5} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'server CPU us/req':>18}"
    )
    for run in rows:
        load = run.load
        own, children = run.cpu_us_per_request()
        print(
            f"{run.target:10} {run.round:>5} {load.rps:>9.0f} {load.p50_ms:>7.2f} "
            f"{load.p99_ms:>7.2f} {load.errors:>6} {own:>9.0f} + {children:<6.0f}"
        )
    best = {
        name: max((r.load.rps for r in rows if r.target == name), default=0.0)
        for name in ("gureum", "baseline", "hop")
    }
    ratio = best["gureum"] / best["baseline"] if best["baseline"] else 0.0
    floor = best["hop"] / best["baseline"] if best["baseline"] else 0.0
    p99 = min(r.load.p99_ms for r in rows if r.target == "gureum")
    print(f"gureum/baseline throughput: {ratio:.2f}x (target >= 0.5x); gureum p99 {p99:.2f} ms")
    print(f"hop/baseline throughput: {floor:.2f}x (no gateway built like Gureum's goes faster)")
    if profile_text:
        print(profile_text)
    print("wrk command: " + rows[-1].load.command)
    print("command: python3 " + shlex.join(["bench/gateway.py", *(argv or sys.argv[1:])]))
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "runs": [{"target": r.target, **r.load.to_json()} for r in rows],
                    "ratio": ratio,
                    "hop_ratio": floor,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
