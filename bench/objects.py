"""Object PUT/GET throughput: Gureum's S3 API vs nginx (WebDAV PUT, static GET), side by side.

    python3 bench/objects.py [--duration S] [--payload unsigned|sha256] [--sizes 1MiB ...]
                             [--ops PUT GET] [--json out.json]

Starts Gureum through bench/servers.py (one uvicorn worker) and nginx with a generated config
(`worker_processes 1`, to match Gureum's single process) as subprocesses, then for each cell
(PUT/GET x 4 KiB / 1 MiB / 64 MiB) loads nginx and then Gureum for `--duration` seconds with
the same client: threads, one keep-alive `http.client` connection each. Gureum's requests are
SigV4-signed with botocore before the timed section (one signature per key, reused), nginx's
get the same headers minus auth. Every reply is checked (status, size, body bytes, ETag where
the server gives an MD5 one), so a broken server cannot look fast.

Not equal, and printed with the results: Gureum's PUT is durable (blob fsync, directory fsync,
SQLite commit) and computes an MD5 ETag, nginx's is neither; nginx GETs use sendfile. So each
PUT cell has a third row, `floor`: this script's own threads repeating just that durable write
sequence on the same disk (no HTTP, no hashing), the most a durable PUT can do here. Every
cell starts after `sync`, so no cell pays for the write-back of another's dirty pages.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import boto3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accounting import busy_cpu_s, tree_cpu
from invoke import Server, free_port, new_root_credentials, start_server
from report import format_table, machine_info

REGION = "us-east-1"
BUCKET = "bench-objects"
KIB, MIB = 1024, 1024 * 1024
# (label, size, concurrent workers, distinct keys per worker)
SIZES = [("4 KiB", 4 * KIB, 8, 64), ("1 MiB", MIB, 2, 8), ("64 MiB", 64 * MIB, 2, 2)]
OPS = ("PUT", "GET")
WARMUP_S = 1.0


# ---- requests --------------------------------------------------------------------------------


class _UnsignedPayloadAuth(S3SigV4Auth):
    """S3 SigV4 with `x-amz-content-sha256: UNSIGNED-PAYLOAD` (botocore signs over http)."""

    def _should_sha256_sign_payload(self, request: AWSRequest) -> bool:
        return False


@dataclass(frozen=True)
class Req:
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    pid: int
    credentials: tuple[str, str] | None  # None: no signing (nginx)
    md5_etag: bool  # the server's ETag is the body's quoted MD5

    def request(self, method: str, key: str, body: bytes, payload: str) -> Req:
        path = f"/{BUCKET}/{key}"
        host = f"127.0.0.1:{self.port}"
        headers = {"Host": host}
        if method == "PUT":
            headers["Content-Length"] = str(len(body))
            headers["Content-Type"] = "application/octet-stream"
        if self.credentials is None:
            return Req(path, headers)
        aws = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers=headers)
        auth_class = S3SigV4Auth if payload == "sha256" or method == "GET" else _UnsignedPayloadAuth
        auth_class(Credentials(*self.credentials), "s3", REGION).add_auth(aws)
        signed = {k: v for k, v in aws.headers.items() if k.lower().startswith(("x-amz-", "auth"))}
        return Req(path, {**headers, **signed})


@dataclass
class WorkerResult:
    latencies: list[float] = field(default_factory=list)
    error: str | None = None


def _worker(
    target: Target,
    method: str,
    reqs: list[Req],
    body: bytes,
    etag: str,
    stop_at: list[float],
    result: WorkerResult,
    max_requests: int | None = None,
) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", target.port, timeout=120)
    buf = bytearray(len(body))
    view = memoryview(buf)
    i = 0
    try:
        while time.monotonic() < stop_at[0] and (max_requests is None or i < max_requests):
            req = reqs[i % len(reqs)]
            i += 1
            t0 = time.perf_counter()
            data = body if method == "PUT" else None
            connection.request(method, req.path, body=data, headers=req.headers)
            response = connection.getresponse()
            if method == "GET":
                got = 0
                while got < len(buf):
                    n = response.readinto(view[got:])
                    if not n:
                        break
                    got += n
                tail = response.read()
            else:
                got, tail = 0, response.read()
            elapsed = time.perf_counter() - t0
            if response.status not in (200, 201, 204):
                raise RuntimeError(f"{method} {req.path}: {response.status} {tail[:300]!r}")
            if method == "GET" and (got != len(body) or tail or buf != body):
                raise RuntimeError(f"GET {req.path}: wrong body ({got} + {len(tail)} bytes)")
            if target.md5_etag and response.getheader("ETag") != etag:
                raise RuntimeError(f"{method} {req.path}: ETag {response.getheader('ETag')}")
            result.latencies.append(elapsed)
    except Exception as exc:  # reported by the caller, which fails the run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        connection.close()


def _send(
    target: Target, method: str, reqs: list[list[Req]], body: bytes, duration_s: float
) -> tuple[list[float], float]:
    """Run len(reqs) workers for duration_s; return all latencies and the wall time."""
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    stop_at = [float("inf")]
    results = [WorkerResult() for _ in reqs]
    threads = [
        threading.Thread(target=_worker, args=(target, method, r, body, etag, stop_at, res))
        for r, res in zip(reqs, results, strict=True)
    ]
    start = time.monotonic()
    stop_at[0] = start + duration_s
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    for res in results:
        if res.error:
            raise RuntimeError(f"{target.name}: {res.error}")
    return [lat for res in results for lat in res.latencies], wall


# ---- servers ---------------------------------------------------------------------------------


NGINX_CONF = """\
{user}worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 1000000;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }}
    }}
}}
"""


def nginx_has_dav() -> bool:
    out = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False).stderr
    return "http_dav_module" in out


def nginx_version() -> str:
    out = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr
    return out.strip().partition("/")[2]


def start_nginx(root: Path) -> Server:
    port = free_port()
    (root / "www" / BUCKET).mkdir(parents=True)
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(user=user, root=root, port=port))
    argv = ["nginx", "-c", str(conf), "-g", "daemon off;"]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    server = Server("nginx", port, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {conf}")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/")
            connection.getresponse().read()
            connection.close()
            return server
        time.sleep(0.05)
    server.stop()
    raise RuntimeError("nginx did not start within 20 s")


def nginx_worker_pid(master: int) -> int:
    """The one worker: nginx's master only accepts signals, the worker serves."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0]) if children else master


