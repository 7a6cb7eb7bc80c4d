"""`Instance`: one running function instance, whatever driver started it.

This wrapper owns the rules every driver shares: the control socket and log pipe, the init
handshake, one invocation at a time, the timeout (kill the whole instance), and "dead means
no-op" — after a crash, a timeout or `close()`, the instance never runs anything again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from typing import Any, NamedTuple, cast

import msgspec

from gureum.errors import SandboxError
from gureum.runtime import protocol
from gureum.sandbox.base import InstanceSpec, Sandbox, SandboxProcess

INIT_TIMEOUT_S = 10.0  # AWS's limit for the init phase
MAX_LOG_BYTES = 1 << 20  # kept per invocation; older output is dropped with a notice
LOG_DRAIN_S = 0.2  # after a crash, how long to wait for the last log bytes
# Frame headers on the agent's side, in ~0.5 us instead of the json module's ~3 us each way
# (the shim, standard library only, uses `protocol.encode`/`decode_header`).
_HEADER_ENCODER = msgspec.json.Encoder()
_HEADER_DECODER = msgspec.json.Decoder(dict[str, Any])


def _decode_header(raw: bytes) -> dict[str, Any]:
    try:
        return _HEADER_DECODER.decode(raw)
    except msgspec.DecodeError as exc:  # also the "not an object" ValidationError
        raise protocol.ProtocolError(f"bad frame header: {exc}") from None


class InvokeOutcome(NamedTuple):
    """What became of one invocation. `payload` is the result JSON, or the error JSON."""

    status: str  # "success" | "error" (handler raised) | "timeout" | "crash"
    payload: bytes
    error_type: str | None
    log: bytes
    run_ms: float
    max_rss_kb: int


class InitFailed(Exception):
    """The handler could not be loaded; `error` is the AWS-shaped error JSON."""

    def __init__(self, error: dict[str, Any], log: bytes, init_ms: float) -> None:
        super().__init__(error.get("errorMessage", "init failed"))
        self.error = error
        self.log = log
        self.init_ms = init_ms


def _error(error_type: str, message: str, request_id: str) -> bytes:
    body = {"errorMessage": message, "errorType": error_type, "requestId": request_id}
    return json.dumps({**body, "stackTrace": []}).encode()


class _LogCollector(asyncio.Protocol):
    """Splits the instance's log pipe into per-invocation segments at the shim's end markers.

    Only a marker somebody awaits (the init marker from the start, an invocation's from just
    before it is sent) ends a segment; anything else that looks like one is the function's own
    output and stays in its log.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._dropped = 0
        self._waiters: dict[str, asyncio.Future[bytes]] = {}
        # kept: asyncio.get_running_loop() costs a getpid() system call on every call
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()
        # Awaited from the start: the marker may arrive before `Instance.start()` looks.
        self.init = self.segment("init")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        position = 0
        while True:
            start = self._buffer.find(protocol.LOG_END_MARKER, position)
            end = self._buffer.find(b"\n", start) if start >= 0 else -1
            if end < 0:
                break
            key = self._buffer[start + len(protocol.LOG_END_MARKER) : end].decode(errors="replace")
            waiter = self._waiters.pop(key, None)
            if waiter is None or waiter.done():
                position = end + 1
                continue
            segment = self._take(start)
            del self._buffer[: end + 1 - start]
            position = 0
            waiter.set_result(segment)
        if len(self._buffer) > MAX_LOG_BYTES:
            overflow = len(self._buffer) - MAX_LOG_BYTES
            del self._buffer[:overflow]
            self._dropped += overflow

    def _take(self, upto: int) -> bytes:
        # One pipe read may hold a whole segment and more, so cap here as well.
        start = max(upto - MAX_LOG_BYTES, 0)
        dropped = self._dropped + start
        segment = bytes(self._buffer[start:upto])
        del self._buffer[:upto]
        self._dropped = 0
        if dropped:
            segment = b"[gureum: %d earlier log bytes dropped]\n" % dropped + segment
        return segment

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def segment(self, key: str) -> asyncio.Future[bytes]:
        """A future for the log up to the shim's end marker for `key`; call before it can come."""
        future = self._waiters.get(key)
        if future is None or future.done():
            future = self._waiters[key] = self._loop.create_future()
        return future

    def rest(self) -> bytes:
        """Whatever arrived without an end marker (the instance died mid-invocation)."""
        return self._take(len(self._buffer))

    def drained(self, key: str) -> bytes:
        """The segment for `key` when the shim wrote no end marker because the pipe was empty
        (see `gureum.runtime.protocol`): all that arrived, after any segment a lookalike marker
        of the function's own already ended."""
        waiter = self._waiters.pop(key, None)
        earlier = b""
        if waiter is not None and waiter.done() and not waiter.cancelled():
            earlier = waiter.result()
        return earlier + self.rest()


