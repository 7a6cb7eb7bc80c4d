"""Server-side verification of AWS Signature Version 4, header and presigned-URL forms.

The expected signature is computed by botocore's own signer, fed with exactly what the client
said it signed (its SignedHeaders, the raw path and query as received, its X-Amz-Date), so the
canonicalisation is byte-for-byte the one boto3 used. Only the few things botocore cannot know
on the server side (which headers were signed, the payload hash) are supplied by a small
`SigV4Auth` subclass.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Protocol
from urllib.parse import quote, unquote, unquote_to_bytes

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.compat import HTTPHeaders
from botocore.credentials import Credentials
from botocore.utils import normalize_url_path

from gureum.errors import AuthError

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_PRESIGN_EXPIRES_S = 7 * 24 * 3600

_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_TIMESTAMP_RE = re.compile(r"\d{8}T\d{6}Z")
_SHA256_HEX_RE = re.compile(r"[0-9a-f]{64}")
# what may appear in a raw request path: RFC 3986 pchar, '/' and percent escapes
_RAW_PATH_RE = re.compile(r"/[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_QUERY_AUTH_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Signature")
_PRESIGN_REQUIRED = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Signature",
    "X-Amz-Date",
    "X-Amz-SignedHeaders",
    "X-Amz-Expires",
)
_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@dataclass(frozen=True)
class SignedRequest:
    """An incoming HTTP request as it arrived on the wire, before any decoding."""

    method: str
    raw_path: str  # percent-encoded path exactly as sent, e.g. '/2015-03-31/functions/f%3A1/x'
    query_string: str  # raw query string without '?'
    headers: Mapping[str, str]  # lower-case names -> values (multi-valued joined with ',')
    body: bytes


@dataclass(frozen=True)
class Identity:
    """Who signed a request that verified, and the scope they signed it for."""

    access_key_id: str
    account_id: str
    principal: str  # e.g. 'root' or 'function:<name>'
    region: str
    service: str


class SecretLookup(Protocol):
    """Finds the secret behind an access key id.

    Returns `(secret_access_key, account_id, principal)`. Raises `AuthError` for a key it does
    not know (code 'UnrecognizedClientException') or a session token that has expired
    ('ExpiredTokenException'); `verify` lets that error through unchanged. `session_token` is
    the request's X-Amz-Security-Token (header or query), None when it carried none.
    """

    def __call__(self, access_key_id: str, session_token: str | None) -> tuple[str, str, str]: ...


@dataclass(frozen=True)
class _Claim:
    """What the client's Authorization header or presigned query says it signed."""

    access_key_id: str
    scope_date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    timestamp: str  # the signing time, in X-Amz-Date form
    session_token: str | None
    expires_s: int | None  # presigned URLs only
    canonical_query: str  # normalised query the client signed (X-Amz-Signature left out)


def verify(
    request: SignedRequest,
    lookup: SecretLookup,
    *,
    now: datetime | None = None,
    max_skew_s: int = 900,
) -> Identity:
    """Check the request's SigV4 signature and return who signed it; raise AuthError if not.

    Checks run cheapest first: shape of the auth data, the path (dot segments and '//' are
    refused, see `_check_path`), clock skew / presign expiry, the key (via `lookup`, whose
    AuthError passes through), the signature, and last that the body matches a declared
    x-amz-content-sha256. A naive `now` is taken as UTC.
    """
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    claim = _parse_claim(request)
    _check_path(request.raw_path)
    _check_time(claim, now, max_skew_s)
    secret, account_id, principal = lookup(claim.access_key_id, claim.session_token)
    expected = [
        _expected_signature(request, claim, secret, payload_hash)
        for payload_hash in _payload_hash_candidates(request, presigned=claim.expires_s is not None)
    ]
    given = claim.signature.encode()
    # evaluate every candidate so timing does not reveal which one (if any) matched
    matches = [hmac.compare_digest(given, candidate.encode()) for candidate in expected]
    if not any(matches):
        raise AuthError(_SIGNATURE_MISMATCH, code="InvalidSignatureException")
    _check_payload(request)
    return Identity(
        access_key_id=claim.access_key_id,
        account_id=account_id,
        principal=principal,
        region=claim.region,
        service=claim.service,
    )


# -- parsing -------------------------------------------------------------------------------------


def _parse_query(query_string: str) -> list[tuple[str, str]]:
    """Split a raw query into (raw key, raw value) pairs, dropping empty pieces."""
    pairs = []
    for piece in query_string.split("&"):
        if piece:
            key, _, value = piece.partition("=")
            pairs.append((key, value))
    return pairs


def _canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    """Re-encode every key and value the way AWS does (RFC 3986, '%20' for space).

    For the already strictly encoded queries botocore sends this is the identity; for clients
    that leave e.g. ':' unencoded it yields the form their SDK signed. botocore sorts it.
    """

    def encode(text: str) -> str:
        return quote(unquote_to_bytes(text), safe="-_.~")

    return "&".join(f"{encode(key)}={encode(value)}" for key, value in pairs)


