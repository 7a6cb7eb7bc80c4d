"""Server-side verification of AWS Signature Version 4, header and presigned-URL forms.

The expected signature is computed by botocore's own signer, fed with exactly what the client
said it signed (its SignedHeaders, the raw path and query as received, its X-Amz-Date), so the
canonicalisation is byte-for-byte the one boto3 used. Only the few things botocore cannot know
on the server side (which headers were signed, the payload hash) are supplied by a small
`SigV4Auth` subclass.

A `VerificationCache` (optional) remembers derived signing keys and requests that verified, so
that a request already verified is accepted again without recomputing its signature — but only
after the cheap checks (shape, path, clock) have passed again, and only if every input of the
signature is identical and the key still resolves to the same secret.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
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
MAX_VERIFIED_REQUESTS = 4096
MAX_PARSED_CLAIMS = 4096
MAX_SIGNING_KEYS = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
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
    # the declared x-amz-content-sha256 (UNSIGNED-PAYLOAD for presigned URLs) when verified with
    # `streaming=True`: the caller must then check the body against it while reading it
    payload_hash: str | None = None


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
    signed_at_s: int  # the same, in seconds since the epoch
    session_token: str | None
    expires_s: int | None  # presigned URLs only
    canonical_query: str  # normalised query the client signed (X-Amz-Signature left out)


class VerificationCache:
    """Memo for `verify`: parsed claims, derived signing keys, and a bounded LRU of requests that
    verified.

    A verified request is keyed on every input of its signature: the raw Authorization header,
    X-Amz-Date / Date, X-Amz-Security-Token and query (which fix the parsed claim: key id,
    scope, signed header names, signature, timestamp, presign expiry), the method and raw path,
    the signed headers' values, the declared x-amz-content-sha256 and the body's hash, together
    with the secret, account and principal the key resolved to. A request differing in anything
    signed therefore never hits. A hit still goes through the path and clock checks and the key
    lookup first, so expiry, expired session tokens and unknown keys are enforced exactly as
    without the cache. Parsed claims are keyed on the raw values they were parsed from, so
    they are only a memo of a pure function. Not thread-safe: use one per event loop.
    """

    def __init__(
        self,
        max_requests: int = MAX_VERIFIED_REQUESTS,
        max_keys: int = MAX_SIGNING_KEYS,
        max_claims: int = MAX_PARSED_CLAIMS,
    ) -> None:
        self.max_requests = max_requests
        self.max_keys = max_keys
        self.max_claims = max_claims
        self._verified: OrderedDict[Hashable, Identity] = OrderedDict()
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        self._claims: dict[tuple[str | None, ...], _Claim] = {}

    def __len__(self) -> int:
        """How many verified requests are remembered."""
        return len(self._verified)

    def signing_key(self, secret: str, date: str, region: str, service: str) -> bytes:
        """The SigV4 signing key for this secret and scope, derived once."""
        cache_key = (secret, date, region, service)
        key = self._keys.get(cache_key)
        if key is None:
            key = _derive_signing_key(secret, date, region, service)
            if len(self._keys) >= self.max_keys:
                self._keys.clear()
            self._keys[cache_key] = key
        return key

    def _claim(self, request: SignedRequest, raw: tuple[str | None, ...]) -> _Claim:
        claim = self._claims.get(raw)
        if claim is None:
            claim = _parse_claim(request)  # raises for a malformed claim: nothing is kept
            if len(self._claims) >= self.max_claims:
                self._claims.clear()
            self._claims[raw] = claim
        return claim

    def _get(self, key: Hashable) -> Identity | None:
        identity = self._verified.get(key)
        if identity is not None:
            self._verified.move_to_end(key)
        return identity

    def _put(self, key: Hashable, identity: Identity) -> None:
        self._verified[key] = identity
        self._verified.move_to_end(key)
        while len(self._verified) > self.max_requests:
            self._verified.popitem(last=False)


def verify(
    request: SignedRequest,
    lookup: SecretLookup,
    *,
    now: datetime | None = None,
    max_skew_s: int = 900,
    streaming: bool = False,
    cache: VerificationCache | None = None,
) -> Identity:
    """Check the request's SigV4 signature and return who signed it; raise AuthError if not.

    Checks run cheapest first: shape of the auth data, the path (dot segments and '//' are
    refused, see `_check_path`), clock skew / presign expiry, the key (via `lookup`, whose
    AuthError passes through), the signature, and last that the body matches a declared
    x-amz-content-sha256. A naive `now` is taken as UTC.

    `streaming=True` is for services that read the body only after authentication (S3): the
    signature is checked against the declared x-amz-content-sha256 alone (required for header
    auth; UNSIGNED-PAYLOAD for presigned URLs), `request.body` is ignored, and the declared
    value is returned as `Identity.payload_hash` for the caller to enforce while streaming.
    For service `s3` the path is canonicalised as S3 does (as sent, never normalised).

    With a `cache`, a request identical in every signed input to one that verified before (with
    the same secret) is accepted without recomputing the signature; see `VerificationCache`.
    """
    if now is None:
        now_us = time.time_ns() // 1000
    else:
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        now_us = (now - _EPOCH) // _MICROSECOND
    headers = request.headers
    raw_claim = (
        headers.get("authorization"),
        headers.get("x-amz-date"),
        headers.get("date"),
        headers.get("x-amz-security-token"),
        request.query_string,
    )
    claim = _parse_claim(request) if cache is None else cache._claim(request, raw_claim)
    _check_path(request.raw_path, normalise=claim.service != "s3")
    _check_time(claim, now_us, now, max_skew_s)
    presigned = claim.expires_s is not None
    declared = headers.get("x-amz-content-sha256")
    body_hash = None if streaming else hashlib.sha256(request.body).hexdigest()
    candidates = (
        [_declared_payload_hash(request, presigned=presigned)]
        if streaming
        else _payload_hash_candidates(declared, body_hash or "", presigned=presigned)
    )
    secret, account_id, principal = lookup(claim.access_key_id, claim.session_token)
    cache_key: Hashable = None
    if cache is not None:
        cache_key = (
            raw_claim,
            secret,
            account_id,
            principal,
            request.method,
            request.raw_path,
            tuple([headers.get(name) for name in claim.signed_headers]),
            declared,
            body_hash,
            streaming,
        )
        verified = cache._get(cache_key)
        if verified is not None:
            return verified
    signing_key = (
        _derive_signing_key(secret, claim.scope_date, claim.region, claim.service)
        if cache is None
        else cache.signing_key(secret, claim.scope_date, claim.region, claim.service)
    )
    expected = [
        _expected_signature(request, claim, signing_key, payload_hash)
        for payload_hash in candidates
    ]
    given = claim.signature.encode()
    # evaluate every candidate so timing does not reveal which one (if any) matched
    matches = [hmac.compare_digest(given, candidate.encode()) for candidate in expected]
    if not any(matches):
        raise AuthError(_SIGNATURE_MISMATCH, code="InvalidSignatureException")
    if streaming:
        identity = Identity(
            access_key_id=claim.access_key_id,
            account_id=account_id,
            principal=principal,
            region=claim.region,
            service=claim.service,
            payload_hash=candidates[0],
        )
    else:
        _check_payload(declared, body_hash or "")
        identity = Identity(
            access_key_id=claim.access_key_id,
            account_id=account_id,
            principal=principal,
            region=claim.region,
            service=claim.service,
        )
    if cache is not None:
        cache._put(cache_key, identity)
    return identity


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
        signed_at_s=_parse_timestamp(timestamp),
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
    if not raw_expires.isdecimal() or not 1 <= int(raw_expires) <= MAX_PRESIGN_EXPIRES_S:
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
        signed_at_s=_parse_timestamp(params["X-Amz-Date"]),
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
    return timestamp


def _parse_timestamp(timestamp: str) -> int:
    """A checked X-Amz-Date ('YYYYMMDDTHHMMSSZ') in seconds since the epoch (no strptime)."""
    fields = (
        int(timestamp[0:4]),
        int(timestamp[4:6]),
        int(timestamp[6:8]),
        int(timestamp[9:11]),
        int(timestamp[11:13]),
        int(timestamp[13:15]),
    )
    try:
        datetime(*fields)  # refuses what strptime refused: month 13, Feb 30, 24:00, second 60
    except ValueError:
        raise _incomplete(f"Date '{timestamp}' is not a valid date") from None
    return calendar.timegm(fields)


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


def _check_time(claim: _Claim, now_us: int, now: datetime | None, max_skew_s: int) -> None:
    """Refuse a claim signed too far from `now_us` (microseconds since the epoch; `now` is the
    same as a datetime when the caller gave one, for the messages)."""
    if claim.scope_date != claim.timestamp[:8]:
        raise AuthError(
            f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date "
            f"from HTTP: '{claim.scope_date}' != '{claim.timestamp[:8]}', "
            f"from '{claim.timestamp}'.",
            code="InvalidSignatureException",
        )
    signed_at_us = claim.signed_at_s * 1_000_000
    window_s = max_skew_s if claim.expires_s is None else claim.expires_s
    if signed_at_us <= now_us + max_skew_s * 1_000_000 and (
        signed_at_us >= now_us - window_s * 1_000_000
    ):
        return
    if now is None:
        now = _EPOCH + timedelta(microseconds=now_us)
    skew = timedelta(seconds=max_skew_s)
    if signed_at_us > now_us + max_skew_s * 1_000_000:
        raise AuthError(
            f"Signature not yet current: {claim.timestamp} is still later than "
            f"{_fmt(now + skew)} ({_fmt(now)} + {_window(max_skew_s)}.)",
            code="InvalidSignatureException",
        )
    raise AuthError(
        f"Signature expired: {claim.timestamp} is now earlier than "
        f"{_fmt(now - timedelta(seconds=window_s))} ({_fmt(now)} - {_window(window_s)}.)",
        code="InvalidSignatureException",
    )


def _check_path(raw_path: str, *, normalise: bool = True) -> None:
    # SigV4 signs the path after dot-segment removal and '//' folding, so '/a/x/../b' would
    # verify with a signature made for '/a/b' yet be routed as sent; accept only paths that
    # are already in the form that was signed. S3 signs the path exactly as sent (object keys
    # may hold '//' and '..'), so there nothing but the characters needs checking.
    if not _RAW_PATH_RE.fullmatch(raw_path) or (
        normalise and normalize_url_path(raw_path) != raw_path
    ):
        raise AuthError(
            "The request path must be absolute, percent-encoded, and free of empty, "
            "'.' and '..' segments.",
            code="InvalidSignatureException",
        )


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def _window(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} sec"


def _payload_hash_candidates(declared: str | None, body_hash: str, *, presigned: bool) -> list[str]:
    if declared is not None:
        return [declared]
    # presigned URLs: S3-style signers use UNSIGNED-PAYLOAD, generic SigV4QueryAuth hashes the
    # body; a signature over one cannot be replayed as the other, so accepting both is safe
    return [UNSIGNED_PAYLOAD, body_hash] if presigned else [body_hash]


def _declared_payload_hash(request: SignedRequest, *, presigned: bool) -> str:
    declared = request.headers.get("x-amz-content-sha256")
    if declared is None:
        if presigned:
            return UNSIGNED_PAYLOAD
        raise AuthError(
            "Missing required header for this request: x-amz-content-sha256",
            code="MissingSecurityHeader",
        )
    if not (
        declared == UNSIGNED_PAYLOAD
        or declared.startswith("STREAMING-")
        or _SHA256_HEX_RE.fullmatch(declared)
    ):
        raise AuthError(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-..., "
            "or a valid sha256 value.",
            code="InvalidArgument",
        )
    return declared


def _check_payload(declared: str | None, body_hash: str) -> None:
    if declared is None or declared == UNSIGNED_PAYLOAD or declared.startswith("STREAMING-"):
        # STREAMING-* bodies are aws-chunked; their chunk signatures are the caller's business
        return
    if not _SHA256_HEX_RE.fullmatch(declared):
        raise AuthError(
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-..., "
            "or a valid sha256 value.",
            code="InvalidArgument",
        )
    if not hmac.compare_digest(declared, body_hash):
        raise AuthError(
            "The provided 'x-amz-content-sha256' header does not match what was computed.",
            code="XAmzContentSHA256Mismatch",
        )


# -- signing -------------------------------------------------------------------------------------


# botocore-stubs types botocore; without them SigV4Auth is Any and subclassing it is flagged
class _ClientClaimSigner(SigV4Auth):  # type: ignore[misc, unused-ignore]
    """botocore's signer, told which headers and payload hash the client signed, and given the
    signing key already derived (botocore would derive it from the secret on every call)."""

    def __init__(
        self,
        credentials: Credentials,
        service: str,
        region: str,
        signed_headers: HTTPHeaders,
        payload_hash: str,
        signing_key: bytes,
    ) -> None:
        super().__init__(credentials, service, region)
        self._as_sent = service == "s3"
        self._signed_headers = signed_headers
        self._payload_hash = payload_hash
        self._signing_key = signing_key

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        return self._signed_headers

    def payload(self, request: AWSRequest) -> str:
        return self._payload_hash

    def signature(self, string_to_sign: str, request: AWSRequest) -> str:
        return hmac.new(self._signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()

    def _normalize_url_path(self, path: str) -> str:
        if self._as_sent:
            return path  # as botocore's S3SigV4Auth: S3 signs the path exactly as sent
        # botocore-stubs leave this private method out
        return str(super()._normalize_url_path(path))  # type: ignore[misc, unused-ignore]


def _derive_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """HMAC chain of SigV4: secret → date → region → service → 'aws4_request'."""
    key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    key = hmac.digest(key, region.encode(), "sha256")
    key = hmac.digest(key, service.encode(), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def _expected_signature(
    request: SignedRequest, claim: _Claim, signing_key: bytes, payload_hash: str
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
        # the secret is not needed: `signing_key` was derived from it
        Credentials(claim.access_key_id, "", claim.session_token),
        claim.service,
        claim.region,
        headers,
        payload_hash,
        signing_key,
    )
    canonical_request = signer.canonical_request(aws_request)
    string_to_sign = signer.string_to_sign(aws_request, canonical_request)
    return str(signer.signature(string_to_sign, aws_request))
