"""`PackageSweeper`: deletes code packages no function or version names any more.

Updating a function's code stores a new package; deleting a function or a version stops naming
one. A package is deleted once no function or version of any account names it and it was not
stored or put again for `grace_s` — far longer than a deployment takes between storing the
package and naming it in the registry, and than an instance of retired code keeps running
(instances of changed or deleted code are retired at once). A put of stored bytes marks the
package as used under the store's lock, so a sweep never takes a package from under a
deployment that is about to name it. It runs shortly after start-up and then every
`interval_s`, in the background.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gureum.control.packages import PackageStore
from gureum.control.registry import Registry
from gureum.periodic import Periodic

log = logging.getLogger(__name__)
GRACE_S = 3600.0
INTERVAL_S = 3600.0
FIRST_DELAY_S = 60.0  # let start-up finish first


class PackageSweeper:
    """See the module docstring. `start()` once on the serving loop; `close()` is idempotent."""

    def __init__(
        self,
        packages: PackageStore,
        registry: Registry,
        *,
        grace_s: float = GRACE_S,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.packages = packages
        self.registry = registry
        self.grace_s = grace_s
        self.interval_s = interval_s
        self._periodic = Periodic(
            "code package sweep", self._sweep_and_log, interval_s, FIRST_DELAY_S
        )

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    async def _sweep_and_log(self) -> None:
        deleted = await self.sweep()
        if deleted:
            log.info("code package sweep: %d unused packages deleted", deleted)

    async def sweep(self, now: float | None = None) -> int:
        """One sweep; how many packages it deleted. Safe while functions are deployed."""
        cutoff = (time.time() if now is None else now) - self.grace_s
        # candidates first: a package stored or put again after this listing is not one
        candidates = await asyncio.to_thread(self.packages.unused_since, cutoff)
        if not candidates:
            return 0
        named = await self.registry.referenced_packages()
        deleted = 0
        for digest in candidates:
            if digest not in named and await asyncio.to_thread(
                self.packages.delete_unless_used_since, digest, cutoff
            ):
                deleted += 1
        return deleted
