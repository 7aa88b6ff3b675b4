"""TF Serving's Prometheus endpoint: ``--monitoring_config_file`` and the metrics TF Serving exports.

A ``MonitoringConfig`` text proto (TF Serving's ``monitoring_config.proto``)::

    prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }

turns on ``GET <path>`` on the REST port (path defaults to ``/monitoring/prometheus/metrics``, as
``PrometheusExporter::kPrometheusPath``), answered with the Prometheus text format. Each server owns one
:class:`ServerMetrics` with its own ``prometheus_client.CollectorRegistry`` (never the global one), so two servers
in one process keep separate counts. Nothing is recorded when monitoring is off.

Exported, with TF Serving's names (its exporter turns ``/tensorflow/serving/request_count`` into
``:tensorflow:serving:request_count``), label names, descriptions and buckets:

=================================================  =========  ================================================
metric                                             type       labels
=================================================  =========  ================================================
``:tensorflow:serving:request_count``              counter    model_name, status, **model_version**
``:tensorflow:serving:request_latency``            histogram  model_name, API, entrypoint, **model_version**
``:tensorflow:cc:saved_model:load_attempt_count``  counter    model_path, status (``success`` / ``fail``)
``:tensorflow:cc:saved_model:load_latency``        counter    model_path (microseconds of successful loads)
``:tensorflow:serving:model_warmup_latency``       histogram  model_path, status
=================================================  =========  ================================================

What matches TF Serving (``util.cc``, ``prediction_service_impl.cc``, ``saved_model_warmup_util.cc``,
``cc/saved_model/loader.cc``, ``util/prometheus_exporter.cc``):

* Predict, Classify and Regress are counted on gRPC and REST, every request with ``status`` = the TF code name
  (``OK``, ``INVALID_ARGUMENT``, ``NOT_FOUND``...); latency is recorded for successful requests only, in
  microseconds, with ``API`` = ``Predict``/``Classify``/``Regress`` and ``entrypoint`` = ``GRPC`` for gRPC, and
  ``API`` = the URL verb (``predict``/``classify``/``regress``, lower-cased) and ``entrypoint`` = ``REST`` for
  REST (TF Serving's REST handler hands its dispatcher the model name and that verb; the dispatcher's own source
  we could not read, so the REST labels are our best reading of it). GetModelMetadata, GetModelStatus and
  MultiInference are not counted (TF Serving's gRPC service does not count them).
* Buckets: ``Exponential(10, 1.8, 33)`` plus the overflow bucket, ``le`` printed as TF does (``%g``, 6 digits);
  like TF's histogram, a value lands in the first bucket whose limit is *greater* than it.
* Exposition: ``# TYPE`` per family, counters under their own name (no ``_total``), samples in TF's label order
  with ``le`` last, ``_bucket``/``_sum``/``_count`` per histogram cell.

Our additions and the differences we could not avoid:

* ``model_version`` (ours, not TF Serving's) on the request metrics: the version that served the request (or was
  asked for by number when none could; empty when neither, which Prometheus reads as no label). The live canary
  needs per-version figures when one server serves stable and canary; ``sum without (model_version)`` gives TF
  Serving's series back.
* A ``# HELP`` line per family (TF Serving's exporter writes ``# TYPE`` only); values print as floats (``3.0``)
  and sums keep full precision (TF prints ``3`` and 6 significant digits); the content type is
  ``text/plain; version=0.0.4; charset=utf-8`` (TF sends ``text/plain``). Prometheus reads both alike.
* The page is written here, not by ``prometheus_client.generate_latest``: its 0.0.4 writer renames a counter
  ``x`` to ``x_total``, which would break every query written against TF Serving.
* Not exported: TensorFlow's own ``:tensorflow:core:*`` runtime metrics, ``:tensorflow:serving:runtime_latency``,
  ``request_example_count*`` and ``load_latency_by_stage`` (no cheap equivalent here); REST model status and
  metadata GETs are not counted (we could not confirm that TF Serving counts them).
"""

from __future__ import annotations

