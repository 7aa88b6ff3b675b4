"""Atomic, versioned SavedModel export of a training run for TF Serving.

The layout of a version directory and the rules of publishing one (temp name, rename to the next integer,
a high-water mark under a lock) are :mod:`pipeline.wire.version_dirs`; this module writes the contents.

Signatures (``-1`` is the batch dimension):

* images: ``serving_default`` and ``predict_images`` (the seed's name), same function:
  inputs ``images`` float32 [-1, 784] (pixels / 255, flattened row-major, as TF Serving's mnist
  client sends them; a version whose metadata records another ``input_convention`` expects that instead,
  and its golden set and warmup requests follow it); outputs ``probabilities`` float32 [-1, 10],
  ``classes`` int64 [-1].
* texts: ``serving_default``: inputs ``texts`` string [-1] (raw text); outputs ``probabilities``
  float32 [-1, 2], ``classes`` int64 [-1], ``labels`` string [-1] (class names).

A version is written under a hidden temp name, fsynced, and then published. Temp dirs of crashed exports
are ignored and removed once stale. Exporting a run that already has a version returns that version
(``created=False``).

Each export returns the version's content hash (:func:`content_sha256`: every file of the version directory,
metadata included), which the registry records (lineage ``content_sha256``); no server is pointed at a version
whose files no longer have it (:mod:`pipeline.release.serving_state`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pipeline
from pipeline.errors import NotFound
from pipeline.util.files import fsync_tree
from pipeline.wire import version_dirs as vd

if TYPE_CHECKING:
    import keras
    import numpy as np

    from pipeline.data.dataset import Snapshot
    from pipeline.models.train import TrainResult

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"
IMAGE_ALIAS_SIGNATURE = "predict_images"
PREDICT_METHOD = "tensorflow/serving/predict"
_DEFAULT_WARMUP_REQUESTS = 5
_DEFAULT_GOLDEN_SIZE = 32


CONTENT_HASH_KEY = "content_sha256"  # the lineage key the registry records it under
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExportResult:
    """Where a run's SavedModel lives, whether this call wrote it, and its content hash."""

    version: int
    path: Path
    created: bool
    content_sha256: str


