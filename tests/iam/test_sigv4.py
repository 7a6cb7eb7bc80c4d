"""SigV4 verification against requests signed by botocore itself, plus the credential stores."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import uvicorn
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.utils import percent_encode, percent_encode_sequence
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gureum.errors import AuthError, ConfigurationError
from gureum.iam import sigv4
from gureum.iam.credentials import (
    KeyRing,
    RootCredentials,
    SessionIssuer,
    load_or_create_root,
)
from gureum.iam.sigv4 import Identity, SignedRequest, VerificationCache, verify

ENDPOINT = "http://127.0.0.1:8070"
FUNCTIONS = f"{ENDPOINT}/2015-03-31/functions"
ROOT = RootCredentials("AKIAEXAMPLEROOT00001", "root-secret-0123456789abcdef", "123456789012")
UTF8 = st.characters(codec="utf-8")  # anything but lone surrogates
MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method. "
    "Consult the service documentation for details."
)


@pytest.fixture
def issuer() -> SessionIssuer:
    return SessionIssuer(b"k" * 32)


@pytest.fixture
def keyring(issuer: SessionIssuer) -> KeyRing:
    return KeyRing(ROOT, issuer)


def to_signed(request: AWSRequest) -> SignedRequest:
    """What a server sees of a botocore request: raw path and query, headers incl. Host."""
    prepared = request.prepare()
    url = urlsplit(prepared.url)
    headers = {name.lower(): value for name, value in prepared.headers.items()}
    headers.setdefault("host", url.netloc)  # added on the wire by urllib3
    body = prepared.body or b""
    assert isinstance(body, str | bytes)
    return SignedRequest(
        method=prepared.method,
        raw_path=url.path,
        query_string=url.query,
        headers=headers,
        body=body.encode() if isinstance(body, str) else body,
    )


def sign(
    method: str,
    url: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    key: tuple[str, str, str | None] = (ROOT.access_key_id, ROOT.secret_access_key, None),
    service: str = "lambda",
) -> SignedRequest:
    """Sign exactly as boto3 does (SigV4 in the Authorization header)."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers, params=params)
    SigV4Auth(Credentials(*key), service, "us-east-1").add_auth(request)
    return to_signed(request)


def expect_auth_error(
    request: SignedRequest,
    lookup: KeyRing,
    code: str,
    *,
    now: datetime | None = None,
    max_skew_s: int = 900,
) -> AuthError:
    with pytest.raises(AuthError) as caught:
        verify(request, lookup, now=now, max_skew_s=max_skew_s)
    assert caught.value.code == code, caught.value.message
    assert caught.value.status == 403
    return caught.value


def with_headers(request: SignedRequest, **changes: str) -> SignedRequest:
    return dataclasses.replace(request, headers={**request.headers, **changes})


# -- header auth ---------------------------------------------------------------------------------


def test_get_with_special_characters_in_query_verifies(keyring: KeyRing) -> None:
    params = {"Marker": "a b/c:d+e=f&g%h", "MaxItems": "5", "ü ñ": "☃", "empty": ""}
    # boto3 serialises query strings into the URL with percent_encode_sequence
    request = sign("GET", f"{FUNCTIONS}/?{percent_encode_sequence(params)}")
    assert "%2B" in request.query_string and "%20" in request.query_string
    identity = verify(request, keyring)
    assert identity == Identity(
        access_key_id=ROOT.access_key_id,
        account_id=ROOT.account_id,
        principal="root",
        region="us-east-1",
        service="lambda",
    )


