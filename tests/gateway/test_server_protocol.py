"""`gureum.gateway.server`: small writes of one callback leave as one, in order, and large ones
are never held or copied."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import uvicorn

from gureum.gateway.server import JOIN_LIMIT, _JoiningTransport, uvicorn_config


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


def joined(body: Any) -> tuple[RecordingTransport, Any]:
    async def main() -> tuple[RecordingTransport, Any]:
        inner = RecordingTransport()
        transport = _JoiningTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
        result = body(inner, transport)
        await asyncio.sleep(0)
        return inner, result

    return asyncio.run(main())


def test_small_writes_of_one_callback_leave_as_one_write() -> None:
    def body(inner: RecordingTransport, transport: _JoiningTransport) -> int:
        transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
        transport.write(bytearray(b"body"))
        assert inner.writes == []  # held until the callback ends
        return transport.get_write_buffer_size()

    inner, buffered = joined(body)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    assert buffered == 7 + 23


def test_a_large_write_flushes_what_is_pending_first_and_is_not_copied() -> None:
    large = b"x" * JOIN_LIMIT

    def body(inner: RecordingTransport, transport: _JoiningTransport) -> None:
        transport.write(b"head")
        transport.write(large)
        transport.write(b"tail")

    inner, _ = joined(body)
    assert inner.writes == [b"head", large, b"tail"]
    assert inner.writes[1] is large


def test_close_sends_pending_bytes_and_abort_drops_them() -> None:
    def closing(inner: RecordingTransport, transport: _JoiningTransport) -> None:
        transport.write(b"last words")
        transport.close()

    inner, _ = joined(closing)
    assert inner.writes == [b"last words"] and inner.closed

    def aborting(inner: RecordingTransport, transport: _JoiningTransport) -> str:
        transport.write(b"never sent")
        transport.abort()
        peer: str = transport.get_extra_info("peername")[0]  # delegated
        return peer

    inner, peer = joined(aborting)
    assert inner.writes == [] and inner.aborted
    assert peer == "127.0.0.1"


def test_a_real_server_answers_small_and_large_bodies_on_one_connection() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b"x" * (3 * JOIN_LIMIT) if scope["path"] == "/large" else b"small"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    async def main() -> list[int]:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
            await asyncio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                sizes = []
                for path in ("/small", "/large", "/small"):
                    response = await client.get(path)
                    assert response.status_code == 200
                    sizes.append(len(response.content))
                return sizes
        finally:
            server.should_exit = True
            await task

    assert asyncio.run(main()) == [5, 3 * JOIN_LIMIT, 5]
