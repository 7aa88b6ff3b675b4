"""TF Serving's REST API (``http_rest_api_handler.cc``) on the stdlib HTTP server.

Paths (case-insensitive, as TF Serving's regexes)::

    GET  /v1/models/{m}[/versions/{v} | /labels/{l}]            -> GetModelStatusResponse as JSON
    GET  /v1/models/{m}[/versions/{v} | /labels/{l}]/metadata   -> model spec + signature_def map
    POST /v1/models/{m}[/versions/{v} | /labels/{l}]:predict|:classify|:regress
    any  <prometheus_config.path>                                  -> Prometheus page (--monitoring_config_file)

Other paths answer 404: TF Serving hands only ``(?i)/v1/.*`` to its API. Errors are ``{"error": "<message>"}``
with the HTTP status of the TF status code. A ThreadingHTTPServer speaking HTTP/1.1 keep-alive, writing each
response in one send with TCP_NODELAY, keeps the overhead well under 1 ms.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf import json_format

from pipeline.embedded_server import api, json_tensor
from pipeline.embedded_server.manager import ModelManager
from pipeline.embedded_server.metrics import CONTENT_TYPE, REST, ServerMetrics, version_label
from pipeline.embedded_server.servable import DEFAULT_SIGNATURE, Servable
from pipeline.wire.status import ServingError, from_exception, invalid_argument, not_found

log = logging.getLogger(__name__)

_SPEC = r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
_PREDICTION_PATH = re.compile(_SPEC + r":(classify|regress|predict)", re.IGNORECASE)
_STATUS_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                          re.IGNORECASE)
_API_PREFIX = re.compile(r"/v1/", re.IGNORECASE)
_MAX_INT64 = 2**63 - 1
_MAX_BODY_BYTES = 1 << 30


class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON text); no sockets here, so it is easy to test.

    With ``metrics``, predict/classify/regress are counted and timed as TF Serving's REST handler does.
    """

    def __init__(self, manager: ModelManager, metrics: ServerMetrics | None = None):
        self.manager = manager
        self.metrics = metrics

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, str]:
        """Answer one request; never raises."""
        try:
            return 200, self._dispatch(method, path.split("?", 1)[0], body)
        except ServingError as exc:
            return exc.http_status or 500, json_tensor.error_body(exc.message)
        except Exception as exc:  # a bug must answer 500, not kill the connection thread
            log.exception("REST %s %s failed", method, path)
            error = from_exception(exc)
            return 500, json_tensor.error_body(error.message)

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        if method == "POST":
            match = _PREDICTION_PATH.fullmatch(path)
            if match:
                name, version, label, verb = match.groups()
                return self._prediction(verb.lower(), _model_spec(name, version, label), body)
        elif method == "GET":
            match = _STATUS_PATH.fullmatch(path)
            if match:
                name, version, label, metadata = match.groups()
                if not name:
                    raise invalid_argument("Missing model name in request.")
                spec = _model_spec(name, version, label)
                return self._metadata(spec) if metadata else self._status(spec)
        if not _API_PREFIX.match(path):
            raise not_found(f"Not found: {method} {path}")  # TF Serving hands only (?i)/v1/.* to its API
        raise invalid_argument(f"Malformed request: {method} {path}")

    def _status(self, spec: Any) -> str:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(spec)
        response = api.get_model_status(self.manager, request)
        return json_format.MessageToJson(response, preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)

    def _metadata(self, spec: Any) -> str:
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(spec)
        response = api.get_model_metadata(self.manager, request)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        # TF Serving prints the unpacked SignatureDefMap under metadata.signature_def.
        body = {
            "model_spec": _json_dict(response.model_spec),
            "metadata": {"signature_def": _json_dict(signature_map)},
        }
        return json.dumps(body, indent=1)

    def _prediction(self, verb: str, spec: Any, body: bytes) -> str:
        """Answer predict/classify/regress, recording the outcome when metrics are on."""
        start = time.perf_counter()
        servable: Servable | None = None
        try:
            doc = json_tensor.parse_json(body)
            spec.signature_name = json_tensor.signature_name_of(doc)
            servable = api.resolve(self.manager, spec)
            text = self._run(verb, servable, spec, doc)
            if self.metrics is not None:
                self.metrics.request_succeeded(spec.name, str(servable.version), verb, REST,
                                               time.perf_counter() - start)
            return text
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.request_failed(spec.name, version_label(spec, servable), from_exception(exc).code)
            raise

    def _run(self, verb: str, servable: Servable, spec: Any, doc: dict) -> str:
        if verb == "predict":
            return self._predict(servable, spec.signature_name, doc)
        request = self._examples_request(verb, spec, doc)
        if verb == "classify":
            return json_tensor.format_classify_response(servable.classify(request).result)
        return json_tensor.format_regress_response(servable.regress(request).result)

    @staticmethod
    def _predict(servable: Any, signature_name: str, doc: dict) -> str:
        key = signature_name or DEFAULT_SIGNATURE
        if key not in servable.signatures:
            raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
        signature = servable.signatures[key]
        arrays, fmt = json_tensor.parse_predict_request(doc, signature.inputs)
        return json_tensor.format_predict_response(signature.call(arrays), fmt)

    @staticmethod
    def _examples_request(verb: str, spec: Any, doc: dict) -> Any:
        from tensorflow_serving.apis import classification_pb2, regression_pb2

        message = classification_pb2.ClassificationRequest if verb == "classify" else regression_pb2.RegressionRequest
        request = message()
        request.model_spec.CopyFrom(spec)
        request.input.CopyFrom(json_tensor.parse_examples_request(doc))
        return request


