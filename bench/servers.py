"""The two servers `bench/invoke.py` compares, each started as its own process.

    python3 bench/servers.py gureum --port P --data-dir DIR [--cprofile OUT.prof]
    python3 bench/servers.py baseline --port P

Both run uvicorn with one worker, uvloop when it is importable, httptools, log level warning,
no access log: `baseline` as plain uvicorn (`uvicorn_config`), `gureum` as `gureum up` runs it
(`gureum_config`: uvicorn with Gureum's HttpProtocol). `gureum` serves `GatewayApp` with
settings built here (root credentials from GUREUM_ROOT_ACCESS_KEY_ID / _SECRET_ACCESS_KEY, as
the CLI would take them); `baseline` is a bare ASGI app that json-decodes the body, calls
`trivial_handler.handler` in-process and returns its JSON — the floor Gureum is measured against.

With `--cprofile`, SIGUSR1 starts cProfile on the event-loop thread and SIGUSR2 stops it and
writes the stats, so a profile covers exactly one load run and nothing of start-up.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trivial_handler import handler

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
HTTP = "httptools"


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
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    event = json.loads(body) if body else {}
    result = json.dumps(handler(event, None)).encode()
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
    parser.add_argument("target", choices=("gureum", "baseline"))
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
    else:
        config = uvicorn_config(baseline_app, args.port)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
