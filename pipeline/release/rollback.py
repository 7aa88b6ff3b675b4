"""On-call rollback and the scheduled probe of production's stable version.

A rollback goes only to a version that exists on disk and once passed staging validation. The target
is loaded beside the current stable first, then the ``stable`` label moves: clients see the switch
as soon as the reload returns, and no request fails. When the target is still loaded (the previous
stable is kept loaded after every promotion), that takes well under a second.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pipeline.errors import NotFound, ValidationFailed
from pipeline.gates import Verdict
from pipeline.release import live_canary
from pipeline.release.context import PRODUCTION, Release
from pipeline.release.lock_owner import RELEASE, ROLLBACK
from pipeline.release.probes import Target, golden_probe
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.reconcile import reconcile
from pipeline.release.registry import State
from pipeline.release.served_events import record_served_change
from pipeline.util.ids import unique_run_id
from pipeline.wire.version_dirs import has_saved_model, read_golden

log = logging.getLogger(__name__)

# States a rollback may go to: stable before (superseded since) or validated and never promoted; never the canary
# under test, a version rolled back, rejected or failed.
TARGET_STATES = (State.SUPERSEDED, State.VALIDATED)
_DEFAULT_LOCK_TIMEOUT_S = 90.0  # only another rollback (or a reconcile) is waited for: a release is preempted


def choose_rollback_target(release: Release, current: int | None, to_version: int | None) -> int:
    """``to_version`` if given, else the last good version before ``current``; checked either way.

    A refusal names the versions that are allowed and both ways to choose one: the ``model_rollback`` form's
    ``to_version`` field and the CLI's ``--to``.
    """
    target = to_version if to_version is not None else release.registry.last_good_version(release.model, before=current)
    if target is None:
        raise NotFound(f"{release.model}: no earlier good version to roll back to (stable is {current}); "
                       f"{_choose_one(release, current)}")
    if not has_saved_model(release.version_dir(target)):
        raise NotFound(f"{release.model} version {target} is not on disk under {release.base_path}; "
                       f"{_choose_one(release, current)}")
    if not release.registry.passed_validation(release.model, target):
        raise ValidationFailed(f"{release.model} version {target} never passed staging validation; refusing to roll "
                               f"back to it; {_choose_one(release, current)}")
    if target == current:
        raise ValidationFailed(f"{release.model} version {target} is already stable")
    state = release.registry.get_version(release.model, target).state
    if state not in TARGET_STATES:
        raise ValidationFailed(f"{release.model} version {target} is {state.value}; refusing to roll back to it; "
                               f"{_choose_one(release, current)}")
    return target


def rollback_targets(release: Release, current: int | None) -> list[int]:
    """The versions a rollback may go to, newest first: on disk with a SavedModel, passed staging validation, in a
    state that may become stable again, and not ``current`` (the rules :func:`choose_rollback_target` checks)."""
    validated = release.registry.validated_versions(release.model)
    return [r.version for r in reversed(release.registry.versions(release.model))
            if r.version != current and r.version in validated and r.state in TARGET_STATES
            and has_saved_model(release.version_dir(r.version))]


def _choose_one(release: Release, current: int | None) -> str:
    allowed = rollback_targets(release, current)
    if not allowed:
        return "no other version on disk passed validation"
    listed = ", ".join(str(v) for v in allowed)
    return f"choose one of {listed} (to_version in the model_rollback form, --to N from the CLI)"


def abort_live_canary(release: Release, reason: str) -> int | None:
    """Route nothing to a live canary of the model and roll it back; returns its version (None: none ran).

    Needs no lock: split 0 is always safe, and the release that routed it finds its canary gone at its next look,
    fails, and frees the model's lock.
    """
    if not live_canary.live_path_configured(release):
        return None
    version = live_canary.canary_state(release).label(CANARY)
    if version is None:
        return None
    live_canary.rollback_live(release, version, None, [f"aborted by {reason}"])
    return version


def rollback(release: Release, to_version: int | None = None, *, run_id: str | None = None,
             reason: str = "on-call rollback") -> dict[str, Any]:
    """Point production's ``stable`` at a known-good version; the bad one is unloaded and recorded.

    On-call always wins: a live canary of the model is aborted first (split 0 at once), then the model's lock is
    taken at once from a release holding it (preempted: recorded, and the release stops at its next step without
    touching a server again). A dead holder's lock is taken over at once; only another rollback is waited for.
    """
    run_id = run_id or unique_run_id("rollback")  # the lock's owner and what the registry records
    aborted = abort_live_canary(release, reason)
    if aborted is not None:
        log.warning("%s: live canary %s aborted (split 0) before the rollback", release.model, aborted)
    with release.registry.lock(release.model, run_id, timeout_s=_DEFAULT_LOCK_TIMEOUT_S, purpose=ROLLBACK,
                               preempt=(RELEASE,), reason=reason):
        # Choose and check the target before touching any server: a refused rollback changes nothing.
        target = choose_rollback_target(release, release.registry.stable_version(release.model), to_version)
        started = time.perf_counter()
        before = production_state(release)
        current = before.label(STABLE) or release.registry.stable_version(release.model)
        if target == current:
            raise ValidationFailed(f"{release.model} version {target} is already stable on production")
        dropped = before.label(CANARY)
        if current is not None:  # refuse before touching the server, so server and registry never disagree
            release.registry.check_transition(release.model, current, State.ROLLED_BACK)
        release.registry.check_transition(release.model, target, State.PROMOTED)
        change_production(release, [target], {STABLE: target})
        seconds = time.perf_counter() - started
        _record_rollback(release, current, target, dropped, run_id, reason)
    log.info("%s: stable %s -> %s in %.2f s (%s)", release.model, current, target, seconds, reason)
    record_served_change(release, PRODUCTION, f"{reason}: stable {current} -> {target}", run_id, change="rollback")
    return {"model": release.model, "from": current, "to": target, "seconds": round(seconds, 3),
            "dropped_canary": before.label(CANARY), "aborted_live_canary": aborted}


def _record_rollback(release: Release, current: int | None, target: int, dropped: int | None,
                     run_id: str | None, reason: str) -> None:
    registry = release.registry
    if current is not None:
        registry.record_rollback(release.model, current, restore_version=target, run_id=run_id, reason=reason)
    else:
        registry.transition(release.model, target, State.PROMOTED, run_id=run_id, reason=reason)
    if dropped is not None and dropped != current and registry.canary_version(release.model) == dropped:
        registry.record_rollback(release.model, dropped, run_id=run_id, reason=f"canary dropped by rollback: {reason}")


def probe_stable(release: Release) -> Verdict:
    """Replay the stable version's golden requests through production's ``stable`` label."""
    stable = production_state(release).label(STABLE)
    if stable is None:
        return Verdict("monitor", True, [], {"stable": None, "note": "nothing in production yet"})
    target = Target(release.client(PRODUCTION), release.model, label=STABLE,
                    signature_name=release.config.serving.signature_name)
    result = golden_probe(target, read_golden(release.version_dir(stable)), release.config.serving.golden_tolerance,
                          ("rest",))
    return Verdict("monitor", not result.problems, result.problems, {"stable": stable, **result.figures})


def monitor(release: Release, run_id: str | None = None) -> dict[str, Any]:
    """Reconcile, then probe stable; when it fails, roll back to the last good version on our own and say why.

    A canary no live release holds (its release died) is rolled back first (:func:`~pipeline.release.reconcile.
    reconcile`). A production server that is down is started again (it loads what its models.config says): a dead
    process is not a bad model, and must not cost the model its stable version.
    """
    reconciled = reconcile(release, run_id or unique_run_id("monitor"), reason="canary_monitor")
    if reconciled["actions"]:
        log.warning("%s: the monitor reconciled production first: %s", release.model, "; ".join(reconciled["actions"]))
    if production_state(release).versions:
        release.backend(PRODUCTION).start(timeout_s=release.config.serving.load_deadline_s)
    try:
        verdict = probe_stable(release)
    except Exception as exc:  # noqa: BLE001 - an unreachable or broken stable is a failed probe
        verdict = Verdict("monitor", False, [f"probe failed: {exc}"])
    if verdict.blessed:
        return {"healthy": True, **verdict.figures, "reconciled": reconciled["actions"]}
    rolled = rollback(release, run_id=run_id, reason=f"canary_monitor: {verdict.summary()}")
    return {"healthy": False, "reasons": verdict.reasons, "rollback": rolled, "reconciled": reconciled["actions"]}
