"""A worker process of the `hop` benchmark target (bench/servers.py): the least an instance
must do per invocation, with no sandbox and no shim. Reads frames (gureum.runtime.protocol)
from the socket on the fd given as its argument, json-decodes each event, calls
`trivial_handler.handler` and sends back its JSON in a result frame."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from trivial_handler import handler

from gureum.runtime import protocol


def serve(sock: socket.socket) -> None:
    buffer = b""
    while True:
        while len(buffer) < protocol.HEADER.size:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        header_len, payload_len = protocol.decode_lengths(buffer[: protocol.HEADER.size])
        end = protocol.HEADER.size + header_len + payload_len
        while len(buffer) < end:
            chunk = sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
        header = protocol.decode_header(buffer[protocol.HEADER.size : end - payload_len])
        event = json.loads(buffer[end - payload_len : end])
        buffer = buffer[end:]
        result = json.dumps(handler(event, None)).encode()
        sock.sendall(protocol.encode({"t": "result", "id": header["id"], "ok": True}, result))


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
