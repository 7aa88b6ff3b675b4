"""One client for any TensorFlow Serving endpoint, through its documented REST and gRPC APIs.

REST (``/v1/models/<model>[/versions/<N>|/labels/<label>][/metadata|:predict]``) goes through keep-alive
``http.client`` connections (:mod:`pipeline.serving.http_transport`); gRPC through the ``tensorflow_serving.apis`` stubs (``PredictionService``,
``ModelService``). Every call has a deadline. Calls without side effects (status, metadata, predict) are retried
with a short backoff when the server could not be reached or answered UNAVAILABLE; a config reload is never
retried, since a second reload could undo a newer one made in between.

The gRPC stubs import TensorFlow (their protos live in it), so they are imported on first gRPC use only; a
client that speaks REST stays light.

TF Serving's model-version lifecycle, as ``model_status`` reports it: ``START`` (the manager saw the version)
→ ``LOADING`` → ``AVAILABLE`` (serving) → ``UNLOADING`` → ``END``. A version whose load failed goes straight to
``END`` with an error status, and stays there: load retries happen before that state is published.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import grpc
import msgspec
import numpy as np
import requests

from pipeline.errors import ConfigError, DeadlineExceeded
from pipeline.serving.http_transport import KeepAliveSession
from pipeline.util.polling import poll_until
from pipeline.wire.dtypes import numpy_name
from pipeline.wire.status import ServingError, code_for_http_status, code_name

Protocol = Literal["rest", "grpc"]
T = TypeVar("T")

_DEFAULT_TIMEOUT_S = 10.0
_DEFAULT_POLL_S = 0.1
_MAX_GRPC_MESSAGE_BYTES = 256 * 1024 * 1024
_READY_PROBE_MODEL = "__ready_probe__"  # any name: a running server answers 404, which is all we need
# A request's id, which the production endpoint (pipeline.live.proxy) keeps when sent and answers with either way.
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID_METADATA = "x-request-id"  # gRPC metadata keys are lower case

# For finite float32 arrays: tolist() widens each to the float64 of the same value, whose shortest repr (what
# msgspec writes) reads back as that float32. msgspec would write NaN as null, hence "finite".
_JSON_ENCODER = msgspec.json.Encoder()

@dataclass(frozen=True)
class VersionStatus:
    """One model version as TF Serving reports it.

    Attributes:
        version: the version number.
        state: ``START``, ``LOADING``, ``AVAILABLE``, ``UNLOADING``, ``END`` (or ``UNKNOWN``).
        error: ``"CODE: message"`` when loading or unloading failed, else None.
    """

    version: int
    state: str
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.state == "AVAILABLE"

    def describe(self) -> str:
        """``"version 3: END (NOT_FOUND: ...)"``: for messages."""
        return f"version {self.version}: {self.state}" + (f" ({self.error})" if self.error else "")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a side-effect-free call is tried again (exponential backoff, capped)."""

    attempts: int = 3
    backoff_s: float = 0.05
    max_backoff_s: float = 1.0

    def delay_s(self, failures: int) -> float:
        """The pause after the ``failures``-th failed attempt."""
        return min(self.backoff_s * 2 ** (failures - 1), self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class PredictAnswer:
    """A predict call's outputs and the request id its answer carried.

    Attributes:
        outputs: each output name mapped to its numpy array.
        request_id: the answer's ``X-Request-Id`` header (REST) or ``x-request-id`` initial metadata (gRPC); None
            when it carried none, or when the REST session keeps no headers (the default keep-alive transport
            keeps none: pass a ``requests.Session`` to read it over REST).
    """

    outputs: dict[str, np.ndarray]
    request_id: str | None = None


def call_with_retries(attempt: Callable[[float], T], timeout_s: float, policy: RetryPolicy, what: str) -> T:
    """Run ``attempt(remaining_s)`` until it succeeds, fails for good, or the deadline passes.

    Only :class:`ServingError` with ``retryable`` set is retried; anything else propagates at once. A retry
    that could not finish its backoff before the deadline is not started.

    Raises:
        DeadlineExceeded: no time was left for an attempt.
        ServingError: the last attempt's error.
    """
    deadline = time.monotonic() + timeout_s
    failures = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded(f"{what}: no answer within {timeout_s:g}s")
        try:
            return attempt(remaining)
        except ServingError as exc:
            failures += 1
            pause = policy.delay_s(failures)
            if not exc.retryable or failures >= policy.attempts or time.monotonic() + pause >= deadline:
                raise
            time.sleep(pause)


class ServingClient:
    """Talks to one TF Serving (real or embedded) over REST, gRPC or both.

    Args:
        rest_url: e.g. ``http://127.0.0.1:8501``; None if only gRPC is reachable.
        grpc_target: e.g. ``127.0.0.1:8500``; None if only REST is reachable (then no config reload).
        timeout_s: the deadline of each call that is not given its own.
        retry: the policy for side-effect-free calls.
        session: a ``requests.Session`` to use (tests pass a fake one).
    """

    def __init__(
        self,
        rest_url: str | None = None,
        grpc_target: str | None = None,
        timeout_s: float = _DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = RetryPolicy(),
        session: requests.Session | None = None,
    ):
        if not rest_url and not grpc_target:
            raise ConfigError("ServingClient needs a rest_url, a grpc_target or both")
        self.rest_url = rest_url.rstrip("/") if rest_url else None
        self.grpc_target = grpc_target
        self.timeout_s = timeout_s
        self.retry = retry
        self._session = session
        self._channel: grpc.Channel | None = None
        self._stubs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._signatures: dict[tuple, dict[str, Any]] = {}

    @classmethod
    def for_endpoint(cls, endpoint: Any, **kwargs: Any) -> ServingClient:
        """A client for a backend's :class:`~pipeline.serving.backends.base.Endpoint`."""
        return cls(rest_url=endpoint.rest_url, grpc_target=endpoint.grpc_target, **kwargs)

    def close(self) -> None:
        """Close the HTTP connections and the gRPC channel."""
        if self._session is not None:
            self._session.close()
        if self._channel is not None:
            self._channel.close()
            self._channel, self._stubs = None, {}

    def __enter__(self) -> ServingClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- status -------------------------------------------------------------------------------------------

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """Whether every configured port answers now (any HTTP answer counts; the gRPC channel connects)."""
        if self.rest_url:
            try:
                self._http().get(f"{self.rest_url}/v1/models/{_READY_PROBE_MODEL}", timeout=timeout_s)
            except requests.RequestException:
                return False
        if self.grpc_target:
            try:
                grpc.channel_ready_future(self._grpc_channel()).result(timeout=timeout_s)
            except grpc.FutureTimeoutError:
                return False
        return True

    def model_status(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        protocol: Protocol | None = None,
        timeout_s: float | None = None,
    ) -> list[VersionStatus]:
        """The state of every version of ``model`` the server knows (or of one version or label).

        Raises:
            ServingError: ``NOT_FOUND`` when the server knows no such model, version or label.
        """
        timeout_s = timeout_s or self.timeout_s
        if self._protocol(protocol) == "grpc":
            return self._grpc_model_status(model, version, label, timeout_s)
        path = _model_path(model, version, label)
        payload = self._rest("GET", path, None, timeout_s, self.retry, f"status of {model}")
        return [_version_status_from_json(item) for item in payload.get("model_version_status", [])]

    def wait_until_available(
        self,
        model: str,
        version: int | None,
        deadline_s: float,
        label: str | None = None,
        poll_s: float = _DEFAULT_POLL_S,
    ) -> VersionStatus:
        """Poll until ``version`` (any version when None, or the one ``label`` names) is AVAILABLE.

        Raises:
            DeadlineExceeded: not AVAILABLE in time; the message names the last state or error seen.
            ServingError: the version ended with an error (its load failed), or another server error.
        """
        deadline = time.monotonic() + deadline_s

        def check() -> tuple[VersionStatus | None, str]:
            call_timeout = max(min(self.timeout_s, deadline - time.monotonic()), 0.05)
            try:
                return _pick_available(self.model_status(model, version, label, timeout_s=call_timeout), version, label)
            except ServingError as exc:
                if exc.code not in ("NOT_FOUND", "UNAVAILABLE"):
                    raise
                return None, str(exc)
            except DeadlineExceeded as exc:
                return None, str(exc)

        what = f"label {label!r}" if label else (f"version {version}" if version is not None else "a version")
        return poll_until(check, deadline_s, f"{model} {what} not AVAILABLE", interval_s=poll_s,
                          hint="Check the server log for the load error.")

    def metadata(
        self,
        model: str,
        version: int | None = None,
        label: str | None = None,
        protocol: Protocol | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, dict[str, Any]]:
        """The model's signature defs as plain dicts.

        Returns:
            ``{signature_name: {"method_name": str, "inputs": {name: {"dtype": "float32", "shape": [None, 784]}},
            "outputs": {...}}}``; a shape is None when its rank is unknown, a dimension None when unknown.
        """
        timeout_s = timeout_s or self.timeout_s
        if self._protocol(protocol) == "grpc":
            signature_map = self._grpc_signature_map(model, version, label, timeout_s)
        else:
            path = _model_path(model, version, label) + "/metadata"
            payload = self._rest("GET", path, None, timeout_s, self.retry, f"metadata of {model}")
            signature_map = payload.get("metadata", {}).get("signature_def", {})
        return {
            name: _signature_from_json(signature)
            for name, signature in signature_map.get("signature_def", {}).items()
        }

    # ---- predict ------------------------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        instances: Any = None,
        inputs: Any = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        protocol: Protocol = "rest",
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run the model's signature on a batch (:meth:`predict_answer` without the answer's request id).

        Returns:
            Each output name mapped to its numpy array (dtypes as the signature declares).
        """
        return self.predict_answer(model, instances, inputs, version, label, signature_name, protocol, timeout_s,
                                   request_id).outputs

    def predict_answer(
        self,
        model: str,
        instances: Any = None,
        inputs: Any = None,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
        protocol: Protocol = "rest",
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> PredictAnswer:
        """Run the model's signature on a batch.

        Args:
            model: the model name.
            instances: row format: an array (one input, first axis = batch), a list of per-row dicts, or a
                mapping of input name to batched array.
            inputs: columnar format: an array (one input) or a mapping of input name to array.
            version: a version number; or
            label: a version label (``stable``, ``canary``); neither means the latest.
            signature_name: default ``serving_default``.
            protocol: ``"rest"`` or ``"grpc"``.
            timeout_s: the deadline of this call.
            request_id: sent as the ``X-Request-Id`` header (REST) or ``x-request-id`` metadata (gRPC); retries
                send the same id.

        Returns:
            The outputs (dtypes as the signature declares) and the request id the answer carried.
        """
        if (instances is None) == (inputs is None):
            raise ValueError("give either instances (row format) or inputs (columnar format)")
        timeout_s = timeout_s or self.timeout_s
        key = (model, version, label, signature_name or "serving_default")
        try:
            if self._protocol(protocol) == "grpc":
                return self._grpc_predict(key, instances, inputs, timeout_s, request_id)
            return self._rest_predict(key, instances, inputs, timeout_s, request_id)
        except ServingError:
            self._signatures.pop(key, None)  # a label may have moved to a version with another signature
            raise

    def _rest_predict(self, key: tuple, instances: Any, inputs: Any, timeout_s: float,
                      request_id: str | None) -> PredictAnswer:
        model, version, label, signature_name = key
        body: dict[str, Any] = {"signature_name": signature_name}
        key_name, payload = ("instances", instances) if instances is not None else ("inputs", inputs)
        if _is_finite_float32(payload):  # the common case (images): exact, and ~6x faster than json.dumps
            data = _JSON_ENCODER.encode({"signature_name": signature_name, key_name: payload.tolist()})
        else:
            if instances is not None:
                body["instances"] = _rows_for_json(instances)
            else:
                body["inputs"] = dict(inputs) if isinstance(inputs, Mapping) else inputs
            data = json.dumps(body, default=_json_default).encode()  # bytes: http.client sends it without copying
        return self._rest_predict_body(key, data, timeout_s, request_id)

    def _rest_predict_body(self, key: tuple, data: bytes, timeout_s: float, request_id: str | None) -> PredictAnswer:
        model, version, label, _ = key
        path = _model_path(model, version, label) + ":predict"
        payload, answered_id = self._rest_answer("POST", path, data, timeout_s, self.retry, f"predict on {model}",
                                                 request_id)
        signature = self._signature(key, timeout_s)
        return PredictAnswer(_outputs_from_json(payload, signature["outputs"]), answered_id)

    def predict_json(self, model: str, body: bytes, label: str | None = None, version: int | None = None,
                     signature_name: str | None = None, timeout_s: float | None = None) -> dict[str, np.ndarray]:
        """Run a predict request already written in TF Serving's JSON, sent as it is (REST only).

        For a body that exists already (what a client sent, mirrored): nothing is parsed or encoded again.

        Args:
            body: the request (``{"instances": ...}`` or ``{"inputs": ...}``, optionally ``signature_name``).
            signature_name: the one the body names (the outputs' dtypes are read from it); None for the default.

        Returns:
            Each output name mapped to its numpy array (dtypes as the signature declares).
        """
        key = (model, version, label, signature_name or "serving_default")
        try:
            return self._rest_predict_body(key, body, timeout_s or self.timeout_s, None).outputs
        except ServingError:
            self._signatures.pop(key, None)  # a label may have moved to a version with another signature
            raise

    def _grpc_predict(self, key: tuple, instances: Any, inputs: Any, timeout_s: float,
                      request_id: str | None) -> PredictAnswer:
        from tensorflow_serving.apis import predict_pb2

        from pipeline.wire import tensors

        model, version, label, signature_name = key
        signature = self._signature(key, timeout_s)
        columns = _columns_from_rows(instances) if instances is not None else inputs
        request = predict_pb2.PredictRequest()
        _fill_model_spec(request.model_spec, model, version, label)
        request.model_spec.signature_name = signature_name
        for name, value in _named_inputs(columns, signature["inputs"]).items():
            # An input the signature lacks goes as it is: the server's error says what is wrong.
            dtype = signature["inputs"].get(name, {}).get("dtype")
            tensors.fill_tensor_proto(request.inputs[name], _in_dtype(value, dtype))
        response, answered_id = self._grpc_answer("prediction", "Predict", request, timeout_s, self.retry,
                                                  f"predict on {model}", request_id)
        return PredictAnswer({name: tensors.to_ndarray(proto) for name, proto in response.outputs.items()}, answered_id)

    def _signature(self, key: tuple, timeout_s: float) -> dict[str, Any]:
        """The signature a predict targets (cached): names a lone input or output and gives dtypes."""
        if key not in self._signatures:
            model, version, label, signature_name = key
            signatures = self.metadata(model, version, label, timeout_s=timeout_s)
            if signature_name not in signatures:
                known = ", ".join(sorted(signatures)) or "none"
                message = f"{model} has no signature {signature_name!r} (has {known})"
                raise ServingError("INVALID_ARGUMENT", message, 400)
            self._signatures[key] = signatures[signature_name]
        return self._signatures[key]

    # ---- config -------------------------------------------------------------------------------------------

    def reload_config(self, model_server_config: Any, deadline_s: float | None = None) -> None:
        """Make the server serve ``model_server_config`` now (gRPC ``HandleReloadConfigRequest``; never retried).

        Args:
            model_server_config: a ``ModelServerConfig`` message or its text format.
            deadline_s: how long the server may take to apply it (it may wait for new models to load).

        Raises:
            ServingError: the server rejected the config (the message is TF Serving's).
        """
        from pipeline.wire import reload_rpc  # no TensorFlow import: a rollback must not wait 4 s for it

        request = reload_rpc.reload_request(_as_model_server_config(model_server_config))
        call = reload_rpc.reload_call(self._grpc_channel())
        timeout_s = deadline_s or self.timeout_s
        try:
            response = call(request, timeout=timeout_s)
        except grpc.RpcError as exc:
            raise _error_from_rpc(exc, "reload config", timeout_s) from None
        error = _status_error(response.status.error_code, response.status.error_message)
        if error is not None:
            code = code_name(response.status.error_code)
            raise ServingError(code, response.status.error_message)

    # ---- transports ---------------------------------------------------------------------------------------

    def _protocol(self, protocol: Protocol | None) -> Protocol:
        chosen = protocol or ("rest" if self.rest_url else "grpc")
        if chosen == "rest" and not self.rest_url:
            raise ConfigError("this client has no rest_url; use protocol='grpc'")
        if chosen == "grpc" and not self.grpc_target:
            raise ConfigError("this client has no grpc_target; use protocol='rest'")
        return chosen

    def _http(self) -> Any:
        if self._session is None:
            self._session = _keep_alive_session(self.rest_url)
        return self._session

    def _rest(
        self, method: str, path: str, data: bytes | None, timeout_s: float, policy: RetryPolicy, what: str
    ) -> dict[str, Any]:
        return self._rest_answer(method, path, data, timeout_s, policy, what)[0]

    def _rest_answer(
        self, method: str, path: str, data: bytes | None, timeout_s: float, policy: RetryPolicy, what: str,
        request_id: str | None = None,
    ) -> tuple[dict[str, Any], str | None]:
        """The JSON answer and its ``X-Request-Id`` (None when absent or the session keeps no headers)."""
        url = f"{self._rest_base()}{path}"
        headers = {"Content-Type": "application/json"} if data is not None else None
        if request_id is not None:
            headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}

        def attempt(remaining_s: float) -> tuple[dict[str, Any], str | None]:
            try:
                response = self._http().request(method, url, data=data, headers=headers, timeout=remaining_s)
            except requests.Timeout as exc:  # before ConnectionError: ConnectTimeout is both
                raise DeadlineExceeded(f"{what}: no answer from {url} within {timeout_s:g}s") from exc
            except requests.ConnectionError as exc:
                raise ServingError("UNAVAILABLE", f"{what}: cannot reach {url}: {exc}", None) from exc
            return _json_or_error(response), _header(response, REQUEST_ID_HEADER)

        return call_with_retries(attempt, timeout_s, policy, what)

    def _rest_base(self) -> str:
        if not self.rest_url:
            raise ConfigError("this client has no rest_url")
        return self.rest_url

    def _grpc_channel(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                if not self.grpc_target:
                    raise ConfigError("this client has no grpc_target (config reload needs gRPC)")
                options = [
                    ("grpc.max_send_message_length", _MAX_GRPC_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", _MAX_GRPC_MESSAGE_BYTES),
                ]
                self._channel = grpc.insecure_channel(self.grpc_target, options=options)
            return self._channel

    def _stub(self, service: str) -> Any:
        channel = self._grpc_channel()
        with self._lock:
            if service not in self._stubs:
                from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

                stub_class = {
                    "prediction": prediction_service_pb2_grpc.PredictionServiceStub,
                    "model": model_service_pb2_grpc.ModelServiceStub,
                }[service]
                self._stubs[service] = stub_class(channel)
            return self._stubs[service]

    def _grpc(self, service: str, method: str, request: Any, timeout_s: float, policy: RetryPolicy, what: str) -> Any:
        call = getattr(self._stub(service), method)

        def attempt(remaining_s: float) -> Any:
            try:
                return call(request, timeout=remaining_s)
            except grpc.RpcError as exc:
                raise _error_from_rpc(exc, what, timeout_s) from None

        return call_with_retries(attempt, timeout_s, policy, what)

    def _grpc_answer(self, service: str, method: str, request: Any, timeout_s: float, policy: RetryPolicy, what: str,
                     request_id: str | None) -> tuple[Any, str | None]:
        """The response and its ``x-request-id`` initial metadata (None when absent)."""
        call = getattr(self._stub(service), method)
        metadata = [(REQUEST_ID_METADATA, request_id)] if request_id is not None else None

        def attempt(remaining_s: float) -> tuple[Any, str | None]:
            try:
                response, rpc = call.with_call(request, timeout=remaining_s, metadata=metadata)
            except grpc.RpcError as exc:
                raise _error_from_rpc(exc, what, timeout_s) from None
            answered = dict(rpc.initial_metadata() or ()).get(REQUEST_ID_METADATA)
            return response, answered if isinstance(answered, str) else None

        return call_with_retries(attempt, timeout_s, policy, what)

    def _grpc_model_status(
        self, model: str, version: int | None, label: str | None, timeout_s: float
    ) -> list[VersionStatus]:
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_model_spec(request.model_spec, model, version, label)
        response = self._grpc("model", "GetModelStatus", request, timeout_s, self.retry, f"status of {model}")
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            VersionStatus(
                version=item.version,
                state=state_name(item.state),
                error=_status_error(item.status.error_code, item.status.error_message),
            )
            for item in response.model_version_status
        ]

    def _grpc_signature_map(self, model: str, version: int | None, label: str | None, timeout_s: float) -> dict:
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        _fill_model_spec(request.model_spec, model, version, label)
        response = self._grpc("prediction", "GetModelMetadata", request, timeout_s, self.retry, f"metadata of {model}")
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        # The same JSON shape the REST API answers with, so one converter serves both.
        return json_format.MessageToDict(signature_map, preserving_proto_field_name=True)


def _keep_alive_session(rest_url: str | None) -> Any:
    """Persistent connections to the REST API (see :mod:`pipeline.serving.http_transport` for why not requests)."""
    return KeepAliveSession(rest_url or "")


# ---- helpers: paths, errors, status -----------------------------------------------------------------------


def _model_path(model: str, version: int | None, label: str | None) -> str:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    path = f"/v1/models/{quote(model, safe='')}"
    if version is not None:
        path += f"/versions/{int(version)}"
    elif label is not None:
        path += f"/labels/{quote(label, safe='')}"
    return path


def _fill_model_spec(spec: Any, model: str, version: int | None, label: str | None) -> None:
    if version is not None and label is not None:
        raise ValueError("give a version or a label, not both")
    spec.name = model
    if version is not None:
        spec.version.value = int(version)
    elif label is not None:
        spec.version_label = label


def _header(response: Any, name: str) -> str | None:
    """A response header by case-insensitive name; None when absent or the transport keeps no headers."""
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    wanted = name.lower()
    return next((str(value) for key, value in headers.items() if key.lower() == wanted), None)


def _json_or_error(response: requests.Response) -> dict[str, Any]:
    """The JSON body of a 200 answer.

    Raises:
        ServingError: any other answer, with TF Serving's ``{"error": ...}`` message.
    """
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if response.status_code == 200 and isinstance(payload, dict):
        return payload
    if response.status_code == 200:
        raise ServingError("INTERNAL", f"answer is not a JSON object: {response.text[:200]!r}", 200)
    message = payload.get("error") if isinstance(payload, dict) else None
    message = message or (response.text or "")[:500] or response.reason or "no message"
    raise ServingError(code_for_http_status(response.status_code), message, response.status_code)


def _error_from_rpc(exc: grpc.RpcError, what: str, timeout_s: float) -> Exception:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{what}: no answer within {timeout_s:g}s ({details})")
    return ServingError(code.name, details or code.name)


def _status_error(error_code: int | str, error_message: str) -> str | None:
    """``"CODE: message"`` for a failed status (numeric over gRPC, a name over REST), None for OK."""
    name = code_name(error_code) if isinstance(error_code, int) else error_code
    if name in ("OK", "", None):
        return None
    return f"{name}: {error_message}" if error_message else name


def _version_status_from_json(item: Mapping[str, Any]) -> VersionStatus:
    status = item.get("status") or {}
    return VersionStatus(
        version=int(item.get("version", 0)),
        state=str(item.get("state", "UNKNOWN")),
        error=_status_error(status.get("error_code", "OK"), status.get("error_message", "")),
    )


def _pick_available(
    statuses: list[VersionStatus], version: int | None, label: str | None
) -> tuple[VersionStatus | None, str]:
    """The AVAILABLE status asked for, else None and a description of what was seen.

    Raises:
        ServingError: the one version asked for ended with an error (its load failed for good).
    """
    relevant = [s for s in statuses if version is None or s.version == version]
    for status in relevant:
        if status.available:
            return status, status.describe()
    pinned = version is not None or label is not None
    for status in relevant:
        if pinned and status.state == "END" and status.error:
            code = status.error.split(":", 1)[0]
            raise ServingError(code, f"{status.describe()}: the version failed to load")
    return None, "; ".join(s.describe() for s in relevant) or "version not known to the server yet"


# ---- helpers: signatures and tensors ----------------------------------------------------------------------


def _signature_from_json(signature: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "method_name": signature.get("method_name", ""),
        "inputs": {name: _tensor_info(info) for name, info in signature.get("inputs", {}).items()},
        "outputs": {name: _tensor_info(info) for name, info in signature.get("outputs", {}).items()},
    }


def _tensor_info(info: Mapping[str, Any]) -> dict[str, Any]:
    dtype = info.get("dtype", "DT_INVALID")
    shape_proto = info.get("tensor_shape") or {}
    shape = None
    if not shape_proto.get("unknown_rank", False):
        shape = [None if int(dim.get("size", -1)) < 0 else int(dim["size"]) for dim in shape_proto.get("dim", [])]
    return {"dtype": numpy_name(dtype), "shape": shape}


def _json_default(value: Any) -> Any:
    """JSON for what ``json`` can't encode: numpy arrays and scalars, bytes (TF Serving's ``{"b64": ...}``)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot send a {type(value).__name__} to TF Serving")


def _is_finite_float32(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype == np.float32 and value.ndim >= 1 and bool(
        np.isfinite(value).all())


def _rows_for_json(instances: Any) -> Any:
    """Row format: a mapping of batched inputs becomes one dict per row."""
    if isinstance(instances, Mapping):
        columns = {name: np.asarray(value) for name, value in instances.items()}
        batch = {len(value) for value in columns.values()}
        if len(batch) != 1:
            raise ValueError(f"row-format inputs differ in batch size: {sorted(batch)}")
        return [{name: value[i] for name, value in columns.items()} for i in range(batch.pop())]
    return instances


def _columns_from_rows(instances: Any) -> Any:
    """Columnar form of row-format instances (gRPC has no row format)."""
    if isinstance(instances, Mapping):
        return instances
    if isinstance(instances, Sequence) and instances and isinstance(instances[0], Mapping):
        return {name: np.stack([np.asarray(row[name]) for row in instances]) for name in instances[0]}
    return instances


def _named_inputs(columns: Any, declared: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(columns, Mapping):
        return dict(columns)
    if len(declared) != 1:
        raise ValueError(f"the signature has inputs {sorted(declared)}; pass them as a mapping by name")
    return {next(iter(declared)): columns}


def _in_dtype(value: Any, dtype: str | None) -> np.ndarray:
    """``value`` as an array of the signature's dtype (REST converts JSON numbers; gRPC must match)."""
    if dtype == "string":
        return np.asarray(value, dtype=object)
    if dtype in (None, "bfloat16"):
        return np.asarray(value)
    return np.asarray(value, dtype=dtype)


def _outputs_from_json(payload: Mapping[str, Any], declared: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays from ``{"predictions": ...}`` (row) or ``{"outputs": ...}`` (columnar); a lone output is unnamed."""
    if "predictions" in payload:
        rows = payload["predictions"]
        if len(declared) != 1 and rows and isinstance(rows[0], Mapping):
            columns = {name: [row[name] for row in rows] for name in rows[0]}
        else:
            columns = {next(iter(declared), "predictions"): rows}
    elif "outputs" in payload:
        outputs = payload["outputs"]
        multiple = isinstance(outputs, Mapping) and (len(declared) != 1 or set(outputs) == set(declared))
        columns = dict(outputs) if multiple else {next(iter(declared), "outputs"): outputs}
    else:
        raise ServingError("INTERNAL", f"predict answer has neither predictions nor outputs: {sorted(payload)}", 200)
    return {name: _as_array(value, declared.get(name, {}).get("dtype")) for name, value in columns.items()}


def _as_array(value: Any, dtype: str | None) -> np.ndarray:
    if dtype in (None, "string", "bfloat16"):
        return np.asarray(value)
    return np.asarray(value, dtype=dtype)


def _as_model_server_config(config: Any) -> Any:
    from pipeline.wire.model_config import ModelServerConfig, parse_config

    if isinstance(config, ModelServerConfig):
        return config
    if isinstance(config, str):
        return parse_config(config)
    raise TypeError(f"expected a ModelServerConfig or its text format, got {type(config).__name__}")
