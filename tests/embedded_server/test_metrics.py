"""TF Serving's Prometheus endpoint (``--monitoring_config_file``): names, labels, counts, latencies, loads.

Servers run in process (``serve``), metrics are scraped over HTTP and parsed with ``prometheus_client``'s own
parser, as a Prometheus server would read them; one test starts the real ``python -m pipeline.embedded_server``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from pipeline.embedded_server import READY_PREFIX, parse_flags
from pipeline.embedded_server.metrics import (
    CONTENT_TYPE,
    DEFAULT_PATH,
    LOAD_ATTEMPT_COUNT,
    LOAD_LATENCY,
    REQUEST_COUNT,
    REQUEST_LATENCY,
    WARMUP_LATENCY,
    ServerMetrics,
    parse_monitoring_config,
    prometheus_path,
)
from pipeline.util.net import free_port
from pipeline.util.polling import poll_until
from pipeline.wire import model_config
from pipeline.wire.status import ServingError

MODEL = "half_plus_two"
ENABLED = "prometheus_config {\n  enable: true\n}\n"
# TF Serving's request_latency buckets: Exponential(10, 1.8, 33) printed with absl's 6 digits, then +Inf.
TF_LE = ["10", "18", "32.4", "58.32", "104.976", "188.957", "340.122", "612.22", "1102", "1983.59", "3570.47",
         "6426.84", "11568.3", "20823", "37481.3", "67466.4", "121440", "218591", "393464", "708235", "1.27482e+06",
         "2.29468e+06", "4.13043e+06", "7.43477e+06", "1.33826e+07", "2.40887e+07", "4.33596e+07", "7.80473e+07",
         "1.40485e+08", "2.52873e+08", "4.55172e+08", "8.19309e+08", "1.47476e+09", "+Inf"]


# ------------------------------------------------------------------ helpers


def write_monitoring(directory: Path, text: str = ENABLED) -> str:
    path = directory / "monitoring.config"
    path.write_text(text)
    return str(path)


def scrape(rest_port: int, path: str = DEFAULT_PATH) -> dict[str, Any]:
    """The metric families on the page, by name, parsed as Prometheus would."""
    response = requests.get(f"http://127.0.0.1:{rest_port}{path}", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == CONTENT_TYPE
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def samples(families: dict[str, Any], family: str, suffix: str, *label_names: str) -> dict[tuple[str, ...], float]:
    """``{label values: value}`` of one family's samples named ``family + suffix`` (e.g. ``_count``)."""
    return {tuple(s.labels.get(name, "") for name in label_names): s.value
            for s in families[family].samples if s.name == family + suffix}


def request_counts(families: dict[str, Any]) -> dict[tuple[str, ...], float]:
    # prometheus_client's parser names a counter's samples <name>_total; the page itself has no suffix.
    return samples(families, REQUEST_COUNT, "_total", "model_name", "status", "model_version")


def latency_counts(families: dict[str, Any]) -> dict[tuple[str, ...], float]:
    return samples(families, REQUEST_LATENCY, "_count", "model_name", "API", "entrypoint", "model_version")


def rest_predict(port: int, path: str, body: Any) -> int:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(f"http://127.0.0.1:{port}/v1/models/{path}", data=data, timeout=10).status_code


def predict_request(name: str = MODEL, values: Any = (1.0,), dtype: Any = None, **spec: Any) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(list(values), dtype=dtype or tf.float32))
    return request


def grpc_code(call: Callable[[], Any]) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"


# ------------------------------------------------------------------ fixtures