import functools
import json
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from pipeline.wire.status import ServingError

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
GRPC, REST = "GRPC", "REST"  # TF Serving's entrypoint label values
OK = "OK"
Snapshot = dict[str, dict[tuple[str, ...], Any]]  # metric name -> labels -> count, or histogram cell (sum, buckets)

REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
LOAD_ATTEMPT_COUNT = ":tensorflow:cc:saved_model:load_attempt_count"
LOAD_LATENCY = ":tensorflow:cc:saved_model:load_latency"
WARMUP_LATENCY = ":tensorflow:serving:model_warmup_latency"

_LOAD_SUCCESS, _LOAD_FAIL = "success", "fail"  # loader.cc's kLoadAttemptSuccess / kLoadAttemptFail
_MICROS = 1e6


def _exponential_bounds(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TF's ``Buckets::Exponential``: the same repeated multiplication, so the same doubles."""
    bounds, bound = [], scale
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return tuple(bounds)


_BOUNDS = _exponential_bounds(10.0, 1.8, 33)  # "Scale of 10, power of 1.8 with bucket count 33 (~20 minutes)"
_LE = tuple(f"{bound:.6g}" for bound in _BOUNDS) + ("+Inf",)  # absl::StrCat(double) prints 6 digits like %g


# ------------------------------------------------------------------ monitoring config


@functools.lru_cache(maxsize=1)
def _monitoring_config_class() -> Any:
    """``tensorflow.serving.MonitoringConfig``; tensorflow-serving-api does not ship it, so it is built here.

    The descriptor mirrors ``tensorflow_serving/config/monitoring_config.proto`` field for field, in a private
    pool so it never clashes with a real ``monitoring_config_pb2`` imported elsewhere.
    """
    try:
        from tensorflow_serving.config import monitoring_config_pb2  # type: ignore[attr-defined,unused-ignore]

        return monitoring_config_pb2.MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/config/monitoring_config.proto",
                                               package="tensorflow.serving", syntax="proto3")
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
    prometheus.field.add(name="path", number=2, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                         type_name=".tensorflow.serving.PrometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def parse_monitoring_config(text: str) -> Any:
    """A ``MonitoringConfig`` from protobuf text format.

    Raises:
        google.protobuf.text_format.ParseError: the text is not a MonitoringConfig.
    """
    from google.protobuf import text_format

    config = _monitoring_config_class()()
    text_format.Parse(text, config)
    return config


def read_monitoring_config(path: str) -> Any:
    """Read ``--monitoring_config_file`` as TF Serving's ``ParseProtoTextFile`` does.

    Raises:
        ServingError: NOT_FOUND when the file cannot be read; INVALID_ARGUMENT ``Invalid protobuf file: '<path>'``
            (TF Serving's text, followed by the parser's reason) when it does not parse.
    """
    from google.protobuf import text_format

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ServingError("NOT_FOUND", f"{path}; No such file or directory") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServingError("INVALID_ARGUMENT", f"Invalid protobuf file: '{path}': {exc}") from None
    try:
        return parse_monitoring_config(text)
    except text_format.ParseError as exc:
        raise ServingError("INVALID_ARGUMENT", f"Invalid protobuf file: '{path}': {exc}") from None


def prometheus_path(config: Any) -> str | None:
    """The path to serve metrics on, or None when ``prometheus_config.enable`` is not set."""
    prometheus = config.prometheus_config
    if not prometheus.enable:
        return None
    return prometheus.path or DEFAULT_PATH


# ------------------------------------------------------------------ recording


def version_label(spec: Any, servable: Any) -> str:
    """``model_version`` of a request: the servable's version, else the version asked for by number, else ''."""
    if servable is not None:
        return str(servable.version)
    if spec.WhichOneof("version_choice") == "version":
        return str(spec.version.value)
    return ""


def _new_cell() -> list[float]:
    """One histogram cell: ``[sum, bucket_0 .. bucket_33]`` (counts per bucket, not cumulative)."""
    return [0.0] * (len(_LE) + 1)


def _observe(cells: dict[tuple[str, ...], list[float]], labels: tuple[str, ...], value: float) -> None:
    """Add ``value`` to the cell of ``labels`` (the caller holds the lock)."""
    cell = cells.get(labels)
    if cell is None:
        cell = cells[labels] = _new_cell()
    cell[0] += value
    cell[bisect_right(_BOUNDS, value) + 1] += 1  # TF's upper_bound: the first limit above the value


class ServerMetrics:
    """What one server records, in its own registry; every method is thread-safe and cheap (one lock, no I/O).

    Example::

        metrics = ServerMetrics()
        metrics.request_succeeded("m", "1", "Predict", GRPC, seconds=0.002)
        page = metrics.render()   # the Prometheus text page
    """

    def __init__(self) -> None:
        # One lock for every update: uncontended it costs ~0.1 us, and a scrape copies everything at once.
        self._lock = threading.Lock()
        # An OK request lives only in its latency cell (its count is the cell's total), so recording one costs a
        # single dict lookup; failures, which have no latency in TF Serving, are counted on their own.
        self._latency: dict[tuple[str, ...], list[float]] = {}  # (model_name, API, entrypoint, model_version)
        self._failed: dict[tuple[str, ...], int] = {}  # (model_name, status, model_version)
        self._load_attempts: dict[tuple[str, ...], int] = {}  # (model_path, status)
        self._load_micros: dict[tuple[str, ...], int] = {}  # (model_path,)
        self._warmup: dict[tuple[str, ...], list[float]] = {}  # (model_path, status)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self.snapshot))

    # The request path: these two run once per Predict/Classify/Regress.

    def request_succeeded(self, model: str, version: str, api: str, entrypoint: str, seconds: float) -> None:
        """Count an OK request and record its latency (TF Serving records latency for OK requests only)."""
        micros = round(seconds * _MICROS)  # TF Serving records whole microseconds
        bucket = bisect_right(_BOUNDS, micros) + 1  # as _observe, inlined: this runs on every request
        key = (model, api, entrypoint, version)
        with self._lock:
            cell = self._latency.get(key)
            if cell is None:
                cell = self._latency[key] = _new_cell()
            cell[0] += micros
            cell[bucket] += 1

    def request_failed(self, model: str, version: str, status: str) -> None:
        """Count a failed request under its TF status code name (e.g. ``INVALID_ARGUMENT``)."""
        key = (model, status, version)
        with self._lock:
            self._failed[key] = self._failed.get(key, 0) + 1

    # The load path.

    def load_attempted(self, model_path: str, ok: bool, seconds: float) -> None:
        """Count a SavedModel load; a successful one adds its microseconds to ``load_latency``."""
        key = (model_path, _LOAD_SUCCESS if ok else _LOAD_FAIL)
        with self._lock:
            self._load_attempts[key] = self._load_attempts.get(key, 0) + 1
            if ok:
                self._load_micros[(model_path,)] = self._load_micros.get((model_path,), 0) + round(seconds * _MICROS)

    def warmup_finished(self, model_path: str, status: str, seconds: float) -> None:
        """Record a warmup replay; ``status`` is TF's ``Status::ToString()`` (``OK`` or ``CODE: message``)."""
        with self._lock:
            _observe(self._warmup, (model_path, status), round(seconds * _MICROS))

    # The scrape.

    def snapshot(self) -> Snapshot:
        """A consistent copy of every cell, by metric name."""
        with self._lock:
            latency = {labels: list(cell) for labels, cell in self._latency.items()}
            requests = dict(self._failed)
            warmup = {labels: list(cell) for labels, cell in self._warmup.items()}
            cells = {LOAD_ATTEMPT_COUNT: dict(self._load_attempts), LOAD_LATENCY: dict(self._load_micros)}
        for (model, _api, _entrypoint, version), cell in latency.items():
            key = (model, OK, version)
            requests[key] = requests.get(key, 0) + int(sum(cell[1:]))
        return {**cells, WARMUP_LATENCY: warmup, REQUEST_COUNT: requests, REQUEST_LATENCY: latency}

    def render(self, others: Iterable[Snapshot] = ()) -> bytes:
        """The Prometheus text page of this server's registry; with ``others`` (the snapshots of the other
        processes serving the same ports), of the sum of them all."""
        others = list(others)
        if not others:
            return render(self.registry)
        merged = merge_snapshots([self.snapshot(), *others])
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(lambda: merged))
        return render(registry)