def create_bucket(port: int, credentials: tuple[str, str]) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name=REGION,
        aws_access_key_id=credentials[0],
        aws_secret_access_key=credentials[1],
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="hello", Body=b"hello")
    if s3.get_object(Bucket=BUCKET, Key="hello")["Body"].read() != b"hello":
        raise RuntimeError("gureum: put/get of a test object failed")


@contextlib.contextmanager
def targets(work: Path) -> Iterator[tuple[Target, Target]]:
    credentials = new_root_credentials()
    env = {
        **os.environ,
        "GUREUM_ROOT_ACCESS_KEY_ID": credentials[0],
        "GUREUM_ROOT_SECRET_ACCESS_KEY": credentials[1],
    }
    started: list[Server] = []
    try:
        (work / "gureum").mkdir()
        gureum = start_server("gureum", ["--data-dir", str(work / "gureum")], env, "/healthz")
        started.append(gureum)
        create_bucket(gureum.port, credentials)
        (work / "nginx").mkdir()
        nginx = start_nginx(work / "nginx")
        started.append(nginx)
        yield (
            Target("nginx", nginx.port, nginx_worker_pid(nginx.pid), None, md5_etag=False),
            Target("gureum", gureum.port, gureum.pid, credentials, md5_etag=True),
        )
    finally:
        for server in reversed(started):
            server.stop()


# ---- measuring -------------------------------------------------------------------------------


