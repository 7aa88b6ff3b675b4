"""The nginx proxy in front of two real embedded TF Servings: weights, labels, request ids, the fence, the mirror,
reloads under load, and no process left behind.

Stable serves ``hp`` version 1 (half_plus_two: x=1 -> 2.5) labelled ``stable``; the canary serves versions 1 and 2
(half_plus_three: x=1 -> 3.5) with labels ``stable: 1, canary: 2``, so an unlabeled request that lands on the
canary gets 3.5 and a ``stable`` one 2.5 wherever it lands.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest
import requests

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound, SourceUnavailable
from pipeline.live import proxy as proxy_module
from pipeline.live.proxy import NginxProxy, ProxySpec, UpstreamSpec, find_nginx, render_config
from pipeline.serving.client import ServingClient
from pipeline.util.net import free_port
from pipeline.wire import model_config
from pipeline.wire.reload_rpc import reload_call, reload_request

pytestmark = pytest.mark.slow  # real nginx and embedded servers: seconds each, not the fast suite's kind

MODEL = "hp"
STABLE_Y, CANARY_Y = 2.5, 3.5  # y for x=1 from version 1 and version 2
_DEADLINE_S = 60.0  # nginx starts in milliseconds, but the 2 shared cores may be busy
_CALL_TIMEOUT_S = 20.0
_PREDICT_PATHS = (f"/v1/models/{MODEL}:predict", "/tensorflow.serving.PredictionService/Predict")


# ---- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture
def nginx() -> str:
    try:
        return find_nginx()
    except SourceUnavailable:
        pytest.skip("nginx not installed: apt-get install nginx-light")


@pytest.fixture
def upstreams(serve: Any, make_base_path: Any, half_plus_two_dir: Path, half_plus_three_dir: Path,
              tmp_path: Path) -> tuple[UpstreamSpec, UpstreamSpec]:
    """(stable, canary): two in-process embedded servers on free ports."""
    base = make_base_path(MODEL, {1: half_plus_two_dir, 2: half_plus_three_dir})

    def start(name: str, versions: list[int], labels: dict[str, int]) -> UpstreamSpec:
        config = model_config.single_model_config(MODEL, base, versions=versions, labels=labels)
        path = model_config.write_config(tmp_path / f"{name}.config", config)
        server = serve(model_config_file=str(path), allow_version_labels_for_unavailable_models=True)
        return UpstreamSpec(rest=f"127.0.0.1:{server.rest_port}", grpc=f"127.0.0.1:{server.grpc_port}")

    return start("stable", [1], {"stable": 1}), start("canary", [1, 2], {"stable": 1, "canary": 2})


@pytest.fixture
def proxy(nginx: str, tmp_path: Path) -> Iterator[NginxProxy]:
    """A proxy in a temporary runtime directory, stopped at the end whatever happened."""
    proxy = NginxProxy(tmp_path / "proxy")
    yield proxy
    proxy.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A tiny HTTP service standing in for the capture service (the mirror target)."""
    with Receiver() as running:
        yield running


def spec_for(upstreams: tuple[UpstreamSpec, UpstreamSpec], **fields: Any) -> ProxySpec:
    stable, canary = upstreams
    return ProxySpec(stable=stable, canary=canary, **fields)


# ---- helpers --------------------------------------------------------------------------------------------------


class Rest:
    """REST predict through the proxy with a keep-alive session; returns (y for x=1, response)."""

    def __init__(self, proxy: NginxProxy):
        self.base = proxy.endpoint().rest_url
        self.session = requests.Session()

    def predict(self, label: str | None = None, headers: dict[str, str] | None = None) -> tuple[float, Any]:
        path = f"/v1/models/{MODEL}" + (f"/labels/{label}" if label else "") + ":predict"
        response = self.session.post(self.base + path, data=json.dumps({"instances": [1.0]}), headers=headers,
                                     timeout=_CALL_TIMEOUT_S)
        assert response.status_code == 200, response.text
        return response.json()["predictions"][0], response


