"""One function per task of the release, rollback and monitor DAGs.

Each takes plain values (model name, version, the Airflow run id, the trigger conf) and returns a small
JSON-able dict for XCom, so a DAG task body is a single call and the same calls run from the CLI and tests.
The order of the release's tasks is :mod:`pipeline.flow`'s; this module only says what each one does. It sees
the whole pipeline (build stages and release), which is why it lives here and not inside either.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline import steps
from pipeline.config import FAULTS, ModelConfig
from pipeline.errors import ConfigError, NotFound, ValidationFailed
from pipeline.gates import Verdict
from pipeline.release import canary, staging
from pipeline.release import rollback as rollback_module
from pipeline.release.context import Release
from pipeline.release.production import CANARY, production_state
from pipeline.release.registry import Registry
from pipeline.settings import get_paths

log = logging.getLogger(__name__)

# Trigger-conf keys and the config fields they override.
CONF_OVERRIDES = {
    "epochs": "train.epochs",
    "learning_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "data_source": "data.source",
    "data_path": "data.path",
}
CONF_FLAGS = ("force", "dry_run", "inject_fault")
_TRAIN_OVERRIDES = {"train.epochs", "train.learning_rate", "train.batch_size"}
_LOCK_WAIT_S = 900.0  # how long a release waits for another release or rollback of the same model


def parse_conf(model: str, conf: dict[str, Any] | None) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config with the trigger conf applied, and the flags; bad conf names the field."""
    conf = {k: v for k, v in (conf or {}).items() if v is not None}
    unknown = sorted(set(conf) - set(CONF_OVERRIDES) - set(CONF_FLAGS))
    if unknown:
        raise ConfigError(f"conf: unknown field(s) {unknown}; allowed: {sorted([*CONF_OVERRIDES, *CONF_FLAGS])}")
    overrides = {CONF_OVERRIDES[k]: v for k, v in conf.items() if k in CONF_OVERRIDES}
    config = steps.resolve_config(model, overrides=overrides)
    if config.train.runner != "in_process" and set(overrides) & _TRAIN_OVERRIDES:
        raise ConfigError(f"conf: {sorted(k for k in conf if CONF_OVERRIDES.get(k) in _TRAIN_OVERRIDES)} cannot be "
                          f"changed per run while {model} trains in a container (train.runner: "
                          f"{config.train.runner}); change configs/models/{model}.yaml instead")
    fault = conf.get("inject_fault")
    if fault is not None and fault not in FAULTS:
        raise ConfigError(f"conf.inject_fault: unknown fault {fault!r} (known: {list(FAULTS)})")
    if fault and not config.release.allow_fault_injection:
        raise ConfigError(f"conf.inject_fault: {model}'s config does not allow fault injection "
                          "(release.allow_fault_injection is false)")
    flags = {"force": bool(conf.get("force")), "dry_run": bool(conf.get("dry_run")), "inject_fault": fault}
    return config, flags


def check_conf(model: str, conf: dict[str, Any] | None) -> dict[str, Any]:
    """First task: refuse bad conf before any side effect."""
    config, flags = parse_conf(model, conf)
    return {"model": config.name, **flags}


def prepare_data(model: str, conf: dict[str, Any] | None) -> dict[str, Any]:
    config, _ = parse_conf(model, conf)
    return steps.prepare_data(config)


def validate_data(model: str, conf: dict[str, Any] | None, snapshot: str) -> dict[str, Any]:
    config, _ = parse_conf(model, conf)
    return steps.validate_data(config, snapshot)


def train(model: str, conf: dict[str, Any] | None, snapshot: str) -> dict[str, Any]:
    config, flags = parse_conf(model, conf)
    return steps.train(config, snapshot, fault=flags["inject_fault"])


def production_baseline(release: Release) -> dict[str, float] | None:
    """Hold-out metrics of the version production serves as stable now (None before the first release)."""
    stable = release.registry.stable_version(release.model)
    return None if stable is None else release.registry.get_version(release.model, stable).metrics


def evaluate(model: str, conf: dict[str, Any] | None, run_dir: str) -> dict[str, Any]:
    """Floor + no regression against production; ``force`` skips the baseline, a fault makes it advisory."""
    config, flags = parse_conf(model, conf)
    baseline = None if flags["force"] else production_baseline(Release(config))
    verdict = steps.evaluate(config, run_dir, baseline)
    _enforce(verdict, flags)
    return verdict.to_dict()


def _enforce(verdict: Verdict, flags: dict[str, Any]) -> None:
    """Raise on a failed gate, unless a fault is injected on purpose (the canary must then catch it)."""
    if verdict.blessed:
        return
    if flags.get("inject_fault"):
        log.warning("%s: overridden because fault %r is injected on purpose", verdict.summary(), flags["inject_fault"])
        return
    verdict.raise_if_failed()


