"""The live canary: the candidate on a canary instance beside production, judged on live traffic, phase by phase.

Where the serving profile has a live traffic path (a ``traffic:`` section and a ``canary`` instance), a release
whose model already has a stable version goes live like this::

    promote   canary instance serves production's models + N, labels {stable: S, canary: N}; split 0 %
    shadow    mirror_share of live requests copied to the capture service (both versions asked); users see S only
    k %       each configured step: k % of live requests answered by the canary instance (unlabeled -> N)
    finalize  production {S, N} labels {stable: N}; split 0 %; N unloaded from the canary instance
    fail      split 0 % (first), rollback recorded, N unloaded from the canary instance; production never moved

Each phase is judged by :func:`pipeline.live.analysis.analyze` on its own window (the proxy's access log joined
with the capture store, :mod:`pipeline.live.observations`); a look records the figures in the registry
(``live_phases``) and logs them. Only one canary runs on the production endpoint at a time (its split is the
endpoint's), which a registry lock (:data:`TRAFFIC_LOCK`) enforces across models.

A model's first release has no stable version to compare with and no live traffic yet: it goes to production
under the ``canary`` label and is judged by the golden and held-out probes alone, as Flagger skips the analysis
of a first deployment. That is recorded, not hidden.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import NotFound, PipelineError, ValidationFailed
from pipeline.live.endpoints import CANARY_INSTANCE, TrafficRouter, TrafficSplit, idle_split, traffic_config
from pipeline.live.phases import PhaseSpec
from pipeline.release.context import PRODUCTION, Release
from pipeline.release.production import CANARY, STABLE, change_production, production_state
from pipeline.release.registry import LivePhase, State
from pipeline.release.retention import apply_retention
from pipeline.release.served_events import record_served_change
from pipeline.release.serving_state import ServedState, change_served_state, served_state
from pipeline.wire import model_config as mc

if TYPE_CHECKING:
    from pipeline.live.analysis import Analysis

# The analysis, the observations and the router load when a phase is looked at or the split moves, not on import:
# every on-call rollback imports this module, and its seconds count (bench/crash.py).

log = logging.getLogger(__name__)

TRAFFIC_LOCK = "_production_endpoint"  # the registry lock of the endpoint's split: one live canary at a time
_TRAFFIC_LOCK_WAIT_S = 900.0
_SPLIT_TIMEOUT_S = 30.0
_PHASE_TTL_S = 3600.0


def live_path_configured(release: Release) -> bool:
    """Whether the serving profile has a live traffic path: a ``traffic:`` section and a ``canary`` instance."""
    try:
        traffic_config()
        release.backend(CANARY_INSTANCE)
    except NotFound:
        return False
    return True


def canary_state(release: Release) -> ServedState:
    """What the canary instance serves for the model (empty without a canary instance)."""
    try:
        return served_state(release.backend(CANARY_INSTANCE), release.model)
    except NotFound:
        return ServedState((), {})


def is_live(release: Release, version: int) -> bool:
    """Whether ``version`` is the model's canary on the canary instance (its release went live)."""
    return live_path_configured(release) and canary_state(release).label(CANARY) == version


def router(release: Release) -> TrafficRouter:
    from pipeline.live.routing import router_for

    return router_for(release.paths)


# ---- promote ---------------------------------------------------------------------------------------------------


def promote_live(release: Release, version: int, run_id: str) -> dict[str, Any]:
    """Load ``version`` on the canary instance beside production's models; no live request reaches it yet."""
    release.registry.check_transition(release.model, version, State.CANARY)  # refuse before touching a server
    stable = production_state(release).label(STABLE)
    if stable is None:
        raise ValidationFailed(f"{release.model}: no stable version on production to judge a live canary against")
    release.registry.acquire_lock(TRAFFIC_LOCK, run_id, timeout_s=_TRAFFIC_LOCK_WAIT_S, ttl_s=_PHASE_TTL_S)
    traffic = router(release)
    try:
        traffic.set_split(idle_split(), _SPLIT_TIMEOUT_S)  # a split left over by a crashed run routes nothing
    except NotFound as exc:
        release.registry.release_lock(TRAFFIC_LOCK, run_id)
        raise NotFound(f"{release.model}: the production endpoint is not running ({exc}); `pipeline up` starts it. "
                       "A release of a model with a stable version is judged on live traffic") from None
    canary_backend = release.backend(CANARY_INSTANCE)
    _sync_other_models(release)
    change_served_state(canary_backend, release.model, release.base_path, sorted({stable, version}),
                        {STABLE: stable, CANARY: version}, release.config.serving.load_deadline_s,
                        registry=release.registry)
    release.registry.transition(release.model, version, State.CANARY, run_id=run_id,
                                reason=f"canary instance beside production (stable {stable}); live phases next")
    return {"version": version, "stable": stable, "live": True, "instance": CANARY_INSTANCE}