class Grpc:
    """gRPC through the proxy with TF Serving's own stubs (a stock client, unchanged)."""

    def __init__(self, proxy: NginxProxy):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.channel = grpc.insecure_channel(proxy.endpoint().grpc_target)
        self.prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.model = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def predict(self, label: str | None = None, request_id: str | None = None) -> tuple[float, int, dict[str, str]]:
        """(y, version that answered, initial metadata)."""
        import tensorflow as tf

        response, call = self.prediction.Predict.with_call(
            predict_request(label), timeout=_CALL_TIMEOUT_S,
            metadata=[("x-request-id", request_id)] if request_id else None)
        y = float(tf.make_ndarray(response.outputs["y"])[0])
        return y, response.model_spec.version.value, dict(call.initial_metadata())

    def close(self) -> None:
        self.channel.close()


def predict_request(label: str | None = None) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if label:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0], dtype=tf.float32))
    return request


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # nginx dropping a kept-alive connection at stop
            super().handle_error(request, client_address)


class Receiver:
    """Records every request it gets (path, headers, body) and answers 200 with a body no client may ever see."""

    ANSWER = b'{"predictions": [999.0]}'

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (stdlib naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                # Names in lower case: a copy of an HTTP/2 (gRPC) request keeps its lower-case names.
                headers = {name.lower(): value for name, value in self.headers.items()}
                outer.received.append({"path": self.path, "headers": headers, "body": body})
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.ANSWER)))
                self.end_headers()
                self.wfile.write(outer.ANSWER)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def wait_for(condition: Callable[[], bool], timeout_s: float = _DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def log_entries(proxy: NginxProxy) -> list[dict[str, Any]]:
    if not proxy.access_log_path.exists():
        return []
    return [json.loads(line) for line in proxy.access_log_path.read_text().splitlines() if line.strip()]


def logged(proxy: NginxProxy, request_id: str) -> dict[str, Any]:
    """The access-log entry of ``request_id`` (written just after the answer: wait for it)."""
    found: list[dict[str, Any]] = []

    def present() -> bool:
        found[:] = [e for e in log_entries(proxy) if e["request_id"] == request_id]
        return bool(found)

    wait_for(present)
    assert len(found) == 1, found
    return found[0]


def nginx_processes(proxy: NginxProxy) -> list[psutil.Process]:
    pid = proxy.master_pid()
    assert pid is not None, "no nginx master"
    master = psutil.Process(pid)
    return [master, *master.children(recursive=True)]


# ---- the spec and the config (no nginx needed) ----------------------------------------------------------------


def test_spec_validation() -> None:
    stable = UpstreamSpec(rest="127.0.0.1:8501", grpc="127.0.0.1:8500")
    with pytest.raises(ValueError, match="needs a canary upstream"):
        ProxySpec(stable=stable, canary_percent=10)
    with pytest.raises(ValueError, match="needs a mirror_url"):
        ProxySpec(stable=stable, mirror_percent=10)
    with pytest.raises(ValueError, match="host:port"):
        UpstreamSpec(rest="127.0.0.1:8501; deny all", grpc="127.0.0.1:8500")
    with pytest.raises(ValueError, match="host:port"):
        UpstreamSpec(rest="127.0.0.1:99999", grpc="127.0.0.1:8500")
    with pytest.raises(ValueError, match="mirror_url"):
        ProxySpec(stable=stable, mirror_url="https://capture:443")
    with pytest.raises(ValueError, match="mirror_url"):
        ProxySpec(stable=stable, mirror_url="http://capture:80/a$b")
    with pytest.raises(ValueError):
        ProxySpec(stable=stable, canary=stable, canary_percent=101)
    assert ProxySpec(stable=stable, canary=stable, canary_percent=12.345).canary_percent == 12.35


def test_rendered_config(tmp_path: Path) -> None:
    stable = UpstreamSpec(rest="127.0.0.1:8501", grpc="127.0.0.1:8500")
    canary = UpstreamSpec(rest="127.0.0.1:9501", grpc="127.0.0.1:9500")
    spec = ProxySpec(rest_port=7501, grpc_port=7500, stable=stable, canary=canary, canary_percent=30,
                     mirror_percent=12.5, mirror_url="http://127.0.0.1:7000/capture")
    text = render_config(spec, 4, tmp_path)
    assert "30% canary;" in text and "12.5% 1;" in text
    assert "proxy_pass http://mirror_target/capture$request_uri;" in text
    assert "listen 127.0.0.1:7500 http2;" in text and "listen 127.0.0.1:7501;" in text
    assert "add_header X-Proxy-Config 4 always;" in text
    assert f"pid {tmp_path.resolve()}/nginx.pid;" in text
    plain = render_config(ProxySpec(rest_port=7501, grpc_port=7500, stable=stable), 1, tmp_path)
    assert "mirror /_proxy/mirror;" not in plain and "mirror_target" not in plain
    assert "split_clients" not in plain
    with pytest.raises(ConfigError, match="ports"):
        render_config(ProxySpec(stable=stable), 1, tmp_path)
    with pytest.raises(ConfigError, match="runtime directory"):
        render_config(spec, 1, tmp_path / "with space")


def test_missing_nginx_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(proxy_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(proxy_module, "_NGINX_FALLBACK", str(tmp_path / "no-nginx"))
    with pytest.raises(SourceUnavailable, match="apt-get install nginx-light"):
        NginxProxy(tmp_path / "proxy").start(ProxySpec(stable=UpstreamSpec(rest="127.0.0.1:1", grpc="127.0.0.1:2")))


# ---- weights and labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("percent", "requests_each", "bounds"), [(0, 60, (0, 0)), (100, 60, (60, 60)),
                                                                   (30, 300, (45, 135))])