def snapshot_to_json(snapshot: Snapshot) -> bytes:
    """A snapshot as JSON (label tuples as lists), to hand to another process."""
    return json.dumps({name: [[list(labels), value] for labels, value in cells.items()]
                       for name, cells in snapshot.items()}).encode()


def snapshot_from_json(data: bytes) -> Snapshot:
    return {name: {tuple(labels): value for labels, value in cells} for name, cells in json.loads(data).items()}


def merge_snapshots(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The cell-by-cell sum of several snapshots (counters add; a histogram cell adds its sum and each bucket)."""
    merged: Snapshot = {name: {} for name in _FAMILIES}
    for snapshot in snapshots:
        for name, cells in snapshot.items():
            into = merged.setdefault(name, {})
            for labels, value in cells.items():
                have = into.get(labels)
                if isinstance(value, list):
                    into[labels] = [a + b for a, b in zip(have, value, strict=True)] if have else list(value)
                else:
                    into[labels] = (have or 0) + value
    return merged


# name -> (type, TF Serving's description, label names), in TF's order (sorted by its metric path).
_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    LOAD_ATTEMPT_COUNT: ("counter", "The number of times a SavedModel was successfully loaded.",
                         ("model_path", "status")),
    LOAD_LATENCY: ("counter", "Latency in microseconds for SavedModels that were successfully loaded.",
                   ("model_path",)),
    WARMUP_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for warming up the model.",
                     ("model_path", "status")),
    REQUEST_COUNT: ("counter", "The total number of requests.", ("model_name", "status", "model_version")),
    REQUEST_LATENCY: ("histogram", "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
                      ("model_name", "API", "entrypoint", "model_version")),
}


class _Collector:
    """Turns a :class:`ServerMetrics` snapshot into ``prometheus_client`` metric families at scrape time."""

    def __init__(self, snapshot: Callable[[], Snapshot]):
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        cells = self._snapshot()
        for name, (kind, documentation, label_names) in _FAMILIES.items():
            family = Metric(name, documentation, kind)
            for labels, value in sorted(cells[name].items()):
                named = dict(zip(label_names, labels, strict=True))
                if kind == "histogram":
                    _add_histogram_samples(family, named, value)
                else:
                    family.add_sample(name, named, value)  # TF's name as is: no "_total"
            yield family


def _add_histogram_samples(family: Metric, labels: dict[str, str], cell: list[float]) -> None:
    cumulative = 0.0
    for le, count in zip(_LE, cell[1:], strict=True):
        cumulative += count
        family.add_sample(family.name + "_bucket", {**labels, "le": le}, cumulative)
    family.add_sample(family.name + "_sum", labels, cell[0])
    family.add_sample(family.name + "_count", labels, cumulative)


# ------------------------------------------------------------------ exposition


def render(registry: Any) -> bytes:
    """The Prometheus text format (0.0.4) of ``registry``, counters under their own names as TF Serving writes them.

    Labels keep the order the collector gave (TF's), instead of ``generate_latest``'s sorted order and ``_total``
    suffix.
    """
    lines: list[str] = []
    for family in registry.collect():
        kind = "untyped" if family.type == "unknown" else family.type
        lines.append(f"# HELP {family.name} {_escape_help(family.documentation)}")
        lines.append(f"# TYPE {family.name} {kind}")
        lines.extend(_sample_line(sample.name, sample.labels, sample.value) for sample in family.samples
                     if not sample.name.endswith("_created"))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _sample_line(name: str, labels: dict[str, str], value: float) -> str:
    if not labels:
        return f"{name} {floatToGoString(value)}"
    return f"{name}{{{_labels_text(labels.items())}}} {floatToGoString(value)}"


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{key}="{_escape_label_value(value)}"' for key, value in labels)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