@dataclass
class Cell:
    target: str
    op: str
    size_label: str
    size: int
    workers: int
    ops: int
    wall_s: float
    ops_s: float
    mib_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_op: float
    foreign_cores: float

    @classmethod
    def of(
        cls,
        target: str,
        op: str,
        size: tuple[str, int, int, int],
        latencies: list[float],
        wall: float,
        server_cpu_s: float,
        busy_cpu_s: float,
    ) -> Cell:
        """A measured cell; `busy_cpu_s`: what all cores spent busy meanwhile."""
        label, nbytes, workers, _ = size
        count = len(latencies)
        return cls(
            target,
            op,
            label,
            nbytes,
            workers,
            count,
            wall,
            count / wall,
            count * nbytes / MIB / wall,
            percentile(latencies, 0.50) * 1000,
            percentile(latencies, 0.99) * 1000,
            server_cpu_s / count * 1000,
            # everything busy that is not the server: the client here plus anything else
            max(0.0, busy_cpu_s - server_cpu_s) / wall,
        )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    target: Target, op: str, size: tuple[str, int, int, int], duration_s: float, payload: str
) -> Cell:
    label, nbytes, workers, keys = size
    body = os.urandom(nbytes)
    prefix = f"{label.replace(' ', '')}"
    names = [[f"{prefix}/w{w}/k{k}" for k in range(keys)] for w in range(workers)]
    reqs = [[target.request(op, n, body, payload) for n in ws] for ws in names]
    if op == "GET":  # the objects to read: written by the same client beforehand
        put = [[target.request("PUT", n, body, payload) for n in ws] for ws in names]
        for worker_reqs in put:
            _send_each(target, worker_reqs, body)
    _send(target, op, reqs, body, WARMUP_S)
    # dirty pages of the cells before (nginx's PUTs are not fsync'd) would otherwise be
    # written back while this cell runs, and charged to whichever server runs next
    os.sync()
    own_before, _ = tree_cpu(target.pid)
    busy_before = busy_cpu_s()
    latencies, wall = _send(target, op, reqs, body, duration_s)
    busy_after = busy_cpu_s()
    own_after, _ = tree_cpu(target.pid)
    server_cpu = own_after - own_before
    if op == "PUT":  # what was stored must read back whole
        check = target.request("GET", names[0][0], b"", payload)
        _send_each(target, [check], body, method="GET")
    return Cell.of(target.name, op, size, latencies, wall, server_cpu, busy_after - busy_before)