def _sync_other_models(release: Release) -> None:
    """The canary instance serves every other model as production does: its share of their traffic must get the
    same answers (the proxy cannot tell a gRPC request's model)."""
    production = release.backend(PRODUCTION).read_config()
    canary_backend = release.backend(CANARY_INSTANCE)
    for entry in production.model_config_list.config:
        if entry.name == release.model:
            continue
        versions, labels = mc.versions_and_labels(entry)
        wanted = ServedState(tuple(versions or ()), labels)
        if served_state(canary_backend, entry.name) != wanted:
            change_served_state(canary_backend, entry.name, Path(entry.base_path), wanted.versions, labels,
                                release.config.serving.load_deadline_s, registry=release.registry)


# ---- phases ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Look:
    """One look at a phase: the analysis and the phase's record."""

    phase: LivePhase
    analysis: Analysis

    @property
    def progress(self) -> str:
        a = self.analysis
        return (f"{a.phase}: canary {self.phase.canary_percent:g} %, mirror {self.phase.mirror_percent:g} %; "
                f"{a.elapsed_s:.0f}/{a.bake_s:.0f} s; stable {a.stable.answers} / canary {a.canary.answers} answers, "
                f"{a.paired.requests} paired, {a.canary.labelled} labelled; {a.decision}")


def look_at_phase(release: Release, version: int, run_id: str, phase: PhaseSpec) -> Look:
    """Put the phase's split in effect (once), then judge its window so far and record the figures.

    Raises:
        ValidationFailed: the canary instance no longer serves ``version`` as canary (an on-call rollback or the
            monitor aborted it): the phase is over.
    """
    if canary_state(release).label(CANARY) != version:
        raise ValidationFailed(f"{release.model}: the canary instance no longer serves {version} as canary "
                               f"(aborted or rolled back meanwhile); phase {phase.name} ends here")
    record = _phase_record(release, version, run_id, phase)
    elapsed = (datetime.now(UTC) - record.started_at).total_seconds()
    from pipeline.live.analysis import analyze
    from pipeline.live.observations import LogPosition, join, read_entries
    from pipeline.live.store import captured

    window = LogPosition.from_dict(record.window) if record.window else None
    since = record.started_at.timestamp()
    captures = captured(release.model, since=since, paths=release.paths)
    entries = read_entries(window) if window else ()
    observations = join(release.model, entries, captures, now=time.time())
    analysis = analyze(observations, release.config.canary, phase=phase.name, elapsed_s=elapsed,
                       class_names=release.config.class_names or ())
    summary = "\n".join(analysis.summary_lines())
    if record.running:  # a decided phase keeps the figures it decided on
        decision = "running" if analysis.decision == "continue" else analysis.decision
        release.registry.update_live_phase(record.id, decision, analysis.figures, summary)
    look = Look(record, analysis)
    log.info(look.progress)
    return look


def _phase_record(release: Release, version: int, run_id: str, phase: PhaseSpec) -> LivePhase:
    existing = [p for p in release.registry.live_phases(release.model, run_id=run_id) if p.phase == phase.name]
    if existing:
        return existing[0]
    traffic = router(release)
    traffic.set_split(TrafficSplit(phase.canary_percent, phase.mirror_percent), _SPLIT_TIMEOUT_S)
    # The window starts once the split is in effect: every request in it was routed by this phase's split.
    return release.registry.start_live_phase(release.model, version, run_id, phase.name, phase.canary_percent,
                                             phase.mirror_percent, _window_start(traffic))


def _window_start(traffic: TrafficRouter) -> dict[str, Any]:
    from pipeline.live.observations import log_position
    from pipeline.live.routing import HasAccessLog

    if isinstance(traffic, HasAccessLog):  # nginx, here or in the compose proxy container: its log's end now
        return log_position(traffic.access_log_path).as_dict()
    return {}  # Gateway API: no access log here; the window is the captured (mirrored) requests