def test_unlabeled_requests_follow_the_weights(proxy: NginxProxy, upstreams: Any, percent: float,
                                               requests_each: int, bounds: tuple[int, int]) -> None:
    proxy.start(spec_for(upstreams, canary_percent=percent), timeout_s=_DEADLINE_S)
    rest, stub = Rest(proxy), Grpc(proxy)
    try:
        rest_values = [rest.predict()[0] for _ in range(requests_each)]
        grpc_answers = [stub.predict()[:2] for _ in range(requests_each)]
    finally:
        stub.close()
    assert set(rest_values) <= {STABLE_Y, CANARY_Y}
    assert set(grpc_answers) <= {(STABLE_Y, 1), (CANARY_Y, 2)}  # the version tells which instance answered
    low, high = bounds  # 30%: 90 expected of 300, sd 7.9; these are 5.7 sd either side
    assert low <= rest_values.count(CANARY_Y) <= high
    assert low <= sum(version == 2 for _, version in grpc_answers) <= high
    # The access log says which variant served each request, per API.
    wait_for(lambda: len(log_entries(proxy)) >= 2 * requests_each)
    for api, canary_count in (("rest", rest_values.count(CANARY_Y)),
                              ("grpc", sum(version == 2 for _, version in grpc_answers))):
        entries = [e for e in log_entries(proxy) if e["api"] == api and e["path"] in _PREDICT_PATHS]
        assert len(entries) == requests_each
        assert sum(e["variant"] == "canary" for e in entries) == canary_count


def test_labels_whatever_the_weight(proxy: NginxProxy, upstreams: Any) -> None:
    proxy.start(spec_for(upstreams, canary_percent=50), timeout_s=_DEADLINE_S)
    rest, stub = Rest(proxy), Grpc(proxy)
    try:
        assert {rest.predict("stable")[0] for _ in range(30)} == {STABLE_Y}
        assert {stub.predict("stable")[:2] for _ in range(30)} == {(STABLE_Y, 1)}
        answers = [rest.predict("canary") for _ in range(30)]
    finally:
        stub.close()
    assert {y for y, _ in answers} == {CANARY_Y}  # the canary label always reaches the canary over REST
    assert {logged(proxy, r.headers["X-Request-Id"])["variant"] for _, r in answers} == {"canary"}


# ---- request ids ----------------------------------------------------------------------------------------------


