"""The one path that tells Airflow what an environment serves now: an asset event after every change.

Each release function that changes what staging or production serves (deploy to staging, a first release's canary
label, finalize, the automatic canary rollback, the live canary's finalize and rollback, on-call and monitor
rollbacks) calls :func:`record_served_change` once the change succeeded. It reads what the instance serves now (its
``models.config``, never the server) and the registry's figures of that version, and posts an event of the
environment's asset (:mod:`pipeline.assets`) through Airflow's REST API (:mod:`pipeline.airflow_rest`), e.g.::

    {"model": "mnist", "environment": "production", "version": 2, "labels": {"stable": 2}, "versions": [1, 2],
     "accuracy": 0.9871, "run_id": "manual__2026-…", "reason": "canary passed; stable 1 -> 2", "change": "finalize"}

When Airflow cannot be reached (a release from a shell with no stack, tests), one warning is logged and the
change stands: this record never fails or undoes what it describes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline.airflow_rest import post_asset_event
from pipeline.assets import AIRFLOW, SHELL, asset_name, asset_uri
from pipeline.errors import NotFound
from pipeline.release.context import Release
from pipeline.release.production import CANARY, STABLE
from pipeline.release.serving_state import ServedState, served_state

log = logging.getLogger(__name__)


def change_origin() -> str:
    """Where the change is made: ``airflow`` inside a task (Airflow exports its context to the task's environment
    as ``AIRFLOW_CTX_DAG_ID``), else ``shell`` (the CLI, a script, a test)."""
    return AIRFLOW if os.environ.get("AIRFLOW_CTX_DAG_ID") else SHELL


def served_extra(release: Release, instance: str, reason: str, run_id: str | None,
                 change: str | None = None) -> dict[str, Any]:
    """The event's ``extra``: what ``instance`` serves for the model now, that version's figures, run and reason."""
    state: ServedState = served_state(release.backend(instance), release.model)
    version = _headline_version(state)
    metrics = _metrics(release, version)
    metric = release.config.gates.metric
    extra: dict[str, Any] = {
        "model": release.model,
        "environment": instance,
        "version": version,
        "labels": dict(sorted(state.labels.items())),
        "versions": list(state.versions),
        "accuracy": metrics.get("accuracy"),
        "run_id": run_id,
        "reason": reason,
        "origin": change_origin(),
    }
    if metric != "accuracy":
        extra[metric] = metrics.get(metric)
    if change:
        extra["change"] = change
    return extra


def record_served_change(release: Release, instance: str, reason: str, run_id: str | None,
                         change: str | None = None) -> dict[str, Any] | None:
    """Post an asset event saying what ``instance`` serves for the model now; returns Airflow's event or None.

    Never raises: a record that cannot be written is one warning, and the change it describes stands.
    """
    try:
        extra = served_extra(release, instance, reason, run_id, change)
        return post_asset_event(asset_name(release.model, instance), asset_uri(release.model, instance), extra,
                                release.paths)
    except Exception as exc:  # noqa: BLE001 - a record of a change must never fail the change
        log.warning("%s: asset event of %s not recorded: %s", release.model, instance, exc)
        return None


def _headline_version(state: ServedState) -> int | None:
    """The version the environment answers with: its ``stable`` label, else the canary of a first release, else
    the one version it serves (staging), else None (the model is not served there)."""
    for label in (STABLE, CANARY):
        if state.label(label) is not None:
            return state.label(label)
    return state.versions[-1] if state.versions else None


def _metrics(release: Release, version: int | None) -> dict[str, Any]:
    if version is None:
        return {}
    try:
        return dict(release.registry.get_version(release.model, version).metrics or {})
    except NotFound:
        return {}