def watch_phase(release: Release, version: int, run_id: str, phase: PhaseSpec, budget_s: float) -> Look:
    """Look at the phase every ``poll_s`` until it decides or ``budget_s`` is spent; act on a decision.

    A pass returns (the next phase may start). A failure or an undecided phase rolls the canary back at once
    (split 0 first) and raises with the figures and the root cause.
    """
    deadline = time.monotonic() + budget_s
    while True:
        look = look_at_phase(release, version, run_id, phase)
        if look.analysis.decided or time.monotonic() + release.config.canary.poll_s > deadline:
            break
        time.sleep(release.config.canary.poll_s)
    analysis = look.analysis
    if analysis.decided:
        verdict = analysis.to_verdict(f"live_{phase.task_id}")
        verdict.write(release.verdict_path(version, f"live_{phase.task_id}"))
        for line in analysis.summary_lines():
            log.info(line)
    if analysis.decision in ("fail", "undecided"):
        rolled = rollback_live(release, version, run_id, [f"live canary {phase.name}: {r}" for r in analysis.reasons])
        cause = analysis.root_cause.summary() if analysis.root_cause else ""
        raise ValidationFailed(
            f"live canary {phase.name} {analysis.decision}: {'; '.join(analysis.reasons)}"
            + (f"; root cause: {cause}" if cause else "")
            + f"; rolled back (split 0 in {rolled['seconds_to_split_0']:.2f} s): production serves stable "
              f"{rolled['stable']}")
    return look


# ---- finalize and rollback ---------------------------------------------------------------------------------------


def finalize_live(release: Release, version: int, run_id: str | None) -> dict[str, Any]:
    """Make ``version`` stable on production (previous stable kept loaded), then route nothing to the canary."""
    if canary_state(release).label(CANARY) != version:
        raise ValidationFailed(f"the canary instance's canary label points at {canary_state(release).label(CANARY)}, "
                               f"not {version}: rolled back or replaced meanwhile; not finalizing")
    release.registry.check_transition(release.model, version, State.PROMOTED)
    previous = production_state(release).label(STABLE)
    versions = sorted({version} | ({previous} if previous is not None else set()))
    # Production first: while the split still sends a share to the canary instance, both answer with N.
    change_production(release, versions, {STABLE: version})
    router(release).set_split(idle_split(), _SPLIT_TIMEOUT_S)
    _unload_from_canary(release)
    release.registry.transition(release.model, version, State.PROMOTED, run_id=run_id,
                                reason=f"live canary passed every phase; stable {previous} -> {version}")
    _free_traffic(release, run_id)
    retired = apply_retention(release.base_path, release.model, release.registry,
                              keep=release.config.release.keep_versions,
                              protected=release.registry.protected_versions(release.model) | set(versions))
    record_served_change(release, PRODUCTION, f"live canary passed every phase; stable {previous} -> {version}",
                         run_id, change="finalize")
    return {"stable": version, "previous": previous, "retired": retired, "live": True}


def rollback_live(release: Release, version: int, run_id: str | None, reasons: list[str]) -> dict[str, Any]:
    """Route nothing to the canary (first: users stop seeing it), record the rollback, unload it. Idempotent."""
    started = time.perf_counter()
    router(release).set_split(idle_split(), _SPLIT_TIMEOUT_S)
    split_0 = time.perf_counter() - started
    record = release.registry.get_version(release.model, version)
    if record.state is State.CANARY:
        release.registry.record_rollback(release.model, version, run_id=run_id, reason="; ".join(reasons))
    try:
        _unload_from_canary(release)
    except PipelineError:  # users no longer reach it; a version left loaded there is harmless until the next release
        log.exception("%s: could not unload %s from the canary instance", release.model, version)
    _free_traffic(release, run_id)
    stable = production_state(release).label(STABLE)
    seconds = time.perf_counter() - started
    log.warning("%s: live canary %s rolled back: split 0 in %.2f s, done in %.2f s; stable %s", release.model,
                version, split_0, seconds, stable)
    # Production's models never moved, but what its users get did: the share the canary answered is back on stable.
    record_served_change(release, PRODUCTION, f"live canary {version} rolled back ({'; '.join(reasons)}); "
                         f"production serves stable {stable}", run_id, change="live_canary_rollback")
    return {"rolled_back": version, "stable": stable, "seconds_to_split_0": round(split_0, 3),
            "seconds": round(seconds, 3), "live": True}


def _unload_from_canary(release: Release) -> None:
    change_served_state(release.backend(CANARY_INSTANCE), release.model, release.base_path, [], {},
                        release.config.serving.load_deadline_s, registry=release.registry)


def _free_traffic(release: Release, run_id: str | None) -> None:
    if run_id:
        release.registry.release_lock(TRAFFIC_LOCK, run_id)
