"""REST API conformance with TF Serving: paths, status codes, messages, row/columnar formats, dtypes, b64.

Test vectors come from TF Serving's ``http_rest_api_handler_test.cc``, ``json_tensor_test.cc`` and
``g3doc/api_rest.md``. Most tests call :class:`RestApi` directly (no sockets); a few go over HTTP.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import requests

from pipeline.embedded_server import ModelServer, ServerOptions
from pipeline.embedded_server.rest import RestApi

MODEL = "half_plus_two"
LABEL = "Version_Label"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, half_plus_two_dir: Path, multi_io_dir: Path) -> Any:
    """half_plus_two version 123 labelled ``Version_Label`` (as in TF Serving's test) + the multi_io model."""
    from pipeline.wire import model_config
    from tests.servables import add_version

    root = tmp_path_factory.mktemp("rest")
    add_version(root / MODEL, 123, half_plus_two_dir)
    add_version(root / "multi_io", 1, multi_io_dir)
    config = model_config.single_model_config(MODEL, root / MODEL, versions=[123], labels={LABEL: 123})
    multi = config.model_config_list.config.add(name="multi_io", base_path=str(root / "multi_io"))
    multi.model_platform = "tensorflow"
    config_path = model_config.write_config(root / "models.config", config)
    server = ModelServer(ServerOptions(port=0, rest_api_port=0, model_config_file=str(config_path),
                                       allow_version_labels_for_unavailable_models=True,
                                       file_system_poll_wait_seconds=0)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(server: Any) -> RestApi:
    return RestApi(server.manager)


def call(api: RestApi, method: str, path: str, body: Any = b"") -> tuple[int, Any]:
    """(status, parsed JSON) of one request; ``body`` may be a dict (sent as JSON) or raw bytes/str."""
    raw = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    status, text = api.handle(method, path, raw.encode() if isinstance(raw, str) else raw)
    return status, json.loads(text)


def predict(api: RestApi, body: Any, path: str = f"/v1/models/{MODEL}:predict") -> tuple[int, Any]:
    return call(api, "POST", path, body)


def error(api: RestApi, method: str, path: str, body: Any = b"") -> tuple[int, str]:
    status, doc = call(api, method, path, body)
    assert set(doc) == {"error"}, doc
    return status, doc["error"]


# ------------------------------------------------------------------ over HTTP


def test_seed_example_over_http(server: Any) -> None:
    # curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST http://localhost:<port>/v1/models/half_plus_two:predict
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/half_plus_two:predict"
    response = requests.post(url, data='{"instances": [1.0, 2.0, 5.0]}', timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_keep_alive_and_errors_over_http(server: Any) -> None:
    base = f"http://127.0.0.1:{server.rest_port}/v1/models"
    with requests.Session() as session:
        for _ in range(3):  # one connection, several requests
            assert session.get(f"{base}/{MODEL}", timeout=10).status_code == 200
        missing = session.post(f"{base}/nope:predict", data='{"instances": [1.0]}', timeout=10)
        assert missing.status_code == 404
        assert missing.json() == {"error": "Servable not found for request: Latest(nope)"}
        bad = session.post(f"{base}/{MODEL}:predict", data="instances = [1, 2]", timeout=10)
        assert bad.status_code == 400
        assert session.get(f"{base}/{MODEL}", timeout=10).status_code == 200  # connection still good


# ------------------------------------------------------------------ paths (UnsupportedApiCalls)


@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/foo"), ("POST", "/v1/foo"), ("GET", "/v1/models/debug/model_name"), ("POST", "/v1/models"),
    ("GET", "/v1/models/foo:predict"), ("GET", "/v1/models/foo/version/50:predict"),
    ("POST", "/v1/models/foo/version/50:regress"), ("POST", "/v1/models/foo/versions/HELLO:regress"),
    ("POST", "/v1/models/foo/metadata"), ("POST", "/v1/models/foo/label/some_label:regress"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress"),
    ("POST", "/v1/models/foo/versions/some_label:regress"),
])
def test_malformed_paths(api: RestApi, method: str, path: str) -> None:
    status, message = error(api, method, path)
    assert status == 400
    assert "Malformed request" in message


def test_missing_model_name_and_huge_version(api: RestApi) -> None:
    assert error(api, "GET", "/v1/models") == (400, "Missing model name in request.")
    status, message = error(api, "POST", f"/v1/models/foo/versions/{2**64 - 1}:regress")
    assert status == 400 and "Failed to convert version" in message


def test_paths_are_case_insensitive(api: RestApi) -> None:
    assert predict(api, {"instances": [1.0]}, f"/V1/MODELS/{MODEL}:PREDICT") == (200, {"predictions": [2.5]})


# ------------------------------------------------------------------ model / version errors


def test_unknown_model_and_version_are_404(api: RestApi) -> None:
    assert error(api, "POST", "/v1/models/foo:predict", {"instances": [1]}) == (
        404, "Servable not found for request: Latest(foo)")
    assert error(api, "POST", "/v1/models/foo/versions/50:predict", {"instances": [1]}) == (
        404, "Servable not found for request: Specific(foo, 50)")
    assert error(api, "POST", f"/v1/models/{MODEL}/versions/99:predict", {"instances": [1]}) == (
        404, f"Servable not found for request: Specific({MODEL}, 99)")
    assert error(api, "GET", "/v1/models/foo") == (404, "Could not find any versions of model foo")
    assert error(api, "GET", f"/v1/models/{MODEL}/versions/7") == (404, f"Could not find version 7 of model {MODEL}")


def test_unknown_label_is_400(api: RestApi) -> None:
    status, message = error(api, "POST", f"/v1/models/{MODEL}/labels/Version_Nonexistent:predict",
                            {"instances": ["x", "y"]})
    assert status == 400 and "Unrecognized servable version label" in message


# ------------------------------------------------------------------ predict (Predict, PredictRequestErrors)


def test_predict_rows_versions_labels_and_columns(api: RestApi) -> None:
    assert predict(api, {"instances": [[1.0, 2.0], [3.0, 4.0]]}) == (200, {"predictions": [[2.5, 3.0], [3.5, 4.0]]})
    assert predict(api, {"instances": [1.0, 2.0]}, f"/v1/models/{MODEL}/versions/123:predict") == (
        200, {"predictions": [2.5, 3.0]})
    assert predict(api, {"instances": [1.0, 2.0]}, f"/v1/models/{MODEL}/labels/{LABEL}:predict") == (
        200, {"predictions": [2.5, 3.0]})
    body = {"signature_name": "serving_default", "instances": [3.0, 4.0]}
    assert predict(api, body, f"/v1/models/{MODEL}/versions/123:predict") == (200, {"predictions": [3.5, 4.0]})
    body = {"signature_name": "serving_default", "inputs": [3.0, 4.0]}
    assert predict(api, body, f"/v1/models/{MODEL}/versions/123:predict") == (200, {"outputs": [3.5, 4.0]})


def test_predict_named_row_objects_collapse_to_bare_values(api: RestApi) -> None:
    # One named output: predictions are bare values, not {"y": ...} objects (TF Serving's row format).
    assert predict(api, {"instances": [{"x": 1.0}, {"x": 2.0}]}) == (200, {"predictions": [2.5, 3.0]})
    assert predict(api, {"inputs": {"x": [1.0, 2.0]}}) == (200, {"outputs": [2.5, 3.0]})


@pytest.mark.parametrize("body,code,fragment", [
    (b"", 400, "JSON Parse error: The document is empty"),
    (b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    (b"[1, 2]", 400, "Is not object"),
    ({"instances": ["x", "y"]}, 400, "not of expected type: float"),
    ({"signature_name": 100}, 400, "'signature_name' key must be a string value."),
    ({"signature_name": "nope", "instances": [1.0]}, 400, 'Serving signature name: "nope" not found in signature def'),
    ({"instances": [1.0], "inputs": [1.0]}, 400, "expecting only one of 'inputs' or 'instances' keys to exist"),
    ({"instances": 1.0}, 400, "Excepting 'instances' to be an list/array"),
    ({"instances": []}, 400, "No values in 'instances' array"),
    ({"foo": [1.0]}, 400, "Missing 'inputs' or 'instances' key"),
    ({"instances": [[1.0, 2.0], [3.0]]}, 400, "Expecting tensor size: 2 but got: 1"),
    ({"instances": [[1.0], 2.0]}, 400, "Expecting shape [1] but got: []"),
    ({"instances": [[[1.0, 2.0], [3.0]]]}, 400, "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ({"instances": [[1.0, [2.0]]]}, 400, "Encountered list at unexpected level: 1 expected < 1"),
    ({"instances": [[[1.0], 2.0]]}, 400, "JSON Value: 2.0 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
    ({"instances": [{"y": 1.0}]}, 400, "JSON object: does not have named input: y"),
    ({"instances": [{"x": 1.0}, 2.0]}, 400, "Expecting object but got list at item 1 of input list"),
    ({"instances": [1.0, {"x": 2.0}]}, 400, "Expecting value/list but got object at item 1 of input list"),
    ({"inputs": {"y": [1.0]}}, 400, "Missing named input: x in 'inputs' object."),
    ({"instances": [16777217]}, 400, "Cannot convert JSON value: 16777217 to float without loss of precision."),
    ({"instances": [1e39]}, 400, "to float without loss of precision."),
])
def test_predict_request_errors(api: RestApi, body: Any, code: int, fragment: str) -> None:
    status, message = error(api, "POST", f"/v1/models/{MODEL}:predict", body)
    assert status == code
    assert fragment in message


def test_ragged_instances_message_names_the_element(api: RestApi) -> None:
    _, message = error(api, "POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0, 2.0], [3.0]]})
    assert message.startswith("Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: ")
    _, message = error(api, "POST", f"/v1/models/{MODEL}:predict", {"instances": [[1.0, 2.0], [[3.0], [4.0]]]})
    assert "Failed to process element: 1 of 'instances' list." in message


def test_nan_and_infinity_round_trip(api: RestApi) -> None:
    status, text = api.handle("POST", f"/v1/models/{MODEL}:predict", b'{"instances": [NaN, Infinity, -Infinity]}')
    assert status == 200
    assert text == '{"predictions": [NaN, Infinity, -Infinity]}'


# ------------------------------------------------------------------ multi-input / multi-output


def test_multi_input_rows_give_objects_per_row(api: RestApi) -> None:
    body = {"instances": [{"x": [1.0, 2.0], "n": 2, "s": "ab"}, {"x": [0.5, 0.5], "n": -1, "s": {"b64": "AAE="}}]}
    status, doc = predict(api, body, "/v1/models/multi_io:predict")
    assert status == 200, doc
    assert doc == {"predictions": [
        {"echo_bytes": {"b64": "YWI="}, "length": 2, "positive": True, "sum": 6.0},
        {"echo_bytes": {"b64": "AAE="}, "length": 2, "positive": False, "sum": -1.0},
    ]}


def test_multi_input_columnar_gives_object_of_outputs(api: RestApi) -> None:
    body = {"inputs": {"x": [[1.0, 2.0]], "n": [3], "s": ["xyz"]}}
    status, doc = predict(api, body, "/v1/models/multi_io:predict")
    assert status == 200, doc
    assert doc == {"outputs": {"echo_bytes": [{"b64": "eHl6"}], "length": [3], "positive": [True], "sum": [9.0]}}


@pytest.mark.parametrize("body,fragment", [
    ({"instances": [1.0, 2.0]}, "instances is a plain list, but expecting list of objects as multiple input"),
    ({"inputs": [1.0]}, "inputs is a plain value/list, but expecting an object as multiple input tensors"),
    ({"instances": [{"x": [1.0, 2.0], "n": 1}]}, "keys must be equal to: n,s,x"),
    ({"instances": [{"x": [1.0, 2.0], "n": 1.5, "s": "a"}]}, "is not of expected type: int64"),
    ({"inputs": {"x": [[1.0, 2.0]], "n": [1]}}, "Missing named input: s in 'inputs' object."),
])
def test_multi_input_errors(api: RestApi, body: Any, fragment: str) -> None:
    status, message = error(api, "POST", "/v1/models/multi_io:predict", body)
    assert status == 400
    assert fragment in message


# ------------------------------------------------------------------ every JSON dtype


@pytest.mark.parametrize("dtype,values,expected", [
    ("float32", [0.2, -1.5, 3], [0.2, -1.5, 3.0]),
    ("float64", [0.1, 1e300, 7], [0.1, 1e300, 7.0]),
    ("int8", [-128, 0, 127], [-128, 0, 127]),
    ("int16", [-32768, 32767], [-32768, 32767]),
    ("int32", [-(2**31), 2**31 - 1], [-(2**31), 2**31 - 1]),
    ("int64", [-(2**63), 2**63 - 1], [-(2**63), 2**63 - 1]),
    ("uint8", [0, 255], [0, 255]),
    ("uint32", [0, 2**32 - 1], [0, 2**32 - 1]),
    ("uint64", [0, 2**64 - 1], [0, 2**64 - 1]),
    ("bool", [True, False], [True, False]),
    ("string", ["hello", "wörld"], [{"b64": "aGVsbG8="}, {"b64": "d8O2cmxk"}]),
    ("string", [{"b64": "aGVsbG8="}, {"b64": "AP8"}], [{"b64": "aGVsbG8="}, {"b64": "AP8="}]),
])
def test_every_json_dtype_round_trips(api: RestApi, dtype: str, values: list, expected: list) -> None:
    body = {"signature_name": f"echo_{dtype}", "instances": values}
    status, doc = predict(api, body, "/v1/models/multi_io:predict")
    assert status == 200, doc
    assert doc == {"predictions": expected}


def test_float32_is_written_with_six_digits_when_it_round_trips(api: RestApi) -> None:
    # TF Serving writes float32 0.2 as 0.2 (not 0.200000003) and 9000000 as 9e+06.
    body = json.dumps({"signature_name": "echo_float32", "instances": [0.2, 9000000.0, 0.00003, 1.0 / 3]})
    status, text = api.handle("POST", "/v1/models/multi_io:predict", body.encode())
    assert status == 200
    assert text == '{"predictions": [0.2, 9e+06, 3e-05, 0.333333343]}'


@pytest.mark.parametrize("dtype,value,fragment", [
    ("int32", 1.5, "Type: Number is not of expected type: int32"),
    ("int32", 2**31, "is not of expected type: int32"),
    ("int8", "a", 'JSON Value: "a" Type: String is not of expected type: int8'),
    ("uint32", -1, "is not of expected type: uint32"),
    ("uint64", 2**64, "is not of expected type: uint64"),
    ("int64", True, "JSON Value: true Type: True is not of expected type: int64"),
    ("bool", 1, "Type: Number is not of expected type: bool"),
    ("string", 1, "Type: Number is not of expected type: string"),
    ("string", {"b64": "!!"}, "Unable to base64 decode"),
    ("string", {"b64": "aGk=", "x": 1}, "JSON object: does not have named input: b64"),
    ("float32", {"b64": "aGk="}, "Type: Object is not of expected type: float"),
    ("float64", 2**53 + 1, "to double without loss of precision."),
    ("float32", None, "JSON Value: null Type: Null is not of expected type: float"),
])
def test_dtype_errors(api: RestApi, dtype: str, value: Any, fragment: str) -> None:
    body = {"signature_name": f"echo_{dtype}", "instances": [value]}
    status, message = error(api, "POST", "/v1/models/multi_io:predict", body)
    assert status == 400
    assert fragment in message


@pytest.mark.parametrize("values,expected", [
    ([0.5, 0, 3, 16777215], [0.5, 0.0, 3.0, 16777215.0]),  # clients write 0.0 as 0: integers among decimals
    ([[0.25, 1], [2, 0.75]], [[0.25, 1.0], [2.0, 0.75]]),
])
def test_integers_mixed_with_decimals_are_floats(api: RestApi, values: list, expected: list) -> None:
    status, doc = predict(api, {"signature_name": "echo_float32", "instances": values}, "/v1/models/multi_io:predict")
    assert status == 200, doc
    assert doc == {"predictions": expected}


@pytest.mark.parametrize("dtype,values,fragment", [
    ("float32", [0.5, 2**24 + 1], "to float without loss of precision."),  # an inexact integer among decimals
    ("float32", [0.5, 1e39], "to float without loss of precision."),
    ("float64", [0.5, 2**53 + 1], "to double without loss of precision."),
])
def test_mixed_numbers_keep_the_lossless_checks(api: RestApi, dtype: str, values: list, fragment: str) -> None:
    status, message = error(api, "POST", "/v1/models/multi_io:predict",
                            {"signature_name": f"echo_{dtype}", "instances": values})
    assert status == 400
    assert fragment in message


def test_nan_and_infinity_are_read_as_tf_serving_reads_them(api: RestApi) -> None:
    body = b'{"signature_name": "echo_float64", "instances": [NaN, 1, -Infinity]}'
    status, text = api.handle("POST", "/v1/models/multi_io:predict", body)
    assert (status, text) == (200, '{"predictions": [NaN, 1.0, -Infinity]}')


def test_b64_in_columnar_single_value(api: RestApi) -> None:
    body = {"signature_name": "echo_string", "inputs": {"b64": "aGk="}}
    assert predict(api, body, "/v1/models/multi_io:predict") == (200, {"outputs": {"b64": "aGk="}})


# ------------------------------------------------------------------ classify / regress


def test_regress_and_classify_vectors(api: RestApi) -> None:
    for path in (f"/v1/models/{MODEL}:regress", f"/v1/models/{MODEL}/versions/123:regress",
                 f"/v1/models/{MODEL}/labels/{LABEL}:regress"):
        assert call(api, "POST", path, {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}) == (
            200, {"results": [42]})
    assert call(api, "POST", f"/v1/models/{MODEL}:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}) == (200, {"results": [[["", 12]]]})
    assert call(api, "POST", f"/v1/models/{MODEL}/labels/{LABEL}:classify",
                {"signature_name": "classify_x_to_y", "examples": [{"x": 10.0}]}) == (200, {"results": [[["", 7]]]})


def test_regress_with_context(api: RestApi) -> None:
    body = {"signature_name": "regress_x2_to_y3", "context": {"x2": 4.0}, "examples": [{"x": 1.0}, {"x2": 10.0}]}
    assert call(api, "POST", f"/v1/models/{MODEL}:regress", body) == (200, {"results": [5.0, 8.0]})


@pytest.mark.parametrize("body,fragment", [
    ({"signature_name": "regress_x_to_y"}, "key 'examples' is expected and was not found"),
    ({"signature_name": "regress_x_to_y", "examples": {}}, "Expecting 'examples' value to be an list/array"),
    ({"signature_name": "regress_x_to_y", "examples": []}, "'examples' value is an empty array"),
    ({"signature_name": "regress_x_to_y", "examples": [[1]]}, "Example must be JSON object but got JSON Array"),
    ({"signature_name": "regress_x_to_y", "examples": [{"x": [1.0, "a"]}]},
     "Unexpected element type in feature: x expecting type: float"),
    ({"signature_name": "regress_x_to_y", "examples": [{"x": None}]},
     "Feature: x has element with unexpected JSON type: Null"),
    ({"signature_name": "regress_x_to_y", "examples": [{"x": 2**64 - 1}]},
     "Feature: x has uint64 element. Only int64 is supported."),
    ({"examples": [{"x": 1.0}]}, "Expected regression signature method_name to be tensorflow/serving/regress"),
])
def test_regress_errors(api: RestApi, body: Any, fragment: str) -> None:
    status, message = error(api, "POST", f"/v1/models/{MODEL}:regress", body)
    assert status == 400
    assert fragment in message


# ------------------------------------------------------------------ status / metadata


def test_status_json_is_tf_servings(api: RestApi) -> None:
    expected = {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/123", f"/v1/models/{MODEL}/labels/{LABEL}"):
        assert call(api, "GET", path) == (200, expected)


def test_metadata_lists_signature_defs(api: RestApi) -> None:
    status, doc = call(api, "GET", f"/v1/models/{MODEL}/metadata")
    assert status == 200
    assert doc["model_spec"] == {"name": MODEL, "signature_name": "", "version": "123"}
    signatures = doc["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x2_to_y3"} <= set(signatures)
    default = signatures["serving_default"]
    assert default["method_name"] == "tensorflow/serving/predict"
    assert default["inputs"]["x"]["dtype"] == "DT_FLOAT"
    assert signatures["regress_x_to_y"]["method_name"] == "tensorflow/serving/regress"
    assert call(api, "GET", f"/v1/models/{MODEL}/versions/123/metadata")[0] == 200
    assert call(api, "GET", f"/v1/models/{MODEL}/labels/{LABEL}/metadata")[0] == 200
    assert error(api, "GET", "/v1/models/foo/metadata") == (404, "Servable not found for request: Latest(foo)")


# ------------------------------------------------------------------ abuse: depth, digits, sizes (one log line each)


def _one_line_logged(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    records = [r for r in caplog.records if r.name.startswith("pipeline.embedded_server")]
    assert len(records) == 1, [r.getMessage()[:200] for r in records]
    assert records[0].exc_info is None and records[0].levelno <= logging.INFO
    assert "\n" not in records[0].getMessage()
    return records[0]


def _nested(depth: int, leaf: str = "1.0") -> str:
    return "[" * depth + leaf + "]" * depth


@pytest.mark.parametrize("depth", [900, 5000, 100_000])
def test_deep_instances_are_one_client_error(api: RestApi, caplog: pytest.LogCaptureFixture, depth: int) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.embedded_server")
    status, text = api.handle("POST", f"/v1/models/{MODEL}:predict", f'{{"instances": {_nested(depth)}}}'.encode())
    assert status == 400
    assert "a tensor has at most 64 dimensions" in json.loads(text)["error"]
    assert len(text) < 2000  # the error quotes at most ~1 KiB of the request
    _one_line_logged(caplog)


def test_deep_json_in_a_key_tf_serving_ignores_is_served(api: RestApi) -> None:
    body = f'{{"instances": [1.0], "note": {_nested(5000, "{}")}}}'.encode()
    assert api.handle("POST", f"/v1/models/{MODEL}:predict", body) == (200, '{"predictions": [2.5]}')


def test_deep_errors_quote_a_bounded_value(api: RestApi) -> None:
    # an "instances" that is not a list is quoted in the error with the whole document: cut short
    body = f'{{"instances": 1.0, "inputs": {_nested(50_000)}}}'.encode()
    status, text = api.handle("POST", f"/v1/models/{MODEL}:predict", body)
    assert status == 400 and "expecting only one of 'inputs' or 'instances'" in text
    assert len(text) < 2000


def test_a_5000_digit_version_is_one_client_error(api: RestApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pipeline.embedded_server")
    status, message = error(api, "POST", f"/v1/models/{MODEL}/versions/{'9' * 5000}:predict", {"instances": [1.0]})
    assert status == 400 and message.startswith("Failed to convert version: 9999") and len(message) < 100
    _one_line_logged(caplog)
    assert error(api, "GET", f"/v1/models/{MODEL}/versions/{'1' * 5000}")[0] == 400


def test_a_number_past_double_range_is_a_parse_error(api: RestApi) -> None:
    status, message = error(api, "POST", f"/v1/models/{MODEL}:predict", b'{"instances": [1e400]}')
    assert (status, message) == (400, "JSON Parse error: Number too big to be stored in double. at offset: 15")


def test_tensor_element_and_json_value_limits(server: Any) -> None:
    from pipeline.embedded_server.limits import JSON_VALUE_BYTES, RequestLimits

    small = RestApi(server.manager, limits=RequestLimits(max_request_bytes=64 << 20, max_tensor_elements=100))
    assert call(small, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0] * 100})[0] == 200
    status, message = error(small, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0] * 101})
    assert status == 400 and "more than 100 elements" in message and "--max_tensor_elements" in message
    status, message = error(small, "POST", f"/v1/models/{MODEL}:predict", {"inputs": [[1.0] * 20] * 6})
    assert status == 400 and "more than 100 elements" in message

    few_values = RestApi(server.manager, limits=RequestLimits(max_request_bytes=JSON_VALUE_BYTES * 1000))
    assert call(few_values, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0] * 900})[0] == 200
    status, message = error(few_values, "POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0] * 1100})
    assert status == 400 and "more than 1000 values" in message
