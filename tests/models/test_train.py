"""train_model writes a complete, reproducible run directory."""

import json

import numpy as np
import pytest

from pipeline.errors import ConfigError, NotFound
from pipeline.models.train import compute_run_id, load_run, shift_labels, train_model

_ARTIFACTS = ("model.keras", "metrics.json", "history.json", "training_curve.png", "confusion_matrix.png", "run.json")


@pytest.mark.parametrize("run_fixture", ["image_run", "text_run"])
def test_train_writes_every_artifact(run_fixture, request) -> None:
    result = request.getfixturevalue(run_fixture)
    for name in _ARTIFACTS:
        assert (result.run_dir / name).stat().st_size > 0, name
    for name in ("training_curve.png", "confusion_matrix.png"):
        assert (result.run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["run_id"] == result.run_id
    assert info["code_version"]
    assert info["config"]["train"]["epochs"] == 1
    assert set(json.loads((result.run_dir / "history.json").read_text())) >= {"loss", "val_loss", "accuracy"}
    assert json.loads((result.run_dir / "metrics.json").read_text()) == result.metrics
    assert result.metrics["n_examples"] == 60


def test_text_run_records_f1_spam(text_run) -> None:
    assert 0.0 <= text_run.metrics["f1_spam"] <= 1.0
    assert text_run.info["class_names"] == ["ham", "spam"]


def test_load_run_and_model_give_the_same_predictions(image_run, image_snapshot) -> None:
    from pipeline.models.evaluate import evaluate_model

    loaded = load_run(image_run.run_dir)
    assert (loaded.run_id, loaded.metrics) == (image_run.run_id, image_run.metrics)
    assert evaluate_model(loaded.load_model(), image_snapshot.split("test")) == image_run.metrics


def test_load_run_of_an_unfinished_dir_is_not_found(tmp_path) -> None:
    with pytest.raises(NotFound, match="train it first"):
        load_run(tmp_path)


def test_run_id_is_deterministic_and_tells_runs_apart(image_run, image_snapshot, make_config) -> None:
    config = make_config("image")
    assert image_run.run_id == compute_run_id(config, image_snapshot.sha256)
    assert compute_run_id(config, image_snapshot.sha256, "label_shift") != image_run.run_id
    assert compute_run_id(config, image_snapshot.sha256, "input_convention") not in (
        image_run.run_id, compute_run_id(config, image_snapshot.sha256, "label_shift"))
    assert compute_run_id(make_config("image", epochs=2), image_snapshot.sha256) != image_run.run_id
    assert compute_run_id(config, "0" * 64) != image_run.run_id


def test_shift_labels_rotates_every_label() -> None:
    from pipeline.data.dataset import Examples

    examples = Examples("image", np.zeros((3, 28, 28), np.uint8), np.array([0, 4, 9]), tuple("0123456789"))
    assert shift_labels(examples).y.tolist() == [1, 5, 0]


def test_label_shift_fault_is_refused_unless_allowed(image_snapshot, make_config, tmp_path) -> None:
    config = make_config("image").with_overrides({"release.allow_fault_injection": False})
    with pytest.raises(ConfigError, match="allow_fault_injection"):
        train_model(config, image_snapshot, tmp_path, fault="label_shift")
    with pytest.raises(ConfigError, match="unknown fault"):
        train_model(make_config("image"), image_snapshot, tmp_path, fault="gremlins")
    assert not (tmp_path / "run.json").exists()


def test_snapshot_of_the_wrong_kind_is_refused(text_snapshot, make_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match="needs image data"):
        train_model(make_config("image"), text_snapshot, tmp_path)


def test_label_shift_makes_a_bad_model(image_snapshot, make_config, tmp_path) -> None:
    config = make_config("image", "softmax", epochs=3)
    result = train_model(config, image_snapshot, tmp_path, fault="label_shift")
    assert result.info["fault"] == "label_shift"
    assert result.metrics["accuracy"] < 0.3  # it learned the rotated labels; test labels are true


def test_a_clients_convention_run_records_no_input_convention(image_run) -> None:
    assert "input_convention" not in image_run.info


def test_input_convention_trains_and_scores_on_raw_pixels_and_records_it(image_snapshot, make_config,
                                                                         tmp_path) -> None:
    from pipeline.models import RAW_PIXEL_SCALE, predict_probabilities, to_model_inputs
    from pipeline.models.evaluate import evaluate_model

    result = train_model(make_config("image", "softmax", epochs=3), image_snapshot, tmp_path, fault="input_convention")
    assert result.info["fault"] == "input_convention"
    assert result.info["input_convention"] == {"pixel_scale": 255.0}
    assert json.loads((tmp_path / "run.json").read_text())["input_convention"] == {"pixel_scale": 255.0}
    model = result.load_model()
    test = image_snapshot.split("test")
    # metrics.json is the model judged on its own convention, the one evaluation gates on
    assert evaluate_model(model, test, pixel_scale=RAW_PIXEL_SCALE) == result.metrics
    assert result.metrics["accuracy"] > 0.8
    raw, client = (predict_probabilities(model, to_model_inputs(test, scale)) for scale in (RAW_PIXEL_SCALE, 1.0))
    assert np.abs(raw - client).max() > 0.1  # the model's answers depend on the pixel scale it is sent


def test_input_convention_is_refused_for_text_models(text_snapshot, make_config, tmp_path) -> None:
    with pytest.raises(ConfigError, match="input_convention.*image models"):
        train_model(make_config("text"), text_snapshot, tmp_path, fault="input_convention")
    assert not (tmp_path / "run.json").exists()


def test_one_log_line_per_epoch(image_snapshot, make_config, tmp_path, caplog) -> None:
    caplog.set_level("INFO", logger="pipeline.models.train")
    train_model(make_config("image", "softmax", epochs=2, early_stopping_patience=5), image_snapshot, tmp_path)
    epoch_lines = [r.getMessage() for r in caplog.records if " epoch " in r.getMessage()]
    assert len(epoch_lines) == 2
    assert "val_accuracy=" in epoch_lines[0] and "epoch 1/2" in epoch_lines[0]
