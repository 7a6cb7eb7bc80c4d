"""Durable async throughput and SQS throughput, against a real `gureum up` process.

    python3 bench/events.py [--duration 5] [--connections 32] [--messages 2000]
                            [--boto3-messages 2000] [--boto3-threads 8] [--json out.json]

The load comes from low-overhead generators, so the client does not compete with the server
for the machine's cores the way boto3 from Python threads does (~1 ms of CPU per call):

1. Async (Event) invocations of a trivial function: `wrk` (bench/load.py; the asyncio
   fallback without wrk) sends one SigV4-signed Lambda `Invoke` request with
   `X-Amz-Invocation-Type: Event` over `--connections` connections for `--duration` seconds
   (Gureum accepts a header-signed request for 15 minutes). Reported: accepted events/s (202s
   per second of sending), completed events/s (first accept to last completion, from the
   store's own timestamps), enqueue-to-start latency p50/p99 (event committed → invocation
   started) and that every accepted event succeeded.
2. SQS: SendMessage through wrk the same way; then ReceiveMessage (10 per call) until the
   queue is empty and one DeleteMessage per received message, each request pre-signed and sent
   by an asyncio client over `--connections` keep-alive connections (its CPU is reported).
3. SQS through boto3 itself (`--boto3-messages` over `--boto3-threads` threads, a client
   each): SendMessage, ReceiveMessage and DeleteMessage as an application would call them.

Phases 1 and 2 use boto3 for set-up and a functional check only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from accounting import busy_cpu_s, own_and_waited_cpu_s, tree_cpu
from load import HttpRequest, pick_generator

from tests.conftest import make_zip

KEY, SECRET = "AKIABENCHEVENTS0001", "bench-events-secret-0001"
REGION = "us-east-1"
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
        region_name=REGION,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 0}),
    )


def signed(port: int, service: str, path: str, headers: dict[str, str], body: bytes) -> HttpRequest:
    """One request SigV4-signed now with botocore (header auth, valid for 15 minutes)."""
    host = f"127.0.0.1:{port}"
    aws = AWSRequest(method="POST", url=f"http://{host}{path}", data=body, headers=headers)
    SigV4Auth(Credentials(KEY, SECRET), service, REGION).add_auth(aws)
    wire = {"Host": host, **headers}
    wire["X-Amz-Date"] = aws.headers["X-Amz-Date"]
    wire["Authorization"] = aws.headers["Authorization"]
    return HttpRequest("127.0.0.1", port, "POST", path, wire, body)


def _sqs_request(port: int, action: str, body: dict[str, Any]) -> HttpRequest:
    headers = {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": f"AmazonSQS.{action}",
    }
    return signed(port, "sqs", "/", headers, json.dumps(body).encode())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _cpu_s() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime


class CpuWatch:
    """Where the machine's CPU went between `__init__` and `result()`: the server process, its
    children (function instances), this process and wrk, and everything else."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.wall = time.perf_counter()
        self.busy, self.loadgen = busy_cpu_s(), own_and_waited_cpu_s()
        self.own, self.children = tree_cpu(server_pid)

    def result(self) -> dict[str, float]:
        own, children = tree_cpu(self.pid)
        wall = time.perf_counter() - self.wall
        server = own - self.own
        instances = sum(t - self.children.get(pid, 0.0) for pid, t in children.items())
        loadgen = own_and_waited_cpu_s() - self.loadgen
        busy = busy_cpu_s() - self.busy
        return {
            "wall_s": round(wall, 2),
            "server_cpu_s": round(server, 2),
            "instances_cpu_s": round(instances, 2),
            "loadgen_cpu_s": round(loadgen, 2),
            "other_processes_cpu_s": round(max(0.0, busy - server - instances - loadgen), 2),
            "machine_cpu_capacity_s": round(wall * (os.cpu_count() or 1), 2),
        }


# ---- a count-limited pipelined client ----------------------------------------------------------


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wire: bytes
) -> tuple[int, bytes]:
    writer.write(wire)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return int(head.split(b" ", 2)[1]), body


async def _send_all(port: int, wires: list[bytes], connections: int) -> tuple[float, int]:
    """Send every request once over `connections` connections; (seconds, non-2xx count)."""
    todo = iter(wires)
    failures = [0]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for wire in todo:
                status, _ = await _exchange(reader, writer, wire)
                failures[0] += not 200 <= status < 300
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, failures[0]


async def _receive_all(
    port: int, wire: bytes, connections: int
) -> tuple[float, list[str], list[str]]:
    """ReceiveMessage (the same signed request) on every connection until the queue is empty;
    (seconds, receipt handles, message bodies)."""
    handles: list[str] = []
    bodies: list[str] = []

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                status, body = await _exchange(reader, writer, wire)
                assert status == 200, body
                messages = json.loads(body).get("Messages", [])
                if not messages:
                    return
                handles.extend(m["ReceiptHandle"] for m in messages)
                bodies.extend(m["Body"] for m in messages)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    return time.perf_counter() - started, handles, bodies


