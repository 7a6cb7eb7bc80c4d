"""The shim's peak-memory reading (REPORT's Max Memory Used) is VmHWM, whichever way it gets it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gureum.runtime

RUNTIME_DIR = Path(gureum.runtime.__file__).parent

# Run in a fresh process (exec'd by a parent holding at least PARENT_MB, so its ru_maxrss
# starts out above its own VmHWM), growing in steps, the last past that inherited peak, and
# comparing PeakMemory with VmHWM after each.
PROBE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import bootstrap

def vm_hwm():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])

peak = bootstrap.PeakMemory()
inherited_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
held, steps = [], []
for mb in (0, 40, inherited_mb + 64):  # the last outgrows the image before exec
    held.append(b"x" * (mb << 20))
    rusage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    steps.append({"kb": peak.kb(), "hwm": vm_hwm(), "rusage": rusage})
print(json.dumps(steps))
"""
PARENT_MB = 300


def test_peak_memory_is_vmhwm_before_and_after_outgrowing_the_image_before_exec() -> None:
    ballast = b"x" * (PARENT_MB << 20)  # the parent's peak, which the child inherits in rusage
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(RUNTIME_DIR)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    del ballast
    steps = json.loads(out)

    start, small, large = steps
    # ru_maxrss starts out at the parent's peak, far above the child's own VmHWM ...
    assert start["rusage"] > start["hwm"] + 100 * 1024
    assert small["rusage"] > small["hwm"]
    # ... so the reading comes from the status file there, and is the child's own
    for step in (start, small):
        assert abs(step["kb"] - step["hwm"]) < 4 * 1024
    assert small["kb"] >= start["kb"] + 35 * 1024
    # once the child outgrew the parent's peak, ru_maxrss is VmHWM itself
    assert large["hwm"] > start["rusage"]
    assert large["kb"] == large["rusage"]
    assert abs(large["kb"] - large["hwm"]) < 4 * 1024
