"""TF status codes as TF Serving answers them, and the one :class:`ServingError` of client and server alike.

Each code maps to an HTTP status exactly as TF Serving's ``ToHTTPStatusCode`` (http_server.cc) does, and to the
gRPC status code of the same name (``tensorflow.error.Code`` numbers are the gRPC status numbers).
"""

from __future__ import annotations

from pipeline.errors import PipelineError

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
# The way back from HTTP is ambiguous (400 is three codes); take the most common meaning.
_CODE_BY_HTTP_STATUS = {
    400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
    409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED",
    503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED",
}
_RETRYABLE_CODES = frozenset({"UNAVAILABLE"})
_FROM_CODE = object()  # http_status not given: the code's own HTTP status


class ServingError(PipelineError):
    """A request, load or reload failed with a TF status ``code`` (e.g. ``"NOT_FOUND"``) and TF Serving's message.

    Attributes:
        code: the TF status code name.
        message: TF Serving's own message.
        http_status: the HTTP status of the answer (by default the code's, as TF Serving's REST API maps it);
            None when nothing answered at all.
    """

    def __init__(self, code: str, message: str, http_status: int | None | object = _FROM_CODE):
        if code not in _CODES:
            raise ValueError(f"unknown status code {code!r}")
        super().__init__(f"{code}: {message}")  # TF's Status::ToString(), which TF Serving nests in messages
        self.code = code
        self.message = message
        self.http_status: int | None = _CODES[code][1] if http_status is _FROM_CODE else http_status  # type: ignore[assignment]

    @property
    def code_number(self) -> int:
        """The numeric ``tensorflow.error.Code``."""
        return _CODES[self.code][0]

    @property
    def retryable(self) -> bool:
        """Whether the same side-effect-free request may succeed if sent again."""
        return self.code in _RETRYABLE_CODES


def code_name(number: int) -> str:
    """The name of a numeric ``tensorflow.error.Code`` (``UNKNOWN`` when out of range)."""
    return _NAMES_BY_NUMBER.get(number, "UNKNOWN")


def normalize_code(code: int | str) -> str:
    """A code as TF Serving's JSON or protos may carry it (a name, or its number) as a known name (else UNKNOWN)."""
    if isinstance(code, int) or (isinstance(code, str) and code.isdigit()):
        return code_name(int(code))
    return code if code in _CODES else "UNKNOWN"


def code_for_http_status(status: int) -> str:
    """The code a REST error answer most likely carries (``UNKNOWN`` for statuses TF Serving never sends)."""
    return _CODE_BY_HTTP_STATUS.get(status, "UNKNOWN")


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
