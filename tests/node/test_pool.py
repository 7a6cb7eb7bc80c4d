"""InstancePool: warm reuse, per-function limits, bounded waiting, keep-alive, min instances."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gureum.errors import TooManyRequests
from gureum.node.pool import InstancePool, Lease, VersionKey
from gureum.sandbox.base import InstanceSpec
from gureum.sandbox.process import ProcessSandbox

HANDLER = """
import time
def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"ok": True}
"""


def _spec_factory(tmp_path: Path) -> Callable[[], InstanceSpec]:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "app.py").write_text(HANDLER)
    env = {"_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": str(code)}
    return lambda: InstanceSpec("f", "$LATEST", code, "app.handler", 128, 5.0, env)


def _pool(**overrides: float) -> InstancePool:
    options: dict[str, float] = {
        "max_instances": 8,
        "queue_depth": 4,
        "queue_wait_s": 2.0,
        "keep_alive_s": 60.0,
    }
    options.update(overrides)
    return InstancePool(
        ProcessSandbox([]),
        max_instances=int(options["max_instances"]),
        queue_depth=int(options["queue_depth"]),
        queue_wait_s=options["queue_wait_s"],
        keep_alive_s=options["keep_alive_s"],
    )


KEY: VersionKey = ("123456789012", "f", "$LATEST", "rev1")


async def _run(pool: InstancePool, lease: Lease, sleep: float = 0.0) -> None:
    try:
        outcome = await lease.instance.invoke(
            "r", b'{"sleep": %f}' % sleep, invoked_arn="arn", timeout_s=5
        )
        assert outcome.status == "success"
    finally:
        await pool.release(lease)


def test_warm_reuse_and_limits(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = _pool()
        spec = _spec_factory(tmp_path)
        first = await pool.acquire(KEY, 2, spec)
        assert first.cold
        pid = first.instance.process.pid
        await _run(pool, first)
        second = await pool.acquire(KEY, 2, spec)
        assert not second.cold and second.instance.process.pid == pid
        await _run(pool, second)

        # at the limit of 2, a third caller waits for a release instead of a new instance
        a = await pool.acquire(KEY, 2, spec)
        b = await pool.acquire(KEY, 2, spec)
        waiter = asyncio.create_task(pool.acquire(KEY, 2, spec))
        await asyncio.sleep(0.1)
        assert not waiter.done()
        await pool.release(a)
        c = await asyncio.wait_for(waiter, 2)
        assert not c.cold and c.queue_ms >= 50
        await pool.release(b)
        await pool.release(c)
        assert pool.instance_count == 2
        await pool.close()

    asyncio.run(scenario())


def test_throttles_when_queue_is_full_or_wait_runs_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = _pool(queue_depth=1, queue_wait_s=0.3)
        spec = _spec_factory(tmp_path)
        held = await pool.acquire(KEY, 1, spec)
        waiting = asyncio.create_task(pool.acquire(KEY, 1, spec))
        await asyncio.sleep(0.05)
        with pytest.raises(TooManyRequests):  # queue of one is taken
            await pool.acquire(KEY, 1, spec)
        started = time.monotonic()
        with pytest.raises(TooManyRequests):  # the waiter gives up after queue_wait_s
            await waiting
        assert 0.2 < time.monotonic() - started < 1.0
        with pytest.raises(TooManyRequests):
            await pool.acquire(KEY, 0, spec)  # reserved concurrency 0 = always throttled
        await pool.release(held)
        await pool.close()

    asyncio.run(scenario())


def test_node_capacity_evicts_least_recently_used_idle(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = _pool(max_instances=1)
        spec = _spec_factory(tmp_path)
        other: VersionKey = ("123456789012", "g", "$LATEST", "rev1")
        lease = await pool.acquire(KEY, 5, spec)
        old_pid = lease.instance.process.pid
        await pool.release(lease)
        lease = await pool.acquire(other, 5, spec)  # evicts f's idle instance
        assert lease.cold and pool.instance_count == 1
        with pytest.raises(TooManyRequests):  # nothing idle to evict
            await pool.acquire(KEY, 5, spec)
        await pool.release(lease)
        await pool.close()
        await asyncio.sleep(0.2)
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)

    asyncio.run(scenario())


def test_keep_alive_reaps_to_zero_but_keeps_min_instances(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = _pool(keep_alive_s=1.0)
        spec = _spec_factory(tmp_path)
        leases = [await pool.acquire(KEY, 5, spec) for _ in range(3)]
        pids = [lease.instance.process.pid for lease in leases]
        for lease in leases:
            await pool.release(lease)
        assert await pool.reap() == 0  # still warm
        await asyncio.sleep(1.2)
        assert await pool.reap() == 3
        assert pool.instance_count == 0
        await asyncio.sleep(0.2)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

        kept: VersionKey = ("123456789012", "k", "1", "rev1")
        await pool.prewarm(kept, 2, spec)
        assert pool.instance_count == 2
        await asyncio.sleep(1.2)
        assert await pool.reap() == 0  # min_instances survive keep-alive
        lease = await pool.acquire(kept, 5, spec, min_instances=2)
        assert not lease.cold
        await pool.release(lease)
        await pool.close()

    asyncio.run(scenario())


def test_retire_drops_stale_revisions(tmp_path: Path) -> None:
    async def scenario() -> None:
        pool = _pool()
        spec = _spec_factory(tmp_path)
        lease = await pool.acquire(KEY, 5, spec)
        busy = await pool.acquire(KEY, 5, spec)
        await pool.release(lease)
        pool.retire(KEY[0], KEY[1], lambda key: key[3] == "rev2")
        await pool.release(busy)  # released into a stale pool: closed off the request path
        await asyncio.sleep(0.1)
        assert not busy.instance.alive
        fresh = await pool.acquire((*KEY[:3], "rev2"), 5, spec)
        assert fresh.cold and pool.instance_count == 1
        await pool.release(fresh)
        await pool.close()

    asyncio.run(scenario())
