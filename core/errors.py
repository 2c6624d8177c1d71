"""Errors that carry a TensorFlow status code, and the one table that maps codes to HTTP.

Every failure a client can see is an `AspireError(code, message)`. The REST router turns it into TF
Serving's `{"error": message}` body with `http_status(code)`; the gRPC ingress uses the same code.
Load failures are recorded as state (error_code, error_message) in the manager, never re-raised into
its loops.
"""

from __future__ import annotations

# tensorflow.error.Code names, in enum order (value = index), as TF Serving reports them.
CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)

# http_server.cc ToHTTPStatusCode
_HTTP_STATUS = {
    "OK": 200,
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}


def http_status(code: str) -> int:
    """HTTP status for a TF status code name; unknown names map to 500 as in TF Serving."""
    return _HTTP_STATUS.get(code, 500)


class AspireError(Exception):
    """A failure with a TF status code. `str(err)` is the message only, as TF Serving prints it."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            if code not in _HTTP_STATUS:
                raise ValueError(f"unknown status code {code!r}")
            self.code = code

    @property
    def message(self) -> str:
        return self.args[0]

    @property
    def http(self) -> int:
        """The HTTP status REST answers with: TF Serving's mapping of the code."""
        return http_status(self.code)

    def __reduce__(self) -> tuple[type[AspireError], tuple[str, str]]:  # keep the code, pickled
        return (AspireError, (self.message, self.code))


DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024  # --rest_api_max_body_bytes


class BodyTooLarge(AspireError):
    """A REST body over --rest_api_max_body_bytes (as sent, or once decompressed). HTTP has a
    status for it that no TF code maps to, so it is answered 413; gRPC never raises it."""

    code = "RESOURCE_EXHAUSTED"
    http = 413  # overrides the code's mapping (429)

    def __init__(self, size: int | None, limit: int, what: str = "Request body"):
        told = f" of {size} bytes" if size is not None else ""
        super().__init__(
            f"{what}{told} is larger than the limit of {limit} bytes (--rest_api_max_body_bytes)"
        )


def invalid_argument(message: str) -> AspireError:
    return AspireError(message, "INVALID_ARGUMENT")


def not_found(message: str) -> AspireError:
    return AspireError(message, "NOT_FOUND")


def failed_precondition(message: str) -> AspireError:
    return AspireError(message, "FAILED_PRECONDITION")


def unimplemented(message: str) -> AspireError:
    return AspireError(message, "UNIMPLEMENTED")


def internal(message: str) -> AspireError:
    return AspireError(message, "INTERNAL")
