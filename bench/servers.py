"""The servers the benchmarks compare, each started as its own process.

    python3 bench/servers.py gureum --port P --data-dir DIR [--cprofile OUT.prof]
    python3 bench/servers.py baseline --port P
    python3 bench/servers.py hop --port P

Both run uvicorn with one worker, uvloop when it is importable, httptools, log level warning,
no access log: `baseline` as plain uvicorn (`uvicorn_config`), `gureum` as `gureum up` runs it
(`gureum_config`: uvicorn with Gureum's HttpProtocol). `gureum` serves `GatewayApp` with
settings built here (root credentials from GUREUM_ROOT_ACCESS_KEY_ID / _SECRET_ACCESS_KEY, as
the CLI would take them); `baseline` is a bare ASGI app that json-decodes the body, calls
`trivial_handler.handler` in-process and returns its JSON — the floor Gureum is measured
against. `hop` (bench/gateway.py's third target) is the floor of Gureum's architecture rather
than of HTTP: uvicorn as Gureum runs it, and each request's event sent to a plain worker
process and back (`HopApp`).

With `--cprofile`, SIGUSR1 starts cProfile on the event-loop thread and SIGUSR2 stops it and
writes the stats, so a profile covers exactly one load run and nothing of start-up.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib.util
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trivial_handler import handler

from gureum.runtime import protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
HTTP = "httptools"
HOP_WORKER = Path(__file__).resolve().parent / "hop_worker.py"
HOP_WORKERS = 32  # as many as the benchmarks' connections: no request waits for a worker


def uvicorn_config(app: ASGIApp, port: int) -> uvicorn.Config:
    """The one uvicorn configuration both targets share."""
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop=LOOP,
        http=HTTP,
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


def gureum_config(app: ASGIApp, port: int) -> uvicorn.Config:
    """Gureum as `gureum up` serves it (`gureum.gateway.server.uvicorn_config`: uvicorn with
    Gureum's HttpProtocol, which sends a response's head and body in one write), with the
    baseline's log settings."""
    from gureum.gateway.server import uvicorn_config as gureum_uvicorn_config

    return gureum_uvicorn_config(app, "127.0.0.1", port, log_level="warning", access_log=False)


async def baseline_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, json-decode it, call the handler, return its JSON. Nothing else."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = await _read_body(receive)
    event = json.loads(body) if body else {}
    await _send_json(send, json.dumps(handler(event, None)).encode())


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, result: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(result)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": result})


class _WorkerChannel(asyncio.Protocol):
    """The hop app's end of one worker's socket: one request at a time, one future each."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[bytes] | None = None
        self._buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) < protocol.HEADER.size:
            return
        header_len, payload_len = protocol.decode_lengths(self._buffer[: protocol.HEADER.size])
        end = protocol.HEADER.size + header_len + payload_len
        if len(self._buffer) >= end and self.reply is not None:
            payload, self._buffer = self._buffer[end - payload_len : end], self._buffer[end:]
            reply, self.reply = self.reply, None
            reply.set_result(payload)

    def invoke(self, request_id: str, event: bytes) -> asyncio.Future[bytes]:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.transport.write(protocol.encode({"t": "invoke", "id": request_id}, event))
        return self.reply


class HopApp:
    """The floor under Gureum's user routes: uvicorn, a payload-2.0 event built from the
    request and sent as JSON to one of HOP_WORKERS plain worker processes (bench/hop_worker.py:
    no sandbox, no shim), its JSON result decoded and returned. No routing, authorization,
    limits, records or logs."""

    def __init__(self) -> None:
        self._idle: list[_WorkerChannel] = []
        self._waiting: list[asyncio.Future[_WorkerChannel]] = []
        self._workers: list[asyncio.subprocess.Process] = []
        self._count = 0

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(HOP_WORKERS):
            ours, theirs = socket.socketpair()
            argv = [sys.executable, str(HOP_WORKER), str(theirs.fileno())]
            worker = await asyncio.create_subprocess_exec(*argv, pass_fds=[theirs.fileno()])
            self._workers.append(worker)
            theirs.close()
            _, channel = await loop.create_unix_connection(_WorkerChannel, sock=ours)
            self._idle.append(channel)

    async def _stop(self) -> None:
        for channel in self._idle:
            if channel.transport is not None:
                channel.transport.close()  # the worker reads end of stream and exits
        for worker in self._workers:
            await worker.wait()

    def _event(self, scope: Scope, body: bytes, request_id: str) -> bytes:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        now = time.time()
        http = {
            "method": scope["method"],
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": scope["client"][0],
            "userAgent": headers.get("user-agent", ""),
        }
        context = {
            "accountId": "000000000000",
            "apiId": "hop",
            "domainName": "127.0.0.1",
            "domainPrefix": "127",
            "http": http,
            "requestId": request_id,
            "routeKey": f"GET {path}",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        }
        event = {
            "version": "2.0",
            "routeKey": f"GET {path}",
            "rawPath": path,
            "rawQueryString": scope["query_string"].decode("latin-1"),
            "headers": headers,
            "requestContext": context,
            "body": body.decode("latin-1"),
            "isBase64Encoded": False,
        }
        return json.dumps(event).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self._start()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self._stop()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        self._count += 1
        request_id = f"{self._count:020d}"
        if self._idle:
            channel = self._idle.pop()
        else:
            waiter: asyncio.Future[_WorkerChannel] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            channel = await waiter
        try:
            result = await channel.invoke(request_id, self._event(scope, body, request_id))
        finally:
            if self._waiting:
                self._waiting.pop(0).set_result(channel)
            else:
                self._idle.append(channel)
        out = json.dumps(json.loads(result)).encode()
        await _send_json(send, out)


def gureum_app(port: int, data_dir: Path) -> ASGIApp:
    """`GatewayApp` over settings for a throw-away data dir; it opens the platform on lifespan."""
    from gureum.gateway.app import GatewayApp
    from gureum.settings import Settings

    settings = Settings(
        data_dir=data_dir,
        host="127.0.0.1",
        port=port,
        # no instance may be reaped between the warm-up and the last measurement
        keep_alive_s=3600.0,
        root_access_key_id=os.environ.get("GUREUM_ROOT_ACCESS_KEY_ID") or None,
        root_secret_access_key=os.environ.get("GUREUM_ROOT_SECRET_ACCESS_KEY") or None,
        log_level="warning",
    )
    return GatewayApp(settings=settings)


def install_profiler_signals(out: Path) -> None:
    """SIGUSR1 starts cProfile, SIGUSR2 stops it and dumps the stats to `out`."""
    profiler = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profiler.disable()
        partial = out.with_name(out.name + ".partial")
        profiler.dump_stats(partial)
        partial.replace(out)  # whoever waits for `out` never sees half a file

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=("gureum", "baseline", "hop"))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, help="gureum only: the platform's data dir")
    parser.add_argument("--cprofile", type=Path, help="gureum only: stats file for SIGUSR1/2")
    args = parser.parse_args(argv)
    if args.target == "gureum":
        if args.data_dir is None:
            parser.error("gureum needs --data-dir")
        app = gureum_app(args.port, args.data_dir)
        if args.cprofile is not None:
            install_profiler_signals(args.cprofile)
        config = gureum_config(app, args.port)
    elif args.target == "hop":
        config = gureum_config(HopApp(), args.port)
    else:
        config = uvicorn_config(baseline_app, args.port)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
