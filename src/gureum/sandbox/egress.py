"""The egress proxy for sandboxes with network `internet`: the only way out of their empty
network namespace.

One proxy per distinct allow-list listens on a Unix socket that is bind-mounted into the
sandboxes using that list; inside, a forwarder offers it as `HTTP(S)_PROXY`. It speaks HTTP
CONNECT (for TLS) and absolute-form HTTP. A host is allowed when it matches the list exactly
or by a `*.suffix` pattern, optionally with `:port`; with an empty list every host is allowed
whose addresses are all public — loopback, private, link-local and other non-global
addresses are only reachable when listed explicitly, so a function cannot use the proxy to
reach the host's own services.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
MAX_HEAD = 64 * 1024


def _matches(pattern: str, host: str, port: int) -> bool:
    name, _, wanted_port = pattern.partition(":") if pattern.count(":") == 1 else (pattern, "", "")
    if wanted_port and wanted_port != str(port):
        return False
    name = name.lower()
    if name.startswith("*."):
        return host.endswith(name[1:])
    return host == name


class AllowList:
    """Which (host, port) a sandbox may reach through the proxy."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(sorted({p.strip().lower() for p in patterns if p.strip()}))

    @property
    def key(self) -> str:
        return hashlib.sha256("\n".join(self.patterns).encode()).hexdigest()[:16]

    def listed(self, host: str, port: int) -> bool:
        return any(_matches(p, host.lower(), port) for p in self.patterns)

    async def resolve(self, host: str, port: int) -> list[str] | None:
        """The addresses to connect to, or None when the target is not allowed."""
        listed = self.listed(host, port)
        if self.patterns and not listed:
            return None
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            return []
        addresses = [str(info[4][0]) for info in infos]
        if not listed and not all(ipaddress.ip_address(a).is_global for a in addresses):
            return None  # only explicitly listed hosts may be private or loopback
        return addresses


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("request head too large")
    return head


async def _pump(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            target.write(data)
            await target.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            target.write_eof()


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy bytes both ways until both directions have ended; the upstream connection is
    closed however this ends (also when cancelled). The caller closes its own `writer`."""
    try:
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
    finally:
        up_writer.close()


class Handlers:
    """The connection handlers a server is running, so that closing it can end them: a
    server's own `close()` stops accepting but leaves open connections running (Python 3.11),
    and at shutdown they would be destroyed pending with their transports open."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around a handler's body: it is cancelled by `cancel()` until it ends."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    async def cancel(self) -> None:
        """Cancel every running handler and wait for them (their cleanup included)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class EgressProxy:
    """A proxy for one allow-list on a Unix socket. `close()` is idempotent."""

    def __init__(self, allow: AllowList, path: Path) -> None:
        self.allow = allow
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._handlers = Handlers()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        os.chmod(self.path, 0o666)  # sandboxes run as their own uids

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._handlers.running():
            try:
                await self._relay(reader, writer)
            except (ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
                pass
            finally:
                writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader)
        request_line, _, rest = head.partition(b"\r\n")
        method, target, version = request_line.decode("latin-1").split(" ", 2)
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            port = int(port_text)
            forward = b""
        else:
            url = urlsplit(target)
            if url.scheme != "http" or not url.hostname:
                await self._refuse(writer, version, 400, "absolute http:// URL required")
                return
            host, port = url.hostname, url.port or 80
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            forward = f"{method} {path} {version}\r\n".encode("latin-1") + rest
        host = host.strip("[]")
        addresses = await self.allow.resolve(host, port)
        if addresses is None:
            log.info("egress refused: %s:%d is not allowed", host, port)
            await self._refuse(writer, version, 403, f"{host}:{port} is not on the allow-list")
            return
        upstream = None
        for address in addresses:
            with contextlib.suppress(OSError):
                upstream = await asyncio.wait_for(asyncio.open_connection(address, port), 10)
                break
        if upstream is None:
            await self._refuse(writer, version, 502, f"cannot connect to {host}:{port}")
            return
        up_reader, up_writer = upstream
        if method == "CONNECT":
            writer.write(f"{version} 200 Connection established\r\n\r\n".encode("latin-1"))
        else:
            up_writer.write(forward)
        await writer.drain()
        await splice(reader, writer, up_reader, up_writer)

    @staticmethod
    async def _refuse(
        writer: asyncio.StreamWriter, version: str, status: int, message: str
    ) -> None:
        reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
        body = f"gureum egress: {message}\n".encode()
        writer.write(
            f"{version} {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            + body
        )
        await writer.drain()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._handlers.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