def export(model: str, conf: dict[str, Any] | None, run_dir: str, snapshot: str, run_id: str) -> dict[str, Any]:
    """Export the run as the next version and register it with its lineage.

    Training is deterministic, so unchanged data and params give a run that is already a version. That
    version is released again only if no earlier release got past export; otherwise the result says
    ``release: False`` and the DAG stops there (a scheduled retrain on unchanged data is a no-op).
    """
    config, _ = parse_conf(model, conf)
    exported = steps.export(config, run_dir, snapshot, lineage={"airflow_run_id": run_id, "params": conf or {}})
    registry = Release(config).registry
    try:
        record = registry.get_version(model, exported["version"])
    except NotFound:
        record = registry.register_version(model, exported["version"], _lineage(run_dir, run_id, conf, exported))
    state = str(record.state)
    release = exported["created"] or state == "exported"
    if not release:
        log.warning("%s version %s is this exact model (data, params) and is already %s; nothing new to release",
                    model, exported["version"], state)
    return {**exported, "state": state, "release": release}


def _lineage(run_dir: str, run_id: str, conf: dict[str, Any] | None, exported: dict[str, Any]) -> dict[str, Any]:
    run = json.loads((Path(run_dir) / "run.json").read_text())
    return {
        "data_sha256": run["snapshot"]["sha256"], "airflow_run_id": run_id, "training_run_id": run["run_id"],
        "params": conf or {}, "metrics": json.loads((Path(run_dir) / "metrics.json").read_text()),
        "export_path": exported["path"],
    }


def has_new_version(exported: dict[str, Any]) -> bool:
    """False when the export is a model that was already released (the run stops, successfully)."""
    return bool(exported.get("release", True))


def deploy_staging(model: str, version: int, run_id: str) -> dict[str, Any]:
    """Take the model's release lock for this run (held until finalize or rollback), then deploy to staging."""
    release = Release(steps.resolve_config(model))
    release.registry.acquire_lock(model, run_id, timeout_s=_LOCK_WAIT_S)
    return staging.deploy_to_staging(release, version, run_id)



def validate_staging(model: str, conf: dict[str, Any] | None, version: int, run_id: str) -> dict[str, Any]:
    config, flags = parse_conf(model, conf)
    fault = flags["inject_fault"]
    verdict = staging.validate_on_staging(Release(config), version, run_id,
                                  overridden_by=f"fault {fault!r} injected on purpose" if fault else None)
    _enforce(verdict, flags)
    return verdict.to_dict()


def should_promote(conf: dict[str, Any] | None) -> bool:
    """False for a dry run: stop after staging, production untouched."""
    return not (conf or {}).get("dry_run")


def promote_canary(model: str, version: int, run_id: str) -> dict[str, Any]:
    return canary.promote_canary(Release(steps.resolve_config(model)), version, run_id)


def canary_check(model: str, version: int, run_id: str) -> dict[str, Any]:
    return canary.canary_gate(Release(steps.resolve_config(model)), version, run_id).to_dict()


def finalize(model: str, version: int, run_id: str) -> dict[str, Any]:
    release = Release(steps.resolve_config(model))
    try:
        return canary.finalize_release(release, version, run_id)
    finally:
        release.registry.release_lock(model, run_id)


def restore_production(model: str, version: int | None, run_id: str) -> dict[str, Any]:
    """After any failure past staging: make sure the canary is gone and stable untouched; free the lock."""
    release = Release(steps.resolve_config(model))
    try:
        if version is not None and production_state(release).label(CANARY) == version:
            return canary.rollback_canary(release, version, ["the release failed after promotion"], run_id)
        return {"restored": False, "reason": "no canary of this run on production"}
    finally:
        release.registry.release_lock(model, run_id)


def rollback(model: str, to_version: int | None, run_id: str | None, reason: str = "on-call rollback") -> dict[str, Any]:
    return rollback_module.rollback(Release(steps.resolve_config(model)), to_version, run_id=run_id, reason=reason)


def monitor(model: str, run_id: str | None) -> dict[str, Any]:
    result = rollback_module.monitor(Release(steps.resolve_config(model)), run_id)
    if not result["healthy"]:
        raise ValidationFailed(f"{model}: stable failed its probe ({'; '.join(result['reasons'])}); "
                               f"rolled back to {result['rollback']['to']}")
    return result


def record_task_failure(model: str, run_id: str | None, task_id: str | None, reason: str) -> str:
    """on_failure_callback body: write the failure to the registry and free this run's lock; returns one line."""
    registry = Registry(get_paths().registry_url)
    registry.record_failure(model, run_id, task_id, reason)
    if run_id:
        registry.release_lock(model, run_id)
    return f"RELEASE FAILED model={model} run={run_id} task={task_id}: {reason}"
