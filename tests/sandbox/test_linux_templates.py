"""Templates of the linux sandbox: later instances of a version are forked from an initialised
one, and each forked instance is still on its own — it cannot see or signal its siblings or
the template, its /tmp is its own, its random state differs, and its limits are its own."""

from __future__ import annotations

import asyncio
import json
import platform
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gureum.sandbox.base import InstanceSpec
from gureum.sandbox.instance import Instance
from gureum.sandbox.linux import LinuxSandbox, linux_sandbox_cgroups, templates_unavailable

TREE, WHY = linux_sandbox_cgroups()
TEMPLATES_OFF = templates_unavailable() if TREE is not None else WHY
pytestmark = pytest.mark.skipif(
    TREE is None or TEMPLATES_OFF is not None or platform.machine() != "x86_64",
    reason=f"needs the linux sandbox with templates on x86_64: {TEMPLATES_OFF}",
)

PROBE = r"""
import ctypes, errno, os, random, signal, subprocess, sys

GENERATOR = random.Random()  # built at import: the template's state, until reseeded
libc = ctypes.CDLL(None, use_errno=True)

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:
        return {"ok": False, "error": type(exc).__name__}

def read(path):
    with open(path, "rb") as handle:
        return len(handle.read())

def handler(event, context):
    action = event["action"]
    if action == "probe":
        before = sorted(os.listdir("/tmp"))
        with open("/tmp/mine", "w") as handle:
            handle.write(event["tag"])
        return {
            "pid": os.getpid(),
            "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
            "tmp_before": before,
            "random": random.getrandbits(64),
            "generator": GENERATOR.getrandbits(64),
            "shell_tmp": subprocess.run(
                ["/bin/sh", "-c", "cat /tmp/mine"], capture_output=True, text=True
            ).stdout,
            "key": os.environ.get("AWS_ACCESS_KEY_ID"),
            "sysv": attempt(lambda: libc.syscall(29, 0, 4096, 0o1600) >= 0 or ctypes.get_errno()),
        }
    if action == "attack":
        out = {}
        for target in event["targets"]:
            out[str(target)] = {
                "signal": attempt(lambda: os.kill(target, 0)),
                "kill": attempt(lambda: os.kill(target, signal.SIGKILL)),
                "environ": attempt(lambda: read(f"/proc/{target}/environ")),
                "mem": attempt(lambda: read(f"/proc/{target}/maps")),
                "tmp": attempt(lambda: os.listdir(f"/proc/{target}/fd/1023")),
            }
        return out
    if action == "stubborn":
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(120)"])
        return child.pid
    if action == "spin":
        while True:
            pass
    if action == "memory":
        hog = bytearray(event["mb"] << 20)
        for i in range(0, len(hog), 4096):
            hog[i] = 1
        return len(hog)
    return "ok"
"""


def with_sandbox(tmp_path: Path, scenario: Callable[[LinuxSandbox], Awaitable[None]]) -> None:
    async def main() -> None:
        assert TREE is not None
        driver = LinuxSandbox(tmp_path / "data", "http://127.0.0.1:9", TREE, warm_target=2)
        try:
            await scenario(driver)
        finally:
            await driver.close()

    asyncio.run(main())


def _spec(tmp_path: Path, key: str = "acct\0probe\0$LATEST\0r1", **env: str) -> InstanceSpec:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(PROBE)
    environment = {"_HANDLER": "app.handler", "AWS_ACCESS_KEY_ID": "AKIA-first", **env}
    return InstanceSpec(
        "probe", "$LATEST", code, "app.handler", 128, 10.0, environment,
        network="none", template_key=key,
    )  # fmt: skip


async def _call(instance: Instance, event: dict[str, Any]) -> Any:
    outcome = await instance.invoke(
        "req", json.dumps(event).encode(), invoked_arn="arn", timeout_s=10
    )
    assert outcome.status in ("success", "error"), outcome
    return json.loads(outcome.payload)


def test_later_instances_are_forked_and_isolated(tmp_path: Path) -> None:
    async def scenario(sandbox: LinuxSandbox) -> None:
        spec = _spec(tmp_path)
        first = await Instance.start(sandbox, spec)
        second = await Instance.start(sandbox, _spec(tmp_path, AWS_ACCESS_KEY_ID="AKIA-second"))
        third = await Instance.start(sandbox, spec)
        try:
            assert [getattr(i.process, "template", None) for i in (first, second, third)] == [
                False,
                True,
                True,
            ]
            a = await _call(second, {"action": "probe", "tag": "second"})
            b = await _call(third, {"action": "probe", "tag": "third"})
            # each sees only itself (and what it starts), not its sibling or the template (PID 1)
            assert a["pid"] != b["pid"]
            assert 1 not in a["procs"] and b["pid"] not in a["procs"] and a["pid"] in a["procs"]
            assert 1 not in b["procs"] and a["pid"] not in b["procs"]
            # /tmp is each one's own, also for the processes it starts
            assert a["tmp_before"] == [] and b["tmp_before"] == []
            assert (a["shell_tmp"], b["shell_tmp"]) == ("second", "third")
            # random state was reseeded after fork, including generators built at import
            assert a["random"] != b["random"] and a["generator"] != b["generator"]
            # per-instance variables are the instance's, not the template's
            assert a["key"] == "AKIA-second"
            assert a["sysv"]["value"] is not True  # System V IPC refused (shared IPC namespace)
            attacks = await _call(second, {"action": "attack", "targets": [b["pid"], 1]})
            for target, results in attacks.items():
                for what, result in results.items():
                    assert not result["ok"], (target, what, result)
            assert await _call(third, {"action": "ok"}) == "ok"  # the sibling was not harmed
        finally:
            for instance in (first, second, third):
                await instance.close()

    with_sandbox(tmp_path, scenario)


