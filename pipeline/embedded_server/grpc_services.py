"""TF Serving's gRPC services on the generated stubs: PredictionService and ModelService."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from pipeline.embedded_server import api
from pipeline.embedded_server.admin import Admin, LocalAdmin
from pipeline.embedded_server.limits import RequestLimits, check_tensor_proto
from pipeline.embedded_server.manager import ModelManager
from pipeline.embedded_server.metrics import GRPC, ServerMetrics, version_label
from pipeline.embedded_server.servable import Servable
from pipeline.wire.status import ServingError, from_exception
from pipeline.wire.tensor_payloads import SplitPredictRequest, parse_predict_request

log = logging.getLogger(__name__)

_DEADLINE_MARGIN_S = 0.2  # answer DEADLINE_EXCEEDED this long before the client gives up
_UNLIMITED = -1
_LOGGED_CHARS = 300
_HANDSHAKE_TIMEOUT_MS = 10_000  # a connection that never completes its HTTP/2 handshake is closed (gRPC: 120 s)


def _grpc_options(limits: RequestLimits, reuse_port: bool) -> list[tuple[str, int]]:
    return [
        # TF Serving takes INT_MAX-sized requests; this server takes --max_request_bytes (RESOURCE_EXHAUSTED past it)
        ("grpc.max_receive_message_length", limits.max_grpc_message_bytes),
        ("grpc.max_send_message_length", _UNLIMITED),
        ("grpc.server_handshake_timeout_ms", _HANDSHAKE_TIMEOUT_MS),
        # off unless the port is shared on purpose (--serving_processes): a port in use must fail the start
        ("grpc.so_reuseport", int(reuse_port)),
    ]


def answer_rpc(context: grpc.ServicerContext, function: Callable[[], Any]) -> Any:
    """Run one RPC; a ServingError becomes the gRPC status of the same name with TF Serving's message."""
    try:
        return function()
    except Exception as exc:
        _abort(context, _serving_error(exc))


def _serving_error(exc: Exception) -> ServingError:
    """The TF status an RPC answers for ``exc``: a client error is logged in one line, a bug with its traceback."""
    if not isinstance(exc, ServingError):
        log.exception("gRPC call failed")
    else:
        log.info("gRPC -> %s: %s", exc.code, exc.message[:_LOGGED_CHARS])
    return from_exception(exc)