def content_sha256(version_dir: str | Path) -> str:
    """sha256 over a version directory's files: for each, in the order of its relative POSIX path, the path
    (UTF-8), NUL, ``F`` and the file's bytes, or ``L`` and the target of a symbolic link; each entry ends with
    NUL and its length, so no two trees give the same stream. Directories contribute through their files.

    Raises:
        NotFound: ``version_dir`` is not a directory.
    """
    root = Path(version_dir)
    if not root.is_dir():
        raise NotFound(f"version directory {root} does not exist")
    digest = hashlib.sha256()
    for relative, path in sorted(_tree_entries(root)):
        digest.update(relative.encode() + b"\0")
        size = 0
        if path.is_symlink():
            target = os.fsencode(os.readlink(path))
            digest.update(b"L" + target)
            size = len(target)
        else:
            digest.update(b"F")
            with open(path, "rb") as handle:
                while chunk := handle.read(_HASH_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
        digest.update(b"\0" + str(size).encode() + b"\0")
    return digest.hexdigest()


def _tree_entries(root: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file and symbolic link under ``root`` (links are not followed)."""
    entries = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        linked_dirs = [name for name in dirnames if (here / name).is_symlink()]
        for name in [*filenames, *linked_dirs]:
            entries.append(((here / name).relative_to(root).as_posix(), here / name))
    return entries


# --- signatures ------------------------------------------------------------------------------------


def _add_endpoints(archive: Any, model: keras.Model, kind: str, class_names: list[str]) -> dict[str, Any]:
    """Add the serving signatures to a Keras ``ExportArchive``; returns their tf.functions by name."""
    import tensorflow as tf

    if kind == "image":
        spec = tf.TensorSpec([None, 784], tf.float32, name="images")

        def serve_images(images: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities = model(images, training=False)
            return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1, output_type=tf.int64)}

        serve: Callable[[tf.Tensor], dict[str, tf.Tensor]] = serve_images
        names: tuple[str, ...] = (SERVING_SIGNATURE, IMAGE_ALIAS_SIGNATURE)
    else:
        spec = tf.TensorSpec([None], tf.string, name="texts")
        labels = tf.constant(class_names, dtype=tf.string)

        def serve_texts(texts: tf.Tensor) -> dict[str, tf.Tensor]:
            probabilities = model(texts, training=False)
            classes = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "classes": classes, "labels": tf.gather(labels, classes)}

        serve = serve_texts
        names = (SERVING_SIGNATURE,)
    return {name: archive.add_endpoint(name, serve, input_signature=[spec]) for name in names}


def _describe_tensor(tensor: Any) -> dict[str, Any]:
    from tensorflow.core.framework import types_pb2

    return {
        "dtype": types_pb2.DataType.Name(tensor.dtype.as_datatype_enum),
        "shape": [-1 if dim is None else int(dim) for dim in tensor.shape.as_list()],
    }


def describe_signatures(endpoints: dict[str, Any]) -> dict[str, Any]:
    """Inputs and outputs of each signature (dtype names as TF Serving reports them, -1 = any size).

    Staging compares this with what the server's metadata endpoint says it loaded.
    """
    described = {}
    for name, function in endpoints.items():
        concrete = function.get_concrete_function()
        args, kwargs = concrete.structured_input_signature
        specs = [*args, *kwargs.values()]  # every spec is named; the name is the signature's input key
        described[name] = {
            "method_name": PREDICT_METHOD,
            "inputs": {spec.name: _describe_tensor(spec) for spec in specs},
            "outputs": {key: _describe_tensor(t) for key, t in concrete.structured_outputs.items()},
        }
    return described


# --- assets.extra ----------------------------------------------------------------------------------


def _tensor_proto(inputs: np.ndarray) -> Any:
    import tensorflow as tf

    if inputs.dtype == object:
        return tf.make_tensor_proto([str(text).encode() for text in inputs], dtype=tf.string, shape=[len(inputs)])
    return tf.make_tensor_proto(inputs, dtype=tf.float32, shape=list(inputs.shape))


def write_warmup_requests(path: Path, model_name: str, input_name: str, inputs: np.ndarray) -> int:
    """Write one single-example ``PredictRequest`` per input as TF Serving's warmup TFRecord.

    Returns:
        The number of requests written.
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    with tf.io.TFRecordWriter(str(path)) as writer:
        for index in range(len(inputs)):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = SERVING_SIGNATURE
            request.inputs[input_name].CopyFrom(_tensor_proto(inputs[index : index + 1]))
            record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(record.SerializeToString())
    return len(inputs)


def build_golden(
    model: keras.Model, snapshot: Snapshot, input_name: str, size: int, pixel_scale: float
) -> dict[str, Any]:
    """The first ``size`` test examples with true labels and the offline model's predictions.

    ``pixel_scale`` is the run's input convention: the golden requests are what the version itself expects.
    """
    import numpy as np

    from pipeline.models import predict_probabilities, to_model_inputs

    test = snapshot.split("test")
    sample = test.subset(np.arange(min(size, len(test))))
    inputs = to_model_inputs(sample, pixel_scale)
    probabilities = predict_probabilities(model, inputs)
    return {
        "signature_name": SERVING_SIGNATURE,
        "input_name": input_name,
        "snapshot_sha256": snapshot.sha256,
        "class_names": list(snapshot.class_names),
        "inputs": inputs.tolist(),
        "labels": [int(label) for label in sample.y],
        "probabilities": probabilities.tolist(),
        "classes": [int(c) for c in probabilities.argmax(axis=1)],
    }


def _write_json(path: Path, payload: Any, *, compact: bool = False) -> None:
    text = json.dumps(payload, separators=(",", ":")) if compact else json.dumps(payload, indent=1, sort_keys=True)
    path.write_text(text + "\n")


def _metadata(run: TrainResult, signatures: dict, extra: dict[str, Any] | None) -> dict[str, Any]:
    from pipeline.models import INPUT_CONVENTION_KEY, input_convention, pixel_scale_of

    core = {
        "model": run.info["model"],
        "run_id": run.run_id,
        "kind": run.info["kind"],
        "architecture": run.info.get("architecture"),
        "class_names": run.info["class_names"],
        "data_snapshot_sha256": run.info["snapshot"]["sha256"],
        "fault": run.info.get("fault"),
        "metrics": run.metrics,
        "trained_at": run.info.get("finished_at"),
        "code_version": pipeline.__version__,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "signatures": signatures,
        **input_convention(pixel_scale_of(run.info)),  # staging and the canary build their samples with it
    }
    extra = {k: v for k, v in (extra or {}).items() if k != INPUT_CONVENTION_KEY}  # only the run says what it takes
    return {**extra, **core}  # the core facts cannot be overridden


def write_version_dir(
    run: TrainResult, snapshot: Snapshot, target: Path, extra_metadata: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write a complete version directory (SavedModel + assets.extra) at ``target``; returns metadata."""
    import keras

    from pipeline.models import pixel_scale_of

    model = run.load_model(compile=False)  # serving needs no optimizer state
    archive = keras.export.ExportArchive()
    archive.track(model)
    endpoints = _add_endpoints(archive, model, run.info["kind"], run.info["class_names"])
    archive.write_out(str(target), verbose=False)
    signatures = describe_signatures(endpoints)
    input_name = next(iter(signatures[SERVING_SIGNATURE]["inputs"]))
    golden = build_golden(model, snapshot, input_name, _DEFAULT_GOLDEN_SIZE, pixel_scale_of(run.info))
    extra_dir = target / vd.ASSETS_EXTRA
    extra_dir.mkdir()
    warmup_inputs = to_inputs_array(golden["inputs"], run.info["kind"])[:_DEFAULT_WARMUP_REQUESTS]
    write_warmup_requests(extra_dir / vd.WARMUP_FILE, run.info["model"], input_name, warmup_inputs)
    _write_json(extra_dir / vd.GOLDEN_FILE, golden, compact=True)  # thousands of numbers
    metadata = _metadata(run, signatures, extra_metadata)
    _write_json(extra_dir / vd.METADATA_FILE, metadata)
    fsync_tree(target)
    return metadata


def to_inputs_array(inputs: list, kind: str) -> np.ndarray:
    """Golden ``inputs`` (JSON lists) back to the array the model takes: float32 images or str texts."""
    import numpy as np

    return np.asarray(inputs, dtype=np.float32 if kind == "image" else object)


def _resolve_snapshot(run: TrainResult, snapshot: Snapshot | None) -> Snapshot:
    from pipeline.data.dataset import Snapshot

    if snapshot is None:
        path = Path(run.info["snapshot"]["path"])
        if not (path / "manifest.json").is_file():
            raise NotFound(f"the run's data snapshot {path} is gone; pass snapshot= to export_run")
        snapshot = Snapshot.open(path)
    if snapshot.sha256 != run.info["snapshot"]["sha256"]:
        log.warning("golden set from snapshot %s, run %s trained on %s",
                    snapshot.sha256[:12], run.run_id, run.info["snapshot"]["sha256"][:12])
    return snapshot


def export_run(
    run_dir: Path,
    model_base_path: Path,
    snapshot: Snapshot | None = None,
    *,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportResult:
    """Export a training run as the next version under ``model_base_path``, atomically.

    Args:
        run_dir: A finished training run (see pipeline.models.train).
        model_base_path: TF Serving's ``model_base_path`` of the model (created if missing).
        snapshot: Data for warmup requests and the golden set (its test split); default: the
            snapshot the run was trained on.
        extra_metadata: More keys for metadata.json (e.g. the Airflow run id); core keys win.

    Returns:
        The version, its directory, whether this call created it (False: the run was
        already exported, nothing written) and its content hash (:func:`content_sha256`).

    Raises:
        NotFound: ``run_dir`` is not a finished run, or its snapshot is gone and none was given.
    """
    from pipeline.models.train import load_run

    run = load_run(run_dir)
    base = Path(model_base_path)
    base.mkdir(parents=True, exist_ok=True)
    vd.remove_stale_temp_dirs(base)
    existing = vd.find_version_of_run(base, run.run_id)
    if existing is not None:
        log.info("run %s is already version %d under %s", run.run_id, existing, base)
        path = base / str(existing)
        return ExportResult(existing, path, created=False, content_sha256=content_sha256(path))
    snapshot = _resolve_snapshot(run, snapshot)
    tmp_dir = base / f"{vd.TMP_PREFIX}{uuid.uuid4().hex}"
    try:
        write_version_dir(run, snapshot, tmp_dir, extra_metadata)
        digest = content_sha256(tmp_dir)  # of the complete directory, before anyone can read it under its number
        version, created = vd.publish(base, tmp_dir, run.run_id)
        path = vd.version_dir(base, version)
        result = ExportResult(version, path, created, digest if created else content_sha256(path))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)  # gone already after a successful rename
    log.info("exported run %s as %s (created=%s, content sha256 %s)", run.run_id, result.path, result.created,
             result.content_sha256[:12])
    return result
