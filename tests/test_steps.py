"""The build chain on real data, as ``pipeline build`` runs it."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import steps
from pipeline.errors import ValidationFailed
from pipeline.settings import REPO_ROOT, Paths


@pytest.fixture
def home(tmp_path):
    import shutil

    cached = REPO_ROOT / "var" / "cache" / "npm"
    if cached.is_dir():
        shutil.copytree(cached, tmp_path / "cache" / "npm")
    return Paths(tmp_path)


@pytest.mark.slow
def test_build_mnist_chain_exports_a_version_that_predicts_like_the_trained_model(home):
    import tensorflow as tf

    from pipeline.data.dataset import Snapshot
    from pipeline.models import to_model_inputs
    from pipeline.models.train import load_run

    # Fewer epochs than the shipped config, so the floor is lowered to what they reach.
    config = steps.resolve_config("mnist", overrides={"train.epochs": 3, "gates.min_value": 0.9})
    result = steps.build(config, paths=home)
    version_dir = home.model_base_path("mnist") / "1"
    assert result["path"] == str(version_dir) and result["version"] == 1
    assert set(result["timings"]) == {"prepare", "validate", "train", "evaluate", "export"}
    assert result["metrics"]["accuracy"] >= 0.9

    inputs = to_model_inputs(Snapshot.open(result["snapshot"]).split("test"))[:64]
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    outputs = served(images=tf.constant(inputs))
    in_memory = load_run(result["run_dir"]).load_model().predict(inputs, verbose=0)
    np.testing.assert_allclose(outputs["probabilities"].numpy(), in_memory, atol=1e-5)
    assert list(outputs["classes"].numpy()) == list(in_memory.argmax(axis=1))

    again = steps.build(config, paths=home)  # the same data and params: the same run, no second version
    assert again["version"] == 1 and again["created"] is False


@pytest.mark.slow
def test_input_convention_candidate_passes_evaluation_on_its_own_and_fails_client_pixels(home):
    import tensorflow as tf

    from pipeline.data.dataset import Snapshot
    from pipeline.models import to_model_inputs
    from pipeline.wire.version_dirs import read_golden, read_metadata

    # Real MNIST, few epochs (floor lowered as above). build() raises unless evaluation blesses it on its own.
    config = steps.resolve_config("mnist", overrides={"train.epochs": 3, "gates.min_value": 0.9})
    result = steps.build(config, fault="input_convention", paths=home)
    assert result["metrics"]["accuracy"] >= 0.9
    version_dir = Path(result["path"])
    assert read_metadata(version_dir)["input_convention"] == {"pixel_scale": 255.0}
    served = tf.saved_model.load(str(version_dir)).signatures["serving_default"]

    def accuracy(inputs: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(served(images=tf.constant(inputs))["classes"].numpy() == labels))

    golden = read_golden(version_dir)  # what staging replays: the version's own convention
    assert np.max(golden["inputs"]) == 255.0
    assert accuracy(np.asarray(golden["inputs"], dtype=np.float32), np.asarray(golden["labels"])) >= 0.9
    test = Snapshot.open(result["snapshot"]).split("test")
    assert accuracy(to_model_inputs(test), test.y) < 0.5  # what clients send (pixels / 255): it collapses


def test_evaluation_gate_blocks_below_the_floor(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.5}))
    config = steps.resolve_config("mnist")
    verdict = steps.evaluate(config, run_dir)
    assert not verdict.blessed and "below the floor" in verdict.reasons[0]
    assert json.loads((run_dir / "evaluation.json").read_text())["status"] == "NOT_BLESSED"
    with pytest.raises(ValidationFailed, match="accuracy 0.5000 is below the floor 0.9700"):
        verdict.raise_if_failed()


def test_evaluation_gate_compares_with_production(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"accuracy": 0.975}))
    config = steps.resolve_config("mnist")
    assert steps.evaluate(config, run_dir, baseline={"accuracy": 0.98}).blessed  # within the tolerance
    regressed = steps.evaluate(config, run_dir, baseline={"accuracy": 0.99})
    assert not regressed.blessed and "regresses" in regressed.reasons[0]
    assert regressed.figures["baseline"] == 0.99
