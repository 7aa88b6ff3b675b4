"""The TF Serving client: request building, answer parsing, retries and deadlines (no server needed), then
against a live embedded server (status, metadata, predict over REST and gRPC, errors)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from pipeline.errors import ConfigError, DeadlineExceeded
from pipeline.serving.client import (
    NO_RETRY,
    RetryPolicy,
    ServingClient,
    ServingError,
    VersionStatus,
    call_with_retries,
)

_FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.001)

_HALF_PLUS_TWO_METADATA = {
    "model_spec": {"name": "m", "signature_name": "", "version": "2"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "serving_default": {
                    "inputs": {"x": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "1"}]}}},
                    "outputs": {"y": {"dtype": "DT_FLOAT", "tensor_shape": {"unknown_rank": True}}},
                    "method_name": "tensorflow/serving/predict",
                },
                "two": {
                    "inputs": {"a": {"dtype": "DT_INT64", "tensor_shape": {"dim": []}}},
                    "outputs": {
                        "p": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "10"}]}},
                        "c": {"dtype": "DT_INT64", "tensor_shape": {"dim": [{"size": "-1"}]}},
                    },
                    "method_name": "tensorflow/serving/predict",
                },
            }
        }
    },
}


# ---- a fake requests.Session -----------------------------------------------------------------------------


class FakeSession:
    """Answers each request with the next scripted reply (a (status, body) pair or an exception)."""

    def __init__(self, *replies: Any):
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def request(self, method: str, url: str, data: Any = None, headers: Any = None, timeout: Any = None):
        self.requests.append({"method": method, "url": url, "body": json.loads(data) if data else None, "raw": data})
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        status, body = reply
        response = requests.Response()
        response.status_code = status
        response._content = (body if isinstance(body, str) else json.dumps(body)).encode()
        return response

    def get(self, url: str, timeout: Any = None):
        return self.request("GET", url, timeout=timeout)

    def close(self) -> None:
        pass


def _client(*replies: Any, retry: RetryPolicy = _FAST_RETRY) -> tuple[ServingClient, FakeSession]:
    session = FakeSession(*replies)
    return ServingClient("http://127.0.0.1:1/", None, timeout_s=2, retry=retry, session=session), session


def test_client_needs_an_address():
    with pytest.raises(ConfigError):
        ServingClient(None, None)


def test_status_reads_tf_serving_json_and_addresses_version_or_label():
    status = {
        "model_version_status": [
            {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "1", "state": "END", "status": {"error_code": "NOT_FOUND", "error_message": "gone"}},
        ]
    }
    client, session = _client((200, status), (200, status), (200, status))
    assert client.model_status("m") == [VersionStatus(2, "AVAILABLE"), VersionStatus(1, "END", "NOT_FOUND: gone")]
    client.model_status("m", version=2)
    client.model_status("m", label="canary")
    assert [r["url"] for r in session.requests] == [
        "http://127.0.0.1:1/v1/models/m",
        "http://127.0.0.1:1/v1/models/m/versions/2",
        "http://127.0.0.1:1/v1/models/m/labels/canary",
    ]
    with pytest.raises(ValueError, match="version or a label"):
        client.model_status("m", version=1, label="stable")


def test_metadata_becomes_plain_dicts():
    client, _ = _client((200, _HALF_PLUS_TWO_METADATA))
    signatures = client.metadata("m")
    assert signatures["serving_default"] == {
        "method_name": "tensorflow/serving/predict",
        "inputs": {"x": {"dtype": "float32", "shape": [None, 1]}},
        "outputs": {"y": {"dtype": "float32", "shape": None}},
    }
    assert signatures["two"]["inputs"]["a"] == {"dtype": "int64", "shape": []}


def test_predict_row_format_names_the_lone_output_from_metadata():
    client, session = _client((200, {"predictions": [[2.5], [3.0]]}), (200, _HALF_PLUS_TWO_METADATA))
    result = client.predict("m", instances=np.array([[1.0], [2.0]], dtype=np.float32), version=2)
    assert session.requests[0]["url"].endswith("/v1/models/m/versions/2:predict")
    assert session.requests[0]["body"] == {"signature_name": "serving_default", "instances": [[1.0], [2.0]]}
    assert result["y"].dtype == np.float32
    np.testing.assert_array_equal(result["y"], [[2.5], [3.0]])


def test_predict_json_sends_the_body_as_it_is():
    body = b'{"inputs": [[1.0], [2.0]],   "signature_name": "serving_default"}'  # spacing a re-encode would lose
    client, session = _client((200, {"outputs": [[2.5], [3.0]]}), (200, _HALF_PLUS_TWO_METADATA),
                              (404, {"error": "Servable not found for request: Latest(m)"}))
    result = client.predict_json("m", body, label="canary")
    assert session.requests[0]["url"].endswith("/v1/models/m/labels/canary:predict")
    assert session.requests[0]["raw"] == body
    assert result["y"].dtype == np.float32
    np.testing.assert_array_equal(result["y"], [[2.5], [3.0]])
    with pytest.raises(ServingError) as failed:
        client.predict_json("m", body)
    assert failed.value.code == "NOT_FOUND"


def test_float32_inputs_are_sent_exactly_and_nan_as_json_nan():
    values = np.array([[1 / 3, 1e-38, 3.4028235e38, 0.0, -2.5]], dtype=np.float32)
    client, session = _client((200, {"predictions": [[1.0]]}), (200, _HALF_PLUS_TWO_METADATA),
                              (200, {"predictions": [[1.0]]}))
    client.predict("m", instances=values)
    sent = np.asarray(session.requests[0]["body"]["instances"], dtype=np.float32)
    np.testing.assert_array_equal(sent, values)  # bit for bit, not just close
    client.predict("m", instances=np.array([[np.nan, 1.0]], dtype=np.float32))
    assert np.isnan(session.requests[2]["body"]["instances"][0][0])  # NaN, not null


def test_predict_columnar_with_several_outputs_by_label():
    reply = {"outputs": {"p": [[0.1] * 10], "c": [3]}}
    client, session = _client((200, reply), (200, _HALF_PLUS_TWO_METADATA))
    result = client.predict("m", inputs={"a": np.int64(7)}, label="stable", signature_name="two")
    assert session.requests[0]["url"].endswith("/v1/models/m/labels/stable:predict")
    assert session.requests[0]["body"] == {"signature_name": "two", "inputs": {"a": 7}}
    assert result["c"].dtype == np.int64 and result["c"].tolist() == [3]
    assert result["p"].shape == (1, 10)


def test_predict_rows_with_several_outputs_and_cached_signature():
    reply = {"predictions": [{"p": [0.0] * 10, "c": 1}, {"p": [1.0] * 10, "c": 2}]}
    client, session = _client((200, reply), (200, _HALF_PLUS_TWO_METADATA), (200, reply))
    for _ in range(2):
        result = client.predict("m", instances={"a": [1, 2]}, signature_name="two")
    assert len(session.requests) == 3  # the metadata was asked once
    assert session.requests[0]["body"]["instances"] == [{"a": 1}, {"a": 2}]
    assert result["c"].tolist() == [1, 2] and result["p"].shape == (2, 10)


def test_predict_wants_instances_or_inputs():
    client, _ = _client()
    with pytest.raises(ValueError, match="instances"):
        client.predict("m")
    with pytest.raises(ValueError, match="instances"):
        client.predict("m", instances=[1], inputs=[1])


def test_server_errors_surface_with_code_message_and_http_status():
    message = "Servable not found for request: Latest(nope)"
    client, session = _client((404, {"error": message}))
    with pytest.raises(ServingError) as caught:
        client.model_status("nope")
    assert (caught.value.code, caught.value.message, caught.value.http_status) == ("NOT_FOUND", message, 404)
    assert len(session.requests) == 1  # not retried


def test_non_json_error_keeps_the_body():
    client, _ = _client((502, "<html>bad gateway</html>"))
    with pytest.raises(ServingError, match="bad gateway") as caught:
        client.model_status("m")
    assert caught.value.http_status == 502


def test_status_is_retried_after_connection_errors_and_503():
    ok = {"model_version_status": [{"version": "1", "state": "AVAILABLE", "status": {}}]}
    client, session = _client(requests.ConnectionError("refused"), (503, {"error": "busy"}), (200, ok))
    assert client.model_status("m") == [VersionStatus(1, "AVAILABLE")]
    assert len(session.requests) == 3


def test_retries_stop_after_the_policy_attempts():
    client, session = _client(*[requests.ConnectionError("refused")] * 5)
    with pytest.raises(ServingError, match="cannot reach") as caught:
        client.model_status("m")
    assert caught.value.code == "UNAVAILABLE" and caught.value.http_status is None
    assert len(session.requests) == 3


def test_a_read_timeout_is_a_deadline_not_a_retry():
    client, session = _client(requests.ReadTimeout("slow"), (200, {}))
    with pytest.raises(DeadlineExceeded, match="no answer"):
        client.model_status("m")
    assert len(session.requests) == 1


def test_call_with_retries_backs_off_and_gives_up_before_the_deadline():
    calls: list[float] = []

    def unavailable(remaining_s: float) -> None:
        calls.append(remaining_s)
        raise ServingError("UNAVAILABLE", "down")

    policy = RetryPolicy(attempts=10, backoff_s=0.05, max_backoff_s=0.05)
    with pytest.raises(ServingError, match="down"):
        call_with_retries(unavailable, 0.12, policy, "probe")
    assert 2 <= len(calls) <= 3  # 0.05 s pauses inside 0.12 s
    assert all(c > 0 for c in calls)  # no attempt was made once the deadline had passed
    assert calls == sorted(calls, reverse=True)  # each attempt gets what is left of the deadline


def test_call_with_retries_never_repeats_a_call_without_retry():
    calls = []

    def unavailable(remaining_s: float) -> None:
        calls.append(remaining_s)
        raise ServingError("UNAVAILABLE", "down")

    with pytest.raises(ServingError):
        call_with_retries(unavailable, 5, NO_RETRY, "reload")
    assert len(calls) == 1


def test_retry_delays_grow_and_are_capped():
    policy = RetryPolicy(attempts=5, backoff_s=0.1, max_backoff_s=0.3)
    assert [policy.delay_s(n) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.3, 0.3]


def test_wait_until_available_names_the_last_state():
    loading = {"model_version_status": [{"version": "3", "state": "LOADING", "status": {}}]}
    client, _ = _client(*[(200, loading)] * 100)
    with pytest.raises(DeadlineExceeded, match="version 3 not AVAILABLE within 0.3s; last seen: version 3: LOADING"):
        client.wait_until_available("m", 3, deadline_s=0.3, poll_s=0.05)


def test_wait_until_available_fails_fast_on_a_failed_load():
    failed = {
        "model_version_status": [
            {"version": "3", "state": "END", "status": {"error_code": "INVALID_ARGUMENT", "error_message": "bad"}}
        ]
    }
    client, session = _client((404, {"error": "not yet"}), (200, failed))
    with pytest.raises(ServingError, match="version 3: END .INVALID_ARGUMENT: bad.") as caught:
        client.wait_until_available("m", 3, deadline_s=5, poll_s=0.01)
    assert caught.value.code == "INVALID_ARGUMENT" and len(session.requests) == 2


# ---- deadlines against a port that accepts and never answers ----------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A listening socket that completes TCP handshakes (kernel backlog) and never says a word."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture(scope="session")
def grpc_apis() -> None:
    """Import the gRPC stubs (and with them TensorFlow, ~5 s) before anything is timed."""
    pytest.importorskip("tensorflow_serving.apis.model_service_pb2_grpc", reason="tensorflow-serving-api")


@pytest.mark.parametrize("protocol", ["rest", pytest.param("grpc", marks=pytest.mark.slow)])
def test_deadline_exceeded_against_a_silent_server(silent_port, protocol, request):
    if protocol == "grpc":
        request.getfixturevalue("grpc_apis")
    target = f"127.0.0.1:{silent_port}"
    with ServingClient(f"http://{target}", target, timeout_s=0.5) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="no answer"):
            client.model_status("m", protocol=protocol)
        assert time.monotonic() - started < 3
        assert client.is_ready(timeout_s=0.3) is False


@pytest.mark.slow
def test_reload_config_is_not_retried_when_nothing_listens(grpc_apis):
    with socket.socket() as probe:  # a port with no listener: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with ServingClient(None, f"127.0.0.1:{port}", timeout_s=2) as client:
        with pytest.raises(ServingError) as caught:
            client.reload_config("model_config_list {}", deadline_s=2)
    assert caught.value.code == "UNAVAILABLE"


# ---- against a live embedded server (python -m pipeline.embedded_server, through the local backend) ----------

_MODEL = "half_plus_two"
_X = np.array([[1.0], [2.0], [5.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def live(tmp_path_factory, half_plus_two_dir, half_plus_three_dir) -> Iterator[ServingClient]:
    """A server with version 1 (0.5x+2, ``stable``) and version 2 (0.5x+3, ``canary``); a client on both APIs."""
    import shutil

    from pipeline.serving.backends.local import LocalBackend
    from pipeline.settings import get_paths
    from pipeline.wire.model_config import single_model_config

    home = tmp_path_factory.mktemp("live")
    base_path = home / "models" / _MODEL
    for version, source in {1: half_plus_two_dir, 2: half_plus_three_dir}.items():
        shutil.copytree(source, base_path / str(version))
    backend = LocalBackend("staging", {"backend": "local"}, get_paths(home))
    try:
        endpoint = backend.start(timeout_s=120)
        backend.apply_config(single_model_config(_MODEL, base_path, [1, 2], {"stable": 1, "canary": 2}), timeout_s=60)
        with ServingClient.for_endpoint(endpoint, timeout_s=10) as client:
            yield client
    finally:
        backend.stop()


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_live_status_by_model_version_and_label(live, protocol):
    assert sorted(live.model_status(_MODEL, protocol=protocol), key=lambda s: s.version) == [
        VersionStatus(1, "AVAILABLE"), VersionStatus(2, "AVAILABLE"),
    ]  # fmt: skip
    assert live.model_status(_MODEL, version=1, protocol=protocol) == [VersionStatus(1, "AVAILABLE")]
    assert [s.version for s in live.model_status(_MODEL, label="canary", protocol=protocol)] == [2]


@pytest.mark.slow
def test_live_wait_until_available(live):
    assert live.wait_until_available(_MODEL, 2, deadline_s=5) == VersionStatus(2, "AVAILABLE")
    assert live.wait_until_available(_MODEL, None, deadline_s=5, label="stable").version == 1
    with pytest.raises(DeadlineExceeded, match=r"version 9 not AVAILABLE within 0.3s; last seen: NOT_FOUND"):
        live.wait_until_available(_MODEL, 9, deadline_s=0.3, poll_s=0.05)


@pytest.mark.slow
def test_live_metadata_is_the_same_over_both_apis(live):
    rest = live.metadata(_MODEL, version=1, protocol="rest")
    assert rest == live.metadata(_MODEL, version=1, protocol="grpc")
    assert rest["serving_default"]["inputs"] == {"x": {"dtype": "float32", "shape": None}}
    assert rest["serving_default"]["outputs"] == {"y": {"dtype": "float32", "shape": None}}
    assert {"classify_x_to_y", "regress_x_to_y"} <= set(rest)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("where", "intercept"), [({"version": 1}, 2.0), ({"version": 2}, 3.0), ({"label": "stable"}, 2.0),
                             ({"label": "canary"}, 3.0), ({}, 3.0)]
)  # fmt: skip
def test_live_predict_rows_and_columns_agree_over_rest_and_grpc(live, where, intercept):
    expected = 0.5 * _X + intercept
    results = [
        live.predict(_MODEL, instances=_X, protocol="rest", **where),
        live.predict(_MODEL, inputs=_X, protocol="rest", **where),
        live.predict(_MODEL, instances=_X, protocol="grpc", **where),
        live.predict(_MODEL, inputs={"x": _X}, protocol="grpc", **where),
    ]
    for result in results:
        assert set(result) == {"y"} and result["y"].dtype == np.float32
        np.testing.assert_array_equal(result["y"], expected)


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_live_errors_carry_tf_serving_code_and_message(live, protocol):
    with pytest.raises(ServingError) as unknown_model:
        live.model_status("no_such_model", protocol=protocol)
    assert (unknown_model.value.code, unknown_model.value.http_status) == ("NOT_FOUND", 404)
    assert "no_such_model" in unknown_model.value.message

    with pytest.raises(ServingError) as unknown_version:
        live.predict(_MODEL, inputs=_X, version=7, protocol=protocol)
    assert (unknown_version.value.code, unknown_version.value.http_status) == ("NOT_FOUND", 404)

    with pytest.raises(ServingError) as bad_input:
        live.predict(_MODEL, inputs={"not_x": _X}, version=1, protocol=protocol)
    assert (bad_input.value.code, bad_input.value.http_status) == ("INVALID_ARGUMENT", 400)
    assert "x" in bad_input.value.message  # TF Serving names the missing (REST) or unknown (gRPC) input


@pytest.mark.slow
def test_live_a_rejected_reload_changes_nothing(live):
    from pipeline.wire.model_config import ModelServerConfig

    config = ModelServerConfig()
    for _ in range(2):  # the same model twice: TF Serving refuses the whole config
        model = config.model_config_list.config.add()
        model.name, model.base_path, model.model_platform = _MODEL, "/nonexistent/half_plus_two", "tensorflow"
    with pytest.raises(ServingError, match="multiple times") as caught:
        live.reload_config(config, deadline_s=10)
    assert caught.value.code == "INVALID_ARGUMENT"
    assert live.predict(_MODEL, inputs=_X, label="canary")["y"].tolist() == (0.5 * _X + 3).tolist()