def test_forked_instance_has_its_own_memory_limit(tmp_path: Path) -> None:
    async def scenario(sandbox: LinuxSandbox) -> None:
        spec = _spec(tmp_path)
        first = await Instance.start(sandbox, spec)
        forked = await Instance.start(sandbox, spec)
        sibling = await Instance.start(sandbox, spec)
        try:
            assert getattr(forked.process, "template", False)
            outcome = await forked.invoke(
                "req", b'{"action": "memory", "mb": 400}', invoked_arn="arn", timeout_s=10
            )
            assert outcome.status == "crash" and outcome.error_type == "Runtime.OutOfMemory"
            assert await _call(sibling, {"action": "ok"}) == "ok"
        finally:
            for instance in (first, forked, sibling):
                await instance.close()

    with_sandbox(tmp_path, scenario)


def test_changed_spec_retires_the_template(tmp_path: Path) -> None:
    async def scenario(sandbox: LinuxSandbox) -> None:
        spec = _spec(tmp_path)
        instances = [await Instance.start(sandbox, spec) for _ in range(2)]
        assert sandbox.template_count() == 1
        changed = _spec(tmp_path, FEATURE="on")  # same key, new configuration
        instances.append(await Instance.start(sandbox, changed))
        assert sandbox.template_count() == 0  # the old one retired; the new spec starts cold once
        instances.append(await Instance.start(sandbox, changed))
        assert sandbox.template_count() == 1
        sandbox.retire_template(spec.template_key or "")
        assert sandbox.template_count() == 0
        for instance in instances:
            await instance.close()
        for _ in range(100):  # a retired template exits once its instances are gone
            if not sandbox._processes:
                break
            await asyncio.sleep(0.05)
        assert not sandbox._processes

    with_sandbox(tmp_path, scenario)


def test_killing_a_forked_instance_kills_its_tree(tmp_path: Path) -> None:
    async def scenario(sandbox: LinuxSandbox) -> None:
        spec = _spec(tmp_path)
        first = await Instance.start(sandbox, spec)
        forked = await Instance.start(sandbox, spec)
        try:
            assert getattr(forked.process, "template", False)
            await _call(forked, {"action": "stubborn"})
            cgroup = getattr(forked.process, "cgroup")  # noqa: B009 (driver-specific)
            assert len(cgroup.pids()) == 2  # the instance and the child it started
            outcome = await forked.invoke(
                "req", b'{"action": "spin"}', invoked_arn="arn", timeout_s=0.5
            )
            assert outcome.status == "timeout"
            for _ in range(100):
                if not cgroup.pids():
                    break
                await asyncio.sleep(0.05)
            assert not cgroup.pids()
        finally:
            await first.close()
            await forked.close()

    with_sandbox(tmp_path, scenario)


def test_a_version_that_cannot_have_a_template_starts_cold(tmp_path: Path) -> None:
    async def scenario(sandbox: LinuxSandbox) -> None:
        code = tmp_path / "code"
        code.mkdir()
        # a thread left running at import: a fork would lose it, so no template
        (code / "app.py").write_text(
            "import threading, time\n"
            "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
            "def handler(event, context):\n    return 'ok'\n"
        )
        env = {"_HANDLER": "app.handler"}
        spec = InstanceSpec(
            "threads", "$LATEST", code, "app.handler", 128, 10.0, env,
            network="none", template_key="acct\0threads\0$LATEST\0r1",
        )  # fmt: skip
        instances = [await Instance.start(sandbox, spec) for _ in range(3)]
        try:
            assert [getattr(i.process, "template", None) for i in instances] == [False] * 3
            # the template that refused exits on its own; it is gone once its exit is seen
            for _ in range(100):
                if sandbox.template_count() == 0:
                    break
                await asyncio.sleep(0.05)
            assert sandbox.template_count() == 0
            assert len(sandbox._no_template) == 1  # refused once, not retried per start
            for instance in instances:
                assert await _call(instance, {"action": "ok"}) == "ok"
        finally:
            for instance in instances:
                await instance.close()

    with_sandbox(tmp_path, scenario)
