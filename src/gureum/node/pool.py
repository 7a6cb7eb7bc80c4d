"""`InstancePool`: warm instances per function version, with admission control.

Admission is per function: at most `limit` invocations run at once (reserved concurrency or
the node default); up to `queue_depth` more wait up to `queue_wait_s`; beyond that, or after
waiting, the caller is throttled (TooManyRequests). The node as a whole holds at most
`max_instances` instances; to start a new one at capacity, the least recently used idle
instance of any function is reaped. Idle instances are reaped after `keep_alive_s` (scale to
zero) except the `min_instances` each version keeps warm.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from gureum.errors import TooManyRequests
from gureum.sandbox.base import InstanceSpec, Sandbox
from gureum.sandbox.instance import Instance

log = logging.getLogger(__name__)

FunctionKey = tuple[str, str]  # (account, function name)
VersionKey = tuple[str, str, str, str]  # (account, function name, version, revision id)
MAX_INSTANCE_AGE_S = 2 * 3600.0  # recycle long-lived instances (fresh credentials, no leaks)


def _template_key(key: VersionKey) -> str:
    return "\0".join(key)


def _named(spec: InstanceSpec, key: VersionKey) -> InstanceSpec:
    """Name the version, so that the driver may fork its later instances from a template."""
    return dataclasses.replace(spec, template_key=_template_key(key))


@dataclass
class _VersionPool:
    key: VersionKey
    min_instances: int = 0
    idle: list[Instance] = field(default_factory=list)
    stale: bool = False  # a newer revision exists: finish running work, keep nothing


@dataclass
class _FunctionSlots:
    in_flight: int = 0
    waiting: int = 0


class Lease(NamedTuple):
    """An instance handed to one invocation. Give it back with `InstancePool.release()`."""

    instance: Instance
    version_key: VersionKey
    cold: bool
    queue_ms: float


class InstancePool:
    """All instances on this node. Start with `start()`, stop with `close()` (idempotent)."""

    def __init__(
        self,
        sandbox: Sandbox,
        *,
        max_instances: int,
        queue_depth: int,
        queue_wait_s: float,
        keep_alive_s: float,
    ) -> None:
        self.sandbox = sandbox
        self.max_instances = max_instances
        self.queue_depth = queue_depth
        self.queue_wait_s = queue_wait_s
        self.keep_alive_s = keep_alive_s
        self._versions: dict[VersionKey, _VersionPool] = {}
        self._slots: dict[FunctionKey, _FunctionSlots] = {}
        self._instances = 0  # started or starting, node-wide
        self._freed = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()

    @property
    def instance_count(self) -> int:
        return self._instances

    def stats(self) -> dict[str, dict[str, int]]:
        """Idle and in-flight counts per function, for `/v1` and metrics."""
        out: dict[str, dict[str, int]] = {}
        for (account, name), slots in self._slots.items():
            idle = sum(len(p.idle) for k, p in self._versions.items() if k[:2] == (account, name))
            out[f"{account}/{name}"] = {
                "in_flight": slots.in_flight,
                "waiting": slots.waiting,
                "idle": idle,
            }
        return out

    def start(self, reap_interval_s: float = 1.0) -> None:
        self._reaper = asyncio.create_task(self._reap_forever(reap_interval_s))

    async def acquire(
        self,
        version_key: VersionKey,
        limit: int,
        make_spec: Callable[[], InstanceSpec],
        min_instances: int = 0,
    ) -> Lease:
        """Admit one invocation and hand it a warm or newly started instance.

        Raises TooManyRequests when the function is at `limit` and the wait queue is full or
        the wait ran out; raises SandboxError when a new instance fails to start. A new
        instance is handed over still initialising: its first `invoke()` raises InitFailed if
        the init fails.
        """
        function_key = version_key[:2]
        slots = self._slots.setdefault(function_key, _FunctionSlots())
        pool = self._versions.get(version_key)
        if pool is None:
            pool = self._versions[version_key] = _VersionPool(version_key, min_instances)
        pool.min_instances = min_instances
        started = time.perf_counter()
        if limit <= 0:
            raise TooManyRequests(
                "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded"
            )
        if slots.in_flight >= limit:
            await self._wait_for_slot(slots, limit)
        slots.in_flight += 1
        queue_ms = (time.perf_counter() - started) * 1000
        try:
            while pool.idle:
                instance = pool.idle.pop()
                if instance.alive:
                    return Lease(instance, version_key, False, queue_ms)
                self._instances -= 1
            await self._make_room()
            self._instances += 1
            try:
                # its init finishes under the lease's first invoke (InitFailed comes from there)
                instance = await Instance.spawn(self.sandbox, _named(make_spec(), version_key))
            except BaseException:
                self._instances -= 1
                raise
            return Lease(instance, version_key, True, queue_ms)
        except BaseException:
            slots.in_flight -= 1
            await self._notify(slots)
            raise

    async def _wait_for_slot(self, slots: _FunctionSlots, limit: int) -> None:
        if slots.waiting >= self.queue_depth:
            raise TooManyRequests(
                "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded"
            )
        slots.waiting += 1
        deadline = time.monotonic() + self.queue_wait_s
        try:
            async with self._freed:
                while slots.in_flight >= limit:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TooManyRequests(
                            "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded"
                        )
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._freed.wait(), remaining)
        finally:
            slots.waiting -= 1

    async def _make_room(self) -> None:
        """At node capacity, reap the least recently used idle instance, or throttle.
        The driver's templates count against capacity like instances."""
        if self._instances + self.sandbox.template_count() < self.max_instances:
            return
        victims = [(i.last_used, p, i) for p in self._versions.values() for i in p.idle]
        if not victims:
            raise TooManyRequests("Rate Exceeded.", "ConcurrentInvocationLimitExceeded")
        _, pool, instance = min(victims, key=lambda v: v[0])
        pool.idle.remove(instance)
        self._instances -= 1
        self._spawn_background(instance.close())

    async def release(self, lease: Lease) -> None:
        """Return an instance after its invocation; dead or stale instances are closed."""
        slots = self._slots[lease.version_key[:2]]
        slots.in_flight -= 1
        pool = self._versions.get(lease.version_key)
        instance = lease.instance
        too_old = time.monotonic() - instance.started_at > MAX_INSTANCE_AGE_S
        keep = pool is not None and not pool.stale and not self._closed and not too_old
        if instance.alive and keep and pool is not None:
            pool.idle.append(instance)
        else:
            self._instances -= 1
            if instance.alive:
                self._spawn_background(instance.close())
        await self._notify(slots)

    async def _notify(self, slots: _FunctionSlots) -> None:
        """Wake the invocations waiting for a slot of this function, if there are any."""
        if slots.waiting:
            async with self._freed:
                self._freed.notify_all()

    def retire(self, account: str, name: str, current: Callable[[VersionKey], bool]) -> None:
        """Drop the pools of `account/name` whose version is no longer `current` (a newer
        $LATEST revision, a deleted version, or a deleted function): idle instances are
        closed now, busy ones when they are released."""
        gone = True
        for key, pool in list(self._versions.items()):
            if key[:2] != (account, name):
                continue
            if current(key):
                gone = False
                continue
            pool.stale = True
            self.sandbox.retire_template(_template_key(key))
            for instance in pool.idle:
                self._instances -= 1
                self._spawn_background(instance.close())
            pool.idle.clear()
            del self._versions[key]
        if gone:
            slots = self._slots.get((account, name))
            if slots is not None and slots.in_flight == 0 and slots.waiting == 0:
                del self._slots[(account, name)]

    async def prewarm(
        self, version_key: VersionKey, count: int, make_spec: Callable[[], InstanceSpec]
    ) -> None:
        """Start instances until the version has `count` idle ones (min_instances)."""
        pool = self._versions.setdefault(version_key, _VersionPool(version_key, count))
        pool.min_instances = count
        while len(pool.idle) < count and self._instances < self.max_instances and not pool.stale:
            self._instances += 1
            try:
                instance = await Instance.start(self.sandbox, _named(make_spec(), version_key))
            except BaseException as exc:
                self._instances -= 1
                if not isinstance(exc, Exception):
                    raise
                log.warning("could not pre-warm %s: %s", "/".join(version_key[:3]), exc)
                return
            if pool.stale or self._closed or self._versions.get(version_key) is not pool:
                # retired or shut down while it started: nobody would ever close it
                self._instances -= 1
                await instance.close()
                return
            pool.idle.append(instance)

    async def reap(self) -> int:
        """Close instances idle past keep-alive (keeping min_instances); return how many."""
        now = time.monotonic()
        reaped = 0
        for pool in list(self._versions.values()):
            keep = pool.min_instances
            # idle is LIFO: the front holds the longest-idle instances
            survivors = []
            for index, instance in enumerate(pool.idle):
                expired = now - instance.last_used > self.keep_alive_s
                old = now - instance.started_at > MAX_INSTANCE_AGE_S
                if instance.alive and not old and (not expired or len(pool.idle) - index <= keep):
                    survivors.append(instance)
                    continue
                self._instances -= 1
                reaped += 1
                self._spawn_background(instance.close())
            pool.idle = survivors
        return reaped

    async def _reap_forever(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap()
            except Exception:  # the reaper must outlive any one bad instance
                log.exception("instance reaper failed")

    def _spawn_background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Stop reaping and kill every idle instance; leased ones are closed on release."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        instances = [i for p in self._versions.values() for i in p.idle]
        for pool in self._versions.values():
            pool.idle.clear()
        await asyncio.gather(*(i.close() for i in instances), return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
