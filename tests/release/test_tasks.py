"""Trigger conf handling of the release tasks: bad conf fails before any side effect, naming the field."""

import pytest

from pipeline import tasks
from pipeline.errors import ConfigError
from pipeline.gates import Verdict


def test_conf_maps_onto_config_fields():
    config, flags = tasks.parse_conf("mnist", {"epochs": 3, "learning_rate": 0.01, "dry_run": True})
    assert config.train.epochs == 3 and config.train.learning_rate == 0.01
    assert flags == {"force": False, "dry_run": True, "inject_fault": None}


@pytest.mark.parametrize("conf,field", [
    ({"epochs": 0}, "train.epochs"),
    ({"learning_rate": -1}, "train.learning_rate"),
    ({"data_source": "ftp"}, "data.source"),
    ({"data_source": "csv"}, "data.path is required"),
    ({"epohcs": 3}, "unknown field.*epohcs"),
    ({"inject_fault": "meteor"}, "conf.inject_fault: unknown fault"),
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


def test_failed_gate_raises_unless_a_fault_is_injected_on_purpose():
    failed = Verdict("staging", False, ["p95 too high"])
    with pytest.raises(Exception, match="p95 too high"):
        tasks._enforce(failed, {"inject_fault": None})
    tasks._enforce(failed, {"inject_fault": "label_shift"})  # logged, not raised: the canary must catch it


def test_unchanged_model_is_not_released_again():
    assert tasks.has_new_version({"version": 1, "created": True, "release": True})
    assert not tasks.has_new_version({"version": 1, "created": False, "release": False})


def test_per_run_training_params_are_refused_when_training_in_a_container(tmp_path, monkeypatch):
    _mnist_config_with(tmp_path, monkeypatch, "train", runner="docker")
    with pytest.raises(ConfigError, match=r"\['epochs'\] cannot be changed per run"):
        tasks.check_conf("mnist", {"epochs": 3})
    assert tasks.check_conf("mnist", {"dry_run": True})["dry_run"] is True