def measure_floor(work: Path, size: tuple[str, int, int, int], duration_s: float) -> Cell:
    """What durability alone allows: threads of this process (as many as the cell's clients)
    each repeat the write sequence of Gureum's blob store and catalog on the same disk:
    write the body to a temporary file, fsync, rename into a shard directory, fsync that
    directory, then commit one row to SQLite (WAL, synchronous=FULL). No HTTP, no hashing;
    nginx's PUT does none of the fsyncs, so this is a ceiling for any durable PUT here."""
    label, nbytes, workers, _ = size
    body = os.urandom(nbytes)
    root = work / f"floor-{label.replace(' ', '')}"
    (root / "tmp").mkdir(parents=True)
    (root / "blobs").mkdir()
    database = root / "meta.db"
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE objects (name TEXT PRIMARY KEY, size INTEGER)")

    def write_one(db: sqlite3.Connection) -> None:
        name = secrets.token_hex(16)
        tmp, shard = root / "tmp" / name, root / "blobs" / name[:2]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        shard.mkdir(exist_ok=True)
        os.rename(tmp, shard / name)
        dir_fd = os.open(shard, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        with db:
            db.execute("INSERT INTO objects VALUES (?, ?)", (name, nbytes))

    def loop(stop_at: float, result: WorkerResult) -> None:
        with contextlib.closing(sqlite3.connect(database, timeout=30)) as db:
            db.execute("PRAGMA synchronous=FULL")
            while time.monotonic() < stop_at:
                t0 = time.perf_counter()
                write_one(db)
                result.latencies.append(time.perf_counter() - t0)

    def run(seconds: float) -> tuple[list[float], float]:
        results = [WorkerResult() for _ in range(workers)]
        stop_at = time.monotonic() + seconds
        threads = [threading.Thread(target=loop, args=(stop_at, r)) for r in results]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return [t for r in results for t in r.latencies], time.perf_counter() - start

    run(WARMUP_S)
    os.sync()
    own_before, busy_before = sum(os.times()[:2]), busy_cpu_s()
    latencies, wall = run(duration_s)
    own = sum(os.times()[:2]) - own_before
    busy = busy_cpu_s() - busy_before
    shutil.rmtree(root)
    return Cell.of("floor", "PUT", size, latencies, wall, own, busy)


def _send_each(target: Target, reqs: list[Req], body: bytes, method: str = "PUT") -> None:
    """Send each request once, one after the other, checking each reply."""
    etag = f'"{hashlib.md5(body).hexdigest()}"'
    result = WorkerResult()
    _worker(target, method, reqs, body, etag, [float("inf")], result, len(reqs))
    if result.error or len(result.latencies) != len(reqs):
        raise RuntimeError(f"{target.name}: {result.error}")


# ---- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell")
    parser.add_argument(
        "--payload",
        choices=("unsigned", "sha256"),
        default="unsigned",
        help="Gureum PUTs: x-amz-content-sha256 UNSIGNED-PAYLOAD, or the body's real sha256 "
        "(which Gureum then has to hash and check)",
    )
    parser.add_argument(
        "--sizes",
        nargs="+",
        choices=[label.replace(" ", "") for label, *_ in SIZES],
        help="only these object sizes (default: all)",
    )
    parser.add_argument("--ops", nargs="+", choices=OPS, help="only these operations")
    parser.add_argument("--json", type=Path, help="write every cell and machine info here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("nginx") is None:
        sys.exit("nginx not found: apt-get install -y nginx")
    if not nginx_has_dav():
        sys.exit("this nginx lacks http_dav_module (needed for PUT): apt-get install nginx-extras")
    command = shlex.join(sys.orig_argv)
    machine = {**machine_info("python threads + http.client"), "nginx": nginx_version()}
    print(f"command: {command}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print(
        "nginx: worker_processes 1 (Gureum is one uvicorn process), WebDAV PUT, static GET with "
        "sendfile, access_log off. What differs: nginx does not fsync a PUT; a Gureum PUT "
        "fsyncs the blob and its directory, then commits its metadata to SQLite (WAL, "
        "synchronous=FULL: one more fsync), and computes the body's MD5 for the ETag. A Gureum "
        "GET looks the key up (cached in-process in this embedded shape) and reads what the "
        "page cache holds on the event loop, the rest in a worker thread (no sendfile under "
        "uvicorn). Both sides read the same few keys over and over, so both serve GETs from "
        "the page cache."
    )
    print(
        f"client: threads, one keep-alive http.client connection each, same code for both; "
        f"Gureum requests SigV4-signed before the timed section, one signature per key "
        f"(PUT x-amz-content-sha256: "
        f"{'UNSIGNED-PAYLOAD' if args.payload == 'unsigned' else 'real sha256'}). "
        f"Warm-up {WARMUP_S:.0f} s per cell, then {args.duration:g} s measured."
    )
    sizes = [s for s in SIZES if args.sizes is None or s[0].replace(" ", "") in args.sizes]
    ops = args.ops or OPS
    cells: list[Cell] = []
    with (
        tempfile.TemporaryDirectory(prefix="gureum-bench-objects-") as tmp,
        targets(Path(tmp)) as (nginx, gureum),
    ):
        for size in sizes:
            for op in ops:
                for target in (nginx, gureum, None):
                    if target is None and op != "PUT":
                        continue
                    cell = (
                        measure_floor(Path(tmp), size, args.duration)
                        if target is None
                        else measure(target, op, size, args.duration, args.payload)
                    )
                    cells.append(cell)
                    print(
                        f"  {cell.target:6} {cell.op} {cell.size_label:>6} "
                        f"c={cell.workers}: {cell.ops_s:,.1f} ops/s, {cell.mib_s:,.1f} MiB/s",
                        flush=True,
                    )
    rows = []
    by_key = {(c.target, c.op, c.size_label): c for c in cells}
    for c in cells:
        ratio = ""
        if c.target != "nginx":
            base = by_key[("nginx", c.op, c.size_label)]
            ratio = f"{c.ops_s / base.ops_s:.2f}x"
        rows.append(
            [
                c.target,
                c.op,
                c.size_label,
                str(c.workers),
                f"{c.ops_s:,.1f}",
                f"{c.mib_s:,.1f}",
                f"{c.p50_ms:.2f}",
                f"{c.p99_ms:.2f}",
                f"{c.server_cpu_ms_per_op:.3f}",
                f"{c.foreign_cores:.2f}",
                ratio,
            ]
        )
    headers = ["target", "op", "size", "conc", "ops/s", "MiB/s", "p50 ms", "p99 ms"]
    headers += ["srv CPU ms/op", "other cores", "x nginx"]
    print()
    print(format_table(headers, rows))
    print(
        "\nsrv CPU ms/op: CPU of the serving process (gureum's uvicorn, incl. its threads; "
        "nginx's worker; the floor's own threads) per op. other cores: all other busy CPU (the "
        "client threads and anything else) in cores.\nfloor: no server; threads of this script "
        "repeat the durable write sequence of Gureum's PUT (temp file, fsync, rename, directory "
        "fsync, SQLite commit) with no HTTP and no hashing, as many as the cell's clients: the "
        "most any PUT that is durable per object can do on this disk (nginx's is not)."
    )
    if args.json is not None:
        out = {"command": command, "machine": machine, "payload": args.payload}
        out["cells"] = [asdict(c) for c in cells]
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