def _expire(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _ControlChannel(asyncio.Protocol):
    """The agent's end of the control socket: whole frames from the shim, one reader at a time.

    Frames are cut out of the received bytes as they arrive and handed to the waiting
    `recv()` directly, with no stream reader and no task in between. End of stream (the
    shim exited, or `close()`) fails the waiting `recv()` with EOFError once the frames
    already received have been taken.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._frames: list[tuple[dict[str, Any], bytes]] = []
        self._error: BaseException | None = None  # EOFError at end of stream, or ProtocolError
        self._waiter: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()  # see _LogCollector

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check here
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        buffer = self._buffer
        prefix = protocol.HEADER.size
        while self._error is None and len(buffer) >= prefix:
            try:
                header_len, payload_len = protocol.decode_lengths(bytes(buffer[:prefix]))
                end = prefix + header_len + payload_len
                if len(buffer) < end:
                    break
                header = _decode_header(bytes(buffer[prefix : prefix + header_len]))
            except protocol.ProtocolError as exc:
                self._error = exc
                break
            payload = bytes(buffer[prefix + header_len : end]) if payload_len else b""
            del buffer[:end]
            self._frames.append((header, payload))
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._error is None:
            self._error = EOFError()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._frames:
            self._waiter = None
            waiter.set_result(self._frames.pop(0))
        elif self._error is not None:
            self._waiter = None
            waiter.set_exception(self._error)

    async def recv(self, timeout_s: float) -> tuple[dict[str, Any], bytes]:
        """The next frame; EOFError after end of stream, ProtocolError for a malformed frame,
        TimeoutError when none came within `timeout_s` (a plain timer on the waiter: cheaper
        than `asyncio.timeout`, and this is on every invocation's path)."""
        if self._frames:
            return self._frames.pop(0)
        if self._error is not None:
            raise self._error
        loop = self._loop
        waiter: asyncio.Future[tuple[dict[str, Any], bytes]]
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def write(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def is_closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class Instance:
    """A sandboxed instance of a function. Create with `Instance.start()` (initialised) or
    `Instance.spawn()` (init still running)."""

    def __init__(
        self,
        spec: InstanceSpec,
        process: SandboxProcess,
        control: _ControlChannel,
        logs: _LogCollector,
        log_transport: asyncio.ReadTransport,
        spawned_at: float,
    ) -> None:
        self.spec = spec
        self.process = process
        self._control = control
        self._logs = logs
        self._log_transport = log_transport
        # Exit is watched apart from the socket: a process the function started may hold the
        # socket open after the instance itself has died. One task per instance, not per
        # invocation: on exit, the control channel is ended for whoever is reading it.
        self._exited: asyncio.Future[int] = asyncio.ensure_future(process.wait())
        self._exited.add_done_callback(self._process_exited)
        self._busy = False
        self.alive = True
        self.initialised = False
        self._spawned_at = spawned_at  # perf_counter() when the agent decided to start it
        self.init_ms = 0.0
        self.init_log = b""
        self.invocations = 0
        self.last_used = time.monotonic()
        self.started_at = time.monotonic()

    @classmethod
    async def start(cls, sandbox: Sandbox, spec: InstanceSpec) -> Instance:
        """Spawn and initialise an instance; raise InitFailed or SandboxError."""
        instance = await cls.spawn(sandbox, spec)
        await instance.initialise()
        return instance

    @classmethod
    async def spawn(cls, sandbox: Sandbox, spec: InstanceSpec) -> Instance:
        """Start an instance without waiting for its init: `initialise()` waits for it, and the
        first `invoke()` may be sent before (the runtime reads it as soon as init is done, which
        saves a round trip on every cold start). Raises SandboxError."""
        loop = asyncio.get_running_loop()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_read, log_write = os.pipe()
        started = time.perf_counter()
        try:
            process = await sandbox.spawn(spec, child_sock.fileno(), log_write)
        except BaseException:
            parent_sock.close()
            os.close(log_read)
            raise
        finally:
            child_sock.close()
            os.close(log_write)
        log_transport: asyncio.ReadTransport | None = None
        try:
            log_transport, logs = await loop.connect_read_pipe(
                _LogCollector, os.fdopen(log_read, "rb", buffering=0)
            )
            _, control = await loop.create_unix_connection(_ControlChannel, sock=parent_sock)
        except BaseException:
            process.kill()
            parent_sock.close()
            if log_transport is not None:
                log_transport.close()
            raise
        return cls(spec, process, control, logs, log_transport, started)

    async def initialise(self) -> None:
        """Wait for the instance's init to finish (at once if it has); raise InitFailed, after
        which the instance is closed."""
        if self.initialised:
            return
        logs = self._logs
        try:
            header, payload = await self._recv_or_exit(INIT_TIMEOUT_S)
        except TimeoutError:
            await self._stop()
            error = {
                "errorMessage": f"Init phase exceeded {INIT_TIMEOUT_S:.0f} seconds",
                "errorType": "Runtime.InitTimeout",
                "requestId": "",
                "stackTrace": [],
            }
            raise InitFailed(error, logs.rest(), INIT_TIMEOUT_S * 1000) from None
        except (EOFError, ConnectionError, protocol.ProtocolError):
            status = await self._exit_status()
            await self._stop()
            fault_type = self.process.fault() or "Runtime.ExitError"
            if fault_type == "Runtime.OutOfMemory":
                status = "signal: killed (out of memory)"
            error = {
                "errorMessage": f"Runtime exited during init: {status}",
                "errorType": fault_type,
                "requestId": "",
                "stackTrace": [],
            }
            init_ms = (time.perf_counter() - self._spawned_at) * 1000
            raise InitFailed(error, logs.rest(), init_ms) from None
        except BaseException:
            self._kill()  # cancelled: never leave a half-started instance running
            raise
        self.init_ms = (time.perf_counter() - self._spawned_at) * 1000
        self.init_log = await self._log_segment(logs.init)
        if header.get("t") != "ready":
            await self.close()
            try:
                error = json.loads(payload)
            except ValueError:
                error = {"errorMessage": "init failed", "errorType": "Runtime.Unknown"}
            raise InitFailed(error, self.init_log, self.init_ms)
        self.initialised = True

    async def invoke(
        self,
        request_id: str,
        event: bytes,
        *,
        invoked_arn: str,
        timeout_s: float,
        client_context: dict[str, Any] | None = None,
        identity: dict[str, Any] | None = None,
    ) -> InvokeOutcome:
        """Run one invocation. Never raises for function faults: they become the outcome.

        Raises SandboxError when the instance is dead or busy, and InitFailed when it was
        sent before the instance's init finished and the init failed. If the caller is
        cancelled mid-invocation the instance is killed, since its reply could reach the next
        caller.
        """
        if not self.alive:
            raise SandboxError("instance is no longer alive")
        if self._busy:
            raise SandboxError("instance is already running an invocation")
        header: dict[str, Any] = {
            "t": "invoke",
            "id": request_id,
            "arn": invoked_arn,
            "client_context": client_context,
            "identity": identity,
        }
        # The time limit runs from now; for an invocation queued while init runs, from when
        # the runtime takes it.
        queued = not self.initialised
        if queued:
            header["timeout_ms"] = int(timeout_s * 1000)
        else:
            header["deadline"] = int((time.time() + timeout_s) * 1000)
        try:  # before the instance is marked busy: what cannot be sent leaves it as it was
            frame = protocol.frame(_HEADER_ENCODER.encode(header), event)
        except (TypeError, ValueError) as exc:  # UnicodeEncodeError: a lone surrogate
            raise SandboxError(f"invocation cannot be sent to the instance: {exc}") from None
        self._busy = True
        self.invocations += 1
        log_future = self._logs.segment(request_id)
        sent = started = time.perf_counter()
        try:
            try:
                if self._control.is_closing():
                    if queued:
                        await self.initialise()  # an init that failed says why
                    raise ConnectionResetError("the instance has exited")
                self._control.write(frame)
                if queued:
                    await self.initialise()
                    started = time.perf_counter()
                reply, payload = await self._recv_or_exit(timeout_s)
                if reply.get("t") != "result" or reply.get("id") != request_id:
                    raise protocol.ProtocolError(f"unexpected reply {reply!r}")
            except TimeoutError:
                run_ms = (time.perf_counter() - started) * 1000
                await self._stop()
                message = f"Task timed out after {timeout_s:.2f} seconds"
                return InvokeOutcome(
                    "timeout",
                    _error(
                        "Sandbox.Timedout", f"RequestId: {request_id} Error: {message}", request_id
                    ),
                    "Sandbox.Timedout",
                    self._logs.rest() + f"{message}\n".encode(),
                    run_ms,
                    0,
                )
            except (EOFError, ConnectionError, protocol.ProtocolError):
                run_ms = (time.perf_counter() - started) * 1000
                status = await self._exit_status()
                await self._stop()
                reason = (
                    "Runtime exited without providing a reason"
                    if status == "exit status 0"
                    else f"Runtime exited with error: {status}"
                )
                fault_type = self.process.fault() or "Runtime.ExitError"
                if fault_type == "Runtime.OutOfMemory":
                    reason = "Runtime exited with error: signal: killed (out of memory)"
                message = f"RequestId: {request_id} Error: {reason}"
                return InvokeOutcome(
                    "crash",
                    _error(fault_type, message, request_id),
                    fault_type,
                    self._logs.rest() + f"{fault_type}\n".encode(),
                    run_ms,
                    0,
                )
            except BaseException:
                self._kill()
                raise
            run_ms = (time.perf_counter() - started) * 1000
            reported = reply.get("ms")
            if queued and isinstance(reported, (int, float)):
                # queued during init: "ready" and the result may have come in one read, so
                # take the runtime's own measure, but never more than the agent has seen
                run_ms = max(run_ms, min(float(reported), (time.perf_counter() - sent) * 1000))
            if reply.get("drained"):
                log = self._logs.drained(request_id)
            else:
                log = await self._log_segment(log_future)
            ok = bool(reply.get("ok"))
            error_type = None
            if not ok:
                try:
                    error_type = str(json.loads(payload).get("errorType", "Unhandled"))
                except (ValueError, AttributeError):
                    error_type = "Unhandled"
            return InvokeOutcome(
                "success" if ok else "error",
                payload,
                error_type,
                log,
                run_ms,
                int(reply.get("max_rss_kb", 0)),
            )
        finally:
            self._busy = False
            self.last_used = time.monotonic()
            if not log_future.done():
                log_future.cancel()

    async def close(self) -> None:
        """Kill the instance and release its resources. Idempotent."""
        self._kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exited), 5.0)
        if not self._exited.done():
            self._exited.cancel()

    def _kill(self) -> None:
        """Kill without waiting: what is safe to do from a cancelled task. Idempotent."""
        if not self.alive:
            return
        self.alive = False
        self.process.kill()
        self._control.close()
        self._log_transport.close()

    async def _stop(self) -> None:
        """Kill, keeping the log pipe open briefly for output still in flight, then close."""
        if self.alive:
            self.process.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._logs.closed), LOG_DRAIN_S)
        await self.close()

    async def _recv_or_exit(self, timeout_s: float) -> tuple[dict[str, Any], bytes]:
        """The next frame; EOFError if the instance exits first, TimeoutError after timeout_s.

        Reads in the caller's task: no task per frame. Exit ends the wait through
        `_process_exited`, which closes the control channel once a reply written just before
        the exit has had LOG_DRAIN_S to arrive; frames already received are still read.
        """
        return await self._control.recv(timeout_s)

    def _process_exited(self, _: asyncio.Future[int]) -> None:
        if self.alive:
            asyncio.get_running_loop().call_later(LOG_DRAIN_S, self._control.close)

    async def _log_segment(self, future: asyncio.Future[bytes]) -> bytes:
        if future.done() and not future.cancelled():
            return future.result()
        try:
            # The marker is written before the reply, so it is at most a pipe read behind.
            return await asyncio.wait_for(future, 1.0)
        except TimeoutError:
            return self._logs.rest()

    async def _exit_status(self) -> str:
        try:
            code = await asyncio.wait_for(asyncio.shield(self._exited), 1.0)
        except TimeoutError:
            return "unknown"
        return f"signal: {-code}" if code < 0 else f"exit status {code}"