@pytest.fixture
def two_versions(serve: Any, make_base_path: Any, half_plus_two_dir: Path, half_plus_three_dir: Path,
                 tmp_path: Path) -> Any:
    """Versions 1 (stable) and 2 (canary) of one model served together, Prometheus on; and a gRPC stub."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})
    config = model_config.single_model_config(MODEL, base, versions=[1, 2], labels={"stable": 1, "canary": 2})
    config_path = model_config.write_config(tmp_path / "models.config", config)
    server = serve(model_config_file=str(config_path), monitoring_config_file=write_monitoring(tmp_path),
                   allow_version_labels_for_unavailable_models=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield server, base, prediction_service_pb2_grpc.PredictionServiceStub(channel)


# ------------------------------------------------------------------ request metrics


def test_requests_are_counted_by_model_status_and_version_on_rest_and_grpc(two_versions: Any) -> None:
    server, _, stub = two_versions
    port = server.rest_port
    ok = {"instances": [1.0, 2.0]}
    # REST: by version, by label, latest (= 2); failures before and after the servable is known.
    assert rest_predict(port, f"{MODEL}/versions/1:predict", ok) == 200
    assert rest_predict(port, f"{MODEL}/versions/1:predict", ok) == 200
    assert rest_predict(port, f"{MODEL}/labels/canary:predict", ok) == 200
    assert rest_predict(port, f"{MODEL}:predict", ok) == 200
    assert rest_predict(port, f"{MODEL}/versions/1:predict", {"instances": [1.0], "signature_name": "nope"}) == 400
    assert rest_predict(port, f"{MODEL}/versions/2:predict", "not json") == 400
    assert rest_predict(port, f"{MODEL}/versions/9:predict", ok) == 404
    assert rest_predict(port, "nope:predict", ok) == 404
    # gRPC: the same model through Predict, plus failures.
    import tensorflow as tf

    assert grpc_code(lambda: stub.Predict(predict_request(version=1), timeout=10)) == "OK"
    assert grpc_code(lambda: stub.Predict(predict_request(label="canary"), timeout=10)) == "OK"
    assert grpc_code(lambda: stub.Predict(predict_request(dtype=tf.int32, values=[1]), timeout=10)) == \
        "INVALID_ARGUMENT"  # the latest version (2) refuses an int input
    assert grpc_code(lambda: stub.Predict(predict_request(name="nope"), timeout=10)) == "NOT_FOUND"
    assert grpc_code(lambda: stub.Predict(predict_request(label="unknown"), timeout=10)) == "INVALID_ARGUMENT"

    families = scrape(port)
    assert request_counts(families) == {
        (MODEL, "OK", "1"): 3, (MODEL, "OK", "2"): 3,
        (MODEL, "INVALID_ARGUMENT", "1"): 1,  # resolved to version 1, then refused
        (MODEL, "INVALID_ARGUMENT", "2"): 2,  # asked for version 2 by number / resolved to latest 2
        (MODEL, "INVALID_ARGUMENT", ""): 1,  # unknown label: no version to name
        (MODEL, "NOT_FOUND", "9"): 1,
        ("nope", "NOT_FOUND", ""): 2,
    }
    # Latency of successful requests only, by API and entrypoint as TF Serving labels them.
    assert latency_counts(families) == {
        (MODEL, "predict", "REST", "1"): 2, (MODEL, "predict", "REST", "2"): 2,
        (MODEL, "Predict", "GRPC", "1"): 1, (MODEL, "Predict", "GRPC", "2"): 1,
    }


def test_classify_regress_are_counted_but_metadata_and_status_are_not(two_versions: Any) -> None:
    from tensorflow_serving.apis import classification_pb2, get_model_metadata_pb2, regression_pb2

    server, _, stub = two_versions
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = MODEL, "classify_x_to_y"
    classify.model_spec.version.value = 1
    classify.input.example_list.examples.add().features.feature["x"].float_list.value.append(20.0)
    stub.Classify(classify, timeout=10)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = MODEL, "regress_x_to_y"
    regress.input.example_list.examples.add().features.feature["x"].float_list.value.append(80.0)
    stub.Regress(regress, timeout=10)
    examples = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    assert rest_predict(server.rest_port, f"{MODEL}/versions/1:regress", examples) == 200
    assert rest_predict(server.rest_port, f"{MODEL}/versions/1:classify",
                        {"signature_name": "classify_x_to_y", "examples": [{"x": 20.0}]}) == 200
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = MODEL
    stub.GetModelMetadata(metadata, timeout=10)
    base = f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL}"
    assert requests.get(base, timeout=10).status_code == 200
    assert requests.get(f"{base}/metadata", timeout=10).status_code == 200

    families = scrape(server.rest_port)
    assert request_counts(families) == {(MODEL, "OK", "1"): 3, (MODEL, "OK", "2"): 1}
    assert latency_counts(families) == {
        (MODEL, "Classify", "GRPC", "1"): 1, (MODEL, "Regress", "GRPC", "2"): 1,
        (MODEL, "regress", "REST", "1"): 1, (MODEL, "classify", "REST", "1"): 1,
    }


def test_latency_histogram_is_tf_servings(two_versions: Any) -> None:
    server, _, _ = two_versions
    for _ in range(3):
        assert rest_predict(server.rest_port, f"{MODEL}/versions/1:predict", {"instances": [1.0]}) == 200
    families = scrape(server.rest_port)
    family = families[REQUEST_LATENCY]
    assert family.type == "histogram"
    assert family.documentation == "Distribution of wall time (in microseconds) for Tensorflow Serving request."
    buckets = [s for s in family.samples if s.name == REQUEST_LATENCY + "_bucket"]
    assert [s.labels["le"] for s in buckets] == TF_LE
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 3  # cumulative; +Inf holds every request
    (total,) = samples(families, REQUEST_LATENCY, "_sum", "model_name").values()
    assert 0 < total < 3 * 60e6  # microseconds: three requests, each well under a minute


def test_page_is_tf_servings_text_format(two_versions: Any) -> None:
    server, _, _ = two_versions
    assert rest_predict(server.rest_port, f"{MODEL}/versions/1:predict", {"instances": [1.0]}) == 200
    text = requests.get(f"http://127.0.0.1:{server.rest_port}{DEFAULT_PATH}", timeout=10).text
    lines = text.splitlines()
    assert f"# TYPE {REQUEST_COUNT} counter" in lines
    assert f'{REQUEST_COUNT}{{model_name="{MODEL}",status="OK",model_version="1"}} 1.0' in lines  # no _total
    assert f"# TYPE {REQUEST_LATENCY} histogram" in lines
    assert f'{REQUEST_LATENCY}_bucket{{model_name="{MODEL}",API="predict",entrypoint="REST",model_version="1",' \
           f'le="+Inf"}} 1.0' in lines
    assert f"# TYPE {LOAD_ATTEMPT_COUNT} counter" in lines
    assert not any("_total" in line or "_created" in line for line in lines)


# ------------------------------------------------------------------ loads


def test_load_attempts_latency_and_warmup_are_recorded(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                       tmp_path: Path) -> None:
    from tests.servables import predict_log, write_warmup

    base = make_base_path(MODEL, {1: half_plus_two_dir})
    write_warmup(base / "1", [predict_log({"x": [1.0]}, model=MODEL)] * 2)
    server = serve(model_name=MODEL, model_base_path=str(base), monitoring_config_file=write_monitoring(tmp_path))
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "saved_model.pb").write_bytes(b"not a SavedModel")
    broken = staged.rename(base / "2")  # appears whole; the poller tries it, fails, and 1 keeps serving

    def failed_load() -> tuple[dict[str, Any] | None, str]:
        families = scrape(server.rest_port)
        attempts = samples(families, LOAD_ATTEMPT_COUNT, "_total", "model_path", "status")
        return (families if (str(broken), "fail") in attempts else None), str(attempts)

    families = poll_until(failed_load, 30, "a failed load of version 2 recorded")
    assert samples(families, LOAD_ATTEMPT_COUNT, "_total", "model_path", "status") == {
        (str(base / "1"), "success"): 1, (str(broken), "fail"): 1}
    (micros,) = samples(families, LOAD_LATENCY, "_total", "model_path").values()
    assert micros > 0
    assert samples(families, WARMUP_LATENCY, "_count", "model_path", "status") == {(str(base / "1"), "OK"): 1}
    assert rest_predict(server.rest_port, f"{MODEL}:predict", {"instances": [1.0]}) == 200  # still version 1


# ------------------------------------------------------------------ configuration


def test_without_monitoring_the_path_is_404(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                           tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    plain = serve(model_name=MODEL, model_base_path=str(base))
    disabled = serve(model_name=MODEL, model_base_path=str(base),
                     monitoring_config_file=write_monitoring(tmp_path, "prometheus_config { enable: false }"))
    for server in (plain, disabled):
        assert server.metrics is None
        response = requests.get(f"http://127.0.0.1:{server.rest_port}{DEFAULT_PATH}", timeout=10)
        assert response.status_code == 404
        assert rest_predict(server.rest_port, f"{MODEL}:predict", {"instances": [1.0]}) == 200


def test_custom_path_replaces_the_default(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                          tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    text = 'prometheus_config { enable: true path: "/metrics" }'
    server = serve(model_name=MODEL, model_base_path=str(base), monitoring_config_file=write_monitoring(tmp_path, text))
    assert REQUEST_COUNT in scrape(server.rest_port, "/metrics?x=1")  # the query string is not part of the path
    assert requests.get(f"http://127.0.0.1:{server.rest_port}{DEFAULT_PATH}", timeout=10).status_code == 404


@pytest.mark.parametrize("text,code,message", [
    ("prometheus_config { enabled: true }", "INVALID_ARGUMENT", "Invalid protobuf file: '"),
    ("prometheus_config { enable: maybe }", "INVALID_ARGUMENT", "Invalid protobuf file: '"),
    (None, "NOT_FOUND", "No such file or directory"),
])
def test_a_bad_monitoring_file_fails_startup(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                             tmp_path: Path, text: str | None, code: str, message: str) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    path = write_monitoring(tmp_path, text) if text is not None else str(tmp_path / "missing.config")
    with pytest.raises(ServingError) as caught:
        serve(model_name=MODEL, model_base_path=str(base), monitoring_config_file=path)
    assert caught.value.code == code
    assert message in caught.value.message and path in caught.value.message


def test_monitoring_config_follows_tf_servings_proto() -> None:
    assert prometheus_path(parse_monitoring_config("")) is None
    assert prometheus_path(parse_monitoring_config("prometheus_config { enable: true }")) == DEFAULT_PATH
    assert prometheus_path(parse_monitoring_config('prometheus_config { enable: true, path: "/m" }')) == "/m"
    assert parse_flags(["--model_base_path=/m", "--monitoring_config_file=/c"]).monitoring_config_file == "/c"
    assert parse_flags(["--model_base_path=/m"]).monitoring_config_file is None


def test_two_servers_in_one_process_keep_separate_counts(serve: Any, make_base_path: Any, half_plus_two_dir: Path,
                                                         tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    monitoring = write_monitoring(tmp_path)
    first = serve(model_name=MODEL, model_base_path=str(base), monitoring_config_file=monitoring)
    second = serve(model_name=MODEL, model_base_path=str(base), monitoring_config_file=monitoring)
    for _ in range(3):
        assert rest_predict(first.rest_port, f"{MODEL}:predict", {"instances": [1.0]}) == 200
    assert rest_predict(second.rest_port, f"{MODEL}:predict", {"instances": [1.0]}) == 200
    assert request_counts(scrape(first.rest_port)) == {(MODEL, "OK", "1"): 3}
    assert request_counts(scrape(second.rest_port)) == {(MODEL, "OK", "1"): 1}
    assert first.metrics.registry is not second.metrics.registry


def test_buckets_follow_tf_histogram_limits() -> None:
    metrics = ServerMetrics()
    for seconds in (5e-6, 10e-6, 17e-6, 2000.0):  # 10 us lands above the 10 bucket, as TF's upper_bound puts it
        metrics.request_succeeded("m", "1", "Predict", "GRPC", seconds)
    metrics.request_failed("m", "1", "NOT_FOUND")
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    buckets = samples(families, REQUEST_LATENCY, "_bucket", "le")
    assert [buckets[(le,)] for le in ("10", "18", "32.4", "1.47476e+09", "+Inf")] == [1, 3, 3, 3, 4]
    assert samples(families, REQUEST_LATENCY, "_sum", "model_name") == {("m",): 5 + 10 + 17 + 2_000_000_000}
    assert request_counts(families) == {("m", "OK", "1"): 4, ("m", "NOT_FOUND", "1"): 1}


# ------------------------------------------------------------------ the real process


@pytest.mark.slow
def test_process_serves_metrics_with_the_flag(make_base_path: Any, half_plus_two_dir: Path, tmp_path: Path) -> None:
    base = make_base_path(MODEL, {1: half_plus_two_dir})
    rest_port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.embedded_server", "--port=0", f"--rest_api_port={rest_port}",
         f"--model_name={MODEL}", f"--model_base_path={base}", f"--monitoring_config_file={write_monitoring(tmp_path)}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the launcher's handshake: serving once this line is out
            if line.startswith(READY_PREFIX):
                break
        else:
            pytest.fail(f"server exited with {process.wait(timeout=10)} before it was ready")
        assert rest_predict(rest_port, f"{MODEL}:predict", {"instances": [1.0, 2.0]}) == 200
        assert rest_predict(rest_port, f"{MODEL}/versions/5:predict", {"instances": [1.0]}) == 404
        families = scrape(rest_port)
        assert request_counts(families) == {(MODEL, "OK", "1"): 1, (MODEL, "NOT_FOUND", "5"): 1}
        assert samples(families, LOAD_ATTEMPT_COUNT, "_total", "model_path", "status") == {
            (str(base / "1"), "success"): 1}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.slow
def test_process_with_a_bad_monitoring_file_fails_to_start(tmp_path: Path) -> None:
    bad = write_monitoring(tmp_path, "prometheus_config { enable: yes please }")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.embedded_server", "--port=0", f"--rest_api_port={free_port()}",
         f"--model_name={MODEL}", f"--model_base_path={tmp_path}", f"--monitoring_config_file={bad}"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 1
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{bad}'" in result.stderr
