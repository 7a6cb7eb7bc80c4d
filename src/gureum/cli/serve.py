"""`gureum up`: serve one Gureum process with uvicorn until SIGINT/SIGTERM.

The listening socket is bound here, before anything starts, so a busy port is a clear error
(and `--port 0` picks a free one whose number the settings then carry). The endpoint URL is
written to `<data dir>/endpoint` for the CLI and SDK to find. Once the server has started, a
task prints how to reach it and, with `--demo`, deploys the demo function in process.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import shlex
import signal
import socket
from pathlib import Path
from types import FrameType

import uvicorn
from rich.console import Console
from rich.text import Text

from gureum.cli.bundle import zip_directory
from gureum.client import ENDPOINT_FILE
from gureum.control.models import FunctionConfig
from gureum.errors import ConfigurationError, GureumError, ResourceNotFound
from gureum.gateway.app import GatewayApp
from gureum.gateway.server import uvicorn_config
from gureum.iam.credentials import ROOT_CREDENTIALS_FILE
from gureum.platform import Platform
from gureum.settings import DEFAULT_DATA_DIR, Settings

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"
DEMO_FUNCTION = "hello"
DEMO_HANDLER = "hello.handler"
DEMO_PAYLOAD = '{"name": "you"}'
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, with an event set once it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()


def serve(settings: Settings, *, demo: bool, out: Console) -> None:
    """Run until a stop signal; raise ConfigurationError if the server cannot start."""
    sock = bind_socket(settings.host, settings.port)
    try:
        settings = settings.with_overrides(port=sock.getsockname()[1])
        previous_endpoint = write_endpoint_file(settings)
        app = GatewayApp(settings=settings)
        config = uvicorn_config(app, settings.host, settings.port, log_level=settings.log_level)
        server = _Server(config)

        def stop(_signal: int, _frame: FrameType | None) -> None:
            server.should_exit = True

        # uvicorn installs its own handlers while serving and re-raises the signal it caught
        # once it has shut down; these make that re-raise a no-op, so a stop exits with 0
        previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
        try:
            with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
                runner.run(_serve(server, app, sock, settings, demo, out))
        except SystemExit:
            # uvicorn exits this way when the app's lifespan start-up failed; it logged why.
            # The data dir may well belong to a server that is still running: keep its endpoint.
            restore_endpoint_file(settings, previous_endpoint)
            raise ConfigurationError("Gureum did not start; the log above says why") from None
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A bound socket for `host:port`, or ConfigurationError naming why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigurationError(
                f"port {port} on {host} is already in use (is another `gureum up` running?); "
                "choose another with --port"
            ) from None
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def write_endpoint_file(settings: Settings) -> str | None:
    """Record the endpoint in the data dir, where the CLI looks for it; return what was there."""
    path = settings.data_dir / ENDPOINT_FILE
    try:
        previous: str | None = path.read_text()
    except FileNotFoundError:
        previous = None
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    _replace_file(path, settings.endpoint + "\n", settings.data_dir)
    return previous


def restore_endpoint_file(settings: Settings, previous: str | None) -> None:
    """Put back what `write_endpoint_file` replaced."""
    path = settings.data_dir / ENDPOINT_FILE
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        _replace_file(path, previous, settings.data_dir)


def _replace_file(path: Path, text: str, directory: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as exc:
        raise ConfigurationError(f"cannot write {path}: {exc}") from exc


async def _serve(
    server: _Server,
    app: GatewayApp,
    sock: socket.socket,
    settings: Settings,
    demo: bool,
    out: Console,
) -> None:
    announcer = asyncio.create_task(_announce(server, app, settings, demo, out))
    try:
        await server.serve(sockets=[sock])
    finally:
        announcer.cancel()
        await asyncio.gather(announcer, return_exceptions=True)


async def _announce(
    server: _Server, app: GatewayApp, settings: Settings, demo: bool, out: Console
) -> None:
    await server.ready.wait()
    platform = app.platform
    assert platform is not None  # started means the lifespan opened it
    _print_banner(out, platform)
    if demo:
        try:
            config = await deploy_demo(platform)
        except GureumError as exc:
            out.print(Text(f"error: {exc.code}: could not deploy the demo: {exc.message}"))
        else:
            _print_demo(out, settings, config)
    out.print(Text("Press Ctrl-C to stop.", style="dim"))


async def deploy_demo(platform: Platform) -> FunctionConfig:
    """Create the demo function, or update its code if it exists with other code."""
    package = zip_directory(DEMO_DIR)
    account = platform.root.account_id
    try:
        current = await platform.registry.get_latest(account, DEMO_FUNCTION)
    except ResourceNotFound:
        config = FunctionConfig(
            account_id=account,
            name=DEMO_FUNCTION,
            handler=DEMO_HANDLER,
            code_sha256="",
            code_sha256_b64="",
            code_size=0,
            description="Gureum's demo function (gureum up --demo)",
        )
        return await platform.registry.create_function(config, package)
    if current.code_sha256 == hashlib.sha256(package).hexdigest():
        return current
    return await platform.registry.update_code(account, DEMO_FUNCTION, package)


def _print_banner(out: Console, platform: Platform) -> None:
    settings = platform.settings
    out.print(Text.assemble(("Gureum is up at ", "bold"), (settings.endpoint, "bold cyan")))
    out.print(Text(f"  data dir: {settings.data_dir}"))
    stored = settings.data_dir / ROOT_CREDENTIALS_FILE
    root = platform.root
    if platform.root_created:
        out.print(
            Text(
                f"Root credentials were created now. They are shown only this once "
                f"(and kept in {stored}):",
                style="bold yellow",
            )
        )
        out.print(Text(f"  export AWS_ACCESS_KEY_ID={root.access_key_id}"))
        out.print(Text(f"  export AWS_SECRET_ACCESS_KEY={root.secret_access_key}"), soft_wrap=True)
    else:
        out.print(Text(f"Root credentials: access key {root.access_key_id}, stored in {stored}"))
    if settings.data_dir != DEFAULT_DATA_DIR.expanduser():
        out.print(Text("To use it from another shell:"))
        out.print(Text(f"  export GUREUM_DATA_DIR={shlex.quote(str(settings.data_dir))}"))


def _print_demo(out: Console, settings: Settings, config: FunctionConfig) -> None:
    payload = shlex.quote(DEMO_PAYLOAD)
    out.print(Text(f"Demo function `{config.name}` is deployed. Try:"))
    out.print(Text(f"  gureum invoke {config.name} --payload {payload}"))
    out.print(
        Text(
            f"  aws lambda invoke --endpoint-url {settings.endpoint} --region {settings.region} "
            f"--function-name {config.name} --cli-binary-format raw-in-base64-out "
            f"--payload {payload} /dev/stdout"
        )
    )
