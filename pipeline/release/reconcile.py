"""Reconcile what is served with the registry: no canary is left serving without a live release holding the lock.

A release that died (a SIGKILLed ``pipeline release``, a lost Airflow worker) can leave its canary behind: the
``canary`` label on production (a release that did not go live) or on the canary instance with the live split
routing to it, and the registry saying ``canary``. Nobody would ever finish or undo it. :func:`reconcile` finds
such leftovers and rolls them back through the release's own functions (:func:`~pipeline.release.canary.
rollback_canary`, :func:`~pipeline.release.live_canary.rollback_live`), which record each in the registry
(``rolled_back``, with the reason) and post what production serves now.

It acts only under the model's lock, and only when no live release holds it: a holder that is alive (its process
runs, its Airflow run runs) is left alone, and one that cannot be judged (another host, Airflow unreachable) is too,
until its lock expires. A dead holder's lock is taken over (logged with who held it). Every release runs it first
(its ``reconcile`` step), so does the monitor, and ``pipeline recover <model>`` by hand.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.release import live_canary
from pipeline.release.canary import rollback_canary
from pipeline.release.context import Release
from pipeline.release.lock_owner import RECONCILE, RELEASE, ROLLBACK, Liveness
from pipeline.release.production import CANARY, STABLE, production_state

log = logging.getLogger(__name__)

_LOCK_WAIT_S = 10.0  # the holder was judged dead or absent a moment ago: the lock is free or taken over at once


def reconcile(release: Release, run_id: str, reason: str = "reconcile", force: bool = False) -> dict[str, Any]:
    """Roll back any canary of the model that no live release holds; returns what was done.

    Args:
        run_id: the lock owner while reconciling (the release's or the monitor's run id, or a fresh one).
        reason: who reconciles (recorded with each rollback).
        force: reconcile even when the lock's holder looks alive or cannot be judged (``pipeline recover --force``):
            its lock is preempted, as an on-call rollback does, and a release holding it stops at its next step.

    Returns:
        ``{"model", "reconciled": bool, "actions": [...], "lock": who held it (or None), "skipped": why (if so)}``.
    """
    model, registry = release.model, release.registry
    holder, verdict, why = registry.lock_liveness(model)
    held_by = None if holder is None else f"{holder.describe()} ({why})"
    if holder is not None and holder.owner != run_id and verdict is not Liveness.DEAD and not force:
        skipped = f"the lock is held by {held_by}: a release may still be running; nothing touched"
        return {"model": model, "reconciled": False, "actions": [], "lock": held_by, "skipped": skipped}
    preempt = (RELEASE, ROLLBACK, RECONCILE) if force else ()
    with registry.lock(model, run_id, timeout_s=_LOCK_WAIT_S, purpose=RECONCILE, preempt=preempt,
                       reason=f"{reason} (forced)"):
        actions = _roll_back_leftovers(release, run_id, reason)
    if actions:
        summary = "; ".join(actions)
        log.warning("%s: reconciled (%s): %s", model, reason, summary)
        registry.record_event(model, "reconcile", run_id, None, f"{reason}: {summary}")
    return {"model": model, "reconciled": True, "actions": actions, "lock": held_by}


def _roll_back_leftovers(release: Release, run_id: str, reason: str) -> list[str]:
    """Under the lock: every canary served or recorded with no release behind it, rolled back."""
    model, registry = release.model, release.registry
    actions: list[str] = []
    why = [f"{reason}: leftover canary of a release that no longer runs"]
    if live_canary.live_path_configured(release):
        live = live_canary.canary_state(release).label(CANARY)
        if live is not None:
            rolled = live_canary.rollback_live(release, live, run_id, why)
            actions.append(f"canary instance: live canary {live} rolled back (split 0), stable {rolled['stable']}")
    production = production_state(release)
    canary = production.label(CANARY)
    if canary is not None:
        rolled = rollback_canary(release, canary, why, run_id)
        actions.append(f"production: canary {canary} rolled back, stable {rolled['stable']}")
    recorded = registry.canary_version(model)
    if recorded is not None:  # the registry says canary, and no instance serves it as such any more
        registry.record_rollback(model, recorded, run_id=run_id,
                                 reason=f"{reason}: registry said canary, no instance serves it")
        actions.append(f"registry: version {recorded} was canary with nothing serving it; recorded rolled back")
    stable = production_state(release).label(STABLE)
    if actions:
        actions.append(f"production serves stable {stable}")
    return actions
