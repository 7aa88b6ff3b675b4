"""The capture service against a real embedded TF Serving: a mirrored request is re-asked of both versions and
recorded with its id and variant; a side that is down is recorded as an error; a full queue drops and counts; the row
cap rotates; big inputs become hash + excerpt; bad mirrors get a 4xx and write nothing; gRPC mirrors; sampling.

The canary instance serves ``digits`` version 1 (a template classifier that reads digit ``k`` as ``k``) labelled
``stable`` and version 2 (the same, shifted: ``k`` reads as ``k + 1``) labelled ``canary``; and ``solo`` with only a
``stable`` label, so its canary side always fails.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from pipeline.live.capture import CaptureOptions, CaptureService
from pipeline.live.feedback import Answer, LabelSpace, submit_feedback
from pipeline.live.store import CaptureStore, StoreLimits, capture_counts, captured, in_sample
from pipeline.serving.client import ServingClient
from pipeline.settings import Paths, get_paths
from pipeline.util.net import free_port, free_ports

pytestmark = pytest.mark.slow  # real embedded servers and the capture service: seconds each, not the fast suite's kind

MODEL = "digits"
SOLO = "solo"  # stable label only: its canary side is down
_DEADLINE_S = 120.0  # the 2 shared cores may be busy
_HTTP_TIMEOUT_S = 30.0
_PREDICT = f"/v1/models/{MODEL}:predict"
_GRPC_PREDICT = "/tensorflow.serving.PredictionService/Predict"
_GRPC_HEADERS = {"Content-Type": "application/grpc", "X-Proxy-Api": "grpc"}
_GOOD_BODY = {"instances": [[0.0] * 784]}


def digit(k: int) -> list[float]:
    """A synthetic digit ``k`` (the block of cell ``k`` lit, as tests/conftest.py draws them), flattened."""
    image = np.zeros((28, 28), dtype=np.float32)
    row, col = divmod(k, 4)
    image[2 + 8 * row: 8 + 8 * row, 2 + 7 * col: 8 + 7 * col] = 1.0
    return image.reshape(-1).tolist()


@pytest.fixture(scope="module")
def serving_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The canary instance: an embedded TF Serving with ``digits`` {stable: 1, canary: 2} and ``solo`` {stable: 1}."""
    from pipeline.embedded_server import ModelServer, ServerOptions
    from pipeline.wire import model_config
    from tests.release.core_world import BAD, GOOD, build_template_classifier
    from tests.servables import add_version

    root = tmp_path_factory.mktemp("canary")
    build_template_classifier(root / "good", GOOD)
    build_template_classifier(root / "shifted", BAD)
    add_version(root / "models" / MODEL, 1, root / "good")
    add_version(root / "models" / MODEL, 2, root / "shifted")
    add_version(root / "models" / SOLO, 1, root / "good")
    config = model_config.single_model_config(MODEL, root / "models" / MODEL, versions=[1, 2],
                                              labels={"stable": 1, "canary": 2})
    solo = model_config.single_model_config(SOLO, root / "models" / SOLO, versions=[1], labels={"stable": 1})
    config.model_config_list.config.add().CopyFrom(solo.model_config_list.config[0])
    config_path = model_config.write_config(root / "models.config", config)
    grpc_port, rest_port = free_ports(2)
    server = ModelServer(ServerOptions(port=grpc_port, rest_api_port=rest_port, model_config_file=str(config_path),
                                       allow_version_labels_for_unavailable_models=True,  # labels at startup
                                       file_system_poll_wait_seconds=0)).start()
    ServingClient(f"http://127.0.0.1:{server.rest_port}").wait_until_available(MODEL, 2, _DEADLINE_S)
    yield f"http://127.0.0.1:{server.rest_port}"
    server.stop()


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return get_paths(tmp_path / "home")


@pytest.fixture
def start_capture(paths: Paths) -> Iterator[Callable[..., CaptureService]]:
    """``start_capture(serving_url, **CaptureOptions fields)`` -> a started capture service of digits and solo."""
    services: list[CaptureService] = []

    def start(url: str, stable_url: str | None = None, **options: Any) -> CaptureService:
        service = CaptureService(url, [MODEL, SOLO], paths=paths, port=free_port(), options=CaptureOptions(**options),
                                 stable_url=stable_url)
        services.append(service)
        return service.start()

    yield start
    for service in services:
        service.stop()


