"""The capture service: receives the proxy's mirror of live predict requests, asks both versions, records both.

The nginx proxy (:mod:`pipeline.live.proxy`) mirrors a sampled share of live inference requests here and discards
the answer. For each predict, REST or gRPC, the service answers at once (202) and a worker asks the canary
instance, which serves both versions under the labels ``stable`` and ``canary`` during a live canary, through TF
Serving's REST API (:class:`~pipeline.serving.client.ServingClient`), with the body the client sent. It asks
``canary`` first: where the canary instance has no such label (between releases, when the mirrored share feeds
production monitoring) it asks production for stable's answer and nothing else.
Models are deterministic, so re-asking reproduces what the client got. Because only TF Serving's documented REST
API is used, this works in front of the real ``tensorflow/serving`` as well as the embedded server.

HTTP contract (JSON bodies; an error is ``{"error": "..."}``, never a traceback):

``POST [<prefix>]/v1/models/<model>[/versions/<N>|/labels/<label>]:predict`` (the REST mirror)
    Headers ``X-Request-Id`` (the id the client got back: 1-128 visible ASCII characters) and ``X-Variant``
    (``stable`` or ``canary``: the upstream that answered the client); body: the client's predict request
    (``instances`` or ``inputs``, optional ``signature_name``), with a ``Content-Length`` or chunked, up to
    ``max_body_bytes``.
    Whichever version the path names, both labels are asked. Any path prefix (the proxy's ``mirror_url`` may
    carry one) is ignored.
``POST [<prefix>]/tensorflow.serving.PredictionService/Predict`` (the gRPC mirror, ``X-Proxy-Api: grpc``)
    The same headers; body: one uncompressed length-prefixed ``PredictRequest``. The model is read off the wire
    at once; the tensors are decoded by the worker (which imports TensorFlow's protos on the first one), and
    both versions are asked over REST with the same inputs (columnar), which are also what the row keeps.

    Answers to a mirror:

    - ``202 {"status": "queued"}``: taken; a worker asks both versions and records one row.
    - ``200 {"status": "not_sampled"}``: outside the service's own ``sample``; nothing recorded.
    - ``200 {"status": "ignored"}``: inference that is not captured (``:classify``, ``:regress``, the other gRPC
      methods); nothing recorded.
    - ``503 {"status": "dropped"}``: the queue is full; counted, nothing recorded (the proxy is never slowed).
    - ``400`` no or bad ``X-Request-Id`` / ``X-Variant``, or a body that is not a predict request (a JSON object
      with ``instances`` or ``inputs``; one gRPC message naming a model); ``404`` neither path, or a model not
      captured here; ``411`` neither a ``Content-Length`` nor a chunked body; ``413`` a body over
      ``max_body_bytes``. A 4xx records nothing.

``POST /feedback`` (when the service captures one model) or ``POST /feedback/<model>``
    A JSON object ``{"request_id": ..., "label": ...}`` or a list of them (:mod:`pipeline.live.feedback`).
    ``200 {"counts": {answer: n}, "results": [{"request_id", "answer", "detail"}, ...]}``, one result per item in
    order; ``400`` a body that is not JSON, or neither an object nor a list; ``404`` a model not captured here;
    ``503`` the store stayed locked past its busy timeout (nothing recorded: send it again).

``GET /healthz`` → ``200 {"status": "ok", "models": [...]}``; ``GET /stats`` → this process's counters.

``GET /metrics`` → the same counts in Prometheus' text format (a registry per service, never the global one):

- ``pipeline_capture_mirrored_total{model,status}``: mirrors by the answer they got (``queued``, ``not_sampled``,
  ``ignored``, ``dropped``); ``model`` is empty for the gRPC methods that are not captured (not read).
- ``pipeline_capture_dropped_total{model}``: mirrors not recorded for lack of room (the queue was full, or they
  were still queued when the service stopped).
- ``pipeline_capture_processed_total{model,outcome}``: queued mirrors a worker finished (``captured``,
  ``duplicates``: the request id was recorded already, ``failed``).
- ``pipeline_capture_feedback_total{model,answer}``: feedback items by answer (:class:`~pipeline.live.feedback.Answer`).
- ``pipeline_capture_rejected_total``: requests refused with a 4xx; ``pipeline_capture_queue_depth``: queued now.

What a row holds, and how the store stays bounded: :mod:`pipeline.live.store`.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import queue
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import prometheus_client
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from pipeline.errors import ConfigError, DeadlineExceeded, NotFound
from pipeline.live.feedback import (
    DEFAULT_FEEDBACK_WINDOW_S,
    Answer,
    FeedbackResult,
    LabelSpace,
    label_space,
    submit_feedback,
)
from pipeline.live.store import (
    CANARY,
    SAMPLE_META_KEY,
    STABLE,
    VARIANTS,
    Capture,
    CaptureStore,
    CaptureStoreError,
    StoreLimits,
    VariantAnswer,
    in_sample,
    is_request_id,
)
from pipeline.serving.client import RetryPolicy, ServingClient
from pipeline.settings import Paths
from pipeline.util.polling import poll_until
from pipeline.wire.status import ServingError

log = logging.getLogger(__name__)

Reply = tuple[int, dict[str, Any]]

_PREFIX = r"(?:/[A-Za-z0-9_.-]+)*?"  # the proxy's mirror_url may put a path before the original one
_REST_PATH = re.compile(_PREFIX + r"/v1/models/(?P<model>[^/:]+)(?:/versions/\d+|/labels/[^/:]+)?:(?P<verb>\w+)")
_GRPC_PATH = re.compile(_PREFIX + r"/tensorflow\.serving\.PredictionService/(?P<method>\w+)")
_FEEDBACK_PATH = re.compile(r"/feedback(?:/(?P<model>[^/]+))?/?")
_MAX_ERROR_CHARS = 500  # of a side's error, in its row
_MIRROR_HEADERS = ("x-request-id", "x-variant", "x-proxy-api", "content-type")
_GRPC_FRAME_HEADER_BYTES = 5  # compressed flag (1 byte) + message length (4 bytes, big-endian)
_IDLE_FLUSH_S = 0.5  # a worker with nothing to do writes the drop count this often
_MAX_LINE_BYTES = 1024  # a chunk-size or trailer line
_DRAIN_LIMIT = 1024 * 1024  # of a refused body read before closing (beyond: close at once, the client may see a reset)
METRICS_PATH = "/metrics"
_NOT_SERVED_CODES = frozenset({"NOT_FOUND", "INVALID_ARGUMENT"})  # no such model, version or label there
_MIRROR_ANSWERS = ("queued", "not_sampled", "ignored", "dropped")
_OUTCOMES = ("captured", "duplicates", "failed")


@dataclass(frozen=True)
class CaptureOptions:
    """How the capture service samples, queues and bounds what it takes.

    Attributes:
        store: what each model's store keeps (rows, inputs, probabilities).
        sample: the share of mirrored requests captured, by request id hash (the proxy samples first; this
            tightens it without touching nginx).
        max_body_bytes: the largest request body accepted (413 above).
        queue_size: mirrored requests waiting for a worker; when full, new ones are dropped and counted.
        workers: threads asking the versions (each request asks canary, then stable); one keeps the store in
            arrival order, the stack runs more (:data:`pipeline.live.services.CAPTURE_WORKERS`).
        predict_timeout_s: the deadline of each predict call.
        read_timeout_s: how long a connection may stay silent (a slow or stuck client frees its thread).
        feedback_window_s: feedback for a request captured longer ago than this is ``late``.
        feedback_hold_s: how long feedback for a request still queued here waits for its capture (a label that
            overtakes its request on a busy machine would otherwise be lost as ``unknown``).
    """

    store: StoreLimits = field(default_factory=StoreLimits)
    sample: float = 1.0
    max_body_bytes: int = 4 * 1024 * 1024
    queue_size: int = 1000
    workers: int = 1
    predict_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    feedback_window_s: float = DEFAULT_FEEDBACK_WINDOW_S
    feedback_hold_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.sample <= 1:
            raise ConfigError(f"capture sample must be in (0, 1], got {self.sample}")
        for name in ("max_body_bytes", "queue_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"capture option {name} must be at least 1, got {getattr(self, name)}")
        for name in ("predict_timeout_s", "read_timeout_s", "feedback_window_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"capture option {name} must be positive, got {getattr(self, name)}")
        if self.feedback_hold_s < 0:
            raise ConfigError(f"capture option feedback_hold_s must not be negative, got {self.feedback_hold_s}")


@dataclass(frozen=True)
class _Job:
    """A mirrored request waiting for a worker: a parsed REST request, or a gRPC message to decode."""

    model: str
    request_id: str
    variant: str
    path: str
    received_at: float
    body: bytes
    request: dict[str, Any] | None  # None: a gRPC PredictRequest, decoded by the worker


class _Metrics:
    """The service's counts for Prometheus, in a registry of its own: two services in one process (tests) keep
    separate counts, and nothing else in the process leaks onto the page."""

    def __init__(self, models: Sequence[str], queue_depth: Callable[[], int]):
        self.registry = prometheus_client.CollectorRegistry()
        self.mirrored = prometheus_client.Counter(
            "pipeline_capture_mirrored", "Mirrored inference requests, by the answer they got.", ["model", "status"],
            registry=self.registry)
        self.dropped = prometheus_client.Counter(
            "pipeline_capture_dropped", "Mirrored requests not recorded for lack of room (queue full, or still "
            "queued at stop).", ["model"], registry=self.registry)
        self.processed = prometheus_client.Counter(
            "pipeline_capture_processed", "Queued mirrors a worker finished, by outcome.", ["model", "outcome"],
            registry=self.registry)
        self.feedback = prometheus_client.Counter(
            "pipeline_capture_feedback", "Feedback items, by answer.", ["model", "answer"], registry=self.registry)
        self.rejected = prometheus_client.Counter(
            "pipeline_capture_rejected", "Requests refused with a 4xx.", registry=self.registry)
        depth = prometheus_client.Gauge("pipeline_capture_queue_depth", "Mirrored requests waiting for a worker.",
                                        registry=self.registry)
        depth.set_function(queue_depth)
        for model in models:  # every series exists from the start at 0, so that rate() sees the first event
            for status in _MIRROR_ANSWERS:
                self.mirrored.labels(model, status)
            for outcome in _OUTCOMES:
                self.processed.labels(model, outcome)
            for answer in Answer:
                self.feedback.labels(model, str(answer))
            self.dropped.labels(model)

    def count_feedback(self, model: str, results: Sequence[FeedbackResult]) -> None:
        for result in results:
            self.feedback.labels(model, str(result.answer)).inc()


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class CaptureService:
    """The capture service of one or more models (the module docstring has the HTTP contract).

    Args:
        serving_url: the canary instance's REST API, e.g. ``http://127.0.0.1:8501``; it serves every captured
            model with the version labels ``stable`` and ``canary``.
        models: the models captured; a mirror for any other model answers 404.
        paths: the pipeline home holding the stores (default: ``$PIPELINE_HOME``).
        host: the address to bind.
        port: the port to bind (0: any free port).
        options: sampling, queue and limits.
        class_names: each model's class names for feedback (default: from the model's config, on first use).
        stable_url: production's REST API, asked for ``stable``'s answer when the canary instance cannot give it:
            outside a live canary the canary instance may serve no ``stable`` label, and production monitoring
            (the mirrored share of live traffic) still needs stable's classes for its predictions and live accuracy.
    """

    def __init__(self, serving_url: str, models: Sequence[str], paths: Paths | None = None, host: str = "127.0.0.1",
                 port: int = 0, options: CaptureOptions = CaptureOptions(),
                 class_names: Mapping[str, Sequence[str] | None] | None = None, stable_url: str | None = None):
        if not models:
            raise ConfigError("the capture service needs at least one model")
        self.options = options
        self.models = tuple(models)
        self._address = (host, port)
        self._client = ServingClient(rest_url=serving_url, timeout_s=options.predict_timeout_s,
                                     retry=RetryPolicy(attempts=2))
        self._stable_client = None if stable_url is None else ServingClient(
            rest_url=stable_url, timeout_s=options.predict_timeout_s, retry=RetryPolicy(attempts=2))
        self._stores = {model: CaptureStore.for_model(model, paths, options.store) for model in self.models}
        self._label_spaces = {model: LabelSpace(model, None if names is None else tuple(names))
                              for model, names in (class_names or {}).items()}
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=options.queue_size)
        self._counts: Counter[str] = Counter()
        self._metrics = _Metrics(self.models, self._queue.qsize)
        self._pending_drops = dict.fromkeys(self.models, 0)  # dropped, not yet written to the store
        self._in_flight: dict[tuple[str, str], threading.Event] = {}  # queued or being captured: set when done
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stopped = False
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- life cycle ---------------------------------------------------------------------------------------

    def start(self) -> CaptureService:
        """Open the stores (recording the sample in effect), start the workers, then listen.

        Raises:
            CaptureStoreError: a store cannot be opened.
            OSError: the port cannot be bound.
        """
        for store in self._stores.values():
            store.set_meta(SAMPLE_META_KEY, repr(self.options.sample))
        handler = type("CaptureHandler", (_Handler,), {"service": self, "timeout": self.options.read_timeout_s})
        self._server = _Server(self._address, handler)
        for index in range(self.options.workers):
            self._spawn(f"capture-worker-{index}", self._work)
        self._spawn("capture-http", functools.partial(self._server.serve_forever, poll_interval=0.2))
        log.info("capture service for %s on %s (sample %g)", ", ".join(self.models), self.url, self.options.sample)
        return self

    def stop(self, drain_s: float = 5.0) -> None:
        """Stop listening, let the workers finish the queue for up to ``drain_s``, write the drop counts, close.

        Requests still queued after that are counted as dropped. Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        try:
            self.wait_idle(drain_s)
        except DeadlineExceeded:
            log.warning("capture service stopping with %d requests still queued", self._queue.qsize())
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=self.options.predict_timeout_s * 3)
        self._threads.clear()
        self._discard_queue()
        for model, store in self._stores.items():
            store.add_dropped(self._take_drops(model))
            store.close()
        self._client.close()
        if self._stable_client is not None:
            self._stable_client.close()

    def __enter__(self) -> CaptureService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise ConfigError("the capture service is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._address[0]}:{self.port}"

    def stats(self) -> dict[str, Any]:
        """This process's counters (received, queued, not_sampled, dropped, captured, duplicates, failed,
        rejected) and the queue depth."""
        with self._lock:
            counts = dict(self._counts)
        return {**counts, "queue_depth": self._queue.qsize()}

    def metrics_page(self) -> bytes:
        """This process's counts in Prometheus' text format (the module docstring lists them)."""
        return prometheus_client.generate_latest(self._metrics.registry)

    def wait_idle(self, timeout_s: float) -> None:
        """Wait until every queued request has been recorded (tests, shutdown).

        Raises:
            DeadlineExceeded: requests were still queued or in flight after ``timeout_s``.
        """
        def idle() -> tuple[bool | None, str]:
            pending = self._queue.unfinished_tasks  # queued + being worked on
            return (True if pending == 0 else None), f"{pending} requests queued or in flight"

        poll_until(idle, timeout_s, "capture queue not drained", interval_s=0.02)

    # ---- requests -----------------------------------------------------------------------------------------

    def handle_get(self, path: str) -> Reply:
        route = urlsplit(path).path.rstrip("/")
        if route == "/healthz":
            return 200, {"status": "ok", "models": list(self.models)}
        if route == "/stats":
            return 200, self.stats()
        return 404, {"error": f"no such resource: GET {route or '/'} (try POST ...:predict, /feedback, GET /stats, "
                              f"GET {METRICS_PATH})"}

    def handle_post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Route a POST: feedback, or the mirror of an inference request.

        Args:
            path: the request path.
            body: the request body.
            headers: the request headers that matter, by lower-case name (``x-request-id``, ``x-variant``,
                ``x-proxy-api``, ``content-type``).
        """
        route = unquote(urlsplit(path).path)
        try:
            if _FEEDBACK_PATH.fullmatch(route):
                return self.feedback(route, body)
            return self.mirror(route, body, headers)
        except _BadRequest as exc:
            self.count_rejected()
            return exc.status, {"error": str(exc)}

    def mirror(self, route: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Take one mirrored inference request: validate, sample, queue (the module docstring lists the answers)."""
        request: dict[str, Any] | None
        if (grpc_match := _GRPC_PATH.fullmatch(route)) is not None:
            request_id, variant = _mirror_headers(headers)
            if grpc_match["method"] != "Predict":
                return self._ignored("", request_id, f"gRPC {grpc_match['method']} is not captured (Predict only)")
            model, request = self._captured_model(_grpc_model_name(body)), None
        elif (rest_match := _REST_PATH.fullmatch(route)) is not None:
            model = self._captured_model(rest_match["model"])
            request_id, variant = _mirror_headers(headers)
            if rest_match["verb"] != "predict":
                return self._ignored(model, request_id, f":{rest_match['verb']} is not captured (:predict only)")
            request = _predict_request(body)
        else:
            raise _BadRequest(404, f"not an inference path: {route} (expected /v1/models/<model>[...]:predict or "
                                   "/tensorflow.serving.PredictionService/Predict)")
        self.count_event("received")
        if not in_sample(request_id, self.options.sample):
            self._answered(model, "not_sampled")
            return 200, {"status": "not_sampled", "request_id": request_id}
        done = self._track(model, request_id)
        try:
            self._queue.put_nowait(_Job(model, request_id, variant, route, time.time(), body, request))
        except queue.Full:
            self._untrack(model, request_id, done)
            self._answered(model, "dropped")
            self._metrics.dropped.labels(model).inc()
            with self._lock:
                self._pending_drops[model] += 1
            return 503, {"status": "dropped", "request_id": request_id, "reason": "the capture queue is full"}
        self._answered(model, "queued")
        return 202, {"status": "queued", "request_id": request_id}

    def _answered(self, model: str, status: str) -> None:
        """Count the answer a mirror got, in :meth:`stats` and in Prometheus."""
        self.count_event(status)
        self._metrics.mirrored.labels(model, status).inc()

    def _ignored(self, model: str, request_id: str, reason: str) -> Reply:
        self._answered(model, "ignored")
        return 200, {"status": "ignored", "request_id": request_id, "reason": reason}

    def feedback(self, route: str, body: bytes) -> Reply:
        """Answer a feedback object or list (see :mod:`pipeline.live.feedback`)."""
        match = _FEEDBACK_PATH.fullmatch(route)
        named = match["model"] if match else None
        if named is None and len(self.models) != 1:
            raise _BadRequest(400, f"name the model: POST /feedback/<model> (one of {', '.join(self.models)})")
        model = self._captured_model(named or self.models[0])
        try:
            document = json.loads(body)
        except ValueError as exc:
            raise _BadRequest(400, f"the body is not JSON: {exc}") from None
        if isinstance(document, dict):
            document = [document]
        if not isinstance(document, list):
            raise _BadRequest(400, "expected a JSON object {\"request_id\": ..., \"label\": ...} or a list of them")
        self._await_captures(model, document)
        try:
            results = submit_feedback(self._stores[model], document, self._label_space(model), source="http",
                                      window_s=self.options.feedback_window_s)
        except CaptureStoreError as exc:  # e.g. locked past the busy timeout: nothing was recorded, send again
            return 503, {"error": f"feedback not recorded: {exc}"}
        self._metrics.count_feedback(model, results)
        counts = Counter(str(result.answer) for result in results)
        return 200, {"model": model, "counts": dict(counts), "results": [result.as_dict() for result in results]}

    def _track(self, model: str, request_id: str) -> threading.Event:
        """Mark a mirrored request as on its way to the store (before it is queued: a worker may take it at once)."""
        done = threading.Event()
        with self._lock:
            self._in_flight[(model, request_id)] = done
        return done

    def _untrack(self, model: str, request_id: str, done: threading.Event) -> None:
        with self._lock:
            if self._in_flight.get((model, request_id)) is done:
                del self._in_flight[(model, request_id)]
        done.set()

    def _await_captures(self, model: str, items: list[Any]) -> None:
        """Let feedback for requests still queued here wait for their captures, up to ``feedback_hold_s`` in all."""
        ids = {item.get("request_id") for item in items if isinstance(item, dict)}
        with self._lock:
            waiting = [self._in_flight[(model, rid)] for rid in ids
                       if isinstance(rid, str) and (model, rid) in self._in_flight]
        deadline = time.monotonic() + self.options.feedback_hold_s
        for done in waiting:
            if not done.wait(max(0.0, deadline - time.monotonic())):
                return  # the rest is judged as it stands: unknown if still not captured

    def _captured_model(self, name: str) -> str:
        if name not in self._stores:
            raise _BadRequest(404, f"model {name!r} is not captured here (captured: {', '.join(self.models)})")
        return name

    def _label_space(self, model: str) -> LabelSpace:
        if model not in self._label_spaces:
            try:
                self._label_spaces[model] = label_space(model)
            except NotFound as exc:
                raise _BadRequest(404, f"no class names for {model}: {exc}") from None
        return self._label_spaces[model]

    # ---- the workers --------------------------------------------------------------------------------------

    def _work(self) -> None:
        """Take queued requests until stopped; a failure is logged and counted, never fatal to the worker."""
        while not self._stopping.is_set():
            try:
                job = self._queue.get(timeout=_IDLE_FLUSH_S)
            except queue.Empty:
                self._flush_drops()
                continue
            try:
                self._capture(job)
            except Exception:
                self._processed(job.model, "failed")
                log.exception("capture of request %s (%s) failed", job.request_id, job.model)
            finally:
                self._finished(job)
                self._queue.task_done()

    def _capture(self, job: _Job) -> None:
        if job.request is None:
            request, body = _decode_grpc_predict(job.body)
            data = body.encode("utf-8")  # encoded once, for both versions
        else:  # REST: the versions are sent the body exactly as the client sent it
            request, body, data = job.request, job.body.decode("utf-8", errors="replace"), job.body
        signature = request.get("signature_name")
        canary, label_missing = self._ask(job.model, data, signature, CANARY)
        if label_missing and self._stable_client is not None:
            # No canary label: no live canary, so production serves stable; asking the canary instance for it
            # too would only fail (one ask per capture instead of three between releases).
            stable, _ = self._ask(job.model, data, signature, STABLE, self._stable_client)
        else:
            stable, _ = self._ask(job.model, data, signature, STABLE)
            if stable.error is not None and self._stable_client is not None:
                stable, _ = self._ask(job.model, data, signature, STABLE, self._stable_client)
        capture = Capture(request_id=job.request_id, received_at=job.received_at, variant=job.variant,
                          path=job.path, body=body, batch_size=_batch_size(request), stable=stable, canary=canary)
        dropped = self._take_drops(job.model)
        try:
            stored = self._stores[job.model].add(capture, dropped=dropped)
        except BaseException:
            self._return_drops(job.model, dropped)
            raise
        self._processed(job.model, "captured" if stored else "duplicates")

    def _ask(self, model: str, data: bytes, signature_name: str | None, label: str,
             client: ServingClient | None = None) -> tuple[VariantAnswer, bool]:
        """One version's classes for the request, or the error it answered; and whether that error says the
        server has no such model or label (NOT_FOUND, INVALID_ARGUMENT), as between releases on the canary
        instance."""
        try:
            outputs = (client or self._client).predict_json(model, data, label=label, signature_name=signature_name)
        except Exception as exc:  # any failure of one side is recorded in its row, never lost
            missing = isinstance(exc, ServingError) and exc.code in _NOT_SERVED_CODES
            return VariantAnswer(error=_short(f"{type(exc).__name__}: {exc}")), missing
        return variant_answer(outputs, self.options.store.max_stored_probabilities), False

    def _finished(self, job: _Job) -> None:
        with self._lock:
            done = self._in_flight.get((job.model, job.request_id))
        if done is not None:
            self._untrack(job.model, job.request_id, done)

    def _flush_drops(self) -> None:
        for model, store in self._stores.items():
            dropped = self._take_drops(model)
            try:
                store.add_dropped(dropped)
            except Exception:
                self._return_drops(model, dropped)
                log.exception("could not record %d dropped requests of %s", dropped, model)

    def _take_drops(self, model: str) -> int:
        with self._lock:
            dropped, self._pending_drops[model] = self._pending_drops[model], 0
        return dropped

    def _return_drops(self, model: str, dropped: int) -> None:
        with self._lock:
            self._pending_drops[model] += dropped

    def _discard_queue(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            self.count_event("dropped")
            self._metrics.dropped.labels(job.model).inc()
            self._return_drops(job.model, 1)
            self._finished(job)
            self._queue.task_done()

    # ---- helpers ------------------------------------------------------------------------------------------

    def count_event(self, name: str) -> None:
        """Add one to a counter of :meth:`stats`."""
        with self._lock:
            self._counts[name] += 1

    def count_rejected(self) -> None:
        """Count a request refused with a 4xx, in :meth:`stats` and in Prometheus."""
        self.count_event("rejected")
        self._metrics.rejected.inc()

    def _processed(self, model: str, outcome: str) -> None:
        self.count_event(outcome)
        self._metrics.processed.labels(model, outcome).inc()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)


def variant_answer(outputs: Mapping[str, Any], max_probabilities: int) -> VariantAnswer:
    """The classes (``classes`` output, else the argmax of ``probabilities``) and small probabilities of an answer."""
    probabilities = outputs.get("probabilities")
    rows = None if probabilities is None else np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    if rows is not None:
        rows = rows.reshape(rows.shape[0], -1)
    if "classes" in outputs:
        try:
            classes = tuple(int(value) for value in np.asarray(outputs["classes"]).reshape(-1))
        except (TypeError, ValueError):
            return VariantAnswer(error="the classes output does not hold class indexes")
    elif rows is not None and rows.shape[1] > 0:
        classes = tuple(int(value) for value in rows.argmax(axis=1))
    else:
        names = ", ".join(sorted(outputs)) or "none"
        return VariantAnswer(error=f"the answer has no classes or probabilities output (outputs: {names})")
    kept = None
    if rows is not None and rows.size <= max_probabilities:
        kept = tuple(tuple(float(p) for p in row) for row in rows)
    return VariantAnswer(classes=classes, probabilities=kept)


def _predict_request(body: bytes) -> dict[str, Any]:
    """The predict request a body holds.

    Raises:
        _BadRequest: not a JSON object with exactly one of ``instances`` and ``inputs``.
    """
    try:
        request = json.loads(body)
    except ValueError as exc:
        raise _BadRequest(400, f"the body is not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise _BadRequest(400, "the body must be a JSON object (a TF Serving predict request)")
    if ("instances" in request) == ("inputs" in request):
        raise _BadRequest(400, "a predict request has exactly one of \"instances\" and \"inputs\"")
    if not isinstance(request.get("signature_name", ""), str):
        raise _BadRequest(400, "signature_name must be a string")
    return request


def _mirror_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """The mirror's request id and variant.

    Raises:
        _BadRequest: either is missing or invalid.
    """
    request_id = headers.get("x-request-id", "").strip()
    if not is_request_id(request_id):
        raise _BadRequest(400, "X-Request-Id is missing or not a request id (1-128 visible ASCII characters)")
    variant = headers.get("x-variant", "").strip().lower()
    if variant not in VARIANTS:
        raise _BadRequest(400, f"X-Variant must be one of {', '.join(VARIANTS)}")
    return request_id, variant


def _grpc_message(body: bytes) -> bytes:
    """The one message of a gRPC request body (length-prefixed, uncompressed).

    Raises:
        _BadRequest: the body is not exactly one uncompressed message.
    """
    if len(body) < _GRPC_FRAME_HEADER_BYTES:
        raise _BadRequest(400, "the body is not a gRPC message (shorter than its 5-byte prefix)")
    if body[0] != 0:
        raise _BadRequest(400, "compressed gRPC messages are not captured")
    length = int.from_bytes(body[1:_GRPC_FRAME_HEADER_BYTES], "big")
    if length != len(body) - _GRPC_FRAME_HEADER_BYTES:
        raise _BadRequest(400, "the body is not exactly one gRPC message")
    return body[_GRPC_FRAME_HEADER_BYTES:]


def _grpc_model_name(body: bytes) -> str:
    """The model a gRPC ``PredictRequest`` names (``model_spec`` = field 1, its ``name`` = field 1), read off the
    wire so that the request path never waits for TensorFlow's protos to import.

    Raises:
        _BadRequest: not one message, or no model name in it.
    """
    try:
        spec = _proto_field(_grpc_message(body), 1)
        name = _proto_field(spec, 1) if spec is not None else None
        text = name.decode("utf-8") if name else ""
    except (IndexError, ValueError):
        raise _BadRequest(400, "the body is not a PredictRequest") from None
    if not text:
        raise _BadRequest(400, "the PredictRequest names no model (model_spec.name)")
    return text


def _proto_field(message: bytes, number: int) -> bytes | None:
    """The last value of length-delimited field ``number`` in a serialized protobuf message.

    Raises:
        ValueError: the bytes are not a protobuf message (IndexError: it ends mid-field).
    """
    found, pos = None, 0
    while pos < len(message):
        tag, pos = _varint(message, pos)
        wire_type = tag & 7
        if wire_type == 0:
            _, pos = _varint(message, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        elif wire_type == 2:
            length, pos = _varint(message, pos)
            if pos + length > len(message):
                raise IndexError("field past the end")
            if tag >> 3 == number:
                found = message[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
    if pos != len(message):
        raise IndexError("field past the end")
    return found


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise ValueError("varint too long")


def _decode_grpc_predict(body: bytes) -> tuple[dict[str, Any], str]:
    """A gRPC ``PredictRequest`` as a REST columnar request (numpy inputs), and that request as JSON for the row.

    Raises:
        ValueError: the message does not parse (the worker logs it and records nothing).
    """
    from google.protobuf.message import DecodeError
    from tensorflow_serving.apis import predict_pb2

    from pipeline.wire import tensors

    try:
        message = predict_pb2.PredictRequest.FromString(_grpc_message(body))
    except (DecodeError, _BadRequest) as exc:
        raise ValueError(f"not a PredictRequest: {exc}") from exc
    inputs = {name: tensors.to_ndarray(proto) for name, proto in message.inputs.items()}
    request: dict[str, Any] = {"inputs": inputs}
    if message.model_spec.signature_name:
        request["signature_name"] = message.model_spec.signature_name
    text = json.dumps({**request, "inputs": {name: array.tolist() for name, array in inputs.items()}},
                      default=_json_bytes)
    return request, text


def _json_bytes(value: Any) -> Any:
    """String tensors' bytes in JSON: text as it is, anything else as TF Serving's ``{"b64": ...}``."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    raise TypeError(f"cannot write a {type(value).__name__} as JSON")


def _batch_size(request: Mapping[str, Any]) -> int | None:
    """How many instances a predict request holds, when its shape says."""
    data = request.get("instances", request.get("inputs"))
    if isinstance(data, dict) and data:
        data = next(iter(data.values()))
    if isinstance(data, np.ndarray):
        return int(data.shape[0]) if data.ndim else None
    return len(data) if isinstance(data, list) else None


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[:_MAX_ERROR_CHARS] + "..."


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    """HTTP for :class:`CaptureService`: bounded bodies, JSON answers, no traceback ever reaches the client."""

    protocol_version = "HTTP/1.1"  # keep-alive: nginx may reuse its connection to the mirror
    server_version = "pipeline-capture"
    service: CaptureService  # set on the subclass made per service

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_GET(self) -> None:  # noqa: N802 (stdlib naming)
        if urlsplit(self.path).path.rstrip("/") == METRICS_PATH:
            self._respond_metrics()
        else:
            self._respond(lambda: self.service.handle_get(self.path))

    def _respond_metrics(self) -> None:
        try:
            page = self.service.metrics_page()
        except Exception:
            log.exception("capture service: GET %s failed", self.path)
            self._send(500, {"error": "internal error in the capture service; see its log"})
            return
        # The 0.0.4 text format is what generate_latest writes; every Prometheus reads it.
        self._write(200, CONTENT_TYPE_PLAIN_0_0_4, page)

    def do_POST(self) -> None:  # noqa: N802
        body = self._read_body()
        if body is not None:
            headers = {name: self.headers.get(name, "") for name in _MIRROR_HEADERS}
            self._respond(lambda: self.service.handle_post(self.path, body, headers))

    def _respond(self, handle: Callable[[], Reply]) -> None:
        try:
            status, payload = handle()
        except Exception:
            log.exception("capture service: %s %s failed", self.command, self.path)
            status, payload = 500, {"error": "internal error in the capture service; see its log"}
        self._send(status, payload)

    def _read_body(self) -> bytes | None:
        """The request body (``Content-Length`` or chunked), or None after answering 4xx or when the client left.

        nginx sends a chunked body when the client's had no length (gRPC over HTTP/2 usually), hence both.
        """
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            self._reject(411, "Content-Length (or a chunked body) is required")
            return None
        try:
            length = int(raw_length)
        except ValueError:
            length = -1
        if length < 0:
            self._reject(400, "invalid Content-Length")
            return None
        if length > self.service.options.max_body_bytes:
            self._discard(length)
            self._reject(413, f"the body is over {self.service.options.max_body_bytes} bytes")
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-body: nobody to answer
            self.close_connection = True
            return None
        return body

    def _read_chunked(self) -> bytes | None:
        limit = self.service.options.max_body_bytes
        body = bytearray()
        while True:
            size_line = self.rfile.readline(_MAX_LINE_BYTES)
            if not size_line:
                self.close_connection = True
                return None
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._reject(400, "invalid chunked body")
                return None
            if size == 0:
                while self.rfile.readline(_MAX_LINE_BYTES) not in (b"\r\n", b"\n", b""):
                    pass  # trailers: not used
                return bytes(body)
            if len(body) + size > limit:
                self._reject(413, f"the body is over {limit} bytes")
                return None
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                self.close_connection = True
                return None
            body += chunk
            self.rfile.readline(_MAX_LINE_BYTES)  # the CRLF after the chunk

    def _discard(self, length: int) -> None:
        """Read and drop up to ``_DRAIN_LIMIT`` bytes of a refused body: closing on unread bytes sends a TCP reset,
        which could destroy the answer before the client reads it."""
        remaining = min(length, _DRAIN_LIMIT)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 64 * 1024))
            if not chunk:
                return
            remaining -= len(chunk)

    def _reject(self, status: int, message: str) -> None:
        self.service.count_rejected()
        self._send(status, {"error": message}, close=True)

    def _send(self, status: int, payload: dict[str, Any], close: bool = False) -> None:
        self._write(status, "application/json", json.dumps(payload).encode("utf-8"), close)

    def _write(self, status: int, content_type: str, data: bytes, close: bool = False) -> None:
        headers = getattr(self, "headers", None)  # None when the request line itself was malformed
        asked_close = headers is not None and headers.get("Connection", "").lower() == "close"
        close = close or self.close_connection or asked_close
        # Written by hand, in one write: the stdlib would send no status line to a garbled (HTTP/0.9) request.
        head = (f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
                f"Connection: {'close' if close else 'keep-alive'}\r\n\r\n")
        self.wfile.write(head.encode("latin-1") + data)
        self.close_connection = close

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed HTTP (bad request line, unsupported method): a JSON answer like every other.
        self._send(code, {"error": message or "bad request"}, close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (stdlib signature)
        log.debug("%s " + format, self.address_string(), *args)