def _model_spec(name: str, version: str | None, label: str | None) -> Any:
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name)
    if version:
        number = int(version)
        if number > _MAX_INT64:
            raise invalid_argument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    elif label:
        spec.version_label = label
    return spec


def _json_dict(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "TensorFlowServing-compatible"
    rest_api: RestApi  # set on the subclass made per server
    metrics_path: str | None = None  # the Prometheus page, when monitoring is on
    metrics_page: Callable[[], bytes] | None = None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def _answer(self, method: str) -> None:
        body = self._read_body()
        if body is None:
            return
        if self.metrics_page is not None and self.path.split("?", 1)[0] == self.metrics_path:
            # TF Serving registers the page on its exact path, ahead of the /v1/ API, for any method.
            self._send(200, self.metrics_page(), content_type=CONTENT_TYPE)
            return
        status, text = self.rest_api.handle(method, self.path, body)
        self._send(status, text.encode("utf-8"))

    def _read_body(self) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY_BYTES:
            self._send(400, json_tensor.error_body("Invalid Content-Length").encode(), close=True)
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: bytes, close: bool = False, content_type: str = "application/json") -> None:
        close = close or self.close_connection or self.headers.get("Connection", "").lower() == "close"
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                f"{'Connection: close' if close else 'Connection: keep-alive'}\r\n\r\n")
        self.wfile.write(head.encode("latin-1") + payload)  # one send: no Nagle/delayed-ACK stall
        self.close_connection = close

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed HTTP (bad request line, unsupported method): answer TF Serving-style JSON.
        self._send(code, json_tensor.error_body(message or "Bad request").encode(), close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class RestServer:
    """The REST API listening on ``host:port`` (port 0: any free port) in a background thread.

    With ``metrics`` and ``metrics_path``, requests are recorded and ``metrics_path`` answers the Prometheus page.
    """

    def __init__(self, manager: ModelManager, host: str, port: int, metrics: ServerMetrics | None = None,
                 metrics_path: str | None = None):
        attributes: dict[str, Any] = {"rest_api": RestApi(manager, metrics)}
        if metrics is not None and metrics_path is not None:
            attributes.update(metrics_path=metrics_path, metrics_page=staticmethod(metrics.render))
        handler = type("Handler", (_Handler,), attributes)
        self._server = _Server((host, port), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="rest-api", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
