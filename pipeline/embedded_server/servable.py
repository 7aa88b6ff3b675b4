"""One loaded SavedModel version: its signatures, Predict/Classify/Regress on it, and warmup replay.

A signature is called through its concrete function with tensors (no Session, no graph rebuild), so a request
costs one eager function call. Imported only by the server; tensorflow is imported here on purpose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.wire.dtypes import data_type_string
from pipeline.wire.status import (
    ServingError,
    failed_precondition,
    from_exception,
    invalid_argument,
)

if TYPE_CHECKING:
    from pipeline.embedded_server.batching import BatchQueue, BatchScheduler

log = logging.getLogger(__name__)

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
_MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
_SERVE_TAG = "serve"


@dataclass(frozen=True)
class Signature:
    """One callable signature: its method name and input/output dtypes (``DT_*`` names) by alias."""

    name: str
    method_name: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    function: Any  # the loaded ConcreteFunction
    input_types: dict[str, Any]  # alias -> tf.DType (looked up once, not per request)
    batcher: BatchQueue | None = None  # with --enable_batching: concurrent calls share one model call
    flat: FlatCall | None = None  # the same function called with its flat inputs (see FlatCall); None: not possible

    def call(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the signature on arrays (or tensors) keyed by input alias; outputs as numpy arrays."""
        self._check_input_keys(arrays)
        if self.batcher is not None:
            return self.batcher.submit(arrays)
        return self.run(arrays)

    def run(self, arrays: dict[str, Any]) -> dict[str, np.ndarray]:
        """One model call on exactly these inputs (no batching)."""
        from pipeline.wire.tensors import to_tf_tensor

        # tf.constant (no convert_to_tensor dispatch, ~5 us a request); a large aligned array shared, not copied
        feeds = {name: to_tf_tensor(value, self.input_types[name]) for name, value in arrays.items()}
        try:
            results = self.flat(feeds) if self.flat is not None else None
            if results is None:
                results = self.function(**feeds)
        except Exception as exc:  # TF raises many types; all become a TF status
            raise from_exception(exc) from None
        return {name: np.asarray(tensor.numpy()) for name, tensor in results.items()}

    def _check_input_keys(self, arrays: dict[str, Any]) -> None:
        if set(arrays) == set(self.inputs):
            return
        sent, wanted = sorted(arrays), sorted(self.inputs)
        extra = sorted(set(sent) - set(wanted))
        missing = sorted(set(wanted) - set(sent))
        raise invalid_argument(
            f"input size does not match signature: {len(sent)}!={len(wanted)} len({{{','.join(sent)}}}) != "
            f"len({{{','.join(wanted)}}}). Sent extra: {{{','.join(extra)}}}. "
            f"Missing but required: {{{','.join(missing)}}}.")


