"""What a crash or an abandoned upload can leave behind: an object is never committed without
its notifications (one transaction), and the sweeper removes orphaned blobs, idle unfinished
writes and stale multipart uploads — with the real boto3 `s3`/`sqs` clients."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from gureum.storage.notifications import Delivery
from gureum.storage.sweeper import UPLOAD_TTL_S, Sweeper
from tests.conftest import RunningServer, free_port

MIB = 1024 * 1024


def _queue(server_sqs: Any, name: str) -> tuple[str, str]:
    url = server_sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = server_sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    return url, arn


def _notify_queue(s3: Any, sqs: Any, bucket: str, url: str, arn: str) -> None:
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    [test] = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=5)["Messages"]
    assert json.loads(test["Body"])["Event"] == "s3:TestEvent"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=test["ReceiptHandle"])


def _blob_files(server: RunningServer) -> list[Path]:
    return list((server.settings.data_dir / "objects" / "blobs").glob("*/*"))


def _waiting(sqs: Any, url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"])


def test_a_failed_notification_write_leaves_no_object(
    server: RunningServer, s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs = server.client("sqs")
    url, arn = _queue(sqs, "atomic")
    _notify_queue(s3, sqs, bucket, url, arn)
    s3.put_object(Bucket=bucket, Key="before", Body=b"v1")
    assert _waiting(sqs, url) == 1
    written, written_sqlite = Delivery.write, Delivery.write_sqlite

    async def write_then_die(self: Delivery, conn: Any) -> None:
        await written(self, conn)  # the message row is in the transaction ...
        raise RuntimeError("the process died here")  # ... which never commits

    def write_sqlite_then_die(self: Delivery, conn: Any) -> None:  # SQLite's direct path
        written_sqlite(self, conn)
        raise RuntimeError("the process died here")

    monkeypatch.setattr(Delivery, "write", write_then_die)
    monkeypatch.setattr(Delivery, "write_sqlite", write_sqlite_then_die)
    for key in ("before", "new"):
        with pytest.raises(ClientError) as failed:
            s3.put_object(Bucket=bucket, Key=key, Body=b"v2")
        assert failed.value.response["Error"]["Code"] == "InternalError"
    monkeypatch.undo()
    # neither the object change nor its message happened; the old version is untouched
    assert s3.get_object(Bucket=bucket, Key="before")["Body"].read() == b"v1"
    with pytest.raises(ClientError, match="NoSuchKey"):
        s3.get_object(Bucket=bucket, Key="new")
    assert _waiting(sqs, url) == 1
    assert len(_blob_files(server)) == 1  # no stray blob either


def test_a_replaced_blob_is_deleted_after_the_answer(
    server: RunningServer, s3: Any, bucket: str
) -> None:
    for body in (b"v1", b"v2", b"v3"):
        s3.put_object(Bucket=bucket, Key="k", Body=body)
    deadline = time.monotonic() + 10
    while len(_blob_files(server)) > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    [blob] = _blob_files(server)
    assert blob.read_bytes() == b"v3"
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v3"


KEY, SECRET = "AKIAS3DURABLE0001", "s3-durability-test-secret-0001"


def _start(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": KEY,
        "GUREUM_ROOT_SECRET_ACCESS_KEY": SECRET,
        "GUREUM_SANDBOX": "process",
    }
    argv = [sys.executable, "-m", "gureum", "up", "--port", str(port), "--data-dir", str(data_dir)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, "gureum up exited during start-up"
        assert time.monotonic() < deadline, "gureum up did not start"
        time.sleep(0.1)


def _clients(port: int) -> tuple[Any, Any]:
    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            config=Config(retries={"max_attempts": 0}, connect_timeout=2, read_timeout=20),
        )

    return client("s3"), client("sqs")


def test_sigkill_never_separates_an_object_from_its_notification(tmp_path: Path) -> None:
    """Kill the server under concurrent PUTs: after a restart, the stored objects and the
    queued notifications name exactly the same keys (and every acknowledged PUT is both)."""
    port, data_dir = free_port(), tmp_path / "data"
    server = _start(data_dir, port)
    s3, sqs = _clients(port)
    try:
        s3.create_bucket(Bucket="crash")
        url, arn = _queue(sqs, "crash-events")
        _notify_queue(s3, sqs, "crash", url, arn)
        acknowledged: set[str] = set()
        stop = threading.Event()

        def put(worker: int) -> None:
            s3_worker, _ = _clients(port)
            try:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    key = f"w{worker}/{n}"
                    try:
                        s3_worker.put_object(Bucket="crash", Key=key, Body=os.urandom(64 * 1024))
                    except Exception:
                        return  # the server is gone
                    acknowledged.add(key)
            finally:
                s3_worker.close()

        threads = [threading.Thread(target=put, args=(w,)) for w in range(4)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while len(acknowledged) < 40 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert len(acknowledged) >= 40
        s3.close()
        sqs.close()

        server = _start(data_dir, port)
        s3, sqs = _clients(port)
        stored = {
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash")
            for o in page.get("Contents", [])
        }
        notified: list[str] = []
        while messages := sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1
        ).get("Messages", []):
            for message in messages:
                [record] = json.loads(message["Body"])["Records"]
                notified.append(record["s3"]["object"]["key"])
                sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        assert acknowledged <= stored
        assert sorted(notified) == sorted(stored)
    finally:
        s3.close()
        sqs.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0


def test_sweeper_removes_orphans_idle_writes_and_stale_uploads(
    server: RunningServer, s3: Any, bucket: str
) -> None:
    store = server.app._services["s3"].app.store
    s3.put_object(Bucket=bucket, Key="kept", Body=b"kept")
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "kept"})
    upload = s3.create_multipart_upload(Bucket=bucket, Key="abandoned")["UploadId"]
    s3.upload_part(Bucket=bucket, Key="abandoned", UploadId=upload, PartNumber=1, Body=b"p")

    async def orphan() -> str:  # what a crash between blob commit and metadata leaves
        writer = store.blobs.writer()
        await writer.write(b"orphan")
        return str(await writer.commit())

    orphan_id = server.run(orphan())
    idle_write = store.blobs.tmp / "0123456789abcdef0123456789abcdef"
    idle_write.write_bytes(b"half")
    assert len(_blob_files(server)) == 4
    sweeper = Sweeper(store.catalog, store.blobs)

    # within the grace period nothing is touched
    assert server.run(sweeper.sweep()).blobs == 0
    assert store.blobs.path(orphan_id).exists() and idle_write.exists()

    swept = server.run(sweeper.sweep(now=time.time() + UPLOAD_TTL_S + 60))
    assert (swept.blobs, swept.uploads) == (1, 1)
    assert not store.blobs.path(orphan_id).exists() and not idle_write.exists()
    assert len(_blob_files(server)) == 2
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    for key in ("kept", "copy"):
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"kept"
