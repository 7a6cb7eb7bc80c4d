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
    │   └── AuthError                 403 (signature, unknown key, expired token)
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


class ServiceError(GureumError):
    code = "ServiceException"
    status = 500


class SandboxError(ServiceError):
    """An instance could not be started, or died outside of an invocation."""


class EndpointUnreachable(ServiceError):
    """Raised by the SDK client when nothing answers at the endpoint."""

    code = "EndpointUnreachable"
    status = 503
