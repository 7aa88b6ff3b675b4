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
from pipeline.conf_schema import CONF_OVERRIDES, validate_conf
from pipeline.config import ModelConfig
from pipeline.dag_specs import spec_of
from pipeline.errors import ConfigError, NotFound, ValidationFailed
from pipeline.export import CONTENT_HASH_KEY
from pipeline.gates import Verdict
from pipeline.live.phases import phase_named
from pipeline.release import canary, live_canary, staging
from pipeline.release import reconcile as reconcile_module
from pipeline.release import rollback as rollback_module
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE, production_state
from pipeline.release.registry import Registry, State

log = logging.getLogger(__name__)

_TRAIN_OVERRIDES = {"train.epochs", "train.learning_rate", "train.batch_size"}
_LOCK_WAIT_S = 900.0  # how long a release waits for another release or rollback of the same model
_RESTORE_LOCK_WAIT_S = 120.0  # the teardown waits for a rollback that preempted the release to finish


def parse_conf(model: str, conf: dict[str, Any] | None) -> tuple[ModelConfig, dict[str, Any]]:
    """The model's config with the trigger conf applied, and the flags; bad conf names the field.

    The conf is checked against the DAG's Params schemas first (:func:`pipeline.conf_schema.validate_conf`): what a
    trigger is refused for, ``pipeline release --conf`` is refused for. A field that is null takes the config's value
    where its schema allows null.
    """
    conf = dict(conf or {})
    validate_conf(spec_of(steps.resolve_config(model)), conf)
    conf = {k: v for k, v in conf.items() if v is not None}
    overrides = {CONF_OVERRIDES[k]: v for k, v in conf.items() if k in CONF_OVERRIDES}
    config = steps.resolve_config(model, overrides=overrides)
    if config.train.runner != "in_process" and set(overrides) & _TRAIN_OVERRIDES:
        raise ConfigError(f"conf: {sorted(k for k in conf if CONF_OVERRIDES.get(k) in _TRAIN_OVERRIDES)} cannot be "
                          f"changed per run while {model} trains in a container (train.runner: "
                          f"{config.train.runner}); change configs/models/{model}.yaml instead")
    fault = conf.get("inject_fault")
    if fault and not config.release.allow_fault_injection:
        raise ConfigError(f"conf.inject_fault: {model}'s config does not allow fault injection "
                          "(release.allow_fault_injection is false)")
    flags = {"force": bool(conf.get("force")), "dry_run": bool(conf.get("dry_run")), "inject_fault": fault}
    return config, flags


def check_conf(model: str, conf: dict[str, Any] | None) -> dict[str, Any]:
    """First task: refuse bad conf before any side effect (a data file that is not there included)."""
    config, flags = parse_conf(model, conf)
    path = (conf or {}).get("data_path")
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"conf.data_path (data.path): no readable file at {path!r}")
    return {"model": config.name, **flags}


def reconcile(model: str, run_id: str) -> dict[str, Any]:
    """Second task: a canary left serving by a release that died is rolled back (and recorded) before this one
    starts; a release still running is left alone (:func:`pipeline.release.reconcile.reconcile`)."""
    return reconcile_module.reconcile(Release(steps.resolve_config(model)), run_id, reason=f"release {run_id}")


def _hold_lock(release: Release, run_id: str) -> None:
    """Each step that touches a server first confirms this run still holds the model's lock (and extends it).

    Raises:
        Preempted: an on-call rollback took it: the release stops here, and changes no server.
    """
    release.registry.refresh_lock(release.model, run_id)


def prepare_data(model: str, conf: dict[str, Any] | None) -> dict[str, Any]:
    config, _ = parse_conf(model, conf)
    return steps.prepare_data(config)


def validate_data(model: str, conf: dict[str, Any] | None, snapshot: str) -> dict[str, Any]:
    config, _ = parse_conf(model, conf)
    return steps.validate_data(config, snapshot)


