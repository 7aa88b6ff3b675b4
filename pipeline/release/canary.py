"""Promotion by version bump on production, canary predictions, and the automatic rollback.

The labels' life through a release is in :mod:`pipeline.release.production`; every change here goes through
its :func:`change_production`, which never lets a request fail.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.errors import ValidationFailed
from pipeline.gates import Verdict
from pipeline.live.endpoints import CANARY_INSTANCE
from pipeline.release import live_canary
from pipeline.release.context import PRODUCTION, Release
from pipeline.release.probes import Target, accuracy_probe, agreement_probe, golden_probe, latency_probe, merge
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.registry import State
from pipeline.release.retention import apply_retention
from pipeline.release.served_events import record_served_change
from pipeline.wire.version_dirs import read_golden

log = logging.getLogger(__name__)


def promote_canary(release: Release, version: int, run_id: str | None = None) -> dict[str, Any]:
    """Load ``version`` on production beside stable and point the ``canary`` label at it."""
    release.registry.check_transition(release.model, version, State.CANARY)  # refuse before touching production
    before = production_state(release)
    stable = before.label(STABLE)
    labels = {STABLE: stable, CANARY: version} if stable is not None else {CANARY: version}
    change_production(release, sorted(set(before.versions) | {version}), labels)
    release.registry.transition(release.model, version, State.CANARY, run_id=run_id,
                                reason=f"canary on production beside stable {stable}")
    record_served_change(release, PRODUCTION, f"canary {version} on production beside stable {stable}", run_id,
                         change="promote")
    return {"version": version, "stable": stable}


def check_canary(release: Release, version: int, instance: str = PRODUCTION) -> Verdict:
    """Canary predictions through the ``canary`` label of ``instance``: golden correctness, held-out accuracy,
    agreement with stable, latency. Before any live request reaches the candidate (it runs on the canary
    instance when the release goes live, on production otherwise)."""
    serving, client = release.config.serving, release.client(instance)
    canary = Target(client, release.model, label=CANARY, signature_name=serving.signature_name)
    inputs, labels = release.held_out_sample(version)
    probes = [
        golden_probe(canary, read_golden(release.version_dir(version)), serving.golden_tolerance, ("rest",)),
        accuracy_probe(canary, inputs, labels, release.config.gates.min_value),
        latency_probe(canary, inputs, serving.latency_budget_p95_ms),
    ]
    if production_state(release).label(STABLE) is not None:  # the instance names stable as production does
        stable = Target(client, release.model, label=STABLE, signature_name=serving.signature_name)
        probes.append(agreement_probe(canary, stable, inputs, release.config.release.canary_min_agreement))
    result = merge(*probes)
    verdict = Verdict("canary", not result.problems, result.problems, result.figures)
    verdict.write(release.verdict_path(version, "canary"))
    log.info(verdict.summary())
    return verdict


def finalize_release(release: Release, version: int, run_id: str | None = None) -> dict[str, Any]:
    """Make ``version`` stable; keep the previous stable loaded; apply retention on disk."""
    before = production_state(release)
    if before.label(CANARY) != version:
        raise ValidationFailed(
            f"production's canary label points at {before.label(CANARY)}, not {version}: someone rolled back "
            "or promoted meanwhile; not finalizing")
    release.registry.check_transition(release.model, version, State.PROMOTED)
    previous = before.label(STABLE)
    versions = sorted({version} | ({previous} if previous is not None else set()))
    change_production(release, versions, {STABLE: version})
    release.registry.transition(release.model, version, State.PROMOTED, run_id=run_id,
                                reason=f"canary passed; stable {previous} -> {version}")
    retired = apply_retention(release.base_path, release.model, release.registry,
                              keep=release.config.release.keep_versions,
                              protected=release.registry.protected_versions(release.model) | set(versions))
    record_served_change(release, PRODUCTION, f"canary passed; stable {previous} -> {version}", run_id,
                         change="finalize")
    return {"stable": version, "previous": previous, "retired": retired}


def rollback_canary(release: Release, version: int, reasons: list[str], run_id: str | None = None) -> dict[str, Any]:
    """Unload the canary and leave stable as it was; the registry records ``rolled_back``. Idempotent.

    When the canary was the model's first release (no stable), production stops serving the model at all.
    """
    before = production_state(release)
    stable = before.label(STABLE)
    remaining = [v for v in before.versions if v != version]
    if not remaining and stable is not None:
        remaining = [stable]
    change_production(release, remaining, {STABLE: stable} if stable is not None else {})
    record = release.registry.get_version(release.model, version)
    if record.state is State.CANARY:
        release.registry.record_rollback(release.model, version, run_id=run_id, reason="; ".join(reasons))
    record_served_change(release, PRODUCTION, f"canary {version} rolled back ({'; '.join(reasons)}); stable {stable}",
                         run_id, change="canary_rollback")
    return {"rolled_back": version, "stable": stable}


def canary_gate(release: Release, version: int, run_id: str | None = None, live: bool = False) -> Verdict:
    """Check the canary; on failure roll back at once (the decision and the rollback in one step) and raise.

    ``live``: the canary is on the canary instance (:mod:`pipeline.release.live_canary`), not yet routed to.
    """
    try:
        verdict = check_canary(release, version, instance=CANARY_INSTANCE if live else PRODUCTION)
    except Exception as exc:  # noqa: BLE001 - a crashed check must not leave a canary serving
        verdict = Verdict("canary", False, [f"canary check crashed: {exc}"])
    if not verdict.blessed:
        if live:
            live_canary.rollback_live(release, version, run_id, verdict.reasons)
        else:
            rollback_canary(release, version, verdict.reasons, run_id)
        raise ValidationFailed(f"{verdict.summary()}; rolled back: production serves stable "
                               f"{production_state(release).label(STABLE)}")
    return verdict