def dead_url() -> str:
    """A REST URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def mirror(service: CaptureService, body: Any, request_id: str | None = "req", variant: str | None = "canary",
           path: str = _PREDICT, headers: dict[str, str] | None = None) -> requests.Response:
    """What nginx's mirror sends: the client's body and path, its request id and the variant that answered."""
    data = body if isinstance(body, (bytes, Iterator)) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if request_id is not None:
        sent["X-Request-Id"] = request_id
    if variant is not None:
        sent["X-Variant"] = variant
    return requests.post(service.url + path, data=data, headers=sent, timeout=_HTTP_TIMEOUT_S)


def rows(model: str, paths: Paths) -> dict[str, Any]:
    return {row.request_id: row for row in captured(model, paths=paths)}


# ---- captured with both answers -------------------------------------------------------------------------------


def test_a_mirrored_request_is_captured_with_both_answers(serving_url: str, start_capture: Callable[...,
                                                          CaptureService], paths: Paths) -> None:
    service = start_capture(serving_url)
    body = {"instances": [digit(3)]}
    answer = mirror(service, body, "req-3", "canary")
    assert answer.status_code == 202 and answer.json() == {"status": "queued", "request_id": "req-3"}
    labelled_path = f"/capture/v1/models/{MODEL}/labels/stable:predict"  # a mirror_url prefix, a label in the path
    assert mirror(service, {"instances": [digit(5)]}, "req-5", "stable", path=labelled_path).status_code == 202
    service.wait_idle(_DEADLINE_S)

    found = rows(MODEL, paths)
    three, five = found["req-3"], found["req-5"]
    assert (three.variant, three.path, three.batch_size) == ("canary", _PREDICT, 1)
    assert (three.stable_class, three.canary_class, three.agree, three.errors) == (3, 4, False, {})
    assert three.label is None and three.inputs_kept
    assert three.stable_probabilities is not None and len(three.stable_probabilities[0]) == 10
    assert int(np.argmax(three.canary_probabilities[0])) == 4
    with CaptureStore.for_model(MODEL, paths) as store:
        assert store.inputs_of("req-3") == json.dumps(body)
    assert (five.variant, five.path, five.stable_class, five.canary_class) == ("stable", labelled_path, 5, 6)
    assert capture_counts(MODEL, paths).captured == 2 and service.stats()["captured"] == 2
    health = requests.get(f"{service.url}/healthz", timeout=_HTTP_TIMEOUT_S)
    assert health.status_code == 200 and health.json()["models"] == [MODEL, SOLO]


def test_a_grpc_predict_mirror_is_captured(serving_url: str, start_capture: Callable[..., CaptureService],
                                           paths: Paths) -> None:
    from tensorflow_serving.apis import predict_pb2

    from pipeline.wire import tensors

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    tensors.fill_tensor_proto(request.inputs["images"], np.asarray([digit(6)], dtype=np.float32))
    message = request.SerializeToString()
    service = start_capture(serving_url)
    answer = mirror(service, b"\x00" + len(message).to_bytes(4, "big") + message, "grpc-6", "stable",
                    path=_GRPC_PREDICT, headers=_GRPC_HEADERS)
    assert answer.status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(MODEL, paths)["grpc-6"]
    assert (row.variant, row.stable_class, row.canary_class, row.batch_size) == ("stable", 6, 7, 1)
    with CaptureStore.for_model(MODEL, paths) as store:
        kept = json.loads(store.inputs_of("grpc-6") or "{}")
    assert kept["signature_name"] == "serving_default" and np.asarray(kept["inputs"]["images"]).shape == (1, 784)


def test_classify_and_other_grpc_methods_are_ignored(start_capture: Callable[..., CaptureService],
                                                     paths: Paths) -> None:
    service = start_capture(dead_url())
    classify = mirror(service, {"examples": []}, path=f"/v1/models/{MODEL}:classify")
    grpc_classify = mirror(service, b"\x00\x00\x00\x00\x00", path="/tensorflow.serving.PredictionService/Classify",
                           headers=_GRPC_HEADERS)
    for answer in (classify, grpc_classify):
        assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    service.wait_idle(_DEADLINE_S)
    assert rows(MODEL, paths) == {}


# ---- a side down, a full queue --------------------------------------------------------------------------------


def test_a_side_that_is_down_is_recorded_as_its_error(serving_url: str, start_capture: Callable[...,
                                                      CaptureService], paths: Paths) -> None:
    service = start_capture(serving_url)
    answer = mirror(service, {"instances": [digit(2)]}, "solo-2", "stable", path=f"/v1/models/{SOLO}:predict")
    assert answer.status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(SOLO, paths)["solo-2"]
    assert row.stable_class == 2 and row.canary_class is None and row.agree is None
    assert set(row.errors) == {"canary"} and "version label: canary" in row.errors["canary"]

    unreachable = start_capture(dead_url())  # the whole canary instance down: still 202, both errors recorded
    assert mirror(unreachable, {"instances": [digit(2)]}, "gone-2").status_code == 202
    unreachable.wait_idle(_DEADLINE_S)
    gone = rows(MODEL, paths)["gone-2"]
    assert set(gone.errors) == {"stable", "canary"} and "UNAVAILABLE" in gone.errors["stable"]


class _CountingServing(BaseHTTPRequestHandler):
    """A serving REST API that serves no model (404 NOT_FOUND, as TF Serving words it) and notes each path asked."""

    asked: list[str]

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.asked.append(self.path)
        data = json.dumps({"error": f"Servable not found for request: Latest({MODEL})"}).encode()
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def counting_url() -> Iterator[tuple[str, list[str]]]:
    """``(url, asked)``: a :class:`_CountingServing` and the paths it was asked, in order."""
    asked: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), type("Counting", (_CountingServing,), {"asked": asked}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", asked
    server.shutdown()
    server.server_close()


def test_without_a_canary_instance_stable_answers_from_production(
        serving_url: str, counting_url: tuple[str, list[str]], start_capture: Callable[..., CaptureService],
        paths: Paths) -> None:
    """No live canary (the canary instance serves nothing): production gives stable's class, so the monitor's
    mirrored window still has predictions and live accuracy; the canary side stays an error. The canary
    instance is asked once (for ``canary``), not again for a ``stable`` it cannot have."""
    canary_instance, asked = counting_url
    service = start_capture(canary_instance, stable_url=serving_url)
    assert mirror(service, {"instances": [digit(6)]}, "idle-6", "stable").status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(MODEL, paths)["idle-6"]
    assert row.stable_class == 6 and row.canary_class is None and set(row.errors) == {"canary"}
    assert "NOT_FOUND" in row.errors["canary"]
    assert asked == [f"/v1/models/{MODEL}/labels/canary:predict"]


def test_during_a_live_canary_production_is_not_asked(serving_url: str, counting_url: tuple[str, list[str]],
                                                      start_capture: Callable[..., CaptureService],
                                                      paths: Paths) -> None:
    """The canary instance serves both labels: both answers come from it, production is left alone."""
    production, asked = counting_url
    service = start_capture(serving_url, stable_url=production)
    assert mirror(service, {"instances": [digit(3)]}, "live-3", "canary").status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(MODEL, paths)["live-3"]
    assert (row.stable_class, row.canary_class, row.errors) == (3, 4, {})
    assert asked == []


def test_the_versions_get_the_body_the_client_sent(serving_url: str, start_capture: Callable[..., CaptureService],
                                                   paths: Paths) -> None:
    """Sent on as it came (columnar inputs and a signature name kept), not parsed and written again."""
    service = start_capture(serving_url)
    body = json.dumps({"signature_name": "serving_default", "inputs": {"images": [digit(5)]}}).encode()
    assert mirror(service, body, "as-sent").status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(MODEL, paths)["as-sent"]
    assert (row.stable_class, row.canary_class, row.errors) == (5, 6, {})
    with CaptureStore.for_model(MODEL, paths) as store:
        assert store.inputs_of("as-sent") == body.decode()


def test_a_chunked_mirror_is_read_like_any_other(start_capture: Callable[..., CaptureService], paths: Paths) -> None:
    service = start_capture(dead_url())
    body = json.dumps(_GOOD_BODY).encode()
    assert mirror(service, iter([body[:100], body[100:]]), "chunked").status_code == 202  # no length: chunked
    service.wait_idle(_DEADLINE_S)
    with CaptureStore.for_model(MODEL, paths) as store:
        assert store.inputs_of("chunked") == body.decode()


class _StuckServing(BaseHTTPRequestHandler):
    """A serving REST API that answers nothing until ``release`` is set, then 404."""

    release = threading.Event()

    def do_GET(self) -> None:  # noqa: N802
        self._stuck()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._stuck()

    def _stuck(self) -> None:
        self.release.wait(_DEADLINE_S)
        data = b'{"error": "gone"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_full_queue_drops_and_counts(start_capture: Callable[..., CaptureService], paths: Paths) -> None:
    handler = type("Stuck", (_StuckServing,), {"release": threading.Event()})
    stuck = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    stuck.daemon_threads = True
    threading.Thread(target=stuck.serve_forever, daemon=True).start()
    try:
        service = start_capture(f"http://127.0.0.1:{stuck.server_address[1]}", queue_size=1, workers=1)
        statuses = [mirror(service, {"instances": [digit(1)]}, f"q-{n}").status_code for n in range(4)]
        # One request in the worker (stuck), at most one queued: the others are dropped, at once.
        assert statuses.count(202) + statuses.count(503) == 4 and statuses.count(503) >= 2
        assert service.stats()["dropped"] == statuses.count(503)
    finally:
        handler.release.set()
    service.wait_idle(_DEADLINE_S)
    service.stop()  # writes the drop count
    stuck.shutdown()
    stuck.server_close()
    counts = capture_counts(MODEL, paths)
    assert (counts.dropped, counts.captured) == (statuses.count(503), statuses.count(202))


@pytest.mark.parametrize(("hold_s", "answer"), [(_DEADLINE_S, "accepted"), (0.0, "unknown")])
def test_feedback_that_overtakes_its_capture_waits_for_it(paths: Paths, hold_s: float, answer: str) -> None:
    handler = type("Stuck", (_StuckServing,), {"release": threading.Event()})
    stuck = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    stuck.daemon_threads = True
    threading.Thread(target=stuck.serve_forever, daemon=True).start()
    service = CaptureService(f"http://127.0.0.1:{stuck.server_address[1]}", [MODEL], paths=paths, port=free_port(),
                             options=CaptureOptions(workers=1, feedback_hold_s=hold_s),
                             class_names={MODEL: [str(k) for k in range(10)]})
    arrived = threading.Event()
    wait_for_captures = service._await_captures

    def noted(model: str, items: list[Any]) -> None:
        arrived.set()  # the label reached the service while its request is still being captured
        wait_for_captures(model, items)

    service._await_captures = noted  # type: ignore[method-assign]
    answers: list[requests.Response] = []
    with service:
        try:
            assert mirror(service, {"instances": [digit(1)]}, "early").status_code == 202  # its worker is stuck
            poster = threading.Thread(target=lambda: answers.append(requests.post(
                f"{service.url}/feedback/{MODEL}", json={"request_id": "early", "label": 1},
                timeout=_HTTP_TIMEOUT_S)))
            poster.start()
            assert arrived.wait(_DEADLINE_S)
            if hold_s == 0:
                poster.join(_DEADLINE_S)  # answered before the capture landed
        finally:
            handler.release.set()
        poster.join(_DEADLINE_S)
        service.wait_idle(_DEADLINE_S)
    stuck.shutdown()
    stuck.server_close()
    assert [a.json()["results"][0]["answer"] for a in answers] == [answer]
    assert rows(MODEL, paths)["early"].label == (1 if answer == "accepted" else None)  # captured either way


# ---- bounds ---------------------------------------------------------------------------------------------------


def test_the_row_cap_rotates_the_oldest(serving_url: str, start_capture: Callable[..., CaptureService],
                                        paths: Paths) -> None:
    service = start_capture(serving_url, store=StoreLimits(max_rows=3))
    for n in range(5):
        assert mirror(service, {"instances": [digit(n)]}, f"r{n}").status_code == 202
    service.wait_idle(_DEADLINE_S)
    assert [row.request_id for row in captured(MODEL, paths=paths)] == ["r4", "r3", "r2"]
    counts = capture_counts(MODEL, paths)
    assert (counts.kept, counts.captured, counts.rotated) == (3, 5, 2)
    with CaptureStore.for_model(MODEL, paths) as store:
        [result] = submit_feedback(store, [{"request_id": "r0", "label": 0}], LabelSpace(MODEL, None), source="test")
    assert result.answer == Answer.UNKNOWN and "rotated away" in result.detail


def test_inputs_over_the_cap_are_kept_as_hash_and_excerpt(serving_url: str, start_capture: Callable[...,
                                                          CaptureService], paths: Paths) -> None:
    service = start_capture(serving_url, store=StoreLimits(max_input_bytes=1000, excerpt_chars=100))
    data = json.dumps({"instances": [digit(7)]}).encode()
    assert len(data) > 1000 and mirror(service, data, "big").status_code == 202
    service.wait_idle(_DEADLINE_S)
    row = rows(MODEL, paths)["big"]
    assert not row.inputs_kept and row.inputs_excerpt == data.decode()[:100]
    assert row.inputs_sha256 == hashlib.sha256(data).hexdigest()
    assert row.stable_class == 7  # the answers are whole all the same
    with CaptureStore.for_model(MODEL, paths) as store:
        assert store.inputs_of("big") is None


# ---- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "send", "status", "says"), [
    ("no request id", {"request_id": None}, 400, "X-Request-Id"),
    ("bad request id", {"request_id": "two words"}, 400, "X-Request-Id"),
    ("no variant", {"variant": None}, 400, "X-Variant"),
    ("bad variant", {"variant": "blue"}, 400, "X-Variant"),
    ("not JSON", {"body": b"instances=1"}, 400, "not JSON"),
    ("not an object", {"body": b"[1, 2]"}, 400, "JSON object"),
    ("no instances", {"body": {"signature_name": "serving_default"}}, 400, "exactly one"),
    ("too large", {"body": {"instances": [[0.0] * 2000]}}, 413, "over 8000 bytes"),
    ("unknown model", {"path": "/v1/models/other:predict"}, 404, "not captured here"),
    ("not inference", {"path": f"/v1/models/{MODEL}/metadata"}, 404, "not an inference path"),
    ("bad gRPC message", {"path": _GRPC_PREDICT, "body": b"\x00\x00\x00\x00\x09abc", "headers": _GRPC_HEADERS}, 400,
     "gRPC message"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_a_bad_mirror_gets_a_4xx_and_writes_nothing(start_capture: Callable[..., CaptureService], paths: Paths,
                                                    case: str, send: dict[str, Any], status: int, says: str) -> None:
    service = start_capture(dead_url(), max_body_bytes=8000)
    answer = mirror(service, **{"body": _GOOD_BODY, **send})
    assert answer.status_code == status, case
    assert says in answer.json()["error"]
    service.wait_idle(_DEADLINE_S)
    assert "queued" not in service.stats() and service.stats()["rejected"] == 1
    assert rows(MODEL, paths) == {} and capture_counts(MODEL, paths).captured == 0


def test_broken_http_and_internal_errors_get_json_never_a_traceback(start_capture: Callable[..., CaptureService],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    service = start_capture(dead_url())
    with socket.create_connection(("127.0.0.1", service.port), timeout=_HTTP_TIMEOUT_S) as raw:
        raw.sendall(b"GARBAGE\r\n\r\n")
        reply = raw.makefile("rb").read()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and "error" in json.loads(body)

    def broken(path: str) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "handle_get", broken)
    answer = requests.get(f"{service.url}/stats", timeout=_HTTP_TIMEOUT_S)
    assert answer.status_code == 500 and "a bug" not in answer.text and "Traceback" not in answer.text


# ---- sampling -------------------------------------------------------------------------------------------------


def test_the_service_sample_is_deterministic_on_the_request_id(start_capture: Callable[..., CaptureService],
                                                              paths: Paths) -> None:
    service = start_capture(dead_url(), sample=0.5)
    ids = [f"id-{n}" for n in range(16)]
    answers = {request_id: mirror(service, _GOOD_BODY, request_id) for request_id in ids}
    sampled = {request_id for request_id in ids if in_sample(request_id, 0.5)}
    assert 0 < len(sampled) < len(ids)
    for request_id, answer in answers.items():
        assert answer.json()["status"] == ("queued" if request_id in sampled else "not_sampled")
    service.wait_idle(_DEADLINE_S)
    assert set(rows(MODEL, paths)) == sampled


# ---- Prometheus -----------------------------------------------------------------------------------------------


def test_metrics_count_mirrors_in_prometheus_format(start_capture: Callable[..., CaptureService]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    service = start_capture(dead_url())  # both sides down: the row is captured with their errors all the same
    assert mirror(service, _GOOD_BODY, "metered").status_code == 202
    assert mirror(service, _GOOD_BODY, request_id=None).status_code == 400
    service.wait_idle(_DEADLINE_S)

    answer = requests.get(f"{service.url}/metrics", timeout=_HTTP_TIMEOUT_S)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/plain")
    samples = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
               for family in text_string_to_metric_families(answer.text) for sample in family.samples}
    assert samples[("pipeline_capture_mirrored_total", (("model", MODEL), ("status", "queued")))] == 1
    assert samples[("pipeline_capture_mirrored_total", (("model", SOLO), ("status", "queued")))] == 0
    assert samples[("pipeline_capture_processed_total", (("model", MODEL), ("outcome", "captured")))] == 1
    assert samples[("pipeline_capture_dropped_total", (("model", MODEL),))] == 0
    assert samples[("pipeline_capture_feedback_total", (("answer", "accepted"), ("model", MODEL)))] == 0
    assert samples[("pipeline_capture_rejected_total", ())] == 1
    assert samples[("pipeline_capture_queue_depth", ())] == 0
    other = start_capture(dead_url())  # a registry per service: nothing counted there
    assert "pipeline_capture_rejected_total 0.0" in requests.get(f"{other.url}/metrics", timeout=_HTTP_TIMEOUT_S).text