def test_every_answer_carries_a_request_id(proxy: NginxProxy, upstreams: Any) -> None:
    proxy.start(spec_for(upstreams, canary_percent=50), timeout_s=_DEADLINE_S)
    rest, stub = Rest(proxy), Grpc(proxy)
    try:
        ids = [rest.predict()[1].headers["X-Request-Id"] for _ in range(20)]
        assert len(set(ids)) == 20 and all(len(i) == 32 for i in ids)
        assert rest.predict(headers={"X-Request-Id": "client-42"})[1].headers["X-Request-Id"] == "client-42"
        # An id that could not be logged or echoed safely is replaced.
        replaced = rest.predict(headers={"X-Request-Id": "a b\"c"})[1].headers["X-Request-Id"]
        assert replaced != 'a b"c' and len(replaced) == 32
        # Errors of the server and refusals of the proxy carry one too.
        missing = requests.get(f"{rest.base}/v1/models/nothing", timeout=_CALL_TIMEOUT_S)
        assert missing.status_code == 404 and missing.headers["X-Request-Id"]
        refused = requests.post(f"{rest.base}/v1/admin", timeout=_CALL_TIMEOUT_S)
        assert refused.status_code == 403 and refused.headers["X-Request-Id"]

        _, _, metadata = stub.predict()
        assert len(metadata["x-request-id"]) == 32
        y, version, metadata = stub.predict(request_id="grpc-client-7")
        assert metadata["x-request-id"] == "grpc-client-7"
        # A server's error passes unchanged, with the id (a trailers-only answer: in the trailing metadata).
        unknown = predict_request()
        unknown.model_spec.name = "nothing"
        with pytest.raises(grpc.RpcError) as caught:
            stub.prediction.Predict(unknown, timeout=_CALL_TIMEOUT_S, metadata=[("x-request-id", "grpc-error-1")])
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Latest(nothing)" in caught.value.details()
        answered = dict(caught.value.initial_metadata()) | dict(caught.value.trailing_metadata())
        assert answered["x-request-id"] == "grpc-error-1", answered
    finally:
        stub.close()
    entry = logged(proxy, "grpc-client-7")
    assert entry["api"] == "grpc" and entry["status"] == 200 and entry["grpc_status"] == "0"
    assert entry["variant"] == ("canary" if version == 2 else "stable")
    assert entry["upstream_addr"] == (upstreams[1] if version == 2 else upstreams[0]).grpc
    assert entry["path"] == "/tensorflow.serving.PredictionService/Predict"
    assert isinstance(entry["request_time"], float) and entry["upstream_response_time"]
    assert logged(proxy, "grpc-error-1")["grpc_status"] == "5"  # NOT_FOUND: the analysis counts it as an error
    rest_entry = logged(proxy, "client-42")
    assert rest_entry["api"] == "rest" and rest_entry["status"] == 200 and rest_entry["method"] == "POST"
    assert rest_entry["variant"] in ("stable", "canary") and rest_entry["config"] == 1


# ---- the fence ------------------------------------------------------------------------------------------------


def test_rest_forwards_only_tf_servings_api(proxy: NginxProxy, upstreams: Any) -> None:
    endpoint = proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    base = endpoint.rest_url
    allowed = [
        ("GET", f"/v1/models/{MODEL}", None),
        ("GET", f"/v1/models/{MODEL}/versions/1", None),
        ("GET", f"/v1/models/{MODEL}/labels/stable/metadata", None),
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [1.0]}),
        ("POST", f"/v1/models/{MODEL}/versions/1:regress",
         {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]}),
        ("POST", f"/v1/models/{MODEL}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}]}),
    ]
    for method, path, body in allowed:
        response = requests.request(method, base + path, json=body, timeout=_CALL_TIMEOUT_S)
        assert response.status_code == 200, (path, response.text)
    refused = [
        ("POST", "/v1/admin/reload", {}),
        ("POST", f"/v1/models/{MODEL}", {}),  # status is GET only
        ("GET", f"/v1/models/{MODEL}:predict", None),  # inference is POST only
        ("DELETE", f"/v1/models/{MODEL}", None),
        ("GET", "/", None),
        ("GET", "/monitoring/prometheus/metrics", None),
        ("POST", f"/v1/models/{MODEL}%2F..%2Fx:predict", {}),  # nginx would read /v1/models/x:predict
        ("POST", f"/v1/models/x/..%2F{MODEL}:predict", {}),
        ("POST", f"/v1/models//{MODEL}:predict", {}),
    ]
    for method, path, body in refused:
        response = requests.request(method, base + path, json=body, timeout=_CALL_TIMEOUT_S)
        assert response.status_code == 403, (method, path, response.status_code)
        assert "Forbidden" in response.json()["error"], path  # TF Serving's error shape