# ---- the benchmarks ----------------------------------------------------------------------------


def bench_async(
    port: int, pid: int, data_dir: Path, duration_s: float, connections: int, generator: str
) -> dict[str, Any]:
    lam = _client("lambda", port)
    lam.create_function(
        FunctionName="trivial",
        Runtime="python3.11",
        Role="r",
        Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": TRIVIAL})},
    )
    lam.invoke(FunctionName="trivial", Payload=b"{}")  # warm one instance
    # functional check through the real SDK
    for _ in range(3):
        assert lam.invoke(FunctionName="trivial", InvocationType="Event")["StatusCode"] == 202
    lam.close()
    db = sqlite3.connect(data_dir / "gureum.db")
    _wait_settled(db)
    before = db.execute("SELECT coalesce(max(id), 0) FROM async_events").fetchone()[0]

    path = "/2015-03-31/functions/trivial/invocations"
    request = signed(port, "lambda", path, {"X-Amz-Invocation-Type": "Event"}, b"{}")
    _, generate = pick_generator(generator)
    watch = CpuWatch(pid)
    load = generate(request, connections, duration_s)
    time.sleep(0.5)  # requests wrk had in flight when it stopped are committed by now
    accepted = db.execute("SELECT count(*) FROM async_events WHERE id > ?", (before,)).fetchone()[0]
    _wait_settled(db)
    cpu = watch.result()
    time.sleep(1.0)  # let the invocation records flush
    first, last = db.execute(
        "SELECT min(created_at), max(updated_at) FROM async_events WHERE id > ?", (before,)
    ).fetchone()
    delays = [
        row[0] * 1000
        for row in db.execute(
            "SELECT i.started_at - e.created_at FROM async_events e "
            "JOIN invocations i ON i.request_id = e.request_id WHERE e.id > ?",
            (before,),
        )
    ]
    not_succeeded = db.execute(
        "SELECT count(*) FROM async_events WHERE id > ? AND state != 'succeeded'", (before,)
    ).fetchone()[0]
    return {
        "generator": load.command,
        "requests_202": load.requests - load.errors,
        "errors": load.errors,
        "events_in_store": accepted,
        "accepted_per_s": round((load.requests - load.errors) / load.duration_s),
        "accept_latency_ms_p50": round(load.p50_ms, 2),
        "accept_latency_ms_p99": round(load.p99_ms, 2),
        "completed_per_s": round(accepted / (last - first)),
        "first_accept_to_last_completion_s": round(last - first, 2),
        "enqueue_to_start_ms_p50": round(_percentile(delays, 0.5), 1),
        "enqueue_to_start_ms_p99": round(_percentile(delays, 0.99), 1),
        "records_joined": len(delays),
        "not_succeeded": not_succeeded,
        "cpu_from_first_request_to_all_settled": cpu,
    }


def _wait_settled(db: sqlite3.Connection) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        left = db.execute(
            "SELECT count(*) FROM async_events WHERE state NOT IN ('succeeded', 'failed')"
        ).fetchone()[0]
        if not left:
            return
        time.sleep(0.2)
    raise RuntimeError("async events did not settle within 10 minutes")


