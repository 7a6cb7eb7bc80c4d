"""`QueueStore`'s contract, run against every metadata-store backend (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gureum.errors import SQSError
from gureum.events.queue_store import QueueStore
from gureum.events.queues import OutgoingMessage, validate_message
from gureum.store import Database
from gureum.store.schema import queue_messages

ACCOUNT = "123456789012"


async def _store(url: str) -> QueueStore:
    return QueueStore(await Database.open(url), "us-east-1", poll_s=0.05)


async def _close(store: QueueStore) -> None:
    await store.db.close()


def test_concurrent_receivers_never_share_a_message(database_url: str) -> None:
    async def scenario() -> None:
        store = await _store(database_url)
        queue = await store.create_queue(ACCOUNT, "shared", {"VisibilityTimeout": "60"})
        await asyncio.gather(*(store.send(queue, [OutgoingMessage(f"m{i}")]) for i in range(100)))

        async def drain() -> list[str]:
            got: list[str] = []
            while batch := await store.receive(queue, 10):
                got += [m.body for m in batch]
            return got

        results = await asyncio.gather(*(drain() for _ in range(4)))
        every = [body for result in results for body in result]
        assert sorted(every) == sorted(f"m{i}" for i in range(100))
        counts = await store.counts(queue)
        assert counts["ApproximateNumberOfMessagesNotVisible"] == 100
        await _close(store)

    asyncio.run(scenario())


def test_messages_survive_reopen_and_visibility_expiry(database_url: str) -> None:
    async def scenario() -> None:
        store = await _store(database_url)
        queue = await store.create_queue(ACCOUNT, "durable", {"VisibilityTimeout": "1"})
        await store.send(queue, [OutgoingMessage("keep me")])
        [first] = await store.receive(queue)
        await _close(store)
        store = await _store(database_url)
        queue = await store.get_queue(ACCOUNT, "durable")
        [again] = await store.receive(queue, wait_s=3)
        assert again.message_id == first.message_id and again.receive_count == 2
        await store.delete(queue, [first.receipt_handle])  # stale: no-op
        await store.delete(queue, [again.receipt_handle])
        assert (await store.counts(queue))["ApproximateNumberOfMessagesNotVisible"] == 0
        with pytest.raises(SQSError):
            await store.change_visibility(queue, again.receipt_handle, 0)
        await _close(store)

    asyncio.run(scenario())


def test_fifo_dedup_groups_and_redrive(database_url: str) -> None:
    async def scenario() -> None:
        store = await _store(database_url)
        dead = await store.create_queue(ACCOUNT, "dead.fifo", {})
        policy = json.dumps({"deadLetterTargetArn": dead.arn("us-east-1"), "maxReceiveCount": 1})
        queue = await store.create_queue(
            ACCOUNT, "work.fifo", {"RedrivePolicy": policy, "VisibilityTimeout": "0"}
        )
        send = {"MessageGroupId": "g", "MessageDeduplicationId": "d1", "MessageBody": "one"}
        [a] = await store.send(queue, [validate_message(queue, send)])
        [b] = await store.send(queue, [validate_message(queue, send)])
        assert a.message_id == b.message_id
        send2 = {**send, "MessageDeduplicationId": "d2", "MessageBody": "two"}
        await store.send(queue, [validate_message(queue, send2)])
        got = await store.receive(queue, 10, visibility_timeout=30)
        assert [m.body for m in got] == ["one", "two"]
        await store.change_visibility(queue, got[0].receipt_handle, 0)
        await store.change_visibility(queue, got[1].receipt_handle, 0)
        # received once already: both move to the dead-letter queue on the next receive
        assert await store.receive(queue, 10) == []
        moved = await store.receive(dead, 10)
        assert [m.body for m in moved] == ["one", "two"]
        assert moved[0].dead_letter_source == queue.arn("us-east-1")
        await store.delete_queue(queue)
        with pytest.raises(SQSError):
            await store.get_queue(ACCOUNT, "work.fifo")
        await _close(store)

    asyncio.run(scenario())


def test_messages_past_their_retention_period_are_never_received(database_url: str) -> None:
    async def scenario() -> None:
        store = await _store(database_url)
        queue = await store.create_queue(ACCOUNT, "brief", {"MessageRetentionPeriod": "60"})
        await store.send(queue, [OutgoingMessage("stale"), OutgoingMessage("fresh")])
        async with store.db.engine.begin() as conn:  # sent 61 s ago, rather than wait
            await conn.execute(
                queue_messages.update()
                .where(queue_messages.c.body == "stale")
                .values(sent_at=time.time() - 61)
            )
        got = await store.receive(queue, 10)
        assert [m.body for m in got] == ["fresh"]
        await store.delete(queue, [got[0].receipt_handle])
        assert await store.receive(queue, 10) == []
        counts = await store.counts(queue)  # the expired one is gone, not waiting
        assert sum(counts.values()) == 0, counts
        await _close(store)

    asyncio.run(scenario())
