"""Rootless mode of the linux sandbox: run as an unprivileged user, the driver builds each
instance in a user namespace, and says exactly which protections it lacks (no cgroups here)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534
SETPRIV = shutil.which("setpriv")
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None or not sys.platform.startswith("linux"),
    reason="needs root and setpriv to become an unprivileged user for the test",
)

HANDLER = r"""
import json, os, socket

def attempt(fn):
    try:
        return {"ok": True, "value": fn()}
    except BaseException as exc:
        return {"ok": False, "error": type(exc).__name__}

def write(path):
    with open(path, "w") as handle:
        handle.write("x")

def handler(event, context):
    caps = [line for line in open("/proc/self/status") if line.startswith("CapEff")][0]
    return {
        "uid": os.getuid(),
        "caps": caps.split()[1],
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "shadow": attempt(lambda: open("/etc/shadow").read()),
        "write_task": attempt(lambda: write("/var/task/evil")),
        "write_tmp": attempt(lambda: write("/tmp/fine")),
        "inet": attempt(lambda: socket.socket(socket.AF_INET).close()),
        "data_dir": attempt(lambda: os.listdir(event["data_dir"])),
    }
"""

DRIVER = r"""
import asyncio, json, os, sys
from pathlib import Path
from gureum.sandbox.base import InstanceSpec
from gureum.sandbox.instance import Instance
from gureum.sandbox.linux import LinuxSandbox, linux_sandbox_support

async def main(work):
    support = linux_sandbox_support()
    if not support.usable:
        print(json.dumps({"unusable": support.why}))
        return
    sandbox = LinuxSandbox(work / "data", "http://127.0.0.1:9", support.cgroups,
                           rootless=support.rootless)
    env = {"_HANDLER": "app.handler"}
    spec = InstanceSpec("rootless", "$LATEST", work / "code", "app.handler", 128, 10.0, env,
                        network="none")
    try:
        instance = await Instance.start(sandbox, spec)
        event = json.dumps({"data_dir": str(work / "data")}).encode()
        outcome = await instance.invoke("r", event, invoked_arn="arn", timeout_s=10)
        await instance.close()
    finally:
        await sandbox.close()
    print(json.dumps({
        "support": [support.rootless, support.cgroups is not None, support.why],
        "checks": [[c.name, c.ok, c.detail] for c in sandbox.checks()],
        "status": outcome.status,
        "result": json.loads(outcome.payload),
    }))

asyncio.run(main(Path(sys.argv[1])))
"""


@pytest.fixture
def work() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gureum-rootless-"))
    (path / "code").mkdir()
    (path / "code" / "app.py").write_text(HANDLER)
    (path / "driver.py").write_text(DRIVER)
    for item in (path, path / "code", path / "code" / "app.py", path / "driver.py"):
        os.chown(item, NOBODY, NOBODY)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _interpreter_for_nobody() -> str | None:
    """This Python's version, at a path the unprivileged user may execute (a virtualenv's
    interpreter often lives under root's home)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (os.path.realpath(sys.executable), f"/usr/bin/python{version}"):
        path = Path(candidate)
        if path.exists() and all(p.stat().st_mode & 0o001 for p in [path, *path.parents]):
            return candidate
    return None


def test_rootless_instance_is_confined_and_says_what_is_missing(work: Path) -> None:
    assert SETPRIV is not None
    python = _interpreter_for_nobody()
    if python is None:
        pytest.skip("no Python of this version that an unprivileged user may execute")
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    source = str(Path(__file__).resolve().parents[2] / "src")
    argv = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    argv += [python, str(work / "driver.py"), str(work)]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.pathsep.join([source, *site_packages])}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=work)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if "unusable" in report:
        pytest.skip(f"unprivileged user namespaces are not available here: {report['unusable']}")
    rootless, has_cgroups, _ = report["support"]
    assert rootless
    assert report["status"] == "success", report
    result = report["result"]
    assert result["uid"] == 1000 and int(result["caps"], 16) == 0
    assert result["procs"] == [1]  # its own PID namespace
    for refused in ("shadow", "write_task", "inet", "data_dir"):
        assert not result[refused]["ok"], (refused, result[refused])
    assert result["write_tmp"]["ok"]
    checks = {name: (ok, detail) for name, ok, detail in report["checks"]}
    assert checks["unprivileged user"][0] and "rootless" in checks["unprivileged user"][1]
    if not has_cgroups:  # never pretend: what is missing is named
        assert checks["memory limit (cgroup)"][0] is False
        assert checks["pids and CPU limits"][0] is False
    assert "off" in checks["templates (SnapStart by fork)"][1]
