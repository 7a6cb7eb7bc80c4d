"""Authenticate ASGI requests with SigV4 (header or presigned query)."""

from __future__ import annotations

from starlette.types import Scope

from gureum.iam.sigv4 import Identity, SecretLookup, SignedRequest, verify


def signed_request(scope: Scope, body: bytes) -> SignedRequest:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    raw_path = scope.get("raw_path") or scope["path"].encode()
    return SignedRequest(
        method=scope["method"],
        raw_path=raw_path.decode("latin-1").split("?", 1)[0],
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers=headers,
        body=body,
    )


def authenticate(scope: Scope, body: bytes, lookup: SecretLookup) -> Identity:
    """Verify the request's signature; raise AuthError (403) when it does not hold."""
    return verify(signed_request(scope, body), lookup)