def train(model: str, conf: dict[str, Any] | None, snapshot: str) -> dict[str, Any]:
    config, flags = parse_conf(model, conf)
    return steps.train(config, snapshot, fault=flags["inject_fault"])


def production_baseline(release: Release, run_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The metrics of the version production serves as stable now, on the candidate's test split (None before the
    first release).

    Its recorded metrics when it was trained on the candidate's data snapshot (the same test split); otherwise it is
    scored again on the candidate's test split, so both are judged on the same examples: new data changes the test
    split (new examples join it), and a recorded figure from the old one would set a bar the candidate is not
    measured against. ``baseline_on`` in the result says which.
    """
    stable = release.registry.stable_version(release.model)
    if stable is None:
        return None
    record = release.registry.get_version(release.model, stable)
    snapshot = _run_snapshot(run_dir)
    if snapshot is None or snapshot.get("sha256") in (None, record.data_sha256):
        return {**record.metrics, "baseline_on": f"version {stable}'s recorded metrics (the same test split)"}
    from pipeline.data.dataset import Snapshot
    from pipeline.models.evaluate import evaluate_saved_model

    test = Snapshot.open(snapshot["path"]).split("test")
    metrics = evaluate_saved_model(release.version_dir(stable), test, release.config.serving.signature_name)
    return {**steps.scalars(metrics), "baseline_on": f"version {stable} scored on the candidate's test split "
                                                     f"({len(test)} examples of snapshot {snapshot['sha256'][:12]})"}


def _run_snapshot(run_dir: str | Path | None) -> dict[str, Any] | None:
    """The data snapshot a training run used (``path``, ``sha256``), from its ``run.json``; None when unknown."""
    if run_dir is None:
        return None
    try:
        snapshot = json.loads((Path(run_dir) / "run.json").read_text()).get("snapshot")
    except (OSError, ValueError):
        return None
    return snapshot if isinstance(snapshot, dict) and snapshot.get("path") else None


def evaluate(model: str, conf: dict[str, Any] | None, run_dir: str) -> dict[str, Any]:
    """Floor + no regression against production on the same test split; ``force`` skips the baseline (only that:
    the floor holds)."""
    config, flags = parse_conf(model, conf)
    baseline = None if flags["force"] else production_baseline(Release(config), run_dir)
    verdict = steps.evaluate(config, run_dir, baseline)
    _enforce(verdict)
    return verdict.to_dict()


def _enforce(verdict: Verdict) -> None:
    """Raise on a failed gate. No gate is ever bypassed: a fault injected on purpose must pass on its own."""
    verdict.raise_if_failed()


def export(model: str, conf: dict[str, Any] | None, run_dir: str, snapshot: str, run_id: str) -> dict[str, Any]:
    """Export the run as the next version and register it with its lineage.

    Training is deterministic, so unchanged data and params give a run that is already a version. That
    version is released again only if no earlier release got past export; otherwise the result says
    ``release: False`` and the DAG stops there (a scheduled retrain on unchanged data is a no-op).
    """
    config, _ = parse_conf(model, conf)
    registry = Release(config).registry
    registry.ensure_schema()  # before the version is on disk: a released version always has a registry
    exported = steps.export(config, run_dir, snapshot,  # the data version too: `registry init --adopt` reads it
                            lineage={"airflow_run_id": run_id, "params": conf or {}, **_data_version_of(snapshot)})
    try:
        record = registry.get_version(model, exported["version"])
    except NotFound:
        record = registry.register_version(model, exported["version"],
                                           _lineage(run_dir, run_id, conf, exported, snapshot))
    state = str(record.state)
    release = exported["created"] or state == "exported"
    if not release:
        log.warning("%s version %s is this exact model (data, params) and is already %s; nothing new to release "
                    "(change the data, the params or the conf to release another)", model, exported["version"], state)
    return {**exported, "state": state, "release": release}


def _lineage(run_dir: str, run_id: str, conf: dict[str, Any] | None, exported: dict[str, Any],
             snapshot: str | None = None) -> dict[str, Any]:
    run = json.loads((Path(run_dir) / "run.json").read_text())
    data = _data_version_of(snapshot)
    return {
        "data_sha256": run["snapshot"]["sha256"], "airflow_run_id": run_id, "training_run_id": run["run_id"],
        "params": conf or {}, "metrics": json.loads((Path(run_dir) / "metrics.json").read_text()),
        "export_path": exported["path"],
        CONTENT_HASH_KEY: exported[CONTENT_HASH_KEY],  # checked before any server is pointed at the version
        **data,
    }


def _data_version_of(snapshot: str | None) -> dict[str, Any]:
    """The data version and ingested parts a snapshot was prepared from (none for the configured source alone)."""
    manifest_path = Path(snapshot) / "manifest.json" if snapshot else None
    if manifest_path is None or not manifest_path.is_file():
        return {}
    manifest = json.loads(manifest_path.read_text())
    if not manifest.get("data_version"):
        return {}
    parts = [{k: part.get(k) for k in ("sha256", "examples", "added", "origin")} for part in manifest.get("parts", [])]
    return {"data_version": manifest.get("data_version"), "data_parts": parts}


def has_new_version(exported: dict[str, Any]) -> bool:
    """False when the export is a model that was already released (the run stops, successfully)."""
    return bool(exported.get("release", True))


def deploy_staging(model: str, version: int, run_id: str) -> dict[str, Any]:
    """Take the model's release lock for this run (held until finalize or rollback), then deploy to staging."""
    release = Release(steps.resolve_config(model))
    release.registry.acquire_lock(model, run_id, timeout_s=_LOCK_WAIT_S)
    return staging.deploy_to_staging(release, version, run_id)



