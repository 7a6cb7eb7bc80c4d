"""How Gureum runs under uvicorn: `uvicorn_config` is the one configuration that `gureum up`,
the tests' servers and the benchmarks share.

uvicorn writes a response's head and body with one `transport.write` each, which on a plain
socket is one `send` system call each, and on loopback each call runs the receiver's TCP input
and wakes it (in a VM, wakeups of another vCPU are costly). `HttpProtocol` hands uvicorn a
transport that joins the writes made within one event-loop callback (a handler's head and body,
sent without awaiting anything in between) and sends them once, at the end of that callback.
Large writes (streamed object bodies) are never copied: they flush what is pending and go
straight through.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Writes at least this large are sent at once (after anything pending), never joined.
JOIN_LIMIT = 16 * 1024


class _JoiningTransport:
    """A transport that joins the small writes of one event-loop callback into one; every
    other call goes to the real transport (after pending bytes where order matters)."""

    __slots__ = ("_flush_scheduled", "_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._flush_scheduled = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if len(data) >= JOIN_LIMIT:
            self.flush()
            self._transport.write(data)
            return
        self._pending.append(bytes(data))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return  # the peer is gone; asyncio would drop (and warn about) these writes too
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending = []
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading, set_protocol, ...
        return getattr(self._transport, name)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol over a `_JoiningTransport`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        joining = _JoiningTransport(transport, self.loop)  # type: ignore[arg-type]
        super().connection_made(joining)  # type: ignore[arg-type]


def uvicorn_config(app: Any, host: str, port: int, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for serving `app`: uvloop when installed, `HttpProtocol`,
    lifespan on; `options` go to uvicorn.Config as they are (log_level, access_log, ...)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=HttpProtocol,
        lifespan="on",
        **options,
    )
