"""Raw S3 requests signed with botocore's own signer, for what boto3 will not send."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

import httpx
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import RunningServer


def signed(
    server: RunningServer,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    payload_hash: str | None = None,
    secret: str | None = None,
) -> httpx.Response:
    """Send a header-signed S3 request with exactly this body and headers."""
    root = server.platform.root
    request = AWSRequest(method=method, url=server.endpoint + path, data=body, headers=headers)
    credentials = Credentials(root.access_key_id, secret or root.secret_access_key)
    signer = _FixedPayloadSigner(credentials, "s3", server.settings.region)
    signer.payload_hash = payload_hash or _sha256(body)
    signer.add_auth(request)
    # latin-1, as HTTP carries header values: a test may send any byte
    sent = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
    return httpx.request(method, server.endpoint + path, content=body, headers=sent)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class _FixedPayloadSigner(S3SigV4Auth):  # type: ignore[misc]
    """Sign with a given X-Amz-Content-SHA256 (it may be a lie)."""

    payload_hash = ""

    def payload(self, request: AWSRequest) -> str:
        return self.payload_hash


def error_code(response: httpx.Response) -> str:
    return ET.fromstring(response.content).findtext("Code") or ""
