"""Cold starts, burst scale-out and idle memory of sandboxed instances, against bare spawns.

    python3 bench/coldstart.py [--starts 200] [--burst 100] [--json out.json]

Run side by side in one run (root, Linux): a bare `sys.executable -I -S -c pass` spawn,
`bwrap … python -I -S -c pass` where bwrap is installed, the `process` driver, and the
`linux` driver (with a pre-spawned sandbox ready, back-to-back so the pool is empty, and
forked from the version's template). A cold start is timed from the agent's decision to start
an instance (`Instance.spawn`, as the instance pool starts one: the first invocation is sent
while init runs) to the handler's first response. Heavy import: a handler that
imports a large stdlib set (and boto3 where offered), started cold vs forked from its
template. Burst: 0 → N concurrent instances of one function, each answering one invocation,
from nothing (the template is built during the burst) and with the version's template alive.
Memory: unique set size (USS) of an idle warm instance, cold-started and template-forked.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from gureum.control.packages import PackageStore
from gureum.sandbox.base import InstanceSpec, Sandbox
from gureum.sandbox.instance import Instance
from gureum.sandbox.linux import LinuxSandbox, linux_sandbox_cgroups
from gureum.sandbox.process import ProcessSandbox

TRIVIAL = "def handler(event, context):\n    return {'ok': True}\n"
HEAVY = """
import asyncio, concurrent.futures, csv, decimal, email.message, email.parser, http.client
import json, logging.handlers, sqlite3, tarfile, urllib.request, uuid, xml.etree.ElementTree
import zipfile
try:
    import boto3
    CLIENT = boto3.session.Session().client("s3", region_name="us-east-1")
except ImportError:
    pass

def handler(event, context):
    return {'ok': True}
"""


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p99": at(0.99), "n": len(ordered)}


def time_command(argv: list[str], count: int) -> dict[str, float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(argv, check=True)
        samples.append((time.perf_counter() - started) * 1000)
    return percentiles(samples)


def uss_kb(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


async def time_driver(sandbox: Sandbox, spec: InstanceSpec, count: int, pause: float) -> Any:
    samples = []
    for _ in range(count):
        if pause:
            await asyncio.sleep(pause)  # lets the driver refill its pre-spawned sandboxes
        started = time.perf_counter()
        # as the instance pool starts one: the first invoke is queued while init runs
        instance = await Instance.spawn(sandbox, spec)
        outcome = await instance.invoke("bench", b"{}", invoked_arn="arn", timeout_s=5)
        samples.append((time.perf_counter() - started) * 1000)
        assert outcome.status == "success", outcome
        await instance.close()
    return percentiles(samples)


async def time_template(sandbox: Sandbox, spec: InstanceSpec, count: int, pause: float) -> Any:
    """Starts forked from the version's template (built first, by two throw-away starts)."""
    primers = [await Instance.start(sandbox, spec) for _ in range(2)]
    for instance in primers:
        await instance.close()
    return await time_driver(sandbox, spec, count, pause)


async def idle_uss(sandbox: Sandbox, spec: InstanceSpec) -> int:
    instance = await Instance.start(sandbox, spec)
    await instance.invoke("bench", b"{}", invoked_arn="arn", timeout_s=5)
    await asyncio.sleep(0.2)
    try:
        return uss_kb(instance.process.pid)
    finally:
        await instance.close()


async def burst(sandbox: Sandbox, spec: InstanceSpec, count: int) -> dict[str, float]:
    """0 → count concurrent instances, each answering one invocation."""

    async def one() -> Instance:
        instance = await Instance.spawn(sandbox, spec)
        outcome = await instance.invoke("bench", b"{}", invoked_arn="arn", timeout_s=30)
        assert outcome.status == "success", outcome
        return instance

    started = time.perf_counter()
    instances = await asyncio.gather(*(one() for _ in range(count)))
    wall = (time.perf_counter() - started) * 1000
    await asyncio.gather(*(i.close() for i in instances))
    return {"instances": count, "wall_ms": wall}


def make_spec(work: Path, name: str, source: str, memory_mb: int = 128) -> InstanceSpec:
    """A function's instance spec, its code stored as a deployment stores it (extracted and
    byte-compiled by the package store)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("app.py", source)
    code = PackageStore(work / "packages").put(archive.getvalue()).path
    env = {"_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": str(code)}
    return InstanceSpec(name, "$LATEST", code, "app.handler", memory_mb, 5.0, env, network="none")


def versioned(spec: InstanceSpec, revision: str) -> InstanceSpec:
    """The spec named as a version, so that the linux driver may use a template for it."""
    return replace(spec, template_key=f"bench\0{spec.function_name}\0$LATEST\0{revision}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gureum-bench-"))
    spec = make_spec(work, "bench", TRIVIAL)
    heavy = make_spec(work, "heavy", HEAVY, memory_mb=1024)
    results: dict[str, Any] = {
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version()},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    bare = [sys.executable, "-I", "-S", "-c", "pass"]
    results["bare python spawn"] = time_command(bare, args.starts)
    bwrap = shutil.which("bwrap")
    if bwrap:
        results["bwrap + python"] = time_command(
            [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-all", *bare], args.starts
        )
    process = ProcessSandbox([])
    results["process driver"] = await time_driver(process, spec, args.starts, 0.0)
    tree, why = linux_sandbox_cgroups()
    if tree is None:
        results["linux driver"] = f"unavailable: {why}"
    else:
        linux = LinuxSandbox(work / "data", "http://127.0.0.1:9", tree, warm_target=2)
        try:
            await time_driver(linux, spec, 5, 0.05)  # start the zygote, fill the pool
            results["linux driver, sandbox pre-spawned"] = await time_driver(
                linux, spec, args.starts, 0.05
            )
            results["linux driver, back to back"] = await time_driver(
                linux, spec, args.starts // 4, 0.0
            )
            results["linux driver, template-forked"] = await time_template(
                linux, versioned(spec, "t"), args.starts, 0.05
            )
            results["linux idle instance USS kB"] = await idle_uss(linux, spec)
            results["linux idle template-forked USS kB"] = await idle_uss(
                linux, versioned(spec, "t")
            )
            results["heavy import, cold"] = await time_driver(linux, heavy, args.heavy, 0.05)
            results["heavy import, template-forked"] = await time_template(
                linux, versioned(heavy, "t"), args.heavy, 0.05
            )
            results["linux burst, no templates"] = await burst(linux, spec, args.burst)
            results["linux burst, template built during it"] = await burst(
                linux, versioned(spec, "burst"), args.burst
            )
            results["linux burst, template alive"] = await burst(
                linux, versioned(spec, "burst"), args.burst
            )
        finally:
            await linux.close()
    shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=200)
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--heavy", type=int, default=20, help="heavy-import starts per kind")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = asyncio.run(run(args))
    for name, value in results.items():
        if isinstance(value, dict) and "p50" in value:
            print(f"{name:38s} p50 {value['p50']:7.2f} ms   p99 {value['p99']:7.2f} ms")
        else:
            print(f"{name:38s} {value}")
    bare_p50 = results["bare python spawn"]["p50"]
    for name in ("linux driver, sandbox pre-spawned", "linux driver, template-forked"):
        linux = results.get(name)
        if isinstance(linux, dict):
            print(f"{name} / bare spawn (p50): {linux['p50'] / bare_p50:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