def _parse_claim(request: SignedRequest) -> _Claim:
    pairs = _parse_query(request.query_string)
    authorization = request.headers.get("authorization")
    presigned = any(unquote(key) in _QUERY_AUTH_PARAMS for key, _ in pairs)
    if authorization is None and not presigned:
        raise AuthError("Missing Authentication Token", code="MissingAuthenticationTokenException")
    if authorization is not None and presigned:
        raise _incomplete(
            "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter "
            "or the Authorization header should be specified"
        )
    if authorization is not None:
        return _parse_header_claim(request, authorization, pairs)
    return _parse_query_claim(pairs)


def _parse_header_claim(
    request: SignedRequest, authorization: str, pairs: Sequence[tuple[str, str]]
) -> _Claim:
    algorithm, _, rest = authorization.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise _incomplete(f"Unsupported authorization type; only {ALGORITHM} is accepted")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value.strip()
    problems = [
        f"Authorization header requires '{name}' parameter."
        for name in ("Credential", "Signature", "SignedHeaders")
        if not fields.get(name)
    ]
    timestamp = request.headers.get("x-amz-date") or _from_http_date(request.headers.get("date"))
    if timestamp is None:
        problems.append(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header."
        )
    if problems:
        raise _incomplete(" ".join(problems))
    assert timestamp is not None
    access_key_id, scope_date, region, service = _parse_credential(fields["Credential"])
    return _Claim(
        access_key_id=access_key_id,
        scope_date=scope_date,
        region=region,
        service=service,
        signed_headers=_parse_signed_headers(fields["SignedHeaders"]),
        signature=fields["Signature"],
        timestamp=_check_timestamp(timestamp),
        session_token=request.headers.get("x-amz-security-token"),
        expires_s=None,
        canonical_query=_canonical_query(pairs),
    )


