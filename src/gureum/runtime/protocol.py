"""Frames between the node agent and an instance's runtime shim. Standard library only.

A frame is `>II` (header length, payload length), a JSON header, then raw payload bytes.
Events and results are already JSON bytes, so they travel as the payload untouched.

shim → agent  {"t": "ready"}                           after init (handler imported)
shim → agent  {"t": "init_error"} + error JSON           init failed; the shim exits
agent → shim  {"t": "invoke", "id", "deadline" (ms since the epoch), ...} + event bytes;
              sent before "ready", with "timeout_ms" instead (the limit starts when the shim
              takes it, after init)
shim → agent  {"t": "result", "id", "ok", "max_rss_kb"} + result bytes or error JSON; for
              an invoke sent before "ready", also "ms" (its run time, as the shim saw it);
              "drained": true when no log end marker follows (below)
agent closes the socket                                  the shim exits

After init ("init") and after each invocation (its id) the shim writes LOG_END_MARKER + key +
newline to the instance's log pipe, through its own duplicate of fd 1 so that a function that
redirects or closes its stdout cannot lose it; the agent then knows it holds the whole log.
After an invocation, if the pipe holds no unread bytes then (FIONREAD), the shim writes no
marker and its result says `"drained": true` instead: the agent has already read, and so
holds, all of that invocation's log (it reads the pipe and takes what it read in one step,
before it can see the result, which is sent after the check).
"""

from __future__ import annotations

import json
import struct
from typing import Any

HEADER = struct.Struct(">II")
MAX_HEADER = 1 << 20
MAX_PAYLOAD = 64 << 20
LOG_END_MARKER = b"\x1egureum-end "
# One encoder for every header: json.dumps with options builds a new encoder on each call.
_HEADER_ENCODER = json.JSONEncoder(separators=(",", ":"))


class ProtocolError(Exception):
    """The peer sent something that is not a frame."""


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    return frame(_HEADER_ENCODER.encode(header).encode(), payload)


def frame(raw_header: bytes, payload: bytes = b"") -> bytes:
    """A frame around a header already encoded as JSON (the agent encodes its own)."""
    return HEADER.pack(len(raw_header), len(payload)) + raw_header + payload


def decode_lengths(prefix: bytes) -> tuple[int, int]:
    header_len, payload_len = HEADER.unpack(prefix)
    if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise ProtocolError(f"frame too large: header {header_len}, payload {payload_len}")
    return header_len, payload_len


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        # decoded here, not by json.loads: a header is always UTF-8 (encode() writes ASCII),
        # and json.loads would first guess the encoding of bytes
        header = json.loads(raw.decode())
    except ValueError as exc:
        raise ProtocolError(f"bad frame header: {exc}") from None
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header
