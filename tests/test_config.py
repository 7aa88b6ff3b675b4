"""Model configs: the shipped ones load; bad values fail naming the field."""

import pytest

from pipeline.config import ModelConfig, list_models, load_model_config, parse_model_config
from pipeline.errors import ConfigError, NotFound


def test_shipped_configs_load():
    assert {"mnist", "spam"} <= set(list_models())
    assert load_model_config("mnist").train.architecture == "cnn"
    assert load_model_config("spam").gates.metric == "f1_spam"


def test_unknown_model_lists_known_ones():
    with pytest.raises(NotFound, match="known: .*mnist"):
        load_model_config("nope")


@pytest.mark.parametrize("field,value,expected", [
    ("train.epochs", 0, "train.epochs"),
    ("data.source", "ftp", "data.source"),
    ("gates.min_value", 1.5, "gates.min_value"),
    ("train.learning_rate", "fast", "train.learning_rate"),
])
def test_bad_override_names_the_field(field, value, expected):
    with pytest.raises(ConfigError, match=expected):
        load_model_config("mnist").with_overrides({field: value})


def test_unknown_field_is_refused():
    with pytest.raises(ConfigError, match="unknown config field 'train.epoch'"):
        load_model_config("mnist").with_overrides({"train.epoch": 3})
    raw = load_model_config("mnist").model_dump(mode="json") | {"colour": "red"}
    with pytest.raises(ConfigError, match="colour"):
        parse_model_config(raw)


def test_file_sources_need_a_path():
    raw = load_model_config("spam").model_dump(mode="json")
    raw["data"]["source"] = "csv"
    with pytest.raises(ConfigError, match="data.path is required"):
        parse_model_config(raw)


def test_bad_yaml_is_a_config_error(tmp_path):
    bad = tmp_path / "m.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model_config(path=bad)


def test_config_import_is_light():
    import subprocess
    import sys

    code = "import sys, pipeline.config, pipeline.settings, pipeline.gates; " \
           "print(any(m in sys.modules for m in ('tensorflow', 'numpy', 'pandas')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_every_data_source_fits_some_task_and_the_form_offers_only_known_ones():
    import typing

    from pipeline.config import FILE_SOURCES, SOURCES_BY_TASK, DataConfig

    known = set(typing.get_args(DataConfig.model_fields["source"].annotation))
    offered = {source for sources in SOURCES_BY_TASK.values() for source in sources}
    assert offered == known
    assert set(FILE_SOURCES) <= known
    assert set(SOURCES_BY_TASK) == set(typing.get_args(ModelConfig.model_fields["task"].annotation))


@pytest.mark.parametrize("steps", [(), (5, 5), (50, 25), (0, 10), (10, 100)])
def test_canary_steps_must_be_increasing_percentages(steps):
    with pytest.raises(ConfigError, match="canary.steps"):
        load_model_config("mnist").with_overrides({"canary.steps": list(steps)})
