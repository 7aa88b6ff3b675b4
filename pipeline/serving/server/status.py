"""Errors the server answers with: a TF status code plus TF Serving's message.

Each code maps to an HTTP status exactly as TF Serving's ``ToHTTPStatusCode`` (http_server.cc) does, and to the
gRPC status code of the same name.
"""

from __future__ import annotations

# tensorflow.error.Code: name -> (number, HTTP status).
_CODES: dict[str, tuple[int, int]] = {
    "OK": (0, 200),
    "CANCELLED": (1, 499),
    "UNKNOWN": (2, 500),
    "INVALID_ARGUMENT": (3, 400),
    "DEADLINE_EXCEEDED": (4, 504),
    "NOT_FOUND": (5, 404),
    "ALREADY_EXISTS": (6, 409),
    "PERMISSION_DENIED": (7, 403),
    "RESOURCE_EXHAUSTED": (8, 429),
    "FAILED_PRECONDITION": (9, 400),
    "ABORTED": (10, 409),
    "OUT_OF_RANGE": (11, 400),
    "UNIMPLEMENTED": (12, 501),
    "INTERNAL": (13, 500),
    "UNAVAILABLE": (14, 503),
    "DATA_LOSS": (15, 500),
    "UNAUTHENTICATED": (16, 401),
}
_NAMES_BY_NUMBER = {number: name for name, (number, _) in _CODES.items()}


class ServingError(Exception):
    """A request or load failed with a TF status ``code`` (e.g. ``"NOT_FOUND"``) and TF Serving's message."""

    def __init__(self, code: str, message: str):
        if code not in _CODES:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers this error with."""
        return _CODES[self.code][1]

    @property
    def code_number(self) -> int:
        """The numeric ``tensorflow.error.Code``."""
        return _CODES[self.code][0]

    def __str__(self) -> str:
        # TF's Status::ToString(), which TF Serving nests in some messages.
        return f"{self.code}: {self.message}"


def code_name(number: int) -> str:
    """The name of a numeric ``tensorflow.error.Code`` (``UNKNOWN`` when out of range)."""
    return _NAMES_BY_NUMBER.get(number, "UNKNOWN")


def invalid_argument(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


def not_found(message: str) -> ServingError:
    return ServingError("NOT_FOUND", message)


def failed_precondition(message: str) -> ServingError:
    return ServingError("FAILED_PRECONDITION", message)


def unimplemented(message: str) -> ServingError:
    return ServingError("UNIMPLEMENTED", message)


def from_exception(exc: BaseException) -> ServingError:
    """Wrap any exception raised while serving: TF op errors keep their code, others become INVALID_ARGUMENT.

    TF Serving returns the TF runtime's status unchanged; calling errors in Python (wrong shape or dtype for a
    concrete function) are the client's fault, hence INVALID_ARGUMENT.
    """
    if isinstance(exc, ServingError):
        return exc
    error_code = getattr(exc, "error_code", None)  # tf.errors.OpError
    if isinstance(error_code, int):
        return ServingError(code_name(error_code), getattr(exc, "message", str(exc)))
    return ServingError("INVALID_ARGUMENT", str(exc) or type(exc).__name__)
