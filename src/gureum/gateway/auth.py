"""Authenticate ASGI requests with SigV4 (header or presigned query)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

from starlette.types import Scope

from gureum.iam.sigv4 import Identity, SecretLookup, SignedRequest, VerificationCache, verify


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


_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([^/,\s]+)/aws4_request")
_QUERY_SCOPE = re.compile(
    r"(?:^|&)X-Amz-Credential=[^&/]+(?:/|%2F)\d{8}(?:/|%2F)[^&/%]+(?:/|%2F)([^&/%]+)"
)


def claimed_service(scope: Scope) -> str | None:
    """The service named in the request's SigV4 credential scope (not yet verified). A
    request signed with S3's old SigV2 (`Authorization: AWS …`, or a presigned URL with
    `AWSAccessKeyId` and `Signature`: what older clients and `aws s3 presign` make) is S3's,
    whose verification then refuses it with an S3 error, not the user routes' 404."""
    for name, value in scope["headers"]:
        if name.lower() == b"authorization":
            text = value.decode("latin-1")
            match = _SCOPE.search(text)
            if match:
                return match.group(1)
            return "s3" if text.startswith("AWS ") else None
    raw_query: bytes = scope.get("query_string", b"")
    if not raw_query:  # most requests: nothing to parse
        return None
    query = parse_qs(raw_query.decode("latin-1"))
    parts = query.get("X-Amz-Credential", [""])[0].split("/")
    if len(parts) == 5:
        return parts[3]
    return "s3" if "AWSAccessKeyId" in query and "Signature" in query else None


def authenticate(
    scope: Scope,
    body: bytes,
    lookup: SecretLookup,
    *,
    streaming: bool = False,
    cache: VerificationCache | None = None,
) -> Identity:
    """Verify the request's signature; raise AuthError (403) when it does not hold.

    `streaming`: see `gureum.iam.sigv4.verify` (the body is checked later, by the service).
    `cache`: remembers verified requests and signing keys (`gureum.iam.sigv4.VerificationCache`).
    """
    return verify(signed_request(scope, body), lookup, streaming=streaming, cache=cache)