class FlatCall:
    """A signature's ConcreteFunction called with its flat list of input tensors.

    Calling a ConcreteFunction with keyword tensors binds them to its signature in Python (inspect, nest, type
    checks): on 2 cores that is ~0.26 ms of a ~0.74 ms MNIST batch-1 call, held under the GIL (bench/batching.py).
    The structured call ends in ``_call_flat(tensors, captured_inputs)``; this makes that last step directly. It is
    TensorFlow's private API (pinned in constraints.txt), so it is used only where it is there and provably
    equivalent: every input is a keyword TensorSpec, and the graph's first placeholders are named after them in
    the order the structured call flattens them (sorted). Otherwise :meth:`of` gives None and requests take the
    structured call, as does any request whose tensor shapes the signature does not declare, so that its error
    stays TensorFlow's own.
    """

    def __init__(self, call_flat: Any, order: tuple[str, ...], shapes: tuple[tuple[int | None, ...] | None, ...],
                 captured: Any):
        self._call_flat = call_flat
        self.order = order
        self._shapes = shapes  # per input: its dimensions (None: any size); None: any shape
        self._captured = captured

    @classmethod
    def of(cls, function: Any, aliases: Any) -> FlatCall | None:
        """The flat call of ``function`` whose SignatureDef inputs are ``aliases``; None where not provably the same."""
        import tensorflow as tf

        call_flat = getattr(function, "_call_flat", None)
        try:
            args, kwargs = function.structured_input_signature
            placeholders = [tensor.name.split(":")[0] for tensor in function.inputs[:len(kwargs)]]
            captured = function.captured_inputs
        except (AttributeError, TypeError, ValueError):
            return None
        if (call_flat is None or args or not kwargs or not isinstance(function.structured_outputs, dict)
                or not all(isinstance(spec, tf.TensorSpec) for spec in kwargs.values())):
            return None
        order = tuple(sorted(kwargs))
        if (tuple(placeholders) != order or order != tuple(sorted(aliases))
                or len(function.inputs) != len(kwargs) + len(captured)):
            return None
        shapes = tuple(None if kwargs[name].shape.rank is None else tuple(kwargs[name].shape.as_list())
                       for name in order)
        return cls(call_flat, order, shapes, captured)

    def __call__(self, feeds: dict[str, Any]) -> Any:
        """The outputs; None when a tensor's shape is not the signature's (the structured call says why)."""
        tensors = [feeds[name] for name in self.order]
        for tensor, dims in zip(tensors, self._shapes, strict=True):
            if dims is not None and not _fits(tuple(tensor.shape), dims):
                return None
        return self._call_flat(tensors, self._captured)


def _fits(shape: tuple[int | None, ...], dims: tuple[int | None, ...]) -> bool:
    return len(shape) == len(dims) and all(want is None or want == have for have, want in zip(shape, dims, strict=True))


def _dtype_name(number: int) -> str:
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(number)


def read_signature_defs(path: Path) -> Any:
    """The ``signature_def`` map of the ``serve`` MetaGraph in ``path/saved_model.pb`` (or ``.pbtxt``)."""
    from google.protobuf import text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    binary = path / "saved_model.pb"
    if binary.exists():
        saved_model.ParseFromString(binary.read_bytes())
    else:
        text_format.Parse((path / "saved_model.pbtxt").read_text(), saved_model)
    for meta_graph in saved_model.meta_graphs:
        if _SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph.signature_def
    raise failed_precondition(f"Could not find meta graph def matching supplied tags: {{ {_SERVE_TAG} }}. "
                              f"To inspect available tag-sets in the SavedModel, please use the SavedModel CLI: "
                              f"`saved_model_cli`")


