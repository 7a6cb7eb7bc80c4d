"""S3's XML: responses built with ElementTree, client documents parsed with defusedxml (no DTDs,
no entities), and the XML error shape every S3 error is rendered in."""

from __future__ import annotations

import itertools
import logging
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gureum.errors import AuthError, GureumError, S3Error

log = logging.getLogger(__name__)
NAMESPACE = "http://s3.amazonaws.com/doc/2006-03-01/"
REQUEST_ID_HEADER = "x-amz-request-id"
Element = ET.Element
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


_REQUEST_IDS = itertools.count(int.from_bytes(os.urandom(5), "big") << 24)


def new_request_id() -> str:
    """16 hex digits, unique in this process and unlikely to repeat across processes (a
    random start, then counting: no system call per request, unlike a UUID)."""
    return f"{next(_REQUEST_IDS) & 0xFFFF_FFFF_FFFF_FFFF:016X}"


def document(root: str) -> ET.Element:
    return ET.Element(root, xmlns=NAMESPACE)


def add(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        value = "true" if text is True else "false" if text is False else str(text)
        # XML 1.0 cannot carry these at all; listings avoid them with encoding-type=url
        child.text = _NOT_XML.sub("\ufffd", value)
    return child


def add_all(parent: ET.Element, values: Iterable[tuple[str, object]]) -> None:
    for tag, text in values:
        if text is not None:
            add(parent, tag, text)


def xml_bytes(root: ET.Element) -> bytes:
    body: bytes = ET.tostring(root, encoding="utf-8")
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + body


def xml_response(
    root: ET.Element, request_id: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        xml_bytes(root),
        status_code=status,
        media_type="application/xml",
        headers={REQUEST_ID_HEADER: request_id, "x-amz-id-2": request_id, **(headers or {})},
    )


def malformed() -> S3Error:
    return S3Error(
        "MalformedXML",
        "The XML you provided was not well-formed or did not validate against our published schema",
    )


def parse(body: bytes) -> ET.Element:
    """Parse a client's XML document; MalformedXML for anything unparsable or with a DTD."""
    try:
        root: ET.Element = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, defusedxml.DefusedXmlException, ValueError):
        raise malformed() from None
    _strip_namespaces(root)
    return root


def _strip_namespaces(element: ET.Element) -> None:
    for node in element.iter():
        if isinstance(node.tag, str) and "}" in node.tag:
            node.tag = node.tag.split("}", 1)[1]


def text(element: ET.Element, tag: str, default: str | None = None) -> str | None:
    child = element.find(tag)
    if child is None:
        return default
    return child.text or ""


def to_s3_error(exc: BaseException, *, presigned: bool = False) -> S3Error:
    """Translate any error into the S3Error a client of S3 expects."""
    if isinstance(exc, S3Error):
        return exc
    if isinstance(exc, AuthError):
        return _auth_error(exc, presigned)
    if isinstance(exc, GureumError) and 400 <= exc.status < 500:
        return S3Error("InvalidRequest", exc.message, exc.status)
    log.error("unexpected error in the S3 API", exc_info=exc)
    return S3Error("InternalError", "We encountered an internal error. Please try again.", 500)


def _auth_error(exc: AuthError, presigned: bool) -> S3Error:
    message = exc.message
    if exc.code == "InvalidSignatureException":
        if message.startswith("Credential should be scoped"):
            return S3Error("AuthorizationHeaderMalformed", message, 400)
        if message.startswith(("Signature expired", "Signature not yet current")):
            if presigned:
                return S3Error("AccessDenied", "Request has expired", 403)
            return S3Error("RequestTimeTooSkewed", message, 403)
        if message.startswith("Date in Credential scope"):
            return S3Error("AuthorizationHeaderMalformed", message, 400)
        return S3Error("SignatureDoesNotMatch", message, 403)
    if exc.code == "UnrecognizedClientException":
        return S3Error(
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            403,
        )
    if exc.code == "ExpiredTokenException":
        return S3Error("ExpiredToken", "The provided token has expired.", 400)
    if exc.code == "IncompleteSignatureException":
        code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
        return S3Error(code, message, 400)
    if exc.code == "MissingAuthenticationTokenException":
        return S3Error("AccessDenied", "Access Denied", 403)
    if exc.code in ("InvalidArgument", "MissingSecurityHeader", "XAmzContentSHA256Mismatch"):
        return S3Error(exc.code, message, 400)
    return S3Error("AccessDenied", message, 403)


def error_response(
    exc: BaseException,
    *,
    method: str = "GET",
    resource: str = "",
    presigned: bool = False,
    request_id: str | None = None,
) -> Response:
    """AWS's XML error document (no body for HEAD, as S3 does)."""
    error = to_s3_error(exc, presigned=presigned)
    request_id = request_id or new_request_id()
    headers = {REQUEST_ID_HEADER: request_id, "x-amz-id-2": request_id}
    if method == "HEAD":
        return Response(b"", status_code=error.status, headers=headers)
    root = ET.Element("Error")
    details: dict[str, Any] = dict(error.details)
    add_all(root, [("Code", error.code), ("Message", error.message), *details.items()])
    if resource:
        add(root, "Resource", resource)
    add(root, "RequestId", request_id)
    add(root, "HostId", request_id)
    return Response(
        xml_bytes(root), status_code=error.status, media_type="application/xml", headers=headers
    )


def error_app(exc: BaseException) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI app answering with `exc` as S3's XML error (the gateway's `render_error`)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            exc,
            method=scope["method"],
            resource=raw_path(scope),
            presigned=presigned(scope),
        )
        if has_body(scope):
            close_connection(response)
        await response(scope, receive, send)

    return app


def presigned(scope: Scope) -> bool:
    """Whether the request means to be authenticated by its query string (a presigned URL),
    even one that lacks some of the parameters (its error says which)."""
    query: bytes = scope.get("query_string", b"")
    return any(name in query for name in (b"X-Amz-Signature", b"X-Amz-Credential"))


def has_body(scope: Scope) -> bool:
    """Whether the request announced a body (which may still be unread)."""
    for name, value in scope["headers"]:
        if name.lower() == b"transfer-encoding" or (
            name.lower() == b"content-length" and value.strip() not in (b"", b"0")
        ):
            return True
    return False


def close_connection(response: Response) -> None:
    """Answer and close: the rest of an unread request body must not be parsed as the next
    request on a kept-alive connection."""
    response.headers["connection"] = "close"


def raw_path(scope: Scope) -> str:
    """The request path as sent (percent-encoded), for error documents."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1").split("?", 1)[0]
