"""The one place where errors become HTTP responses (AWS's REST-JSON error shape)."""

from __future__ import annotations

import json
import logging
import uuid

from starlette.responses import Response

from gureum.errors import ClientError, GureumError, ServiceError, TooManyRequests

log = logging.getLogger(__name__)
# AWS's Lambda model spells the message member `Message` for these errors and `message` for the
# rest; botocore copies the modeled member into the error response, so the spelling matters.
_CAPITALISED_MESSAGE = frozenset({"ResourceNotFoundException", "ServiceException"})


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers={"x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
    )


def error_response(exc: BaseException) -> Response:
    """Map any exception to AWS's error shape: `x-amzn-ErrorType` header + JSON body."""
    if not isinstance(exc, GureumError):
        log.exception("unexpected error", exc_info=exc)
        exc = ServiceError("An internal error occurred. The server log has the details.")
    message_key = "Message" if exc.code in _CAPITALISED_MESSAGE else "message"
    body: dict[str, object] = {
        "Type": "User" if isinstance(exc, ClientError) else "Service",
        message_key: exc.message,
        "code": exc.code,
    }
    headers = {"x-amzn-ErrorType": exc.code}
    if isinstance(exc, TooManyRequests):
        body["Reason"] = exc.reason
        headers["Retry-After"] = str(exc.retry_after_s)
        headers["retryAfterSeconds"] = str(exc.retry_after_s)
    return json_response(body, exc.status, headers)


def aws_json10_error_response(exc: BaseException, namespace: str) -> Response:
    """AWS JSON 1.0 error shape (SQS): `__type` = `{namespace}#{code}`, plus the
    `x-amzn-query-error` header carrying the legacy query-protocol code boto3 maps."""
    if not isinstance(exc, GureumError):
        log.exception("unexpected error", exc_info=exc)
        exc = ServiceError("An internal error occurred. The server log has the details.")
    code = exc.code
    query_code = getattr(exc, "query_code", None) or code
    fault = "Sender" if isinstance(exc, ClientError) else "Receiver"
    if isinstance(exc, ClientError) and type(exc).__name__ != "SQSError":
        # platform-wide errors (signature, body size) in the service's own vocabulary
        code = {"InvalidSignatureException": "InvalidSecurity"}.get(code, code)
    return Response(
        json.dumps({"__type": f"{namespace}#{code}", "message": exc.message}),
        status_code=exc.status,
        media_type="application/x-amz-json-1.0",
        headers={
            "x-amzn-RequestId": str(uuid.uuid4()),
            "x-amzn-query-error": f"{query_code};{fault}",
        },
    )