def _abort(context: grpc.ServicerContext, error: ServingError) -> None:
    context.abort(getattr(grpc.StatusCode, error.code), error.message)


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """Predict, Classify, Regress and GetModelMetadata; the first three counted and timed when ``metrics`` is set."""

    def __init__(self, manager: ModelManager, metrics: ServerMetrics | None = None,
                 limits: RequestLimits | None = None):
        self.manager = manager
        self.metrics = metrics
        self.limits = limits or RequestLimits()

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 (gRPC naming)
        contents: dict[str, Any] = {}
        if isinstance(request, SplitPredictRequest):  # from parse_predict_request: contents split out
            request, contents = request.request, request.contents
        return self._infer("Predict", "predict", request, context, contents)

    def Classify(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._infer("Classify", "classify", request, context)

    def Regress(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return self._infer("Regress", "regress", request, context)

    def _infer(self, api_name: str, method: str, request: Any, context: grpc.ServicerContext,
               contents: dict[str, Any] | None = None) -> Any:
        """Resolve the servable, call its ``method``, and record the outcome as TF Serving's PredictionServiceImpl."""
        start = time.perf_counter()
        spec = request.model_spec
        servable: Servable | None = None
        try:
            if method == "predict":
                for alias, proto in request.inputs.items():
                    check_tensor_proto(alias, proto, self.limits.max_tensor_elements,
                                       self.limits.max_grpc_message_bytes)
            servable = api.resolve(self.manager, spec)
            response = servable.predict(request, contents) if method == "predict" else getattr(servable, method)(request)
            if self.metrics is not None:
                self.metrics.request_succeeded(spec.name, str(servable.version), api_name, GRPC,
                                               time.perf_counter() - start)
            return response
        except Exception as exc:
            error = _serving_error(exc)
            if self.metrics is not None:
                self.metrics.request_failed(spec.name, version_label(spec, servable), error.code)
            _abort(context, error)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer_rpc(context, lambda: api.get_model_metadata(self.manager, request))

    def MultiInference(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "MultiInference is not implemented by this server")


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """GetModelStatus and HandleReloadConfigRequest, answered by ``admin`` (this process, or all that serve)."""

    def __init__(self, admin: Admin):
        self.admin = admin

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        return answer_rpc(context, lambda: self.admin.model_status(request))

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        """Apply the config now; answer once its versions are AVAILABLE, or with an error before the deadline."""
        result: dict[str, BaseException] = {}
        done = threading.Event()

        def apply() -> None:
            try:
                self.admin.reload_config(request.config)
            except BaseException as exc:  # handed to the RPC thread
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=apply, name="reload-config", daemon=True).start()
        remaining = context.time_remaining()
        wait_s = None if remaining is None else max(0.0, remaining - _DEADLINE_MARGIN_S)
        if not done.wait(wait_s):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                          "Config reload did not finish before the request deadline; versions are still "
                          "loading in the background (watch GetModelStatus)")
        response = model_management_pb2.ReloadConfigResponse()
        if "error" in result:
            error = from_exception(result["error"])
            log.error("ServerCore::ReloadConfig failed: %s", error.message)
            response.status.error_code = error.code_number
            response.status.error_message = error.message
            context.abort(getattr(grpc.StatusCode, error.code), error.message)
        return response


_PREDICTION_SERVICE = "tensorflow.serving.PredictionService"


def _add_prediction_service(servicer: PredictionService, server: grpc.Server) -> None:
    """The generated ``add_PredictionServiceServicer_to_server``, except that Predict's request is read by
    :func:`parse_predict_request` (tensor contents split out: no protobuf copy of a large tensor)."""
    def handler(method: Callable[..., Any], request: Any, response: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(method, request_deserializer=request,
                                                   response_serializer=response.SerializeToString)

    handlers = {
        "Classify": handler(servicer.Classify, classification_pb2.ClassificationRequest.FromString,
                            classification_pb2.ClassificationResponse),
        "Regress": handler(servicer.Regress, regression_pb2.RegressionRequest.FromString,
                           regression_pb2.RegressionResponse),
        "Predict": handler(servicer.Predict, parse_predict_request, predict_pb2.PredictResponse),
        "MultiInference": handler(servicer.MultiInference, inference_pb2.MultiInferenceRequest.FromString,
                                  inference_pb2.MultiInferenceResponse),
        "GetModelMetadata": handler(servicer.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest.FromString,
                                    get_model_metadata_pb2.GetModelMetadataResponse),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(_PREDICTION_SERVICE, handlers),))
    server.add_registered_method_handlers(_PREDICTION_SERVICE, handlers)


class GrpcServer:
    """Both services on ``host:port`` (port 0: any free port); admin requests go to ``admin`` (default: this
    process's own state). ``reuse_port``: other processes may listen on the same port (SO_REUSEPORT)."""

    def __init__(self, manager: ModelManager, host: str, port: int, max_workers: int,
                 metrics: ServerMetrics | None = None, limits: RequestLimits | None = None,
                 admin: Admin | None = None, reuse_port: bool = False):
        limits = limits or RequestLimits()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
                                   options=_grpc_options(limits, reuse_port))
        _add_prediction_service(PredictionService(manager, metrics, limits), self._server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(admin or LocalAdmin(manager, metrics)),
                                                                  self._server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"could not bind gRPC to {address}")

    def start(self) -> None:
        self._server.start()

    def stop(self, grace_s: float = 1.0) -> None:
        self._server.stop(grace_s).wait(grace_s + 1)
