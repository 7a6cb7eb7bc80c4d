"""`Periodic`: one coroutine run in the background now and then, for housekeeping (sweeps)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs `work` after `first_delay_s`, then every `interval_s`, on the loop `start()` is
    called on. A failure is logged with `what` and the next run comes as planned. `start()`
    twice is a no-op; `close()` cancels a run in progress and is idempotent."""

    def __init__(
        self,
        what: str,
        work: Callable[[], Awaitable[None]],
        interval_s: float,
        first_delay_s: float = 0.0,
    ) -> None:
        self.what = what
        self.work = work
        self.interval_s = interval_s
        self.first_delay_s = first_delay_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self.first_delay_s)
        while True:
            try:
                await self.work()
            except Exception:
                log.exception("%s failed; trying again later", self.what)
            await asyncio.sleep(self.interval_s)
