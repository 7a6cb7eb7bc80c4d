"""Durable async throughput and SQS throughput, against a real `gureum up` process.

    python3 bench/events.py [--events 2000] [--messages 2000] [--threads 16] [--json out.json]

1. Async (Event) invocations of a trivial function through boto3's `lambda` client from
   `--threads` threads: accepted events/s (202s per second of sending), completed events/s
   (first accept to last completion), enqueue-to-start latency p50/p99 (event committed →
   invocation started, from the store's own timestamps).
2. SQS through boto3's `sqs` client: SendMessage/s, then ReceiveMessage (10 per call) and
   DeleteMessage per second, each from `--threads` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import make_zip

KEY, SECRET = "AKIABENCHEVENTS0001", "bench-events-secret-0001"
TRIVIAL = "def handler(event, context):\n    return {'ok': True}\n"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _client(service: str, port: int) -> Any:
    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 0}, max_pool_connections=64),
    )


def _parallel(threads: int, total: int, work: Any) -> float:
    """Run work(client_index, item) for `total` items over `threads` threads; seconds taken."""
    counter = iter(range(total))
    lock = threading.Lock()

    def run(index: int) -> None:
        while True:
            with lock:
                item = next(counter, None)
            if item is None:
                return
            work(index, item)

    started = time.perf_counter()
    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return time.perf_counter() - started


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_async(port: int, data_dir: Path, events: int, threads: int) -> dict[str, Any]:
    clients = [_client("lambda", port) for _ in range(threads)]
    clients[0].create_function(
        FunctionName="trivial",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": TRIVIAL})},
    )
    clients[0].invoke(FunctionName="trivial", Payload=b"{}")  # warm one instance

    def send(index: int, _item: int) -> None:
        clients[index].invoke(FunctionName="trivial", InvocationType="Event", Payload=b"{}")

    accept_s = _parallel(threads, events, send)
    db = sqlite3.connect(data_dir / "gureum.db")
    deadline = time.monotonic() + 600
    while True:
        left = db.execute(
            "SELECT count(*) FROM async_events WHERE state NOT IN ('succeeded', 'failed')"
        ).fetchone()[0]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    time.sleep(0.5)  # let the invocation records flush
    first, last = db.execute("SELECT min(created_at), max(updated_at) FROM async_events").fetchone()
    delays = [
        row[0] * 1000
        for row in db.execute(
            "SELECT i.started_at - e.created_at FROM async_events e "
            "JOIN invocations i ON i.request_id = e.request_id"
        )
    ]
    failed = db.execute("SELECT count(*) FROM async_events WHERE state != 'succeeded'").fetchone()
    return {
        "events": events,
        "accepted_per_s": round(events / accept_s),
        "completed_per_s": round(events / (last - first)),
        "enqueue_to_start_ms_p50": round(_percentile(delays, 0.5), 1),
        "enqueue_to_start_ms_p99": round(_percentile(delays, 0.99), 1),
        "not_succeeded": failed[0],
    }


def bench_sqs(port: int, messages: int, threads: int) -> dict[str, Any]:
    clients = [_client("sqs", port) for _ in range(threads)]
    url = clients[0].create_queue(QueueName="bench")["QueueUrl"]

    def send(index: int, item: int) -> None:
        clients[index].send_message(QueueUrl=url, MessageBody=f"message {item}")

    send_s = _parallel(threads, messages, send)
    handles: list[str] = []
    lock = threading.Lock()
    received = [0]

    def receive(index: int, _item: int) -> None:
        got = (
            clients[index]
            .receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=600)
            .get("Messages", [])
        )
        with lock:
            handles.extend(m["ReceiptHandle"] for m in got)
            received[0] += len(got)

    receive_s = _parallel(threads, messages // 10, receive)

    def delete(index: int, item: int) -> None:
        clients[index].delete_message(QueueUrl=url, ReceiptHandle=handles[item])

    delete_s = _parallel(threads, len(handles), delete)
    return {
        "messages": messages,
        "send_per_s": round(messages / send_s),
        "receive_messages_per_s": round(received[0] / receive_s),
        "received": received[0],
        "delete_per_s": round(len(handles) / delete_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="gureum-bench-events-"))
    port = _port()
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": KEY,
        "GUREUM_ROOT_SECRET_ACCESS_KEY": SECRET,
        "GUREUM_LOG_LEVEL": "warning",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "gureum", "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "server did not start"
            time.sleep(0.1)
        result = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "command": " ".join(["python3", "bench/events.py", *sys.argv[1:]]),
            "async": bench_async(port, data_dir, args.events, args.threads),
            "sqs": bench_sqs(port, args.messages, args.threads),
        }
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
