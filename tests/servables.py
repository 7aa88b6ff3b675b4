"""Shared serving fixtures (a pytest plugin of tests/conftest.py): tiny SavedModels built the way TF Serving's test models look, and servers on them.

Builders (usable from any test or bench):
  * :func:`build_half_plus_two` - ``y = a*x + b`` like TF Serving's ``half_plus_two`` test model: signatures
    ``serving_default`` (x -> y, any shape), ``classify_x_to_y`` (tf.Example "x" -> scores),
    ``regress_x_to_y`` (-> outputs), ``regress_x2_to_y3`` (``0.5*x2 + 3``).
  * :func:`build_multi_io` - ``serving_default`` with inputs ``x`` float [-1,2], ``n`` int64 [-1], ``s`` string
    [-1] and outputs ``sum`` float, ``length`` int32, ``positive`` bool, ``echo_bytes`` string; plus one
    ``echo_<dtype>`` signature per JSON-capable dtype (input ``x`` -> output ``y``, ``y_bytes`` for bytes).
  * :func:`write_warmup` / :func:`predict_log` - ``assets.extra/tf_serving_warmup_requests`` records.
Fixtures: ``half_plus_two_dir`` / ``multi_io_dir`` (session-built SavedModels), ``make_base_path`` (copies them as
numbered versions), ``serve`` (an in-process server on free ports, stopped afterwards).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"
ECHO_DTYPES = ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint32", "uint64", "bool",
               "string"]


def _set_method_names(export_dir: Path, methods: dict[str, str]) -> None:
    """TF2 saves every signature as predict; classify/regress signatures need TF Serving's method names."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = export_dir / "saved_model.pb"
    saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    for meta_graph in saved_model.meta_graphs:
        for key, method in methods.items():
            meta_graph.signature_def[key].method_name = method
    path.write_bytes(saved_model.SerializeToString())


def build_half_plus_two(export_dir: str | Path, a: float = 0.5, b: float = 2.0, c: float = 3.0) -> Path:
    """Save ``y = a*x + b`` (plus classify/regress signatures) to ``export_dir``."""
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = tf.Variable(a), tf.Variable(b), tf.Variable(c)

        @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="x")])
        def predict(self, x: Any) -> dict:
            return {"y": self.a * x + self.b}

        def _parse(self, serialized: Any, key: str) -> Any:
            features = tf.io.parse_example(serialized, {key: tf.io.FixedLenFeature([1], tf.float32, [0.0])})
            return features[key]

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: Any) -> dict:
            return {"scores": self.a * self._parse(inputs, "x") + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: Any) -> dict:
            return {"outputs": self.a * self._parse(inputs, "x") + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress_x2(self, inputs: Any) -> dict:
            return {"outputs": self.a * self._parse(inputs, "x2") + self.c}

    module = HalfPlusTwo()
    export_dir = Path(export_dir)
    signatures = {"serving_default": module.predict, "classify_x_to_y": module.classify,
                  "regress_x_to_y": module.regress, "regress_x2_to_y3": module.regress_x2}
    tf.saved_model.save(module, str(export_dir), signatures=signatures)
    _set_method_names(export_dir, {"classify_x_to_y": CLASSIFY, "regress_x_to_y": REGRESS,
                                   "regress_x2_to_y3": REGRESS})
    return export_dir


def build_multi_io(export_dir: str | Path) -> Path:
    """Save the multi-input/multi-dtype model (see module docstring) to ``export_dir``."""
    import tensorflow as tf

    class MultiIO(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x"),
                                      tf.TensorSpec([None], tf.int64, name="n"),
                                      tf.TensorSpec([None], tf.string, name="s")])
        def predict(self, x: Any, n: Any, s: Any) -> dict:
            return {"sum": tf.reduce_sum(x, axis=1) * tf.cast(n, tf.float32),
                    "length": tf.strings.length(s),
                    "positive": n > 0,
                    "echo_bytes": s}

    module = MultiIO()
    signatures: dict[str, Any] = {"serving_default": module.predict}
    for dtype in ECHO_DTYPES:
        out_key = "y_bytes" if dtype == "string" else "y"
        fn = tf.function(lambda x, key=out_key: {key: tf.identity(x)},
                         input_signature=[tf.TensorSpec(None, tf.as_dtype(dtype), name="x")])
        signatures[f"echo_{dtype}"] = fn.get_concrete_function()
        setattr(module, f"echo_{dtype}", fn)
    export_dir = Path(export_dir)
    tf.saved_model.save(module, str(export_dir), signatures=signatures)
    return export_dir


def predict_log(inputs: dict[str, Any], model: str = "m", signature: str = "serving_default") -> Any:
    """A PredictionLog holding a PredictRequest with ``inputs`` (name -> array-like)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    entry = prediction_log_pb2.PredictionLog()
    request = entry.predict_log.request
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return entry


def write_warmup(version_dir: str | Path, logs: Iterable[Any]) -> Path:
    """Write ``assets.extra/tf_serving_warmup_requests`` (a TFRecord of PredictionLog) into a version dir."""
    import tensorflow as tf

    path = Path(version_dir) / "assets.extra" / "tf_serving_warmup_requests"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for entry in logs:
            writer.write(entry.SerializeToString())
    return path


def add_version(base_path: Path, version: int, source: Path) -> Path:
    """Copy a SavedModel into ``base_path/<version>`` atomically (temp name, then rename), as export does."""
    base_path.mkdir(parents=True, exist_ok=True)
    tmp = base_path / f".tmp-export-{version}"
    shutil.copytree(source, tmp)
    target = base_path / str(version)
    tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def half_plus_two_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``half_plus_two`` SavedModel (a=0.5, b=2)."""
    return build_half_plus_two(tmp_path_factory.mktemp("models") / "half_plus_two")


@pytest.fixture(scope="session")
def half_plus_three_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same signatures, ``y = 0.5*x + 3``: tells versions apart in swap tests."""
    return build_half_plus_two(tmp_path_factory.mktemp("models") / "half_plus_three", b=3.0)


@pytest.fixture(scope="session")
def multi_io_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multi-input / multi-dtype SavedModel."""
    return build_multi_io(tmp_path_factory.mktemp("models") / "multi_io")


@pytest.fixture
def make_base_path(tmp_path: Path) -> Callable[..., Path]:
    """``make_base_path(name, {1: source_dir, 2: ...})`` -> a base path with those versions."""

    def make(name: str, versions: dict[int, Path]) -> Path:
        base = tmp_path / "models" / name
        base.mkdir(parents=True, exist_ok=True)
        for version, source in versions.items():
            add_version(base, version, source)
        return base

    return make


@pytest.fixture
def serve() -> Iterable[Callable[..., Any]]:
    """``serve(**ServerOptions fields)`` -> a started in-process ModelServer on free ports (REST and gRPC)."""
    from pipeline.embedded_server import ModelServer, ServerOptions

    servers: list[Any] = []

    def start(**options: Any) -> Any:
        options.setdefault("port", 0)
        options.setdefault("rest_api_port", 0)
        options.setdefault("file_system_poll_wait_seconds", 0.1)
        server = ModelServer(ServerOptions(**options))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()
