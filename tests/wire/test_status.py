"""The one status-code table and ServingError of client and server."""

from __future__ import annotations

import pytest

from pipeline.errors import PipelineError
from pipeline.wire.status import ServingError, code_for_http_status, code_name, from_exception, normalize_code


@pytest.mark.parametrize("code, http_status, number", [
    ("NOT_FOUND", 404, 5), ("INVALID_ARGUMENT", 400, 3), ("FAILED_PRECONDITION", 400, 9), ("UNAVAILABLE", 503, 14),
    ("RESOURCE_EXHAUSTED", 429, 8), ("UNIMPLEMENTED", 501, 12),
])
def test_each_code_maps_as_tf_serving_maps_it(code, http_status, number):
    error = ServingError(code, "why")
    assert (error.http_status, error.code_number, str(error)) == (http_status, number, f"{code}: why")
    assert code_name(number) == code and isinstance(error, PipelineError)


def test_nothing_answered_has_no_http_status_and_may_be_retried():
    error = ServingError("UNAVAILABLE", "cannot reach", None)
    assert error.http_status is None and error.retryable
    assert not ServingError("NOT_FOUND", "x").retryable


def test_unknown_codes_are_refused_or_normalized():
    with pytest.raises(ValueError, match="unknown status code"):
        ServingError("NO_SUCH_CODE", "x")
    assert normalize_code("NO_SUCH_CODE") == "UNKNOWN" and normalize_code(5) == "NOT_FOUND"
    assert normalize_code("5") == "NOT_FOUND" and normalize_code("OK") == "OK" and code_name(99) == "UNKNOWN"
    assert code_for_http_status(404) == "NOT_FOUND" and code_for_http_status(418) == "UNKNOWN"


def test_exceptions_while_serving_keep_tf_codes_and_default_to_invalid_argument():
    class OpError(Exception):
        error_code = 9
        message = "precondition"

    assert from_exception(OpError()).code == "FAILED_PRECONDITION"
    assert from_exception(TypeError("bad arg")).code == "INVALID_ARGUMENT"
    same = ServingError("NOT_FOUND", "x")
    assert from_exception(same) is same