def test_grpc_forwards_only_prediction_and_status(proxy: NginxProxy, upstreams: Any) -> None:
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    endpoint = proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    stub = Grpc(proxy)
    try:
        status = stub.model.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(
            model_spec={"name": MODEL}), timeout=_CALL_TIMEOUT_S)
        assert [v.version for v in status.model_version_status] == [1]
        metadata = stub.prediction.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": MODEL}, metadata_field=["signature_def"]), timeout=_CALL_TIMEOUT_S)
        assert metadata.model_spec.version.value == 1

        # The reload RPC would change what production serves: refused, and the server never sees it.
        empty = model_config.parse_config("model_config_list {\n}\n")
        with pytest.raises(grpc.RpcError) as caught:
            reload_call(stub.channel).with_call(reload_request(empty), timeout=_CALL_TIMEOUT_S)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "Forbidden" in caught.value.details()
        # A trailers-only answer: gRPC hands its headers, the request id among them, over as trailing metadata.
        assert dict(caught.value.trailing_metadata())["x-request-id"]
        for method in ("/grpc.health.v1.Health/Check", "/tensorflow.serving.PredictionService/Nope",
                       "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"):
            call = stub.channel.unary_unary(method, request_serializer=lambda m: m, response_deserializer=bytes)
            with pytest.raises(grpc.RpcError) as caught:
                call(b"", timeout=_CALL_TIMEOUT_S)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
        assert stub.predict()[:2] == (STABLE_Y, 1)  # and predictions still pass
    finally:
        stub.close()
    # Still served: the reload never reached the stable server.
    with ServingClient(rest_url=f"http://{upstreams[0].rest}") as direct:
        assert [s.version for s in direct.model_status(MODEL)] == [1]
    assert endpoint.grpc_port == proxy.endpoint().grpc_port


# ---- the mirror -----------------------------------------------------------------------------------------------


def test_mirror_copies_a_share_and_its_answers_never_reach_clients(proxy: NginxProxy, upstreams: Any,
                                                                  receiver: Receiver) -> None:
    from tensorflow_serving.apis import predict_pb2

    proxy.start(spec_for(upstreams, canary_percent=50, mirror_percent=40, mirror_url=receiver.url),
                timeout_s=_DEADLINE_S)
    rest, stub = Rest(proxy), Grpc(proxy)
    body = json.dumps({"instances": [1.0]})
    try:
        answers = {}
        for _ in range(200):
            y, response = rest.predict()
            assert y in (STABLE_Y, CANARY_Y)  # never the mirror's answer
            answers[response.headers["X-Request-Id"]] = ("rest", "canary" if y == CANARY_Y else "stable")
        for index in range(100):
            y, version, _ = stub.predict(request_id=f"g-{index}")
            answers[f"g-{index}"] = ("grpc", "canary" if version == 2 else "stable")
        assert rest.session.get(f"{rest.base}/v1/models/{MODEL}", timeout=_CALL_TIMEOUT_S).status_code == 200
    finally:
        stub.close()
    wait_for(lambda: len(log_entries(proxy)) >= 301)  # 200 + 100 predictions, 1 status
    time.sleep(0.5)  # copies of the last requests may still be on their way
    received = list(receiver.received)
    rest_copies = [r for r in received if r["headers"].get("x-proxy-api") == "rest"]
    grpc_copies = [r for r in received if r["headers"].get("x-proxy-api") == "grpc"]
    assert 45 <= len(rest_copies) <= 120  # 40% of 200: 80 expected, sd 6.9 (status requests are never copied)
    assert 15 <= len(grpc_copies) <= 65  # 40% of 100
    for copy in received:
        request_id = copy["headers"]["x-request-id"]
        api, variant = answers[request_id]  # each copy is of a request a client made, with its id
        assert copy["headers"]["x-variant"] == variant and copy["headers"]["x-proxy-api"] == api
        if api == "rest":
            assert copy["path"] == f"/v1/models/{MODEL}:predict" and copy["body"] == body.encode()
        else:
            assert copy["path"] == "/tensorflow.serving.PredictionService/Predict"
            assert copy["headers"]["content-type"] == "application/grpc"
            compressed, length = struct.unpack(">BI", copy["body"][:5])  # gRPC's length-prefixed message
            assert compressed == 0 and length == len(copy["body"]) - 5
            message = predict_pb2.PredictRequest.FromString(copy["body"][5:])
            assert message.model_spec.name == MODEL
    assert len({c["headers"]["x-request-id"] for c in received}) == len(received)  # each copied once


