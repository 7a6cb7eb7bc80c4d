"""Invocation records: the log text, batching, durability on close, queries, every backend; and
SQLite's record writer process: batches land once, a dead child is replaced, a batch it cannot
write says why and the child goes on, close ends it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from gureum.node import record_writer, records
from gureum.node.record_writer import RecordWriter, RecordWriterError
from gureum.node.records import (
    InvocationLog,
    InvocationRecord,
    InvocationRecorder,
    new_request_id,
)
from gureum.store import Database
from gureum.store.database import SQLITE_PRAGMAS

ACCOUNT = "123456789012"


def _log(request_id: str = "req-1", **changes: object) -> InvocationLog:
    fields: dict[str, object] = {
        "run_ms": 1.234,
        "billed_ms": 2,
        "memory_mb": 128,
        "max_memory_mb": 20,
        "init_ms": 0.0,
        "cold": False,
        **changes,
    }
    init_log = fields.pop("init_log", b"")
    output = fields.pop("output", b"hello\n")
    assert isinstance(init_log, bytes) and isinstance(output, bytes)
    return InvocationLog(request_id, "$LATEST", init_log, output, **fields)  # type: ignore[arg-type]


def _record(
    request_id: str, log: InvocationLog | None = None, **changes: object
) -> InvocationRecord:
    record = InvocationRecord(
        request_id=request_id,
        account_id=ACCOUNT,
        function_name="f",
        version="$LATEST",
        trigger="sync",
        started_at=time.time(),
        ended_at=time.time(),
        queue_ms=0.5,
        init_ms=0.0,
        run_ms=1.234,
        billed_ms=2,
        memory_mb=128,
        max_memory_mb=20,
        gb_seconds=2 / 1000 * 128 / 1024,
        cold=False,
        status="success",
        error_type=None,
        log=log or _log(request_id),
    )
    return record._replace(**changes)


def test_request_ids_are_time_ordered_uuids() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(2000)]
    after_ms = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for request_id in ids:
        parsed = uuid.UUID(request_id)
        assert str(parsed) == request_id  # canonical lower-case 8-4-4-4-12 form
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert before_ms <= parsed.int >> 80 <= after_ms
    # ids made later sort later at millisecond resolution: the records' index grows at its end
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)


def test_log_text_is_aws_shaped() -> None:
    warm = _log(output=b"no newline")
    assert warm.text == (
        "START RequestId: req-1 Version: $LATEST\nno newline\nEND RequestId: req-1\n"
        "REPORT RequestId: req-1\tDuration: 1.23 ms\tBilled Duration: 2 ms\t"
        "Memory Size: 128 MB\tMax Memory Used: 20 MB\t\n"
    )
    cold = _log(cold=True, init_ms=45.678, init_log=b"init\n", output=b"")
    assert cold.text == (
        "START RequestId: req-1 Version: $LATEST\ninit\nEND RequestId: req-1\n"
        "REPORT RequestId: req-1\tDuration: 1.23 ms\tBilled Duration: 2 ms\t"
        "Memory Size: 128 MB\tMax Memory Used: 20 MB\tInit Duration: 45.68 ms\t\n"
    )
    assert _log(output=b"bad \xff byte\n").text.count("bad \ufffd byte\n") == 1
    assert str(warm) is warm.text  # composed once


def test_records_are_written_in_batches_and_queryable(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        recorder = InvocationRecorder(db)
        recorder.start()
        try:
            cold = _record("req-cold", cold=True, status="error", error_type="ValueError")
            recorder.add(cold)
            for n in range(5):
                recorder.add(_record(f"req-{n}"))
            rows = await recorder.query(ACCOUNT, "f", limit=100, newest_first=False, with_log=True)
            assert [r["request_id"] for r in rows] == ["req-cold"] + [f"req-{n}" for n in range(5)]
            first = rows[0]
            assert first["cold"] is True and first["status"] == "error"
            assert first["error_type"] == "ValueError"
            assert first["log"] == cold.log.text
            assert {k: first[k] for k in cold.to_public()} == cold.to_public()
            assert rows[1]["cold"] is False
            assert await recorder.query(ACCOUNT, request_id="req-3") != []
            assert await recorder.query("999999999999") == []
        finally:
            await recorder.close()
            await db.close()

    asyncio.run(scenario())


def test_batches_are_cut_into_statements_within_the_parameter_limits() -> None:
    columns = len(InvocationRecord._fields)
    assert records.MAX_ROWS_PER_INSERT * columns <= 32_766  # SQLite 3.32+
    assert records.MAX_ROWS_PER_INSERT_OLD_SQLITE * columns <= 999  # older SQLite
    for most in (records.MAX_ROWS_PER_INSERT, records.MAX_ROWS_PER_INSERT_OLD_SQLITE):
        for count in (0, 1, 3, most - 1, most, most + 1, 3 * most + 77):
            pieces = record_writer.chunks(count, most)
            assert sum(size for _, size in pieces) == count
            assert [start for start, _ in pieces] == [
                sum(size for _, size in pieces[:i]) for i in range(len(pieces))
            ]
            assert all(size <= most and size & (size - 1) == 0 for _, size in pieces)


@pytest.mark.parametrize(
    "most", [records.MAX_ROWS_PER_INSERT, records.MAX_ROWS_PER_INSERT_OLD_SQLITE]
)
def test_a_large_batch_is_written_whole_and_in_order(
    database_url: str, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    _large_batch(database_url, most, monkeypatch)


def test_a_large_batch_is_written_whole_on_an_in_memory_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No file, so no writer thread of its own: the statements go through the engine."""
    _large_batch("sqlite+aiosqlite:///:memory:", records.MAX_ROWS_PER_INSERT, monkeypatch)


