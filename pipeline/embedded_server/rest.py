"""TF Serving's REST API (``http_rest_api_handler.cc``) on the stdlib HTTP server.

Paths (case-insensitive, as TF Serving's regexes)::

    GET  /v1/models/{m}[/versions/{v} | /labels/{l}]            -> GetModelStatusResponse as JSON
    GET  /v1/models/{m}[/versions/{v} | /labels/{l}]/metadata   -> model spec + signature_def map
    POST /v1/models/{m}[/versions/{v} | /labels/{l}]:predict|:classify|:regress
    any  <prometheus_config.path>                                  -> Prometheus page (--monitoring_config_file)

Other paths answer 404: TF Serving hands only ``(?i)/v1/.*`` to its API. Errors are ``{"error": "<message>"}``
with the HTTP status of the TF status code; each client error is logged in one line. The sockets, threads and
HTTP limits are :mod:`http_server`'s; the JSON limits (values per body, elements per tensor) are
:class:`RequestLimits`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from pipeline.embedded_server import api, json_tensor
from pipeline.embedded_server.admin import Admin, LocalAdmin
from pipeline.embedded_server.http_server import HttpLimits, HttpRequest, HttpResponse, HttpServer
from pipeline.embedded_server.limits import RequestLimits
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
_MAX_VERSION_DIGITS = 19  # longer cannot be an int64 (and int() of thousands of digits is slow or refused)
_LOGGED_CHARS = 300  # of a path or message in a log line


class RestApi:
    """Turns (method, path, body) into (HTTP status, JSON text); no sockets here, so it is easy to test.

    With ``metrics``, predict/classify/regress are counted and timed as TF Serving's REST handler does.
    """

    def __init__(self, manager: ModelManager, metrics: ServerMetrics | None = None,
                 limits: RequestLimits | None = None, admin: Admin | None = None):
        self.manager = manager
        self.metrics = metrics
        self.limits = limits or RequestLimits()
        self.admin = admin or LocalAdmin(manager, metrics)  # model status: this process's, or all that serve

    def handle(self, method: str, path: str, body: bytes | bytearray) -> tuple[int, str]:
        """Answer one request; never raises. A client error is logged in one line, a bug with its traceback."""
        try:
            return 200, self._dispatch(method, path.split("?", 1)[0], body)
        except ServingError as exc:
            status = exc.http_status or 500
            log.info("REST %s %s -> %d %s: %s", method, path[:_LOGGED_CHARS], status, exc.code,
                     exc.message[:_LOGGED_CHARS])
            return status, json_tensor.error_body(exc.message)
        except Exception as exc:  # a bug must answer 500, not kill the worker
            log.exception("REST %s %s failed", method, path[:_LOGGED_CHARS])
            error = from_exception(exc)
            return 500, json_tensor.error_body(error.message)

    def _dispatch(self, method: str, path: str, body: bytes | bytearray) -> str:
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
        response = self.admin.model_status(request)
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

    def _prediction(self, verb: str, spec: Any, body: bytes | bytearray) -> str:
        """Answer predict/classify/regress, recording the outcome when metrics are on."""
        start = time.perf_counter()
        servable: Servable | None = None
        try:
            doc = json_tensor.parse_json(body, self.limits.max_json_values, self.limits.max_json_string_bytes)
            if isinstance(body, bytearray):
                body.clear()  # consumed (the HTTP layer's buffer): free it before the model runs
            spec.signature_name = json_tensor.signature_name_of(doc)
            servable = api.resolve(self.manager, spec)
            call = self._prepare(verb, servable, spec, doc)
            del doc  # the parsed JSON can be large: free it before the model runs
            text = call()
            if self.metrics is not None:
                self.metrics.request_succeeded(spec.name, str(servable.version), verb, REST,
                                               time.perf_counter() - start)
            return text
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.request_failed(spec.name, version_label(spec, servable), from_exception(exc).code)
            raise

    def _prepare(self, verb: str, servable: Servable, spec: Any, doc: dict) -> Callable[[], str]:
        """Turn the JSON into the model's input now; the returned call runs the model and writes the answer."""
        if verb == "predict":
            key = spec.signature_name or DEFAULT_SIGNATURE
            if key not in servable.signatures:
                raise invalid_argument(f'Serving signature name: "{key}" not found in signature def')
            signature = servable.signatures[key]
            arrays, fmt = json_tensor.parse_predict_request(doc, signature.inputs, self.limits.max_tensor_elements)
            return lambda: json_tensor.format_predict_response(signature.call(arrays), fmt)
        request = self._examples_request(verb, spec, doc)
        if verb == "classify":
            return lambda: json_tensor.format_classify_response(servable.classify(request).result)
        return lambda: json_tensor.format_regress_response(servable.regress(request).result)

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
        number = int(version) if len(version) <= _MAX_VERSION_DIGITS else _MAX_INT64 + 1
        if number > _MAX_INT64:
            shown = version if len(version) <= _MAX_VERSION_DIGITS + 2 else version[:_MAX_VERSION_DIGITS] + "..."
            raise invalid_argument(f"Failed to convert version: {shown} to numeric.")
        spec.version.value = number
    elif label:
        spec.version_label = label
    return spec


def _json_dict(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestServer:
    """The REST API listening on ``host:port`` (port 0: any free port), served by ``threads`` workers.

    With ``metrics`` and ``metrics_path``, requests are recorded and ``metrics_path`` answers the Prometheus page
    (for any method, on that exact path, ahead of the /v1/ API, as TF Serving registers it).
    """

    def __init__(self, manager: ModelManager, host: str, port: int, metrics: ServerMetrics | None = None,
                 metrics_path: str | None = None, *, threads: int = 16, limits: RequestLimits | None = None,
                 timeout_s: float = 30.0, admin: Admin | None = None, reuse_port: bool = False):
        self.limits = limits or RequestLimits()
        admin = admin or LocalAdmin(manager, metrics)
        self._api = RestApi(manager, metrics, self.limits, admin)
        self._metrics_path = metrics_path if metrics is not None else None
        self._metrics_page: Callable[[], bytes] | None = admin.metrics_page if metrics is not None else None
        self._server = HttpServer(host, port, self._respond, threads=threads,
                                  limits=HttpLimits(self.limits.max_request_bytes, timeout_s),
                                  error_body=lambda message: json_tensor.error_body(message).encode("utf-8"),
                                  reuse_port=reuse_port)

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def connection_count(self) -> int:
        return self._server.connection_count

    def _respond(self, request: HttpRequest) -> HttpResponse:
        if self._metrics_page is not None and request.path.split("?", 1)[0] == self._metrics_path:
            return HttpResponse(200, self._metrics_page(), CONTENT_TYPE)
        status, text = self._api.handle(request.method, request.path, request.body)
        return HttpResponse(status, text.encode("utf-8"))

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()