def test_a_dead_mirror_target_costs_clients_nothing(proxy: NginxProxy, upstreams: Any) -> None:
    proxy.start(spec_for(upstreams, mirror_percent=100, mirror_url=f"http://127.0.0.1:{free_port()}"),
                timeout_s=_DEADLINE_S)
    rest, stub = Rest(proxy), Grpc(proxy)
    try:
        assert {rest.predict()[0] for _ in range(20)} == {STABLE_Y}
        assert {stub.predict()[0] for _ in range(20)} == {STABLE_Y}
    finally:
        stub.close()


# ---- reloads --------------------------------------------------------------------------------------------------


def test_weight_changes_under_load_fail_no_request(proxy: NginxProxy, upstreams: Any, receiver: Receiver) -> None:
    endpoint = proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    assert proxy.generation() == 1
    counts: dict[str, list[Any]] = {"rest": [0, 0, set()], "grpc": [0, 0, set()]}  # ok, failed, values seen
    errors: list[str] = []
    stop = threading.Event()

    def loop(protocol: str) -> None:
        with ServingClient.for_endpoint(endpoint, timeout_s=_CALL_TIMEOUT_S) as client:
            while not stop.is_set():
                try:
                    y = float(client.predict(MODEL, instances=[1.0], protocol=protocol)["y"][0])
                    counts[protocol][0] += 1
                    counts[protocol][2].add(y)
                except Exception as exc:  # noqa: BLE001 - a failure is what we count
                    counts[protocol][1] += 1
                    errors.append(f"{protocol}: {type(exc).__name__}: {exc}"[:300])

    threads = [threading.Thread(target=loop, args=(p,)) for p in ("rest", "grpc")]
    for thread in threads:
        thread.start()
    try:
        steps = [dict(canary_percent=20), dict(canary_percent=50, mirror_percent=20, mirror_url=receiver.url),
                 dict(canary_percent=100), dict(canary_percent=5), dict(canary_percent=0)]
        for generation, step in enumerate(steps, start=2):
            seen = counts["rest"][0] + counts["grpc"][0]
            proxy.apply(spec_for(upstreams, **step), timeout_s=_DEADLINE_S)
            assert proxy.generation() == generation
            wait_for(lambda seen=seen: counts["rest"][0] + counts["grpc"][0] >= seen + 50)
        # The old workers left although both clients kept their connections open (they moved to the new one).
        wait_for(lambda: len(nginx_processes(proxy)) == 2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=_DEADLINE_S)
    assert errors == [] and counts["rest"][1] == counts["grpc"][1] == 0
    assert counts["rest"][2] == counts["grpc"][2] == {STABLE_Y, CANARY_Y}  # both variants served over time
    assert proxy.endpoint() == endpoint  # ports 0: the running ones are kept
    response = requests.get(f"{endpoint.rest_url}/v1/models/{MODEL}", timeout=_CALL_TIMEOUT_S)
    assert response.headers["X-Proxy-Config"] == "6"


