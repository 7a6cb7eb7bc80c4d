"""The durable event journal's contract, which every backend implements.

`AsyncInvoker` (events/async_invoke.py) is the implementation on the metadata store, SQLite or
PostgreSQL alike (one contract test suite runs against both). A journal on another system
(NATS JetStream, say) implements this Protocol; everything else in Gureum — the Lambda and
native APIs, schedules, topics, S3 notifications, destinations — uses only what is here.

Writers that must commit an event together with their own change (a schedule's tick, a topic
publish, an object write and its notification) put `row()` in their own metadata-store
transaction and call `wake()` after it committed: the store's `async_events` table is then the
outbox, from which a journal on another system takes its events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from gureum.events.invoke_configs import InvokeConfigs
from gureum.node.dispatcher import InvocationResult

# (event row, condition, result or None, attempts) -> None; raises when it could not deliver
DestinationSink = Callable[[dict[str, Any], str, InvocationResult | None, int], Awaitable[None]]


class EventJournal(Protocol):
    """Accepts `Event` invocations durably and runs each at least once.

    Contract: `enqueue` returns only after the event is durable (a crash after it returns never
    loses the event); an event runs at least once, also across crashes and restarts, with
    retries (backoff and jitter) up to its attempts, then is kept as `failed` until `redrive`;
    its destination record (`destinations`, set once before `start`) is delivered before the
    event is settled; a repeated `idempotency_key` within the window returns the first
    request's id and runs nothing. `start` once; `close` hands events still running back (they
    run again later) and is safe to call twice.
    """

    configs: InvokeConfigs  # per-function retries, maximum age and destinations
    destinations: DestinationSink | None

    async def start(self, *, sole_owner: bool) -> None:
        """Start running events; `sole_owner`: no other process uses this journal."""

    async def enqueue(
        self,
        account: str,
        name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> str:
        """Accept one event durably; its request id."""
        ...

    def row(
        self,
        account: str,
        name: str,
        qualifier: str | None,
        payload: bytes,
        *,
        max_attempts: int = ...,
        max_age_s: float | None = None,
        idempotency_key: str | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        """A new pending event's `async_events` row, for a caller's own transaction."""
        ...

    def wake(self) -> None:
        """Look for due events now: a caller committed rows of its own."""

    async def list_events(
        self, account: str, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first, without payloads; `retrying` is a pending event that failed before."""
        ...

    async def redrive(self, account: str, request_id: str | None = None) -> int:
        """Send failed events (one, or all of the account's) through again; how many."""
        ...

    async def close(self) -> None:
        """Stop; events still running are handed back. Idempotent."""
