"""`Sweeper`: removes what crashes and abandoned uploads leave behind, off the request path.

A blob is committed before the metadata names it and deleted only after the metadata stopped
naming it (see `gureum.storage.objects`), so a crash between the two leaves an orphan blob —
never a missing one. The sweeper deletes blobs that no object or part names and that have not
changed for `grace_s` (far longer than any write takes between committing a blob and naming
it), discards unfinished writes idle as long, and aborts multipart uploads initiated more than
`upload_ttl_s` ago (S3 keeps them until a lifecycle rule aborts them; here a default rule of a
week applies). It runs once at start-up and then every `interval_s`, in the background.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gureum.errors import S3Error
from gureum.periodic import Periodic
from gureum.storage.base import BlobStore
from gureum.storage.catalog import ObjectCatalog

log = logging.getLogger(__name__)
GRACE_S = 3600.0
UPLOAD_TTL_S = 7 * 24 * 3600.0
INTERVAL_S = 3600.0


@dataclass(frozen=True)
class Swept:
    """What one sweep removed."""

    blobs: int
    uploads: int


class Sweeper:
    """See the module docstring. `start()` once on the serving loop; `close()` is idempotent."""

    def __init__(
        self,
        catalog: ObjectCatalog,
        blobs: BlobStore,
        *,
        grace_s: float = GRACE_S,
        upload_ttl_s: float = UPLOAD_TTL_S,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.catalog = catalog
        self.blobs = blobs
        self.grace_s = grace_s
        self.upload_ttl_s = upload_ttl_s
        self.interval_s = interval_s
        self._periodic = Periodic("object store sweep", self._sweep_and_log, interval_s)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    async def _sweep_and_log(self) -> None:
        swept = await self.sweep()
        if swept.blobs or swept.uploads:
            log.info(
                "object store sweep: %d orphaned blobs removed, %d stale multipart uploads aborted",
                swept.blobs,
                swept.uploads,
            )

    async def sweep(self, now: float | None = None) -> Swept:
        """One sweep (see the module docstring); safe to run while requests are served."""
        now = time.time() if now is None else now
        aborted = 0
        for upload in await self.catalog.uploads_before(now - self.upload_ttl_s):
            try:
                freed = await self.catalog.finish_upload(upload.upload_id, None)
            except S3Error:
                continue  # completed or aborted meanwhile
            for blob in freed:
                await self.blobs.delete(blob)
            aborted += 1
        # candidates first: a blob named after this listing is new, so not a candidate
        candidates = await self.blobs.unchanged_since(now - self.grace_s)
        if not candidates:
            return Swept(0, aborted)
        referenced = await self.catalog.referenced_blobs()
        orphans = [blob for blob in candidates if blob not in referenced]
        for blob in orphans:
            await self.blobs.delete(blob)
        return Swept(len(orphans), aborted)
