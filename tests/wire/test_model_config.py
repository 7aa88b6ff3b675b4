"""models.config tooling: text-format round trip, atomic writes, validation, edits that return new configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import ConfigError, NotFound
from pipeline.wire import model_config as mc

CONFIG_TEXT = """
model_config_list {
  config {
    name: "mnist"
    base_path: "/models/mnist"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 3 versions: 4 } }
    version_labels { key: "stable" value: 3 }
    version_labels { key: "canary" value: 4 }
  }
  config { name: "spam" base_path: "/models/spam" model_platform: "tensorflow" }
}
"""


def test_read_write_round_trip_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "serving" / "models.config"
    config = mc.parse_config(CONFIG_TEXT)
    mc.write_config(path, config)
    assert mc.read_config(path) == config
    assert sorted(p.name for p in path.parent.iterdir()) == ["models.config"]  # no temp file left
    versions, labels = mc.versions_and_labels(mc.get_model(config, "mnist"))
    assert versions == [3, 4] and labels == {"stable": 3, "canary": 4}
    assert mc.versions_and_labels(mc.get_model(config, "spam")) == (None, {})


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = mc.write_config(tmp_path / "models.config", mc.parse_config(CONFIG_TEXT))
    before = path.read_text()
    bad = mc.parse_config(CONFIG_TEXT)
    bad.model_config_list.config[1].name = "mnist"
    with pytest.raises(ConfigError, match="multiple times"):
        mc.write_config(path, bad)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models.config"]


def test_single_model_config_and_set_versions_return_new_configs() -> None:
    config = mc.single_model_config("mnist", "/models/mnist")
    assert mc.get_model(config, "mnist").model_version_policy.latest.num_versions == 1
    pinned = mc.set_model_versions(config, "mnist", [5, 4], {"stable": 4, "canary": 5})
    assert mc.versions_and_labels(mc.get_model(pinned, "mnist")) == ([4, 5], {"stable": 4, "canary": 5})
    assert mc.get_model(config, "mnist").model_version_policy.WhichOneof("policy_choice") == "latest"  # untouched
    with pytest.raises(NotFound):
        mc.get_model(config, "spam")
    with pytest.raises(NotFound):
        mc.read_config("/nonexistent/models.config")


@pytest.mark.parametrize("edit,fragment", [
    (lambda m: setattr(m, "name", "../etc"), "not allowed"),
    (lambda m: setattr(m, "name", "a/b"), "not allowed"),
    (lambda m: setattr(m, "name", ""), "not allowed"),
    (lambda m: setattr(m, "base_path", "models/mnist"), "must be absolute"),
    (lambda m: setattr(m, "base_path", "/models/../etc"), "'..'"),
    (lambda m: setattr(m, "model_platform", "pytorch"), "not supported"),
    (lambda m: m.version_labels.__setitem__("stable", 9), "does not load"),
    (lambda m: m.version_labels.__setitem__("bad label", 3), "not allowed"),
])
def test_validate_refuses(edit: object, fragment: str) -> None:
    config = mc.parse_config(CONFIG_TEXT)
    edit(config.model_config_list.config[0])  # type: ignore[operator]
    with pytest.raises(ConfigError, match=fragment):
        mc.validate_config(config)


def test_parse_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="does not parse"):
        mc.parse_config("model_config_list { nope: 1 }")


def test_module_stays_light() -> None:
    code = "import sys, pipeline.wire.model_config; print('tensorflow' in sys.modules, 'numpy' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ}).stdout.split()
    assert output == ["False", "False"]