class Servable:
    """A loaded version of a model."""

    def __init__(self, name: str, version: int, path: Path, loaded: Any, signature_defs: Any,
                 batching: BatchScheduler | None = None):
        self.name = name
        self.version = version
        self.path = path
        self._loaded = loaded  # keeps the variables alive as long as a request holds this object
        self.signature_defs = signature_defs
        self.signatures = self._bind_signatures(loaded, signature_defs)
        if batching is not None:
            self.signatures = self._batched(self.signatures, batching)

    def _batched(self, signatures: dict[str, Signature], scheduler: BatchScheduler) -> dict[str, Signature]:
        """Each signature with a batch queue, except those whose SignatureDef pins the batch dimension.

        The scheduler holds queues weakly: a queue lives as long as this version does (while any request holds it),
        so an unloaded version's queued requests still run, and the queue goes with the version.
        """
        from pipeline.embedded_server.batching import fixes_batch_dimension

        return {key: signature if fixes_batch_dimension(self.signature_defs[key]) else
                replace(signature, batcher=scheduler.queue(signature.run, f"{self.name}/{self.version}/{key}"))
                for key, signature in signatures.items()}

    @classmethod
    def load(cls, name: str, version: int, path: Path, batching: BatchScheduler | None = None) -> Servable:
        """Load ``path`` (a version directory) with the ``serve`` tag; ``batching`` batches its requests.

        Raises:
            ServingError: the SavedModel is missing or broken (NOT_FOUND / the TF error's code).
        """
        import tensorflow as tf

        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            raise ServingError("NOT_FOUND", f"Could not find SavedModel .pb or .pbtxt at supplied export "
                                            f"directory path: {path}")
        try:
            signature_defs = read_signature_defs(path)
            loaded = tf.saved_model.load(str(path), tags=[_SERVE_TAG])
        except ServingError:
            raise
        except Exception as exc:
            raise from_exception(exc) from None
        return cls(name, version, path, loaded, signature_defs, batching)

    @staticmethod
    def _bind_signatures(loaded: Any, signature_defs: Any) -> dict[str, Signature]:
        import tensorflow as tf

        signatures = {}
        for key, function in loaded.signatures.items():
            sig_def = signature_defs.get(key)
            if sig_def is None:
                continue
            signatures[key] = Signature(
                name=key,
                method_name=sig_def.method_name,
                inputs={alias: _dtype_name(info.dtype) for alias, info in sig_def.inputs.items()},
                outputs={alias: _dtype_name(info.dtype) for alias, info in sig_def.outputs.items()},
                function=function,
                input_types={alias: tf.as_dtype(info.dtype) for alias, info in sig_def.inputs.items()},
                flat=FlatCall.of(function, sig_def.inputs),
            )
        return signatures

    def signature(self, name: str) -> Signature:
        """The signature called ``name`` ('' means ``serving_default``), or TF Serving's error."""
        key = name or DEFAULT_SIGNATURE
        if key not in self.signatures:
            raise failed_precondition(f'Serving signature key "{key}" not found.')
        return self.signatures[key]

    # ------------------------------------------------------------ predict

    def predict(self, request: Any, contents: dict[str, np.ndarray] | None = None) -> Any:
        """Answer a ``PredictRequest`` with a ``PredictResponse`` (gRPC and warmup path).

        ``contents``: inputs' ``tensor_content`` split out of the message by gRPC's request deserializer
        (:mod:`pipeline.wire.tensor_payloads`); used in place, without a copy.
        """
        from tensorflow_serving.apis import predict_pb2

        from pipeline.wire.tensors import fill_tensor_proto, to_ndarray

        signature = self.signature(request.model_spec.signature_name)
        arrays = {}
        for index, alias in enumerate(sorted(request.inputs)):
            proto = request.inputs[alias]
            expected = signature.inputs.get(alias)
            if expected is not None and proto.dtype != signature.input_types[alias].as_datatype_enum:
                raise invalid_argument(f"Expects arg[{index}] to be {data_type_string(expected)} "
                                       f"but {data_type_string(_dtype_name(proto.dtype))} is provided")
            try:
                arrays[alias] = to_ndarray(proto, (contents or {}).get(alias))
            except Exception as exc:
                raise invalid_argument(f"Could not parse input tensor {alias}: {exc}") from None
        outputs = signature.call(arrays)
        outputs = _filter_outputs(outputs, list(request.output_filter))
        response = predict_pb2.PredictResponse()
        self.fill_model_spec(response.model_spec, signature.name)
        for alias, value in outputs.items():
            fill_tensor_proto(response.outputs[alias], value)
        return response

    def fill_model_spec(self, spec: Any, signature_name: str) -> None:
        """Answer with the name, version and signature that served the request, as TF Serving does."""
        spec.name = self.name
        spec.version.value = self.version
        spec.signature_name = signature_name

    # ------------------------------------------------------------ classify / regress

    def classify(self, request: Any) -> Any:
        """Answer a ``ClassificationRequest`` with a ``ClassificationResponse``."""
        from tensorflow_serving.apis import classification_pb2

        signature = self._examples_signature(request, CLASSIFY_METHOD, "classification")
        outputs = signature.call({_single_input(signature): _serialized_examples(request.input)})
        classes, scores = outputs.get("classes"), outputs.get("scores")
        if classes is None and scores is None:
            raise invalid_argument("Expected classification signature outputs to contain classes or scores.")
        response = classification_pb2.ClassificationResponse()
        self.fill_model_spec(response.model_spec, signature.name)
        present = classes if classes is not None else scores
        assert present is not None  # checked above
        batch = present.shape[0]
        for row in range(batch):
            classifications = response.result.classifications.add()
            width = present.reshape(batch, -1).shape[1]
            for column in range(width):
                item = classifications.classes.add()
                if classes is not None:
                    item.label = _as_text(classes.reshape(batch, -1)[row, column])
                if scores is not None:
                    item.score = float(scores.reshape(batch, -1)[row, column])
        return response

    def regress(self, request: Any) -> Any:
        """Answer a ``RegressionRequest`` with a ``RegressionResponse``."""
        from tensorflow_serving.apis import regression_pb2

        signature = self._examples_signature(request, REGRESS_METHOD, "regression")
        outputs = signature.call({_single_input(signature): _serialized_examples(request.input)})
        if "outputs" not in outputs:
            raise invalid_argument("No output tensor named outputs in the regression signature.")
        values = outputs["outputs"].reshape(outputs["outputs"].shape[0], -1)
        if values.shape[1] != 1:
            raise invalid_argument(f"Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                                   f"but got {list(outputs['outputs'].shape)}")
        response = regression_pb2.RegressionResponse()
        self.fill_model_spec(response.model_spec, signature.name)
        for value in values[:, 0].tolist():
            response.result.regressions.add().value = float(value)
        return response

    def _examples_signature(self, request: Any, method: str, kind: str) -> Signature:
        signature = self.signature(request.model_spec.signature_name)
        if signature.method_name != method:
            raise invalid_argument(f"Expected {kind} signature method_name to be {method}. "
                                   f"Was: {signature.method_name}")
        return signature

    # ------------------------------------------------------------ warmup

    def warmup(self) -> int:
        """Replay ``assets.extra/tf_serving_warmup_requests`` (PredictionLog TFRecords); how many ran.

        Raises:
            ServingError: a record could not be read or a warmup request failed; the load must fail.
        """
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        path = self.path / WARMUP_FILE
        if not path.exists():
            return 0
        count = 0
        try:
            records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
        except Exception as exc:
            raise ServingError("DATA_LOSS", f"Failed to read warmup records from {path}: {exc}") from None
        if len(records) > _MAX_WARMUP_RECORDS:
            raise invalid_argument(f"Number of warmup records exceeds the maximum ({_MAX_WARMUP_RECORDS}) "
                                   f"at {path}")
        for record in records:
            log_entry = prediction_log_pb2.PredictionLog()
            try:
                log_entry.ParseFromString(record)
            except Exception:
                raise ServingError("DATA_LOSS", f"Failed to parse PredictionLog from {path}") from None
            self._replay(log_entry, path, count)
            count += 1
        return count

    def _replay(self, entry: Any, path: Path, index: int) -> None:
        kind = entry.WhichOneof("log_type")
        runners = {"predict_log": self.predict, "classify_log": self.classify, "regress_log": self.regress}
        if kind not in runners:
            raise invalid_argument(f"Unsupported log_type for warmup: {kind}")
        try:
            runners[kind](getattr(entry, kind).request)
        except ServingError as exc:
            raise ServingError(exc.code, f"Warmup request {index} from {path} failed: {exc.message}") from None


def _filter_outputs(outputs: dict[str, np.ndarray], wanted: list[str]) -> dict[str, np.ndarray]:
    if not wanted:
        return outputs
    for alias in wanted:
        if alias not in outputs:
            raise invalid_argument(f"output tensor alias not found in signature: {alias} Outputs expected to be "
                                   f"in the set {{{','.join(sorted(outputs))}}}.")
    return {alias: outputs[alias] for alias in wanted}


def _single_input(signature: Signature) -> str:
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    return next(iter(signature.inputs))


def _serialized_examples(request_input: Any) -> np.ndarray:
    """Serialized tf.Examples; with a context, each example is merged onto it (proto concatenation = merge)."""
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [e.SerializeToString() for e in request_input.example_list.examples]
    elif kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        serialized = [context + e.SerializeToString() for e in request_input.example_list_with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise invalid_argument("Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def _as_text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
