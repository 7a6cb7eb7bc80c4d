"""`build_event`'s JSON: the json module's compact, UTF-8-as-is form of the event, byte for
byte (floats, which only a Lambda authorizer's context can hold, are written in their shortest
form, e.g. 1e+16 for json's 1e16: the same value)."""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from gureum.control.routes import Api
from gureum.gateway import http_event
from gureum.gateway.http_event import RequestFacts, build_event, clf_time

API = Api(api_id="a1b2c3d4e5", account_id="123456789012", name="shop")
# what the gateway puts in an event: latin-1 header values, decoded query/path text, UTF-8 bodies
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)  # a Lambda authorizer's context


@given(
    headers=st.dictionaries(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True), TEXT),
    path_params=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), TEXT),
    body=TEXT,
    authorizer=st.none() | st.dictionaries(TEXT, TEXT | st.integers() | st.booleans() | FLOATS),
)
def test_event_bytes_match_the_json_module(
    headers: dict[str, str],
    path_params: dict[str, str],
    body: str,
    authorizer: dict[str, object] | None,
) -> None:
    facts = RequestFacts(
        request_id="01a24ef1-deda-74d4-8928-2cc1df988d65",
        method="POST",
        raw_path="/caf%C3%A9/\u00e9",
        raw_query="q=%E2%82%AC&q=2&x",
        headers={**headers, "content-type": "text/plain; charset=utf-8"},
        source_ip="127.0.0.1",
        protocol="HTTP/1.1",
        route_key="POST /{proxy+}",
        path_params=path_params,
        received_at=1_796_000_000.25,
    )
    raw = build_event(API, facts, API.account_id, body.encode(), authorizer)
    reference = _with_json_module(
        lambda: build_event(API, facts, API.account_id, body.encode(), authorizer)
    )
    event = json.loads(raw)
    assert event == json.loads(reference)
    if not any(isinstance(v, float) for v in (authorizer or {}).values()):
        assert raw == reference
    assert event["body"] == body if body else "body" not in event
    assert event["queryStringParameters"] == {"q": "\u20ac,2", "x": ""}
    assert event["requestContext"]["time"] == clf_time(facts.received_at)
    assert event["requestContext"]["timeEpoch"] == 1_796_000_000_250


class _JsonModule:
    @staticmethod
    def encode(event: object) -> bytes:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def _with_json_module(build: Callable[[], bytes]) -> bytes:
    """What `build()` gives with the encoder `build_event` used before msgspec."""
    encoder = http_event._EVENT_ENCODER
    http_event._EVENT_ENCODER = _JsonModule()  # type: ignore[assignment]
    try:
        return build()
    finally:
        http_event._EVENT_ENCODER = encoder


def test_clf_time_is_per_second() -> None:
    assert clf_time(1_796_000_000.999) == clf_time(1_796_000_000.0) == "30/Nov/2026:00:53:20 +0000"
    assert clf_time(1_796_000_001.0) == "30/Nov/2026:00:53:21 +0000"


def test_every_context_identity_source_has_a_reader() -> None:
    # routes.py accepts the names, http_event.py reads them: a name without a reader would
    # answer its route's every request 500
    from gureum.control import routes

    assert set(http_event.CONTEXT_VARIABLES) == set(routes.CONTEXT_IDENTITY_VARIABLES)