def bench_sqs(
    port: int,
    pid: int,
    data_dir: Path,
    duration_s: float,
    messages: int,
    connections: int,
    generator: str,
) -> dict[str, Any]:
    sqs = _client("sqs", port)
    # functional check through the real SDK
    check = sqs.create_queue(QueueName="check")["QueueUrl"]
    sqs.send_message(QueueUrl=check, MessageBody="hello")
    [got] = sqs.receive_message(QueueUrl=check, WaitTimeSeconds=1)["Messages"]
    assert got["Body"] == "hello"
    sqs.delete_message(QueueUrl=check, ReceiptHandle=got["ReceiptHandle"])
    url = sqs.create_queue(QueueName="bench")["QueueUrl"]
    sqs.close()
    db = sqlite3.connect(data_dir / "gureum.db")
    queue_id = db.execute("SELECT id FROM queues WHERE name = 'bench'").fetchone()[0]

    # SendMessage under wrk, as long as the async phase
    send = _sqs_request(port, "SendMessage", {"QueueUrl": url, "MessageBody": "message"})
    _, generate = pick_generator(generator)
    watch = CpuWatch(pid)
    load = generate(send, connections, duration_s)
    send_cpu = watch.result()
    time.sleep(0.5)  # requests wrk had in flight when it stopped are committed by now
    stored = db.execute(
        "SELECT count(*) FROM queue_messages WHERE queue_id = ?", (queue_id,)
    ).fetchone()[0]
    result: dict[str, Any] = {
        "send_generator": load.command,
        "send_200": load.requests - load.errors,
        "send_errors": load.errors,
        "send_per_s": round((load.requests - load.errors) / load.duration_s),
        "send_latency_ms_p50": round(load.p50_ms, 2),
        "send_latency_ms_p99": round(load.p99_ms, 2),
        "messages_in_store": stored,
        "send_cpu": send_cpu,
    }
    # keep `messages` of them for the receive and delete phases
    db.execute(
        "DELETE FROM queue_messages WHERE queue_id = ? AND id NOT IN "
        "(SELECT id FROM queue_messages WHERE queue_id = ? ORDER BY id LIMIT ?)",
        (queue_id, queue_id, messages),
    )
    db.commit()
    kept = db.execute(
        "SELECT count(*) FROM queue_messages WHERE queue_id = ?", (queue_id,)
    ).fetchone()[0]

    receive = _sqs_request(
        port,
        "ReceiveMessage",
        {"QueueUrl": url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 900},
    )
    cpu = _cpu_s()
    receive_s, handles, _ = asyncio.run(_receive_all(port, receive.wire(), connections))
    receive_cpu = _cpu_s() - cpu
    deletes = [
        _sqs_request(port, "DeleteMessage", {"QueueUrl": url, "ReceiptHandle": h}).wire()
        for h in handles
    ]
    cpu = _cpu_s()
    delete_s, delete_failures = asyncio.run(_send_all(port, deletes, connections))
    delete_cpu = _cpu_s() - cpu
    left = db.execute(
        "SELECT count(*) FROM queue_messages WHERE queue_id = ?", (queue_id,)
    ).fetchone()[0]
    result.update(
        {
            "receive_messages_per_s": round(len(handles) / receive_s),
            "received": len(handles),
            "unique_received": len(set(handles)),
            "expected": kept,
            "receive_client_cpu_s": round(receive_cpu, 2),
            "delete_per_s": round(len(deletes) / delete_s),
            "delete_failures": delete_failures,
            "delete_client_cpu_s": round(delete_cpu, 2),
            "left_after_delete": left,
        }
    )
    return result


def bench_sqs_boto3(port: int, pid: int, messages: int, threads: int) -> dict[str, Any]:
    """SendMessage, ReceiveMessage (10 per call) and DeleteMessage through boto3 itself, from
    `threads` threads with a client each: what an application using the SDK sees. boto3
    costs its caller about 1 ms of CPU per call, so on 2 cores the client is the limit."""
    clients = [_client("sqs", port) for _ in range(threads)]
    url = clients[0].create_queue(QueueName="bench-boto3")["QueueUrl"]
    share = [messages // threads + (i < messages % threads) for i in range(threads)]

    def send(client: Any, count: int) -> None:
        for i in range(count):
            client.send_message(QueueUrl=url, MessageBody=f"message {i}")

    def receive(client: Any, count: int) -> list[str]:
        handles: list[str] = []
        while len(handles) < count:
            got = client.receive_message(
                QueueUrl=url, MaxNumberOfMessages=min(10, count - len(handles))
            ).get("Messages", [])
            if not got:
                break
            handles += [m["ReceiptHandle"] for m in got]
        return handles

    def delete(client: Any, handles: list[str]) -> None:
        for handle in handles:
            client.delete_message(QueueUrl=url, ReceiptHandle=handle)

    def timed(work: Any, jobs: list[Any]) -> tuple[float, dict[str, float], list[Any]]:
        watch = CpuWatch(pid)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(work, clients, jobs))
        return time.perf_counter() - started, watch.result(), results

    try:
        send_s, send_cpu, _ = timed(send, share)
        receive_s, receive_cpu, batches = timed(receive, share)
        received = [h for batch in batches for h in batch]
        delete_s, delete_cpu, _ = timed(delete, [received[i::threads] for i in range(threads)])
        left = clients[0].get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
    finally:
        for client in clients:
            client.close()
    return {
        "threads": threads,
        "sent": messages,
        "send_per_s": round(messages / send_s),
        "send_cpu": send_cpu,
        "received": len(received),
        "receive_messages_per_s": round(len(received) / receive_s),
        "receive_cpu": receive_cpu,
        "delete_per_s": round(len(received) / delete_s),
        "delete_cpu": delete_cpu,
        "left_after_delete": int(left),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of wrk load")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--messages", type=int, default=2000, help="received and deleted")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--boto3-messages", type=int, default=2000, help="through boto3 itself")
    parser.add_argument("--boto3-threads", type=int, default=8)
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
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_average": os.getloadavg(),
            },
            "command": " ".join(["python3", "bench/events.py", *sys.argv[1:]]),
            "async": bench_async(
                port, server.pid, data_dir, args.duration, args.connections, args.load
            ),
            "sqs": bench_sqs(
                port,
                server.pid,
                data_dir,
                args.duration,
                args.messages,
                args.connections,
                args.load,
            ),
            "sqs_boto3": bench_sqs_boto3(port, server.pid, args.boto3_messages, args.boto3_threads),
        }
    finally:
        server.terminate()
        server.wait(30)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