def test_query_given_as_params_verifies(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/f/invocations", params={"Qualifier": "f:1", "x": "a~b"})
    assert request.query_string == "Qualifier=f%3A1&x=a~b"
    verify(request, keyring)


def test_unencoded_query_characters_are_canonicalised(keyring: KeyRing) -> None:
    # a client that signs the RFC 3986 form but leaves ':' raw on the wire (as AWS allows)
    request = sign("GET", f"{FUNCTIONS}/?Qualifier=f%3A1")
    verify(dataclasses.replace(request, query_string="Qualifier=f:1"), keyring)


def test_post_with_json_body_verifies(keyring: KeyRing) -> None:
    body = json.dumps({"FunctionName": "hello", "Runtime": "python3.12"}).encode()
    request = sign("POST", f"{FUNCTIONS}", body=body, headers={"Content-Type": "application/json"})
    assert "content-type" in request.headers["authorization"]
    assert verify(request, keyring).principal == "root"


def test_quoted_qualifier_in_path_is_verified_raw(keyring: KeyRing) -> None:
    # boto3 sends FunctionName 'f:1' as 'f%3A1'; botocore signs it re-quoted as 'f%253A1'
    request = sign("POST", f"{FUNCTIONS}/f%3A1/invocations", body=b"{}")
    assert request.raw_path == "/2015-03-31/functions/f%3A1/invocations"
    verify(request, keyring)
    decoded = dataclasses.replace(request, raw_path="/2015-03-31/functions/f:1/invocations")
    assert expect_auth_error(decoded, keyring, "InvalidSignatureException").message == MISMATCH


def test_wrong_secret_is_rejected(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/", key=(ROOT.access_key_id, "not-the-secret", None))
    error = expect_auth_error(request, keyring, "InvalidSignatureException")
    assert error.message == MISMATCH


def test_tampered_body_is_rejected(keyring: KeyRing) -> None:
    request = sign("POST", f"{FUNCTIONS}/f/invocations", body=b'{"n": 1}')
    expect_auth_error(
        dataclasses.replace(request, body=b'{"n": 2}'), keyring, "InvalidSignatureException"
    )


def test_body_not_matching_signed_content_sha256_is_rejected(keyring: KeyRing) -> None:
    # S3-style signers put the payload hash in a signed x-amz-content-sha256 header
    request = AWSRequest(method="PUT", url=f"{ENDPOINT}/bucket/key", data=b"original")
    S3SigV4Auth(
        Credentials(ROOT.access_key_id, ROOT.secret_access_key), "s3", "us-east-1"
    ).add_auth(request)
    signed = to_signed(request)
    assert "x-amz-content-sha256" in signed.headers
    verify(signed, keyring)
    tampered = dataclasses.replace(signed, body=b"tampered")
    expect_auth_error(tampered, keyring, "XAmzContentSHA256Mismatch")


def test_unsigned_payload_skips_body_check(keyring: KeyRing) -> None:
    request = sign(
        "PUT",
        f"{ENDPOINT}/bucket/key",
        body=b"x",
        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"},
    )
    verify(dataclasses.replace(request, body=b"anything"), keyring)


@pytest.mark.parametrize("header", ["content-type", "x-amz-date", "host"])
def test_tampered_signed_header_is_rejected(keyring: KeyRing, header: str) -> None:
    request = sign("POST", f"{FUNCTIONS}", body=b"{}", headers={"Content-Type": "application/json"})
    signed_at = datetime.strptime(request.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    value = {
        "content-type": "text/plain",
        "host": "evil:8070",
        "x-amz-date": (signed_at - timedelta(seconds=1)).strftime("%Y%m%dT%H%M%SZ"),
    }.get(header)
    assert value is not None
    error = expect_auth_error(
        with_headers(request, **{header: value}), keyring, "InvalidSignatureException"
    )
    assert error.message == MISMATCH


def test_missing_signed_header_is_rejected(keyring: KeyRing) -> None:
    request = sign("POST", f"{FUNCTIONS}", body=b"{}", headers={"Content-Type": "application/json"})
    headers = {k: v for k, v in request.headers.items() if k != "content-type"}
    missing = dataclasses.replace(request, headers=headers)
    expect_auth_error(missing, keyring, "InvalidSignatureException")


def test_unsigned_extra_header_is_ignored(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    verify(with_headers(request, **{"user-agent": "Boto3/1.0", "x-extra": "1"}), keyring)


def test_date_header_instead_of_x_amz_date(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/", headers={"Date": formatdate(usegmt=True)})
    assert "x-amz-date" not in request.headers and "date" in request.headers
    verify(request, keyring)


def test_missing_authorization_is_rejected(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    bare = dataclasses.replace(
        request, headers={k: v for k, v in request.headers.items() if k != "authorization"}
    )
    error = expect_auth_error(bare, keyring, "MissingAuthenticationTokenException")
    assert error.message == "Missing Authentication Token"


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer abc",
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEROOT00001/20240101/us-east-1/lambda/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEROOT00001/20240101/us-east-1/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEROOT00001/20240101/us-east-1/lambda/aws5_request, "
        "SignedHeaders=host;x-amz-date, Signature=00",
        "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLEROOT00001/20240101/us-east-1/lambda/aws4_request, "
        "SignedHeaders=x-amz-date, Signature=00",
    ],
    ids=["other-scheme", "no-signature", "short-scope", "bad-terminator", "host-unsigned"],
)
def test_malformed_authorization_is_incomplete(keyring: KeyRing, authorization: str) -> None:
    request = with_headers(sign("GET", f"{FUNCTIONS}/"), authorization=authorization)
    expect_auth_error(request, keyring, "IncompleteSignatureException")


def test_missing_date_is_incomplete(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    headers = {k: v for k, v in request.headers.items() if k != "x-amz-date"}
    error = expect_auth_error(
        dataclasses.replace(request, headers=headers), keyring, "IncompleteSignatureException"
    )
    assert "'X-Amz-Date'" in error.message


def test_credential_scope_date_must_match_x_amz_date(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    authorization = re.sub(r"/\d{8}/", "/19990101/", request.headers["authorization"])
    error = expect_auth_error(
        with_headers(request, authorization=authorization), keyring, "InvalidSignatureException"
    )
    assert "Date in Credential scope does not match" in error.message


def test_clock_skew_in_the_past_is_expired(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    later = datetime.now(UTC) + timedelta(minutes=16)
    error = expect_auth_error(request, keyring, "InvalidSignatureException", now=later)
    assert error.message.startswith("Signature expired: ")
    assert error.message.endswith(" - 15 min.)")
    verify(request, keyring, now=datetime.now(UTC) + timedelta(minutes=14))


def test_clock_skew_in_the_future_is_not_yet_current(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/")
    earlier = datetime.now(UTC) - timedelta(seconds=61)
    error = expect_auth_error(
        request, keyring, "InvalidSignatureException", now=earlier, max_skew_s=60
    )
    assert error.message.startswith("Signature not yet current: ")


def test_unknown_access_key_is_unrecognized(keyring: KeyRing) -> None:
    request = sign("GET", f"{FUNCTIONS}/", key=("AKIAUNKNOWN000000000", "whatever-secret", None))
    error = expect_auth_error(request, keyring, "UnrecognizedClientException")
    assert error.message == "The security token included in the request is invalid."


def test_dot_segments_in_path_are_rejected(keyring: KeyRing) -> None:
    # botocore signs '/2015-03-31/functions/' for this URL: it must not authorise the raw path
    request = sign("GET", f"{FUNCTIONS}/")
    sneaky = dataclasses.replace(request, raw_path="/2015-03-31/functions/secret/../")
    expect_auth_error(sneaky, keyring, "InvalidSignatureException")


@settings(max_examples=60, deadline=None, database=None)
@given(
    name=st.text(UTF8, min_size=1, max_size=20).filter(lambda n: n not in (".", "..")),
    params=st.dictionaries(
        st.text(UTF8, min_size=1, max_size=10),
        st.text(UTF8, max_size=10),
        max_size=4,
    ),
)
def test_any_boto3_style_url_verifies(name: str, params: dict[str, str]) -> None:
    # boto3's rest-json serializer: path labels with percent_encode, query percent_encode_sequence
    url = f"{FUNCTIONS}/{percent_encode(name)}/invocations"
    if params:
        url += "?" + percent_encode_sequence(params)
    request = sign("POST", url, body=name.encode())
    verify(request, KeyRing(ROOT, SessionIssuer(b"k" * 32)))


# -- session credentials -------------------------------------------------------------------------


def test_session_credentials_verify(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue(ROOT.account_id, "function:hello")
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", akid)
    assert len(secret) == 40
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, token))
    assert request.headers["x-amz-security-token"] == token
    identity = verify(request, keyring)
    assert (identity.access_key_id, identity.account_id, identity.principal) == (
        akid,
        ROOT.account_id,
        "function:hello",
    )


def test_expired_session_token_is_rejected(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue(
        ROOT.account_id, "function:hello", ttl_s=60, now=time.time() - 61
    )
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, token))
    error = expect_auth_error(request, keyring, "ExpiredTokenException")
    assert error.message == "The security token included in the request is expired"


def test_forged_session_token_is_rejected(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue(ROOT.account_id, "function:hello")
    body, _, mac = token.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["prin"] = "root"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for forged in (f"{forged_body}.{mac}", body, f"{body}.", f"{body}.!!!", "garbage"):
        request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, forged))
        expect_auth_error(request, keyring, "UnrecognizedClientException")


def test_token_of_another_key_is_rejected(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, _ = issuer.issue(ROOT.account_id, "function:a")
    _, _, other_token = issuer.issue(ROOT.account_id, "function:b")
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, other_token))
    expect_auth_error(request, keyring, "UnrecognizedClientException")


def test_session_key_without_token_is_rejected(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, _ = issuer.issue(ROOT.account_id, "function:a")
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, None))
    expect_auth_error(request, keyring, "UnrecognizedClientException")


def test_token_from_another_issuer_is_rejected(keyring: KeyRing) -> None:
    akid, secret, token = SessionIssuer(b"x" * 32).issue(ROOT.account_id, "function:a")
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, token))
    expect_auth_error(request, keyring, "UnrecognizedClientException")


def test_root_key_with_session_token_is_rejected(keyring: KeyRing) -> None:
    key = (ROOT.access_key_id, ROOT.secret_access_key, "some-token")
    expect_auth_error(sign("GET", f"{FUNCTIONS}/", key=key), keyring, "UnrecognizedClientException")


# -- presigned URLs ------------------------------------------------------------------------------


def presign(
    signer: type[SigV4QueryAuth] = SigV4QueryAuth,
    key: tuple[str, str, str | None] = (ROOT.access_key_id, ROOT.secret_access_key, None),
) -> SignedRequest:
    request = AWSRequest(method="GET", url=f"{ENDPOINT}/bucket/dir/key.txt?versionId=a%2Fb")
    signer(Credentials(*key), "s3", "us-east-1", expires=60).add_auth(request)
    signed = to_signed(request)
    assert "authorization" not in signed.headers
    assert "X-Amz-Signature=" in signed.query_string
    return signed


@pytest.mark.parametrize("signer", [SigV4QueryAuth, S3SigV4QueryAuth])
def test_presigned_url_verifies(keyring: KeyRing, signer: type[SigV4QueryAuth]) -> None:
    identity = verify(presign(signer), keyring)
    assert (identity.service, identity.principal) == ("s3", "root")


def test_presigned_url_expires(keyring: KeyRing) -> None:
    request = presign()
    verify(request, keyring, now=datetime.now(UTC) + timedelta(seconds=50))
    later = datetime.now(UTC) + timedelta(seconds=75)
    error = expect_auth_error(request, keyring, "InvalidSignatureException", now=later)
    assert error.message.startswith("Signature expired: ")


def test_presigned_url_with_tampered_query_is_rejected(keyring: KeyRing) -> None:
    request = presign()
    for query in (
        request.query_string.replace("versionId=a%2Fb", "versionId=other"),
        request.query_string.replace("X-Amz-Expires=60", "X-Amz-Expires=600"),
        request.query_string + "&extra=1",
    ):
        tampered = dataclasses.replace(request, query_string=query)
        expect_auth_error(tampered, keyring, "InvalidSignatureException")


def test_presigned_url_with_session_token(keyring: KeyRing, issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue(ROOT.account_id, "function:hello")
    request = presign(key=(akid, secret, token))
    assert "X-Amz-Security-Token=" in request.query_string
    assert verify(request, keyring).principal == "function:hello"


def test_presigned_url_missing_parameter_is_incomplete(keyring: KeyRing) -> None:
    request = presign()
    query = re.sub(r"&X-Amz-Date=[^&]*", "", request.query_string)
    expect_auth_error(
        dataclasses.replace(request, query_string=query), keyring, "IncompleteSignatureException"
    )


def test_header_and_query_auth_together_are_rejected(keyring: KeyRing) -> None:
    request = presign()
    both = with_headers(
        request, authorization=sign("GET", f"{FUNCTIONS}/").headers["authorization"]
    )
    expect_auth_error(both, keyring, "IncompleteSignatureException")


# -- verification cache --------------------------------------------------------------------------


@pytest.fixture
def signatures_computed(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts signature computations, so a test can tell a cache hit from a miss."""
    calls = [0]
    compute = sigv4._expected_signature

    def counting(*args: Any) -> str:
        calls[0] += 1
        return compute(*args)

    monkeypatch.setattr(sigv4, "_expected_signature", counting)
    return calls


def invoke_request(**headers: str) -> SignedRequest:
    return sign("POST", f"{FUNCTIONS}/f/invocations", body=b'{"n": 1}', headers=headers or None)


def test_cache_hit_skips_the_signature(keyring: KeyRing, signatures_computed: list[int]) -> None:
    cache = VerificationCache()
    request = invoke_request()
    first = verify(request, keyring, cache=cache)
    assert signatures_computed == [1]
    assert verify(request, keyring, cache=cache) == first == verify(request, keyring)
    assert signatures_computed == [2]  # the uncached call only
    assert len(cache) == 1


def test_cache_hit_for_a_presigned_url(keyring: KeyRing, signatures_computed: list[int]) -> None:
    cache = VerificationCache()
    request = presign()
    assert verify(request, keyring, cache=cache) == verify(request, keyring, cache=cache)
    assert signatures_computed == [2]  # two candidate payload hashes, computed once


def tampered_variants(request: SignedRequest) -> dict[str, tuple[SignedRequest, str]]:
    """Changes to a signed request that must each fail, with the error code they must get."""
    other_path = "/2015-03-31/functions/g/invocations"
    unknown_key = request.headers["authorization"].replace(
        ROOT.access_key_id, "AKIAUNKNOWN000000000"
    )
    wrong_signature = re.sub(
        r"Signature=\w+", "Signature=" + "0" * 64, request.headers["authorization"]
    )
    return {
        "body": (dataclasses.replace(request, body=b'{"n": 2}'), "InvalidSignatureException"),
        "path": (dataclasses.replace(request, raw_path=other_path), "InvalidSignatureException"),
        "method": (dataclasses.replace(request, method="PUT"), "InvalidSignatureException"),
        "query": (
            dataclasses.replace(request, query_string="Qualifier=1"),
            "InvalidSignatureException",
        ),
        "signed header": (with_headers(request, host="evil:8070"), "InvalidSignatureException"),
        "signed header value": (
            with_headers(request, **{"content-type": "text/plain"}),
            "InvalidSignatureException",
        ),
        "unsigned payload declared": (
            dataclasses.replace(
                with_headers(request, **{"x-amz-content-sha256": "UNSIGNED-PAYLOAD"}),
                body=b'{"n": 2}',
            ),
            "InvalidSignatureException",
        ),
        "signature": (
            with_headers(request, authorization=wrong_signature),
            "InvalidSignatureException",
        ),
        "unknown key": (
            with_headers(request, authorization=unknown_key),
            "UnrecognizedClientException",
        ),
    }


@pytest.mark.parametrize(
    "change",
    [
        "body",
        "path",
        "method",
        "query",
        "signed header",
        "signed header value",
        "unsigned payload declared",
        "signature",
        "unknown key",
    ],
)
def test_cache_never_answers_a_changed_request(keyring: KeyRing, change: str) -> None:
    cache = VerificationCache()
    request = invoke_request(**{"Content-Type": "application/json"})
    verify(request, keyring, cache=cache)
    verify(request, keyring, cache=cache)
    tampered, code = tampered_variants(request)[change]
    with pytest.raises(AuthError) as caught:
        verify(tampered, keyring, cache=cache)
    assert caught.value.code == code
    verify(request, keyring, cache=cache)  # the original still verifies


def test_cache_does_not_lend_a_signature_to_another_key(
    keyring: KeyRing, issuer: SessionIssuer
) -> None:
    cache = VerificationCache()
    request = invoke_request()
    verify(request, keyring, cache=cache)
    akid, _, token = issuer.issue(ROOT.account_id, "function:other")
    # a valid session key and token, carrying the root request's signature
    borrowed = with_headers(
        request,
        authorization=request.headers["authorization"].replace(ROOT.access_key_id, akid),
        **{"x-amz-security-token": token},
    )
    expect_auth_error(borrowed, keyring, "InvalidSignatureException")


def test_cached_request_still_expires(keyring: KeyRing) -> None:
    cache = VerificationCache()
    request = invoke_request()
    verify(request, keyring, cache=cache)
    signed_at = datetime.strptime(request.headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
    with pytest.raises(AuthError) as caught:
        verify(request, keyring, cache=cache, now=signed_at + timedelta(seconds=901))
    assert caught.value.message.startswith("Signature expired: ")
    presigned = presign()
    verify(presigned, keyring, cache=cache)
    with pytest.raises(AuthError) as caught:
        verify(presigned, keyring, cache=cache, now=datetime.now(UTC) + timedelta(seconds=75))
    assert caught.value.message.startswith("Signature expired: ")


def test_cached_request_with_an_expired_session_token_is_rejected(
    keyring: KeyRing, issuer: SessionIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = VerificationCache()
    akid, secret, token = issuer.issue(ROOT.account_id, "function:hello", ttl_s=60)
    request = sign("GET", f"{FUNCTIONS}/", key=(akid, secret, token))
    assert verify(request, keyring, cache=cache).principal == "function:hello"
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(AuthError) as caught:
        verify(request, keyring, cache=cache, now=datetime.now(UTC))
    assert caught.value.code == "ExpiredTokenException"


def test_cache_keeps_streaming_and_buffered_results_apart(keyring: KeyRing) -> None:
    request = AWSRequest(method="PUT", url=f"{ENDPOINT}/bucket/key", data=b"original")
    S3SigV4Auth(
        Credentials(ROOT.access_key_id, ROOT.secret_access_key), "s3", "us-east-1"
    ).add_auth(request)
    signed = to_signed(request)
    cache = VerificationCache()
    assert verify(signed, keyring, cache=cache).payload_hash is None
    streamed = verify(dataclasses.replace(signed, body=b""), keyring, cache=cache, streaming=True)
    assert streamed.payload_hash == signed.headers["x-amz-content-sha256"]
    tampered = dataclasses.replace(signed, body=b"tampered")
    expect_auth_error(tampered, keyring, "XAmzContentSHA256Mismatch")
    with pytest.raises(AuthError) as caught:
        verify(tampered, keyring, cache=cache)
    assert caught.value.code == "XAmzContentSHA256Mismatch"


def test_cache_is_bounded_least_recently_used_first(
    keyring: KeyRing, signatures_computed: list[int]
) -> None:
    cache = VerificationCache(max_requests=2)
    first, second, third = (sign("GET", f"{FUNCTIONS}/?n={n}") for n in range(3))
    for request in (first, second, first, third):
        verify(request, keyring, cache=cache)
    assert len(cache) == 2
    computed = signatures_computed[0]
    verify(first, keyring, cache=cache)  # used recently: kept
    assert signatures_computed[0] == computed
    verify(second, keyring, cache=cache)  # least recently used: evicted
    assert signatures_computed[0] == computed + 1


def test_timestamps_are_parsed_as_strptime_would(keyring: KeyRing) -> None:
    for bad in ("20240230T000000Z", "20241301T000000Z", "20240101T240000Z", "20240101T000060Z"):
        request = with_headers(sign("GET", f"{FUNCTIONS}/"), **{"x-amz-date": bad})
        error = expect_auth_error(request, keyring, "IncompleteSignatureException")
        assert error.message == f"Date '{bad}' is not a valid date"


# -- credential files ----------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_root_credentials_are_generated_private_and_persistent(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    creds, created = load_or_create_root(data_dir, access_key_id=None, secret_access_key=None)
    assert created
    assert re.fullmatch(r"AKIA[A-Z2-7]{16}", creds.access_key_id)
    assert len(creds.secret_access_key) == 40
    assert re.fullmatch(r"[1-9]\d{11}", creds.account_id)
    assert creds.secret_access_key not in repr(creds)
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "root-credentials.json") == 0o600
    assert [p.name for p in data_dir.iterdir()] == ["root-credentials.json"]  # no temp files

    again, created_again = load_or_create_root(data_dir, access_key_id=None, secret_access_key=None)
    assert (again, created_again) == (creds, False)


def test_root_credentials_from_settings(tmp_path: Path) -> None:
    creds, created = load_or_create_root(
        tmp_path, access_key_id="minioadmin", secret_access_key="minioadmin"
    )
    assert created
    assert (creds.access_key_id, creds.secret_access_key) == ("minioadmin", "minioadmin")
    # the stored file wins over different keys offered later
    later, created = load_or_create_root(
        tmp_path, access_key_id="otheradmin", secret_access_key="other-secret"
    )
    assert (later, created) == (creds, False)


@pytest.mark.parametrize(
    ("access_key_id", "secret_access_key"),
    [
        ("ab", "long-enough-secret"),
        ("has-dash", "long-enough-secret"),
        ("A" * 129, "long-enough-secret"),
        ("validkey", "short"),
        ("validkey", None),
        (None, "long-enough-secret"),
    ],
)
def test_invalid_root_keys_from_settings(
    tmp_path: Path, access_key_id: str | None, secret_access_key: str | None
) -> None:
    with pytest.raises(ConfigurationError):
        load_or_create_root(
            tmp_path, access_key_id=access_key_id, secret_access_key=secret_access_key
        )
    assert not (tmp_path / "root-credentials.json").exists()


def test_corrupt_root_credentials_file(tmp_path: Path) -> None:
    (tmp_path / "root-credentials.json").write_text('{"access_key_id": "x"}')
    with pytest.raises(ConfigurationError):
        load_or_create_root(tmp_path, access_key_id=None, secret_access_key=None)


def test_master_key_is_private_and_persistent(tmp_path: Path) -> None:
    first = SessionIssuer.load_or_create(tmp_path)
    assert mode(tmp_path / "master.key") == 0o600
    assert len((tmp_path / "master.key").read_bytes()) == 32
    akid, secret, token = first.issue("123456789012", "function:f")
    # a restarted process derives the same secret from the same master key
    second = SessionIssuer.load_or_create(tmp_path)
    assert second.check(akid, token) == (secret, "123456789012", "function:f")


def test_truncated_master_key_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_bytes(b"short")
    with pytest.raises(ConfigurationError):
        SessionIssuer.load_or_create(tmp_path)


def test_session_expiry_is_exact(issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue("123456789012", "function:f", ttl_s=10, now=1000.0)
    assert issuer.check(akid, token, now=1009.9)[0] == secret
    with pytest.raises(AuthError) as caught:
        issuer.check(akid, token, now=1010.0)
    assert caught.value.code == "ExpiredTokenException"


def test_checked_tokens_are_remembered_per_key_and_token(issuer: SessionIssuer) -> None:
    akid, secret, token = issuer.issue("123456789012", "function:f", ttl_s=10, now=1000.0)
    other, _, _ = issuer.issue("123456789012", "function:g", ttl_s=10, now=1000.0)
    for _ in range(2):  # the second check is answered from what the first one learnt
        assert issuer.check(akid, token, now=1001.0) == (secret, "123456789012", "function:f")
    body, _, mac = token.partition(".")
    tail = "BB" if mac.endswith("AA") else "AA"
    for key, forged in ((other, token), (akid, f"{body}.{mac[:-2]}{tail}"), (akid, None)):
        with pytest.raises(AuthError) as caught:
            issuer.check(key, forged, now=1001.0)
        assert caught.value.code == "UnrecognizedClientException"


# -- end to end: real boto3 against a real server ------------------------------------------------


def _signed_request(request: Request, body: bytes) -> SignedRequest:
    headers: dict[str, str] = {}
    for raw_name, raw_value in request.scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return SignedRequest(
        method=request.method,
        raw_path=request.scope["raw_path"].decode("latin-1"),
        query_string=request.scope["query_string"].decode("latin-1"),
        headers=headers,
        body=body,
    )


def _lambda_app(lookup: KeyRing) -> Starlette:
    async def authenticate(request: Request) -> Identity | Response:
        try:
            return verify(_signed_request(request, await request.body()), lookup)
        except AuthError as exc:
            return JSONResponse(
                {"message": exc.message},
                status_code=exc.status,
                headers={"x-amzn-ErrorType": exc.code},
            )

    async def list_functions(request: Request) -> Response:
        identity = await authenticate(request)
        if isinstance(identity, Response):
            return identity
        return JSONResponse(
            {"Functions": [], "NextMarker": None},
            headers={"x-gureum-principal": identity.principal},
        )

    async def invoke(request: Request) -> Response:
        identity = await authenticate(request)
        if isinstance(identity, Response):
            return identity
        return JSONResponse(
            {"function": request.path_params["name"], "raw": request.scope["raw_path"].decode()}
        )

    return Starlette(
        routes=[
            Route("/2015-03-31/functions", list_functions, methods=["GET"]),
            Route("/2015-03-31/functions/{name}/invocations", invoke, methods=["POST"]),
        ]
    )


@pytest.fixture
def lambda_endpoint(keyring: KeyRing) -> Iterator[str]:
    config = uvicorn.Config(
        _lambda_app(keyring),
        host="127.0.0.1",
        port=0,
        lifespan="off",
        ws="none",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="sigv4-test-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive()


def lambda_client(endpoint: str, access_key_id: str, secret: str, token: str | None = None) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(retries={"max_attempts": 1}),
    )


@pytest.fixture(autouse=True)
def _no_aws_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.fspath(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.fspath(tmp_path / "no-aws-credentials"))


def test_boto3_list_functions(lambda_endpoint: str) -> None:
    client = lambda_client(lambda_endpoint, ROOT.access_key_id, ROOT.secret_access_key)
    response = client.list_functions()
    assert response["Functions"] == []
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-gureum-principal"] == "root"


def test_boto3_with_wrong_secret_gets_invalid_signature(lambda_endpoint: str) -> None:
    client = lambda_client(lambda_endpoint, ROOT.access_key_id, "wrong-secret-wrong-secret")
    with pytest.raises(ClientError) as caught:
        client.list_functions()
    error = caught.value.response
    assert error["Error"]["Code"] == "InvalidSignatureException"
    assert error["Error"]["Message"] == MISMATCH
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_boto3_with_session_credentials_and_qualified_name(
    lambda_endpoint: str, issuer: SessionIssuer
) -> None:
    akid, secret, token = issuer.issue(ROOT.account_id, "function:hello")
    client = lambda_client(lambda_endpoint, akid, secret, token)
    listed = client.list_functions()
    assert listed["ResponseMetadata"]["HTTPHeaders"]["x-gureum-principal"] == "function:hello"
    response = client.invoke(FunctionName="f:1", Payload=b'{"a": 1}')
    assert json.loads(response["Payload"].read()) == {
        "function": "f:1",
        "raw": "/2015-03-31/functions/f%3A1/invocations",
    }