def test_a_refused_config_leaves_the_running_one(proxy: NginxProxy, upstreams: Any, tmp_path: Path) -> None:
    proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    before = proxy.config_path.read_text()
    # nginx -t passes, but the master cannot bind a port in use: it keeps serving the old config.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(DeadlineExceeded, match="Address already in use"):
            proxy.apply(spec_for(upstreams, rest_port=taken.getsockname()[1]), timeout_s=4)
    assert proxy.generation() == 1 and proxy.config_path.read_text() == before
    assert Rest(proxy).predict()[0] == STABLE_Y
    # A config nginx -t refuses is never installed.
    broken = tmp_path / "broken.template"
    broken.write_text("events {}\nhttp { nonsense_directive on; }\n")
    with pytest.raises(ConfigError, match="nonsense_directive"):
        NginxProxy(proxy.runtime_dir, template=broken).apply(spec_for(upstreams), timeout_s=4)
    assert proxy.config_path.read_text() == before and proxy.is_running()


# ---- lifecycle ------------------------------------------------------------------------------------------------


def test_attach_from_another_object_and_stop_leaves_nothing(proxy: NginxProxy, upstreams: Any) -> None:
    endpoint = proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    processes = nginx_processes(proxy)
    assert len(processes) == 2 and all(p.name() == "nginx" for p in processes)  # master + 1 worker
    other = NginxProxy(proxy.runtime_dir)  # another task's view of the same runtime directory
    assert other.is_running() and other.endpoint() == endpoint
    assert other.start(spec_for(upstreams), timeout_s=_DEADLINE_S) == endpoint and other.generation() == 1
    other.apply(other.spec().model_copy(update={"canary_percent": 100.0}), timeout_s=_DEADLINE_S)
    assert Rest(proxy).predict()[0] == CANARY_Y
    # Log rotation: rename, reopen, and requests land in a new file (once the worker has reopened too: the
    # master tells it a moment after reopen_logs returns, and until then lines still go to the renamed file).
    rotated = proxy.access_log_path.rename(proxy.access_log_path.with_suffix(".log.1"))
    proxy.reopen_logs()
    assert proxy.access_log_path.exists() and rotated.stat().st_size > 0
    sent: set[str] = set()

    def lands_in_the_new_file() -> bool:
        sent.add(Rest(proxy).predict()[1].headers["X-Request-Id"])
        return any(e["request_id"] in sent and e["config"] == 2 for e in log_entries(proxy))

    wait_for(lands_in_the_new_file)
    processes = nginx_processes(proxy)  # old workers may still be leaving
    other.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)
    assert not proxy.is_running()
    with pytest.raises(NotFound):
        proxy.endpoint()
    proxy.stop()  # idempotent
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{endpoint.rest_url}/v1/models/{MODEL}", timeout=_CALL_TIMEOUT_S)


def test_a_killed_master_is_replaced_and_its_workers_ended(proxy: NginxProxy, upstreams: Any) -> None:
    proxy.start(spec_for(upstreams), timeout_s=_DEADLINE_S)
    proxy.apply(proxy.spec().model_copy(update={"canary_percent": 100.0}), timeout_s=_DEADLINE_S)
    master, *workers = nginx_processes(proxy)
    supervisord = psutil.Process(int((proxy.runtime_dir / "supervisor" / "supervisord.pid").read_text()))
    assert master.ppid() == supervisord.pid  # supervised
    os.kill(master.pid, signal.SIGKILL)  # a crash: its workers live on, orphaned, holding the listening sockets

    def replaced() -> bool:  # a new nginx master with workers (the orphans answer too, until they are ended)
        pid = proxy.master_pid()
        try:
            new = psutil.Process(pid) if pid not in (None, master.pid) else None
            return new is not None and new.name() == "nginx" and bool(new.children()) and proxy.is_running()
        except psutil.Error:
            return False

    wait_for(replaced)  # supervisord started a new master, which ended the orphans and bound the ports
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    assert proxy.generation() == 2 and Rest(proxy).predict()[0] == CANARY_Y  # the config it had
    new_workers = nginx_processes(proxy)
    proxy.stop()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in new_workers)
    wait_for(lambda: not supervisord.is_running() or supervisord.status() == psutil.STATUS_ZOMBIE)