def _large_batch(database_url: str, most: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch is written (on SQLite as multi-row INSERTs of `most` and powers of two; `most` is
    smaller before 3.32): every record lands, in the order added, with its own values."""
    monkeypatch.setattr(records, "_max_rows", lambda: most)
    count = 2 * most + 77

    async def scenario() -> None:
        db = await Database.open(database_url)
        recorder = InvocationRecorder(db)
        try:
            for n in range(count):
                recorder.add(_record(f"req-{n}", billed_ms=n + 1, queue_ms=n / 8))
            rows = await recorder.query(ACCOUNT, "f", limit=count + 1, newest_first=False)
            assert [r["request_id"] for r in rows] == [f"req-{n}" for n in range(count)]
            assert [r["billed_ms"] for r in rows] == [n + 1 for n in range(count)]
            assert [r["queue_ms"] for r in rows] == [n / 8 for n in range(count)]
        finally:
            await recorder.close()
            await db.close()

    asyncio.run(scenario())


def test_records_are_flushed_in_the_background_and_on_close(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        recorder = InvocationRecorder(db)
        recorder.start()
        recorder.add(_record("req-background"))
        reader = InvocationRecorder(db)  # another reader: sees only what reached the store
        # the first batch also waits for the record writer process to start (SQLite)
        for _ in range(200):  # at most 10 s
            stored = await reader.query(ACCOUNT)
            if stored:
                break
            await asyncio.sleep(records.FLUSH_INTERVAL_S)
        assert [r["request_id"] for r in stored] == ["req-background"]
        recorder.add(_record("req-at-close"))
        await recorder.close()
        await recorder.close()  # idempotent
        assert len(await reader.query(ACCOUNT)) == 2
        await db.close()

    asyncio.run(scenario())


def test_stored_log_keeps_the_tail(database_url: str) -> None:
    async def scenario() -> None:
        db = await Database.open(database_url)
        recorder = InvocationRecorder(db)
        big = _log("req-big", output=b"x" * (records.MAX_STORED_LOG + 100) + b"\n")
        recorder.add(_record("req-big", log=big))
        rows = await recorder.query(ACCOUNT, with_log=True)
        assert rows[0]["log"] == big.text[-records.MAX_STORED_LOG :]
        await recorder.close()
        await db.close()

    asyncio.run(scenario())


# ---- the record writer process (SQLite in a file) ---------------------------------------


def _rows(*request_ids: str) -> list[tuple[object, ...]]:
    return [_record(request_id).row() for request_id in request_ids]


def _writer(path: Path) -> RecordWriter:
    return RecordWriter(str(path), records._one_row_insert(True), records.MAX_ROWS_PER_INSERT)


async def _stored(db: Database) -> list[str]:
    rows = await InvocationRecorder(db).query(ACCOUNT, limit=100, newest_first=False)
    return [r["request_id"] for r in rows]


def test_the_writer_connects_as_the_platform_does() -> None:
    assert record_writer.PRAGMAS == SQLITE_PRAGMAS


def test_a_batch_sent_again_is_stored_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
        writer = _writer(tmp_path / "meta.db")
        try:
            await writer.write(_rows("a", "b"))
            await writer.write(_rows("b", "c"))  # "b" again, as after a child died unanswered
            assert await _stored(db) == ["a", "b", "c"]
        finally:
            await writer.close()
            await db.close()

    asyncio.run(scenario())


def test_a_dead_child_is_replaced_and_nothing_written_is_lost(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
        recorder = InvocationRecorder(db)
        try:
            recorder.add(_record("before"))
            await recorder.flush()
            assert recorder._writer is not None and recorder._writer._process is not None
            child = recorder._writer._process
            os.kill(child.pid, signal.SIGKILL)
            await child.wait()
            recorder.add(_record("after"))
            await recorder.flush()  # a new child takes it
            assert await _stored(db) == ["before", "after"]
            assert recorder._writer._process is not child
        finally:
            await recorder.close()
            await db.close()

    asyncio.run(scenario())


def test_a_batch_the_child_cannot_write_is_refused_with_its_reason(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
        writer = _writer(tmp_path / "meta.db")
        try:
            with pytest.raises(RecordWriterError, match="Incorrect number of bindings"):
                await writer.write([("too", "few", "values")])
            process = writer._process
            await writer.write(_rows("good"))  # the same child goes on
            assert writer._process is process
            assert await _stored(db) == ["good"]
        finally:
            await writer.close()
            await db.close()

    asyncio.run(scenario())


def test_close_ends_the_child_and_a_later_write_starts_another(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
        writer = _writer(tmp_path / "meta.db")
        try:
            await writer.write(_rows("one"))
            child = writer._process
            assert child is not None
            await writer.close()
            assert child.returncode == 0  # it saw the end of its input and exited
            await writer.close()  # twice is fine
            await writer.write(_rows("two"))
            assert await _stored(db) == ["one", "two"]
        finally:
            await writer.close()
            await db.close()

    asyncio.run(scenario())


def test_a_cancelled_write_still_lands_and_the_caller_learns_it(tmp_path: Path) -> None:
    """As with the platform's own writes: a caller cancelled while its batch is out waits for
    the answer and returns normally when the batch was written."""

    async def scenario() -> None:
        db = await Database.open(f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}")
        writer = _writer(tmp_path / "meta.db")
        try:
            await writer.start()
            task = asyncio.ensure_future(writer.write(_rows("cancelled")))
            await asyncio.sleep(0)  # the batch is on its way
            task.cancel()
            await task  # written, so no CancelledError
            assert await _stored(db) == ["cancelled"]
        finally:
            await writer.close()
            await db.close()

    asyncio.run(scenario())