def validate_staging(model: str, conf: dict[str, Any] | None, version: int, run_id: str) -> dict[str, Any]:
    config, _ = parse_conf(model, conf)
    release = Release(config)
    _hold_lock(release, run_id)
    verdict = staging.validate_on_staging(release, version, run_id)
    _enforce(verdict)
    return verdict.to_dict()


def should_promote(conf: dict[str, Any] | None) -> bool:
    """False for a dry run: stop after staging, production untouched."""
    return not (conf or {}).get("dry_run")


def promote_canary(model: str, version: int, run_id: str) -> dict[str, Any]:
    """Live where the profile has a traffic path and production has a stable to compare with; else the label."""
    release = Release(steps.resolve_config(model))
    _hold_lock(release, run_id)
    if live_canary.live_path_configured(release) and production_state(release).label(STABLE) is not None:
        return live_canary.promote_live(release, version, run_id)
    return {**canary.promote_canary(release, version, run_id), "live": False, "why_not_live": _why_not_live(release)}


def _why_not_live(release: Release) -> str:
    if not live_canary.live_path_configured(release):
        return "the serving profile has no live traffic path (traffic: section and canary instance)"
    return "first release of the model: no stable version and no live traffic to judge it against"


def canary_check(model: str, version: int, run_id: str) -> dict[str, Any]:
    """The golden and held-out probes through the canary label, before any live request reaches it."""
    release = Release(steps.resolve_config(model))
    _hold_lock(release, run_id)
    if live_canary.is_live(release, version):
        return canary.canary_gate(release, version, run_id, live=True).to_dict()
    return canary.canary_gate(release, version, run_id).to_dict()


# How long one look of a live phase may hold a worker slot (a sensor in reschedule mode frees it in between).
LIVE_LOOK_BUDGET_S = 20.0


def live_phase(model: str, version: int, run_id: str, phase: str, budget_s: float = LIVE_LOOK_BUDGET_S
               ) -> dict[str, Any]:
    """Watch one live phase for up to ``budget_s``: ``done`` once it passed; raises (after the rollback) when it
    failed or could not decide. A release that did not go live has nothing to watch (``done``, and why)."""
    release = Release(steps.resolve_config(model))
    _hold_lock(release, run_id)
    spec = phase_named(release.config.canary, phase)
    if not live_canary.is_live(release, version):
        if release.registry.get_version(model, version).state is not State.CANARY:
            raise ValidationFailed(f"{model} {version} is no longer the canary (rolled back or replaced)")
        return {"done": True, "phase": spec.name, "live": False, "why_not_live": _why_not_live(release)}
    look = live_canary.watch_phase(release, version, run_id, spec, budget_s)
    return {"done": look.analysis.decision == "pass", "phase": spec.name, "live": True,
            "decision": look.analysis.decision, "progress": look.progress}


