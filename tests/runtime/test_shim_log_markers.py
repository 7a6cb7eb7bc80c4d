"""The shim's log end markers, spoken to directly over its control socket and log pipe: a marker
after an invocation only while the pipe holds output the agent has not read, else a result
that says `drained`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gureum.runtime
from gureum.runtime import protocol

BOOTSTRAP = Path(gureum.runtime.__file__).parent / "bootstrap.py"
HANDLER = """
def handler(event, context):
    if "say" in event:
        print(event["say"])
    return event
"""


class Shim:
    def __init__(self, sock: socket.socket, log: int) -> None:
        self.sock = sock
        self.log = log

    def recv(self) -> tuple[dict[str, Any], bytes]:
        prefix = self._exactly(protocol.HEADER.size)
        header_len, payload_len = protocol.decode_lengths(prefix)
        header = protocol.decode_header(self._exactly(header_len))
        return header, self._exactly(payload_len)

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            assert chunk, "the shim closed its socket"
            data += chunk
        return data

    def invoke(self, request_id: str, event: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        header = {
            "t": "invoke",
            "id": request_id,
            "arn": "arn:aws:lambda:us-east-1:123456789012:function:fn",
            "deadline": int((time.time() + 10) * 1000),
        }
        self.sock.sendall(protocol.encode(header, json.dumps(event).encode()))
        reply, payload = self.recv()
        assert reply["t"] == "result" and reply["id"] == request_id and reply["ok"]
        return reply, json.loads(payload)

    def unread_log(self) -> bytes:
        data = b""
        while True:
            try:
                chunk = os.read(self.log, 65536)
            except BlockingIOError:
                return data
            data += chunk


@pytest.fixture
def shim(tmp_path: Path) -> Iterator[Shim]:
    (tmp_path / "app.py").write_text(HANDLER)
    ours, theirs = socket.socketpair()
    log_read, log_write = os.pipe()
    os.set_blocking(log_read, False)
    env = {"_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": str(tmp_path), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", str(BOOTSTRAP), "--control-fd", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=log_write,
        stderr=log_write,
        env=env,
    )
    theirs.close()
    os.close(log_write)
    ours.settimeout(30)
    try:
        shim = Shim(ours, log_read)
        ready, _ = shim.recv()
        assert ready == {"t": "ready"}
        assert shim.unread_log() == protocol.LOG_END_MARKER + b"init\n"
        yield shim
    finally:
        ours.close()
        process.wait(timeout=10)
        os.close(log_read)


def test_a_silent_invocation_writes_no_marker_and_says_drained(shim: Shim) -> None:
    for n in range(3):
        reply, result = shim.invoke(f"quiet-{n}", {"n": n})
        assert result == {"n": n}
        assert reply.get("drained") is True
        assert shim.unread_log() == b""


def test_output_the_agent_has_not_read_is_followed_by_the_marker(shim: Shim) -> None:
    reply, _ = shim.invoke("loud", {"say": "hello"})
    assert "drained" not in reply
    assert shim.unread_log() == b"hello\n" + protocol.LOG_END_MARKER + b"loud\n"

    # read before the next invocation ends: nothing is left unread, so no marker follows
    reply, _ = shim.invoke("quiet", {})
    assert reply.get("drained") is True
    assert shim.unread_log() == b""
