"""Gureum's error tree. Every error the platform raises on purpose is a `GureumError`.

    GureumError
    ├── ConfigurationError          bad settings or host set-up (start-up only)
    ├── ClientError                 the caller did something wrong (4xx)
    │   ├── InvalidParameterValue     400 InvalidParameterValueException
    │   ├── InvalidRequestContent     400 InvalidRequestContentException (malformed JSON)
    │   ├── CodeStorageExceeded       400 CodeStorageExceededException
    │   ├── ResourceNotFound          404 ResourceNotFoundException
    │   ├── ResourceConflict          409 ResourceConflictException
    │   ├── PreconditionFailed        412 PreconditionFailedException
    │   ├── RequestTooLarge           413 RequestTooLargeException
    │   ├── UnsupportedMediaType      415 UnsupportedMediaTypeException
    │   ├── TooManyRequests           429 TooManyRequestsException (throttled)
    │   ├── AuthError                 403 (signature, unknown key, expired token)
    │   ├── S3Error                   an S3 API error: AWS's code and status (NoSuchKey 404 …)
    │   └── SQSError                  an SQS API error: AWS's code, status and query code
    ├── HttpApiError                a user-route request the API gateway answers itself
    │                               ({"message": …} with AWS HTTP APIs' status: 401, 403 …)
    └── ServiceError                the platform failed (5xx)
        ├── SandboxError              an instance could not be started or talked to
        └── EndpointUnreachable       (client side) no Gureum server answers at the endpoint

Foreign exceptions are translated at the boundary that meets them; errors are turned into
HTTP responses in exactly one place (`gureum.gateway.responses`).
"""

from __future__ import annotations


class GureumError(Exception):
    """Base of every deliberate Gureum error."""

    code = "ServiceException"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigurationError(GureumError):
    code = "ConfigurationError"


class ClientError(GureumError):
    code = "InvalidRequestException"
    status = 400


class InvalidParameterValue(ClientError):
    code = "InvalidParameterValueException"


class InvalidRequestContent(ClientError):
    code = "InvalidRequestContentException"


class CodeStorageExceeded(ClientError):
    code = "CodeStorageExceededException"


class ResourceNotFound(ClientError):
    code = "ResourceNotFoundException"
    status = 404


class ResourceConflict(ClientError):
    code = "ResourceConflictException"
    status = 409


class PreconditionFailed(ClientError):
    code = "PreconditionFailedException"
    status = 412


class RequestTooLarge(ClientError):
    code = "RequestTooLargeException"
    status = 413


class UnsupportedMediaType(ClientError):
    code = "UnsupportedMediaTypeException"
    status = 415


class TooManyRequests(ClientError):
    code = "TooManyRequestsException"
    status = 429

    def __init__(self, message: str, reason: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


class AuthError(ClientError):
    """Authentication failed; `code` names which AWS error the client sees."""

    status = 403

    def __init__(self, message: str, code: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.code = code


class S3Error(ClientError):
    """An S3 API error, with AWS's code (e.g. 'NoSuchBucket') and HTTP status.

    `details` become extra elements of the XML error body (e.g. BucketName, Key)."""

    def __init__(self, code: str, message: str, status: int = 400, **details: str) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.details = details


class SQSError(ClientError):
    """An SQS API error, with AWS's code (e.g. 'QueueDoesNotExist') and the legacy
    query-protocol code (e.g. 'AWS.SimpleQueueService.NonExistentQueue') that AWS's JSON
    protocol still sends in the `x-amzn-query-error` header for boto3 to map."""

    def __init__(
        self, code: str, message: str, *, query_code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.query_code = query_code or code


class HttpApiError(GureumError):
    """A request to a user route refused or failed in the gateway, as AWS's HTTP APIs answer
    it: `status` and `{"message": message}` (e.g. 403 Forbidden). Rendered by
    `gureum.gateway.http_api`, since user routes do not speak the AWS REST-JSON error shape."""

    code = "HttpApiError"

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class ServiceError(GureumError):
    code = "ServiceException"
    status = 500


class SandboxError(ServiceError):
    """An instance could not be started, or died outside of an invocation."""


class EndpointUnreachable(ServiceError):
    """Raised by the SDK client when nothing answers at the endpoint."""

    code = "EndpointUnreachable"
    status = 503