def _parse_query_claim(pairs: Sequence[tuple[str, str]]) -> _Claim:
    params: dict[str, str] = {}
    for key, value in pairs:
        name = unquote(key)
        if name.startswith("X-Amz-"):
            if name in params:
                raise _incomplete(f"Query parameter '{name}' must not be repeated")
            params[name] = unquote(value)
    if any(not params.get(name) for name in _PRESIGN_REQUIRED):
        raise _incomplete(
            "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', "
            "'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders', and 'X-Amz-Expires'. "
            "Re-examine the query-string parameters."
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise _incomplete(f"X-Amz-Algorithm only supports '{ALGORITHM}'")
    raw_expires = params["X-Amz-Expires"]
    if not raw_expires.isdigit() or not 1 <= int(raw_expires) <= MAX_PRESIGN_EXPIRES_S:
        raise _incomplete(
            f"X-Amz-Expires must be a whole number of seconds between 1 and "
            f"{MAX_PRESIGN_EXPIRES_S}, got '{raw_expires}'"
        )
    access_key_id, scope_date, region, service = _parse_credential(params["X-Amz-Credential"])
    signed = [(k, v) for k, v in pairs if unquote(k) != "X-Amz-Signature"]
    return _Claim(
        access_key_id=access_key_id,
        scope_date=scope_date,
        region=region,
        service=service,
        signed_headers=_parse_signed_headers(params["X-Amz-SignedHeaders"]),
        signature=params["X-Amz-Signature"],
        timestamp=_check_timestamp(params["X-Amz-Date"]),
        session_token=params.get("X-Amz-Security-Token"),
        expires_s=int(raw_expires),
        canonical_query=_canonical_query(signed),
    )


def _parse_credential(credential: str) -> tuple[str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise _incomplete(
            "Credential must have the form <access key id>/<YYYYMMDD>/<region>/<service>/"
            f"aws4_request, got '{credential}'"
        )
    access_key_id, scope_date, region, service, terminator = parts
    if terminator != "aws4_request":
        raise _incomplete(
            f"Credential should be scoped with a valid terminator: 'aws4_request', "
            f"not '{terminator}'."
        )
    return access_key_id, scope_date, region, service


def _parse_signed_headers(value: str) -> tuple[str, ...]:
    names = tuple(name.strip().lower() for name in value.split(";"))
    if "host" not in names:
        raise _incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization."
        )
    return names


def _check_timestamp(timestamp: str) -> str:
    if not _TIMESTAMP_RE.fullmatch(timestamp):
        raise _incomplete(
            f"Date must be in ISO-8601 'basic format'. Got '{timestamp}'. "
            "See http://en.wikipedia.org/wiki/ISO_8601"
        )
    try:
        datetime.strptime(timestamp, _TIMESTAMP_FORMAT)
    except ValueError:
        raise _incomplete(f"Date '{timestamp}' is not a valid date") from None
    return timestamp


def _from_http_date(value: str | None) -> str | None:
    """Turn an RFC 7231 Date header into X-Amz-Date form (botocore signs with it if present)."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def _incomplete(message: str) -> AuthError:
    return AuthError(message, code="IncompleteSignatureException")


# -- checks --------------------------------------------------------------------------------------


def _check_time(claim: _Claim, now: datetime, max_skew_s: int) -> None:
    if claim.scope_date != claim.timestamp[:8]:
        raise AuthError(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{claim.scope_date}' != '{claim.timestamp[:8]}', "
            f"from '{claim.timestamp}'.",
            code="InvalidSignatureException",
        )
    signed_at = datetime.strptime(claim.timestamp, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    skew = timedelta(seconds=max_skew_s)
    if signed_at > now + skew:
        raise AuthError(
            f"Signature not yet current: {claim.timestamp} is still later than "
            f"{_fmt(now + skew)} ({_fmt(now)} + {_window(max_skew_s)}.)",
            code="InvalidSignatureException",
        )
    window_s = max_skew_s if claim.expires_s is None else claim.expires_s
    if signed_at < now - timedelta(seconds=window_s):
        raise AuthError(
            f"Signature expired: {claim.timestamp} is now earlier than "
            f"{_fmt(now - timedelta(seconds=window_s))} ({_fmt(now)} - {_window(window_s)}.)",
            code="InvalidSignatureException",
        )


def _check_path(raw_path: str) -> None:
    # SigV4 signs the path after dot-segment removal and '//' folding, so '/a/x/../b' would
    # verify with a signature made for '/a/b' yet be routed as sent; accept only paths that
    # are already in the form that was signed
    if not _RAW_PATH_RE.fullmatch(raw_path) or normalize_url_path(raw_path) != raw_path:
        raise AuthError(
            "The request path must be absolute, percent-encoded, and free of empty, "
            "'.' and '..' segments.",
            code="InvalidSignatureException",
        )


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def _window(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} sec"


def _payload_hash_candidates(request: SignedRequest, *, presigned: bool) -> list[str]:
    declared = request.headers.get("x-amz-content-sha256")
    if declared is not None:
        return [declared]
    body_hash = hashlib.sha256(request.body).hexdigest()
    # presigned URLs: S3-style signers use UNSIGNED-PAYLOAD, generic SigV4QueryAuth hashes the
    # body; a signature over one cannot be replayed as the other, so accepting both is safe
    return [UNSIGNED_PAYLOAD, body_hash] if presigned else [body_hash]


def _check_payload(request: SignedRequest) -> None:
    declared = request.headers.get("x-amz-content-sha256")
    if declared is None or declared == UNSIGNED_PAYLOAD or declared.startswith("STREAMING-"):
        # STREAMING-* bodies are aws-chunked; their chunk signatures are the caller's business
        return
    if not _SHA256_HEX_RE.fullmatch(declared):
        raise AuthError(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-..., "
            "or a valid sha256 value.",
            code="InvalidArgument",
        )
    if not hmac.compare_digest(declared, hashlib.sha256(request.body).hexdigest()):
        raise AuthError(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            code="XAmzContentSHA256Mismatch",
        )


# -- signing -------------------------------------------------------------------------------------


# botocore-stubs types botocore; without them SigV4Auth is Any and subclassing it is flagged
class _ClientClaimSigner(SigV4Auth):  # type: ignore[misc, unused-ignore]
    """botocore's signer, told which headers and payload hash the client signed."""

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        region: str,
        signed_headers: HTTPHeaders,
        payload_hash: str,
    ) -> None:
        super().__init__(credentials, service, region)
        self._signed_headers = signed_headers
        self._payload_hash = payload_hash

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed_headers

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash


def _expected_signature(
    request: SignedRequest, claim: _Claim, secret: str, payload_hash: str
) -> str:
    headers = HTTPHeaders()
    for name in claim.signed_headers:
        value = request.headers.get(name)
        if value is None:
            # the client signed a header we never received: it cannot verify
            raise AuthError(_SIGNATURE_MISMATCH, code="InvalidSignatureException")
        headers[name] = value
    url = "http://gureum.invalid" + request.raw_path  # botocore wants a whole URL
    if claim.canonical_query:
        url += "?" + claim.canonical_query
    # no headers on the AWSRequest itself, so botocore asks `payload()` for the hash
    aws_request = AWSRequest(method=request.method.upper(), url=url)
    aws_request.context["timestamp"] = claim.timestamp
    signer = _ClientClaimSigner(
        Credentials(claim.access_key_id, secret, claim.session_token),
        claim.service,
        claim.region,
        headers,
        payload_hash,
    )
    canonical_request = signer.canonical_request(aws_request)
    string_to_sign = signer.string_to_sign(aws_request, canonical_request)
    return str(signer.signature(string_to_sign, aws_request))