def finalize(model: str, version: int, run_id: str) -> dict[str, Any]:
    release = Release(steps.resolve_config(model))
    _hold_lock(release, run_id)  # preempted: the lock is the rollback's now, nothing to free
    try:
        if live_canary.is_live(release, version):
            return live_canary.finalize_live(release, version, run_id)
        return canary.finalize_release(release, version, run_id)
    finally:
        release.registry.release_lock(model, run_id)


def restore_production(model: str, version: int | None, run_id: str) -> dict[str, Any]:
    """After any failure past staging: make sure the canary is gone and stable untouched; free the locks.

    It works under the model's lock: still this run's, or, when an on-call rollback preempted the run, taken once
    the rollback is done (so the two never change a server at the same time).
    """
    release = Release(steps.resolve_config(model))
    nothing = {"restored": False, "reason": "no canary of this run on production"}
    try:
        if version is None or not _serves_canary(release, version):
            return nothing  # no lock needed (the run may never have got it: it waited for another release)
        with release.registry.lock(model, run_id, timeout_s=_RESTORE_LOCK_WAIT_S):
            if live_canary.is_live(release, version):  # again under the lock: a rollback may have removed it
                return live_canary.rollback_live(release, version, run_id, ["the release failed after promotion"])
            if production_state(release).label(CANARY) == version:
                return canary.rollback_canary(release, version, ["the release failed after promotion"], run_id)
            return nothing
    finally:
        release.registry.release_lock(model, run_id)
        release.registry.release_lock(live_canary.TRAFFIC_LOCK, run_id)


def _serves_canary(release: Release, version: int) -> bool:
    return live_canary.is_live(release, version) or production_state(release).label(CANARY) == version


def rollback(model: str, to_version: int | None, run_id: str | None, reason: str = "on-call rollback") -> dict[str, Any]:
    return rollback_module.rollback(Release(steps.resolve_config(model)), to_version, run_id=run_id, reason=reason)


def monitor(model: str, run_id: str | None) -> dict[str, Any]:
    result = rollback_module.monitor(Release(steps.resolve_config(model)), run_id)
    if not result["healthy"]:
        raise ValidationFailed(f"{model}: stable {result['rollback']['from']} failed its probe "
                               f"({'; '.join(result['reasons'])}); rolled back to {result['rollback']['to']}")
    return result


def monitor_drift(model: str, run_id: str | None) -> dict[str, Any]:
    """``canary_monitor``'s drift task: one monitor run over the live window since the last
    (:mod:`pipeline.monitoring.monitor`). An alarm fails the task after the run is recorded (and, where the config
    says so, the ingest was asked for a retrain), so that its notifiers alert with the reasons."""
    from pipeline.monitoring.monitor import DriftAlarm, run_monitor
    from pipeline.util.ids import unique_run_id

    release = Release(steps.resolve_config(model))
    outcome = run_monitor(release.config, run_id or unique_run_id("monitor"), release.registry, release.paths)
    if outcome.alarm:
        raise DriftAlarm(outcome.run.summary)
    return outcome.as_dict()


def record_task_failure(model: str, run_id: str | None, task_id: str | None, reason: str) -> str:
    """on_failure_callback body: write the failure to the registry and free this run's lock; returns one line."""
    registry = Registry()  # the home's, guarded: a lost registry is reported, not recreated here
    registry.record_failure(model, run_id, task_id, reason)
    if run_id:
        registry.release_lock(model, run_id)
    return f"RELEASE FAILED model={model} run={run_id} task={task_id}: {reason}"
