"""Register the versions on disk again after the registry was lost: ``pipeline registry init --adopt``.

A registry that went missing or empty while released versions are on disk is never recreated empty (the registry
refuses: :class:`~pipeline.release.registry.RegistryMissing`). Restoring a backup keeps the whole history; when
there is none, adoption rebuilds what the disk and the servers still prove, and records that it was adopted:

- every version directory with a SavedModel is registered with the lineage its ``metadata.json`` holds;
- a version whose staging verdict on disk is BLESSED, or that production serves, is recorded as having passed
  staging (``validated``): a rollback target again;
- the versions production keeps loaded beside ``stable`` (finalize leaves the previous stable loaded) are
  promoted in turn, then production's ``stable``: it is ``promoted``, they ``superseded`` (good rollback targets);
- anything else stays ``exported`` (no proof it ever passed a gate).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipeline.errors import PipelineError
from pipeline.release.context import Release
from pipeline.release.production import STABLE, production_state
from pipeline.release.registry import State
from pipeline.util.ids import unique_run_id
from pipeline.wire.version_dirs import has_saved_model, list_versions, read_metadata

log = logging.getLogger(__name__)


def adopt_versions(release: Release) -> list[dict[str, Any]]:
    """Register every version of the model on disk that the registry does not know; returns one dict per version
    adopted (``version``, ``state``, ``why``)."""
    model, registry = release.model, release.registry
    known = {record.version for record in registry.versions(model)}
    served = production_state(release)
    stable = served.label(STABLE)
    run_id = unique_run_id("adopt")
    adopted: list[dict[str, Any]] = []
    on_disk = [v for v in list_versions(release.base_path) if v not in known and has_saved_model(release.version_dir(v))]
    for version in on_disk:
        registry.register_version(model, version, _lineage(release, version, run_id))
        proof = _staging_proof(release, version) or (f"production serves it ({served.versions})"
                                                     if version in served.versions else None)
        if proof is not None:
            for state in (State.STAGED, State.VALIDATED):
                registry.transition(model, version, state, run_id=run_id, reason=f"adopted from disk: {proof}")
        adopted.append({"version": version, "state": str(registry.get_version(model, version).state),
                        "why": proof or "no proof on disk that it passed a gate"})
    # The previous stables production keeps loaded first, then stable: each promotion supersedes the one before.
    for version in [v for v in served.versions if v != stable and v in on_disk] + ([stable] if stable in on_disk
                                                                                   else []):
        why = "production serves it as stable" if version == stable else "production keeps it loaded beside stable"
        registry.transition(model, version, State.PROMOTED, run_id=run_id, reason=f"adopted from disk: {why}")
    for entry in adopted:
        entry["state"] = str(registry.get_version(model, entry["version"]).state)
    if adopted:
        log.warning("%s: adopted %d version(s) from disk into %s: %s", model, len(adopted), registry.where,
                    ", ".join(f"{a['version']} {a['state']}" for a in adopted))
    return adopted


def _lineage(release: Release, version: int, run_id: str) -> dict[str, Any]:
    try:
        metadata = read_metadata(release.version_dir(version))
    except (OSError, ValueError, PipelineError):
        metadata = {}
    return {"data_sha256": metadata.get("data_snapshot_sha256"),
            "airflow_run_id": metadata.get("airflow_run_id") or run_id, "training_run_id": metadata.get("run_id"),
            "params": metadata.get("params") or {}, "metrics": metadata.get("metrics") or {},
            "export_path": str(release.version_dir(version)), "adopted_by": run_id,
            "data_version": metadata.get("data_version"), "data_parts": metadata.get("data_parts") or []}


def _staging_proof(release: Release, version: int) -> str | None:
    path = release.verdict_path(version, "staging")
    try:
        blessed = bool(json.loads(path.read_text()).get("blessed"))
    except (OSError, ValueError):
        return None
    return f"staging verdict BLESSED ({path})" if blessed else None
