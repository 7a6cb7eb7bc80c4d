"""Shared fixtures: a real Gureum server on an ephemeral port, real clients, real code packages."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
import uvicorn
from botocore.config import Config
from hypothesis import settings as hypothesis_settings

from gureum.client import Client
from gureum.gateway.app import GatewayApp
from gureum.gateway.server import uvicorn_config
from gureum.settings import Settings

T = TypeVar("T")

# Property tests check what a function returns, never how fast: hypothesis's per-example
# deadline (200 ms) failed them on a loaded machine.
hypothesis_settings.register_profile("gureum", deadline=None)
hypothesis_settings.load_profile("gureum")


def wait_for(predicate: Callable[[], T], timeout: float = 20.0) -> T:
    """Poll until `predicate()` is truthy and return that value; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)
    return found


def read_marks(directory: Path) -> list[dict[str, Any]]:
    """The JSON files test functions wrote into `directory` (skipping half-written ones)."""
    found = []
    for path in directory.glob("*.json"):
        try:
            found.append(json.loads(path.read_text()))
        except ValueError:
            continue  # being written
    return found


def make_zip(files: dict[str, str | bytes]) -> bytes:
    """A code package with the given {path: content} files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    settings: Settings
    app: GatewayApp
    server: uvicorn.Server
    thread: threading.Thread
    clients: list[Any] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return self.settings.endpoint

    @property
    def platform(self) -> Any:
        return self.app.platform

    def client(self, service: str = "lambda", **overrides: Any) -> Any:
        """A real boto3 client for this server (root keys unless overridden). Every client
        is kept and closed by `stop()`: one left to the garbage collector would finalise its
        pooled socket in whichever later test is running, and `-W error` would fail it."""
        root = self.platform.root
        client = boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.settings.region,
            aws_access_key_id=overrides.pop("aws_access_key_id", root.access_key_id),
            aws_secret_access_key=overrides.pop("aws_secret_access_key", root.secret_access_key),
            config=Config(retries={"max_attempts": 0, "mode": "standard"}, read_timeout=60),
            **overrides,
        )
        self.clients.append(client)
        return client

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run a coroutine on the server's own event loop (it lives in the server's thread)."""
        loop = self.platform.recorder._task.get_loop()
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout)

    def sdk(self) -> Client:
        """Gureum's own SDK client for this server, with the root keys."""
        root = self.platform.root
        return Client(self.endpoint, root.access_key_id, root.secret_access_key)

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        self.server.should_exit = True
        self.thread.join(timeout=30)


def start_server(settings: Settings) -> RunningServer:
    app = GatewayApp(settings=settings)
    config = uvicorn_config(app, settings.host, settings.port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    return RunningServer(settings, app, server, thread)


def make_settings(data_dir: Path, **changes: Any) -> Settings:
    base = Settings(
        data_dir=data_dir,
        port=free_port(),
        keep_alive_s=60,
        async_retry_base_s=0.05,
        async_poll_s=0.05,
        database_url=os.environ.get("GUREUM_TEST_DATABASE_URL", ""),
        # API-level suites observe functions through the host file system; the sandbox
        # suites (tests/sandbox) run the linux driver explicitly
        sandbox=os.environ.get("GUREUM_TEST_SANDBOX", "process"),
    )
    return replace(base, **changes)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers with custom settings; all are stopped at the end of the test."""
    started: list[RunningServer] = []

    def factory(**changes: Any) -> RunningServer:
        data_dir = changes.pop("data_dir", tmp_path / "data")
        running = start_server(make_settings(data_dir, **changes))
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        running.stop()


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory()


@pytest.fixture
def lam(server: RunningServer) -> Iterator[Any]:
    """A real boto3 Lambda client for the test server (root credentials), closed after the
    test: a client left to the garbage collector can finalise its pooled socket first, and
    the ResourceWarning would fail whichever test is running then."""
    client = server.client("lambda")
    yield client
    client.close()


ECHO = """
import json, os, time, logging
print("init", os.environ["AWS_LAMBDA_FUNCTION_NAME"])
COUNT = 0
def handler(event, context):
    global COUNT
    COUNT += 1
    print("event", json.dumps(event))
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("fail"):
        raise ValueError(event["fail"])
    return {"event": event, "count": COUNT, "version": context.function_version,
            "arn": context.invoked_function_arn, "request_id": context.aws_request_id,
            "pid": os.getpid()}
"""


@pytest.fixture
def echo_zip() -> bytes:
    return make_zip({"app.py": ECHO})


POSTGRES_URL = os.environ.get("GUREUM_TEST_POSTGRES_URL", "")


async def _reset_postgres(url: str) -> None:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        await conn.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every metadata-store backend: SQLite always; PostgreSQL when GUREUM_TEST_POSTGRES_URL
    is set (`.ci/run` sets it), emptied before the test."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'meta.db'}"
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need GUREUM_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://…)")
    asyncio.run(_reset_postgres(POSTGRES_URL))
    return POSTGRES_URL
