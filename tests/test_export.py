"""Atomic versioned export: layout, signatures, warmup, golden set, idempotence, crash safety."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import NotFound
from pipeline.export import content_sha256, export_run
from pipeline.wire import version_dirs
from pipeline.wire.version_dirs import list_versions, read_golden, read_metadata


@pytest.fixture(scope="module")
def image_export(image_run, tmp_path_factory):
    """The tiny image run exported once into a fresh base path."""
    base = tmp_path_factory.mktemp("models") / "mnist"
    return export_run(image_run.run_dir, base, extra_metadata={"airflow_run_id": "manual__1"})


@pytest.fixture(scope="module")
def text_export(text_run, tmp_path_factory):
    """The tiny text run exported once into a fresh base path."""
    return export_run(text_run.run_dir, tmp_path_factory.mktemp("models") / "spam")


def _signature(version_dir: Path, name: str = "serving_default"):
    import tensorflow as tf

    return tf.saved_model.load(str(version_dir)).signatures[name]


def test_version_dir_layout(image_export) -> None:
    assert (image_export.version, image_export.created) == (1, True)
    assert image_export.path.name == "1"
    for name in ("saved_model.pb", "variables", "assets.extra/tf_serving_warmup_requests",
                 "assets.extra/metadata.json", "assets.extra/golden.json"):
        assert (image_export.path / name).exists(), name
    assert list_versions(image_export.path.parent) == [1]
    assert not list(image_export.path.parent.glob(version_dirs.TMP_PREFIX + "*"))


def test_metadata_names_the_lineage(image_export, image_run, image_snapshot) -> None:
    meta = read_metadata(image_export.path)
    assert meta["run_id"] == image_run.run_id
    assert meta["model"] == "mnist"
    assert meta["data_snapshot_sha256"] == image_snapshot.sha256
    assert meta["metrics"]["accuracy"] == image_run.metrics["accuracy"]
    assert meta["code_version"] and meta["exported_at"]
    assert meta["airflow_run_id"] == "manual__1"
    assert meta["signatures"]["serving_default"] == {
        "method_name": "tensorflow/serving/predict",
        "inputs": {"images": {"dtype": "DT_FLOAT", "shape": [-1, 784]}},
        "outputs": {
            "probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 10]},
            "classes": {"dtype": "DT_INT64", "shape": [-1]},
        },
    }
    assert meta["signatures"]["predict_images"] == meta["signatures"]["serving_default"]


def test_image_signatures_match_the_keras_model(image_export, image_run, image_snapshot) -> None:
    from pipeline.models import predict_probabilities, to_model_inputs

    inputs = to_model_inputs(image_snapshot.split("test"))
    expected = predict_probabilities(image_run.load_model(), inputs)
    for name in ("serving_default", "predict_images"):
        outputs = _signature(image_export.path, name)(images=inputs)
        np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
        assert outputs["classes"].dtype.name == "int64"
        np.testing.assert_array_equal(outputs["classes"].numpy(), expected.argmax(axis=1))


def test_text_signature_serves_raw_strings(text_export, text_run, text_snapshot) -> None:
    import tensorflow as tf

    from pipeline.models import predict_probabilities, to_model_inputs

    inputs = to_model_inputs(text_snapshot.split("test"))
    expected = predict_probabilities(text_run.load_model(), inputs)
    outputs = _signature(text_export.path)(texts=tf.constant(inputs.tolist()))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    labels = [label.decode() for label in outputs["labels"].numpy()]
    assert labels == [("ham", "spam")[c] for c in expected.argmax(axis=1)]
    meta = read_metadata(text_export.path)
    assert meta["signatures"]["serving_default"]["inputs"] == {"texts": {"dtype": "DT_STRING", "shape": [-1]}}
    assert meta["signatures"]["serving_default"]["outputs"]["labels"] == {"dtype": "DT_STRING", "shape": [-1]}


@pytest.mark.parametrize(("fixture", "input_name"), [("image_export", "images"), ("text_export", "texts")])
def test_warmup_file_holds_predict_requests(fixture, input_name, request) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    result = request.getfixturevalue(fixture)
    path = result.path / "assets.extra" / "tf_serving_warmup_requests"
    logs = [prediction_log_pb2.PredictionLog.FromString(raw.numpy()) for raw in tf.data.TFRecordDataset(str(path))]
    assert len(logs) == 5
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.name == read_metadata(result.path)["model"]
        assert req.model_spec.signature_name == "serving_default"
        assert tf.make_ndarray(req.inputs[input_name]).shape[0] == 1


def test_golden_set_replays_to_the_offline_predictions(image_export, image_snapshot) -> None:
    golden = read_golden(image_export.path)
    assert len(golden["inputs"]) == len(golden["labels"]) == len(golden["classes"]) == 32
    assert golden["labels"] == image_snapshot.split("test").y[:32].tolist()
    served = _signature(image_export.path)(images=np.asarray(golden["inputs"], dtype=np.float32))
    np.testing.assert_allclose(served["probabilities"].numpy(), golden["probabilities"], atol=1e-5)
    assert served["classes"].numpy().tolist() == golden["classes"]


def test_exporting_the_same_run_again_is_a_no_op(image_export, image_run) -> None:
    again = export_run(image_run.run_dir, image_export.path.parent)
    assert (again.version, again.path, again.created) == (image_export.version, image_export.path, False)
    assert again.content_sha256 == image_export.content_sha256
    assert list_versions(image_export.path.parent) == [1]


def test_the_content_hash_covers_every_file_of_the_version(image_export, tmp_path) -> None:
    digest = image_export.content_sha256
    assert len(digest) == 64 and digest == content_sha256(image_export.path)  # computed before publishing: same
    copy = tmp_path / "7"
    shutil.copytree(image_export.path, copy)
    assert content_sha256(copy) == digest  # where the directory lies is not part of it

    def changed(edit) -> str:
        edit()
        return content_sha256(copy)

    weights = next((copy / "variables").glob("variables.data-*"))
    original = weights.read_bytes()
    assert changed(lambda: weights.write_bytes(bytes([original[0] ^ 1]) + original[1:])) != digest
    assert changed(lambda: weights.write_bytes(original)) == digest
    metadata = copy / "assets.extra" / "metadata.json"
    assert changed(lambda: metadata.rename(copy / "assets.extra" / "metadata.jsn")) != digest
    assert changed(lambda: (copy / "assets.extra" / "metadata.jsn").rename(metadata)) == digest
    assert changed(lambda: (copy / "assets" / "planted").write_bytes(b"")) != digest
    (copy / "assets" / "planted").unlink()
    golden = copy / "assets.extra" / "golden.json"
    target = tmp_path / "golden.json"
    shutil.move(golden, target)
    assert changed(lambda: golden.symlink_to(target)) != digest  # a link to the same bytes is not the file
    with pytest.raises(NotFound):
        content_sha256(tmp_path / "nothing")


def _fake_run_copy(run, tmp_path: Path, run_id: str) -> Path:
    """A copy of a run dir under another run id, so it exports as a new version (no retraining)."""
    copy = tmp_path / run_id
    shutil.copytree(run.run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "run_id": run_id}))
    return copy


@pytest.fixture(scope="module")
def raw_pixel_export(image_run, tmp_path_factory):
    """The tiny image run, as if trained under the ``input_convention`` fault (its run.json says so), exported.

    The extra metadata claims the clients' convention: only the run may say what its version takes.
    """
    root = tmp_path_factory.mktemp("raw_pixels")
    copy = _fake_run_copy(image_run, root, "run-raw-pixels")
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "fault": "input_convention",
                                               "input_convention": {"pixel_scale": 255.0}}))
    return export_run(copy, root / "models", extra_metadata={"input_convention": {"pixel_scale": 1.0}})


def test_metadata_records_the_input_convention_only_when_it_is_not_the_clients(image_export,
                                                                               raw_pixel_export) -> None:
    assert "input_convention" not in read_metadata(image_export.path)
    meta = read_metadata(raw_pixel_export.path)
    assert meta["input_convention"] == {"pixel_scale": 255.0}
    assert meta["fault"] == "input_convention"


def test_golden_set_and_warmup_follow_the_runs_input_convention(raw_pixel_export, image_export, image_snapshot):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    from pipeline.models import RAW_PIXEL_SCALE, to_model_inputs

    golden = read_golden(raw_pixel_export.path)
    inputs = np.asarray(golden["inputs"], dtype=np.float32)
    np.testing.assert_array_equal(inputs, to_model_inputs(image_snapshot.split("test"), RAW_PIXEL_SCALE)[:32])
    assert inputs.max() == 255.0 and np.asarray(read_golden(image_export.path)["inputs"]).max() == 1.0
    served = _signature(raw_pixel_export.path)(images=inputs)
    np.testing.assert_allclose(served["probabilities"].numpy(), golden["probabilities"], atol=1e-5)
    path = raw_pixel_export.path / "assets.extra" / "tf_serving_warmup_requests"
    first = prediction_log_pb2.PredictionLog.FromString(next(iter(tf.data.TFRecordDataset(str(path)))).numpy())
    np.testing.assert_array_equal(tf.make_ndarray(first.predict_log.request.inputs["images"])[0], inputs[0])


def test_versions_only_grow_after_deleting_the_newest(image_run, tmp_path) -> None:
    base = tmp_path / "models"
    first = export_run(_fake_run_copy(image_run, tmp_path, "run-a"), base)
    second = export_run(_fake_run_copy(image_run, tmp_path, "run-b"), base)
    assert (first.version, second.version) == (1, 2)
    shutil.rmtree(second.path)
    third = export_run(_fake_run_copy(image_run, tmp_path, "run-c"), base)
    assert third.version == 3
    assert list_versions(base) == [1, 3]


def test_concurrent_publishes_get_distinct_versions(tmp_path) -> None:
    base = tmp_path / "models"
    base.mkdir()
    (base / "4").mkdir()  # an existing version the high-water mark has never seen
    results = []

    def publish(i: int) -> None:
        tmp = base / f"{version_dirs.TMP_PREFIX}{i}"
        tmp.mkdir()
        results.append(version_dirs.publish(base, tmp, f"run-{i}")[0])

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(5, 13))
    assert (base / ".last_version").read_text().strip() == "12"


def test_stale_temp_dirs_are_removed_fresh_ones_kept(tmp_path) -> None:
    stale, fresh = tmp_path / f"{version_dirs.TMP_PREFIX}old", tmp_path / f"{version_dirs.TMP_PREFIX}new"
    stale.mkdir()
    fresh.mkdir()
    an_hour_ago = time.time() - 2 * 3600
    os.utime(stale, (an_hour_ago, an_hour_ago))
    assert version_dirs.remove_stale_temp_dirs(tmp_path) == [stale]
    assert fresh.exists() and not stale.exists()


def test_missing_assets_are_not_found(tmp_path) -> None:
    with pytest.raises(NotFound):
        read_metadata(tmp_path)
    with pytest.raises(NotFound):
        export_run(tmp_path / "no-run", tmp_path / "models")


# Exports, but stops for good once the SavedModel is in the temp dir and before assets.extra and the rename:
# the warmup file is the first thing written after the SavedModel. The test then SIGKILLs it there.
_EXPORT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import pipeline.export as export

    def pause(path, *args, **kwargs):
        Path(sys.argv[3]).write_text(str(Path(path).parent.parent))
        while True:
            time.sleep(1)

    export.write_warmup_requests = pause
    export.export_run(sys.argv[1], sys.argv[2])
    """
)


@pytest.mark.slow
def test_killed_export_leaves_no_version_and_the_next_export_succeeds(image_run, tmp_path) -> None:
    base, marker = tmp_path / "models", tmp_path / "paused"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", _EXPORT_SCRIPT, str(image_run.run_dir), str(base), str(marker)]
    with open(tmp_path / "exporter.log", "wb") as output:  # TF's start-up chatter, kept out of the test log
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, (tmp_path / "exporter.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the exporter never reached the pause point"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    partial = Path(marker.read_text())
    assert partial.parent == base and (partial / "saved_model.pb").exists()  # killed mid-write
    assert list_versions(base) == []
    result = export_run(image_run.run_dir, base)
    assert (result.version, result.created) == (1, True)
    assert partial.exists()  # a fresh temp dir may belong to a live export: left alone
    assert list_versions(base) == [1]
